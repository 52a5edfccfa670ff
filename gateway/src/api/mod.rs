//! The HTTP API: Segment-compatible ingest under `/v1`, the management API
//! under `/api/v1/orgs/{org}`, and the operational routes (`/healthz`,
//! `/readyz`, `/metrics`).

pub mod access;
pub mod account;
pub mod audit;
pub mod customers;
pub mod imports;
pub mod ingest;
pub mod keys;
pub mod members;
pub mod openapi;
pub mod ops;
pub mod orgs;
pub mod problem;
pub mod segments;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::routing::{delete, get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use uuid::Uuid;
use xeno_actors::Runtime;

use problem::Problem;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub runtime: Runtime,
    pub metrics: Option<PrometheusHandle>,
    pub customers: CustomerSettings,
    pub auth: Arc<crate::auth::Auth>,
    /// The permission and audit action of every organization-scoped route.
    pub routes: Arc<access::RouteIndex>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<Vec<access::Cidr>>,
}

/// Settings of the customer-data routes.
#[derive(Debug, Clone, Copy)]
pub struct CustomerSettings {
    /// How long an erased customer's ids stay refused.
    pub suppression: xeno_engine::time::Duration,
    /// Largest CSV upload accepted, in bytes.
    pub max_import_bytes: u64,
}

/// The whole router. Organization-scoped routes come from the access table
/// ([`access::org_router`]); the routes of people (accounts, sessions, their
/// organizations, invitation links) authenticate in their handlers.
pub fn router(state: AppState, cors_origins: &[String]) -> Router {
    let routes = Router::new()
        .route("/v1/{endpoint}", post(ingest::ingest))
        .route("/api/v1/auth/signup", post(account::signup))
        .route("/api/v1/auth/verify-email", get(account::verify_email))
        .route("/api/v1/auth/login", post(account::login))
        .route("/api/v1/auth/refresh", post(account::refresh))
        .route("/api/v1/auth/logout", post(account::logout))
        .route(
            "/api/v1/auth/password/forgot",
            post(account::forgot_password),
        )
        .route("/api/v1/auth/password/reset", post(account::reset_password))
        .route("/api/v1/auth/jwks", get(account::jwks))
        .route("/api/v1/auth/oidc/start", get(account::oidc_start))
        .route("/api/v1/auth/oidc/callback", get(account::oidc_callback))
        .route("/api/v1/me", get(account::me))
        .route("/api/v1/me/sessions", get(account::sessions))
        .route("/api/v1/me/sessions/{id}", delete(account::revoke_session))
        .route("/api/v1/me/security-events", get(account::security_events))
        .route("/api/v1/orgs", get(orgs::list_mine).post(orgs::create))
        .route("/api/v1/invitations/{token}", get(account::get_invitation))
        .route(
            "/api/v1/invitations/{token}/accept",
            post(account::accept_invitation),
        )
        .route(
            "/api/v1/invitations/{token}/decline",
            post(account::decline_invitation),
        )
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(access::org_router(state.clone()))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .with_state(state);
    match cors(cors_origins) {
        Some(layer) => routes.layer(layer),
        None => routes,
    }
}

/// CORS for the configured origins only (none: browsers may not call
/// cross-origin at all).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderValue, Method, header};
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    if allowed.is_empty() {
        return None;
    }
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600)),
    )
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
