//! The Segment-compatible ingest routes: decode (off the async workers for
//! large bodies), authenticate the write key, log durably, answer
//! `{"success": true}`.

use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::problem::Problem;
use crate::ingest::{Endpoint, IngestError, IngestRequest, MAX_REQUEST_BYTES, decode};

/// Largest body read off the wire (compressed or not); the decoder applies the
/// Segment limits after decompression.
const MAX_WIRE_BYTES: usize = 2 * MAX_REQUEST_BYTES;
/// Bodies above this are decoded on the blocking pool.
const INLINE_DECODE_BYTES: usize = 16 * 1024;

fn refused(e: IngestError) -> Problem {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    metrics::counter!("xeno_ingest_requests_total", "status" => e.status.to_string()).increment(1);
    Problem::field(status, &e.pointer, &e.reason)
}

/// `POST /v1/{batch,identify,track,page,screen,group,alias}`.
pub async fn ingest(
    State(state): State<AppState>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match handle(state, &endpoint, headers, body).await {
        Ok(suppressed) if suppressed.is_empty() => {
            metrics::counter!("xeno_ingest_requests_total", "status" => "200").increment(1);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"success":true}"#,
            )
                .into_response()
        }
        Ok(suppressed) => {
            // Not an error (a retry would not help) but not silent either:
            // the answer says which events were refused and why.
            metrics::counter!("xeno_ingest_requests_total", "status" => "200").increment(1);
            let body = serde_json::json!({
                "success": true,
                "suppressed": suppressed,
                "detail": "events of erased customers are refused during their suppression period",
            });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        Err(problem) => problem.into_response(),
    }
}

async fn handle(
    state: AppState,
    endpoint: &str,
    headers: HeaderMap,
    body: Body,
) -> Result<Vec<usize>, Problem> {
    let endpoint = Endpoint::from_name(endpoint).ok_or_else(|| Problem::not_found("route"))?;
    let received_at = xeno_actors::clock::now();
    let body = to_bytes(body, MAX_WIRE_BYTES).await.map_err(|_| {
        Problem::field(
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
            &format!("the body is larger than {MAX_WIRE_BYTES} bytes"),
        )
    })?;
    let header_text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let authorization = header_text(header::AUTHORIZATION);
    let content_encoding = header_text(header::CONTENT_ENCODING);
    let run = move || {
        decode(&IngestRequest {
            endpoint,
            authorization: authorization.as_deref(),
            content_encoding: content_encoding.as_deref(),
            body: &body,
            received_at,
        })
    };
    let decoded = if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n <= INLINE_DECODE_BYTES)
    {
        run()
    } else {
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|_| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?
    }
    .map_err(refused)?;
    let org = state
        .runtime
        .org_for_write_key(&decoded.write_key)
        .ok_or_else(|| {
            refused(IngestError {
                status: 401,
                pointer: String::new(),
                reason: "the write key is not valid".into(),
            })
        })?;
    if decoded.events.is_empty() {
        return Ok(Vec::new());
    }
    state
        .runtime
        .ingest(org, decoded.events, received_at)
        .await
        .map(|outcome| outcome.suppressed)
        .map_err(|e| {
            metrics::counter!("xeno_ingest_requests_total", "status" => "503").increment(1);
            Problem::from(e)
        })
}
