//! Audience preview (columnar, multi-threaded, short-circuiting) equals
//! row-by-row evaluation, on enough customers to span many blocks and threads,
//! with missing values in every column.

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value as Json, json};
use xeno_engine::model::{AttrType, Event};
use xeno_engine::rule::{CompareOp, Condition, Rule, Scalar, Test, TextOp};
use xeno_engine::shard::{SegmentId, Shard};
use xeno_engine::time::{DAY, Duration, Timestamp};

const CUSTOMERS: u64 = 200_003; // not a multiple of the block size
const T0: i64 = 1_767_225_600_000;
const CITIES: [&str; 6] = ["Pune", "Delhi", "pune", "Mumbai", "Chennai", "Kolkata"];

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

fn shard() -> &'static (Shard, Vec<Event>) {
    static SHARD: OnceLock<(Shard, Vec<Event>)> = OnceLock::new();
    SHARD.get_or_init(|| {
        let mut shard = Shard::new(Default::default());
        for (f, ty) in [
            ("spend", AttrType::Number),
            ("visits", AttrType::Number),
            ("city", AttrType::String),
            ("vip", AttrType::Bool),
            ("seen_at", AttrType::Timestamp),
            ("tags", AttrType::ListOfStrings),
        ] {
            shard.declare_field(f, ty).unwrap();
        }
        let mut deltas = Vec::new();
        let mut history = Vec::new();
        for i in 0..CUSTOMERS {
            let r = |k: u64| {
                mix(i
                    .wrapping_mul(8)
                    .wrapping_add(k)
                    .wrapping_mul(0x9E3779B97F4A7C15))
            };
            let mut traits = Map::new();
            // Each value is missing one time in eight.
            if r(0) % 8 != 0 {
                traits.insert("spend".into(), json!((r(1) % 10_000) as f64 / 10.0));
            }
            if r(2) % 8 != 0 {
                traits.insert("visits".into(), json!(r(3) % 10));
            }
            if r(4) % 8 != 0 {
                traits.insert("city".into(), json!(CITIES[(r(5) % 6) as usize]));
            }
            if r(6) % 8 != 0 {
                traits.insert("vip".into(), json!(r(7) % 2 == 0));
            }
            if r(1) % 8 != 1 {
                let at = Timestamp(T0 - (r(3) % (60 * DAY as u64)) as i64);
                traits.insert("seen_at".into(), json!(at.to_rfc3339()));
            }
            if r(5) % 8 != 2 {
                traits.insert("tags".into(), json!(["a", "b", "c"][..(r(7) % 3) as usize]));
            }
            let e = Event::identify(
                format!("m{i}"),
                format!("c{i}"),
                Timestamp(T0 - DAY),
                Json::Object(traits),
            );
            shard.apply(&e, Timestamp(T0), &mut deltas).unwrap();
            if i % 3 == 0 {
                let order = Event::track(
                    format!("o{i}"),
                    format!("c{i}"),
                    Timestamp(T0 - (i as i64 % 40) * DAY),
                    "Order Completed",
                    json!({"revenue": i % 500}),
                );
                shard.apply(&order, Timestamp(T0), &mut deltas).unwrap();
                history.push(order);
            }
            history.push(e);
        }
        (shard, history)
    })
}

fn cond(field: &str, test: Test) -> Rule {
    Rule::Condition(Condition {
        field: field.into(),
        test,
    })
}

fn arb_leaf() -> impl Strategy<Value = Rule> {
    let op = prop::sample::select(CompareOp::ALL.to_vec());
    let city = prop::sample::select(CITIES.to_vec()).prop_map(|c| Scalar::String(c.into()));
    prop_oneof![
        (
            prop::sample::select(vec!["spend", "visits", "total_spend", "order_count"]),
            op.clone(),
            0u32..1000
        )
            .prop_map(|(f, op, x)| cond(
                f,
                Test::Compare {
                    op,
                    value: Scalar::Number(x as f64 / 2.0),
                    ignore_case: false
                }
            )),
        (0u32..500, 0u32..500).prop_map(|(a, b)| cond(
            "spend",
            Test::Between {
                low: Scalar::Number(a.min(b) as f64),
                high: Scalar::Number(a.max(b) as f64)
            }
        )),
        (prop::collection::vec(0u32..10, 1..4), any::<bool>()).prop_map(|(v, negated)| cond(
            "visits",
            Test::In {
                values: v.into_iter().map(|x| Scalar::Number(x as f64)).collect(),
                negated,
                ignore_case: false
            }
        )),
        (op.clone(), city.clone(), any::<bool>()).prop_map(|(op, value, ignore_case)| cond(
            "city",
            Test::Compare {
                op,
                value,
                ignore_case
            }
        )),
        (
            prop::collection::vec(city, 1..3),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(values, negated, ignore_case)| cond(
                "city",
                Test::In {
                    values,
                    negated,
                    ignore_case
                }
            )),
        (
            prop::sample::select(vec![
                TextOp::Contains,
                TextOp::NotContains,
                TextOp::StartsWith,
                TextOp::EndsWith
            ]),
            prop::sample::select(vec!["un", "P", "ai"]),
            any::<bool>()
        )
            .prop_map(|(op, v, ignore_case)| cond(
                "city",
                Test::Text {
                    op,
                    value: v.into(),
                    ignore_case
                }
            )),
        any::<bool>().prop_map(|b| cond(
            "vip",
            Test::Compare {
                op: CompareOp::Eq,
                value: Scalar::Bool(b),
                ignore_case: false
            }
        )),
        (
            prop::sample::select(vec![
                "spend",
                "visits",
                "city",
                "vip",
                "seen_at",
                "tags",
                "last_order_at"
            ]),
            any::<bool>()
        )
            .prop_map(|(f, negated)| cond(f, Test::Exists { negated })),
        (
            prop::sample::select(vec!["seen_at", "last_order_at"]),
            1i64..60
        )
            .prop_map(|(f, d)| cond(f, Test::WithinLast(Duration(d * DAY)))),
        (1i64..60).prop_map(|d| cond("seen_at", Test::NotWithinLast(Duration(d * DAY)))),
        (1i64..60).prop_map(|d| cond("seen_at", Test::Before(Timestamp(T0 - d * DAY)))),
        prop::sample::select(vec!["a", "b", "c"]).prop_map(|t| cond(
            "tags",
            Test::Text {
                op: TextOp::Contains,
                value: t.into(),
                ignore_case: false
            }
        )),
        (0u32..3).prop_map(|k| Rule::Performed(xeno_engine::rule::Performed {
            event: "Order Completed".into(),
            filter: None,
            quantifier: xeno_engine::rule::Quantifier::AtLeast(k),
            within: Some(Duration(20 * DAY))
        })),
    ]
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    arb_leaf().prop_recursive(3, 10, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Rule::And),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Rule::Or),
            inner.prop_map(|r| Rule::Not(Box::new(r))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/preview.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn preview_equals_row_by_row_evaluation(rule in arb_rule(), sample in 0usize..40) {
        let (shard, history) = shard();
        let preview = shard.preview(&rule, sample, history).unwrap();
        let mut segmented = shard.clone();
        segmented.add_segment(SegmentId(1), rule.clone(), history, &mut Vec::new()).unwrap();
        // The row evaluator, not the scan that backfill also uses.
        let members = segmented.evaluate_from_scratch(SegmentId(1)).unwrap();
        prop_assert_eq!(segmented.members(SegmentId(1)).unwrap(), &members, "backfill of {:?}", rule);
        prop_assert_eq!(preview.count, members.len(), "count of {:?}", rule);
        let first: Vec<u32> = members.iter().take(sample).collect();
        prop_assert_eq!(preview.sample, first);
    }
}

#[test]
fn the_issue_example_matches_a_hand_count() {
    let (shard, history) = shard();
    let rule =
        xeno_engine::rule::dsl::parse("(spend > 500 and visits < 3) or city = \"Pune\"").unwrap();
    let preview = shard.preview(&rule, 5, history).unwrap();
    let mut expected = 0u64;
    for i in 0..CUSTOMERS {
        let view = shard.customer(&format!("c{i}")).unwrap();
        let get = |k: &str| {
            view.attributes
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        use xeno_engine::model::AttrValue::{Number, String as Str};
        let spend = matches!(get("spend"), Some(Number(s)) if s > 500.0);
        let visits = matches!(get("visits"), Some(Number(v)) if v < 3.0);
        let pune = matches!(get("city"), Some(Str(c)) if c == "Pune");
        expected += ((spend && visits) || pune) as u64;
    }
    assert_eq!(preview.count, expected);
    assert!(expected > 1000);
}

/// Customer `i`'s balance: four decimals, up to ±100_000.
fn balance(i: u64) -> f64 {
    ((mix(i + 2) % 2_000_000_000) as i64 - 1_000_000_000) as f64 / 10_000.0
}

/// Columns in their wider encodings (`u16` dictionary codes, `i32` numbers at
/// scale 10_000, `f64` numbers) give the row-by-row answer too; the shared
/// table above only needs `u8` codes and `i8`/`i16` numbers.
#[test]
fn wide_encodings_agree_with_row_by_row_evaluation() {
    let mut shard = Shard::new(Default::default());
    for (f, ty) in [
        ("place", AttrType::String),
        ("thirds", AttrType::Number),
        ("balance", AttrType::Number),
    ] {
        shard.declare_field(f, ty).unwrap();
    }
    let mut deltas = Vec::new();
    let mut history = Vec::new();
    for i in 0..5_000u64 {
        let mut traits = Map::new();
        if i % 9 != 0 {
            // 700 distinct strings: more than a byte code can tell apart.
            traits.insert("place".into(), json!(format!("p{}", mix(i) % 700)));
        }
        if i % 11 != 0 {
            // Most thirds are no short decimal, so the column stays f64.
            traits.insert("thirds".into(), json!((mix(i + 1) % 600) as f64 / 3.0));
        }
        if i % 13 != 0 {
            // Four decimals, up to ±100_000: i32 at scale 10_000.
            traits.insert("balance".into(), json!(balance(i)));
        }
        let e = Event::identify(
            format!("w{i}"),
            format!("c{i}"),
            Timestamp(T0 - DAY),
            Json::Object(traits),
        );
        shard.apply(&e, Timestamp(T0), &mut deltas).unwrap();
        history.push(e);
    }
    let some_balance = balance(2);
    let rules = [
        r#"place = "p17""#.to_string(),
        r#"place != "p17""#.to_string(),
        r#"place in ["p1", "p650", "nowhere"]"#.to_string(),
        r#"place not_in ["p1", "p650"]"#.to_string(),
        r#"place starts_with "p1""#.to_string(),
        r#"not place < "p5""#.to_string(),
        "place exists".to_string(),
        "thirds > 100".to_string(),
        "thirds = 33".to_string(),
        "thirds != 33".to_string(),
        "thirds between 10 and 20.5".to_string(),
        "thirds in [1, 2, 66.5]".to_string(),
        "not thirds exists".to_string(),
        "balance > -50000.12345".to_string(),
        "balance <= 0".to_string(),
        format!("balance = {some_balance}"),
        format!("balance != {some_balance}"),
        format!("balance >= {some_balance}"),
        "balance not_in [0, 1.5]".to_string(),
        "balance between -1000.5 and 99999.9999".to_string(),
        "balance < 1e12".to_string(),
        r#"(balance > 0 and thirds < 50) or place = "p3""#.to_string(),
    ];
    for text in rules {
        let rule = xeno_engine::rule::dsl::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let preview = shard.preview(&rule, 7, &history).unwrap();
        let mut segmented = shard.clone();
        segmented
            .add_segment(SegmentId(1), rule, &history, &mut Vec::new())
            .unwrap();
        let members = segmented.evaluate_from_scratch(SegmentId(1)).unwrap();
        assert_eq!(
            segmented.members(SegmentId(1)).unwrap(),
            &members,
            "backfill of `{text}`"
        );
        assert_eq!(preview.count, members.len(), "count of `{text}`");
        let first: Vec<u32> = members.iter().take(7).collect();
        assert_eq!(preview.sample, first, "sample of `{text}`");
    }
}
