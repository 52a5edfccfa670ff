//! The webhook sink: a loopback axum server that answers every delivery 200 at
//! once and records event-to-webhook latency, `now - bench_sent_ns`, where the
//! stamp comes back in `data.customer.traits` (see `body.rs`). Signatures are not
//! verified: the sink measures timing, the gateway's tests check signing.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use hdrhistogram::Histogram;
use serde_json::Value as Json;
use tokio::time::Instant;

use crate::body::STAMP_OFFSET;
use crate::load::new_histogram;

/// What the sink has seen so far.
#[derive(Debug, Clone)]
pub struct SinkStats {
    /// Deliveries about this run's customers that carried a stamp.
    pub measured: u64,
    pub entered: u64,
    pub exited: u64,
    /// Deliveries about other customers (another run, the setup customer) or
    /// without a stamp: answered, not measured.
    pub ignored: u64,
    /// Bodies that were not the documented JSON.
    pub malformed: u64,
    /// Event-to-webhook latency, microseconds.
    pub latency_us: Histogram<u64>,
    pub last_received: Option<Instant>,
}

struct SinkState {
    clock_base: Instant,
    customer_prefix: String,
    stats: Mutex<SinkStats>,
}

/// A running sink.
pub struct Sink {
    /// The URL to register as the webhook endpoint.
    pub url: String,
    state: Arc<SinkState>,
}

impl Sink {
    /// Binds `listen` and serves on a thread of its own (a current-thread runtime),
    /// so that a delivery is timed when it arrives, not when the busy load
    /// client's scheduler gets to it.
    pub fn start(listen: SocketAddr, clock_base: Instant, customer_prefix: String) -> Result<Sink> {
        let listener = std::net::TcpListener::bind(listen)
            .with_context(|| format!("binding the webhook sink to {listen}"))?;
        listener.set_nonblocking(true)?;
        let mut address = listener.local_addr()?;
        if address.ip().is_unspecified() {
            address.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        let state = Arc::new(SinkState {
            clock_base,
            customer_prefix,
            stats: Mutex::new(SinkStats {
                measured: 0,
                entered: 0,
                exited: 0,
                ignored: 0,
                malformed: 0,
                latency_us: new_histogram(),
                last_received: None,
            }),
        });
        let app = Router::new().fallback(receive).with_state(state.clone());
        let runtime = crate::runtime(1)?;
        std::thread::Builder::new()
            .name("webhook-sink".into())
            .spawn(move || {
                let served = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    axum::serve(listener, app).await
                });
                if let Err(e) = served {
                    eprintln!("webhook sink stopped: {e}");
                }
            })?;
        Ok(Sink {
            url: format!("http://{address}/xeno-bench/webhook"),
            state,
        })
    }

    pub fn stats(&self) -> SinkStats {
        self.state.stats.lock().expect("sink lock").clone()
    }

    /// Waits until `expected` deliveries were measured, or none came for `idle`,
    /// or `limit` passed, whichever is first.
    pub async fn drain(&self, expected: u64, idle: Duration, limit: Duration) {
        let started = Instant::now();
        loop {
            let (measured, last) = {
                let stats = self.state.stats.lock().expect("sink lock");
                (stats.measured, stats.last_received)
            };
            let quiet_since = last.unwrap_or(started).max(started);
            if measured >= expected || quiet_since.elapsed() >= idle || started.elapsed() >= limit {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(State(state): State<Arc<SinkState>>, body: Bytes) -> StatusCode {
    let now = Instant::now();
    let now_ns = now.duration_since(state.clock_base).as_nanos() as u64;
    let delivery = classify(&body, &state.customer_prefix, now_ns);
    let mut stats = state.stats.lock().expect("sink lock");
    stats.last_received = Some(now);
    match delivery {
        Delivery::Measured {
            latency_us,
            transition,
        } => {
            stats.latency_us.saturating_record(latency_us.max(1));
            stats.measured += 1;
            match transition {
                Some(Transition::Entered) => stats.entered += 1,
                Some(Transition::Exited) => stats.exited += 1,
                None => {}
            }
        }
        Delivery::Ignored => stats.ignored += 1,
        Delivery::Malformed => stats.malformed += 1,
    }
    StatusCode::OK
}

#[derive(Debug, PartialEq, Eq)]
enum Transition {
    Entered,
    Exited,
}

#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    Measured {
        latency_us: u64,
        transition: Option<Transition>,
    },
    Ignored,
    Malformed,
}

/// What one delivery body tells, `now_ns` after the harness's clock base.
fn classify(body: &[u8], customer_prefix: &str, now_ns: u64) -> Delivery {
    let Ok(payload) = serde_json::from_slice::<Json>(body) else {
        return Delivery::Malformed;
    };
    let Some(data) = payload.get("data") else {
        return Delivery::Malformed;
    };
    let customer = &data["customer"];
    let ours = customer["id"]
        .as_str()
        .is_some_and(|id| id.starts_with(customer_prefix));
    // Exits carry the stamp negated (see body.rs).
    let stamp = customer["traits"]["bench_sent_ns"].as_f64().map(f64::abs);
    match stamp {
        Some(stamp) if ours && stamp >= STAMP_OFFSET as f64 => {
            let sent_ns = stamp as u64 - STAMP_OFFSET;
            let transition = match data["transition"].as_str().or(payload["type"].as_str()) {
                Some("entered" | "segment.entered") => Some(Transition::Entered),
                Some("exited" | "segment.exited") => Some(Transition::Exited),
                _ => None,
            };
            Delivery::Measured {
                latency_us: now_ns.saturating_sub(sent_ns) / 1000,
                transition,
            }
        }
        _ => Delivery::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(customer: &str, transition: &str, stamp: serde_json::Value) -> Vec<u8> {
        serde_json::json!({
            "type": format!("segment.{transition}"),
            "timestamp": "2026-11-25T16:00:00.000Z",
            "data": {
                "organization": "demo",
                "segment": {"id": "0190b4a8-0000-7000-8000-000000000000", "name": "xeno-bench"},
                "customer": {"id": customer, "traits": {"plan": "pro", "bench_sent_ns": stamp, "computed": {}}},
                "transition": transition,
                "at": "2026-11-25T16:00:00.000Z",
                "cause": "event",
            }
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn latency_is_now_minus_the_stamp_for_entries_and_exits() {
        let prefix = "xb-0badcafe-c";
        let sent_ns = 5_000_000_000;
        let stamp = STAMP_OFFSET + sent_ns;
        let now_ns = sent_ns + 12_345_000;
        let entered = delivery("xb-0badcafe-c0000000001", "entered", stamp.into());
        assert_eq!(
            classify(&entered, prefix, now_ns),
            Delivery::Measured {
                latency_us: 12_345,
                transition: Some(Transition::Entered)
            }
        );
        let exited = delivery(
            "xb-0badcafe-c0000000001",
            "exited",
            (-(stamp as i64)).into(),
        );
        assert_eq!(
            classify(&exited, prefix, now_ns),
            Delivery::Measured {
                latency_us: 12_345,
                transition: Some(Transition::Exited)
            }
        );
        // A server that writes numbers as floats gives the same figure.
        let float = delivery("xb-0badcafe-c0000000001", "entered", (stamp as f64).into());
        assert!(matches!(
            classify(&float, prefix, now_ns),
            Delivery::Measured {
                latency_us: 12_345,
                ..
            }
        ));
    }

    #[test]
    fn other_runs_and_unstamped_customers_are_not_measured() {
        let prefix = "xb-0badcafe-c";
        let stamp = STAMP_OFFSET + 1;
        let other_run = delivery("xb-00000000-c0000000001", "entered", stamp.into());
        assert_eq!(classify(&other_run, prefix, 10), Delivery::Ignored);
        let setup_customer = delivery("xb-0badcafe-csetup", "entered", 0.into());
        assert_eq!(classify(&setup_customer, prefix, 10), Delivery::Ignored);
        assert_eq!(classify(b"not json", prefix, 10), Delivery::Malformed);
        assert_eq!(classify(b"{}", prefix, 10), Delivery::Malformed);
    }
}
