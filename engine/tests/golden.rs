//! The golden table: DSL rule, one customer's history, `now`, expected answer.
//! Every operator and both sides of every window edge. Each row is checked three
//! ways: a segment created before `now` and carried there by `advance_time`
//! (the incremental path), a segment created at `now` (backfill), and an audience
//! preview at `now`.

use serde_json::json;
use xeno_engine::model::{AttrType, Event};
use xeno_engine::rule::dsl;
use xeno_engine::shard::{SegmentId, Shard};
use xeno_engine::time::{DAY, HOUR, Timestamp};

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;

fn history() -> Vec<Event> {
    let order = |n: u32, at: i64, props| {
        Event::track(
            format!("o{n}"),
            "ada",
            Timestamp(at),
            "Order Completed",
            props,
        )
    };
    vec![
        Event::identify(
            "i1",
            "ada",
            Timestamp(T0 - 10 * DAY),
            json!({
                "plan": "Pro", "age": 34, "vip": true, "city": "Pune",
                "email": "ada@example.com", "signup_at": "2025-12-01T00:00:00Z",
                "renewal_at": "2026-01-05T00:00:00Z", "tags": ["beta", "vip"],
            }),
        ),
        // An older identify must not overwrite the newer city.
        Event::identify(
            "i0",
            "ada",
            Timestamp(T0 - 30 * DAY),
            json!({"city": "Delhi"}),
        ),
        order(1, T0 - 40 * DAY, json!({"revenue": 120, "currency": "USD"})),
        order(2, T0 - 20 * DAY, json!({"revenue": 80, "currency": "USD"})),
        order(3, T0 - 5 * DAY, json!({"total": 300})),
        order(4, T0 - DAY, json!({"revenue": 50, "currency": "EUR"})),
        Event::track(
            "l1",
            "ada",
            Timestamp(T0 - 2 * HOUR),
            "Login",
            json!({"device": "ios"}),
        ),
    ]
}

const MS: i64 = 1;

/// (rule, now relative to T0, expected)
const TABLE: &[(&str, i64, bool)] = &[
    // comparisons on numbers
    ("age = 34", 0, true),
    ("age != 34", 0, false),
    ("age < 34", 0, false),
    ("age <= 34", 0, true),
    ("age > 33.5", 0, true),
    ("age >= 35", 0, false),
    ("age between 30 and 34", 0, true),
    ("age between 35 and 40", 0, false),
    ("age in [1, 34]", 0, true),
    ("age not_in [34]", 0, false),
    // strings: exact by default, ignore_case on request
    ("plan = \"pro\"", 0, false),
    ("plan = \"pro\" ignore_case", 0, true),
    ("plan != \"pro\"", 0, true),
    ("plan < \"Q\"", 0, true),
    ("plan > \"q\" ignore_case", 0, false),
    ("plan between \"A\" and \"Z\"", 0, true),
    ("city in [\"Delhi\", \"Pune\"]", 0, true),
    ("city in [\"pune\"]", 0, false),
    ("city in [\"pune\"] ignore_case", 0, true),
    ("city not_in [\"Pune\"]", 0, false),
    ("city not_in [\"Mumbai\"]", 0, true),
    ("email contains \"@example\"", 0, true),
    ("email not_contains \"gmail\"", 0, true),
    ("email starts_with \"ada\"", 0, true),
    ("email starts_with \"ADA\" ignore_case", 0, true),
    ("email ends_with \".org\"", 0, false),
    ("email ends_with \".COM\" ignore_case", 0, true),
    // exists, and comparisons on a missing value are false
    ("city exists", 0, true),
    ("phone exists", 0, false),
    ("phone not_exists", 0, true),
    ("phone != \"x\"", 0, false),
    ("not phone = \"x\"", 0, true),
    ("phone not_in [\"x\"]", 0, false),
    // booleans
    ("vip = true", 0, true),
    ("vip != true", 0, false),
    ("vip = false", 0, false),
    // lists of strings
    ("tags contains \"beta\"", 0, true),
    ("tags contains \"BETA\"", 0, false),
    ("tags contains \"BETA\" ignore_case", 0, true),
    ("tags not_contains \"beta\"", 0, false),
    ("tags in [\"x\", \"vip\"]", 0, true),
    ("tags not_in [\"x\"]", 0, true),
    // absolute times (strict before/after)
    ("signup_at before \"2025-12-01T00:00:00.001Z\"", 0, true),
    ("signup_at before \"2025-12-01T00:00:00Z\"", 0, false),
    ("signup_at after \"2025-12-01T00:00:00Z\"", 0, false),
    ("signup_at after \"2025-11-30T23:59:59.999Z\"", 0, true),
    ("signup_at = \"2025-12-01T00:00:00Z\"", 0, true),
    (
        "signup_at between \"2025-11-01T00:00:00Z\" and \"2025-12-01T00:00:00Z\"",
        0,
        true,
    ),
    // within_last: last order at T0-1d, true while t + W > now
    ("last_order_at within_last 1d", -MS, true),
    ("last_order_at within_last 1d", 0, false),
    ("last_order_at within_last 24h", -MS, true),
    // not_within_last: true once t + W <= now
    ("last_order_at not_within_last 1d", -MS, false),
    ("last_order_at not_within_last 1d", 0, true),
    // within_next: renewal at T0+4d, true while now < t <= now + W
    ("renewal_at within_next 4d", -MS, false),
    ("renewal_at within_next 4d", 0, true),
    ("renewal_at within_next 4d", 4 * DAY - MS, true),
    ("renewal_at within_next 4d", 4 * DAY, false),
    // performed: orders at -40d, -20d, -5d, -1d
    ("performed \"Order Completed\"", 0, true),
    ("performed \"Order Completed\" at_least 4 times", 0, true),
    ("performed \"Order Completed\" at_least 5 times", 0, false),
    ("performed \"Order Completed\" at_most 3 times", 0, false),
    ("performed \"Order Completed\" at_most 4 times", 0, true),
    ("performed \"Order Completed\" exactly 4 times", 0, true),
    (
        "performed \"Order Completed\" at_least 3 times within 30d",
        0,
        true,
    ),
    (
        "performed \"Order Completed\" at_least 3 times within 30d",
        10 * DAY - MS,
        true,
    ),
    (
        "performed \"Order Completed\" at_least 3 times within 30d",
        10 * DAY,
        false,
    ),
    (
        "performed \"Order Completed\" exactly 2 times within 30d",
        10 * DAY,
        true,
    ),
    (
        "performed \"Order Completed\" at_most 2 times within 30d",
        10 * DAY - MS,
        false,
    ),
    ("performed \"Order Completed\" where revenue > 100", 0, true),
    (
        "performed \"Order Completed\" where revenue > 100 within 30d",
        0,
        false,
    ),
    (
        "performed \"Order Completed\" where revenue > 100 within 41d",
        0,
        true,
    ),
    (
        "performed \"Order Completed\" where (revenue > 10 and currency = \"EUR\") exactly 1 time",
        0,
        true,
    ),
    (
        "performed \"Order Completed\" where currency = \"eur\" ignore_case",
        0,
        true,
    ),
    (
        "performed \"Order Completed\" where revenue not_exists",
        0,
        true,
    ),
    ("not performed \"Login\" within 1h", 0, true),
    ("not performed \"Login\" within 3h", 0, false),
    ("not performed \"Login\" within 3h", HOUR, true),
    (
        "performed \"Login\" where device in [\"ios\", \"android\"]",
        0,
        true,
    ),
    ("performed \"Signup\"", 0, false),
    ("not performed \"Signup\"", 0, true),
    ("performed \"Signup\" at_most 0 times", 0, true),
    // built-in computed traits (revenue, else total)
    ("total_spend = 550", 0, true),
    ("order_count = 4", 0, true),
    ("first_order_at within_last 40d", -MS, true),
    ("first_order_at within_last 40d", 0, false),
    ("first_seen = \"2025-11-22T00:00:00Z\"", 0, true),
    ("last_seen within_last 2h", -MS, true),
    ("last_seen within_last 2h", 0, false),
    // nesting
    (
        "total_spend > 5000 and (age < 3 or city in [\"Pune\", \"Delhi\"]) and last_order_at within_last 30d",
        0,
        false,
    ),
    (
        "total_spend > 500 and (age < 3 or city in [\"Pune\", \"Delhi\"]) and last_order_at within_last 30d",
        0,
        true,
    ),
    ("not (age > 30 or vip = false)", 0, false),
    ("(age > 30 or vip = false) and not plan = \"Free\"", 0, true),
];

fn shard_with_history(now: i64) -> (Shard, Vec<Event>) {
    let mut shard = Shard::new(Default::default());
    shard.declare_field("phone", AttrType::String).unwrap();
    let events = history();
    let mut deltas = Vec::new();
    for e in &events {
        let applied = shard.apply(e, Timestamp(now), &mut deltas).unwrap();
        assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
    }
    (shard, events)
}

#[test]
fn golden_table() {
    let mut failures = Vec::new();
    for (i, &(text, offset, expected)) in TABLE.iter().enumerate() {
        let rule = dsl::parse(text).unwrap_or_else(|e| panic!("row {i} `{text}`: {e}"));
        let now = T0 + offset;
        // Incremental: segment exists before, time moves to `now`.
        let (mut shard, events) = shard_with_history(T0 - 60 * DAY);
        let mut deltas = Vec::new();
        shard
            .add_segment(SegmentId(1), rule.clone(), &events, &mut deltas)
            .unwrap();
        shard.advance_time(Timestamp(T0 - 3 * DAY), &mut deltas);
        shard.advance_time(Timestamp(now), &mut deltas);
        let incremental = shard.members(SegmentId(1)).unwrap().len() == 1;
        // Backfill: segment created at `now`.
        let (mut fresh, events) = shard_with_history(now);
        fresh
            .add_segment(SegmentId(2), rule.clone(), &events, &mut deltas)
            .unwrap();
        let backfill = fresh.members(SegmentId(2)).unwrap().len() == 1;
        let preview = fresh.preview(&rule, 10, &events).unwrap().count == 1;
        if (incremental, backfill, preview) != (expected, expected, expected) {
            failures.push(format!(
                "row {i} `{text}` at T0{offset:+}ms: expected {expected}, incremental {incremental}, backfill {backfill}, preview {preview}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn latest_identify_wins_whatever_the_order() {
    let (shard, _) = shard_with_history(T0);
    let view = shard.customer("ada").unwrap();
    let city = view.attributes.iter().find(|(k, _)| k == "city").unwrap();
    assert_eq!(city.1, xeno_engine::model::AttrValue::String("Pune".into()));
}

/// Invalid rules: the error names the place, the field and the reason.
#[test]
fn validation_errors_are_specific() {
    let (mut shard, events) = shard_with_history(T0);
    let cases: &[(&str, &str, &str)] = &[
        ("nosuch > 3", "nosuch", "unknown field"),
        ("age > \"x\"", "age", "is a number"),
        ("city > 3", "city", "is a string"),
        ("vip < true", "vip", "only = and !="),
        ("age within_last 3d", "age", "number"),
        ("tags starts_with \"a\"", "tags", "list of strings"),
        ("age = 3 ignore_case", "age", "ignore_case"),
        ("age between 5 and 1", "age", "low end is greater"),
        ("signup_at > \"yesterday\"", "signup_at", "RFC 3339"),
        (
            "age > 3 and (city = 1 or vip = true)",
            "city",
            "/and/1/or/0/condition",
        ),
    ];
    for (text, field, reason) in cases {
        let rule = dsl::parse(text).unwrap();
        let err = shard
            .add_segment(SegmentId(9), rule, &events, &mut Vec::new())
            .unwrap_err();
        let xeno_engine::shard::SegmentError::Rule(e) = &err else {
            panic!("{text}: {err}")
        };
        assert_eq!(e.field.as_deref(), Some(*field), "{text}: {err}");
        assert!(
            err.to_string().contains(reason),
            "{text}: `{err}` lacks `{reason}`"
        );
    }
    // The JSON form refuses unknown operators and keys instead of matching everything.
    for bad in [
        json!({"condition": {"field": "age", "op": "~", "value": 3}}),
        json!({"condition": {"field": "age", "op": ">", "value": 3, "extra": 1}}),
        json!({"conditon": {"field": "age", "op": ">", "value": 3}}),
        json!({"performed": {"event": "X", "at_least": 1, "at_most": 2}}),
        json!({"and": []}),
    ] {
        let parsed: Result<xeno_engine::rule::Rule, _> = serde_json::from_value(bad.clone());
        let accepted = parsed
            .map(|rule| {
                shard
                    .add_segment(SegmentId(10), rule, &events, &mut Vec::new())
                    .is_ok()
            })
            .unwrap_or(false);
        assert!(!accepted, "{bad} was accepted");
    }
}

/// A computed trait declared after the events arrived is filled from history
/// and then equals the same trait declared before them.
#[test]
fn traits_declared_late_are_filled_from_history() {
    use xeno_engine::traits::{Aggregate, ComputedTraitDef};
    let def = ComputedTraitDef {
        name: "eur_orders".into(),
        event: Some("Order Completed".into()),
        aggregate: Aggregate::Count,
        of: Vec::new(),
        filter: Some(dsl::parse("currency = \"EUR\" or total exists").unwrap()),
        window: None,
        value_type: None,
    };
    let events = history();
    let mut early = Shard::new(Default::default());
    early.declare_trait(def.clone(), &Vec::new()).unwrap();
    let mut deltas = Vec::new();
    for e in &events {
        early.apply(e, Timestamp(T0), &mut deltas).unwrap();
    }
    let (mut late, events) = shard_with_history(T0);
    late.declare_trait(def, &events).unwrap();
    let value = |s: &Shard| {
        s.customer("ada")
            .unwrap()
            .computed
            .into_iter()
            .find(|(name, _)| name == "eur_orders")
            .map(|(_, v)| v)
    };
    assert_eq!(
        value(&late),
        Some(xeno_engine::model::AttrValue::Number(2.0))
    );
    assert_eq!(value(&late), value(&early));
    // Its name is taken now, by traits and attributes alike.
    let again = ComputedTraitDef {
        name: "city".into(),
        event: None,
        aggregate: Aggregate::Count,
        of: Vec::new(),
        filter: None,
        window: None,
        value_type: None,
    };
    assert!(late.declare_trait(again, &events).is_err());
}

/// Include/exclude across segments, as campaigns will target audiences.
#[test]
fn audiences_combine_segments() {
    let (mut shard, events) = shard_with_history(T0);
    for (who, city) in [("bob", "Delhi"), ("cy", "Pune"), ("di", "Mumbai")] {
        let e = Event::identify(
            format!("x-{who}"),
            who,
            Timestamp(T0),
            json!({"city": city}),
        );
        shard.apply(&e, Timestamp(T0), &mut Vec::new()).unwrap();
    }
    let mut deltas = Vec::new();
    for (id, text) in [
        (1, "city = \"Pune\""),
        (2, "city = \"Delhi\""),
        (3, "order_count > 0"),
    ] {
        shard
            .add_segment(
                SegmentId(id),
                dsl::parse(text).unwrap(),
                &events,
                &mut deltas,
            )
            .unwrap();
    }
    let names = |bitmap: roaring::RoaringBitmap| {
        let mut v: Vec<String> = bitmap
            .iter()
            .map(|row| shard.customer_id(row).unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let any = shard
        .audience(&[SegmentId(1), SegmentId(2)], &[], &[])
        .unwrap();
    assert_eq!(names(any), ["ada", "bob", "cy"]);
    let pune_buyers = shard
        .audience(&[SegmentId(1)], &[SegmentId(3)], &[])
        .unwrap();
    assert_eq!(names(pune_buyers), ["ada"]);
    let all_but_buyers = shard.audience(&[], &[], &[SegmentId(3)]).unwrap();
    assert_eq!(names(all_but_buyers), ["bob", "cy", "di"]);
    assert!(shard.audience(&[SegmentId(99)], &[], &[]).is_err());
}

/// Events the engine cannot apply are refused whole, with the reason.
#[test]
fn unusable_events_are_refused_not_dropped() {
    use xeno_engine::shard::ApplyError;
    let mut shard = Shard::new(Default::default());
    let mut deltas = Vec::new();
    let mut no_id = Event::identify("", "ada", Timestamp(T0), json!({}));
    assert_eq!(
        shard.apply(&no_id, Timestamp(T0), &mut deltas),
        Err(ApplyError::NoMessageId)
    );
    no_id.message_id = "m1".into();
    no_id.user_id = None;
    assert_eq!(
        shard.apply(&no_id, Timestamp(T0), &mut deltas),
        Err(ApplyError::NoIdentity)
    );
    let far = Event::identify("m2", "ada", Timestamp(i64::MIN + 1), json!({}));
    assert!(matches!(
        shard.apply(&far, Timestamp(T0), &mut deltas),
        Err(ApplyError::TimestampOutOfRange(_))
    ));
    assert_eq!(shard.customer_count(), 0, "nothing was applied");
}

/// A history that cannot be read leaves the shard as it was.
#[test]
fn a_failing_history_changes_nothing() {
    use xeno_engine::ports::{EventHistory, HistoryError};
    use xeno_engine::traits::{Aggregate, ComputedTraitDef};
    struct Broken;
    impl EventHistory for Broken {
        fn replay(&self, _: &mut dyn FnMut(&Event)) -> Result<(), HistoryError> {
            Err(HistoryError("log unavailable".into()))
        }
    }
    let (mut shard, _) = shard_with_history(T0);
    let def = ComputedTraitDef {
        name: "logins".into(),
        event: Some("Login".into()),
        aggregate: Aggregate::Count,
        of: Vec::new(),
        filter: None,
        window: None,
        value_type: None,
    };
    assert!(shard.declare_trait(def.clone(), &Broken).is_err());
    // The name is free again and the trait works once history is readable.
    assert_eq!(shard.declare_trait(def, &history()).unwrap(), 0);
    let rule = dsl::parse("performed \"Login\" within 1d").unwrap();
    assert!(
        shard
            .add_segment(SegmentId(1), rule.clone(), &Broken, &mut Vec::new())
            .is_err()
    );
    assert!(shard.members(SegmentId(1)).is_none());
    shard
        .add_segment(SegmentId(1), rule, &history(), &mut Vec::new())
        .unwrap();
    assert_eq!(shard.members(SegmentId(1)).unwrap().len(), 1);
}

#[test]
fn shard_settings_are_validated() {
    use xeno_engine::shard::{ShardConfig, ShardConfigError};
    use xeno_engine::time::Duration;
    assert_eq!(ShardConfig::default().validate(), Ok(()));
    let bad_tick = ShardConfig {
        tick: Duration(2_000),
        ..ShardConfig::default()
    };
    assert_eq!(bad_tick.validate(), Err(ShardConfigError::Tick(2_000)));
    let bad_window = ShardConfig {
        dedup_window: Duration(0),
        ..ShardConfig::default()
    };
    assert_eq!(bad_window.validate(), Err(ShardConfigError::DedupWindow(0)));
}
