//! `memory`: bytes per customer of a shard holding N customers (default 1M), each
//! with the ten profile attributes and two `Order Completed` events, so every
//! built-in computed trait (total_spend, order_count, first/last_order_at,
//! first/last_seen) has a value. Not a criterion bench: it prints
//!
//! * `Shard::heap_bytes() / N` right after the load, when the deduplication
//!   memory still holds the 3N message ids just applied;
//! * the same once the dedup window has passed (the steady state of a shard whose
//!   customers were loaded more than two dedup windows ago);
//! * the process RSS growth over the load, from `/proc/self/statm`, divided by N,
//!   as a cross-check of the estimate (it also counts allocator slack and the
//!   spare capacity of grown vectors and maps).
//!
//! Sizes: `XENO_MEMORY_CUSTOMERS` (1_000_000 under `cargo bench`).

use std::time::Instant;

use xeno_benches::data::{
    BASE_TIME, SplitMix64, customer_id, declare_profile_fields, env_size, order_event,
    profile_traits,
};
use xeno_engine::model::Event;
use xeno_engine::shard::Shard;
use xeno_engine::time::{HOUR, Timestamp};

/// The page size, from the ELF auxiliary vector (`AT_PAGESZ`), so as not to link
/// libc for one number.
fn page_size() -> u64 {
    const AT_PAGESZ: u64 = 6;
    let auxv = std::fs::read("/proc/self/auxv").expect("/proc/self/auxv is readable");
    auxv.chunks_exact(16)
        .map(|pair| {
            let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().expect("8 bytes"));
            (word(&pair[..8]), word(&pair[8..]))
        })
        .find(|(key, _)| *key == AT_PAGESZ)
        .map_or(4096, |(_, value)| value)
}

/// Resident set size in bytes: the second field of `/proc/self/statm`, in pages.
fn rss_bytes(page_size: u64) -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm is readable");
    let resident_pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("statm has a resident field");
    resident_pages * page_size
}

fn main() {
    let customers = env_size("XENO_MEMORY_CUSTOMERS", 1_000_000, 10_000);
    assert!(customers > 0);
    let page = page_size();

    let rss_before = rss_bytes(page);
    let mut shard = Shard::new(Default::default());
    let empty_heap = shard.heap_bytes();
    declare_profile_fields(&mut shard);
    let started = Instant::now();
    let mut rng = SplitMix64::new(6);
    let mut deltas = Vec::new();
    let now = BASE_TIME;
    for i in 0..customers {
        let identify = Event::identify(
            format!("identify-{i}"),
            customer_id(i),
            Timestamp(now.0 - 3 * HOUR),
            profile_traits(&mut rng),
        );
        let applied = shard.apply(&identify, now, &mut deltas).expect("applies");
        assert!(applied.rejected.is_empty(), "{applied:?}");
        for order in 0..2 {
            let revenue = rng.below(50_000) as f64 / 100.0;
            let at = Timestamp(now.0 - (2 - order) * HOUR);
            let event = order_event(format!("order-{i}-{order}"), i, at, revenue);
            shard.apply(&event, now, &mut deltas).expect("applies");
        }
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let rss_loaded = rss_bytes(page);
    let heap_loaded = shard.heap_bytes();

    // Two dedup windows later both message-id sets have rotated out.
    let window = shard.config().dedup_window.millis();
    shard.advance_time(Timestamp(now.0 + window), &mut deltas);
    shard.advance_time(Timestamp(now.0 + 2 * window), &mut deltas);
    assert!(deltas.is_empty(), "no segments, no deltas");
    let heap_steady = shard.heap_bytes();
    let rss_steady = rss_bytes(page);

    let view = shard.customer(&customer_id(0)).expect("customer 0 exists");
    assert_eq!(view.attributes.len(), 10, "{view:?}");
    assert_eq!(
        view.computed.len(),
        6,
        "every built-in trait has a value: {view:?}"
    );

    let per_customer = |bytes: u64| bytes as f64 / customers as f64;
    println!(
        "memory setup: {customers} customers x (10 attributes + 2 orders) applied in \
         {load_seconds:.1} s; empty shard heap {empty_heap} B; page size {page} B"
    );
    println!(
        "memory result: heap_bytes {:.1} B/customer after load (incl. {} message ids in the \
         dedup memory), {:.1} B/customer after the dedup window; RSS delta {:.1} B/customer \
         after load ({:.0} MB -> {:.0} MB), {:.1} B/customer after the dedup window",
        per_customer(heap_loaded as u64),
        3 * customers,
        per_customer(heap_steady as u64),
        per_customer(rss_loaded.saturating_sub(rss_before)),
        rss_before as f64 / 1e6,
        rss_loaded as f64 / 1e6,
        per_customer(rss_steady.saturating_sub(rss_before)),
    );

    // The recovery point: the whole shard as bytes, and back.
    let started = std::time::Instant::now();
    let snapshot = shard.snapshot().expect("a shard can always be written");
    let write_seconds = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let restored =
        xeno_engine::shard::Shard::restore(&snapshot).expect("its own snapshot reads back");
    let read_seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        restored.customer(&customer_id(0)),
        shard.customer(&customer_id(0))
    );
    println!(
        "memory snapshot: {:.1} B/customer ({:.0} MB), written in {write_seconds:.2} s, restored in \
         {read_seconds:.2} s",
        per_customer(snapshot.len() as u64),
        snapshot.len() as f64 / 1e6,
    );
}
