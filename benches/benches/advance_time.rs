//! `advance_time`: the cost of moving a shard's clock forward when some customers'
//! answers expire, to show it grows with the customers that are due, not with the
//! customers the shard holds.
//!
//! One shard holds 1M customers (ten profile attributes each) and one segment,
//! `last_seen within_last 7d`, of which every customer is a member. Deadlines are
//! spread evenly over the 7-day window: customer `i` expires at
//! `start + 1 ms + floor(i * 7d / N)`. Advancing the clock by
//! `step = due * 7d / N` therefore fires exactly `due` customers (asserted on
//! every iteration). After each timed `advance_time`, and outside the timing, every
//! customer that left gets an event stamped at the instant it expired, which puts
//! it back in the segment with a deadline exactly 7 days later: the deadline
//! layout is the same after every step, so the three due fractions (0.01%, 0.1%
//! and 1% of customers) run on the same shard, one after the other, for as many
//! iterations as criterion wants.
//!
//! Sizes: `XENO_ADVANCE_CUSTOMERS` (1_000_000).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use xeno_benches::data::{
    BASE_TIME, customer_id, declare_profile_fields, env_size, load_profiles, rule,
};
use xeno_engine::model::Event;
use xeno_engine::shard::{Cause, Delta, SegmentId, Shard, Transition};
use xeno_engine::time::{DAY, Timestamp};

const WINDOW: i64 = 7 * DAY;

struct Expiring {
    shard: Shard,
    customers: usize,
    /// Per customer (dense id - 1): the instant it next leaves the segment.
    deadlines: Vec<i64>,
    deltas: Vec<Delta>,
    refreshes: u64,
}

impl Expiring {
    fn build(customers: usize) -> Expiring {
        let mut shard = Shard::new(Default::default());
        declare_profile_fields(&mut shard);
        let start = BASE_TIME.0;
        let deadlines: Vec<i64> = (0..customers)
            .map(|i| start + 1 + (i as i128 * WINDOW as i128 / customers as i128) as i64)
            .collect();
        // The identify's timestamp is the customer's `last_seen`.
        let load_seconds = load_profiles(&mut shard, customers, 3, |i| {
            Timestamp(deadlines[i] - WINDOW)
        });
        for i in [0, customers / 2, customers - 1] {
            assert_eq!(
                shard.customer_row(&customer_id(i)),
                Some(i as u32 + 1),
                "customers are created in order, dense ids from 1"
            );
        }
        let history: Vec<Event> = Vec::new();
        let mut deltas = Vec::new();
        let started = Instant::now();
        // last_seen within_last 7d
        let recently_seen = rule(json!(
            {"condition": {"field": "last_seen", "op": "within_last", "value": "7d"}}
        ));
        shard
            .add_segment(SegmentId(1), recently_seen, &history, &mut deltas)
            .expect("valid rule");
        let backfill_seconds = started.elapsed().as_secs_f64();
        assert_eq!(deltas.len(), customers, "every customer starts as a member");
        deltas.clear();
        shard.advance_time(Timestamp(start), &mut deltas);
        assert!(deltas.is_empty(), "nobody is due at the start");
        println!(
            "advance_time setup: {customers} customers loaded in {load_seconds:.2} s, segment \
             `last_seen within_last 7d` backfilled in {backfill_seconds:.2} s, \
             {customers} pending deadlines, heap {:.0} MB",
            shard.heap_bytes() as f64 / 1e6
        );
        Expiring {
            shard,
            customers,
            deadlines,
            deltas,
            refreshes: 0,
        }
    }

    /// The clock step that fires exactly `due` customers.
    fn step_for(&self, due: usize) -> i64 {
        let total = due as i128 * WINDOW as i128;
        assert!(
            total % self.customers as i128 == 0,
            "{due} due of {} customers needs a whole-millisecond step",
            self.customers
        );
        (total / self.customers as i128) as i64
    }

    /// One timed `advance_time` by `step`; then, untimed, checks that exactly `due`
    /// customers left and brings them back with fresh deadlines.
    fn advance(&mut self, step: i64, due: usize) -> Duration {
        let to = Timestamp(self.shard.now().0 + step);
        let started = Instant::now();
        self.shard.advance_time(to, &mut self.deltas);
        let elapsed = started.elapsed();
        assert_eq!(self.deltas.len(), due, "exactly the due customers fire");
        let mut unused = Vec::new();
        for delta in &self.deltas {
            debug_assert!(delta.transition == Transition::Exited && delta.cause == Cause::Time);
            let index = delta.customer as usize - 1;
            let expired_at = self.deadlines[index];
            self.deadlines[index] = expired_at + WINDOW;
            self.refreshes += 1;
            let event = Event::identify(
                format!("refresh-{}", self.refreshes),
                customer_id(index),
                Timestamp(expired_at),
                json!({}),
            );
            self.shard
                .apply(&event, to, &mut unused)
                .expect("refresh applies");
        }
        assert_eq!(unused.len(), due, "every refreshed customer re-enters");
        self.deltas.clear();
        elapsed
    }
}

fn bench_advance_time(c: &mut Criterion) {
    let customers = env_size("XENO_ADVANCE_CUSTOMERS", 1_000_000, 10_000);
    let mut expiring = Expiring::build(customers);

    let mut group = c.benchmark_group("advance_time");
    // Each timed step is followed by an untimed refresh of the due customers that
    // costs a few times more than the step, so wall time is about 4x these.
    group.sample_size(30);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    // (label, due customers); totals in ns and due customers, for the summary.
    let mut summary: BTreeMap<usize, (String, u128, u64)> = BTreeMap::new();
    for (label, basis_points) in [("0.01%", 1), ("0.1%", 10), ("1%", 100)] {
        let due = customers * basis_points / 10_000;
        assert!(due > 0, "{customers} customers is too few for {label} due");
        let step = expiring.step_for(due);
        group.throughput(Throughput::Elements(due as u64));
        let id = BenchmarkId::new(
            format!("{customers}_customers"),
            format!("{due}_due_{label}"),
        );
        let mut total_ns = 0u128;
        let mut total_due = 0u64;
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += expiring.advance(step, due);
                }
                total_ns += total.as_nanos();
                total_due += iters * due as u64;
                black_box(&expiring.shard);
                total
            })
        });
        summary.insert(due, (label.to_string(), total_ns, total_due));
    }
    group.finish();
    for (due, (label, total_ns, total_due)) in summary {
        println!(
            "advance_time result: {due} of {customers} customers due ({label}): \
             {:.1} ns per due customer, {:.3} ms per advance_time (mean over {} calls)",
            total_ns as f64 / total_due as f64,
            total_ns as f64 / (total_due / due as u64) as f64 / 1e6,
            total_due / due as u64,
        );
    }
}

criterion_group!(benches, bench_advance_time);
criterion_main!(benches);
