//! Incremental segment membership for one tenant shard.
//!
//! A [`Shard`] owns the state of its customers (attribute columns, computed traits,
//! event counters) and the membership of every segment of the tenant. It is driven
//! by two calls, both taking `now`:
//!
//! * [`Shard::apply`] folds one event into the customer's state and re-evaluates
//!   only the segments that depend on what changed (a dependency index from
//!   attribute, trait and counter to segments);
//! * [`Shard::advance_time`] pops the [deadline index](crate::deadline) and
//!   re-evaluates exactly the (segment, customer) pairs whose answer may have
//!   changed by the mere passage of time, and refreshes windowed traits.
//!
//! Both append [`Delta`]s (entered/exited) to a caller-supplied buffer. The
//! invariant, checked by the oracle property test, is that after either call the
//! membership of every segment equals a from-scratch evaluation of its rule over
//! all customers at the shard's `now`.
//!
//! ```
//! use serde_json::json;
//! use xeno_engine::{model::Event, rule::dsl, shard::{Shard, SegmentId, Transition}, time::{Timestamp, DAY}};
//! let mut shard = Shard::new(Default::default());
//! let history: Vec<Event> = Vec::new();
//! let mut deltas = Vec::new();
//! let rule = dsl::parse("performed \"Order Completed\" within 30d").unwrap();
//! shard.add_segment(SegmentId(1), rule, &history, &mut deltas).unwrap();
//! let t0 = Timestamp(1_700_000_000_000);
//! let order = Event::track("m1", "ada", t0, "Order Completed", json!({"revenue": 120}));
//! shard.apply(&order, t0, &mut deltas).unwrap();
//! assert_eq!(deltas[0].transition, Transition::Entered);
//! deltas.clear();
//! shard.advance_time(Timestamp(t0.0 + 30 * DAY), &mut deltas);
//! assert_eq!(deltas[0].transition, Transition::Exited);
//! ```
//!
//! Row 0 of every column is a customer that never receives an event: evaluating
//! a rule on it tells which segments a brand-new customer belongs to.
//!
//! Beside the event path: [`Shard::query_customers`] lists customers in a
//! stable, pageable order (module `listing`), [`Shard::change_field_type`]
//! converts an attribute's values in place (module `retype`), and
//! [`Shard::purge_removed`] erases a removed customer for good.

mod listing;
mod retype;

pub use listing::{CustomerQuery, ListPosition, ListedCustomer};
pub use retype::{FieldTypeCheck, FieldTypeError};

use std::borrow::Cow;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use smallvec::SmallVec;

use crate::counters::CounterStore;
use crate::deadline::{DeadlineIndex, DeadlineKey, Verdict, Wheel, judge};
use crate::model::{AttrType, AttrValue, Event, EventKind, FieldOrigin, Schema, SchemaError};
use crate::ports::{EventHistory, HistoryError};
use crate::rule::Rule;
use crate::rule::compile::{
    CompiledRule, CounterSpec, EvalContext, FieldRef, Resolver, RuleError, check_property_filter,
    compile,
};
use crate::table::AttributeColumn;
use crate::time::{Duration, HOUR, SECOND, Timestamp};
use crate::traits::{ComputedTrait, ComputedTraitDef, TraitDefError};

/// Most attributes a tenant may have.
pub const MAX_FIELDS: usize = 2_000;
/// Longest customer id, in bytes.
pub const MAX_ID_BYTES: usize = 1_024;
/// Deepest nesting of objects in identify traits that is flattened to dotted names.
const MAX_TRAIT_NESTING: usize = 4;
const NEVER_MS: i64 = Timestamp::NEVER.0;

/// Shard settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardConfig {
    /// Granularity of the deadline wheel, at most one second.
    pub tick: Duration,
    /// How long a `messageId` is remembered for deduplication (at least this long,
    /// at most twice as long).
    pub dedup_window: Duration,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            tick: Duration(SECOND),
            dedup_window: Duration(24 * HOUR),
        }
    }
}

/// A shard setting out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardConfigError {
    #[error("tick must be between 1 ms and 1 s, got {0} ms")]
    Tick(i64),
    #[error("dedup_window must be positive, got {0} ms")]
    DedupWindow(i64),
}

impl ShardConfig {
    /// Checks every setting is in range. [`Shard::new`] clamps what is not, so a
    /// configuration layer should call this first and refuse bad values.
    pub fn validate(&self) -> Result<(), ShardConfigError> {
        if !(1..=SECOND).contains(&self.tick.millis()) {
            return Err(ShardConfigError::Tick(self.tick.millis()));
        }
        if self.dedup_window.millis() <= 0 {
            return Err(ShardConfigError::DedupWindow(self.dedup_window.millis()));
        }
        Ok(())
    }
}

/// A segment's identity, chosen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SegmentId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    Entered,
    Exited,
}

/// What made a membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// An event changed the customer's state.
    Event,
    /// Time passed (a window closed or opened).
    Time,
    /// The customer was removed (merged into another profile).
    Removed,
    /// A segment was created and filled from current state.
    Backfill,
    /// A segment's rule changed.
    RuleChange,
}

/// One membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delta {
    pub segment: SegmentId,
    /// The customer's dense id in this shard; [`Shard::customer_id`] gives the
    /// external id.
    pub customer: u32,
    pub transition: Transition,
    pub at: Timestamp,
    pub cause: Cause,
}

/// A trait of an identify call that was not stored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub field: String,
    pub reason: String,
}

/// The result of [`Shard::apply`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// The event's `messageId` was seen before: nothing changed.
    pub duplicate: bool,
    /// The customer's dense id.
    pub customer: u32,
    /// Values refused because of a type conflict; the rest of the event applied.
    pub rejected: Vec<Rejection>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("the event has neither userId nor anonymousId")]
    NoIdentity,
    #[error("the customer id is longer than {MAX_ID_BYTES} bytes")]
    IdTooLong,
    #[error("the event has no messageId")]
    NoMessageId,
    #[error("the messageId is longer than {MAX_ID_BYTES} bytes")]
    MessageIdTooLong,
    #[error("the timestamp {0} ms is outside years 0000 to 9999")]
    TimestampOutOfRange(i64),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SegmentError {
    #[error("invalid rule: {0}")]
    Rule(#[from] RuleError),
    #[error("segment {0:?} exists already")]
    Exists(SegmentId),
    #[error("no segment {0:?}")]
    Unknown(SegmentId),
    #[error(transparent)]
    History(#[from] HistoryError),
    /// A customer listing asked to sort by a field that does not exist (the
    /// caller's mistake).
    #[error("cannot sort by `{0}`: there is no attribute or computed trait of that name")]
    UnknownSortField(String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraitError {
    #[error(transparent)]
    Definition(#[from] TraitDefError),
    #[error("`{0}` is already a computed trait or an attribute")]
    NameTaken(String),
    #[error("invalid `where` of computed trait: {0}")]
    Filter(RuleError),
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// Customer state: everything rules read.
///
/// No name is both an attribute of `schema` and a computed trait of
/// `trait_by_name`: declaring either refuses a name the other holds, and an
/// identify never infers an attribute of a computed trait's name.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    schema: Schema,
    attrs: Vec<AttributeColumn>,
    traits: Vec<ComputedTrait>,
    trait_by_name: FxHashMap<String, u32>,
    counters: CounterStore,
    /// Per track event name; `any_event` gets every message.
    by_event: FxHashMap<String, Vec<u32>>,
    any_event: Vec<u32>,
    customers: FxHashMap<Box<str>, u32>,
    external_ids: Vec<Box<str>>,
    /// Rows of removed customers (merged into another profile): never
    /// evaluated again, never members.
    removed: roaring::RoaringBitmap,
}

impl Resolver for State {
    fn resolve(&self, name: &str) -> Option<(FieldRef, AttrType)> {
        if let Some(&t) = self.trait_by_name.get(name) {
            return Some((FieldRef::Trait(t), self.traits[t as usize].ty));
        }
        self.schema
            .get(name)
            .map(|(id, def)| (FieldRef::Attr(id.0), def.ty))
    }
}

impl State {
    fn ctx<'a>(&'a self, extra_counters: Option<&'a CounterStore>) -> EvalContext<'a> {
        EvalContext {
            attrs: &self.attrs,
            traits: &self.traits,
            counters: &self.counters,
            extra_counters,
        }
    }

    fn rows(&self) -> usize {
        self.external_ids.len()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SegmentSlot {
    id: SegmentId,
    #[serde(with = "crate::json_text")]
    rule: Rule,
    /// Rebuilt from `rule` on restore (see [`Shard::restore`]).
    #[serde(skip)]
    compiled: CompiledRule,
    counter_ids: Vec<u32>,
    members: roaring::RoaringBitmap,
    version: u64,
}

/// A pending deadline of one (segment, customer) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Track {
    slot: u32,
    /// When the answer may change with no event.
    deadline: i64,
}

/// Segments and the dependency index.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Segments {
    slots: Vec<Option<SegmentSlot>>,
    by_id: FxHashMap<SegmentId, u32>,
    by_attr: Vec<Vec<u32>>,
    by_trait: Vec<Vec<u32>>,
    by_counter: Vec<Vec<u32>>,
    /// Segments a customer with no events belongs to.
    empty_members: Vec<u32>,
    /// Membership by customer: `stride` words per row, one bit per slot. The
    /// roaring bitmaps are the membership of record (lists, counts, set
    /// operations); this transposed copy answers "was this customer a member"
    /// for the segments one event touches from the customer's own cache line,
    /// where a roaring array container costs a binary search over cold memory.
    /// It costs one bit per (customer, segment slot).
    member_bits: Vec<u64>,
    stride: usize,
    /// Per customer row, sorted by slot: the pending deadlines of its
    /// time-dependent pairs (a global map would cost a miss per pair).
    tracks: Vec<SmallVec<[Track; 1]>>,
    /// Segment deadlines, validated against `tracks` when popped.
    wheel: Wheel,
    /// Per slot: the apply generation that last marked it.
    marks: Vec<u32>,
    generation: u32,
    touched: Vec<u32>,
}

impl Segments {
    fn begin(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.generation = 1;
        }
        self.touched.clear();
    }

    fn mark_all(&mut self, slots: &[u32]) {
        for &s in slots {
            let m = &mut self.marks[s as usize];
            if *m != self.generation {
                *m = self.generation;
                self.touched.push(s);
            }
        }
    }

    fn mark_dep(&mut self, dep: FieldRef) {
        let list = match dep {
            FieldRef::Attr(a) => std::mem::take(&mut self.by_attr[a as usize]),
            FieldRef::Trait(t) => std::mem::take(&mut self.by_trait[t as usize]),
        };
        self.mark_all(&list);
        match dep {
            FieldRef::Attr(a) => self.by_attr[a as usize] = list,
            FieldRef::Trait(t) => self.by_trait[t as usize] = list,
        }
    }

    fn mark_counter(&mut self, c: u32) {
        let list = std::mem::take(&mut self.by_counter[c as usize]);
        self.mark_all(&list);
        self.by_counter[c as usize] = list;
    }

    fn is_marked(&self, slot: u32) -> bool {
        self.marks[slot as usize] == self.generation
    }

    fn new(tick_ms: i64) -> Segments {
        Segments {
            slots: Vec::new(),
            by_id: FxHashMap::default(),
            by_attr: Vec::new(),
            by_trait: Vec::new(),
            by_counter: Vec::new(),
            empty_members: Vec::new(),
            member_bits: Vec::new(),
            stride: 1,
            tracks: Vec::new(),
            wheel: Wheel::new(tick_ms),
            marks: Vec::new(),
            generation: 0,
            touched: Vec::new(),
        }
    }

    /// Adds the bookkeeping of one more customer row.
    fn add_row(&mut self) {
        self.member_bits
            .resize(self.member_bits.len() + self.stride, 0);
        self.tracks.push(SmallVec::new());
    }

    /// Makes room for `slot` in every row's membership bits.
    fn ensure_slot(&mut self, slot: u32) {
        let need = slot as usize / 64 + 1;
        if need <= self.stride {
            return;
        }
        let stride = need.max(self.stride * 2);
        let rows = self.member_bits.len() / self.stride;
        let mut bits = vec![0u64; rows * stride];
        for (row, words) in self.member_bits.chunks(self.stride).enumerate() {
            bits[row * stride..row * stride + self.stride].copy_from_slice(words);
        }
        self.member_bits = bits;
        self.stride = stride;
    }

    #[inline]
    fn is_member(&self, slot: u32, row: u32) -> bool {
        let word = self.member_bits[row as usize * self.stride + slot as usize / 64];
        word >> (slot % 64) & 1 == 1
    }

    #[inline]
    fn set_member(&mut self, slot: u32, row: u32, member: bool) {
        let word = &mut self.member_bits[row as usize * self.stride + slot as usize / 64];
        let bit = 1u64 << (slot % 64);
        if member {
            *word |= bit;
        } else {
            *word &= !bit;
        }
    }

    /// Where `slot` is (or would go) in `row`'s deadlines, searching from `from`
    /// on (every slot before `from` is smaller).
    fn find_track(&self, slot: u32, row: u32, from: usize) -> Result<usize, usize> {
        let list = &self.tracks[row as usize];
        let from = from.min(list.len());
        let rest = &list[from..];
        // Slots are dense integers, so a slot's place in a long sorted list is
        // well predicted by its value: probe there first and search outwards,
        // which touches one or two cache lines where a plain binary search over
        // a cold list touches one per halving.
        if rest.len() > 8 {
            let slots = self.slots.len().max(1);
            let guess = (rest.len() * slot as usize / slots).min(rest.len() - 1);
            let (lo, hi) = if rest[guess].slot < slot {
                let mut step = 1;
                while guess + step < rest.len() && rest[guess + step].slot < slot {
                    step *= 2;
                }
                (guess + step / 2 + 1, (guess + step + 1).min(rest.len()))
            } else {
                let mut step = 1;
                while step <= guess && rest[guess - step].slot >= slot {
                    step *= 2;
                }
                (guess.saturating_sub(step), guess + 1)
            };
            return rest[lo..hi]
                .binary_search_by_key(&slot, |t| t.slot)
                .map(|i| i + from + lo)
                .map_err(|i| i + from + lo);
        }
        rest.binary_search_by_key(&slot, |t| t.slot)
            .map(|i| i + from)
            .map_err(|i| i + from)
    }

    /// Sets the pending deadline of (slot, row); `NEVER_MS` clears it. A deadline
    /// earlier than the one on file goes on the wheel; a later one needs nothing
    /// (the earlier entry re-files itself when popped).
    fn set_deadline(&mut self, slot: u32, row: u32, deadline: i64) {
        let position = self.find_track(slot, row, 0);
        self.write_deadline(slot, row, position, deadline);
    }

    /// [`Self::set_deadline`] at a known position; returns where the search for
    /// a larger slot can start.
    fn write_deadline(
        &mut self,
        slot: u32,
        row: u32,
        position: Result<usize, usize>,
        deadline: i64,
    ) -> usize {
        let list = &mut self.tracks[row as usize];
        let old_deadline = position.map_or(NEVER_MS, |i| list[i].deadline);
        let next = match position {
            Ok(i) if deadline == NEVER_MS => {
                list.remove(i);
                i
            }
            Ok(i) => {
                list[i].deadline = deadline;
                i + 1
            }
            Err(i) if deadline == NEVER_MS => i,
            Err(i) => {
                list.insert(i, Track { slot, deadline });
                i + 1
            }
        };
        if deadline < old_deadline {
            self.wheel.push(DeadlineKey::new(slot, row), deadline);
        }
        next
    }

    /// Pops the segment pairs due at `now` into `pairs` (slot, row).
    fn pop_due(&mut self, now: Timestamp, pairs: &mut Vec<(u32, u32)>) {
        let mut due = Vec::new();
        let tracks = &mut self.tracks;
        let slots = &self.slots;
        self.wheel.pop(
            now,
            |key, at| {
                let (slot, row) = (key.target(), key.row());
                let list = &mut tracks[row as usize];
                let Ok(i) = list.binary_search_by_key(&slot, |t| t.slot) else {
                    return Verdict::Skip;
                };
                if slots[slot as usize].is_none() {
                    // The segment is gone: drop what it left behind.
                    list.remove(i);
                    return Verdict::Skip;
                }
                let verdict = judge(Some(list[i].deadline), at, now.0);
                if let Verdict::Due(_) = verdict {
                    list.remove(i);
                }
                verdict
            },
            &mut due,
        );
        pairs.extend(due.into_iter().map(|(key, _)| (key.target(), key.row())));
    }

    /// Re-evaluates one pair, updates membership and the deadline, emits a delta.
    /// `hint` is where in the customer's deadlines to start looking: callers that
    /// visit one customer's segments in increasing slot order pass the value
    /// returned by the previous call, so only the first lookup touches cold
    /// memory (otherwise pass 0).
    #[allow(clippy::too_many_arguments)]
    fn reevaluate(
        &mut self,
        slot: u32,
        ctx: &EvalContext<'_>,
        row: u32,
        now: Timestamp,
        cause: Cause,
        out: &mut Vec<Delta>,
        hint: usize,
    ) -> usize {
        let Some(seg) = self.slots[slot as usize].as_ref() else {
            return hint;
        };
        let (member, until) = seg.compiled.evaluate(ctx, row, now);
        let time_dependent = seg.compiled.time_dependent;
        let was = self.is_member(slot, row);
        if member != was {
            self.set_member(slot, row, member);
        }
        let seg = self.slots[slot as usize].as_mut().expect("checked above");
        debug_assert_eq!(was, seg.members.contains(row));
        if member != was {
            if member {
                seg.members.insert(row);
            } else {
                seg.members.remove(row);
            }
            out.push(Delta {
                segment: seg.id,
                customer: row,
                transition: if member {
                    Transition::Entered
                } else {
                    Transition::Exited
                },
                at: now,
                cause,
            });
        }
        if time_dependent {
            let position = self.find_track(slot, row, hint);
            self.write_deadline(slot, row, position, until.0)
        } else {
            hint
        }
    }

    fn register(&mut self, slot: u32, compiled: &CompiledRule, counter_ids: &[u32]) {
        for f in &compiled.fields {
            let list = match *f {
                FieldRef::Attr(a) => &mut self.by_attr[a as usize],
                FieldRef::Trait(t) => &mut self.by_trait[t as usize],
            };
            if !list.contains(&slot) {
                list.push(slot);
            }
        }
        for &c in counter_ids {
            let list = &mut self.by_counter[c as usize];
            if !list.contains(&slot) {
                list.push(slot);
            }
        }
    }

    fn unregister(&mut self, slot: u32) {
        for list in self
            .by_attr
            .iter_mut()
            .chain(self.by_trait.iter_mut())
            .chain(self.by_counter.iter_mut())
        {
            list.retain(|s| *s != slot);
        }
        self.empty_members.retain(|s| *s != slot);
    }
}

/// Remembers `messageId`s for at least the dedup window (two rotating sets).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Dedup {
    window: i64,
    current: FxHashSet<u128>,
    previous: FxHashSet<u128>,
    current_since: i64,
}

impl Dedup {
    fn first_sighting(&mut self, message_id: &str) -> bool {
        let h = xxhash_rust::xxh3::xxh3_128(message_id.as_bytes());
        !self.previous.contains(&h) && self.current.insert(h)
    }

    fn rotate(&mut self, now: Timestamp) {
        if self.current_since == i64::MIN {
            self.current_since = now.0;
        } else if now.0.saturating_sub(self.current_since) >= self.window {
            self.previous = std::mem::take(&mut self.current);
            self.current_since = now.0;
        }
    }
}

/// Replays `history` with each `messageId` once (the log may hold duplicates),
/// handing each event with its customer's row to `visit`; events of customers
/// the shard does not know are skipped.
fn replay_unique(
    history: &dyn EventHistory,
    customers: &FxHashMap<Box<str>, u32>,
    visit: &mut dyn FnMut(u32, &Event),
) -> Result<(), HistoryError> {
    let mut seen = FxHashSet::default();
    history.replay(&mut |event: &Event| {
        let Some(&row) = event.customer_key().and_then(|k| customers.get(k)) else {
            return;
        };
        if seen.insert(xxhash_rust::xxh3::xxh3_128(event.message_id.as_bytes())) {
            visit(row, event);
        }
    })
}

/// The result of an audience preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// Exact number of matching customers.
    pub count: u64,
    /// Dense ids of the first matching customers, in id order.
    pub sample: Vec<u32>,
}

/// What a customer looks like now.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerView {
    pub id: String,
    pub attributes: Vec<(String, AttrValue)>,
    pub computed: Vec<(String, AttrValue)>,
    pub segments: Vec<SegmentId>,
}

/// One tenant shard. See the module docs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shard {
    config: ShardConfig,
    now: Timestamp,
    state: State,
    segments: Segments,
    /// Deadlines of windowed computed traits (segments keep theirs in
    /// `Segments::tracks`).
    trait_deadlines: DeadlineIndex,
    dedup: Dedup,
    #[serde(skip)]
    due: Vec<(DeadlineKey, Timestamp)>,
    #[serde(skip)]
    changed_counters: Vec<u32>,
    #[serde(skip)]
    identify_fields: FieldCache,
}

/// The attribute of each top-level key of the previous identify, by position.
///
/// Identifies from one source, a CSV import above all, carry the same keys in
/// the same order (a JSON object's keys are sorted), and comparing a key with
/// the one remembered at its position costs less than hashing it into the
/// schema. An entry never goes stale: attribute ids are stable and a name never
/// leaves the schema (a type change keeps the id; the type is read from the
/// schema on every use).
#[derive(Debug, Clone, Default)]
struct FieldCache {
    /// `(name, attribute id)`; names are overwritten in place, so a source with
    /// other keys costs no allocation once the buffers have grown.
    fields: Vec<(String, u32)>,
}

impl FieldCache {
    /// Bound on the positions remembered.
    const MAX_FIELDS: usize = 256;

    fn find(&self, position: usize, name: &str) -> Option<u32> {
        self.fields
            .get(position)
            .filter(|(known, _)| known == name)
            .map(|(_, id)| *id)
    }

    fn remember(&mut self, position: usize, name: &str, id: u32) {
        if let Some((known, known_id)) = self.fields.get_mut(position) {
            known.clear();
            known.push_str(name);
            *known_id = id;
        } else if position == self.fields.len() && position < Self::MAX_FIELDS {
            self.fields.push((name.to_string(), id));
        }
    }
}

/// A snapshot could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("the snapshot is not readable: {0}")]
    Corrupt(String),
    #[error("the snapshot is of format {found}, this build reads {expected}")]
    Version { found: u32, expected: u32 },
    #[error("segment {0:?} of the snapshot no longer compiles: {1}")]
    Segment(SegmentId, RuleError),
}

/// Bumped whenever the snapshot layout changes.
const SNAPSHOT_FORMAT: u32 = 2;

impl Shard {
    /// A shard with the built-in computed traits and no customers. Settings out
    /// of range are clamped (see [`ShardConfig::validate`]).
    pub fn new(config: ShardConfig) -> Shard {
        let mut shard = Shard {
            config,
            now: Timestamp::MIN,
            state: State {
                schema: Schema::default(),
                attrs: Vec::new(),
                traits: Vec::new(),
                trait_by_name: FxHashMap::default(),
                counters: CounterStore::default(),
                by_event: FxHashMap::default(),
                any_event: Vec::new(),
                customers: FxHashMap::default(),
                external_ids: Vec::new(),
                removed: roaring::RoaringBitmap::new(),
            },
            segments: Segments::new(config.tick.millis().clamp(1, 1000)),
            trait_deadlines: DeadlineIndex::new(config.tick.millis().clamp(1, 1000)),
            dedup: Dedup {
                window: config.dedup_window.millis().max(1),
                current: FxHashSet::default(),
                previous: FxHashSet::default(),
                current_since: i64::MIN,
            },
            due: Vec::new(),
            changed_counters: Vec::new(),
            identify_fields: FieldCache::default(),
        };
        // Row 0: the customer with no events.
        shard.state.external_ids.push("".into());
        shard.segments.add_row();
        let no_history: &[Event] = &[];
        for def in ComputedTraitDef::builtins() {
            shard
                .declare_trait(def, &no_history)
                .expect("built-in traits are valid");
        }
        shard
    }

    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// The shard's clock: the latest `now` it was given.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    pub fn schema(&self) -> &Schema {
        &self.state.schema
    }

    /// Declares an attribute's type ahead of data.
    pub fn declare_field(&mut self, name: &str, ty: AttrType) -> Result<(), SchemaError> {
        if self.state.trait_by_name.contains_key(name) {
            return Err(SchemaError::Reserved(name.to_string()));
        }
        if self.state.schema.get(name).is_none() && self.state.schema.fields().len() >= MAX_FIELDS {
            return Err(SchemaError::TooMany(MAX_FIELDS));
        }
        self.ensure_field(name, ty, FieldOrigin::Declared)
            .map(|_| ())
    }

    fn ensure_field(
        &mut self,
        name: &str,
        ty: AttrType,
        origin: FieldOrigin,
    ) -> Result<u32, SchemaError> {
        let before = self.state.schema.fields().len();
        let id = self.state.schema.add(name, ty, origin)?;
        if self.state.schema.fields().len() > before {
            let mut column = AttributeColumn::new(ty);
            column.resize(self.state.rows());
            self.state.attrs.push(column);
            self.segments.by_attr.push(Vec::new());
        }
        Ok(id.0)
    }

    /// Number of customers.
    pub fn customer_count(&self) -> usize {
        self.state.rows() - 1 - self.state.removed.len() as usize
    }

    /// The external id of a dense id.
    pub fn customer_id(&self, row: u32) -> Option<&str> {
        (row != 0)
            .then(|| self.state.external_ids.get(row as usize))
            .flatten()
            .map(|s| &**s)
            .filter(|s| !s.is_empty())
    }

    /// The external ids of every live customer, in no particular order.
    pub fn customer_ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.state.customers.keys().map(|id| &**id)
    }

    /// The dense id of an external id.
    pub fn customer_row(&self, external_id: &str) -> Option<u32> {
        self.state.customers.get(external_id).copied()
    }

    fn row_for(&mut self, key: &str) -> (u32, bool) {
        if let Some(&row) = self.state.customers.get(key) {
            return (row, false);
        }
        let row = self.state.rows() as u32;
        self.state.customers.insert(key.into(), row);
        self.state.external_ids.push(key.into());
        self.segments.add_row();
        // Every column holds exactly one row per customer, so each grows by
        // one (push, not the general resize: this runs for every column of
        // every new customer).
        for column in &mut self.state.attrs {
            column.push_row();
            debug_assert_eq!(column.column.len(), self.state.external_ids.len());
        }
        for t in &mut self.state.traits {
            t.push_row();
            debug_assert_eq!(t.values.len(), self.state.external_ids.len());
        }
        (row, true)
    }

    /// Applies one event at `now` (after [`Self::advance_time`] to `now`), appending
    /// membership changes to `out`.
    pub fn apply(
        &mut self,
        event: &Event,
        now: Timestamp,
        out: &mut Vec<Delta>,
    ) -> Result<Applied, ApplyError> {
        let key = event.customer_key().ok_or(ApplyError::NoIdentity)?;
        if key.len() > MAX_ID_BYTES {
            return Err(ApplyError::IdTooLong);
        }
        if event.message_id.is_empty() {
            return Err(ApplyError::NoMessageId);
        }
        if event.message_id.len() > MAX_ID_BYTES {
            return Err(ApplyError::MessageIdTooLong);
        }
        if !event.timestamp.is_rfc3339_range() {
            return Err(ApplyError::TimestampOutOfRange(event.timestamp.0));
        }
        self.advance_time(now, out);
        let now = self.now;
        if !self.dedup.first_sighting(&event.message_id) {
            return Ok(Applied {
                duplicate: true,
                customer: self.customer_row(key).unwrap_or(0),
                rejected: Vec::new(),
            });
        }
        let (row, created) = self.row_for(key);
        let mut rejected = Vec::new();
        self.segments.begin();

        if let EventKind::Identify { traits } = &event.kind {
            self.write_traits(row, event.timestamp, "", traits, 0, &mut rejected);
        }
        let track = event.track_name();
        let properties = event.properties();
        let named = track.and_then(|name| self.state.by_event.get_mut(name).map(std::mem::take));
        let any = std::mem::take(&mut self.state.any_event);
        for &t in named.iter().flatten().chain(&any) {
            self.fold_trait(
                t,
                row,
                event.timestamp,
                track,
                properties,
                now,
                &mut rejected,
            );
        }
        if let Some(name) = track {
            let mut changed = std::mem::take(&mut self.changed_counters);
            self.state
                .counters
                .record(name, row, event.timestamp, properties, None, &mut changed);
            for &c in &changed {
                self.segments.mark_counter(c);
            }
            changed.clear();
            self.changed_counters = changed;
        }
        self.state.any_event = any;
        if let (Some(name), Some(subs)) = (track, named) {
            *self.state.by_event.get_mut(name).expect("taken above") = subs;
        }

        let ctx = self.state.ctx(None);
        if created {
            for i in 0..self.segments.empty_members.len() {
                let slot = self.segments.empty_members[i];
                if !self.segments.is_marked(slot) {
                    // Unchanged from the empty customer, whose answer never depends on time.
                    self.segments
                        .reevaluate(slot, &ctx, row, now, Cause::Event, out, 0);
                }
            }
        }
        self.segments.touched.sort_unstable();
        let mut hint = 0;
        for i in 0..self.segments.touched.len() {
            let slot = self.segments.touched[i];
            hint = self
                .segments
                .reevaluate(slot, &ctx, row, now, Cause::Event, out, hint);
        }
        Ok(Applied {
            duplicate: false,
            customer: row,
            rejected,
        })
    }

    fn write_traits(
        &mut self,
        row: u32,
        at: Timestamp,
        prefix: &str,
        traits: &Map<String, Json>,
        depth: usize,
        rejected: &mut Vec<Rejection>,
    ) {
        for (position, (key, value)) in traits.iter().enumerate() {
            // Top-level keys, nearly all of them, are used as they are.
            let name: Cow<'_, str> = if prefix.is_empty() {
                Cow::Borrowed(key)
            } else {
                Cow::Owned(format!("{prefix}.{key}"))
            };
            let name = &*name;
            let reject = |reason: String| Rejection {
                field: name.to_string(),
                reason,
            };
            if let Json::Object(inner) = value {
                if depth + 1 >= MAX_TRAIT_NESTING {
                    rejected.push(reject(format!(
                        "objects nested deeper than {MAX_TRAIT_NESTING} levels are not stored"
                    )));
                } else {
                    self.write_traits(row, at, name, inner, depth + 1, rejected);
                }
                continue;
            }
            let cached = if depth == 0 {
                self.identify_fields.find(position, name)
            } else {
                None
            };
            // An attribute is never also a computed trait (see `State`), so
            // only a name the schema lacks needs the computed-trait check.
            let found = cached.or_else(|| self.state.schema.get(name).map(|(id, _)| id.0));
            let id = match found {
                Some(id) => {
                    debug_assert_eq!(self.state.schema.get(name).map(|(id, _)| id.0), Some(id));
                    debug_assert!(!self.state.trait_by_name.contains_key(name));
                    id
                }
                None => {
                    if self.state.trait_by_name.contains_key(name) {
                        rejected.push(reject(format!(
                            "`{name}` is a computed trait and cannot be set"
                        )));
                        continue;
                    }
                    if value.is_null() {
                        continue;
                    }
                    let Some(ty) = AttrValue::infer_type(value) else {
                        rejected.push(reject(format!(
                            "{value} cannot be stored: use a string, number, boolean, RFC 3339 time or list of strings"
                        )));
                        continue;
                    };
                    if self.state.schema.fields().len() >= MAX_FIELDS {
                        rejected.push(reject(format!(
                            "the tenant has {MAX_FIELDS} fields already"
                        )));
                        continue;
                    }
                    match self.ensure_field(name, ty, FieldOrigin::Inferred) {
                        Ok(id) => id,
                        Err(e) => {
                            rejected.push(reject(e.to_string()));
                            continue;
                        }
                    }
                }
            };
            if depth == 0 && cached.is_none() {
                self.identify_fields.remember(position, name, id);
            }
            let ty = self.state.schema.field(crate::model::AttrId(id)).ty;
            let column = &mut self.state.attrs[id as usize];
            let changed = match (ty, value) {
                // What `AttrValue::from_json_as` would give, borrowed instead
                // of copied.
                (AttrType::String, Json::String(s)) => column.write_str(row, at, s),
                _ => {
                    let typed = if value.is_null() {
                        None
                    } else {
                        match AttrValue::from_json_as(value, ty) {
                            Some(v) => Some(v),
                            None => {
                                rejected.push(reject(format!("`{name}` is {ty}, got {value}")));
                                continue;
                            }
                        }
                    };
                    column.write(row, at, typed.as_ref())
                }
            };
            if changed {
                self.segments.mark_dep(FieldRef::Attr(id));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fold_trait(
        &mut self,
        t: u32,
        row: u32,
        timestamp: Timestamp,
        track: Option<&str>,
        properties: Option<&Map<String, Json>>,
        now: Timestamp,
        rejected: &mut Vec<Rejection>,
    ) {
        let computed = &mut self.state.traits[t as usize];
        match computed.fold(row, timestamp, track, properties, now) {
            Ok(Some((changed, next))) => {
                if computed.is_windowed() {
                    self.trait_deadlines
                        .schedule(DeadlineKey::new(t, row), next);
                }
                if changed {
                    self.segments.mark_dep(FieldRef::Trait(t));
                }
            }
            Ok(None) => {}
            Err(reason) => rejected.push(Rejection {
                field: computed.def.of.join("|"),
                reason,
            }),
        }
    }

    /// Moves the shard's clock to `now` (never backwards) and re-evaluates what is
    /// due, appending the changes to `out`.
    pub fn advance_time(&mut self, now: Timestamp, out: &mut Vec<Delta>) {
        if now <= self.now {
            return;
        }
        self.now = now;
        self.dedup.rotate(now);
        let mut due = std::mem::take(&mut self.due);
        self.trait_deadlines.pop_due(now, &mut due);
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        // Windowed traits first, so that segments re-evaluated below read them
        // as of `now`.
        for &(key, _) in &due {
            let t = key.target();
            let (changed, next) = self.state.traits[t as usize].refresh(key.row(), now);
            self.trait_deadlines.schedule(key, next);
            if changed {
                pairs.extend(
                    self.segments.by_trait[t as usize]
                        .iter()
                        .map(|s| (*s, key.row())),
                );
            }
        }
        due.clear();
        self.due = due;
        self.segments.pop_due(now, &mut pairs);
        if pairs.is_empty() {
            return;
        }
        if !self.state.removed.is_empty() {
            let removed = &self.state.removed;
            pairs.retain(|(_, row)| !removed.contains(*row));
        }
        pairs.sort_unstable_by_key(|(slot, row)| (*row, *slot));
        pairs.dedup();
        let ctx = self.state.ctx(None);
        let (mut hint, mut last_row) = (0, u32::MAX);
        for (slot, row) in pairs {
            if row != last_row {
                (hint, last_row) = (0, row);
            }
            hint = self
                .segments
                .reevaluate(slot, &ctx, row, now, Cause::Time, out, hint);
        }
    }

    /// The earliest instant at which [`Self::advance_time`] has work to do: never
    /// later than the true next deadline, and never a tick boundary already
    /// passed while nothing is due, so a runtime can sleep until it.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let tracks = &self.segments.tracks;
        let segments = self.segments.wheel.next_due(|key| {
            let list = &tracks[key.row() as usize];
            list.binary_search_by_key(&key.target(), |t| t.slot)
                .ok()
                .map(|i| list[i].deadline)
        });
        match (self.trait_deadlines.next_due(), segments) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Declares a computed trait and fills it from `history` (every event applied
    /// so far).
    ///
    /// Returns how many history events carried the aggregated property with a
    /// value of the wrong type (they are not counted, as they would not be live).
    pub fn declare_trait(
        &mut self,
        def: ComputedTraitDef,
        history: &dyn EventHistory,
    ) -> Result<usize, TraitError> {
        if self.state.trait_by_name.contains_key(&def.name)
            || self.state.schema.get(&def.name).is_some()
        {
            return Err(TraitError::NameTaken(def.name));
        }
        if let Some(filter) = &def.filter {
            check_property_filter(filter).map_err(TraitError::Filter)?;
        }
        let computed = ComputedTrait::new(def, self.state.rows())?;
        let t = self.state.traits.len() as u32;
        self.state
            .trait_by_name
            .insert(computed.def.name.clone(), t);
        match &computed.def.event {
            Some(name) => self.state.by_event.entry(name.clone()).or_default().push(t),
            None => self.state.any_event.push(t),
        }
        self.state.traits.push(computed);
        self.segments.by_trait.push(Vec::new());
        // Fill it from history into a detached copy of the trait, so that a
        // failing history leaves the shard as it was.
        let now = self.now;
        let mut filled = self.state.traits[t as usize].clone();
        let mut deadlines = Vec::new();
        let mut wrong_type = 0;
        let result = replay_unique(
            history,
            &self.state.customers,
            &mut |row, event| match filled.fold(
                row,
                event.timestamp,
                event.track_name(),
                event.properties(),
                now,
            ) {
                Ok(Some((_, next))) if filled.is_windowed() => deadlines.push((row, next)),
                Ok(_) => {}
                Err(_) => wrong_type += 1,
            },
        );
        if let Err(e) = result {
            let computed = self.state.traits.pop().expect("pushed above");
            self.segments.by_trait.pop();
            self.state.trait_by_name.remove(&computed.def.name);
            match &computed.def.event {
                Some(name) => {
                    if let Some(subs) = self.state.by_event.get_mut(name) {
                        subs.retain(|x| *x != t);
                    }
                }
                None => self.state.any_event.retain(|x| *x != t),
            }
            return Err(e.into());
        }
        self.state.traits[t as usize] = filled;
        for (row, next) in deadlines {
            self.trait_deadlines
                .schedule(DeadlineKey::new(t, row), next);
        }
        Ok(wrong_type)
    }

    /// Finds or creates the counters a rule needs; new ones are filled from
    /// `history`. Returns their ids, in the rule's order.
    fn acquire_counters(
        &mut self,
        specs: &[CounterSpec],
        history: &dyn EventHistory,
    ) -> Result<Vec<u32>, HistoryError> {
        let mut ids = Vec::with_capacity(specs.len());
        let mut fresh = Vec::new();
        for spec in specs {
            let (id, is_new) = self.state.counters.acquire(spec);
            if is_new {
                fresh.push(id);
            }
            ids.push(id);
        }
        let count = self.state.counters.id_count();
        if self.segments.by_counter.len() < count {
            self.segments.by_counter.resize(count, Vec::new());
        }
        if !fresh.is_empty() {
            let mut changed = Vec::new();
            let state = &mut self.state;
            let result = replay_unique(history, &state.customers, &mut |row, event| {
                if let Some(name) = event.track_name() {
                    state.counters.record(
                        name,
                        row,
                        event.timestamp,
                        event.properties(),
                        Some(&fresh),
                        &mut changed,
                    );
                    changed.clear();
                }
            });
            if let Err(e) = result {
                self.release_counters(&ids);
                return Err(e);
            }
        }
        Ok(ids)
    }

    fn release_counters(&mut self, ids: &[u32]) {
        for &id in ids {
            self.state.counters.release(id);
        }
    }

    fn compile_linked(
        &mut self,
        rule: &Rule,
        history: &dyn EventHistory,
    ) -> Result<(CompiledRule, Vec<u32>), SegmentError> {
        let mut compiled = compile(rule, &self.state)?;
        let ids = self.acquire_counters(&compiled.counters, history)?;
        compiled.link(&ids);
        Ok((compiled, ids))
    }

    /// Evaluates a compiled rule for every customer: the members, and each
    /// customer's `valid_until`.
    fn evaluate_all(
        &self,
        compiled: &CompiledRule,
    ) -> (roaring::RoaringBitmap, Vec<(u32, Timestamp)>, bool) {
        if compiled.time_dependent {
            return self.evaluate_rows(compiled);
        }
        // No deadlines to collect: the columnar scan finds the members, in row
        // order.
        let ctx = self.state.ctx(None);
        let empty_member = compiled.evaluate(&ctx, 0, self.now).0;
        let all = crate::preview::scan(compiled, &ctx, self.state.rows(), self.now, usize::MAX);
        let mut members = roaring::RoaringBitmap::from_sorted_iter(all.sample)
            .expect("the scan yields rows in increasing order");
        members -= &self.state.removed;
        (members, Vec::new(), empty_member)
    }

    /// [`Self::evaluate_all`] one row at a time with the row evaluator: the
    /// reference the columnar scan is checked against.
    fn evaluate_rows(
        &self,
        compiled: &CompiledRule,
    ) -> (roaring::RoaringBitmap, Vec<(u32, Timestamp)>, bool) {
        let ctx = self.state.ctx(None);
        let empty_member = compiled.evaluate(&ctx, 0, self.now).0;
        let mut members = roaring::RoaringBitmap::new();
        let mut deadlines = Vec::new();
        for row in 1..self.state.rows() as u32 {
            if self.state.removed.contains(row) {
                continue;
            }
            let (member, until) = compiled.evaluate(&ctx, row, self.now);
            if member {
                members.insert(row);
            }
            if until != Timestamp::NEVER {
                deadlines.push((row, until));
            }
        }
        (members, deadlines, empty_member)
    }

    /// Adds a segment and fills its membership from current state. Every initial
    /// member is reported as an `Entered` delta with cause `Backfill`.
    pub fn add_segment(
        &mut self,
        id: SegmentId,
        rule: Rule,
        history: &dyn EventHistory,
        out: &mut Vec<Delta>,
    ) -> Result<(), SegmentError> {
        if self.segments.by_id.contains_key(&id) {
            return Err(SegmentError::Exists(id));
        }
        let (compiled, counter_ids) = self.compile_linked(&rule, history)?;
        let (members, deadlines, empty_member) = self.evaluate_all(&compiled);
        // Reuse a removed segment's slot: its membership bits were cleared on
        // removal, and a deadline it left behind only causes one harmless
        // re-evaluation of the new segment.
        let slot = self
            .segments
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.segments.slots.len()) as u32;
        self.segments.ensure_slot(slot);
        for row in &members {
            self.segments.set_member(slot, row, true);
        }
        for (row, until) in deadlines {
            self.segments.set_deadline(slot, row, until.0);
        }
        out.extend(members.iter().map(|row| Delta {
            segment: id,
            customer: row,
            transition: Transition::Entered,
            at: self.now,
            cause: Cause::Backfill,
        }));
        self.segments.register(slot, &compiled, &counter_ids);
        if empty_member {
            self.segments.empty_members.push(slot);
        }
        let entry = Some(SegmentSlot {
            id,
            rule,
            compiled,
            counter_ids,
            members,
            version: 1,
        });
        if (slot as usize) < self.segments.slots.len() {
            self.segments.slots[slot as usize] = entry;
        } else {
            self.segments.slots.push(entry);
            self.segments.marks.push(0);
        }
        self.segments.by_id.insert(id, slot);
        Ok(())
    }

    /// Replaces a segment's rule. Only customers whose membership actually changes
    /// get a delta (cause `RuleChange`). Returns the new version.
    pub fn update_segment(
        &mut self,
        id: SegmentId,
        rule: Rule,
        history: &dyn EventHistory,
        out: &mut Vec<Delta>,
    ) -> Result<u64, SegmentError> {
        let slot = *self
            .segments
            .by_id
            .get(&id)
            .ok_or(SegmentError::Unknown(id))?;
        let (compiled, counter_ids) = self.compile_linked(&rule, history)?;
        let (old_counters, version) = self.reinstall(slot, rule, compiled, counter_ids, true, out);
        self.release_counters(&old_counters);
        Ok(version)
    }

    /// Puts a newly compiled rule of an existing segment in place: every
    /// customer is re-evaluated, those whose membership changes get a delta
    /// (cause `RuleChange`), and the dependency index follows the new rule.
    /// Returns the counters the old rule held, for the caller to release once
    /// the new rule holds its own, and the segment's version (the next one
    /// when `bump_version`).
    fn reinstall(
        &mut self,
        slot: u32,
        rule: Rule,
        compiled: CompiledRule,
        counter_ids: Vec<u32>,
        bump_version: bool,
        out: &mut Vec<Delta>,
    ) -> (Vec<u32>, u64) {
        let (members, deadlines, empty_member) = self.evaluate_all(&compiled);
        let old = self.segments.slots[slot as usize]
            .take()
            .expect("indexed slots are occupied");
        let id = old.id;
        // Pairs the new rule gives no deadline keep a stale one, which fires once
        // and re-evaluates to the same answer.
        for (row, until) in deadlines {
            self.segments.set_deadline(slot, row, until.0);
        }
        for row in &members - &old.members {
            self.segments.set_member(slot, row, true);
            out.push(Delta {
                segment: id,
                customer: row,
                transition: Transition::Entered,
                at: self.now,
                cause: Cause::RuleChange,
            });
        }
        for row in &old.members - &members {
            self.segments.set_member(slot, row, false);
            out.push(Delta {
                segment: id,
                customer: row,
                transition: Transition::Exited,
                at: self.now,
                cause: Cause::RuleChange,
            });
        }
        self.segments.unregister(slot);
        self.segments.register(slot, &compiled, &counter_ids);
        if empty_member {
            self.segments.empty_members.push(slot);
        }
        let version = old.version + u64::from(bump_version);
        self.segments.slots[slot as usize] = Some(SegmentSlot {
            id,
            rule,
            compiled,
            counter_ids,
            members,
            version,
        });
        (old.counter_ids, version)
    }

    /// Removes a segment.
    pub fn remove_segment(&mut self, id: SegmentId) -> Result<(), SegmentError> {
        let slot = self
            .segments
            .by_id
            .remove(&id)
            .ok_or(SegmentError::Unknown(id))?;
        let old = self.segments.slots[slot as usize]
            .take()
            .expect("indexed slots are occupied");
        self.segments.unregister(slot);
        self.release_counters(&old.counter_ids);
        // Pending deadlines are dropped when they pop (the slot is empty by then).
        for row in &old.members {
            self.segments.set_member(slot, row, false);
        }
        Ok(())
    }

    /// The segment's current members (dense ids).
    pub fn members(&self, id: SegmentId) -> Option<&roaring::RoaringBitmap> {
        let slot = *self.segments.by_id.get(&id)?;
        self.segments.slots[slot as usize]
            .as_ref()
            .map(|s| &s.members)
    }

    /// The segment's rule and version.
    pub fn segment_rule(&self, id: SegmentId) -> Option<(&Rule, u64)> {
        let slot = *self.segments.by_id.get(&id)?;
        self.segments.slots[slot as usize]
            .as_ref()
            .map(|s| (&s.rule, s.version))
    }

    pub fn segment_ids(&self) -> impl Iterator<Item = SegmentId> + '_ {
        self.segments.slots.iter().flatten().map(|s| s.id)
    }

    /// Evaluates a segment's rule over every customer at the shard's `now`, one
    /// row at a time, ignoring all incremental bookkeeping and the columnar
    /// scan: what membership must equal.
    pub fn evaluate_from_scratch(&self, id: SegmentId) -> Option<roaring::RoaringBitmap> {
        let slot = *self.segments.by_id.get(&id)?;
        let seg = self.segments.slots[slot as usize].as_ref()?;
        Some(self.evaluate_rows(&seg.compiled).0)
    }

    /// Removes a customer, as when an anonymous profile is merged into a known
    /// one: it leaves every segment it was in (an `Exited` delta with cause
    /// `Removed` each), its pending deadlines are dropped, and its row is never
    /// evaluated again. A later event with the same id starts a new profile.
    /// Returns whether the customer existed.
    ///
    /// The row's storage is not reused (a removed customer costs its columns'
    /// bytes until the shard is rebuilt); its external id and state stay until
    /// [`Self::purge_removed`], so that [`Self::customer_id`] can name it in
    /// the exits.
    pub fn remove_customer(&mut self, external_id: &str, out: &mut Vec<Delta>) -> bool {
        let Some(row) = self.state.customers.remove(external_id) else {
            return false;
        };
        debug_assert!(row != 0, "row 0 is the customer with no events");
        for slot in 0..self.segments.slots.len() as u32 {
            if !self.segments.is_member(slot, row) {
                continue;
            }
            self.segments.set_member(slot, row, false);
            if let Some(seg) = self.segments.slots[slot as usize].as_mut() {
                seg.members.remove(row);
                out.push(Delta {
                    segment: seg.id,
                    customer: row,
                    transition: Transition::Exited,
                    at: self.now,
                    cause: Cause::Removed,
                });
            }
        }
        self.segments.tracks[row as usize].clear();
        self.state.removed.insert(row);
        true
    }

    /// Erases what is left of a customer [`Self::remove_customer`] removed, for
    /// a request to be forgotten: every attribute value and its write time,
    /// every computed trait value and state, its event counters, pending
    /// deadlines and external id. Afterwards [`Self::customer_id`] of the row
    /// is `None`, and no [`Self::snapshot`] holds anything of the customer:
    /// strings only it held leave their column's dictionary too.
    ///
    /// The runtime calls it after turning the removal's exits into webhooks,
    /// which read the external id. A row that is not removed (or already
    /// purged) is left alone. Costs a pass over each string column whose value
    /// was unique to the customer. Remembered `messageId`s are hashes of the
    /// events' ids and stay until the dedup window forgets them.
    pub fn purge_removed(&mut self, row: u32) {
        if row == 0 || !self.state.removed.contains(row) {
            return;
        }
        debug_assert!(
            self.state
                .customers
                .get(&self.state.external_ids[row as usize])
                .is_none_or(|r| *r != row),
            "a removed row is not indexed"
        );
        for column in &mut self.state.attrs {
            column.purge_row(row);
        }
        for (t, computed) in self.state.traits.iter_mut().enumerate() {
            computed.purge_row(row);
            if computed.is_windowed() {
                self.trait_deadlines
                    .schedule(DeadlineKey::new(t as u32, row), Timestamp::NEVER);
            }
        }
        self.state.counters.forget_row(row);
        self.segments.tracks[row as usize].clear();
        self.state.external_ids[row as usize] = "".into();
    }

    /// Customers in any of `include_any` (all customers when empty), in all of
    /// `include_all`, and in none of `exclude`.
    pub fn audience(
        &self,
        include_any: &[SegmentId],
        include_all: &[SegmentId],
        exclude: &[SegmentId],
    ) -> Result<roaring::RoaringBitmap, SegmentError> {
        let get = |id: &SegmentId| self.members(*id).ok_or(SegmentError::Unknown(*id));
        let mut result = if include_any.is_empty() {
            let mut all = roaring::RoaringBitmap::new();
            all.insert_range(1..self.state.rows() as u32);
            all -= &self.state.removed;
            all
        } else {
            let mut any = roaring::RoaringBitmap::new();
            for id in include_any {
                any |= get(id)?;
            }
            any
        };
        for id in include_all {
            result &= get(id)?;
        }
        for id in exclude {
            result -= get(id)?;
        }
        Ok(result)
    }

    /// Evaluates an ad-hoc rule over all customers at the shard's `now` without
    /// creating a segment: the exact count and the first `sample` matching ids.
    /// `performed` conditions no segment uses yet are counted from `history`.
    pub fn preview(
        &self,
        rule: &Rule,
        sample: usize,
        history: &dyn EventHistory,
    ) -> Result<Preview, SegmentError> {
        let (compiled, extra) = self.compile_adhoc(rule, history)?;
        let ctx = self.state.ctx(Some(&extra));
        let removed = &self.state.removed;
        let wanted = sample.saturating_add(removed.len() as usize);
        let mut preview =
            crate::preview::scan(&compiled, &ctx, self.state.rows(), self.now, wanted);
        if !removed.is_empty() {
            let matching_removed = removed
                .iter()
                .filter(|row| compiled.evaluate(&ctx, *row, self.now).0)
                .count() as u64;
            preview.count = preview.count.saturating_sub(matching_removed);
            preview.sample.retain(|row| !removed.contains(*row));
        }
        preview.sample.truncate(sample);
        Ok(preview)
    }

    /// Compiles a rule that is not a segment's (a preview, a listing filter)
    /// without touching the shard: counters no segment keeps are built from
    /// `history` into a store of their own, to evaluate with
    /// `self.state.ctx(Some(&extra))`.
    fn compile_adhoc(
        &self,
        rule: &Rule,
        history: &dyn EventHistory,
    ) -> Result<(CompiledRule, CounterStore), SegmentError> {
        let mut compiled = compile(rule, &self.state)?;
        let base = self.state.counters.id_count() as u32;
        let mut ids = Vec::with_capacity(compiled.counters.len());
        let mut extra = CounterStore::default();
        let mut fresh = Vec::new();
        for spec in &compiled.counters {
            match self.state.counters.find(spec) {
                Some(id) => ids.push(id),
                None => {
                    let (id, is_new) = extra.acquire(spec);
                    if is_new {
                        fresh.push(id);
                    }
                    ids.push(base + id);
                }
            }
        }
        if !fresh.is_empty() {
            let mut changed = Vec::new();
            replay_unique(history, &self.state.customers, &mut |row, event| {
                if let Some(name) = event.track_name() {
                    extra.record(
                        name,
                        row,
                        event.timestamp,
                        event.properties(),
                        None,
                        &mut changed,
                    );
                    changed.clear();
                }
            })?;
        }
        compiled.link(&ids);
        Ok((compiled, extra))
    }

    /// The customer's attributes, computed traits and segments.
    pub fn customer(&self, external_id: &str) -> Option<CustomerView> {
        let row = self.customer_row(external_id)?;
        let attributes = self
            .state
            .schema
            .fields()
            .iter()
            .zip(&self.state.attrs)
            .filter_map(|(f, c)| c.column.get(row).map(|v| (f.name.clone(), v)))
            .collect();
        let computed = self
            .state
            .traits
            .iter()
            .filter_map(|t| t.values.get(row).map(|v| (t.def.name.clone(), v)))
            .collect();
        let segments = (0..self.segments.slots.len() as u32)
            .filter(|slot| self.segments.is_member(*slot, row))
            .filter_map(|slot| self.segments.slots[slot as usize].as_ref())
            .map(|s| s.id)
            .collect();
        Some(CustomerView {
            id: external_id.to_string(),
            attributes,
            computed,
            segments,
        })
    }

    /// An estimate of the heap this shard uses, in bytes.
    pub fn heap_bytes(&self) -> usize {
        let s = &self.state;
        let attrs: usize = s
            .attrs
            .iter()
            .map(|a| a.column.heap_bytes() + a.written_at.capacity() * 8)
            .sum();
        let traits: usize = s.traits.iter().map(|t| t.heap_bytes()).sum();
        let counters = s.counters.heap_bytes();
        let ids: usize = s.external_ids.iter().map(|e| 2 * e.len()).sum::<usize>()
            + s.external_ids.capacity() * 16
            + s.customers.capacity() * 21;
        let members: usize = self
            .segments
            .slots
            .iter()
            .flatten()
            .map(|seg| seg.members.serialized_size())
            .sum();
        let member_index: usize = self
            .segments
            .tracks
            .iter()
            .map(|l| {
                std::mem::size_of_val(l)
                    + if l.spilled() {
                        l.capacity() * std::mem::size_of::<Track>()
                    } else {
                        0
                    }
            })
            .sum::<usize>()
            + self.segments.member_bits.capacity() * 8
            + self.segments.wheel.heap_bytes();
        let dedup = (self.dedup.current.capacity() + self.dedup.previous.capacity()) * 17;
        attrs
            + traits
            + counters
            + ids
            + members
            + member_index
            + dedup
            + self.trait_deadlines.heap_bytes()
    }

    /// The whole shard as bytes: customer state, segments and memberships,
    /// pending deadlines and remembered message ids. With the log offset it
    /// was taken at, it is a recovery point: restore it, then replay the log
    /// from that offset (message-id dedup absorbs any overlap).
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut bytes = SNAPSHOT_FORMAT.to_be_bytes().to_vec();
        postcard::to_io(self, &mut bytes).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        Ok(bytes)
    }

    /// A shard from [`Self::snapshot`]'s bytes; compiled rules are rebuilt.
    pub fn restore(bytes: &[u8]) -> Result<Shard, SnapshotError> {
        let (format, body) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| SnapshotError::Corrupt("shorter than its header".into()))?;
        let found = u32::from_be_bytes(*format);
        if found != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Version {
                found,
                expected: SNAPSHOT_FORMAT,
            });
        }
        let mut shard: Shard =
            postcard::from_bytes(body).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        for slot in shard.segments.slots.iter_mut().flatten() {
            let mut compiled = compile(&slot.rule, &shard.state)
                .map_err(|e| SnapshotError::Segment(slot.id, e))?;
            if compiled.counters.len() != slot.counter_ids.len() {
                return Err(SnapshotError::Corrupt(format!(
                    "segment {:?} lists {} counters, its rule needs {}",
                    slot.id,
                    slot.counter_ids.len(),
                    compiled.counters.len()
                )));
            }
            compiled.link(&slot.counter_ids);
            slot.compiled = compiled;
        }
        Ok(shard)
    }

    /// Forgets every message id remembered for deduplication (benchmarks that
    /// replay the same events use it; a runtime never should).
    pub fn forget_message_ids(&mut self) {
        self.dedup.current.clear();
        self.dedup.previous.clear();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::rule::dsl;
    use crate::time::DAY;
    use crate::traits::Aggregate;

    const T0: i64 = 1_767_225_600_000;

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    /// Identifies whose keys shift position from one to the next, a field
    /// whose type changes between them and a computed trait's name: every
    /// value lands in its own field, typed as the schema says at that moment.
    #[test]
    fn identifies_with_shifting_keys_store_each_value_in_its_own_field() {
        let mut shard = Shard::new(Default::default());
        let identify = |shard: &mut Shard, n: i64, traits: Json| {
            let at = Timestamp(T0 + n);
            let event = Event::identify(format!("m{n}"), "ada", at, traits);
            shard.apply(&event, at, &mut Vec::new()).unwrap().rejected
        };
        let attributes = |shard: &Shard| shard.customer("ada").unwrap().attributes;
        let number = |x: f64| AttrValue::Number(x);
        let text = |s: &str| AttrValue::String(s.to_string());

        assert!(identify(&mut shard, 1, json!({"a": 1, "b": "x", "c": 3})).is_empty());
        assert!(identify(&mut shard, 2, json!({"a": 2, "c": 4, "d": "y"})).is_empty());
        assert!(identify(&mut shard, 3, json!({"b": "z", "d": "w"})).is_empty());
        let mut got = attributes(&shard);
        got.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            got,
            [
                ("a".to_string(), number(2.0)),
                ("b".to_string(), text("z")),
                ("c".to_string(), number(4.0)),
                ("d".to_string(), text("w")),
            ]
        );

        // `a` becomes a string: the next identify must be checked against it.
        shard
            .change_field_type("a", AttrType::String, &mut Vec::new())
            .unwrap();
        let rejected = identify(&mut shard, 4, json!({"a": 5, "b": "v"}));
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].field, "a");
        assert!(identify(&mut shard, 5, json!({"a": "five", "b": "u"})).is_empty());
        // A computed trait's name at a position an attribute held before.
        let rejected = identify(&mut shard, 6, json!({"first_seen": 1, "b": "t"}));
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].field, "first_seen");
        let got = attributes(&shard);
        assert!(got.contains(&("a".to_string(), text("five"))), "{got:?}");
        assert!(got.contains(&("b".to_string(), text("t"))), "{got:?}");
    }

    /// What a customer leaves behind, in every kind of state the shard keeps.
    const TRACES: [&str; 5] = [
        "ada-7f3e91",
        "ada.lovelace@analytical.example",
        "Zyxwvut",
        "quux-tag-9931",
        "kaypro-device-5517",
    ];

    fn shard_with_ada_and_bob() -> (Shard, Vec<Event>) {
        let mut shard = Shard::new(Default::default());
        let mut history = Vec::new();
        let trait_def = |name: &str, event: &str, aggregate, of: &str| ComputedTraitDef {
            name: name.into(),
            event: Some(event.into()),
            aggregate,
            of: vec![of.into()],
            filter: None,
            window: None,
            value_type: None,
        };
        // A string trait (its own dictionary) and a windowed one (deadlines).
        let first_device = ComputedTraitDef {
            value_type: Some(AttrType::String),
            ..trait_def("first_device", "Login", Aggregate::First, "device")
        };
        let spend_7d = ComputedTraitDef {
            window: Some(Duration::from_days(7)),
            ..trait_def("spend_7d", "Order Completed", Aggregate::Sum, "revenue")
        };
        for def in [first_device, spend_7d] {
            shard.declare_trait(def, &history).unwrap();
        }
        shard.declare_field("email", AttrType::String).unwrap();
        let mut deltas = Vec::new();
        for (id, rule) in [
            (1, "total_spend > 10"),
            (2, r#"performed "Order Completed" within 7d"#),
            (3, "email exists"),
            (4, "spend_7d > 0"),
        ] {
            let rule = dsl::parse(rule).unwrap();
            shard
                .add_segment(SegmentId(id), rule, &history, &mut deltas)
                .unwrap();
        }
        let at = Timestamp(T0);
        let events = [
            Event::identify(
                "i1",
                TRACES[0],
                at,
                json!({"email": TRACES[1], "name": format!("Ada {}", TRACES[2]),
                       "tags": [TRACES[3], "shared"], "plan": "pro"}),
            ),
            Event::track(
                "o1",
                TRACES[0],
                at,
                "Order Completed",
                json!({"revenue": 40}),
            ),
            Event::track("l1", TRACES[0], at, "Login", json!({"device": TRACES[4]})),
            Event::identify(
                "i2",
                "bob",
                at,
                json!({"email": "bob@example.com", "name": "Bob", "tags": ["shared"], "plan": "pro"}),
            ),
            Event::track("o2", "bob", at, "Order Completed", json!({"revenue": 25})),
            Event::track("l2", "bob", at, "Login", json!({"device": "ios"})),
        ];
        for event in events {
            shard.apply(&event, at, &mut deltas).unwrap();
            history.push(event);
        }
        (shard, history)
    }

    #[test]
    fn a_purged_customer_leaves_nothing_in_a_snapshot() {
        let (mut shard, _) = shard_with_ada_and_bob();
        let before = shard.snapshot().unwrap();
        for trace in TRACES {
            assert!(contains(&before, trace), "the test looks for {trace}");
        }
        let bob_before = shard.customer("bob").unwrap();
        let row = shard.customer_row(TRACES[0]).unwrap();

        let mut deltas = Vec::new();
        assert!(shard.remove_customer(TRACES[0], &mut deltas));
        assert_eq!(deltas.len(), 4, "ada was in every segment: {deltas:?}");
        // The runtime names the exits before it purges.
        assert_eq!(shard.customer_id(row), Some(TRACES[0]));
        shard.purge_removed(row);
        assert_eq!(shard.customer_id(row), None);
        assert!(shard.customer(TRACES[0]).is_none());

        let after = shard.snapshot().unwrap();
        for trace in TRACES {
            assert!(!contains(&after, trace), "{trace} is still in the snapshot");
        }
        // Everyone else is as they were, in state and in segments.
        let restored = Shard::restore(&after).unwrap();
        for shard in [&shard, &restored] {
            assert_eq!(shard.customer("bob").unwrap(), bob_before);
            assert_eq!(shard.customer_count(), 1);
            for id in shard.segment_ids() {
                let bob = shard.customer_row("bob").unwrap();
                assert_eq!(
                    shard.members(id).unwrap().iter().collect::<Vec<_>>(),
                    [bob],
                    "{id:?}"
                );
                assert_eq!(shard.members(id).cloned(), shard.evaluate_from_scratch(id));
            }
            assert_eq!(
                shard.string_values("email"),
                [("bob@example.com".to_string(), "bob".to_string())]
            );
        }

        // Time passes over the purged customer's old deadlines quietly.
        deltas.clear();
        shard.advance_time(Timestamp(T0 + 8 * DAY), &mut deltas);
        assert!(deltas.iter().all(|d| d.customer != row), "{deltas:?}");
        shard.purge_removed(row);

        // The same id later starts from nothing.
        let later = Timestamp(T0 + 9 * DAY);
        let order = Event::track(
            "o9",
            TRACES[0],
            later,
            "Order Completed",
            json!({"revenue": 5}),
        );
        let applied = shard.apply(&order, later, &mut deltas).unwrap();
        assert_ne!(applied.customer, row);
        let view = shard.customer(TRACES[0]).unwrap();
        assert!(view.attributes.is_empty(), "{:?}", view.attributes);
        let computed = |name: &str| {
            view.computed
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(computed("total_spend"), Some(AttrValue::Number(5.0)));
        assert_eq!(computed("order_count"), Some(AttrValue::Number(1.0)));
        assert_eq!(computed("first_device"), None);
    }

    #[test]
    fn purging_a_customer_that_is_not_removed_does_nothing() {
        let (mut shard, _) = shard_with_ada_and_bob();
        let row = shard.customer_row(TRACES[0]).unwrap();
        let before = shard.snapshot().unwrap();
        shard.purge_removed(row);
        shard.purge_removed(0);
        shard.purge_removed(999);
        assert_eq!(shard.snapshot().unwrap(), before);
        assert_eq!(shard.customer_id(row), Some(TRACES[0]));
    }
}
