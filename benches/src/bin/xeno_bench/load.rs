//! The ingest load: `connections` keep-alive HTTP/1.1 clients (hyper's low-level
//! connection API, one TCP connection each, no pool) that post `/v1/batch` bodies
//! until the run's bound (a duration or an event count) is reached.
//!
//! Without a rate the load is closed-loop: each connection sends its next request
//! as soon as the previous one is answered. With a rate it is open-loop: request
//! `r` is due at `start + r * batch / rate`, whichever connection is free takes it,
//! and when no connection was free in time its latency is measured from when it
//! was due, not from when it went out, so a server that falls behind shows it in
//! the percentiles instead of slowing the clock down (coordinated omission). A
//! request whose connection waited for it counts from the timer's wake-up, so the
//! timer's 1 ms granularity is not charged to the server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::{BatchTemplate, Fill, TIMESTAMP_LEN, format_timestamp};

/// Where and how hard to push.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub target: Target,
    pub connections: usize,
    pub batch: usize,
    pub identify_percent: u8,
    pub customers: u64,
    /// Stop after this many requests (the event bound, in whole batches).
    pub max_requests: Option<u64>,
    /// Stop sending once this long has passed since the start.
    pub duration: Option<Duration>,
    /// Events per second, open-loop; `None` is closed-loop.
    pub rate: Option<f64>,
    pub gzip: bool,
    pub timeout: Duration,
    pub run_id: String,
}

/// An `http://host:port` server and the headers every request carries.
#[derive(Debug, Clone)]
pub struct Target {
    pub address: String,
    pub host: HeaderValue,
    pub authorization: Option<HeaderValue>,
}

impl Target {
    /// Parses `http://host:port[/]` (TLS is out of scope: the harness runs on loopback).
    pub fn parse(url: &str, authorization: Option<HeaderValue>) -> Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: only http:// URLs are supported"))?;
        let authority = rest.trim_end_matches('/');
        anyhow::ensure!(
            !authority.is_empty() && !authority.contains('/'),
            "{url}: give the server's base URL, without a path"
        );
        let address = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Target {
            address,
            host: HeaderValue::from_str(authority)?,
            authorization,
        })
    }

    pub async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(&self.address)
            .await
            .with_context(|| format!("connecting to {}", self.address))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // The connection ends when its sender is dropped, or on an I/O error
            // that the sender reports as well.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// What the whole load measured.
#[derive(Debug)]
pub struct LoadResult {
    pub elapsed: Duration,
    pub requests: u64,
    pub requests_acked: u64,
    pub events_sent: u64,
    pub events_acked: u64,
    pub identifies_acked: u64,
    pub body_bytes_sent: u64,
    /// Request latency of acknowledged requests, microseconds.
    pub latency_us: Histogram<u64>,
    /// Failures by HTTP status, or `connect`, `io`, `timeout`.
    pub errors: BTreeMap<String, u64>,
    /// A few error messages, to tell a refused body from a down server.
    pub error_samples: Vec<String>,
}

struct Shared {
    plan: LoadPlan,
    start: Instant,
    /// Unix milliseconds at `start`, to turn due instants into event timestamps.
    start_unix_ms: i64,
    next_request: AtomicU64,
    next_identify: AtomicU64,
    next_track: AtomicU64,
    /// Time between requests in open-loop mode.
    interval: Option<Duration>,
    /// Set on Ctrl-C: stop sending, report what was measured.
    stop: Arc<AtomicBool>,
}

/// Runs the load and returns once every connection has stopped. `clock_base` is
/// the instant stamps count from (the webhook sink measures against it too);
/// `stop` ends the load early.
pub async fn run(plan: LoadPlan, clock_base: Instant, stop: Arc<AtomicBool>) -> Result<LoadResult> {
    anyhow::ensure!(plan.connections > 0 && plan.batch > 0 && plan.customers > 0);
    let interval = match plan.rate {
        Some(rate) => {
            anyhow::ensure!(rate > 0.0, "--rate must be positive");
            Some(Duration::from_secs_f64(plan.batch as f64 / rate))
        }
        None => None,
    };
    let start = Instant::now();
    let start_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_millis() as i64;
    let shared = Arc::new(Shared {
        plan,
        start,
        start_unix_ms,
        next_request: AtomicU64::new(0),
        next_identify: AtomicU64::new(0),
        next_track: AtomicU64::new(0),
        interval,
        stop,
    });
    let tasks: Vec<_> = (0..shared.plan.connections)
        .map(|index| tokio::spawn(connection_loop(shared.clone(), clock_base, index)))
        .collect();
    let mut result = LoadResult {
        elapsed: Duration::ZERO,
        requests: 0,
        requests_acked: 0,
        events_sent: 0,
        events_acked: 0,
        identifies_acked: 0,
        body_bytes_sent: 0,
        latency_us: new_histogram(),
        errors: BTreeMap::new(),
        error_samples: Vec::new(),
    };
    for task in tasks {
        let stats = task.await.context("a connection task panicked")?;
        result.requests += stats.requests;
        result.requests_acked += stats.requests_acked;
        result.events_sent += stats.events_sent;
        result.events_acked += stats.events_acked;
        result.identifies_acked += stats.identifies_acked;
        result.body_bytes_sent += stats.body_bytes_sent;
        result.latency_us.add(&stats.latency_us)?;
        for (kind, count) in stats.errors {
            *result.errors.entry(kind).or_default() += count;
        }
        for sample in stats.error_samples {
            if result.error_samples.len() < 5 && !result.error_samples.contains(&sample) {
                result.error_samples.push(sample);
            }
        }
    }
    result.elapsed = start.elapsed();
    Ok(result)
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs to 1 h at three significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

struct ConnectionStats {
    requests: u64,
    requests_acked: u64,
    events_sent: u64,
    events_acked: u64,
    identifies_acked: u64,
    body_bytes_sent: u64,
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    error_samples: Vec<String>,
}

impl ConnectionStats {
    fn error(&mut self, kind: &str, detail: impl FnOnce() -> String) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
        if self.error_samples.len() < 3 {
            let sample = format!("{kind}: {}", detail());
            if !self.error_samples.contains(&sample) {
                self.error_samples.push(sample);
            }
        }
    }
}

enum Outcome {
    Answered(StatusCode, Bytes),
    Failed(hyper::Error),
    TimedOut,
}

async fn connection_loop(
    shared: Arc<Shared>,
    clock_base: Instant,
    index: usize,
) -> ConnectionStats {
    let plan = &shared.plan;
    let deadline = plan.duration.map(|d| shared.start + d);
    let mut template = BatchTemplate::build(
        &plan.run_id,
        plan.batch,
        plan.identify_percent,
        0x5EED_0000 + index as u64,
    );
    let mut stats = ConnectionStats {
        requests: 0,
        requests_acked: 0,
        events_sent: 0,
        events_acked: 0,
        identifies_acked: 0,
        body_bytes_sent: 0,
        latency_us: new_histogram(),
        errors: BTreeMap::new(),
        error_samples: Vec::new(),
    };
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut gzip_buffer: Vec<u8> = Vec::new();
    let mut timestamp = [0u8; TIMESTAMP_LEN];
    let mut timestamp_ms = i64::MIN;
    loop {
        let request = shared.next_request.fetch_add(1, Ordering::Relaxed);
        if plan.max_requests.is_some_and(|max| request >= max)
            || shared.stop.load(Ordering::Relaxed)
        {
            break;
        }
        let due = match shared.interval {
            Some(interval) => {
                let due = shared.start + interval.mul_f64(request as f64);
                if deadline.is_some_and(|d| due >= d) {
                    break;
                }
                if Instant::now() < due {
                    // Idle until due: the request goes out when the timer fires,
                    // which tokio rounds up to its 1 ms tick. That slack is the
                    // harness's, so latency counts from the wake-up; a request
                    // that is already late counts from when it was due.
                    tokio::time::sleep_until(due).await;
                    Instant::now()
                } else {
                    due
                }
            }
            None => {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    break;
                }
                now
            }
        };
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match plan.target.connect().await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    stats.requests += 1;
                    stats.error("connect", || format!("{e:#}"));
                    sender = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(connection) = sender.as_mut() else {
            unreachable!("connected above")
        };
        // Closed-loop: a (re)connection is not part of the request's latency.
        let due = if shared.interval.is_none() {
            Instant::now()
        } else {
            due
        };

        let due_ms = shared.start_unix_ms + due.duration_since(shared.start).as_millis() as i64;
        if due_ms != timestamp_ms {
            format_timestamp(due_ms, &mut timestamp);
            timestamp_ms = due_ms;
        }
        template.fill(&Fill {
            first_identify: shared
                .next_identify
                .fetch_add(template.identifies(), Ordering::Relaxed),
            first_track: shared
                .next_track
                .fetch_add(template.tracks(), Ordering::Relaxed),
            customers: plan.customers,
            timestamp: &timestamp,
            sent_ns: due.duration_since(clock_base).as_nanos() as u64,
        });
        let body = if plan.gzip {
            gzip_buffer = gzip(template.body(), std::mem::take(&mut gzip_buffer));
            Bytes::from(std::mem::take(&mut gzip_buffer))
        } else {
            Bytes::from(template.take())
        };
        let mut builder = Request::post("/v1/batch")
            .header(HOST, plan.target.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(authorization) = &plan.target.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        if plan.gzip {
            builder = builder.header(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let http_request = builder
            .body(Full::new(body.clone()))
            .expect("a request from valid parts");
        let outcome = tokio::time::timeout(plan.timeout, async {
            let response = match connection.send_request(http_request).await {
                Ok(response) => response,
                Err(e) => return Outcome::Failed(e),
            };
            let status = response.status();
            match response.into_body().collect().await {
                Ok(collected) => Outcome::Answered(status, collected.to_bytes()),
                Err(e) => Outcome::Failed(e),
            }
        })
        .await
        .unwrap_or(Outcome::TimedOut);
        let latency = due.elapsed();
        stats.body_bytes_sent += body.len() as u64;
        // Hyper has dropped its handle by now, so this gets the buffer back
        // without a copy (it copies only if a handle were still alive).
        if plan.gzip {
            gzip_buffer = Vec::from(body);
        } else {
            template.restore(Vec::from(body));
        }
        stats.requests += 1;
        stats.events_sent += template.events();
        match outcome {
            Outcome::Answered(StatusCode::OK, _) => {
                stats.requests_acked += 1;
                stats.events_acked += template.events();
                stats.identifies_acked += template.identifies();
                stats
                    .latency_us
                    .saturating_record(latency.as_micros().max(1) as u64);
            }
            Outcome::Answered(status, body) => {
                stats.error(status.as_str(), || {
                    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
                });
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    // Saturated: back off a little instead of spinning on refusals.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Outcome::Failed(e) => {
                stats.error("io", || e.to_string());
                sender = None;
            }
            Outcome::TimedOut => {
                stats.error("timeout", || format!("no answer within {:?}", plan.timeout));
                sender = None;
            }
        }
    }
    stats
}

fn gzip(body: &[u8], mut buffer: Vec<u8>) -> Vec<u8> {
    use std::io::Write as _;
    buffer.clear();
    let mut encoder = flate2::write::GzEncoder::new(buffer, flate2::Compression::fast());
    encoder
        .write_all(body)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}
