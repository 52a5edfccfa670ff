//! CSV import routes: a multipart upload streamed to disk (never held in
//! memory), then a job that reports progress (polled, or as server-sent
//! events), can be cancelled, and leaves an error report as CSV.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Multipart, Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use xeno_actors::import::{ImportJob, ImportOptions, job_dir};

use super::access::Caller;
use super::problem::Problem;
use super::{ApiQuery, AppState, path_id};
use axum::extract::Extension;

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportList {
    pub items: Vec<ImportJob>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ImportListQuery {
    /// 1 to 1000, 100 by default.
    pub limit: Option<usize>,
}

fn bad(pointer: &str, reason: &str) -> Problem {
    Problem::field(StatusCode::BAD_REQUEST, pointer, reason)
}

/// The multipart form of an upload (documentation only: the body is
/// streamed).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ImportUpload {
    /// JSON [`ImportOptions`]; send it before `file`.
    #[schema(value_type = Option<Object>)]
    options: Option<String>,
    /// The CSV file.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

#[utoipa::path(operation_id = "create_import", post, path = "/api/v1/orgs/{org}/imports", tag = "imports",
    params(("org" = String, Path)),
    request_body(content = ImportUpload, content_type = "multipart/form-data",
        description = "parts `options` (JSON ImportOptions, optional) and `file` (the CSV)"),
    responses((status = 202, description = "the job, queued; follow it at /imports/{id}", body = ImportJob),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, Problem> {
    let (org, actor) = caller.org_and_actor(&org)?;
    let mut multipart = multipart.map_err(|e| {
        bad(
            "",
            &format!(
                "{}; send multipart/form-data with a `file` part",
                e.body_text()
            ),
        )
    })?;
    let id = Uuid::now_v7();
    let dir = job_dir(state.runtime.import_dir(), id);
    let upload = dir.join("upload.csv");
    let mut options: Option<ImportOptions> = None;
    let mut file: Option<(String, u64)> = None;
    let result: Result<(), Problem> = async {
        while let Some(mut part) = multipart
            .next_field()
            .await
            .map_err(|e| bad("", &format!("the multipart body is malformed: {e}")))?
        {
            match part.name() {
                Some("options") => {
                    // Read a chunk at a time: the size is checked before a
                    // large part is held in memory.
                    let mut text = Vec::new();
                    while let Some(chunk) = part
                        .chunk()
                        .await
                        .map_err(|e| bad("/options", &format!("unreadable: {e}")))?
                    {
                        text.extend_from_slice(&chunk);
                        if text.len() > 64 * 1024 {
                            return Err(bad("/options", "the options are larger than 64 KiB"));
                        }
                    }
                    let parsed: ImportOptions = serde_json::from_slice(&text)
                        .map_err(|e| bad("/options", &format!("not valid import options: {e}")))?;
                    parsed.hints().map_err(Problem::from)?;
                    options = Some(parsed);
                }
                Some("file") => {
                    if file.is_some() {
                        return Err(bad("/file", "send one file per import"));
                    }
                    let name = part
                        .file_name()
                        .map(str::to_string)
                        .unwrap_or_else(|| "upload.csv".into());
                    tokio::fs::create_dir_all(&dir)
                        .await
                        .map_err(|e| storage(&e))?;
                    let mut out = tokio::io::BufWriter::with_capacity(
                        1 << 20,
                        tokio::fs::File::create(&upload)
                            .await
                            .map_err(|e| storage(&e))?,
                    );
                    let mut bytes = 0u64;
                    while let Some(chunk) = part
                        .chunk()
                        .await
                        .map_err(|e| bad("/file", &format!("the upload broke off: {e}")))?
                    {
                        bytes += chunk.len() as u64;
                        if bytes > state.customers.max_import_bytes {
                            return Err(Problem::new(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                format!(
                                    "the file is larger than {} bytes (customers.max_import_bytes)",
                                    state.customers.max_import_bytes
                                ),
                            ));
                        }
                        out.write_all(&chunk).await.map_err(|e| storage(&e))?;
                    }
                    out.flush().await.map_err(|e| storage(&e))?;
                    out.into_inner().sync_all().await.map_err(|e| storage(&e))?;
                    file = Some((name, bytes));
                }
                Some(other) => {
                    return Err(bad(
                        "",
                        &format!("unknown part `{other}`; send `options` and `file`"),
                    ));
                }
                None => return Err(bad("", "a multipart part has no name")),
            }
        }
        Ok(())
    }
    .await;
    let cleanup = || {
        let dir = dir.clone();
        async move {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
    };
    if let Err(p) = result {
        cleanup().await;
        return Err(p);
    }
    let Some((name, bytes)) = file else {
        cleanup().await;
        return Err(bad("/file", "the `file` part is missing"));
    };
    let runtime = state.runtime.clone();
    let options = options.unwrap_or_default();
    let started = super::blocking(&state, move |_| {
        runtime.start_import(org, id, upload, &name, bytes, options, &actor)
    })
    .await;
    let job = match started {
        Ok(job) => job,
        Err(p) => {
            cleanup().await;
            return Err(p);
        }
    };
    let location = format!("{}/{}", "imports", job.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(job),
    )
        .into_response())
}

fn storage(e: &std::io::Error) -> Problem {
    tracing::error!(error = %e, "spooling an upload failed");
    let mut p = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the upload could not be stored",
    );
    p.retry_after = Some(5);
    p
}

#[utoipa::path(operation_id = "list_imports", get, path = "/api/v1/orgs/{org}/imports", tag = "imports",
    params(("org" = String, Path), ImportListQuery),
    responses((status = 200, description = "newest first", body = ImportList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Path(org): Path<String>,
    ApiQuery(query): ApiQuery<ImportListQuery>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ImportList>, Problem> {
    let org = caller.org_id(&org)?;
    let limit = super::page_limit(query.limit)?;
    let items = super::blocking(&state, move |r| r.import_jobs(org, limit)).await?;
    Ok(Json(ImportList { items }))
}

#[utoipa::path(operation_id = "get_import", get, path = "/api/v1/orgs/{org}/imports/{id}", tag = "imports",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, body = ImportJob), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ImportJob>, Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "import")?;
    Ok(Json(
        super::blocking(&state, move |r| r.import_job(org, id)).await?,
    ))
}

#[utoipa::path(operation_id = "cancel_import", post, path = "/api/v1/orgs/{org}/imports/{id}/cancel", tag = "imports",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 202, description = "the job stops after its current batch; rows imported stay", body = ImportJob),
        (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<(StatusCode, Json<ImportJob>), Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "import")?;
    let job = super::blocking(&state, move |r| r.cancel_import(org, id)).await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[utoipa::path(operation_id = "get_import_errors", get, path = "/api/v1/orgs/{org}/imports/{id}/errors", tag = "imports",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, description = "CSV: row, line, column, reason, value", content_type = "text/csv"),
        (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn errors(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "import")?;
    let path = super::blocking(&state, move |r| r.import_report(org, id)).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| Problem::not_found("error report"))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"import-{id}-errors.csv\""),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}

#[utoipa::path(operation_id = "import_events", get, path = "/api/v1/orgs/{org}/imports/{id}/events", tag = "imports",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, description = "server-sent events: `progress` with the job every half second while it runs, then one `done` with the final job", content_type = "text/event-stream"),
        (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "import")?;
    let runtime = state.runtime.clone();
    let first = {
        let r = runtime.clone();
        super::blocking(&state, move |_| r.import_job(org, id)).await?
    };
    // State: the job to announce, and whether to wait and re-read it first.
    let stream = futures_util::stream::unfold((Some(first), false), move |(job, refresh)| {
        let runtime = runtime.clone();
        async move {
            let mut job = job?;
            if refresh {
                tokio::time::sleep(Duration::from_millis(500)).await;
                job = tokio::task::spawn_blocking(move || runtime.import_job(org, id))
                    .await
                    .ok()
                    .and_then(Result::ok)?;
            }
            let finished = job.status.is_finished();
            let event = SseEvent::default()
                .event(if finished { "done" } else { "progress" })
                .json_data(&job)
                .unwrap_or_default();
            let next = (!finished).then_some(job);
            Some((Ok(event), (next, true)))
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
