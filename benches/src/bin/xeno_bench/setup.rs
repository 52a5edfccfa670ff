//! `--setup`: makes the server deliver a webhook for every bench identify, through
//! the management API. It creates (or reuses, by name) the segment
//! `bench_sent_ns > 0` and a webhook subscription to it that points at the sink;
//! [`Setup::teardown`] removes the subscription again so that a finished run leaves
//! no endpoint behind that nobody listens on.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde_json::{Value as Json, json};
use tokio::time::Instant;

use crate::load::Target;

pub const SEGMENT_NAME: &str = "xeno-bench";
pub const SEGMENT_RULE: &str = "bench_sent_ns > 0";

/// What `--setup` created or found.
#[derive(Debug)]
pub struct Setup {
    pub segment_id: String,
    pub webhook_id: String,
    /// Whether this run created the subscription (and so should delete it).
    pub created_webhook: bool,
}

/// One management or ingest request on a fresh connection.
pub async fn call(
    target: &Target,
    method: Method,
    path: &str,
    authorization: Option<&HeaderValue>,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Json)> {
    let mut sender = target.connect().await?;
    let mut builder = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(HOST, target.host.clone());
    if let Some(authorization) = authorization {
        builder = builder.header(AUTHORIZATION, authorization.clone());
    }
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let response = tokio::time::timeout(Duration::from_secs(30), async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, bytes))
    })
    .await
    .with_context(|| format!("{method} {path}: no answer within 30 s"))?
    .with_context(|| format!("{method} {path}"))?;
    let (status, bytes) = response;
    let json = if bytes.is_empty() {
        Json::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Ok((status, json))
}

pub async fn prepare(
    target: &Target,
    admin_key: &str,
    org: &str,
    sink_url: &str,
    field_seed_body: Vec<u8>,
) -> Result<Setup> {
    let bearer = HeaderValue::from_str(&format!("Bearer {admin_key}"))?;
    let base = format!("/api/v1/orgs/{org}");

    let segment_id = match find(target, &bearer, &format!("{base}/segments"), |s| {
        s["name"] == SEGMENT_NAME
    })
    .await?
    {
        Some(segment) => {
            if segment["rule"] != SEGMENT_RULE {
                bail!(
                    "segment {SEGMENT_NAME:?} exists with rule {}; delete it or make it {SEGMENT_RULE:?}",
                    segment["rule"]
                );
            }
            id_of(&segment)?
        }
        None => {
            // The rule names a field the server must have seen: send one identify
            // carrying it, then retry while the event is being applied.
            let (status, answer) = call(
                target,
                Method::POST,
                "/v1/batch",
                target.authorization.as_ref(),
                Some(field_seed_body),
            )
            .await?;
            if status != StatusCode::OK {
                bail!("seeding the bench field: {status} {answer}");
            }
            let body = json!({"name": SEGMENT_NAME, "rule": SEGMENT_RULE}).to_string();
            let started = Instant::now();
            loop {
                let (status, answer) = call(
                    target,
                    Method::POST,
                    &format!("{base}/segments"),
                    Some(&bearer),
                    Some(body.clone().into_bytes()),
                )
                .await?;
                match status {
                    StatusCode::CREATED | StatusCode::OK => break id_of(&answer)?,
                    StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
                        if started.elapsed() < Duration::from_secs(15) =>
                    {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    _ => bail!("creating the bench segment: {status} {answer}"),
                }
            }
        }
    };

    let existing = find(target, &bearer, &format!("{base}/webhooks"), |w| {
        w["url"] == sink_url
    })
    .await?;
    let (webhook_id, created_webhook) = match existing {
        Some(webhook) => (id_of(&webhook)?, false),
        None => {
            let body = json!({
                "url": sink_url,
                "events": ["segment.entered", "segment.exited"],
                "segments": [segment_id],
            });
            let (status, answer) = call(
                target,
                Method::POST,
                &format!("{base}/webhooks"),
                Some(&bearer),
                Some(body.to_string().into_bytes()),
            )
            .await?;
            if !status.is_success() {
                bail!("creating the webhook subscription: {status} {answer}");
            }
            (id_of(&answer)?, true)
        }
    };
    Ok(Setup {
        segment_id,
        webhook_id,
        created_webhook,
    })
}

impl Setup {
    /// Deletes the subscription if this run created it.
    pub async fn teardown(&self, target: &Target, admin_key: &str, org: &str) -> Result<()> {
        if !self.created_webhook {
            return Ok(());
        }
        let bearer = HeaderValue::from_str(&format!("Bearer {admin_key}"))?;
        let path = format!("/api/v1/orgs/{org}/webhooks/{}", self.webhook_id);
        let (status, answer) = call(target, Method::DELETE, &path, Some(&bearer), None).await?;
        if !status.is_success() {
            bail!("deleting the webhook subscription: {status} {answer}");
        }
        Ok(())
    }
}

/// The first item of a paginated list that `matches`.
async fn find(
    target: &Target,
    bearer: &HeaderValue,
    path: &str,
    matches: impl Fn(&Json) -> bool,
) -> Result<Option<Json>> {
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let page_path = match &cursor {
            Some(cursor) => format!("{path}?cursor={cursor}"),
            None => path.to_string(),
        };
        let (status, answer) = call(target, Method::GET, &page_path, Some(bearer), None).await?;
        if status != StatusCode::OK {
            bail!("GET {page_path}: {status} {answer}");
        }
        if let Some(found) = answer["items"]
            .as_array()
            .and_then(|items| items.iter().find(|item| matches(item)))
        {
            return Ok(Some(found.clone()));
        }
        match answer["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return Ok(None),
        }
    }
    Ok(None)
}

fn id_of(item: &Json) -> Result<String> {
    item["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no id in {item}"))
}
