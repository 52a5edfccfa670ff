//! The HTTP API: Segment-compatible ingest under `/v1`, the management API
//! under `/api/v1/orgs/{org}`, and the operational routes (`/healthz`,
//! `/readyz`, `/metrics`).

pub mod audit;
pub mod customers;
pub mod imports;
pub mod ingest;
pub mod openapi;
pub mod ops;
pub mod problem;
pub mod segments;
pub mod webhooks;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use uuid::Uuid;
use xeno_actors::Runtime;
use xeno_actors::catalog::Role;

use problem::Problem;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub runtime: Runtime,
    pub metrics: Option<PrometheusHandle>,
    pub customers: CustomerSettings,
}

/// Settings of the customer-data routes.
#[derive(Debug, Clone, Copy)]
pub struct CustomerSettings {
    /// How long an erased customer's ids stay refused.
    pub suppression: xeno_engine::time::Duration,
    /// Largest CSV upload.
    pub max_import_bytes: u64,
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    let org_routes = Router::new()
        .route("/segments", get(segments::list).post(segments::create))
        .route("/segments/preview", post(segments::preview))
        .route(
            "/segments/{id}",
            get(segments::get)
                .put(segments::update)
                .delete(segments::delete),
        )
        .route("/segments/{id}/members", get(segments::members))
        .route("/customers", get(customers::list).post(customers::create))
        .route("/exports/customers", get(customers::export))
        .route(
            "/customers/{id}",
            get(customers::get)
                .patch(customers::update)
                .delete(customers::delete),
        )
        .route("/orders", post(customers::create_order))
        .route("/fields", get(customers::fields))
        .route("/fields/{name}", axum::routing::put(customers::put_field))
        .route("/segments/{id}/export", get(customers::export_segment))
        .route(
            "/imports",
            get(imports::list)
                .post(imports::create)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/imports/{id}", get(imports::get))
        .route("/imports/{id}/cancel", post(imports::cancel))
        .route("/imports/{id}/errors", get(imports::errors))
        .route("/imports/{id}/events", get(imports::events))
        .route("/audit", get(audit::list))
        .route("/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/webhooks/{id}",
            get(webhooks::get)
                .put(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/webhooks/{id}/rotate", post(webhooks::rotate))
        .route("/webhooks/{id}/test", post(webhooks::test))
        .route("/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route(
            "/webhooks/{id}/deliveries/{delivery}/replay",
            post(webhooks::replay),
        );
    Router::new()
        .route("/v1/{endpoint}", post(ingest::ingest))
        .nest("/api/v1/orgs/{org}", org_routes)
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .with_state(state)
}

/// How much a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Checks the bearer key against the organization in the path and returns the
/// organization's id. A key of another organization gets the same 404 as an
/// unknown organization, so org slugs cannot be probed.
pub fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    slug: &str,
    access: Access,
) -> Result<Uuid, Problem> {
    authorize_actor(state, headers, slug, access).map(|(org, _)| org)
}

/// [`authorize`], also naming the caller for the activity feed
/// (`key:{api key id}`).
pub fn authorize_actor(
    state: &AppState,
    headers: &HeaderMap,
    slug: &str,
    access: Access,
) -> Result<(Uuid, String), Problem> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Problem::unauthorized("send an API key as `Authorization: Bearer <key>`"))?;
    let key = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Problem::unauthorized("the Authorization header must be `Bearer <key>`"))?;
    let principal = state
        .runtime
        .principal(key)
        .ok_or_else(|| Problem::unauthorized("the API key is not valid"))?;
    let org = state
        .runtime
        .org_by_slug(slug)
        .filter(|o| o.id == principal.org)
        .ok_or_else(|| Problem::not_found("organization"))?;
    if access == Access::Write && principal.role == Role::Viewer {
        return Err(Problem::new(
            axum::http::StatusCode::FORBIDDEN,
            "this API key may only read",
        ));
    }
    Ok((org.id, format!("key:{}", principal.key_id)))
}

/// Parses a JSON body into `T`, with a problem naming what is wrong.
pub fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(Problem::bad_body)
}

/// `axum::extract::Query` whose refusal is a problem+json (axum's own is plain
/// text).
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| Problem::field(axum::http::StatusCode::BAD_REQUEST, "", &e.body_text()))
    }
}

/// The raw body, with a problem+json refusal when it is too large or unreadable.
pub struct ApiBody(pub Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for ApiBody {
    type Rejection = Problem;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state)
            .await
            .map(ApiBody)
            .map_err(|e| Problem::new(e.status(), e.body_text()))
    }
}

/// Runs a facade call that writes or scans storage (an fsync, a scan of a
/// delivery history) on the blocking pool, off the async workers.
pub async fn blocking<T: Send + 'static>(
    state: &AppState,
    call: impl FnOnce(xeno_actors::Runtime) -> Result<T, xeno_actors::RuntimeError> + Send + 'static,
) -> Result<T, Problem> {
    let runtime = state.runtime.clone();
    tokio::task::spawn_blocking(move || call(runtime))
        .await
        .map_err(|_| {
            Problem::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
            )
        })?
        .map_err(Problem::from)
}

/// Parses a path id.
pub fn path_id(text: &str, what: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(text).map_err(|_| Problem::not_found(what))
}

/// `limit` of a list: 1 to 1000, 100 by default.
pub fn page_limit(limit: Option<usize>) -> Result<usize, Problem> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(_) => Err(Problem::field(
            axum::http::StatusCode::BAD_REQUEST,
            "/limit",
            "limit must be 1 to 1000",
        )),
    }
}
