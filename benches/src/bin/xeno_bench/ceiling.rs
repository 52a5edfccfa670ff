//! The HTTP ceiling: an axum server that takes the same requests as `xeno serve`'s
//! ingest and does nothing with them (reads the body, optionally parses it as
//! JSON, answers `{"success":true}`). Driving it with the same harness, in the
//! same run and on the same machine, gives the throughput and latency that the
//! HTTP stack and the client alone allow, which is the peer a figure for the real
//! server is read against.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// Serves the ceiling on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, parse_json: bool) -> Result<()> {
    let app = Router::new()
        .route("/readyz", get(|| async { StatusCode::OK }))
        .route("/healthz", get(|| async { StatusCode::OK }))
        .fallback(accept)
        .layer(DefaultBodyLimit::disable())
        .with_state(parse_json);
    axum::serve(listener, app)
        .await
        .context("serving the ceiling")
}

async fn accept(State(parse_json): State<bool>, body: Bytes) -> impl IntoResponse {
    if parse_json && serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"success":false}"#,
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"success":true}"#,
    )
}

/// Runs the ceiling in its own process (`xeno-bench ceiling-server`).
pub fn run_standalone(listen: SocketAddr, workers: usize, parse_json: bool) -> Result<()> {
    crate::runtime(workers)?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        eprintln!(
            "ceiling server listening on http://{} ({workers} worker(s), parse json: {parse_json})",
            listener.local_addr()?
        );
        serve(listener, parse_json).await
    })
}

/// Starts the ceiling on a thread of its own with its own runtime, so that it does
/// not share the harness's scheduler, and returns its address.
pub fn spawn_in_process(workers: usize, parse_json: bool) -> Result<SocketAddr> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("ceiling-server".into())
        .spawn(move || {
            let result = crate::runtime(workers).and_then(|runtime| {
                runtime.block_on(async {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                    let _ = sender.send(Ok(listener.local_addr()?));
                    serve(listener, parse_json).await
                })
            });
            if let Err(e) = result {
                // Either the start failed (the receiver reports it) or serving did.
                let _ = sender.send(Err(e));
            }
        })?;
    receiver.recv().context("the ceiling server thread ended")?
}
