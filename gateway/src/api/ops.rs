//! Operational routes: liveness, readiness (every shard recovered) and
//! Prometheus metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::problem::Problem;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.runtime.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shards are still recovering",
        )
        .into_response()
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    for (partition, lag) in state.runtime.lag().into_iter().enumerate() {
        metrics::gauge!("xeno_shard_pending_events", "partition" => partition.to_string())
            .set(lag as f64);
    }
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => Problem::new(StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

pub async fn not_found() -> Problem {
    Problem::not_found("route")
}

pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take that method",
    )
}
