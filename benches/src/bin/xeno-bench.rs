//! `xeno-bench`: the HTTP load harness of `xeno serve`, and its ceiling.
//!
//! It posts Segment `/v1/batch` requests (track and identify events with unique
//! message ids over `--customers` customers) on `--connections` keep-alive
//! connections, for `--duration` or `--events`, closed-loop or at `--rate`
//! events/s, and reports acknowledged events/s, acknowledgement latency and errors
//! by status. With `--setup` it also subscribes a loopback webhook sink to a
//! segment that every bench identify enters or leaves, and reports event-to-webhook
//! latency. `--ceiling` (or a separate `xeno-bench ceiling-server`) runs the same
//! load against an axum handler that only reads the body, the HTTP ceiling that a
//! figure for the server is read against.
//!
//! Output: a human summary, then one JSON line for `BENCHMARKS.md`.
//!
//! ```text
//! xeno-bench ceiling-server --listen 127.0.0.1:9100 &
//! xeno-bench --url http://127.0.0.1:9100 --label ceiling --duration 10s
//! xeno-bench --url http://127.0.0.1:8080 --write-key wk_test --admin-key xk_test \
//!     --setup --duration 10s --connections 4 --batch 100
//! ```
//!
//! The client is written on hyper's connection API rather than with `reqwest`
//! because it has to be cheap: it shares two cores with the server it measures,
//! so bodies are built once per connection and patched in place (`body.rs`),
//! buffers are reused, and the default runtime is a single thread.

#[path = "xeno_bench/body.rs"]
mod body;
#[path = "xeno_bench/ceiling.rs"]
mod ceiling;
#[path = "xeno_bench/load.rs"]
mod load;
#[path = "xeno_bench/setup.rs"]
mod setup;
#[path = "xeno_bench/sink.rs"]
mod sink;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use hyper::header::HeaderValue;
use serde_json::json;
use tokio::time::Instant;

use crate::body::{BatchTemplate, customer_prefix, field_seed_body};
use crate::load::{LoadPlan, LoadResult, Target};
use crate::sink::{Sink, SinkStats};

#[derive(Debug, Parser)]
#[command(
    name = "xeno-bench",
    about = "HTTP load harness for `xeno serve`: ingest throughput and latency, webhook latency, HTTP ceiling",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP ceiling: accept any POST, read the body, answer {"success":true}.
    CeilingServer(CeilingServerArgs),
}

#[derive(Debug, Args)]
struct CeilingServerArgs {
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Runtime worker threads (1: a current-thread runtime). Default: one per core,
    /// as `xeno serve`'s runtime has.
    #[arg(long)]
    workers: Option<usize>,
    /// Also parse each body as JSON (the ceiling of HTTP plus parsing).
    #[arg(long)]
    parse: bool,
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Base URL of the server (http only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Ingest write key, sent as the HTTP Basic user name.
    #[arg(long)]
    write_key: Option<String>,
    /// Management API key (needed by --setup).
    #[arg(long)]
    admin_key: Option<String>,
    /// Organization slug (needed by --setup).
    #[arg(long, default_value = "demo")]
    org: String,
    /// Concurrent keep-alive HTTP/1.1 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Events per /v1/batch request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Stop after this many events (rounded up to whole batches).
    #[arg(long)]
    events: Option<u64>,
    /// Stop sending after this long (e.g. 10s, 500ms, 2m). Default 10s when
    /// --events is not given either.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Target events per second, open-loop; a request that no connection was free
    /// to send on time counts its latency from when it was due. Default:
    /// closed-loop, as fast as the server answers.
    #[arg(long)]
    rate: Option<f64>,
    /// Distinct customers (userIds) the events spread over.
    #[arg(long, default_value_t = 100_000)]
    customers: u64,
    /// Share of identify events, in percent (the rest are track events).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    identify_percent: u8,
    /// Create the bench segment and a webhook subscription to the sink through
    /// the management API (the subscription is deleted at the end).
    #[arg(long)]
    setup: bool,
    /// Keep the webhook subscription that --setup created.
    #[arg(long, requires = "setup")]
    keep_setup: bool,
    /// Where the webhook sink listens. Default with --setup: 127.0.0.1 on a free port.
    #[arg(long)]
    sink_listen: Option<SocketAddr>,
    /// After the load, wait at most this long for outstanding webhooks.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    drain: Duration,
    /// ...and stop waiting once no webhook came for this long.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    drain_idle: Duration,
    /// Gzip each body (costs the client CPU; the ceiling does not inflate).
    #[arg(long)]
    gzip: bool,
    /// Give up on a request after this long.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    timeout: Duration,
    /// Client runtime threads (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Start the ceiling server in this process (own thread and runtime) and load
    /// it instead of --url.
    #[arg(long, conflicts_with_all = ["setup", "url"])]
    ceiling: bool,
    /// Worker threads of the in-process ceiling server.
    #[arg(long, default_value_t = 1, requires = "ceiling")]
    ceiling_workers: usize,
    /// The in-process ceiling parses each body as JSON.
    #[arg(long, requires = "ceiling")]
    ceiling_parse: bool,
    /// Also report the CPU time this process used (e.g. the server's pid).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Name of the target in the report. Default: "ceiling" with --ceiling, else "xeno".
    #[arg(long)]
    label: Option<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CeilingServer(args)) => {
            let workers = args
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            ceiling::run_standalone(args.listen, workers, args.parse)
        }
        None => {
            let args = cli.load;
            runtime(args.client_threads)?.block_on(run(args))
        }
    }
}

/// A multi-thread runtime with `workers` threads (1: a current-thread runtime).
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
    let runtime = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    Ok(runtime)
}

async fn run(args: LoadArgs) -> Result<()> {
    let clock_base = Instant::now();
    let run_id = format!(
        "{:08x}",
        xeno_benches::data::mix(SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64)
            as u32
    );
    let url = if args.ceiling {
        let address = ceiling::spawn_in_process(args.ceiling_workers, args.ceiling_parse)?;
        format!("http://{address}")
    } else {
        args.url.clone()
    };
    let authorization = match &args.write_key {
        Some(key) => Some(HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
        ))?),
        None => None,
    };
    let target = Target::parse(&url, authorization)?;
    if args.setup && (args.admin_key.is_none() || args.write_key.is_none()) {
        bail!("--setup needs --admin-key and --write-key");
    }
    let duration = match (args.duration, args.events) {
        (None, None) => Some(Duration::from_secs(10)),
        (duration, _) => duration,
    };
    let max_requests = args.events.map(|events| events.div_ceil(args.batch as u64));
    let template = BatchTemplate::build(&run_id, args.batch, args.identify_percent, 0x5EED_0000);
    if template.len() > 500 * 1024 {
        eprintln!(
            "warning: a batch body is {} bytes, over the server's 500 KiB request limit",
            template.len()
        );
    }

    let sink_listen = match (args.sink_listen, args.setup) {
        (Some(listen), _) => Some(listen),
        (None, true) => Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        (None, false) => None,
    };
    let sink = match sink_listen {
        Some(listen) => Some(Sink::start(listen, clock_base, customer_prefix(&run_id))?),
        None => None,
    };
    if let (Some(sink), false) = (&sink, args.setup) {
        eprintln!("webhook sink listening on {}", sink.url);
    }
    let setup = match (&sink, args.setup) {
        (Some(sink), true) => {
            let setup = setup::prepare(
                &target,
                args.admin_key.as_deref().unwrap_or_default(),
                &args.org,
                &sink.url,
                field_seed_body(&run_id),
            )
            .await
            .context("--setup")?;
            eprintln!(
                "setup: segment {} ({:?}), webhook {} -> {}{}",
                setup.segment_id,
                setup::SEGMENT_RULE,
                setup.webhook_id,
                sink.url,
                if setup.created_webhook {
                    ""
                } else {
                    " (existing)"
                }
            );
            Some(setup)
        }
        _ => None,
    };

    let stop = Arc::new(AtomicBool::new(false));
    let stop_on_interrupt = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping the load");
            stop_on_interrupt.store(true, Ordering::Relaxed);
        }
    });
    let cpu_before = (
        cpu_seconds("self"),
        args.server_pid.and_then(|p| cpu_seconds(&p.to_string())),
    );
    let plan = LoadPlan {
        target: target.clone(),
        connections: args.connections,
        batch: args.batch,
        identify_percent: args.identify_percent,
        customers: args.customers,
        max_requests,
        duration,
        rate: args.rate,
        gzip: args.gzip,
        timeout: args.timeout,
        run_id: run_id.clone(),
    };
    let result = load::run(plan, clock_base, stop).await?;
    let cpu_after = (
        cpu_seconds("self"),
        args.server_pid.and_then(|p| cpu_seconds(&p.to_string())),
    );

    let webhooks = match &sink {
        Some(sink) => {
            sink.drain(result.identifies_acked, args.drain_idle, args.drain)
                .await;
            Some(sink.stats())
        }
        None => None,
    };
    if let Some(setup) = &setup {
        if args.keep_setup {
            eprintln!("kept webhook subscription {}", setup.webhook_id);
        } else if let Err(e) = setup
            .teardown(
                &target,
                args.admin_key.as_deref().unwrap_or_default(),
                &args.org,
            )
            .await
        {
            eprintln!("warning: {e:#}");
        }
    }

    let report = Report {
        label: args
            .label
            .clone()
            .unwrap_or_else(|| if args.ceiling { "ceiling" } else { "xeno" }.to_string()),
        url,
        run_id,
        args: &args,
        body_bytes: template.len(),
        result: &result,
        webhooks: webhooks.as_ref(),
        harness_cpu: delta(cpu_before.0, cpu_after.0),
        server_cpu: delta(cpu_before.1, cpu_after.1),
    };
    report.print();
    if result.requests_acked == 0 {
        // Reported above already; the exit status lets a script notice.
        eprintln!("error: no request was acknowledged");
        std::process::exit(1);
    }
    Ok(())
}

struct Report<'a> {
    label: String,
    url: String,
    run_id: String,
    args: &'a LoadArgs,
    body_bytes: usize,
    result: &'a LoadResult,
    webhooks: Option<&'a SinkStats>,
    harness_cpu: Option<f64>,
    server_cpu: Option<f64>,
}

impl Report<'_> {
    fn print(&self) {
        let r = self.result;
        let a = self.args;
        let seconds = r.elapsed.as_secs_f64();
        let events_per_s = r.events_acked as f64 / seconds;
        let mode = match a.rate {
            Some(rate) => format!("open-loop at {rate} events/s"),
            None => "closed-loop".to_string(),
        };
        println!(
            "xeno-bench  {} {}  run {}",
            self.label, self.url, self.run_id
        );
        println!(
            "load        {} connections, batch {} ({}% identify), {} customers, {mode}, body {:.1} KiB{}",
            a.connections,
            a.batch,
            a.identify_percent,
            a.customers,
            self.body_bytes as f64 / 1024.0,
            if a.gzip { " before gzip" } else { "" },
        );
        println!(
            "acked       {} events in {seconds:.2} s = {events_per_s:.0} events/s ({:.0} requests/s, {:.1} MB/s sent)",
            r.events_acked,
            r.requests_acked as f64 / seconds,
            r.body_bytes_sent as f64 / seconds / 1e6,
        );
        println!(
            "ack latency p50 {}  p99 {}  max {}  (acknowledged requests, {})",
            ms(&r.latency_us, 50.0),
            ms(&r.latency_us, 99.0),
            max_ms(&r.latency_us),
            if a.rate.is_some() {
                "from when due, if late"
            } else {
                "from send"
            }
        );
        if r.errors.is_empty() {
            println!("errors      none ({} requests)", r.requests);
        } else {
            let listed: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            println!(
                "errors      {} of {} requests",
                listed.join(", "),
                r.requests
            );
            for sample in &r.error_samples {
                println!("            {sample}");
            }
        }
        if let Some(w) = self.webhooks {
            println!(
                "webhooks    {} measured for {} identifies acked (entered {}, exited {}; {} ignored, {} malformed)",
                w.measured, r.identifies_acked, w.entered, w.exited, w.ignored, w.malformed
            );
            println!(
                "event->webhook p50 {}  p99 {}  max {}",
                ms(&w.latency_us, 50.0),
                ms(&w.latency_us, 99.0),
                max_ms(&w.latency_us)
            );
        }
        if self.harness_cpu.is_some() || self.server_cpu.is_some() {
            let cores = |cpu: Option<f64>| {
                cpu.map_or("n/a".to_string(), |c| {
                    format!("{c:.2} s ({:.2} cores)", c / seconds)
                })
            };
            println!(
                "cpu         harness {}{}",
                cores(self.harness_cpu),
                if a.server_pid.is_some() {
                    format!(", server {}", cores(self.server_cpu))
                } else {
                    String::new()
                }
            );
        }
        let webhook_json = self.webhooks.map(|w| {
            json!({
                "measured": w.measured,
                "entered": w.entered,
                "exited": w.exited,
                "p50_ms": quantile_ms(&w.latency_us, 50.0),
                "p99_ms": quantile_ms(&w.latency_us, 99.0),
                "max_ms": max_value_ms(&w.latency_us),
            })
        });
        let line = json!({
            "bench": "xeno-bench",
            "target": self.label,
            "url": self.url,
            "connections": a.connections,
            "batch": a.batch,
            "identify_percent": a.identify_percent,
            "customers": a.customers,
            "rate": a.rate,
            "gzip": a.gzip,
            "client_threads": a.client_threads,
            "seconds": round3(seconds),
            "requests": r.requests,
            "events_sent": r.events_sent,
            "events_acked": r.events_acked,
            "events_per_s": events_per_s.round(),
            "ack_p50_ms": quantile_ms(&r.latency_us, 50.0),
            "ack_p99_ms": quantile_ms(&r.latency_us, 99.0),
            "ack_max_ms": max_value_ms(&r.latency_us),
            "errors": r.errors,
            "identifies_acked": r.identifies_acked,
            "webhooks": webhook_json,
            "harness_cpu_s": self.harness_cpu.map(round3),
            "server_cpu_s": self.server_cpu.map(round3),
        });
        println!("{line}");
    }
}

fn quantile_ms(histogram: &Histogram<u64>, percentile: f64) -> Option<f64> {
    (!histogram.is_empty())
        .then(|| round3(histogram.value_at_percentile(percentile) as f64 / 1000.0))
}

fn max_value_ms(histogram: &Histogram<u64>) -> Option<f64> {
    (!histogram.is_empty()).then(|| histogram.max() as f64 / 1000.0)
}

fn ms(histogram: &Histogram<u64>, percentile: f64) -> String {
    quantile_ms(histogram, percentile).map_or("n/a".to_string(), |v| format!("{v:.2} ms"))
}

fn max_ms(histogram: &Histogram<u64>) -> String {
    max_value_ms(histogram).map_or("n/a".to_string(), |v| format!("{v:.2} ms"))
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

fn delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

/// User plus system CPU seconds of a process, from `/proc/<pid>/stat` (Linux; the
/// tick is taken as 100 Hz, the value on every mainstream Linux build).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / 100.0)
}

/// `10s`, `500ms`, `2m`, `1h`, or a plain number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s, 500ms or 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_the_units_the_help_names() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("10 parsecs").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["xeno-bench", "ceiling-server", "--listen", "127.0.0.1:9"])
            .unwrap();
        assert!(matches!(cli.command, Some(Command::CeilingServer(_))));
    }
}
