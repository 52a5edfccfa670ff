//! `preview`: audience preview (exact count plus the first ten matching ids) of
//! `(total_spend > 5000 and visits < 3) or city = "Pune"` over 10M customers,
//! on the table `peers/preview_peer.py` builds (splitmix64, seed 42), so the
//! figure can sit beside Polars' and DuckDB's from the same machine.
//!
//! Customers are loaded the honest way, through `Shard::apply`: row `i` becomes
//! customer `c{i:08}` (dense id `i + 1`) with an identify carrying `visits` and
//! `city` and one `Order Completed` whose revenue is the row's `total_spend`
//! (a built-in computed trait). The count and sample are checked against a direct
//! evaluation of the generated rows and, at 1M and 10M rows, against the peer's
//! published checksums.
//!
//! Besides criterion's report, the bench times the query the way the peer does
//! (2 warm-up runs, then 15 timed runs) and prints one JSON line in the peer's
//! format, which `benches/compare-preview` reads.
//!
//! Sizes: `XENO_PREVIEW_ROWS` (10_000_000), `XENO_PREVIEW_RUNS` (15).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use xeno_benches::data::{
    BASE_TIME, PREVIEW_SEED, PreviewRow, check_preview_generator, env_size, preview_events,
    preview_rule_json, rule,
};
use xeno_engine::model::{AttrType, Event};
use xeno_engine::rule::{Rule, dsl};
use xeno_engine::shard::{Preview, Shard};

const RULE_TEXT: &str = r#"(total_spend > 5000 and visits < 3) or city = "Pune""#;
const SAMPLE: usize = 10;
const PEER_WARMUP_RUNS: usize = 2;

/// The rule parsed from its DSL text when the parser works, else built from the
/// JSON form (the DSL parser may still be a stub that panics).
fn preview_rule() -> (Rule, &'static str) {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let parsed = std::panic::catch_unwind(|| dsl::parse(RULE_TEXT));
    std::panic::set_hook(quiet);
    match parsed {
        Ok(Ok(parsed)) if parsed == rule(preview_rule_json()) => {
            (parsed, "dsl::parse (same AST as the JSON form)")
        }
        Ok(Ok(parsed)) => (parsed, "dsl::parse (an AST other than the JSON form's)"),
        Ok(Err(e)) => {
            eprintln!("preview: dsl::parse refused {RULE_TEXT:?} ({e}); using the JSON form");
            (
                rule(preview_rule_json()),
                "JSON form (dsl::parse refused the text)",
            )
        }
        Err(_) => (
            rule(preview_rule_json()),
            "JSON form (dsl::parse unavailable)",
        ),
    }
}

/// Loads rows `0..rows` of the preview table; returns the shard, the reference
/// count and first matching dense ids computed straight from the generator.
fn load(rows: usize) -> (Shard, u64, Vec<u32>, f64) {
    let mut shard = Shard::new(Default::default());
    shard.declare_field("visits", AttrType::Number).unwrap();
    shard.declare_field("city", AttrType::String).unwrap();
    let mut deltas = Vec::new();
    let mut reference_count = 0u64;
    let mut reference_sample = Vec::new();
    let started = Instant::now();
    for row in 0..rows {
        for event in preview_events(PREVIEW_SEED, row, BASE_TIME) {
            let applied = shard
                .apply(&event, BASE_TIME, &mut deltas)
                .expect("applies");
            assert!(
                !applied.duplicate && applied.rejected.is_empty(),
                "{applied:?}"
            );
        }
        if PreviewRow::generate(PREVIEW_SEED, row as u64).matches_preview_rule() {
            reference_count += 1;
            if reference_sample.len() < SAMPLE {
                reference_sample.push(row as u32 + 1);
            }
        }
        // The dedup memory is not what this bench is about; keep the load lean.
        if row % 1_000_000 == 999_999 {
            shard.forget_message_ids();
        }
    }
    let load_seconds = started.elapsed().as_secs_f64();
    assert!(deltas.is_empty(), "no segments, no deltas");
    (shard, reference_count, reference_sample, load_seconds)
}

fn check_preview(preview: &Preview, rows: usize, reference_count: u64, reference_sample: &[u32]) {
    assert_eq!(
        preview.count, reference_count,
        "count differs from the generator's"
    );
    assert_eq!(
        preview.sample, reference_sample,
        "sample differs from the generator's"
    );
    // The peer's published answers (row indexes; dense id = row index + 1).
    let peer_first_rows = [17u32, 21, 29, 38, 48, 53, 56, 57, 63, 64];
    let published = match rows {
        1_000_000 => Some(192_572),
        10_000_000 => Some(1_924_302),
        _ => None,
    };
    if let Some(matches) = published {
        assert_eq!(
            preview.count, matches,
            "count differs from preview_peer.py's"
        );
        let peer_dense: Vec<u32> = peer_first_rows.iter().map(|r| r + 1).collect();
        assert_eq!(
            preview.sample, peer_dense,
            "sample differs from preview_peer.py's"
        );
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn bench_preview(c: &mut Criterion) {
    let rows = env_size("XENO_PREVIEW_ROWS", 10_000_000, 100_000);
    let runs = env_size("XENO_PREVIEW_RUNS", 15, 3).max(1);
    check_preview_generator();
    let (rule, rule_source) = preview_rule();
    let (shard, reference_count, reference_sample, load_seconds) = load(rows);
    let history: Vec<Event> = Vec::new();
    let first = shard.preview(&rule, SAMPLE, &history).expect("valid rule");
    check_preview(&first, rows, reference_count, &reference_sample);
    // The engine scans on up to 8 threads, and on one below 2^20 rows
    // (`xeno_engine::preview`); reported like the peer's thread count.
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let scan_threads = if rows >= 1 << 20 { available.min(8) } else { 1 };
    println!(
        "preview setup: {rows} customers loaded through Shard::apply (2 events each) in \
         {load_seconds:.1} s ({:.0} events/s); rule from {rule_source}; {} matches, sample \
         {:?} (dense ids); heap {:.0} MB",
        2.0 * rows as f64 / load_seconds,
        first.count,
        first.sample,
        shard.heap_bytes() as f64 / 1e6,
    );

    let mut group = c.benchmark_group("preview");
    group.throughput(Throughput::Elements(rows as u64));
    group.sample_size(30);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function(format!("count_and_sample_{rows}_rows"), |b| {
        b.iter(|| {
            black_box(
                shard
                    .preview(black_box(&rule), SAMPLE, &history)
                    .expect("valid rule"),
            )
        })
    });
    group.finish();

    // The peer's protocol, for a like-for-like line next to its output.
    let mut timings_ms = Vec::with_capacity(runs);
    for run in 0..PEER_WARMUP_RUNS + runs {
        let started = Instant::now();
        let preview = shard.preview(&rule, SAMPLE, &history).expect("valid rule");
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        check_preview(&preview, rows, reference_count, &reference_sample);
        if run >= PEER_WARMUP_RUNS {
            timings_ms.push(elapsed_ms);
        }
    }
    timings_ms.sort_by(f64::total_cmp);
    let round = |x: f64| (x * 1e3).round() / 1e3;
    let line = json!({
        "engine": "xeno",
        "query": "count+sample",
        "rows": rows,
        "matches": first.count,
        "median_ms": round(median(&timings_ms)),
        "min_ms": round(timings_ms[0]),
        "max_ms": round(timings_ms[timings_ms.len() - 1]),
        "runs": runs,
        "warmup": PEER_WARMUP_RUNS,
        "threads": scan_threads,
        "version": env!("CARGO_PKG_VERSION"),
        "storage": "Shard columns: total_spend i32 at scale 100 (computed trait), visits i8, city u8 dictionary codes",
        // Row indexes, as the peer reports them.
        "sample": first.sample.iter().map(|id| id - 1).collect::<Vec<_>>(),
    });
    println!("preview result: {line}");
}

criterion_group!(benches, bench_preview);
criterion_main!(benches);
