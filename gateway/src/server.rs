//! `xeno serve`: wires the embedded ports, the actor runtime and the HTTP API
//! from the configuration, and shuts down cleanly (final snapshots) on SIGINT
//! or SIGTERM.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use anyhow::Context as _;
use xeno_actors::dispatch::DispatchSettings;
use xeno_actors::shard::ShardSettings;
use xeno_actors::{Bootstrap, Ports, Runtime, RuntimeSettings};
use xeno_connectors::embedded::{EventLog, StateStore};
use xeno_connectors::webhook::sender::HttpWebhookSender;
use xeno_engine::shard::ShardConfig;

use crate::api::{AppState, CustomerSettings, router};
use crate::config::{Config, parse_duration};

fn std_duration(text: &str) -> StdDuration {
    let d = parse_duration(text).map(|d| d.millis()).unwrap_or(1000);
    StdDuration::from_millis(d.max(1) as u64)
}

/// Runtime settings from the configuration (already validated).
pub fn settings(config: &Config) -> anyhow::Result<RuntimeSettings> {
    let engine = ShardConfig {
        tick: parse_duration(&config.engine.tick).map_err(anyhow::Error::msg)?,
        dedup_window: parse_duration(&config.engine.dedup_window).map_err(anyhow::Error::msg)?,
    };
    engine.validate()?;
    Ok(RuntimeSettings {
        shard: ShardSettings {
            engine,
            snapshot_every: std_duration(&config.storage.snapshot_every),
            snapshot_after_events: 1_000_000,
            log_retention_ms: parse_duration(&config.storage.log_retention)
                .map_err(anyhow::Error::msg)?
                .millis(),
        },
        dispatch: DispatchSettings {
            first_retry: std_duration(&config.webhooks.first_retry),
            max_retry_interval: StdDuration::from_secs(3600),
            max_attempts: config.webhooks.max_attempts,
            max_in_flight: config.webhooks.max_in_flight as usize,
            timeout: std_duration(&config.webhooks.timeout),
            history_retention: std_duration(&config.webhooks.history_retention),
        },
        tick: std_duration(&config.engine.tick),
        max_inflight_per_partition: i64::from(config.server.max_pending_events),
        import_dir: config.storage.data_dir.join("imports"),
        audit_retention_ms: parse_duration(&config.audit.retention)
            .map_err(anyhow::Error::msg)?
            .millis(),
        bootstrap: config.bootstrap.enabled.then(|| Bootstrap {
            org: config.bootstrap.org.clone(),
            write_key: config.bootstrap.write_key.clone(),
            admin_api_key: config.bootstrap.admin_api_key.clone(),
        }),
    })
}

/// Runs the server until a shutdown signal. Call inside an actix `System`
/// running on a multi-thread tokio runtime.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    let data = &config.storage.data_dir;
    let log = EventLog::open(&data.join("log"), config.storage.partitions)
        .with_context(|| format!("opening the event log in {}", data.display()))?;
    let store = StateStore::open(&data.join("state"))
        .with_context(|| format!("opening the state store in {}", data.display()))?;
    let sender = HttpWebhookSender::new().map_err(anyhow::Error::msg)?;
    let ports = Ports {
        log: Arc::new(log),
        store: Arc::new(store),
        webhooks: Arc::new(sender),
    };
    let (runtime, generated) =
        Runtime::start(settings(&config)?, ports, xeno_actors::clock::wall_clock())?;
    if let Some(key) = &generated.write_key {
        tracing::warn!(org = %config.bootstrap.org, write_key = %key, "generated the bootstrap write key; it is shown only now");
    }
    if let Some(key) = &generated.admin_api_key {
        tracing::warn!(org = %config.bootstrap.org, admin_api_key = %key, "generated the bootstrap admin API key; it is shown only now");
    }
    let auth = Arc::new(crate::auth::Auth::from_config(&config)?);
    let app = router(
        AppState {
            runtime: runtime.clone(),
            metrics,
            customers: CustomerSettings {
                suppression: parse_duration(&config.customers.suppression)
                    .map_err(anyhow::Error::msg)?,
                max_import_bytes: config.customers.max_import_bytes,
            },
            auth,
            routes: Arc::new(crate::api::access::route_index()),
            trusted_proxies: Arc::new(
                config
                    .server
                    .trusted_proxies
                    .iter()
                    .map(|p| crate::api::access::parse_cidr(p).map_err(anyhow::Error::msg))
                    .collect::<anyhow::Result<_>>()?,
            ),
        },
        &config.auth.cors_origins,
    );
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    tracing::info!(listen = %config.server.listen, data_dir = %data.display(), "xeno serving");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    tracing::info!("shutting down: final snapshots");
    runtime.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
