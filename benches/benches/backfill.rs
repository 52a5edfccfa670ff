//! `backfill`: creating a segment over a shard that already holds 1M customers,
//! i.e. `Shard::add_segment` of `total_spend > 100 and plan = "pro"`, which
//! compiles the rule, evaluates it for every customer and reports every initial
//! member as an `Entered` delta.
//!
//! Each customer has the ten profile attributes and one `Order Completed` with a
//! revenue uniform in 0..500, so `total_spend > 100` holds for about 80% and
//! `plan = "pro"` for about a third. Every iteration adds the segment (timed),
//! then removes it and clears the delta buffer (untimed).
//!
//! Sizes: `XENO_BACKFILL_CUSTOMERS` (1_000_000).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use xeno_benches::data::{
    BASE_TIME, SplitMix64, declare_profile_fields, env_size, load_profiles, order_event, rule,
};
use xeno_engine::model::Event;
use xeno_engine::shard::{Delta, SegmentId, Shard};
use xeno_engine::time::Timestamp;

fn build(customers: usize) -> Shard {
    let mut shard = Shard::new(Default::default());
    declare_profile_fields(&mut shard);
    let load_seconds = load_profiles(&mut shard, customers, 4, |_| BASE_TIME);
    let started = Instant::now();
    let mut rng = SplitMix64::new(5);
    let mut deltas = Vec::new();
    let at = Timestamp(BASE_TIME.0 + 1);
    for i in 0..customers {
        let revenue = rng.below(50_000) as f64 / 100.0;
        let order = order_event(format!("order-{i}"), i, at, revenue);
        shard.apply(&order, at, &mut deltas).expect("applies");
    }
    println!(
        "backfill setup: {customers} customers x 10 attributes in {load_seconds:.2} s, \
         one order each in {:.2} s; heap {:.0} MB",
        started.elapsed().as_secs_f64(),
        shard.heap_bytes() as f64 / 1e6,
    );
    shard
}

fn bench_backfill(c: &mut Criterion) {
    let customers = env_size("XENO_BACKFILL_CUSTOMERS", 1_000_000, 10_000);
    let mut shard = build(customers);
    let history: Vec<Event> = Vec::new();
    // total_spend > 100 and plan = "pro"
    let pro_spenders = rule(json!({"and": [
        {"condition": {"field": "total_spend", "op": ">", "value": 100}},
        {"condition": {"field": "plan", "op": "=", "value": "pro"}}
    ]}));
    let id = SegmentId(1);
    let mut deltas: Vec<Delta> = Vec::new();

    shard
        .add_segment(id, pro_spenders.clone(), &history, &mut deltas)
        .expect("valid rule");
    let members = deltas.len();
    assert_eq!(Some(members as u64), shard.members(id).map(|m| m.len()));
    assert!(
        members > customers / 5 && members < customers / 2,
        "{members} members"
    );
    shard.remove_segment(id).expect("exists");
    deltas.clear();

    let mut group = c.benchmark_group("backfill");
    group.throughput(Throughput::Elements(customers as u64));
    group.sample_size(30);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function(format!("add_segment_{customers}_customers"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let rule = pro_spenders.clone();
                let started = Instant::now();
                shard
                    .add_segment(id, rule, &history, &mut deltas)
                    .expect("valid rule");
                total += started.elapsed();
                assert_eq!(deltas.len(), members);
                shard.remove_segment(id).expect("exists");
                deltas.clear();
            }
            black_box(&shard);
            total
        })
    });
    group.finish();
    println!(
        "backfill result: segment `total_spend > 100 and plan = \"pro\"` over {customers} \
         customers has {members} members ({:.1}%), one Entered delta each",
        100.0 * members as f64 / customers as f64
    );
}

criterion_group!(benches, bench_backfill);
criterion_main!(benches);
