//! What the runtime tests share: settings of a small, fast runtime and a
//! webhook port that accepts everything.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use xeno_actors::dispatch::DispatchSettings;
use xeno_actors::shard::ShardSettings;
use xeno_actors::{Bootstrap, RuntimeSettings};
use xeno_engine::ports::{PortError, WebhookOutcome, WebhookPort, WebhookRequest};
use xeno_engine::shard::ShardConfig;
use xeno_engine::time::{Duration as EngineDuration, Timestamp};

/// The wall clock, as the runtime reads it.
pub fn now() -> Timestamp {
    xeno_actors::clock::wall_clock()()
}

/// Polls `probe` every 25 ms until it answers, for at most 10 s.
pub async fn eventually<T>(mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..400 {
        if let Some(v) = probe().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not reached within 10 s");
}

/// The signing secret every test endpoint gets.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Answers every webhook with 200.
pub struct Ok200;

impl WebhookPort for Ok200 {
    fn new_secret(&self) -> Result<String, PortError> {
        Ok(WEBHOOK_SECRET.into())
    }

    fn send(
        &self,
        _: WebhookRequest,
    ) -> Pin<Box<dyn Future<Output = WebhookOutcome> + Send + 'static>> {
        Box::pin(async { WebhookOutcome::Status(200) })
    }
}

/// A runtime with a 100 ms engine tick, a 50 ms clock, no snapshot but at
/// shutdown, and a bootstrap organization `org` with the given keys.
pub fn settings(
    import_dir: PathBuf,
    org: &str,
    write_key: &str,
    admin_key: &str,
) -> RuntimeSettings {
    RuntimeSettings {
        shard: ShardSettings {
            engine: ShardConfig {
                tick: EngineDuration(100),
                dedup_window: EngineDuration(24 * 3_600_000),
            },
            snapshot_every: Duration::from_secs(3600),
            snapshot_after_events: 1_000_000,
            log_retention_ms: 7 * 24 * 3_600_000,
        },
        dispatch: DispatchSettings::default(),
        tick: Duration::from_millis(50),
        max_inflight_per_partition: 100_000,
        import_dir,
        audit_retention_ms: 365 * 24 * 3_600_000,
        bootstrap: Some(Bootstrap {
            org: org.into(),
            write_key: Some(write_key.into()),
            admin_api_key: Some(admin_key.into()),
        }),
    }
}
