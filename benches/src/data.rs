//! Data generators shared by the benches: customer profiles, track-event pools,
//! segment sets with a known dependency fan-out, and the audience-preview table
//! that `peers/preview_peer.py` builds bit for bit.
//!
//! Everything is deterministic (seeded splitmix64, fixed base time), so two runs
//! of a bench measure the same work and a figure in `BENCHMARKS.md` can be
//! reproduced. Nothing here reads a clock: time is always a [`Timestamp`] the
//! caller passes, as in the engine.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value as Json, json};
use xeno_engine::model::{AttrType, Event};
use xeno_engine::rule::{Performed, Rule};
use xeno_engine::shard::{Delta, SegmentId, Shard};
use xeno_engine::time::{DAY, Timestamp};

/// 2026-01-01T00:00:00Z: the instant every generated history is anchored to.
pub const BASE_TIME: Timestamp = Timestamp(1_767_225_600_000);

// ---------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------

/// splitmix64's increment (the 64-bit golden ratio).
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 finaliser: a bijection on `u64` with good avalanche.
#[inline]
pub fn mix(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A tiny seeded generator (splitmix64). A hand-written one instead of the `rand`
/// crate because the preview table must match the Python peer bit for bit, and
/// the same ten lines serve the other generators.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }

    /// A value in `0..bound` (`bound > 0`); the modulo bias is below 2^-40 for the
    /// bounds used here, which is irrelevant to a benchmark workload.
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        self.next_u64() % bound
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

/// Whether the target runs as a benchmark (`cargo bench` passes `--bench`) rather
/// than as a smoke test (`cargo test --benches`, which does not). Benches use
/// their full default sizes only in bench mode, so a test run stays fast.
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A size from the environment (`_` separators allowed, e.g. `1_000_000`), else
/// `bench_default` under `cargo bench` and `test_default` otherwise.
pub fn env_size(name: &str, bench_default: usize, test_default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
        Err(_) if bench_mode() => bench_default,
        Err(_) => test_default,
    }
}

/// A rule from its JSON form (see `xeno_engine::rule::ast`). Benches build rules
/// this way because the JSON form is the stable interface; the DSL text of each
/// rule is given next to it in comments.
pub fn rule(json: Json) -> Rule {
    serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("bad rule {json}: {e}"))
}

// ---------------------------------------------------------------------------
// Customer profiles
// ---------------------------------------------------------------------------

pub const PLANS: [&str; 3] = ["free", "pro", "enterprise"];
pub const CITIES: [&str; 20] = [
    "Pune",
    "Delhi",
    "Mumbai",
    "Bengaluru",
    "Chennai",
    "Kolkata",
    "Hyderabad",
    "Ahmedabad",
    "Jaipur",
    "Lucknow",
    "Surat",
    "Kanpur",
    "Nagpur",
    "Indore",
    "Thane",
    "Bhopal",
    "Patna",
    "Vadodara",
    "Ghaziabad",
    "Ludhiana",
];
pub const COUNTRIES: [&str; 8] = ["IN", "US", "GB", "DE", "FR", "BR", "JP", "AU"];
pub const DEVICES: [&str; 4] = ["ios", "android", "web", "desktop"];
pub const LANGUAGES: [&str; 6] = ["en", "hi", "mr", "ta", "de", "pt"];
pub const TAGS: [&str; 8] = [
    "newsletter",
    "beta",
    "churn-risk",
    "referral",
    "b2b",
    "student",
    "trial",
    "promo",
];

/// The ten profile attributes every generated customer has, with their types.
pub const PROFILE_FIELDS: [(&str, AttrType); 10] = [
    ("plan", AttrType::String),
    ("city", AttrType::String),
    ("age", AttrType::Number),
    ("score", AttrType::Number),
    ("country", AttrType::String),
    ("vip", AttrType::Bool),
    ("signup_at", AttrType::Timestamp),
    ("tags", AttrType::ListOfStrings),
    ("device", AttrType::String),
    ("language", AttrType::String),
];

/// Declares [`PROFILE_FIELDS`] on `shard`, as a tenant would before sending data.
pub fn declare_profile_fields(shard: &mut Shard) {
    for (name, ty) in PROFILE_FIELDS {
        shard
            .declare_field(name, ty)
            .unwrap_or_else(|e| panic!("declaring {name}: {e}"));
    }
}

/// The external id of generated customer `index` (0-based).
pub fn customer_id(index: usize) -> String {
    format!("c{index:08}")
}

/// Identify traits for one customer: the ten [`PROFILE_FIELDS`], drawn from `rng`.
/// `plan` is "pro" for about a third of customers, `vip` for about 5%, `score` is
/// uniform in 0..1000 with two decimals, `age` in 18..80, `signup_at` within the
/// two years before [`BASE_TIME`], and `tags` has 0 to 3 entries.
pub fn profile_traits(rng: &mut SplitMix64) -> Json {
    let signup = Timestamp(BASE_TIME.0 - rng.below(2 * 365) as i64 * DAY);
    let tag_count = rng.below(4) as usize;
    let tags: Vec<&str> = (0..tag_count).map(|_| *rng.pick(&TAGS)).collect();
    json!({
        "plan": rng.pick(&PLANS),
        "city": rng.pick(&CITIES),
        "age": 18 + rng.below(62),
        "score": rng.below(100_000) as f64 / 100.0,
        "country": rng.pick(&COUNTRIES),
        "vip": rng.below(20) == 0,
        "signup_at": signup.to_rfc3339(),
        "tags": tags,
        "device": rng.pick(&DEVICES),
        "language": rng.pick(&LANGUAGES),
    })
}

/// Applies an identify event with [`profile_traits`] for customers `0..count`,
/// customer `i` at `timestamp(i)` (also used as `now`, which must not decrease),
/// and checks every trait was stored. Returns the seconds the load took.
pub fn load_profiles(
    shard: &mut Shard,
    count: usize,
    seed: u64,
    timestamp: impl Fn(usize) -> Timestamp,
) -> f64 {
    let started = Instant::now();
    let mut rng = SplitMix64::new(seed);
    let mut deltas: Vec<Delta> = Vec::new();
    for i in 0..count {
        let at = timestamp(i);
        let event = Event::identify(
            format!("identify-{i}"),
            customer_id(i),
            at,
            profile_traits(&mut rng),
        );
        let applied = shard
            .apply(&event, at, &mut deltas)
            .expect("identify applies");
        assert!(
            !applied.duplicate && applied.rejected.is_empty(),
            "{applied:?}"
        );
        deltas.clear();
    }
    started.elapsed().as_secs_f64()
}

/// An `Order Completed` track event (feeds the built-in `total_spend`,
/// `order_count`, `first_order_at`, `last_order_at` traits).
pub fn order_event(message_id: String, customer: usize, at: Timestamp, revenue: f64) -> Event {
    Event::track(
        message_id,
        customer_id(customer),
        at,
        "Order Completed",
        json!({ "revenue": revenue }),
    )
}

// ---------------------------------------------------------------------------
// The `apply` workload: many segments, small fan-out per event
// ---------------------------------------------------------------------------

/// The name of generated track event `k` (`E0`, `E1`, ...).
pub fn event_name(k: usize) -> String {
    format!("E{k}")
}

/// Segments per event name in [`fan_out_segments`].
pub const SEGMENTS_PER_EVENT: usize = 10;

/// `SEGMENTS_PER_EVENT * event_names` segments, ten per event name `E`, each
/// reading only `E`'s counters and profile attributes that track events never
/// change. In DSL form, for `E = "E17"`:
///
/// ```text
///  0  performed "E17"
///  1  performed "E17" at_least 2 times within 30d
///  2  performed "E17" where value > 50
///  3  performed "E17" where value > 50 within 7d
///  4  performed "E17" at_least 3 times and plan = "pro"
///  5  performed "E17" within 30d and city = "Pune"
///  6  performed "E17" where value between 10 and 20 at_least 2 times
///  7  performed "E17" at_most 2 times within 30d and vip = true
///  8  not performed "E17" where value < 10 and age > 30
///  9  performed "E17" exactly 1 times within 14d or score >= 900
/// ```
///
/// Five of the ten are time-dependent, so applying events also exercises the
/// deadline index. Segment ids are `10 * k + j` for event `k`, variant `j`.
pub fn fan_out_segments(event_names: usize) -> Vec<(SegmentId, Rule)> {
    let cond = |field: &str, op: &str, value: Json| json!({"condition": {"field": field, "op": op, "value": value}});
    let mut segments = Vec::with_capacity(event_names * SEGMENTS_PER_EVENT);
    for k in 0..event_names {
        let e = event_name(k);
        let variants = [
            json!({"performed": {"event": e}}),
            json!({"performed": {"event": e, "at_least": 2, "within": "30d"}}),
            json!({"performed": {"event": e, "where": cond("value", ">", json!(50))}}),
            json!({"performed": {"event": e, "where": cond("value", ">", json!(50)), "within": "7d"}}),
            json!({"and": [{"performed": {"event": e, "at_least": 3}}, cond("plan", "=", json!("pro"))]}),
            json!({"and": [{"performed": {"event": e, "within": "30d"}}, cond("city", "=", json!("Pune"))]}),
            json!({"performed": {"event": e, "where": cond("value", "between", json!([10, 20])), "at_least": 2}}),
            json!({"and": [{"performed": {"event": e, "at_most": 2, "within": "30d"}}, cond("vip", "=", json!(true))]}),
            json!({"and": [{"not": {"performed": {"event": e, "where": cond("value", "<", json!(10))}}}, cond("age", ">", json!(30))]}),
            json!({"or": [{"performed": {"event": e, "exactly": 1, "within": "14d"}}, cond("score", ">=", json!(900))]}),
        ];
        debug_assert_eq!(variants.len(), SEGMENTS_PER_EVENT);
        for (j, variant) in variants.into_iter().enumerate() {
            segments.push((
                SegmentId((k * SEGMENTS_PER_EVENT + j) as u64),
                rule(variant),
            ));
        }
    }
    segments
}

/// Computed traits that every message updates, whatever its name: a segment that
/// reads one of them is re-evaluated on every event.
const EVERY_EVENT_TRAITS: [&str; 2] = ["first_seen", "last_seen"];

/// What a rule depends on, as far as event fan-out goes.
#[derive(Debug, Default)]
struct RuleDependencies {
    /// Track event names of its `performed` conditions.
    events: Vec<String>,
    /// Customer fields (attributes, computed traits) its conditions read.
    fields: Vec<String>,
}

fn collect_dependencies(rule: &Rule, deps: &mut RuleDependencies) {
    match rule {
        Rule::And(children) | Rule::Or(children) => {
            children.iter().for_each(|c| collect_dependencies(c, deps))
        }
        Rule::Not(inner) => collect_dependencies(inner, deps),
        Rule::Condition(condition) => deps.fields.push(condition.field.clone()),
        // A `where` reads event properties, not customer fields.
        Rule::Performed(Performed { event, .. }) => deps.events.push(event.clone()),
    }
}

/// For each track event name, how many of `segments` a track event of that name
/// can make the shard re-evaluate: those with a `performed` on the name, plus
/// those reading a trait every event updates (counted against every name).
/// Counted from the rules themselves, independently of the engine's index.
pub fn segments_per_event_name(
    segments: &[(SegmentId, Rule)],
    event_names: impl IntoIterator<Item = String>,
) -> BTreeMap<String, usize> {
    let mut per_name: BTreeMap<String, usize> =
        event_names.into_iter().map(|name| (name, 0)).collect();
    let mut on_every_event = 0;
    for (_, rule) in segments {
        let mut deps = RuleDependencies::default();
        collect_dependencies(rule, &mut deps);
        if deps
            .fields
            .iter()
            .any(|f| EVERY_EVENT_TRAITS.contains(&f.as_str()))
        {
            on_every_event += 1;
            continue;
        }
        deps.events.sort();
        deps.events.dedup();
        for event in deps.events {
            *per_name.entry(event).or_default() += 1;
        }
    }
    per_name.values_mut().for_each(|n| *n += on_every_event);
    per_name
}

/// A pool of `count` track events for the `apply` bench: customer uniform over
/// `0..customers`, name uniform over `E0..E{event_names - 1}`, property `value`
/// uniform in `0..100`, a unique `messageId` each. Event `j` is at
/// `start + j / 2` ms: time advances about 1 ms per two events, so windows and
/// the deadline index see time pass at a realistic, steady rate.
pub fn track_pool(
    count: usize,
    customers: usize,
    event_names: usize,
    start: Timestamp,
    seed: u64,
) -> Vec<Event> {
    let mut rng = SplitMix64::new(seed);
    let names: Vec<String> = (0..event_names).map(event_name).collect();
    (0..count)
        .map(|j| {
            let customer = rng.below(customers as u64) as usize;
            let name = rng.pick(&names).clone();
            let value = rng.below(100);
            Event::track(
                format!("track-{j}"),
                customer_id(customer),
                Timestamp(start.0 + (j / 2) as i64),
                name,
                json!({ "value": value }),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The audience-preview table (must match benches/peers/preview_peer.py)
// ---------------------------------------------------------------------------

/// Seed of the preview table, as in `preview_peer.py`.
pub const PREVIEW_SEED: u64 = 42;

/// `value(i, k) = mix(seed + (3*i + k + 1) * GAMMA)`, wrapping: the generator of
/// `preview_peer.py`, column `k` of row `i`.
#[inline]
pub fn preview_value(seed: u64, row: u64, k: u64) -> u64 {
    mix(seed.wrapping_add(row.wrapping_mul(3).wrapping_add(k + 1).wrapping_mul(GAMMA)))
}

/// `value(i, k)` for seed 42, rows 0..5, from `preview_peer.py`'s scalar
/// reference (`value_scalar`, Python integers): the Rust generator must give the
/// same numbers.
#[rustfmt::skip]
pub const PREVIEW_REFERENCE_VALUES: [[u64; 3]; 5] = [
    [13679457532755275413, 2949826092126892291, 5139283748462763858],
    [6349198060258255764, 701532786141963250, 16015981125662989062],
    [4028864712777624925, 14769051326987775908, 6270620877612482005],
    [11408980392250668974, 3779771651426294207, 9094045341461139646],
    [9470486766231111398, 9592552252706221495, 12270025419241524956],
];

/// Checks [`preview_value`] against [`PREVIEW_REFERENCE_VALUES`]; panics on a
/// difference.
pub fn check_preview_generator() {
    for (row, values) in PREVIEW_REFERENCE_VALUES.iter().enumerate() {
        for (k, value) in values.iter().enumerate() {
            assert_eq!(
                preview_value(PREVIEW_SEED, row as u64, k as u64),
                *value,
                "preview generator differs from preview_peer.py at row {row}, column {k}"
            );
        }
    }
}

/// One row of the preview table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviewRow {
    /// `value(i, 0) % 1_000_000`; `total_spend = cents as f64 / 100.0`.
    pub total_spend_cents: u64,
    /// `value(i, 1) % 10`.
    pub visits: u64,
    /// Index into [`CITIES`] (`value(i, 2) % 20`); the peer uses the same list.
    pub city_code: usize,
}

impl PreviewRow {
    pub fn generate(seed: u64, row: u64) -> PreviewRow {
        PreviewRow {
            total_spend_cents: preview_value(seed, row, 0) % 1_000_000,
            visits: preview_value(seed, row, 1) % 10,
            city_code: (preview_value(seed, row, 2) % 20) as usize,
        }
    }

    /// One IEEE-754 division, exactly as the peer computes it.
    pub fn total_spend(&self) -> f64 {
        self.total_spend_cents as f64 / 100.0
    }

    pub fn city(&self) -> &'static str {
        CITIES[self.city_code]
    }

    /// `(total_spend > 5000 and visits < 3) or city = "Pune"`, evaluated directly.
    pub fn matches_preview_rule(&self) -> bool {
        (self.total_spend() > 5000.0 && self.visits < 3) || self.city_code == 0
    }
}

/// The preview rule, `(total_spend > 5000 and visits < 3) or city = "Pune"`, in
/// JSON form.
pub fn preview_rule_json() -> Json {
    json!({"or": [
        {"and": [
            {"condition": {"field": "total_spend", "op": ">", "value": 5000}},
            {"condition": {"field": "visits", "op": "<", "value": 3}}
        ]},
        {"condition": {"field": "city", "op": "=", "value": "Pune"}}
    ]})
}

/// The two events that give a customer row `i` of the preview table: an identify
/// with `visits` and `city`, and one `Order Completed` whose `revenue` is the
/// row's `total_spend` (the built-in `total_spend` trait is a sum starting at 0,
/// and `0.0 + x == x` exactly, so the trait holds the row's value bit for bit).
pub fn preview_events(seed: u64, row: usize, at: Timestamp) -> [Event; 2] {
    let generated = PreviewRow::generate(seed, row as u64);
    [
        Event::identify(
            format!("p-identify-{row}"),
            customer_id(row),
            at,
            json!({"visits": generated.visits, "city": generated.city()}),
        ),
        order_event(format!("p-order-{row}"), row, at, generated.total_spend()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_generator_matches_the_python_reference_values() {
        // From preview_peer.py's scalar reference, seed 42.
        let expected: [[u64; 3]; 2] = [
            [
                13679457532755275413,
                2949826092126892291,
                5139283748462763858,
            ],
            [
                6349198060258255764,
                701532786141963250,
                16015981125662989062,
            ],
        ];
        for (row, values) in expected.iter().enumerate() {
            for (k, value) in values.iter().enumerate() {
                assert_eq!(preview_value(PREVIEW_SEED, row as u64, k as u64), *value);
            }
        }
    }

    #[test]
    fn preview_matches_at_one_million_rows_agree_with_the_peer() {
        let matching: Vec<u64> = (0..1_000_000u64)
            .filter(|&i| PreviewRow::generate(PREVIEW_SEED, i).matches_preview_rule())
            .collect();
        assert_eq!(matching.len(), 192_572);
        assert_eq!(&matching[..10], &[17, 21, 29, 38, 48, 53, 56, 57, 63, 64]);
    }

    #[test]
    fn fan_out_is_bounded_by_construction() {
        let segments = fan_out_segments(100);
        assert_eq!(segments.len(), 1_000);
        let per_name = segments_per_event_name(&segments, (0..100).map(event_name));
        assert_eq!(per_name.len(), 100);
        assert!(per_name.values().all(|&n| n == SEGMENTS_PER_EVENT));
    }

    #[test]
    fn a_segment_on_last_seen_counts_against_every_event() {
        let mut segments = fan_out_segments(2);
        segments.push((
            SegmentId(999),
            rule(json!({"condition": {"field": "last_seen", "op": "within_last", "value": "7d"}})),
        ));
        let per_name = segments_per_event_name(&segments, (0..2).map(event_name));
        assert_eq!(per_name["E0"], SEGMENTS_PER_EVENT + 1);
    }
}
