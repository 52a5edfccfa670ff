//! The oracle: incremental membership against an independent, from-scratch model.
//!
//! Random schemas' worth of fields, customers, events (out of order, duplicated,
//! with wrong types), segments (added, changed, removed) and time advances. After
//! every step, for every segment:
//! 1. the incremental membership equals a from-scratch evaluation by a reference
//!    model written here, independently of the engine (it keeps raw events and
//!    interprets the rule AST directly), at the shard's `now`;
//! 2. it equals the engine's own full re-evaluation;
//! 3. replaying every delta emitted so far reproduces it, and no delta is
//!    redundant (no `Entered` for a member, no `Exited` for a non-member);
//! 4. a preview, and a customer listing filtered by the rule, find exactly
//!    the members.
//!
//! Removed customers are also purged, so the other customers' state must
//! survive the dictionary compaction a purge does.
//!
//! Run with `cargo test oracle`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Value as Json, json};
use xeno_engine::model::{AttrType, Event};
use xeno_engine::rule::{CompareOp, Condition, Performed, Quantifier, Rule, Scalar, Test, TextOp};
use xeno_engine::shard::{Cause, CustomerQuery, Delta, SegmentId, Shard, ShardConfig, Transition};
use xeno_engine::time::{DAY, Duration, HOUR, MINUTE, Timestamp};
use xeno_engine::traits::{Aggregate, ComputedTraitDef, bucket_size};

/// Midnight UTC, so that minute-aligned steps land exactly on bucket and window
/// boundaries, where an off-by-a-little deadline would show.
const T0: i64 = 1_699_920_000_000;
const CUSTOMERS: usize = 6;
const PLANS: [&str; 5] = ["free", "pro", "Pro", "enterprise", "pro-plus"];
const TAGS: [&str; 3] = ["a", "b", "B"];

// ---------- the reference model ----------

#[derive(Debug, Clone, PartialEq)]
enum V {
    S(String),
    N(f64),
    B(bool),
    T(i64),
    L(Vec<String>),
}

fn field_type(name: &str) -> Option<AttrType> {
    Some(match name {
        "plan" => AttrType::String,
        "age" => AttrType::Number,
        "vip" => AttrType::Bool,
        "signup_at" => AttrType::Timestamp,
        "tags" => AttrType::ListOfStrings,
        _ => return None,
    })
}

fn custom_traits() -> Vec<ComputedTraitDef> {
    let def = |name: &str, event: Option<&str>, aggregate, of: &[&str], window: Option<i64>| {
        ComputedTraitDef {
            name: name.into(),
            event: event.map(str::to_string),
            aggregate,
            of: of.iter().map(|s| s.to_string()).collect(),
            filter: None,
            window: window.map(Duration),
            value_type: None,
        }
    };
    let mut big = def(
        "big_orders",
        Some("Order Completed"),
        Aggregate::Count,
        &[],
        None,
    );
    big.filter = Some(Rule::compare(
        "revenue",
        CompareOp::Gt,
        Scalar::Number(200.0),
    ));
    let mut first_device = def(
        "first_device",
        Some("Login"),
        Aggregate::First,
        &["device"],
        None,
    );
    first_device.value_type = Some(AttrType::String);
    vec![
        def(
            "spend_3d",
            Some("Order Completed"),
            Aggregate::Sum,
            &["revenue", "total"],
            Some(3 * DAY),
        ),
        def(
            "orders_12h",
            Some("Order Completed"),
            Aggregate::Count,
            &[],
            Some(12 * HOUR),
        ),
        def(
            "max_order_7d",
            Some("Order Completed"),
            Aggregate::Max,
            &["revenue", "total"],
            Some(7 * DAY),
        ),
        def(
            "avg_order",
            Some("Order Completed"),
            Aggregate::Avg,
            &["revenue", "total"],
            None,
        ),
        def(
            "min_order",
            Some("Order Completed"),
            Aggregate::Min,
            &["revenue", "total"],
            None,
        ),
        def(
            "devices",
            Some("Login"),
            Aggregate::DistinctCount,
            &["device"],
            None,
        ),
        def(
            "devices_2d",
            Some("Login"),
            Aggregate::DistinctCount,
            &["device"],
            Some(2 * DAY),
        ),
        def("last_login_at", Some("Login"), Aggregate::Last, &[], None),
        big,
        first_device,
    ]
}

/// From-scratch state of one customer, computed from its raw unique events.
struct RefCustomer<'a> {
    events: Vec<&'a Event>,
}

impl RefCustomer<'_> {
    fn attribute(&self, name: &str) -> Option<V> {
        let ty = field_type(name)?;
        // Last writer by timestamp wins; at equal timestamps a value beats an unset
        // and the greater value wins.
        let mut best: Option<(i64, Option<V>)> = None;
        for e in &self.events {
            let xeno_engine::model::EventKind::Identify { traits } = &e.kind else {
                continue;
            };
            let Some(raw) = traits.get(name) else {
                continue;
            };
            let value = if raw.is_null() {
                None
            } else {
                match typed(raw, ty) {
                    Some(v) => Some(v),
                    None => continue, // rejected: wrong type
                }
            };
            let ts = e.timestamp.0;
            let better = match &best {
                None => true,
                Some((bts, bval)) => {
                    ts > *bts
                        || (ts == *bts
                            && match (bval, &value) {
                                (_, None) => false,
                                (None, Some(_)) => true,
                                (Some(b), Some(v)) => value_gt(v, b),
                            })
                }
            };
            if better {
                best = Some((ts, value));
            }
        }
        best.and_then(|(_, v)| v)
    }

    fn orders(&self) -> impl Iterator<Item = &&Event> {
        self.events
            .iter()
            .filter(|e| e.track_name() == Some("Order Completed"))
    }

    fn order_value(e: &Event) -> Option<Result<f64, ()>> {
        let p = e.properties()?;
        let v = p.get("revenue").or_else(|| p.get("total"))?;
        if v.is_null() {
            return None;
        }
        Some(v.as_f64().ok_or(()))
    }

    fn trait_value(&self, name: &str, now: i64) -> Option<V> {
        let orders: Vec<&Event> = self.orders().copied().collect();
        let values: Vec<f64> = orders
            .iter()
            .filter_map(|e| Self::order_value(e).and_then(Result::ok))
            .collect();
        let stamps = |evs: &[&Event]| evs.iter().map(|e| e.timestamp.0).collect::<Vec<_>>();
        let in_window = |e: &Event, w: i64| {
            let b = bucket_size(Duration(w));
            e.timestamp.0.div_euclid(b) * b + w > now
        };
        let logins: Vec<&Event> = self
            .events
            .iter()
            .copied()
            .filter(|e| e.track_name() == Some("Login"))
            .collect();
        let device = |e: &Event| {
            e.properties()
                .and_then(|p| p.get("device"))
                .filter(|d| !d.is_null())
                .cloned()
        };
        match name {
            "total_spend" => Some(V::N(values.iter().sum())),
            "order_count" => Some(V::N(orders.len() as f64)),
            "last_order_at" => stamps(&orders).into_iter().max().map(V::T),
            "first_order_at" => stamps(&orders).into_iter().min().map(V::T),
            "first_seen" => self.events.iter().map(|e| e.timestamp.0).min().map(V::T),
            "last_seen" => self.events.iter().map(|e| e.timestamp.0).max().map(V::T),
            "spend_3d" => Some(V::N(
                orders
                    .iter()
                    .filter(|e| in_window(e, 3 * DAY))
                    .filter_map(|e| Self::order_value(e).and_then(Result::ok))
                    .sum(),
            )),
            "orders_12h" => Some(V::N(
                orders.iter().filter(|e| in_window(e, 12 * HOUR)).count() as f64,
            )),
            "max_order_7d" => orders
                .iter()
                .filter(|e| in_window(e, 7 * DAY))
                .filter_map(|e| Self::order_value(e).and_then(Result::ok))
                .reduce(f64::max)
                .map(V::N),
            "avg_order" => {
                (!values.is_empty()).then(|| V::N(values.iter().sum::<f64>() / values.len() as f64))
            }
            "min_order" => values.iter().copied().reduce(f64::min).map(V::N),
            "big_orders" => Some(V::N(
                orders
                    .iter()
                    .filter(|e| {
                        e.properties()
                            .and_then(|p| p.get("revenue"))
                            .and_then(Json::as_f64)
                            .is_some_and(|r| r > 200.0)
                    })
                    .count() as f64,
            )),
            "devices" => Some(V::N(
                logins
                    .iter()
                    .filter_map(|e| device(e))
                    .map(|d| d.to_string())
                    .collect::<HashSet<_>>()
                    .len() as f64,
            )),
            "devices_2d" => Some(V::N(
                logins
                    .iter()
                    .filter(|e| in_window(e, 2 * DAY))
                    .filter_map(|e| device(e))
                    .map(|d| d.to_string())
                    .collect::<HashSet<_>>()
                    .len() as f64,
            )),
            "last_login_at" => stamps(&logins).into_iter().max().map(V::T),
            "first_device" => logins
                .iter()
                .filter_map(|e| {
                    device(e).and_then(|d| d.as_str().map(|s| (e.timestamp.0, s.to_string())))
                })
                // earliest; ties: the greater value
                .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
                .map(|(_, s)| V::S(s)),
            _ => None,
        }
    }

    fn value(&self, field: &str, now: i64) -> Option<V> {
        if field_type(field).is_some() {
            self.attribute(field)
        } else {
            self.trait_value(field, now)
        }
    }

    fn performed(&self, p: &Performed, now: i64) -> bool {
        let n = self
            .events
            .iter()
            .filter(|e| e.track_name() == Some(p.event.as_str()))
            .filter(|e| p.filter.as_deref().is_none_or(|f| ref_filter(f, e)))
            .filter(|e| p.within.is_none_or(|w| e.timestamp.0 + w.0 > now))
            .count() as u32;
        match p.quantifier {
            Quantifier::AtLeast(k) => n >= k,
            Quantifier::AtMost(k) => n <= k,
            Quantifier::Exactly(k) => n == k,
        }
    }

    fn eval(&self, rule: &Rule, now: i64) -> bool {
        match rule {
            Rule::And(c) => c.iter().all(|r| self.eval(r, now)),
            Rule::Or(c) => c.iter().any(|r| self.eval(r, now)),
            Rule::Not(r) => !self.eval(r, now),
            Rule::Performed(p) => self.performed(p, now),
            Rule::Condition(c) => ref_test(&c.test, self.value(&c.field, now), now),
        }
    }
}

fn typed(raw: &Json, ty: AttrType) -> Option<V> {
    match (ty, raw) {
        (AttrType::String, Json::String(s)) => Some(V::S(s.clone())),
        (AttrType::Number, Json::Number(n)) => Some(V::N(n.as_f64()?)),
        (AttrType::Bool, Json::Bool(b)) => Some(V::B(*b)),
        (AttrType::Timestamp, Json::String(s)) => {
            Timestamp::parse_rfc3339(s).ok().map(|t| V::T(t.0))
        }
        (AttrType::ListOfStrings, Json::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(V::L),
        _ => None,
    }
}

fn value_gt(a: &V, b: &V) -> bool {
    match (a, b) {
        (V::S(a), V::S(b)) => a > b,
        (V::N(a), V::N(b)) => a.total_cmp(b).is_gt(),
        (V::B(a), V::B(b)) => a > b,
        (V::T(a), V::T(b)) => a > b,
        (V::L(a), V::L(b)) => a > b,
        _ => false,
    }
}

fn ref_filter(rule: &Rule, e: &Event) -> bool {
    // The generator only makes `revenue > x` and `currency = "USD"` filters.
    match rule {
        Rule::Condition(Condition {
            field,
            test:
                Test::Compare {
                    op: CompareOp::Gt,
                    value: Scalar::Number(x),
                    ..
                },
        }) => e
            .properties()
            .and_then(|p| p.get(field))
            .and_then(Json::as_f64)
            .is_some_and(|v| v > *x),
        Rule::Condition(Condition {
            field,
            test:
                Test::Compare {
                    op: CompareOp::Eq,
                    value: Scalar::String(s),
                    ..
                },
        }) => {
            e.properties()
                .and_then(|p| p.get(field))
                .and_then(Json::as_str)
                == Some(s.as_str())
        }
        other => panic!("the generator made an unexpected filter {other:?}"),
    }
}

fn lower(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

fn ref_test(test: &Test, value: Option<V>, now: i64) -> bool {
    let Some(value) = value else {
        return matches!(test, Test::Exists { negated: true });
    };
    let time = |s: &Scalar| match s {
        Scalar::String(t) => Timestamp::parse_rfc3339(t).unwrap().0,
        _ => unreachable!(),
    };
    match (test, &value) {
        (Test::Exists { negated }, _) => !negated,
        (
            Test::Compare {
                op,
                value: Scalar::Number(x),
                ..
            },
            V::N(v),
        ) => cmp(*op, v.partial_cmp(x).unwrap()),
        (Test::Compare { op, value: lit, .. }, V::T(t)) => cmp(*op, t.cmp(&time(lit))),
        (
            Test::Compare {
                op,
                value: Scalar::Bool(b),
                ..
            },
            V::B(v),
        ) => cmp(*op, v.cmp(b)),
        (
            Test::Compare {
                op,
                value: Scalar::String(s),
                ignore_case,
            },
            V::S(v),
        ) => {
            let ord = if *ignore_case {
                lower(v).cmp(&lower(s))
            } else {
                v.as_str().cmp(s.as_str())
            };
            cmp(*op, ord)
        }
        (
            Test::Between {
                low: Scalar::Number(a),
                high: Scalar::Number(b),
            },
            V::N(v),
        ) => a <= v && v <= b,
        (Test::Between { low, high }, V::T(t)) => time(low) <= *t && *t <= time(high),
        (
            Test::In {
                values, negated, ..
            },
            V::N(v),
        ) => values.contains(&Scalar::Number(*v)) != *negated,
        (
            Test::In {
                values,
                negated,
                ignore_case,
            },
            V::S(v),
        ) => {
            values
                .iter()
                .any(|s| matches!(s, Scalar::String(s) if eq(v, s, *ignore_case)))
                != *negated
        }
        (
            Test::In {
                values,
                negated,
                ignore_case,
            },
            V::L(items),
        ) => {
            items.iter().any(|i| {
                values
                    .iter()
                    .any(|s| matches!(s, Scalar::String(s) if eq(i, s, *ignore_case)))
            }) != *negated
        }
        (
            Test::Text {
                op,
                value: needle,
                ignore_case,
            },
            V::L(items),
        ) => {
            let hit = items.iter().any(|i| eq(i, needle, *ignore_case));
            if *op == TextOp::Contains { hit } else { !hit }
        }
        (
            Test::Text {
                op,
                value: needle,
                ignore_case,
            },
            V::S(v),
        ) => {
            let (h, n) = if *ignore_case {
                (v.to_lowercase(), needle.to_lowercase())
            } else {
                (v.clone(), needle.clone())
            };
            match op {
                TextOp::Contains => h.contains(&n),
                TextOp::NotContains => !h.contains(&n),
                TextOp::StartsWith => h.starts_with(&n),
                TextOp::EndsWith => h.ends_with(&n),
            }
        }
        (Test::Before(x), V::T(t)) => *t < x.0,
        (Test::After(x), V::T(t)) => *t > x.0,
        (Test::WithinLast(w), V::T(t)) => t + w.0 > now,
        (Test::NotWithinLast(w), V::T(t)) => t + w.0 <= now,
        (Test::WithinNext(w), V::T(t)) => now < *t && *t <= now + w.0,
        (test, value) => panic!("the generator made {test:?} for {value:?}"),
    }
}

fn eq(a: &str, b: &str, ignore_case: bool) -> bool {
    if ignore_case {
        lower(a) == lower(b)
    } else {
        a == b
    }
}

fn cmp(op: CompareOp, ord: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        CompareOp::Eq => ord == Equal,
        CompareOp::Ne => ord != Equal,
        CompareOp::Lt => ord == Less,
        CompareOp::Le => ord != Greater,
        CompareOp::Gt => ord == Greater,
        CompareOp::Ge => ord != Less,
    }
}

// ---------- generators ----------

fn rfc(ms: i64) -> String {
    Timestamp(ms).to_rfc3339()
}

/// Times move on a coarse grid most of the time, so that steps land exactly on
/// window boundaries (where an off-by-one deadline shows), and off it sometimes.
const UNIT: i64 = 15 * MINUTE;

fn arb_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        4 => (1i64..24).prop_map(|u| Duration(u * UNIT)),
        1 => (1i64..5).prop_map(|d| Duration(d * DAY)),
        1 => (1i64..90).prop_map(|m| Duration(m * MINUTE)),
    ]
}

fn arb_instant() -> impl Strategy<Value = String> {
    (-96i64..96).prop_map(|u| rfc(T0 + u * UNIT))
}

fn cond(field: &str, test: Test) -> Rule {
    Rule::Condition(Condition {
        field: field.into(),
        test,
    })
}

fn arb_leaf() -> impl Strategy<Value = Rule> {
    let plan = prop::sample::select(PLANS.to_vec()).prop_map(|s| Scalar::String(s.to_string()));
    let op = prop::sample::select(CompareOp::ALL.to_vec());
    let number_field = prop::sample::select(vec![
        "age",
        "total_spend",
        "order_count",
        "spend_3d",
        "orders_12h",
        "max_order_7d",
        "avg_order",
        "min_order",
        "devices",
        "devices_2d",
        "big_orders",
    ]);
    let time_field = prop::sample::select(vec![
        "signup_at",
        "last_order_at",
        "first_order_at",
        "first_seen",
        "last_seen",
        "last_login_at",
    ]);
    let any_field = prop::sample::select(vec![
        "plan",
        "age",
        "vip",
        "signup_at",
        "tags",
        "total_spend",
        "last_order_at",
        "max_order_7d",
        "first_device",
        "avg_order",
    ]);
    prop_oneof![
        (op.clone(), plan.clone(), any::<bool>()).prop_map(|(op, value, ignore_case)| cond(
            "plan",
            Test::Compare {
                op,
                value,
                ignore_case
            }
        )),
        (op.clone(), plan.clone(), any::<bool>()).prop_map(|(op, value, ignore_case)| cond(
            "first_device",
            Test::Compare {
                op,
                value,
                ignore_case
            }
        )),
        (
            prop::collection::vec(plan.clone(), 1..3),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(values, negated, ignore_case)| cond(
                "plan",
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
            prop::sample::select(vec!["pro", "P", "e", "plus"]),
            any::<bool>()
        )
            .prop_map(|(op, v, ignore_case)| cond(
                "plan",
                Test::Text {
                    op,
                    value: v.to_string(),
                    ignore_case
                }
            )),
        (
            number_field.clone(),
            op.clone(),
            prop_oneof![-1i32..5, 0i32..400]
        )
            .prop_map(|(f, op, x)| cond(
                f,
                Test::Compare {
                    op,
                    value: Scalar::Number(x as f64),
                    ignore_case: false
                }
            )),
        (
            number_field.clone(),
            prop_oneof![0i32..4, 0i32..200],
            prop_oneof![0i32..4, 0i32..300]
        )
            .prop_map(|(f, a, b)| cond(
                f,
                Test::Between {
                    low: Scalar::Number(a.min(b) as f64),
                    high: Scalar::Number(a.max(b) as f64)
                }
            )),
        (
            number_field,
            prop::collection::vec(0i32..5, 1..3),
            any::<bool>()
        )
            .prop_map(|(f, v, negated)| cond(
                f,
                Test::In {
                    values: v.into_iter().map(|x| Scalar::Number(x as f64)).collect(),
                    negated,
                    ignore_case: false
                }
            )),
        (any::<bool>(), any::<bool>()).prop_map(|(b, ne)| cond(
            "vip",
            Test::Compare {
                op: if ne { CompareOp::Ne } else { CompareOp::Eq },
                value: Scalar::Bool(b),
                ignore_case: false
            }
        )),
        (
            prop::sample::select(TAGS.to_vec()),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(t, neg, ic)| cond(
                "tags",
                Test::Text {
                    op: if neg {
                        TextOp::NotContains
                    } else {
                        TextOp::Contains
                    },
                    value: t.into(),
                    ignore_case: ic
                }
            )),
        (
            prop::collection::vec(prop::sample::select(TAGS.to_vec()), 1..3),
            any::<bool>()
        )
            .prop_map(|(t, neg)| cond(
                "tags",
                Test::In {
                    values: t.into_iter().map(|s| Scalar::String(s.into())).collect(),
                    negated: neg,
                    ignore_case: false
                }
            )),
        (time_field.clone(), arb_duration()).prop_map(|(f, d)| cond(f, Test::WithinLast(d))),
        (time_field.clone(), arb_duration()).prop_map(|(f, d)| cond(f, Test::NotWithinLast(d))),
        (time_field.clone(), arb_duration()).prop_map(|(f, d)| cond(f, Test::WithinNext(d))),
        (time_field.clone(), arb_instant(), any::<bool>()).prop_map(|(f, t, before)| {
            let t = Timestamp::parse_rfc3339(&t).unwrap();
            cond(
                f,
                if before {
                    Test::Before(t)
                } else {
                    Test::After(t)
                },
            )
        }),
        (time_field.clone(), op, arb_instant()).prop_map(|(f, op, t)| cond(
            f,
            Test::Compare {
                op,
                value: Scalar::String(t),
                ignore_case: false
            }
        )),
        (time_field, arb_instant(), arb_instant()).prop_map(|(f, a, b)| {
            let (a, b) = if a <= b { (a, b) } else { (b, a) };
            cond(
                f,
                Test::Between {
                    low: Scalar::String(a),
                    high: Scalar::String(b),
                },
            )
        }),
        (any_field, any::<bool>()).prop_map(|(f, negated)| cond(f, Test::Exists { negated })),
        (
            prop::sample::select(vec!["Order Completed", "Login"]),
            prop::option::of(prop_oneof![
                (0i32..300).prop_map(|x| Rule::compare(
                    "revenue",
                    CompareOp::Gt,
                    Scalar::Number(x as f64)
                )),
                Just(Rule::compare(
                    "currency",
                    CompareOp::Eq,
                    Scalar::String("USD".into())
                )),
            ]),
            prop_oneof![
                (0u32..4).prop_map(Quantifier::AtLeast),
                (0u32..3).prop_map(Quantifier::AtMost),
                (0u32..3).prop_map(Quantifier::Exactly),
            ],
            prop::option::of(arb_duration()),
        )
            .prop_map(
                |(event, filter, quantifier, within)| Rule::Performed(Performed {
                    event: event.into(),
                    filter: filter.map(Box::new),
                    quantifier,
                    within,
                })
            ),
    ]
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    arb_leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Rule::And),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Rule::Or),
            inner.prop_map(|r| Rule::Not(Box::new(r))),
        ]
    })
}

#[derive(Debug, Clone)]
enum Step {
    /// Customer, message id suffix, offset of the event time from now, kind.
    Event {
        customer: usize,
        offset: i64,
        body: Body,
    },
    /// Re-send the n-th event sent so far (same messageId).
    Duplicate(usize),
    Advance(i64),
    AddSegment(Rule),
    UpdateSegment(usize, Rule),
    RemoveSegment(usize),
    /// Snapshot the shard and continue from a restored copy, as after a restart.
    Restart,
    /// Remove a customer (as when its profile is merged into another), then
    /// purge what is left of it (as a request to be forgotten does).
    RemoveCustomer(usize),
}

#[derive(Debug, Clone)]
enum Body {
    Identify(Vec<(String, Json)>),
    Order(Json),
    Login(Option<String>),
    Page,
}

fn arb_trait_value(field: &'static str) -> BoxedStrategy<Json> {
    let wrong = prop_oneof![
        Just(json!(12)),
        Just(json!("x")),
        Just(json!(true)),
        Just(json!([1]))
    ];
    let right: BoxedStrategy<Json> = match field {
        "plan" => prop::sample::select(PLANS.to_vec())
            .prop_map(|s| json!(s))
            .boxed(),
        "age" => prop_oneof![
            (0i32..5).prop_map(|x| json!(x)),
            (0i32..100).prop_map(|x| json!(x)),
            Just(json!(2.5))
        ]
        .boxed(),
        "vip" => any::<bool>().prop_map(|b| json!(b)).boxed(),
        "signup_at" => arb_instant().prop_map(|s| json!(s)).boxed(),
        _ => prop::collection::vec(prop::sample::select(TAGS.to_vec()), 0..3)
            .prop_map(|t| json!(t))
            .boxed(),
    };
    prop_oneof![6 => right, 1 => Just(Json::Null), 1 => wrong].boxed()
}

fn arb_step() -> impl Strategy<Value = Step> {
    let identify = prop::collection::vec(
        prop::sample::select(vec!["plan", "age", "vip", "signup_at", "tags"])
            .prop_flat_map(|f| arb_trait_value(f).prop_map(move |v| (f.to_string(), v))),
        1..4,
    )
    .prop_map(Body::Identify);
    let order = prop_oneof![
        (0i32..400).prop_map(|r| json!({"revenue": r, "currency": "USD"})),
        (0i32..400).prop_map(|r| json!({"total": r, "currency": "EUR"})),
        Just(json!({"revenue": "12"})),
        Just(json!({})),
    ]
    .prop_map(Body::Order);
    let login = prop::option::of(
        prop::sample::select(vec!["ios", "android", "web"]).prop_map(str::to_string),
    )
    .prop_map(Body::Login);
    let body = prop_oneof![3 => identify, 3 => order, 2 => login, 1 => Just(Body::Page)];
    let offset = prop_oneof![
        3 => Just(0i64),
        4 => (-96i64..8).prop_map(|u| u * UNIT),
        1 => (-12i64..2).prop_map(|d| d * DAY),
        1 => -3 * DAY..HOUR,
    ];
    prop_oneof![
        12 => (0..CUSTOMERS, offset, body).prop_map(|(customer, offset, body)| Step::Event { customer, offset, body }),
        2 => (0usize..1000).prop_map(Step::Duplicate),
        4 => prop_oneof![
            6 => (0i64..12).prop_map(|u| u * UNIT),
            1 => (0i64..4).prop_map(|d| d * DAY),
            1 => 0i64..MINUTE,
        ]
        .prop_map(Step::Advance),
        2 => arb_rule().prop_map(Step::AddSegment),
        1 => ((0usize..8), arb_rule()).prop_map(|(i, r)| Step::UpdateSegment(i, r)),
        1 => (0usize..8).prop_map(Step::RemoveSegment),
        1 => Just(Step::Restart),
        1 => (0..CUSTOMERS).prop_map(Step::RemoveCustomer),
    ]
}

fn to_event(n: usize, customer: usize, at: i64, body: &Body) -> Event {
    let id = format!("m{n}");
    let user = format!("c{customer}");
    match body {
        Body::Identify(pairs) => {
            let traits: serde_json::Map<String, Json> = pairs.iter().cloned().collect();
            Event::identify(id, user, Timestamp(at), Json::Object(traits))
        }
        Body::Order(props) => {
            Event::track(id, user, Timestamp(at), "Order Completed", props.clone())
        }
        Body::Login(device) => Event::track(
            id,
            user,
            Timestamp(at),
            "Login",
            device.as_ref().map_or(json!({}), |d| json!({"device": d})),
        ),
        Body::Page => Event {
            message_id: id,
            user_id: Some(user),
            anonymous_id: None,
            timestamp: Timestamp(at),
            kind: xeno_engine::model::EventKind::Page {
                name: Some("Home".into()),
                properties: Default::default(),
            },
        },
    }
}

// ---------- the test ----------

struct Harness {
    shard: Shard,
    /// Every distinct event applied (the reference model's input and the history).
    applied: Vec<Event>,
    sent: Vec<Event>,
    seen_ids: HashSet<String>,
    segments: BTreeMap<SegmentId, Rule>,
    replayed: HashMap<SegmentId, BTreeSet<u32>>,
    next_id: u64,
    now: i64,
}

impl Harness {
    fn new() -> Self {
        let mut shard = Shard::new(ShardConfig {
            dedup_window: Duration(3650 * DAY),
            ..ShardConfig::default()
        });
        for f in ["plan", "age", "vip", "signup_at", "tags"] {
            shard.declare_field(f, field_type(f).unwrap()).unwrap();
        }
        let history: Vec<Event> = Vec::new();
        for def in custom_traits() {
            shard.declare_trait(def, &history).unwrap();
        }
        Harness {
            shard,
            applied: Vec::new(),
            sent: Vec::new(),
            seen_ids: HashSet::new(),
            segments: BTreeMap::new(),
            replayed: HashMap::new(),
            next_id: 1,
            now: T0,
        }
    }

    fn record(&mut self, deltas: &[Delta]) {
        for d in deltas {
            let set = self.replayed.entry(d.segment).or_default();
            match d.transition {
                Transition::Entered => assert!(set.insert(d.customer), "redundant Entered {d:?}"),
                Transition::Exited => assert!(set.remove(&d.customer), "redundant Exited {d:?}"),
            }
            if d.cause == Cause::Time || d.cause == Cause::Event {
                assert_eq!(
                    d.at.0,
                    self.shard.now().0,
                    "deltas are stamped with the shard's now"
                );
            }
        }
    }

    fn step(&mut self, step: &Step) {
        let mut deltas = Vec::new();
        match step {
            Step::Event {
                customer,
                offset,
                body,
            } => {
                let event = to_event(self.sent.len(), *customer, self.now + offset, body);
                let applied = self
                    .shard
                    .apply(&event, Timestamp(self.now), &mut deltas)
                    .unwrap();
                assert!(!applied.duplicate);
                let wrong_type = match body {
                    Body::Identify(pairs) => {
                        // Later pairs overwrite earlier ones with the same name.
                        let traits: HashMap<&String, &Json> =
                            pairs.iter().map(|(f, v)| (f, v)).collect();
                        traits.iter().any(|(f, v)| {
                            !v.is_null() && typed(v, field_type(f).unwrap()).is_none()
                        })
                    }
                    Body::Order(p) => p.get("revenue").is_some_and(|r| !r.is_number()),
                    _ => false,
                };
                assert_eq!(
                    !applied.rejected.is_empty(),
                    wrong_type,
                    "{:?} for {body:?}",
                    applied.rejected
                );
                self.seen_ids.insert(event.message_id.clone());
                self.applied.push(event.clone());
                self.sent.push(event);
            }
            Step::Duplicate(n) => {
                if self.sent.is_empty() {
                    return;
                }
                let event = self.sent[n % self.sent.len()].clone();
                let applied = self
                    .shard
                    .apply(&event, Timestamp(self.now), &mut deltas)
                    .unwrap();
                assert!(applied.duplicate, "a re-sent messageId is a duplicate");
            }
            Step::Advance(ms) => {
                // Grid-sized steps also snap back onto the grid after an off-grid one.
                self.now = if ms % UNIT == 0 {
                    (self.now.div_euclid(UNIT) * UNIT + ms).max(self.now)
                } else {
                    self.now + ms
                };
                self.shard.advance_time(Timestamp(self.now), &mut deltas);
            }
            Step::AddSegment(rule) => {
                let id = SegmentId(self.next_id);
                self.next_id += 1;
                self.shard
                    .add_segment(id, rule.clone(), &self.applied, &mut deltas)
                    .unwrap();
                self.segments.insert(id, rule.clone());
                self.replayed.insert(id, BTreeSet::new());
            }
            Step::UpdateSegment(i, rule) => {
                let Some(&id) = self.segments.keys().nth(*i % self.segments.len().max(1)) else {
                    return;
                };
                self.shard
                    .update_segment(id, rule.clone(), &self.applied, &mut deltas)
                    .unwrap();
                assert!(deltas.iter().all(|d| d.cause == Cause::RuleChange));
                self.segments.insert(id, rule.clone());
            }
            Step::Restart => {
                let bytes = self.shard.snapshot().unwrap();
                let restored = Shard::restore(&bytes).unwrap();
                assert_eq!(restored.next_deadline(), self.shard.next_deadline());
                assert_eq!(restored.now(), self.shard.now());
                self.shard = restored;
            }
            Step::RemoveCustomer(customer) => {
                let id = format!("c{customer}");
                let row = self.shard.customer_row(&id);
                assert_eq!(self.shard.remove_customer(&id, &mut deltas), row.is_some());
                assert!(self.shard.customer_row(&id).is_none());
                assert!(
                    deltas
                        .iter()
                        .all(|d| d.transition == Transition::Exited && d.cause == Cause::Removed)
                );
                // As the runtime does: name the exits, then erase the customer.
                if let Some(row) = row {
                    assert_eq!(self.shard.customer_id(row), Some(id.as_str()));
                    self.shard.purge_removed(row);
                    assert_eq!(self.shard.customer_id(row), None);
                }
                // The reference model forgets the customer's events; so does
                // the history later segments are filled from.
                self.applied
                    .retain(|e| e.user_id.as_deref() != Some(id.as_str()));
            }
            Step::RemoveSegment(i) => {
                let Some(&id) = self.segments.keys().nth(*i % self.segments.len().max(1)) else {
                    return;
                };
                self.shard.remove_segment(id).unwrap();
                self.segments.remove(&id);
                self.replayed.remove(&id);
            }
        }
        self.record(&deltas);
        self.check();
    }

    fn check(&self) {
        let now = self.shard.now().0;
        if let Some(next) = self.shard.next_deadline() {
            assert!(
                next.0 > now,
                "next_deadline {next:?} is not after now {now}"
            );
        }
        let mut by_customer: HashMap<&str, Vec<&Event>> = HashMap::new();
        for e in &self.applied {
            by_customer
                .entry(e.user_id.as_deref().unwrap())
                .or_default()
                .push(e);
        }
        for (id, rule) in &self.segments {
            let members = self.shard.members(*id).unwrap();
            let expected: BTreeSet<u32> = by_customer
                .iter()
                .filter(|(_, events)| {
                    RefCustomer {
                        events: events.to_vec(),
                    }
                    .eval(rule, now)
                })
                .map(|(c, _)| self.shard.customer_row(c).unwrap())
                .collect();
            let actual: BTreeSet<u32> = members.iter().collect();
            assert_eq!(
                actual,
                expected,
                "segment {id:?} at now={} ({}), rule {rule:?}",
                now,
                rfc(now)
            );
            let scratch: BTreeSet<u32> = self
                .shard
                .evaluate_from_scratch(*id)
                .unwrap()
                .iter()
                .collect();
            assert_eq!(scratch, actual, "engine's own re-evaluation");
            assert_eq!(self.replayed[id], actual, "replayed deltas of {id:?}");
            let preview = self.shard.preview(rule, usize::MAX, &self.applied).unwrap();
            assert_eq!(
                preview.count,
                actual.len() as u64,
                "preview count of {rule:?}"
            );
            assert_eq!(
                preview.sample,
                actual.iter().copied().collect::<Vec<_>>(),
                "preview rows"
            );
            let query = CustomerQuery {
                filter: Some(rule),
                limit: usize::MAX,
                ..CustomerQuery::default()
            };
            let listed: BTreeSet<u32> = self
                .shard
                .query_customers(&query, &self.applied)
                .unwrap()
                .iter()
                .map(|c| c.row)
                .collect();
            assert_eq!(listed, actual, "customers listed with the rule as filter");
        }
    }
}

proptest! {
    // Failures are kept in engine/proptest-regressions/ (checked in) and replayed
    // first on every run.
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 4000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/oracle.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn oracle_incremental_membership_equals_from_scratch(steps in prop::collection::vec(arb_step(), 1..80)) {
        let mut harness = Harness::new();
        for step in &steps {
            harness.step(step);
        }
    }
}

/// A long deterministic run: one segment per time-driven mechanism at the top
/// level (where a late or early flip always shows), plus random ones.
#[test]
fn oracle_long_run() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let mut harness = Harness::new();
    let performed = |event: &str, quantifier, within: i64| {
        Rule::Performed(Performed {
            event: event.into(),
            filter: None,
            quantifier,
            within: Some(Duration(within)),
        })
    };
    for rule in [
        Rule::compare("orders_12h", CompareOp::Ge, Scalar::Number(1.0)),
        Rule::compare("spend_3d", CompareOp::Gt, Scalar::Number(100.0)),
        Rule::compare("devices_2d", CompareOp::Ge, Scalar::Number(2.0)),
        cond("max_order_7d", Test::Exists { negated: false }),
        cond("last_order_at", Test::WithinLast(Duration(2 * HOUR))),
        cond("last_seen", Test::NotWithinLast(Duration(6 * HOUR))),
        cond("signup_at", Test::WithinNext(Duration(DAY))),
        performed("Login", Quantifier::AtLeast(2), 3 * HOUR),
        performed("Order Completed", Quantifier::Exactly(1), DAY),
        performed("Order Completed", Quantifier::AtMost(1), 6 * HOUR),
    ] {
        harness.step(&Step::AddSegment(rule));
    }
    for _ in 0..8 {
        let rule = arb_rule().new_tree(&mut runner).unwrap().current();
        harness.step(&Step::AddSegment(rule));
    }
    let mut time_changes = 0;
    for _ in 0..3000 {
        let step = arb_step().new_tree(&mut runner).unwrap().current();
        if matches!(step, Step::RemoveSegment(_) | Step::UpdateSegment(..)) {
            continue; // keep the mechanism segments for the whole run
        }
        let before: usize = harness.replayed.values().map(BTreeSet::len).sum();
        let advance = matches!(step, Step::Advance(_));
        harness.step(&step);
        let after: usize = harness.replayed.values().map(BTreeSet::len).sum();
        if advance && after != before {
            time_changes += 1;
        }
    }
    assert!(
        time_changes > 50,
        "the run exercised time windows ({time_changes} advances changed membership)"
    );
}
