//! `apply`: events per second on one core for one tenant shard with 100k
//! customers (ten profile attributes each) and 1,000 segments, where a track
//! event can touch at most ten segments (checked from the rules in setup).
//!
//! The shard is warmed with one pass over a pool of 1M pre-generated track
//! events, so customers carry realistic counters (about ten events each); then
//! every timed batch applies the next contiguous slice of the pool. When the pool
//! is exhausted the message-id memory is cleared and every event is re-stamped
//! one pool-span later, outside the timing, so no measured event is a duplicate
//! and time keeps moving forward (about 1 ms per two events).
//!
//! Sizes: `XENO_APPLY_CUSTOMERS` (100_000), `XENO_APPLY_EVENT_NAMES` (100, ten
//! segments each), `XENO_APPLY_POOL` (1_000_000), `XENO_APPLY_BATCH` (10_000).
//!
//! A second case, `apply/identify_new_customers_9_attributes`, is the CSV import
//! path: identify events that each create a customer with nine profile
//! attributes (one unique email, low-cardinality names, city, country and plan,
//! two numbers and an RFC 3339 time), all declared ahead, with three segments on
//! them. Each timed batch applies `XENO_APPLY_IMPORT_ROWS` (100_000) such events
//! to a fresh shard; building the shard and dropping it are not timed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use xeno_benches::data::{
    BASE_TIME, CITIES, COUNTRIES, PLANS, SEGMENTS_PER_EVENT, SplitMix64, declare_profile_fields,
    env_size, event_name, fan_out_segments, load_profiles, segments_per_event_name, track_pool,
};
use xeno_engine::model::{AttrType, Event};
use xeno_engine::rule::dsl;
use xeno_engine::shard::{Delta, SegmentId, Shard};
use xeno_engine::time::{DAY, Timestamp};

struct Workload {
    shard: Shard,
    pool: Vec<Event>,
    /// Next event of the pool to apply.
    cursor: usize,
    /// How much later each lap over the pool is stamped than the previous one.
    lap_span: i64,
    deltas: Vec<Delta>,
    events: u64,
    delta_count: u64,
    duplicates: u64,
    /// Time spent in timed batches since the counters were last reset.
    timed: Duration,
}

impl Workload {
    /// Applies `count` events from the pool, wrapping (and re-stamping, untimed)
    /// as needed; returns the time spent in `Shard::apply` and clearing deltas.
    fn apply_batch(&mut self, count: usize) -> Duration {
        if self.cursor + count > self.pool.len() {
            self.next_lap();
        }
        let batch = &self.pool[self.cursor..self.cursor + count];
        let started = Instant::now();
        let mut duplicates = 0u64;
        for event in batch {
            let applied = self
                .shard
                .apply(event, event.timestamp, &mut self.deltas)
                .expect("generated events have a user id");
            duplicates += applied.duplicate as u64;
        }
        let produced = self.deltas.len();
        self.deltas.clear();
        let elapsed = started.elapsed();
        self.cursor += count;
        self.events += count as u64;
        self.delta_count += produced as u64;
        self.duplicates += duplicates;
        self.timed += elapsed;
        elapsed
    }

    /// Starts the pool over, one lap later: the same events and message ids, with
    /// the dedup memory cleared so none of them is a duplicate.
    fn next_lap(&mut self) {
        self.shard.forget_message_ids();
        for event in &mut self.pool {
            event.timestamp = Timestamp(event.timestamp.0 + self.lap_span);
        }
        self.cursor = 0;
    }
}

fn setup() -> Workload {
    let customers = env_size("XENO_APPLY_CUSTOMERS", 100_000, 10_000);
    let event_names = env_size("XENO_APPLY_EVENT_NAMES", 100, 100);
    let pool_len = env_size("XENO_APPLY_POOL", 1_000_000, 100_000);

    let mut shard = Shard::new(Default::default());
    declare_profile_fields(&mut shard);
    let load_at = Timestamp(BASE_TIME.0 - DAY);
    let load_seconds = load_profiles(&mut shard, customers, 1, |_| load_at);

    let segments = fan_out_segments(event_names);
    let per_name = segments_per_event_name(&segments, (0..event_names).map(event_name));
    let max_fan_out = per_name.values().copied().max().unwrap_or(0);
    assert!(
        max_fan_out <= SEGMENTS_PER_EVENT,
        "an event name feeds {max_fan_out} segments, the bench promises at most {SEGMENTS_PER_EVENT}"
    );
    let history: Vec<Event> = Vec::new();
    let mut deltas = Vec::new();
    let segment_count = segments.len();
    let started = Instant::now();
    for (id, rule) in segments {
        shard
            .add_segment(id, rule, &history, &mut deltas)
            .expect("generated rules are valid");
    }
    let backfill_seconds = started.elapsed().as_secs_f64();
    deltas.clear();

    let pool = track_pool(pool_len, customers, event_names, BASE_TIME, 2);
    let lap_span = (pool_len / 2) as i64 + 1;
    let mut workload = Workload {
        shard,
        pool,
        cursor: 0,
        lap_span,
        deltas,
        events: 0,
        delta_count: 0,
        duplicates: 0,
        timed: Duration::ZERO,
    };
    let started = Instant::now();
    while workload.cursor < workload.pool.len() {
        let count = 100_000.min(workload.pool.len() - workload.cursor);
        workload.apply_batch(count);
    }
    let warm_seconds = started.elapsed().as_secs_f64();
    assert_eq!(workload.duplicates, 0, "warm-up saw duplicates");
    println!(
        "apply setup: {customers} customers x 10 attributes loaded in {load_seconds:.2} s; \
         {segment_count} segments over {event_names} event names (max {max_fan_out} segments per \
         event name) added in {backfill_seconds:.2} s; warm-up pass of {pool_len} events in \
         {warm_seconds:.2} s ({:.0} events/s, {:.2} deltas/event); heap {:.0} MB",
        pool_len as f64 / warm_seconds,
        workload.delta_count as f64 / workload.events as f64,
        workload.shard.heap_bytes() as f64 / 1e6,
    );
    workload.events = 0;
    workload.delta_count = 0;
    workload.timed = Duration::ZERO;
    workload
}

fn bench_apply(c: &mut Criterion) {
    let batch = env_size("XENO_APPLY_BATCH", 10_000, 1_000);
    let customers = env_size("XENO_APPLY_CUSTOMERS", 100_000, 10_000);
    let segments = env_size("XENO_APPLY_EVENT_NAMES", 100, 100) * SEGMENTS_PER_EVENT;
    // Built on first use, so that a filter selecting only the import case skips
    // this setup (about a minute at full size).
    let mut lazy_workload: Option<Workload> = None;

    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(batch as u64));
    group.sample_size(50);
    group.warm_up_time(Duration::from_secs(3));
    group.measurement_time(Duration::from_secs(20));
    let name = format!("track_event_{customers}_customers_{segments}_segments");
    group.bench_function(name, |b| {
        let workload = lazy_workload.get_or_insert_with(|| {
            let workload = setup();
            assert!(batch <= workload.pool.len());
            assert_eq!(workload.shard.customer_count(), customers);
            assert_eq!(workload.shard.segment_ids().count(), segments);
            workload
        });
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += workload.apply_batch(batch);
            }
            black_box(&workload.shard);
            total
        })
    });
    group.finish();

    let Some(workload) = lazy_workload else {
        return;
    };
    assert_eq!(
        workload.duplicates, 0,
        "an event was counted as a duplicate during measurement"
    );
    println!(
        "apply result: {} events applied under criterion (warm-up and samples) at a mean \
         {:.0} events/s, 0 duplicates, {:.3} deltas per event, shard heap {:.0} MB",
        workload.events,
        workload.events as f64 / workload.timed.as_secs_f64(),
        workload.delta_count as f64 / workload.events.max(1) as f64,
        workload.shard.heap_bytes() as f64 / 1e6,
    );
}

/// The attributes of an imported customer row, all declared ahead as a tenant
/// does before an import.
const IMPORT_FIELDS: [(&str, AttrType); 9] = [
    ("email", AttrType::String),
    ("first_name", AttrType::String),
    ("last_name", AttrType::String),
    ("city", AttrType::String),
    ("country", AttrType::String),
    ("plan", AttrType::String),
    ("age", AttrType::Number),
    ("lifetime_spend", AttrType::Number),
    ("created_at", AttrType::Timestamp),
];

const FIRST_NAMES: [&str; 8] = [
    "Ada", "Grace", "Alan", "Linus", "Barbara", "Ken", "Edsger", "Frances",
];
const LAST_NAMES: [&str; 8] = [
    "Smith", "Lovelace", "Hopper", "Turing", "Liskov", "Thompson", "Dijkstra", "Allen",
];

/// `rows` identify events as the CSV import sends them, one new customer each.
fn import_rows(rows: usize) -> Vec<Event> {
    let mut rng = SplitMix64::new(7);
    let job = "0193b3c4-5d6e-7f80-9a1b-2c3d4e5f6071";
    (0..rows)
        .map(|row| {
            let created = Timestamp(BASE_TIME.0 - rng.below(3 * 365) as i64 * DAY);
            let traits = json!({
                "email": format!("user{row}@example.com"),
                "first_name": rng.pick(&FIRST_NAMES),
                "last_name": rng.pick(&LAST_NAMES),
                "city": rng.pick(&CITIES),
                "country": rng.pick(&COUNTRIES),
                "plan": rng.pick(&PLANS),
                "age": (18 + rng.below(62)) as f64,
                "lifetime_spend": rng.below(1_000_000) as f64 / 100.0,
                "created_at": created.to_rfc3339(),
            });
            Event::identify(
                format!("import-{job}-{row}"),
                format!("cust-{row}"),
                BASE_TIME,
                traits,
            )
        })
        .collect()
}

/// A shard with [`IMPORT_FIELDS`] declared and the three segments of the import
/// case, and no customers.
fn import_shard() -> Shard {
    let mut shard = Shard::new(Default::default());
    for (name, ty) in IMPORT_FIELDS {
        shard
            .declare_field(name, ty)
            .unwrap_or_else(|e| panic!("declaring {name}: {e}"));
    }
    let history: Vec<Event> = Vec::new();
    let mut deltas = Vec::new();
    let rules = [
        "lifetime_spend > 5000",
        r#"plan = "pro" and city = "Pune""#,
        "age < 30",
    ];
    for (id, text) in rules.iter().enumerate() {
        let rule = dsl::parse(text).unwrap_or_else(|e| panic!("`{text}`: {e}"));
        shard
            .add_segment(SegmentId(id as u64 + 1), rule, &history, &mut deltas)
            .expect("the import rules are valid");
    }
    shard
}

fn bench_import_identify(c: &mut Criterion) {
    let rows = env_size("XENO_APPLY_IMPORT_ROWS", 100_000, 1_000);
    let events = import_rows(rows);
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(rows as u64));
    group.sample_size(10);
    let mut applied_deltas: Option<usize> = None;
    group.bench_function("identify_new_customers_9_attributes", |b| {
        b.iter_batched(
            || (import_shard(), Vec::with_capacity(rows)),
            |(mut shard, mut deltas): (Shard, Vec<Delta>)| {
                for event in &events {
                    let applied = shard
                        .apply(event, BASE_TIME, &mut deltas)
                        .expect("import events have a user id");
                    debug_assert!(!applied.duplicate && applied.rejected.is_empty());
                }
                applied_deltas = Some(deltas.len());
                // Returned so that dropping them is not timed.
                (shard, deltas)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();

    // Not run when a filter skipped the case.
    let Some(applied_deltas) = applied_deltas else {
        return;
    };
    let mut shard = import_shard();
    let mut deltas = Vec::new();
    for event in &events {
        let applied = shard.apply(event, BASE_TIME, &mut deltas).expect("applies");
        assert!(
            !applied.duplicate && applied.rejected.is_empty(),
            "{applied:?}"
        );
    }
    assert_eq!(shard.customer_count(), rows);
    println!(
        "apply import result: {rows} customers created per batch, {} entered-segment deltas \
         (last timed batch: {applied_deltas}), shard heap {:.0} MB",
        deltas.len(),
        shard.heap_bytes() as f64 / 1e6,
    );
}

criterion_group!(benches, bench_apply, bench_import_identify);
criterion_main!(benches);
