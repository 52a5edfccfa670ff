//! The rule AST: the one representation that both the JSON form (serde) and the
//! text DSL ([`super::dsl`]) map to.
//!
//! JSON shape, externally tagged so that a typo is an error rather than a
//! match-everything:
//!
//! ```json
//! {"and": [
//!   {"condition": {"field": "total_spend", "op": ">", "value": 5000}},
//!   {"condition": {"field": "city", "op": "in", "value": ["Pune", "Delhi"], "ignore_case": true}},
//!   {"condition": {"field": "last_order_at", "op": "within_last", "value": "30d"}},
//!   {"not": {"performed": {"event": "Login", "within": "30d"}}},
//!   {"performed": {"event": "Order Completed",
//!                  "where": {"condition": {"field": "revenue", "op": ">", "value": 100}},
//!                  "at_least": 3, "within": "90d"}}
//! ]}
//! ```
//!
//! Values of the `value` key by operator: a scalar for `= != < <= > >=`, a
//! two-element list for `between`, a list for `in`/`not_in`, a string for the text
//! operators, nothing for `exists`/`not_exists`, an RFC 3339 time for
//! `before`/`after`, a duration (`"30d"`, `"12h"`, `"15m"`, `"45s"`, `"2w"`) for
//! `within_last`, `not_within_last` and `within_next`.

use serde::{Deserialize, Serialize};

use crate::time::{Duration, Timestamp};

/// A segment rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// True when every child is true. An empty list is a validation error.
    And(Vec<Rule>),
    /// True when at least one child is true. An empty list is a validation error.
    Or(Vec<Rule>),
    /// Negation.
    Not(Box<Rule>),
    /// A test on one attribute or computed trait of the customer (or, inside a
    /// `performed ... where`, on one property of the event).
    Condition(Condition),
    /// A test on the customer's events.
    Performed(Performed),
}

/// `field <test>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "wire::ConditionWire", into = "wire::ConditionWire")]
pub struct Condition {
    /// Attribute, computed trait, or (inside `where`) event property. Dotted paths
    /// (`address.city`) address nested objects.
    pub field: String,
    pub test: Test,
}

/// A scalar literal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Number(f64),
    String(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareOp {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextOp {
    Contains,
    NotContains,
    StartsWith,
    EndsWith,
}

/// What a [`Condition`] checks. Every comparison on a missing value is false,
/// except `not_exists` (and whatever `not` wraps around it).
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// `= != < <= > >=`. On strings `<`/`>` compare lexicographically (by Unicode
    /// scalar values); `ignore_case` compares the lower-cased forms.
    Compare {
        op: CompareOp,
        value: Scalar,
        ignore_case: bool,
    },
    /// `between low and high`, inclusive on both ends.
    Between { low: Scalar, high: Scalar },
    /// `in [..]` / `not_in [..]`.
    In {
        values: Vec<Scalar>,
        negated: bool,
        ignore_case: bool,
    },
    /// `contains`, `not_contains`, `starts_with`, `ends_with`. On a list-of-strings
    /// field `contains` tests membership of an element.
    Text {
        op: TextOp,
        value: String,
        ignore_case: bool,
    },
    /// `exists` / `not_exists`.
    Exists { negated: bool },
    /// Timestamp strictly before an absolute time.
    Before(Timestamp),
    /// Timestamp strictly after an absolute time.
    After(Timestamp),
    /// `t within_last W`: `t + W > now`.
    WithinLast(Duration),
    /// `t not_within_last W` (older than W): `t + W <= now`.
    NotWithinLast(Duration),
    /// `t within_next W`: `now < t <= now + W`.
    WithinNext(Duration),
}

/// How many matching events `performed` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantifier {
    AtLeast(u32),
    AtMost(u32),
    Exactly(u32),
}

impl Default for Quantifier {
    fn default() -> Self {
        Quantifier::AtLeast(1)
    }
}

/// `performed "Order Completed" where revenue > 100 at_least 3 times within 90d`.
///
/// An event counts when its name matches exactly, the `where` predicate (on its
/// properties) holds, and, with `within W`, its timestamp `t` satisfies
/// `t + W > now`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "wire::PerformedWire", into = "wire::PerformedWire")]
pub struct Performed {
    pub event: String,
    pub filter: Option<Box<Rule>>,
    pub quantifier: Quantifier,
    pub within: Option<Duration>,
}

impl Rule {
    /// The customer fields (attributes or computed traits) the rule reads, each
    /// once, in order of appearance; event properties inside `performed ...
    /// where` are not customer fields and are left out.
    ///
    /// ```
    /// use xeno_engine::rule::dsl;
    /// let rule = dsl::parse(
    ///     r#"plan = "pro" and (spend > 5 or not plan = "x") and performed "Order" where revenue > 5"#,
    /// ).unwrap();
    /// assert_eq!(rule.customer_fields(), ["plan", "spend"]);
    /// ```
    pub fn customer_fields(&self) -> Vec<&str> {
        fn walk<'a>(rule: &'a Rule, out: &mut Vec<&'a str>) {
            match rule {
                Rule::And(children) | Rule::Or(children) => {
                    children.iter().for_each(|c| walk(c, out))
                }
                Rule::Not(child) => walk(child, out),
                Rule::Condition(c) => {
                    if !out.contains(&c.field.as_str()) {
                        out.push(&c.field);
                    }
                }
                Rule::Performed(_) => {}
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }

    /// `field op value` shorthand, mostly for tests and examples.
    pub fn compare(field: &str, op: CompareOp, value: Scalar) -> Rule {
        Rule::Condition(Condition {
            field: field.to_string(),
            test: Test::Compare {
                op,
                value,
                ignore_case: false,
            },
        })
    }
}

mod wire {
    //! The flat JSON form of conditions and `performed`; converted to and from the
    //! typed AST with errors that name the operator and what it expects.
    use super::*;

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ConditionWire {
        field: String,
        op: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<serde_json::Value>,
        #[serde(default, skip_serializing_if = "is_false")]
        ignore_case: bool,
    }

    fn is_false(b: &bool) -> bool {
        !*b
    }

    fn scalar(op: &str, v: &serde_json::Value) -> Result<Scalar, String> {
        match v {
            serde_json::Value::Bool(b) => Ok(Scalar::Bool(*b)),
            serde_json::Value::Number(n) => n
                .as_f64()
                .filter(|f| f.is_finite())
                .map(Scalar::Number)
                .ok_or_else(|| format!("operator `{op}`: number {n} is out of range")),
            serde_json::Value::String(s) => Ok(Scalar::String(s.clone())),
            other => Err(format!(
                "operator `{op}` expects a string, number or boolean, got {}",
                json_kind(other)
            )),
        }
    }

    fn json_kind(v: &serde_json::Value) -> &'static str {
        match v {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Array(_) => "a list",
            serde_json::Value::Object(_) => "an object",
        }
    }

    fn scalar_to_json(s: Scalar) -> serde_json::Value {
        match s {
            Scalar::Bool(b) => serde_json::Value::Bool(b),
            Scalar::Number(n) => serde_json::Number::from_f64(n)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Scalar::String(s) => serde_json::Value::String(s),
        }
    }

    fn no_case(op: &str, ignore_case: bool) -> Result<(), String> {
        if ignore_case {
            Err(format!("operator `{op}` does not take `ignore_case`"))
        } else {
            Ok(())
        }
    }

    impl TryFrom<ConditionWire> for Condition {
        type Error = String;
        fn try_from(w: ConditionWire) -> Result<Self, String> {
            let op = w.op.as_str();
            let need_value = || {
                w.value
                    .as_ref()
                    .ok_or_else(|| format!("operator `{op}` needs a `value`"))
            };
            let need_string = || -> Result<String, String> {
                match need_value()? {
                    serde_json::Value::String(s) => Ok(s.clone()),
                    other => Err(format!(
                        "operator `{op}` expects a string, got {}",
                        json_kind(other)
                    )),
                }
            };
            let need_list = || -> Result<Vec<Scalar>, String> {
                match need_value()? {
                    serde_json::Value::Array(items) => {
                        items.iter().map(|v| scalar(op, v)).collect()
                    }
                    other => Err(format!(
                        "operator `{op}` expects a list, got {}",
                        json_kind(other)
                    )),
                }
            };
            let duration = || -> Result<Duration, String> {
                Duration::parse(&need_string()?).map_err(|e| format!("operator `{op}`: {e}"))
            };
            let timestamp = || -> Result<Timestamp, String> {
                Timestamp::parse_rfc3339(&need_string()?)
                    .map_err(|e| format!("operator `{op}`: {e}"))
            };
            let compare = |cop| -> Result<Test, String> {
                Ok(Test::Compare {
                    op: cop,
                    value: scalar(op, need_value()?)?,
                    ignore_case: w.ignore_case,
                })
            };
            let text = |top| -> Result<Test, String> {
                Ok(Test::Text {
                    op: top,
                    value: need_string()?,
                    ignore_case: w.ignore_case,
                })
            };
            let no_value = || -> Result<(), String> {
                match &w.value {
                    None => Ok(()),
                    Some(_) => Err(format!("operator `{op}` takes no `value`")),
                }
            };
            let test = match op {
                "=" => compare(CompareOp::Eq)?,
                "!=" => compare(CompareOp::Ne)?,
                "<" => compare(CompareOp::Lt)?,
                "<=" => compare(CompareOp::Le)?,
                ">" => compare(CompareOp::Gt)?,
                ">=" => compare(CompareOp::Ge)?,
                "between" => {
                    no_case(op, w.ignore_case)?;
                    let mut list = need_list()?;
                    if list.len() != 2 {
                        return Err(format!(
                            "operator `between` expects a list of two values [low, high], got {}",
                            list.len()
                        ));
                    }
                    let high = list.pop().expect("two elements");
                    let low = list.pop().expect("two elements");
                    Test::Between { low, high }
                }
                "in" | "not_in" => Test::In {
                    values: need_list()?,
                    negated: op == "not_in",
                    ignore_case: w.ignore_case,
                },
                "contains" => text(TextOp::Contains)?,
                "not_contains" => text(TextOp::NotContains)?,
                "starts_with" => text(TextOp::StartsWith)?,
                "ends_with" => text(TextOp::EndsWith)?,
                "exists" | "not_exists" => {
                    no_case(op, w.ignore_case)?;
                    no_value()?;
                    Test::Exists {
                        negated: op == "not_exists",
                    }
                }
                "before" => {
                    no_case(op, w.ignore_case)?;
                    Test::Before(timestamp()?)
                }
                "after" => {
                    no_case(op, w.ignore_case)?;
                    Test::After(timestamp()?)
                }
                "within_last" => {
                    no_case(op, w.ignore_case)?;
                    Test::WithinLast(duration()?)
                }
                "not_within_last" => {
                    no_case(op, w.ignore_case)?;
                    Test::NotWithinLast(duration()?)
                }
                "within_next" => {
                    no_case(op, w.ignore_case)?;
                    Test::WithinNext(duration()?)
                }
                other => {
                    return Err(format!(
                        "unknown operator `{other}`; expected one of = != < <= > >= between in not_in \
                         contains not_contains starts_with ends_with exists not_exists before after \
                         within_last not_within_last within_next"
                    ));
                }
            };
            Ok(Condition {
                field: w.field,
                test,
            })
        }
    }

    impl From<Condition> for ConditionWire {
        fn from(c: Condition) -> Self {
            let (op, value, ignore_case): (&str, Option<serde_json::Value>, bool) = match c.test {
                Test::Compare {
                    op,
                    value,
                    ignore_case,
                } => (op.symbol(), Some(scalar_to_json(value)), ignore_case),
                Test::Between { low, high } => (
                    "between",
                    Some(serde_json::Value::Array(vec![
                        scalar_to_json(low),
                        scalar_to_json(high),
                    ])),
                    false,
                ),
                Test::In {
                    values,
                    negated,
                    ignore_case,
                } => (
                    if negated { "not_in" } else { "in" },
                    Some(serde_json::Value::Array(
                        values.into_iter().map(scalar_to_json).collect(),
                    )),
                    ignore_case,
                ),
                Test::Text {
                    op,
                    value,
                    ignore_case,
                } => (
                    op.keyword(),
                    Some(serde_json::Value::String(value)),
                    ignore_case,
                ),
                Test::Exists { negated } => {
                    (if negated { "not_exists" } else { "exists" }, None, false)
                }
                Test::Before(t) => ("before", Some(t.to_rfc3339().into()), false),
                Test::After(t) => ("after", Some(t.to_rfc3339().into()), false),
                Test::WithinLast(d) => ("within_last", Some(d.to_string().into()), false),
                Test::NotWithinLast(d) => ("not_within_last", Some(d.to_string().into()), false),
                Test::WithinNext(d) => ("within_next", Some(d.to_string().into()), false),
            };
            ConditionWire {
                field: c.field,
                op: op.to_string(),
                value,
                ignore_case,
            }
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PerformedWire {
        event: String,
        #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
        filter: Option<Box<Rule>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_least: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_most: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exactly: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        within: Option<String>,
    }

    impl TryFrom<PerformedWire> for Performed {
        type Error = String;
        fn try_from(w: PerformedWire) -> Result<Self, String> {
            let quantifier = match (w.at_least, w.at_most, w.exactly) {
                (None, None, None) => Quantifier::AtLeast(1),
                (Some(n), None, None) => Quantifier::AtLeast(n),
                (None, Some(n), None) => Quantifier::AtMost(n),
                (None, None, Some(n)) => Quantifier::Exactly(n),
                _ => {
                    return Err(
                        "`performed` takes at most one of `at_least`, `at_most`, `exactly`"
                            .to_string(),
                    );
                }
            };
            let within = match w.within {
                None => None,
                Some(s) => {
                    Some(Duration::parse(&s).map_err(|e| format!("`performed` `within`: {e}"))?)
                }
            };
            Ok(Performed {
                event: w.event,
                filter: w.filter,
                quantifier,
                within,
            })
        }
    }

    impl From<Performed> for PerformedWire {
        fn from(p: Performed) -> Self {
            let (mut at_least, mut at_most, mut exactly) = (None, None, None);
            match p.quantifier {
                Quantifier::AtLeast(1) => {}
                Quantifier::AtLeast(n) => at_least = Some(n),
                Quantifier::AtMost(n) => at_most = Some(n),
                Quantifier::Exactly(n) => exactly = Some(n),
            }
            PerformedWire {
                event: p.event,
                filter: p.filter,
                at_least,
                at_most,
                exactly,
                within: p.within.map(|d| d.to_string()),
            }
        }
    }
}

impl CompareOp {
    /// Every comparison operator.
    pub const ALL: [CompareOp; 6] = [
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Lt,
        CompareOp::Le,
        CompareOp::Gt,
        CompareOp::Ge,
    ];

    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }
}

impl TextOp {
    pub fn keyword(self) -> &'static str {
        match self {
            TextOp::Contains => "contains",
            TextOp::NotContains => "not_contains",
            TextOp::StartsWith => "starts_with",
            TextOp::EndsWith => "ends_with",
        }
    }
}
