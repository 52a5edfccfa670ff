//! Validation against a tenant's schema, and compilation to an evaluator.
//!
//! # Semantics
//!
//! A rule is evaluated for one customer at one instant `now` and answers
//! `(member, valid_until)`: whether the customer matches, and the earliest instant
//! at which that answer can change *with no new event*. Every time-relative atom
//! has the form `t + W  cmp  now`, so it flips at most once as `now` grows, and
//! its flip instant is known:
//!
//! | atom | true when | flips at |
//! |---|---|---|
//! | `t within_last W` | `t + W > now` | `t + W` (to false) |
//! | `t not_within_last W` | `t + W <= now` | `t + W` (to true) |
//! | `t within_next W` | `now < t <= now + W` | `t - W` (to true), then `t` (to false) |
//! | `performed E at_least k times within W` | `r_k + W > now` | `r_k + W` (to false) |
//!
//! where `r_k` is the timestamp of the k-th most recent matching event. Compound
//! rules combine bounds without enumerating time: a true `and` can change when any
//! child can (minimum); a false `and` only once every false child has changed
//! (maximum over the false children); `or` is the mirror image; `not` keeps the
//! bound. Atoms that do not depend on time answer [`Timestamp::NEVER`].
//!
//! Every comparison on a missing value is false, except `not_exists`:
//! `city != "Pune"` does not match a customer with no city, `not city = "Pune"`
//! does.
//!
//! ```
//! use xeno_engine::rule::{dsl, compile::{compile, Resolver, FieldRef}};
//! use xeno_engine::model::AttrType;
//! struct OneField;
//! impl Resolver for OneField {
//!     fn resolve(&self, name: &str) -> Option<(FieldRef, AttrType)> {
//!         (name == "last_order_at").then_some((FieldRef::Trait(0), AttrType::Timestamp))
//!     }
//! }
//! let rule = dsl::parse("last_order_at within_last 30d").unwrap();
//! let compiled = compile(&rule, &OneField).unwrap();
//! assert!(compiled.time_dependent);
//! ```

use std::cmp::Ordering;

use serde_json::{Map, Value as Json};

use super::ast::{CompareOp, Condition, Performed, Quantifier, Rule, Scalar, Test, TextOp};
use super::{MAX_LIST_ITEMS, MAX_RULE_DEPTH, MAX_RULE_NODES, MAX_STRING_BYTES};
use crate::counters::CounterStore;
use crate::model::{AttrType, lookup_path};
use crate::table::{AttributeColumn, Column, MISSING_BOOL, MISSING_CODE, MISSING_TIME};
use crate::time::{Duration, Timestamp};
use crate::traits::ComputedTrait;

/// Which column a field name resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldRef {
    Attr(u32),
    Trait(u32),
}

/// Resolves field names of a rule to columns and their types.
pub trait Resolver {
    fn resolve(&self, name: &str) -> Option<(FieldRef, AttrType)>;
}

/// A rule that failed validation: where in the rule, which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct RuleError {
    /// JSON-pointer-like path into the rule, e.g. `/and/1/condition`.
    pub path: String,
    /// The field (or event) concerned, when there is one.
    pub field: Option<String>,
    pub reason: String,
}

/// The event-counting state a `performed` atom needs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CounterSpec {
    pub event: String,
    #[serde(with = "crate::json_text")]
    pub filter: Option<Rule>,
    pub within: Option<Duration>,
    /// How many most-recent timestamps must be kept (windowed counters only).
    pub keep: u32,
}

impl CounterSpec {
    /// A key under which identical counters are shared between segments.
    pub fn key(&self) -> String {
        let filter = self
            .filter
            .as_ref()
            .map(|f| serde_json::to_string(f).unwrap_or_default())
            .unwrap_or_default();
        match self.within {
            Some(w) => format!(
                "{}\u{0}{}\u{0}{}\u{0}{}",
                self.event,
                filter,
                w.millis(),
                self.keep
            ),
            None => format!("{}\u{0}{}\u{0}all", self.event, filter),
        }
    }
}

/// A compiled rule: an evaluator tree plus what it depends on.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub(crate) root: Node,
    /// Columns the rule reads.
    pub fields: Vec<FieldRef>,
    /// Counters the rule reads; `Node::Performed` refers to them by index until
    /// [`CompiledRule::link`] rewrites the indexes to shard-wide counter ids.
    pub counters: Vec<CounterSpec>,
    /// Whether the answer can change with time alone.
    pub time_dependent: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Const(bool),
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Exists(FieldRef),
    Number(FieldRef, NumberTest),
    Time(FieldRef, TimeTest),
    Str(FieldRef, StrTest),
    Bool(FieldRef, bool),
    List(FieldRef, ListTest),
    Performed { counter: u32, at_least: u32 },
}

#[derive(Debug, Clone)]
pub(crate) enum NumberTest {
    Cmp(CompareOp, f64),
    Between(f64, f64),
    In(Vec<f64>, bool),
}

#[derive(Debug, Clone)]
pub(crate) enum TimeTest {
    Cmp(CompareOp, i64),
    Between(i64, i64),
    In(Vec<i64>, bool),
    WithinLast(i64),
    NotWithinLast(i64),
    WithinNext(i64),
}

#[derive(Debug, Clone)]
pub(crate) enum StrTest {
    Cmp(CompareOp, String, bool),
    Between(String, String),
    In(Vec<String>, bool, bool),
    Text(TextOp, String, bool),
}

#[derive(Debug, Clone)]
pub(crate) enum ListTest {
    /// Some element equals the value (`contains`), or none does (`not_contains`).
    Contains(String, bool, bool),
    /// Some element is in the list (`in`), or none is (`not_in`).
    AnyIn(Vec<String>, bool, bool),
}

/// Validates `rule` against the fields `resolver` knows and compiles it.
pub fn compile(rule: &Rule, resolver: &dyn Resolver) -> Result<CompiledRule, RuleError> {
    let mut c = Compiler {
        resolver,
        fields: Vec::new(),
        counters: Vec::new(),
        time_dependent: false,
        nodes: 0,
    };
    let root = c.rule(rule, &mut String::new(), 0)?;
    Ok(CompiledRule {
        root,
        fields: c.fields,
        counters: c.counters,
        time_dependent: c.time_dependent,
    })
}

/// Checks a predicate on event properties (the `where` of `performed` and of
/// computed traits): no `performed`, no time-relative operator, within limits.
pub fn check_property_filter(rule: &Rule) -> Result<(), RuleError> {
    check_filter(rule, &mut String::from("/where"), 0, &mut 0)
}

struct Compiler<'a> {
    resolver: &'a dyn Resolver,
    fields: Vec<FieldRef>,
    counters: Vec<CounterSpec>,
    time_dependent: bool,
    nodes: usize,
}

fn err(path: &str, field: Option<&str>, reason: impl Into<String>) -> RuleError {
    RuleError {
        path: if path.is_empty() {
            "/".to_string()
        } else {
            path.to_string()
        },
        field: field.map(str::to_string),
        reason: reason.into(),
    }
}

fn with_path<T>(
    path: &mut String,
    segment: &str,
    f: impl FnOnce(&mut String) -> Result<T, RuleError>,
) -> Result<T, RuleError> {
    let len = path.len();
    path.push('/');
    path.push_str(segment);
    let result = f(path);
    path.truncate(len);
    result
}

impl Compiler<'_> {
    fn rule(&mut self, rule: &Rule, path: &mut String, depth: usize) -> Result<Node, RuleError> {
        let kind = enter(rule, path, depth, &mut self.nodes)?;
        match rule {
            Rule::And(children) | Rule::Or(children) => {
                let nodes = with_path(path, kind, |path| {
                    children
                        .iter()
                        .enumerate()
                        .map(|(i, child)| {
                            with_path(path, &i.to_string(), |p| self.rule(child, p, depth + 1))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })?;
                Ok(if kind == "and" {
                    Node::And(nodes)
                } else {
                    Node::Or(nodes)
                })
            }
            Rule::Not(inner) => {
                let node = with_path(path, "not", |p| self.rule(inner, p, depth + 1))?;
                Ok(Node::Not(Box::new(node)))
            }
            Rule::Condition(condition) => {
                with_path(path, "condition", |p| self.condition(condition, p))
            }
            Rule::Performed(performed) => {
                with_path(path, "performed", |p| self.performed(performed, p, depth))
            }
        }
    }

    fn performed(
        &mut self,
        p: &Performed,
        path: &mut String,
        depth: usize,
    ) -> Result<Node, RuleError> {
        check_string(path, Some(&p.event), &p.event)?;
        if p.event.is_empty() {
            return Err(err(path, Some(&p.event), "the event name is empty"));
        }
        if let Some(filter) = &p.filter {
            let mut nodes = self.nodes;
            check_filter(filter, &mut format!("{path}/where"), depth + 1, &mut nodes)?;
            self.nodes = nodes;
        }
        // at_most k = not at_least k+1; exactly k = at_least k and not at_least k+1.
        let (low, high) = match p.quantifier {
            Quantifier::AtLeast(k) => (k, None),
            Quantifier::AtMost(k) => (0, Some(k.saturating_add(1))),
            Quantifier::Exactly(k) => (k, Some(k.saturating_add(1))),
        };
        let keep = high.unwrap_or(low);
        if p.within.is_some() && keep > 1_000 {
            return Err(err(
                path,
                Some(&p.event),
                "a count within a window is limited to 1000 events (at_least 1000, at_most or exactly 999)",
            ));
        }
        let slot = self.counters.len() as u32;
        self.counters.push(CounterSpec {
            event: p.event.clone(),
            filter: p.filter.as_deref().cloned(),
            within: p.within,
            keep: if p.within.is_some() { keep.max(1) } else { 0 },
        });
        if p.within.is_some() {
            self.time_dependent = true;
        }
        let at_least = |k: u32| {
            if k == 0 {
                Node::Const(true)
            } else {
                Node::Performed {
                    counter: slot,
                    at_least: k,
                }
            }
        };
        Ok(match high {
            None => at_least(low),
            Some(h) if low == 0 => Node::Not(Box::new(at_least(h))),
            Some(h) => Node::And(vec![at_least(low), Node::Not(Box::new(at_least(h)))]),
        })
    }

    fn condition(&mut self, c: &Condition, path: &str) -> Result<Node, RuleError> {
        let field = c.field.as_str();
        check_string(path, Some(field), field)?;
        check_test_limits(path, field, &c.test)?;
        let Some((col, ty)) = self.resolver.resolve(field) else {
            return Err(err(path, Some(field), format!("unknown field `{field}`")));
        };
        if !self.fields.contains(&col) {
            self.fields.push(col);
        }
        let mismatch =
            |what: &str| Err(err(path, Some(field), format!("`{field}` is {ty}; {what}")));
        if let Test::Exists { negated } = c.test {
            let node = Node::Exists(col);
            return Ok(if negated {
                Node::Not(Box::new(node))
            } else {
                node
            });
        }
        match ty {
            AttrType::Number => {
                let num = |s: &Scalar| match s {
                    Scalar::Number(n) => Ok(*n),
                    other => Err(err(
                        path,
                        Some(field),
                        format!(
                            "`{field}` is a number, the value {} is not",
                            scalar_text(other)
                        ),
                    )),
                };
                Ok(Node::Number(
                    col,
                    match &c.test {
                        Test::Compare {
                            op,
                            value,
                            ignore_case,
                        } => {
                            no_ignore_case(path, field, *ignore_case)?;
                            NumberTest::Cmp(*op, num(value)?)
                        }
                        Test::Between { low, high } => {
                            between(path, field, num(low)?, num(high)?, NumberTest::Between)?
                        }
                        Test::In {
                            values,
                            negated,
                            ignore_case,
                        } => {
                            no_ignore_case(path, field, *ignore_case)?;
                            NumberTest::In(
                                values.iter().map(num).collect::<Result<_, _>>()?,
                                *negated,
                            )
                        }
                        _ => {
                            return mismatch(
                                "use = != < <= > >= between in not_in exists not_exists",
                            );
                        }
                    },
                ))
            }
            AttrType::Timestamp => {
                let time = |s: &Scalar| match s {
                    Scalar::String(text) => Timestamp::parse_rfc3339(text)
                        .map(|t| t.0)
                        .map_err(|e| err(path, Some(field), e.to_string())),
                    other => Err(err(
                        path,
                        Some(field),
                        format!(
                            "`{field}` is a timestamp, compare it with an RFC 3339 time, not {}",
                            scalar_text(other)
                        ),
                    )),
                };
                let test = match &c.test {
                    Test::Compare {
                        op,
                        value,
                        ignore_case,
                    } => {
                        no_ignore_case(path, field, *ignore_case)?;
                        TimeTest::Cmp(*op, time(value)?)
                    }
                    Test::Between { low, high } => {
                        between(path, field, time(low)?, time(high)?, TimeTest::Between)?
                    }
                    Test::In {
                        values,
                        negated,
                        ignore_case,
                    } => {
                        no_ignore_case(path, field, *ignore_case)?;
                        TimeTest::In(values.iter().map(time).collect::<Result<_, _>>()?, *negated)
                    }
                    Test::Before(t) => TimeTest::Cmp(CompareOp::Lt, t.0),
                    Test::After(t) => TimeTest::Cmp(CompareOp::Gt, t.0),
                    Test::WithinLast(d) => {
                        self.time_dependent = true;
                        TimeTest::WithinLast(d.0)
                    }
                    Test::NotWithinLast(d) => {
                        self.time_dependent = true;
                        TimeTest::NotWithinLast(d.0)
                    }
                    Test::WithinNext(d) => {
                        self.time_dependent = true;
                        TimeTest::WithinNext(d.0)
                    }
                    _ => return mismatch("text operators do not apply"),
                };
                Ok(Node::Time(col, test))
            }
            AttrType::String => {
                let text = |s: &Scalar| match s {
                    Scalar::String(t) => Ok(t.clone()),
                    other => Err(err(
                        path,
                        Some(field),
                        format!(
                            "`{field}` is a string, the value {} is not (quote it)",
                            scalar_text(other)
                        ),
                    )),
                };
                let test = match &c.test {
                    Test::Compare {
                        op,
                        value,
                        ignore_case,
                    } => StrTest::Cmp(*op, text(value)?, *ignore_case),
                    Test::Between { low, high } => {
                        let (low, high) = (text(low)?, text(high)?);
                        if low > high {
                            return Err(err(
                                path,
                                Some(field),
                                "`between`: the low end is greater than the high end",
                            ));
                        }
                        StrTest::Between(low, high)
                    }
                    Test::In {
                        values,
                        negated,
                        ignore_case,
                    } => StrTest::In(
                        values.iter().map(text).collect::<Result<_, _>>()?,
                        *negated,
                        *ignore_case,
                    ),
                    Test::Text {
                        op,
                        value,
                        ignore_case,
                    } => StrTest::Text(*op, value.clone(), *ignore_case),
                    _ => return mismatch("time operators apply to timestamps only"),
                };
                Ok(Node::Str(col, test))
            }
            AttrType::Bool => match &c.test {
                Test::Compare {
                    op: op @ (CompareOp::Eq | CompareOp::Ne),
                    value: Scalar::Bool(b),
                    ignore_case: false,
                } => {
                    let node = Node::Bool(col, *b);
                    // `!= true` on a missing value is false, like every comparison.
                    Ok(if *op == CompareOp::Eq {
                        node
                    } else {
                        Node::Bool(col, !*b)
                    })
                }
                Test::Compare {
                    value: Scalar::Bool(_),
                    ..
                } => mismatch("only = and != apply, without ignore_case"),
                Test::Compare { value, .. } => mismatch(&format!(
                    "compare it with true or false, not {}",
                    scalar_text(value)
                )),
                _ => mismatch("use = true, = false, exists or not_exists"),
            },
            AttrType::ListOfStrings => {
                let text = |s: &Scalar| match s {
                    Scalar::String(t) => Ok(t.clone()),
                    other => Err(err(
                        path,
                        Some(field),
                        format!(
                            "`{field}` is a list of strings, the value {} is not a string",
                            scalar_text(other)
                        ),
                    )),
                };
                let test = match &c.test {
                    Test::Text {
                        op: op @ (TextOp::Contains | TextOp::NotContains),
                        value,
                        ignore_case,
                    } => {
                        ListTest::Contains(value.clone(), *op == TextOp::NotContains, *ignore_case)
                    }
                    Test::In {
                        values,
                        negated,
                        ignore_case,
                    } => ListTest::AnyIn(
                        values.iter().map(text).collect::<Result<_, _>>()?,
                        *negated,
                        *ignore_case,
                    ),
                    _ => {
                        return mismatch(
                            "use contains, not_contains, in, not_in, exists or not_exists",
                        );
                    }
                };
                Ok(Node::List(col, test))
            }
        }
    }
}

fn between<T: PartialOrd, R>(
    path: &str,
    field: &str,
    low: T,
    high: T,
    make: impl FnOnce(T, T) -> R,
) -> Result<R, RuleError> {
    if low > high {
        return Err(err(
            path,
            Some(field),
            "`between`: the low end is greater than the high end",
        ));
    }
    Ok(make(low, high))
}

fn no_ignore_case(path: &str, field: &str, ignore_case: bool) -> Result<(), RuleError> {
    if ignore_case {
        Err(err(
            path,
            Some(field),
            "`ignore_case` applies to strings only",
        ))
    } else {
        Ok(())
    }
}

fn scalar_text(s: &Scalar) -> String {
    match s {
        Scalar::Bool(b) => b.to_string(),
        Scalar::Number(n) => n.to_string(),
        Scalar::String(t) => format!("{t:?}"),
    }
}

fn check_string(path: &str, field: Option<&str>, s: &str) -> Result<(), RuleError> {
    if s.len() > MAX_STRING_BYTES {
        return Err(err(
            path,
            field,
            format!("a string is longer than {MAX_STRING_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn check_test_limits(path: &str, field: &str, test: &Test) -> Result<(), RuleError> {
    let check_scalar = |s: &Scalar| match s {
        Scalar::String(t) => check_string(path, Some(field), t),
        Scalar::Number(n) if !n.is_finite() => {
            Err(err(path, Some(field), "numbers must be finite"))
        }
        _ => Ok(()),
    };
    match test {
        Test::Compare { value, .. } => check_scalar(value),
        Test::Between { low, high } => check_scalar(low).and(check_scalar(high)),
        Test::In { values, .. } => {
            if values.len() > MAX_LIST_ITEMS {
                return Err(err(
                    path,
                    Some(field),
                    format!("a list has more than {MAX_LIST_ITEMS} items"),
                ));
            }
            values.iter().try_for_each(check_scalar)
        }
        Test::Text { value, .. } => check_string(path, Some(field), value),
        Test::WithinLast(d) | Test::NotWithinLast(d) | Test::WithinNext(d) if d.0 <= 0 => {
            Err(err(path, Some(field), "a duration must be positive"))
        }
        _ => Ok(()),
    }
}

/// What every node of a rule is checked for, whatever it holds: the node
/// budget, the depth limit, and for `and`/`or` at least one child. Returns the
/// node's keyword for `and`/`or` (their path segment), else "".
fn enter(
    rule: &Rule,
    path: &str,
    depth: usize,
    nodes: &mut usize,
) -> Result<&'static str, RuleError> {
    *nodes += 1;
    if *nodes > MAX_RULE_NODES {
        return Err(err(
            path,
            None,
            format!("the rule has more than {MAX_RULE_NODES} nodes"),
        ));
    }
    if depth > MAX_RULE_DEPTH {
        return Err(err(
            path,
            None,
            format!("the rule is nested deeper than {MAX_RULE_DEPTH} levels"),
        ));
    }
    let (kind, children) = match rule {
        Rule::And(children) => ("and", children),
        Rule::Or(children) => ("or", children),
        _ => return Ok(""),
    };
    if children.is_empty() {
        return Err(err(
            path,
            None,
            format!("`{kind}` needs at least one condition"),
        ));
    }
    Ok(kind)
}

fn check_filter(
    rule: &Rule,
    path: &mut String,
    depth: usize,
    nodes: &mut usize,
) -> Result<(), RuleError> {
    let kind = enter(rule, path, depth, nodes)?;
    match rule {
        Rule::And(children) | Rule::Or(children) => {
            for (i, child) in children.iter().enumerate() {
                with_path(path, &format!("{kind}/{i}"), |p| {
                    check_filter(child, p, depth + 1, nodes)
                })?;
            }
            Ok(())
        }
        Rule::Not(inner) => with_path(path, "not", |p| check_filter(inner, p, depth + 1, nodes)),
        Rule::Performed(_) => Err(err(path, None, "`performed` cannot be used inside `where`")),
        Rule::Condition(c) => with_path(path, "condition", |p| {
            check_string(p, Some(&c.field), &c.field)?;
            check_test_limits(p, &c.field, &c.test)?;
            match c.test {
                Test::WithinLast(_) | Test::NotWithinLast(_) | Test::WithinNext(_) => Err(err(
                    p,
                    Some(&c.field),
                    "time-relative operators cannot be used on event properties",
                )),
                _ => Ok(()),
            }
        }),
    }
}

/// What evaluation reads: the shard's columns and counters.
pub(crate) struct EvalContext<'a> {
    pub attrs: &'a [AttributeColumn],
    pub traits: &'a [ComputedTrait],
    pub counters: &'a CounterStore,
    /// Temporary counters of an ad-hoc preview, numbered after `counters`' ids.
    pub extra_counters: Option<&'a CounterStore>,
}

impl<'a> EvalContext<'a> {
    pub(crate) fn column(&self, field: FieldRef) -> &'a Column {
        match field {
            FieldRef::Attr(i) => &self.attrs[i as usize].column,
            FieldRef::Trait(i) => &self.traits[i as usize].values,
        }
    }

    fn at_least(&self, id: u32, row: u32, k: u32, now: Timestamp) -> (bool, Timestamp) {
        let base = self.counters.id_count() as u32;
        match self.extra_counters {
            Some(extra) if id >= base => extra.at_least(id - base, row, k, now),
            _ => self.counters.at_least(id, row, k, now),
        }
    }
}

/// A rule that matches nobody and reads nothing (a placeholder until a real
/// rule is compiled in its place, e.g. while a snapshot is restored).
impl Default for CompiledRule {
    fn default() -> Self {
        CompiledRule {
            root: Node::Const(false),
            fields: Vec::new(),
            counters: Vec::new(),
            time_dependent: false,
        }
    }
}

impl CompiledRule {
    /// Rewrites rule-local counter indexes to the ids the shard registered them
    /// under (`ids[i]` for `counters[i]`).
    pub(crate) fn link(&mut self, ids: &[u32]) {
        fn walk(node: &mut Node, ids: &[u32]) {
            match node {
                Node::And(c) | Node::Or(c) => c.iter_mut().for_each(|n| walk(n, ids)),
                Node::Not(n) => walk(n, ids),
                Node::Performed { counter, .. } => *counter = ids[*counter as usize],
                _ => {}
            }
        }
        walk(&mut self.root, ids);
    }

    /// `(member, valid_until)` for row `row` at `now`.
    pub(crate) fn evaluate(
        &self,
        ctx: &EvalContext<'_>,
        row: u32,
        now: Timestamp,
    ) -> (bool, Timestamp) {
        eval(&self.root, ctx, row as usize, now.0)
    }
}

const NEVER: i64 = Timestamp::NEVER.0;

/// Evaluates one node for one row (the preview's fallback for nodes it has no
/// columnar loop for).
pub(crate) fn eval_node(node: &Node, ctx: &EvalContext<'_>, row: usize, now: i64) -> bool {
    eval_raw(node, ctx, row, now).0
}

fn eval(node: &Node, ctx: &EvalContext<'_>, row: usize, now: i64) -> (bool, Timestamp) {
    let (value, until) = eval_raw(node, ctx, row, now);
    (value, Timestamp(until))
}

fn eval_raw(node: &Node, ctx: &EvalContext<'_>, row: usize, now: i64) -> (bool, i64) {
    match node {
        Node::Const(b) => (*b, NEVER),
        Node::And(children) => {
            let mut all_true_until = NEVER;
            let mut false_until: Option<i64> = None;
            for child in children {
                let (v, u) = eval_raw(child, ctx, row, now);
                if v {
                    all_true_until = all_true_until.min(u);
                } else {
                    if u == NEVER {
                        return (false, NEVER);
                    }
                    false_until = Some(false_until.map_or(u, |f: i64| f.max(u)));
                }
            }
            match false_until {
                None => (true, all_true_until),
                Some(f) => (false, f),
            }
        }
        Node::Or(children) => {
            let mut all_false_until = NEVER;
            let mut true_until: Option<i64> = None;
            for child in children {
                let (v, u) = eval_raw(child, ctx, row, now);
                if v {
                    if u == NEVER {
                        return (true, NEVER);
                    }
                    true_until = Some(true_until.map_or(u, |t: i64| t.max(u)));
                } else {
                    all_false_until = all_false_until.min(u);
                }
            }
            match true_until {
                Some(t) => (true, t),
                None => (false, all_false_until),
            }
        }
        Node::Not(inner) => {
            let (v, u) = eval_raw(inner, ctx, row, now);
            (!v, u)
        }
        Node::Exists(field) => (!is_missing(ctx.column(*field), row), NEVER),
        Node::Number(field, test) => {
            let Column::Number(values) = ctx.column(*field) else {
                return (false, NEVER);
            };
            (number_test(test, values.get(row)), NEVER)
        }
        Node::Time(field, test) => {
            let Column::Timestamp(values) = ctx.column(*field) else {
                return (false, NEVER);
            };
            time_test(test, values[row], now)
        }
        Node::Str(field, test) => {
            let Column::String { codes, dict } = ctx.column(*field) else {
                return (false, NEVER);
            };
            let code = codes.get(row);
            if code == MISSING_CODE {
                return (false, NEVER);
            }
            (str_test(test, dict.get(code)), NEVER)
        }
        Node::Bool(field, want) => {
            let Column::Bool(values) = ctx.column(*field) else {
                return (false, NEVER);
            };
            (values[row] == *want as u8, NEVER)
        }
        Node::List(field, test) => {
            let Column::ListOfStrings { lists, dict } = ctx.column(*field) else {
                return (false, NEVER);
            };
            let Some(items) = &lists[row] else {
                return (false, NEVER);
            };
            (list_test(test, items.iter().map(|c| dict.get(*c))), NEVER)
        }
        Node::Performed { counter, at_least } => {
            let (v, u) = ctx.at_least(*counter, row as u32, *at_least, Timestamp(now));
            (v, u.0)
        }
    }
}

pub(crate) fn is_missing(column: &Column, row: usize) -> bool {
    match column {
        Column::Number(v) => v.get(row).is_nan(),
        Column::Bool(v) => v[row] == MISSING_BOOL,
        Column::String { codes, .. } => codes.get(row) == MISSING_CODE,
        Column::Timestamp(v) => v[row] == MISSING_TIME,
        Column::ListOfStrings { lists, .. } => lists[row].is_none(),
    }
}

pub(crate) fn compare<T: PartialOrd>(op: CompareOp, a: T, b: T) -> bool {
    match op {
        CompareOp::Eq => a == b,
        CompareOp::Ne => a != b,
        CompareOp::Lt => a < b,
        CompareOp::Le => a <= b,
        CompareOp::Gt => a > b,
        CompareOp::Ge => a >= b,
    }
}

pub(crate) fn number_test(test: &NumberTest, x: f64) -> bool {
    if x.is_nan() {
        return false;
    }
    match test {
        NumberTest::Cmp(op, v) => compare(*op, x, *v),
        NumberTest::Between(lo, hi) => *lo <= x && x <= *hi,
        NumberTest::In(values, negated) => values.contains(&x) != *negated,
    }
}

/// `(value, flips_at)` of a time test on a timestamp `t` at `now`.
pub(crate) fn time_test(test: &TimeTest, t: i64, now: i64) -> (bool, i64) {
    if t == MISSING_TIME {
        return (false, NEVER);
    }
    match test {
        TimeTest::Cmp(op, v) => (compare(*op, t, *v), NEVER),
        TimeTest::Between(lo, hi) => (*lo <= t && t <= *hi, NEVER),
        TimeTest::In(values, negated) => (values.contains(&t) != *negated, NEVER),
        TimeTest::WithinLast(w) => {
            let end = t.saturating_add(*w);
            if end > now {
                (true, end)
            } else {
                (false, NEVER)
            }
        }
        TimeTest::NotWithinLast(w) => {
            let end = t.saturating_add(*w);
            if end <= now {
                (true, NEVER)
            } else {
                (false, end)
            }
        }
        TimeTest::WithinNext(w) => {
            let start = t.saturating_sub(*w);
            if now >= t {
                (false, NEVER)
            } else if start <= now {
                (true, t)
            } else {
                (false, start)
            }
        }
    }
}

/// Case-insensitive equality without allocating.
fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

fn cmp_ignore_case(a: &str, b: &str) -> Ordering {
    a.chars()
        .flat_map(char::to_lowercase)
        .cmp(b.chars().flat_map(char::to_lowercase))
}

pub(crate) fn str_eq(a: &str, b: &str, ignore_case: bool) -> bool {
    if ignore_case {
        eq_ignore_case(a, b)
    } else {
        a == b
    }
}

pub(crate) fn str_test(test: &StrTest, s: &str) -> bool {
    match test {
        StrTest::Cmp(op, v, ignore_case) => {
            let ord = if *ignore_case {
                cmp_ignore_case(s, v)
            } else {
                s.cmp(v)
            };
            match op {
                CompareOp::Eq => ord == Ordering::Equal,
                CompareOp::Ne => ord != Ordering::Equal,
                CompareOp::Lt => ord == Ordering::Less,
                CompareOp::Le => ord != Ordering::Greater,
                CompareOp::Gt => ord == Ordering::Greater,
                CompareOp::Ge => ord != Ordering::Less,
            }
        }
        StrTest::Between(lo, hi) => lo.as_str() <= s && s <= hi.as_str(),
        StrTest::In(values, negated, ignore_case) => {
            values.iter().any(|v| str_eq(s, v, *ignore_case)) != *negated
        }
        StrTest::Text(op, v, ignore_case) => {
            let (hay, needle) = if *ignore_case {
                (s.to_lowercase(), v.to_lowercase())
            } else {
                (s.to_string(), v.clone())
            };
            match op {
                TextOp::Contains => hay.contains(&needle),
                TextOp::NotContains => !hay.contains(&needle),
                TextOp::StartsWith => hay.starts_with(&needle),
                TextOp::EndsWith => hay.ends_with(&needle),
            }
        }
    }
}

pub(crate) fn list_test<'a>(test: &ListTest, mut items: impl Iterator<Item = &'a str>) -> bool {
    match test {
        ListTest::Contains(v, negated, ignore_case) => {
            items.any(|i| str_eq(i, v, *ignore_case)) != *negated
        }
        ListTest::AnyIn(values, negated, ignore_case) => {
            items.any(|i| values.iter().any(|v| str_eq(i, v, *ignore_case))) != *negated
        }
    }
}

/// Evaluates a property predicate (already checked with [`check_property_filter`])
/// on an event's properties. Types are taken from the JSON values: a property of
/// another type than the literal, or a missing one, fails the comparison.
pub fn eval_property_filter(rule: &Rule, properties: Option<&Map<String, Json>>) -> bool {
    match rule {
        Rule::And(c) => c.iter().all(|r| eval_property_filter(r, properties)),
        Rule::Or(c) => c.iter().any(|r| eval_property_filter(r, properties)),
        Rule::Not(r) => !eval_property_filter(r, properties),
        Rule::Performed(_) => false,
        Rule::Condition(c) => {
            let value = properties
                .and_then(|p| lookup_path(p, &c.field))
                .filter(|v| !v.is_null());
            property_test(&c.test, value)
        }
    }
}

fn property_test(test: &Test, value: Option<&Json>) -> bool {
    let Some(value) = value else {
        return matches!(test, Test::Exists { negated: true });
    };
    let scalar_cmp = |s: &Scalar| -> Option<Ordering> {
        match (value, s) {
            (Json::Number(n), Scalar::Number(v)) => n.as_f64()?.partial_cmp(v),
            (Json::String(a), Scalar::String(b)) => Some(a.as_str().cmp(b.as_str())),
            (Json::Bool(a), Scalar::Bool(b)) => {
                (a == b).then_some(Ordering::Equal).or(Some(Ordering::Less))
            }
            _ => None,
        }
    };
    match test {
        Test::Exists { negated } => !negated,
        Test::Compare {
            op,
            value: lit,
            ignore_case,
        } => {
            if let (Json::String(a), Scalar::String(b), true) = (value, lit, *ignore_case) {
                return str_test(&StrTest::Cmp(*op, b.clone(), true), a);
            }
            if matches!(value, Json::Bool(_)) && !matches!(op, CompareOp::Eq | CompareOp::Ne) {
                return false;
            }
            scalar_cmp(lit).is_some_and(|ord| match op {
                CompareOp::Eq => ord == Ordering::Equal,
                CompareOp::Ne => ord != Ordering::Equal,
                CompareOp::Lt => ord == Ordering::Less,
                CompareOp::Le => ord != Ordering::Greater,
                CompareOp::Gt => ord == Ordering::Greater,
                CompareOp::Ge => ord != Ordering::Less,
            })
        }
        Test::Between { low, high } => {
            scalar_cmp(low).is_some_and(|o| o != Ordering::Less)
                && scalar_cmp(high).is_some_and(|o| o != Ordering::Greater)
        }
        Test::In {
            values,
            negated,
            ignore_case,
        } => {
            let hit = |v: &Scalar| match (value, v) {
                (Json::String(a), Scalar::String(b)) => str_eq(a, b, *ignore_case),
                _ => scalar_cmp(v) == Some(Ordering::Equal),
            };
            let comparable = values.iter().any(|v| scalar_cmp(v).is_some());
            comparable && (values.iter().any(hit) != *negated)
        }
        Test::Text {
            op,
            value: needle,
            ignore_case,
        } => match value {
            Json::String(s) => str_test(&StrTest::Text(*op, needle.clone(), *ignore_case), s),
            Json::Array(items) if matches!(op, TextOp::Contains | TextOp::NotContains) => {
                let strings: Option<Vec<&str>> = items.iter().map(Json::as_str).collect();
                strings.is_some_and(|s| {
                    list_test(
                        &ListTest::Contains(
                            needle.clone(),
                            *op == TextOp::NotContains,
                            *ignore_case,
                        ),
                        s.into_iter(),
                    )
                })
            }
            _ => false,
        },
        Test::Before(t) | Test::After(t) => {
            let Some(at) = value
                .as_str()
                .and_then(|s| Timestamp::parse_rfc3339(s).ok())
            else {
                return false;
            };
            if matches!(test, Test::Before(_)) {
                at < *t
            } else {
                at > *t
            }
        }
        Test::WithinLast(_) | Test::NotWithinLast(_) | Test::WithinNext(_) => false,
    }
}
