//! Computed traits: per-customer aggregates over events (count, sum, min, max, avg,
//! first, last, distinct count), optionally filtered by a predicate on the event's
//! properties and optionally over a sliding window.
//!
//! Every state is order-insensitive: applying the same set of (distinct) events in
//! any order gives the same value. Duplicates are removed before they get here, by
//! `messageId` (see [`crate::shard`]).
//!
//! ## Windows
//! A windowed trait keeps per-customer *buckets* of size `B` (chosen from the
//! window `W`: one day for windows of a week or more, one hour from six hours,
//! one minute from ten minutes, else one second; `B` always divides `W`). An
//! event at time `t` counts while `bucket_start(t) + W > now`, so a value changes
//! at a bucket boundary, exactly once per bucket, and the deadline index refreshes
//! it then. This bounds state to `W / B` buckets per customer at the price of a
//! window up to one bucket shorter than exact (an event stops counting at
//! `bucket_start(t) + W`, not `t + W`); `performed ... within W` conditions, which
//! need exact boundaries, keep exact timestamps instead (see [`crate::counters`]).

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::model::{AttrType, AttrValue, lookup_path};
use crate::rule::Rule;
use crate::rule::compile::eval_property_filter;
use crate::table::Column;
use crate::time::{DAY, Duration, HOUR, MINUTE, SECOND, Timestamp};

/// The aggregate a computed trait computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    First,
    Last,
    DistinctCount,
}

/// The declaration of a computed trait.
///
/// ```json
/// {"name": "big_orders_90d", "event": "Order Completed", "aggregate": "count",
///  "where": {"condition": {"field": "revenue", "op": ">", "value": 100}}, "window": "90d"}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputedTraitDef {
    /// The name rules use, e.g. `total_spend`.
    pub name: String,
    /// The track event it aggregates; `None` aggregates every message of the
    /// customer (identify, track, page, ...), as `first_seen` does.
    #[serde(default)]
    pub event: Option<String>,
    pub aggregate: Aggregate,
    /// Property paths to aggregate, the first one present in an event wins
    /// (`["revenue", "total"]`). Empty means the event's timestamp, allowed for
    /// `min`, `max`, `first` and `last`.
    #[serde(default)]
    pub of: Vec<String>,
    /// Only events whose properties satisfy this predicate count.
    #[serde(default, rename = "where")]
    pub filter: Option<Rule>,
    /// Sliding window, e.g. `"90d"`.
    #[serde(default, with = "duration_text")]
    pub window: Option<Duration>,
    /// The value type of `first`/`last` of a property (they keep the property's
    /// value as it is); ignored otherwise.
    #[serde(default, rename = "type")]
    pub value_type: Option<AttrType>,
}

mod duration_text {
    use super::Duration;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&d.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| Duration::parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraitDefError {
    #[error("computed trait `{0}`: {1}")]
    Invalid(String, String),
}

impl ComputedTraitDef {
    /// The built-in traits every tenant has, from the Segment e-commerce spec.
    pub fn builtins() -> Vec<ComputedTraitDef> {
        let order = |name: &str, aggregate, of: &[&str]| ComputedTraitDef {
            name: name.to_string(),
            event: Some("Order Completed".to_string()),
            aggregate,
            of: of.iter().map(|s| s.to_string()).collect(),
            filter: None,
            window: None,
            value_type: None,
        };
        let seen = |name: &str, aggregate| ComputedTraitDef {
            name: name.to_string(),
            event: None,
            aggregate,
            of: Vec::new(),
            filter: None,
            window: None,
            value_type: None,
        };
        vec![
            order("total_spend", Aggregate::Sum, &["revenue", "total"]),
            order("order_count", Aggregate::Count, &[]),
            order("last_order_at", Aggregate::Max, &[]),
            order("first_order_at", Aggregate::Min, &[]),
            seen("first_seen", Aggregate::Min),
            seen("last_seen", Aggregate::Max),
        ]
    }

    /// The type of the trait's value, after checking the declaration makes sense.
    pub fn output_type(&self) -> Result<AttrType, TraitDefError> {
        let bad = |why: &str| Err(TraitDefError::Invalid(self.name.clone(), why.to_string()));
        if self.name.is_empty() || self.name.len() > 256 {
            return bad("the name must be 1 to 256 bytes");
        }
        if self
            .event
            .as_ref()
            .is_some_and(|e| e.is_empty() || e.len() > 1024)
        {
            return bad("the event name must be 1 to 1024 bytes");
        }
        if self.of.len() > 8 || self.of.iter().any(|p| p.is_empty() || p.len() > 256) {
            return bad("`of` takes at most 8 property paths of 1 to 256 bytes");
        }
        if self
            .window
            .is_some_and(|w| w.millis() <= 0 || w.millis() > crate::time::MAX_DURATION)
        {
            return bad("the window must be positive and at most 100 years");
        }
        let on_time = self.of.is_empty();
        match self.aggregate {
            Aggregate::Count => {
                if !self.of.is_empty() {
                    return bad("`count` takes no `of`");
                }
                Ok(AttrType::Number)
            }
            Aggregate::Sum | Aggregate::Avg | Aggregate::DistinctCount if on_time => {
                bad("`sum`, `avg` and `distinct_count` need `of` (a property)")
            }
            Aggregate::Sum | Aggregate::Avg | Aggregate::DistinctCount => Ok(AttrType::Number),
            Aggregate::Min | Aggregate::Max if on_time => Ok(AttrType::Timestamp),
            Aggregate::Min | Aggregate::Max => Ok(AttrType::Number),
            Aggregate::First | Aggregate::Last if self.window.is_some() => {
                bad("`first` and `last` cannot have a window")
            }
            Aggregate::First | Aggregate::Last if on_time => Ok(AttrType::Timestamp),
            Aggregate::First | Aggregate::Last => match self.value_type {
                Some(ty) => Ok(ty),
                None => bad("`first`/`last` of a property need a `type`"),
            },
        }
    }

    fn default_value(&self) -> Option<AttrValue> {
        match self.aggregate {
            Aggregate::Count | Aggregate::Sum | Aggregate::DistinctCount => {
                Some(AttrValue::Number(0.0))
            }
            _ => None,
        }
    }

    /// Whether this trait looks at `event` at all (name filter only).
    pub fn matches_name(&self, track_name: Option<&str>) -> bool {
        match &self.event {
            None => true,
            Some(name) => track_name == Some(name.as_str()),
        }
    }

    /// The value this trait aggregates from one event: `Ok(None)` when the event
    /// does not carry it (it is then ignored), `Err` when it carries a value of the
    /// wrong type (reported by the caller).
    pub(crate) fn input(
        &self,
        timestamp: Timestamp,
        properties: Option<&Map<String, Json>>,
        ty: AttrType,
    ) -> Result<Option<TraitInput>, String> {
        if self.aggregate == Aggregate::Count {
            return Ok(Some(TraitInput::None));
        }
        if self.of.is_empty() {
            return Ok(Some(TraitInput::Value(AttrValue::Timestamp(timestamp))));
        }
        let Some(found) = properties.and_then(|p| self.of.iter().find_map(|k| lookup_path(p, k)))
        else {
            return Ok(None);
        };
        if found.is_null() {
            return Ok(None);
        }
        if self.aggregate == Aggregate::DistinctCount {
            return Ok(Some(TraitInput::Hash(hash_json(found))));
        }
        match AttrValue::from_json_as(found, ty) {
            Some(v) => Ok(Some(TraitInput::Value(v))),
            None => Err(format!(
                "property `{}` is {found}, computed trait `{}` needs {ty}",
                self.of.join("|"),
                self.name
            )),
        }
    }
}

/// What one event contributes to a trait.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TraitInput {
    None,
    Value(AttrValue),
    Hash(u64),
}

fn hash_json(v: &Json) -> u64 {
    // Distinct counts treat 1 and 1.0 alike and compare strings exactly.
    let text = match v {
        Json::String(s) => format!("s{s}"),
        Json::Number(n) => format!("n{}", n.as_f64().unwrap_or(f64::NAN)),
        other => format!("j{other}"),
    };
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// The bucket size for a window: see the module docs.
pub fn bucket_size(window: Duration) -> i64 {
    let w = window.millis();
    for (b, min_w) in [(DAY, 7 * DAY), (HOUR, 6 * HOUR), (MINUTE, 10 * MINUTE)] {
        if w >= min_w && w % b == 0 {
            return b;
        }
    }
    if w % SECOND == 0 { SECOND } else { 1 }
}

fn bucket_start(t: i64, bucket: i64) -> i64 {
    t.div_euclid(bucket) * bucket
}

/// A sum that does not depend on the order of its terms for the values people
/// sum (amounts with up to six decimals): those are added exactly as integer
/// millionths; anything else (more decimals, beyond ±9.2 trillion) goes to a
/// float remainder, which is order-sensitive in its last bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ExactSum {
    micros: i64,
    rest: f64,
}

impl ExactSum {
    const SCALE: f64 = 1e6;

    pub(crate) fn add(&mut self, x: f64) {
        let m = (x * Self::SCALE).round();
        if m.abs() < 9.0e18
            && m / Self::SCALE == x
            && let Some(total) = self.micros.checked_add(m as i64)
        {
            self.micros = total;
            return;
        }
        self.rest += x;
    }

    pub(crate) fn value(&self) -> f64 {
        self.micros as f64 / Self::SCALE + self.rest
    }

    fn merge(&mut self, other: &ExactSum) {
        match self.micros.checked_add(other.micros) {
            Some(total) => self.micros = total,
            None => self.rest += other.micros as f64 / Self::SCALE,
        }
        self.rest += other.rest;
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Bucket {
    start: i64,
    count: u32,
    sum: ExactSum,
    min: f64,
    max: f64,
}

/// Per-customer state of one computed trait, beside its value column.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum TraitState {
    /// Count, min, max: the value column is the whole state.
    InColumn,
    Sum {
        sums: Vec<ExactSum>,
    },
    Avg {
        sums: Vec<ExactSum>,
        count: Vec<u32>,
    },
    /// First/last: the winning event's timestamp per row.
    Chosen {
        at: Vec<i64>,
    },
    Distinct {
        sets: FxHashMap<u32, FxHashSet<u64>>,
    },
    Windowed {
        bucket: i64,
        buckets: FxHashMap<u32, Vec<Bucket>>,
    },
    WindowedDistinct {
        bucket: i64,
        seen: FxHashMap<u32, FxHashMap<u64, i64>>,
    },
}

/// A computed trait of one tenant shard: its declaration, its value column (read
/// by rules and preview like any attribute) and its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComputedTrait {
    #[serde(with = "crate::json_text")]
    pub def: ComputedTraitDef,
    pub ty: AttrType,
    pub values: Column,
    state: TraitState,
    default: Option<AttrValue>,
}

impl ComputedTrait {
    pub fn new(def: ComputedTraitDef, rows: usize) -> Result<ComputedTrait, TraitDefError> {
        let ty = def.output_type()?;
        let state = match (def.aggregate, def.window) {
            (Aggregate::DistinctCount, Some(w)) => TraitState::WindowedDistinct {
                bucket: bucket_size(w),
                seen: FxHashMap::default(),
            },
            (_, Some(w)) => TraitState::Windowed {
                bucket: bucket_size(w),
                buckets: FxHashMap::default(),
            },
            (Aggregate::Avg, None) => TraitState::Avg {
                sums: Vec::new(),
                count: Vec::new(),
            },
            (Aggregate::Sum, None) => TraitState::Sum { sums: Vec::new() },
            (Aggregate::First | Aggregate::Last, None) => TraitState::Chosen { at: Vec::new() },
            (Aggregate::DistinctCount, None) => TraitState::Distinct {
                sets: FxHashMap::default(),
            },
            _ => TraitState::InColumn,
        };
        let default = def.default_value();
        let mut t = ComputedTrait {
            values: Column::new(ty),
            ty,
            def,
            state,
            default,
        };
        t.resize(rows);
        Ok(t)
    }

    pub fn is_windowed(&self) -> bool {
        self.def.window.is_some()
    }

    pub fn resize(&mut self, rows: usize) {
        self.values.resize(rows, self.default.as_ref());
        match &mut self.state {
            TraitState::Sum { sums } => sums.resize(rows, ExactSum::default()),
            TraitState::Avg { sums, count } => {
                sums.resize(rows, ExactSum::default());
                count.resize(rows, 0);
            }
            TraitState::Chosen { at } => at.resize(rows, i64::MIN),
            _ => {}
        }
    }

    /// Appends the row of a new customer: `resize(len + 1)` without its general
    /// path (it runs for every computed trait of every new customer).
    #[inline]
    pub fn push_row(&mut self) {
        self.values.push_row(self.default.as_ref());
        match &mut self.state {
            TraitState::Sum { sums } => sums.push(ExactSum::default()),
            TraitState::Avg { sums, count } => {
                sums.push(ExactSum::default());
                count.push(0);
            }
            TraitState::Chosen { at } => at.push(i64::MIN),
            _ => {}
        }
    }

    /// Returns row `row` to the state of a customer with no events, leaving
    /// nothing of what it held (see [`Column::purge_row`]).
    pub(crate) fn purge_row(&mut self, row: u32) {
        let r = row as usize;
        self.values.purge_row(row);
        if self.default.is_some() {
            self.values.set(row, self.default.as_ref());
        }
        match &mut self.state {
            TraitState::InColumn => {}
            TraitState::Sum { sums } => sums[r] = ExactSum::default(),
            TraitState::Avg { sums, count } => {
                sums[r] = ExactSum::default();
                count[r] = 0;
            }
            TraitState::Chosen { at } => at[r] = i64::MIN,
            TraitState::Distinct { sets } => {
                sets.remove(&row);
            }
            TraitState::Windowed { buckets, .. } => {
                buckets.remove(&row);
            }
            TraitState::WindowedDistinct { seen, .. } => {
                seen.remove(&row);
            }
        }
    }

    /// Folds one event in if it concerns this trait. `Ok(None)` when it does not
    /// (another event name, the `where` filter fails, the property is absent);
    /// `Ok(Some((changed, next)))` as [`Self::apply`]; `Err` for a property
    /// value of the wrong type, which is not counted.
    pub(crate) fn fold(
        &mut self,
        row: u32,
        timestamp: Timestamp,
        track: Option<&str>,
        properties: Option<&Map<String, Json>>,
        now: Timestamp,
    ) -> Result<Option<(bool, Timestamp)>, String> {
        if !self.def.matches_name(track) {
            return Ok(None);
        }
        if let Some(filter) = &self.def.filter
            && !eval_property_filter(filter, properties)
        {
            return Ok(None);
        }
        Ok(self
            .def
            .input(timestamp, properties, self.ty)?
            .map(|input| self.apply(row, timestamp, input, now)))
    }

    /// Folds one event into row `row`. Returns whether the value changed and, for
    /// windowed traits, the next instant the value changes by itself.
    pub(crate) fn apply(
        &mut self,
        row: u32,
        timestamp: Timestamp,
        input: TraitInput,
        now: Timestamp,
    ) -> (bool, Timestamp) {
        let r = row as usize;
        let window = self.def.window;
        match &mut self.state {
            TraitState::InColumn => {
                let changed = match (&mut self.values, self.def.aggregate, input) {
                    (Column::Number(v), Aggregate::Count, _) => {
                        v.set(r, v.get(r) + 1.0);
                        true
                    }
                    (Column::Number(v), agg, TraitInput::Value(AttrValue::Number(x))) => {
                        let mut slot = v.get(r);
                        let changed =
                            merge_extreme(&mut slot, x, agg == Aggregate::Min, |x: &f64| {
                                x.is_nan()
                            });
                        v.set(r, slot);
                        changed
                    }
                    (
                        Column::Timestamp(v),
                        agg,
                        TraitInput::Value(AttrValue::Timestamp(Timestamp(x))),
                    ) => merge_extreme(&mut v[r], x, agg == Aggregate::Min, |t| {
                        *t == crate::table::MISSING_TIME
                    }),
                    _ => false,
                };
                (changed, Timestamp::NEVER)
            }
            TraitState::Sum { sums } => {
                let TraitInput::Value(AttrValue::Number(x)) = input else {
                    return (false, Timestamp::NEVER);
                };
                sums[r].add(x);
                let total = sums[r].value();
                (set_number(&mut self.values, r, total), Timestamp::NEVER)
            }
            TraitState::Avg { sums, count } => {
                let TraitInput::Value(AttrValue::Number(x)) = input else {
                    return (false, Timestamp::NEVER);
                };
                sums[r].add(x);
                count[r] += 1;
                let avg = sums[r].value() / count[r] as f64;
                (set_number(&mut self.values, r, avg), Timestamp::NEVER)
            }
            TraitState::Chosen { at } => {
                let TraitInput::Value(value) = input else {
                    return (false, Timestamp::NEVER);
                };
                let first = self.def.aggregate == Aggregate::First;
                let current_at = at[r];
                let better = if current_at == i64::MIN {
                    true
                } else if timestamp.0 == current_at {
                    // Same instant: the greater value wins, whatever the arrival order.
                    self.values
                        .get(row)
                        .is_none_or(|c| value.tie_break_cmp(&c) == std::cmp::Ordering::Greater)
                } else {
                    (timestamp.0 < current_at) == first
                };
                if !better {
                    return (false, Timestamp::NEVER);
                }
                at[r] = timestamp.0;
                let changed = !self.values.holds(row, Some(&value));
                self.values.set(row, Some(&value));
                (changed, Timestamp::NEVER)
            }
            TraitState::Distinct { sets } => {
                let TraitInput::Hash(h) = input else {
                    return (false, Timestamp::NEVER);
                };
                let set = sets.entry(row).or_default();
                if !set.insert(h) {
                    return (false, Timestamp::NEVER);
                }
                let n = set.len() as f64;
                (set_number(&mut self.values, r, n), Timestamp::NEVER)
            }
            TraitState::Windowed { bucket, buckets } => {
                let w = window.expect("windowed state has a window").millis();
                let start = bucket_start(timestamp.0, *bucket);
                let x = match input {
                    TraitInput::None => Some(0.0),
                    TraitInput::Value(AttrValue::Number(x)) => Some(x),
                    TraitInput::Value(AttrValue::Timestamp(t)) => Some(t.0 as f64),
                    _ => None,
                };
                // An event already outside the window can never count; the
                // refresh below still reports the pending deadline, which the
                // caller re-schedules.
                let Some(x) = x.filter(|_| start.saturating_add(w) > now.0) else {
                    return self.refresh(row, now);
                };
                let list = buckets.entry(row).or_default();
                match list.binary_search_by_key(&start, |b| b.start) {
                    Ok(i) => {
                        let b = &mut list[i];
                        b.count += 1;
                        b.sum.add(x);
                        b.min = b.min.min(x);
                        b.max = b.max.max(x);
                    }
                    Err(i) => list.insert(
                        i,
                        Bucket {
                            start,
                            count: 1,
                            sum: {
                                let mut sum = ExactSum::default();
                                sum.add(x);
                                sum
                            },
                            min: x,
                            max: x,
                        },
                    ),
                }
                self.refresh(row, now)
            }
            TraitState::WindowedDistinct { bucket, seen } => {
                let w = window.expect("windowed state has a window").millis();
                let start = bucket_start(timestamp.0, *bucket);
                let TraitInput::Hash(h) = input else {
                    return self.refresh(row, now);
                };
                if start.saturating_add(w) <= now.0 {
                    return self.refresh(row, now);
                }
                let latest = seen.entry(row).or_default().entry(h).or_insert(start);
                *latest = (*latest).max(start);
                self.refresh(row, now)
            }
        }
    }

    /// Recomputes a windowed trait's value at `now`, dropping buckets that left the
    /// window. Returns whether the value changed and when it next changes by itself.
    pub(crate) fn refresh(&mut self, row: u32, now: Timestamp) -> (bool, Timestamp) {
        let r = row as usize;
        let Some(window) = self.def.window else {
            return (false, Timestamp::NEVER);
        };
        let w = window.millis();
        let alive = |start: i64| start.saturating_add(w) > now.0;
        match &mut self.state {
            TraitState::Windowed { buckets, .. } => {
                let Some(list) = buckets.get_mut(&row) else {
                    return (false, Timestamp::NEVER);
                };
                list.retain(|b| alive(b.start));
                let next = list
                    .first()
                    .map_or(Timestamp::NEVER, |b| Timestamp(b.start.saturating_add(w)));
                let value = if list.is_empty() {
                    buckets.remove(&row);
                    self.default.clone()
                } else {
                    let count: u32 = list.iter().map(|b| b.count).sum();
                    let sum = list
                        .iter()
                        .fold(ExactSum::default(), |mut total, b| {
                            total.merge(&b.sum);
                            total
                        })
                        .value();
                    let min = list.iter().map(|b| b.min).fold(f64::INFINITY, f64::min);
                    let max = list.iter().map(|b| b.max).fold(f64::NEG_INFINITY, f64::max);
                    let as_value = |x: f64| match self.ty {
                        AttrType::Timestamp => AttrValue::Timestamp(Timestamp(x as i64)),
                        _ => AttrValue::Number(x),
                    };
                    Some(match self.def.aggregate {
                        Aggregate::Count => AttrValue::Number(count as f64),
                        Aggregate::Sum => AttrValue::Number(sum),
                        Aggregate::Avg => AttrValue::Number(sum / count as f64),
                        Aggregate::Min => as_value(min),
                        _ => as_value(max),
                    })
                };
                let changed = self.values.get(row) != value;
                if changed {
                    self.values.set(row, value.as_ref());
                }
                (changed, next)
            }
            TraitState::WindowedDistinct { seen, .. } => {
                let Some(map) = seen.get_mut(&row) else {
                    return (false, Timestamp::NEVER);
                };
                map.retain(|_, start| alive(*start));
                let next = map
                    .values()
                    .min()
                    .map_or(Timestamp::NEVER, |s| Timestamp(s.saturating_add(w)));
                let n = map.len() as f64;
                if map.is_empty() {
                    seen.remove(&row);
                }
                (set_number(&mut self.values, r, n), next)
            }
            _ => (false, Timestamp::NEVER),
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.values.heap_bytes()
            + match &self.state {
                TraitState::InColumn => 0,
                TraitState::Sum { sums } => sums.capacity() * 16,
                TraitState::Avg { sums, count } => sums.capacity() * 16 + count.capacity() * 4,
                TraitState::Chosen { at } => at.capacity() * 8,
                TraitState::Distinct { sets } => {
                    sets.capacity() * 40 + sets.values().map(|s| s.capacity() * 9).sum::<usize>()
                }
                TraitState::Windowed { buckets, .. } => {
                    buckets.capacity() * 32
                        + buckets.values().map(|b| b.capacity() * 40).sum::<usize>()
                }
                TraitState::WindowedDistinct { seen, .. } => {
                    seen.capacity() * 40 + seen.values().map(|m| m.capacity() * 17).sum::<usize>()
                }
            }
    }
}

fn merge_extreme<T: PartialOrd + Copy>(
    slot: &mut T,
    x: T,
    keep_min: bool,
    is_missing: impl Fn(&T) -> bool,
) -> bool {
    let better = is_missing(slot) || if keep_min { x < *slot } else { x > *slot };
    if better {
        *slot = x;
    }
    better
}

fn set_number(column: &mut Column, r: usize, x: f64) -> bool {
    match column {
        Column::Number(v) => {
            let changed = v.get(r) != x;
            v.set(r, x);
            changed
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_sizes_divide_their_window() {
        for (w, b) in [
            (Duration::from_days(90), DAY),
            (Duration::from_days(7), DAY),
            (Duration::from_days(1), HOUR),
            (Duration(3 * HOUR), MINUTE),
            (Duration(30 * SECOND), SECOND),
        ] {
            assert_eq!(bucket_size(w), b, "{w}");
            assert_eq!(w.millis() % b, 0);
        }
    }

    #[test]
    fn windowed_sum_expires_bucket_by_bucket() {
        let def = ComputedTraitDef {
            name: "spend_7d".into(),
            event: Some("Order Completed".into()),
            aggregate: Aggregate::Sum,
            of: vec!["revenue".into()],
            filter: None,
            window: Some(Duration::from_days(7)),
            value_type: None,
        };
        let mut t = ComputedTrait::new(def, 1).unwrap();
        let day = |d: i64| Timestamp(d * DAY);
        let input = |x| TraitInput::Value(AttrValue::Number(x));
        let (_, next) = t.apply(0, day(1), input(10.0), day(2));
        assert_eq!(next, day(8));
        let (_, next) = t.apply(0, Timestamp(3 * DAY + 5), input(5.0), day(3));
        assert_eq!(next, day(8));
        assert_eq!(t.values.get(0), Some(AttrValue::Number(15.0)));
        let (changed, next) = t.refresh(0, day(8));
        assert!(changed);
        assert_eq!(next, day(10));
        assert_eq!(t.values.get(0), Some(AttrValue::Number(5.0)));
        let (_, next) = t.refresh(0, day(10));
        assert_eq!(next, Timestamp::NEVER);
        assert_eq!(t.values.get(0), Some(AttrValue::Number(0.0)));
    }

    #[test]
    fn purged_rows_return_to_the_empty_customer() {
        let def = |aggregate, of: &[&str], window: Option<i64>, value_type| ComputedTraitDef {
            name: "t".into(),
            event: Some("Order Completed".into()),
            aggregate,
            of: of.iter().map(|s| s.to_string()).collect(),
            filter: None,
            window: window.map(Duration::from_days),
            value_type,
        };
        let now = Timestamp(2 * DAY);
        let props = serde_json::json!({"revenue": 12.5, "coupon": "SPRING"});
        for (def, empty) in [
            (
                def(Aggregate::Sum, &["revenue"], None, None),
                Some(AttrValue::Number(0.0)),
            ),
            (def(Aggregate::Avg, &["revenue"], None, None), None),
            (
                def(Aggregate::Count, &[], Some(7), None),
                Some(AttrValue::Number(0.0)),
            ),
            (
                def(Aggregate::DistinctCount, &["coupon"], None, None),
                Some(AttrValue::Number(0.0)),
            ),
            (
                def(Aggregate::DistinctCount, &["coupon"], Some(7), None),
                Some(AttrValue::Number(0.0)),
            ),
            (
                def(Aggregate::Last, &["coupon"], None, Some(AttrType::String)),
                None,
            ),
            (def(Aggregate::Max, &["revenue"], None, None), None),
        ] {
            let name = format!("{:?} {:?}", def.aggregate, def.window);
            let mut t = ComputedTrait::new(def, 3).unwrap();
            for row in [1, 2] {
                t.fold(
                    row,
                    Timestamp(DAY),
                    Some("Order Completed"),
                    props.as_object(),
                    now,
                )
                .unwrap();
            }
            let other = t.values.get(2);
            t.purge_row(1);
            assert_eq!(t.values.get(1), empty, "{name}");
            assert_eq!(t.values.get(2), other, "{name}");
            // Folding again starts from nothing.
            t.fold(
                1,
                Timestamp(DAY),
                Some("Order Completed"),
                props.as_object(),
                now,
            )
            .unwrap();
            assert_eq!(t.values.get(1), other, "{name}");
        }
    }

    #[test]
    fn sums_of_decimals_do_not_depend_on_order() {
        let amounts = [0.1, 0.2, 0.3, 19.99, 1e-7, 5.55];
        let mut forward = ExactSum::default();
        let mut backward = ExactSum::default();
        amounts.iter().for_each(|x| forward.add(*x));
        amounts.iter().rev().for_each(|x| backward.add(*x));
        assert_eq!(forward.value(), backward.value());
        let mut cents = ExactSum::default();
        [0.1, 0.2].iter().for_each(|x| cents.add(*x));
        assert_eq!(cents.value(), 0.3, "not 0.30000000000000004");
        let mut huge = ExactSum::default();
        huge.add(9.0e12);
        huge.add(9.0e12); // past i64 millionths: kept in the remainder
        assert_eq!(huge.value(), 1.8e13);
    }
}
