//! The deadline index: which (target, customer) pairs must be looked at again when
//! time passes, and when.
//!
//! A target is a segment (its answer for that customer can flip at `valid_until`)
//! or a windowed computed trait (a bucket leaves the window). Entries sit in a
//! wheel of coarse ticks (at most one second) so that scheduling is O(log ticks)
//! and popping a tick costs only what is due in it.
//!
//! ```text
//!   tick:   ... | 1700000000 | 1700000001 | 1700000002 | ...
//!   entries:      (seg 3, c 17, 1700000000_250)  (trait 1, c 9, 1700000001_000)
//!   current: {(seg 3, c 17) -> 1700000000_250, (trait 1, c 9) -> 1700000001_000}
//! ```
//!
//! Cancellation is lazy: rescheduling a pair only overwrites `current`; an old
//! wheel entry stays and, when popped, is skipped (the pair was cancelled or
//! moved earlier, so an earlier entry exists) or re-filed (moved later).
//! Within the tick being popped, entries whose exact deadline is still ahead of
//! `now` are kept for the next call, so an answer is never re-evaluated before it
//! can change and never later than the first `advance_time` past its deadline.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Packs a target and a customer row into one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeadlineKey(pub u64);

impl DeadlineKey {
    pub fn new(target: u32, row: u32) -> Self {
        DeadlineKey(((target as u64) << 32) | row as u64)
    }
    pub fn target(self) -> u32 {
        (self.0 >> 32) as u32
    }
    pub fn row(self) -> u32 {
        self.0 as u32
    }
}

/// What the owner of a deadline says about a wheel entry being popped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Cancelled, or moved earlier (an earlier entry exists): drop it.
    Skip,
    /// Due at this instant; the owner has forgotten it.
    Due(i64),
    /// Still pending at this (later) instant: file it again.
    Later(i64),
}

/// The rule every owner applies: `current` is the pair's deadline now, `at` the
/// entry's. Call [`Verdict::Due`] only after forgetting the pair.
pub fn judge(current: Option<i64>, at: i64, now: i64) -> Verdict {
    match current {
        None => Verdict::Skip,
        Some(c) if c < at => Verdict::Skip,
        Some(c) if c <= now => Verdict::Due(c),
        Some(c) => Verdict::Later(c),
    }
}

/// The wheel alone: entries filed by tick. Whoever owns the current deadlines
/// (a map, or per-customer records) decides about each popped entry, so the
/// wheel never needs a lookup structure of its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Wheel {
    tick: i64,
    buckets: BTreeMap<i64, Vec<(i64, DeadlineKey)>>,
}

impl Wheel {
    /// `tick_ms` is the granularity (1..=1000 ms).
    pub fn new(tick_ms: i64) -> Self {
        assert!((1..=1000).contains(&tick_ms), "tick must be 1 ms to 1 s");
        Wheel {
            tick: tick_ms,
            buckets: BTreeMap::new(),
        }
    }

    pub fn push(&mut self, key: DeadlineKey, at: i64) {
        self.buckets
            .entry(at.div_euclid(self.tick))
            .or_default()
            .push((at, key));
    }

    /// Pops every entry filed at or before `now`'s tick and asks `decide` about
    /// it; due pairs go to `due`.
    pub fn pop(
        &mut self,
        now: Timestamp,
        mut decide: impl FnMut(DeadlineKey, i64) -> Verdict,
        due: &mut Vec<(DeadlineKey, Timestamp)>,
    ) {
        let last_tick = now.0.div_euclid(self.tick);
        let mut not_yet = Vec::new();
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() > last_tick {
                break;
            }
            for (at, key) in entry.remove() {
                match decide(key, at) {
                    Verdict::Skip => {}
                    Verdict::Due(c) => due.push((key, Timestamp(c))),
                    Verdict::Later(c) if c.div_euclid(self.tick) <= last_tick => {
                        not_yet.push((c, key))
                    }
                    Verdict::Later(c) => self.push(key, c),
                }
            }
        }
        if !not_yet.is_empty() {
            self.buckets.entry(last_tick).or_default().extend(not_yet);
        }
    }

    /// The earliest pending deadline, given the owner's view of each key's
    /// current deadline: exact when the earliest live entry's deadline lies
    /// within its own tick, otherwise capped at the start of the next tick that
    /// holds entries (a lower bound, since every entry filed there has a deadline
    /// at or after that start). Buckets holding only stale entries are passed.
    pub fn next_due(&self, current: impl Fn(DeadlineKey) -> Option<i64>) -> Option<Timestamp> {
        let mut buckets = self.buckets.iter().peekable();
        while let Some((_, entries)) = buckets.next() {
            let best = entries
                .iter()
                .filter_map(|(at, key)| current(*key).filter(|c| *c >= *at))
                .min();
            if let Some(best) = best {
                let cap = buckets
                    .peek()
                    .map_or(i64::MAX, |(tick, _)| tick.saturating_mul(self.tick));
                return Some(Timestamp(best.min(cap)));
            }
        }
        None
    }

    pub fn entries(&self) -> usize {
        self.buckets.values().map(Vec::len).sum()
    }

    pub fn heap_bytes(&self) -> usize {
        self.buckets
            .values()
            .map(|v| v.capacity() * 16 + 48)
            .sum::<usize>()
    }
}

/// A wheel plus a map of current deadlines: for targets without a per-customer
/// record of their own (windowed computed traits).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadlineIndex {
    wheel: Wheel,
    current: FxHashMap<DeadlineKey, i64>,
}

impl DeadlineIndex {
    /// `tick_ms` is the wheel's granularity (1..=1000 ms).
    pub fn new(tick_ms: i64) -> Self {
        DeadlineIndex {
            wheel: Wheel::new(tick_ms),
            current: FxHashMap::default(),
        }
    }

    /// Sets the deadline of `key`; [`Timestamp::NEVER`] removes it.
    ///
    /// Moving a deadline later pushes nothing: the wheel keeps the earlier entry,
    /// and popping it re-files it at the current deadline. So a pair whose
    /// deadline keeps receding costs one wheel entry, not one per event.
    pub fn schedule(&mut self, key: DeadlineKey, at: Timestamp) {
        if at == Timestamp::NEVER {
            self.current.remove(&key);
            return;
        }
        match self.current.get_mut(&key) {
            Some(old) if *old <= at.0 => *old = at.0,
            Some(old) => {
                *old = at.0;
                self.wheel.push(key, at.0);
            }
            None => {
                self.current.insert(key, at.0);
                self.wheel.push(key, at.0);
            }
        }
    }

    /// Moves every pair due at or before `now` into `due` (deadline order is not
    /// guaranteed) and forgets them.
    pub fn pop_due(&mut self, now: Timestamp, due: &mut Vec<(DeadlineKey, Timestamp)>) {
        let current = &mut self.current;
        self.wheel.pop(
            now,
            |key, at| {
                let verdict = judge(current.get(&key).copied(), at, now.0);
                if let Verdict::Due(_) = verdict {
                    current.remove(&key);
                }
                verdict
            },
            due,
        );
    }

    /// The earliest pending deadline (see [`Wheel::next_due`]).
    pub fn next_due(&self) -> Option<Timestamp> {
        self.wheel.next_due(|key| self.current.get(&key).copied())
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    pub fn heap_bytes(&self) -> usize {
        self.current.capacity() * 17 + self.wheel.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_at_the_exact_deadline_and_skips_cancelled() {
        let mut index = DeadlineIndex::new(1000);
        let a = DeadlineKey::new(1, 10);
        let b = DeadlineKey::new(2, 11);
        index.schedule(a, Timestamp(1_500));
        index.schedule(b, Timestamp(1_200));
        index.schedule(b, Timestamp::NEVER); // cancelled
        let mut due = Vec::new();
        index.pop_due(Timestamp(1_499), &mut due);
        assert!(due.is_empty(), "not yet due within the same tick");
        index.pop_due(Timestamp(1_500), &mut due);
        assert_eq!(due, vec![(a, Timestamp(1_500))]);
        due.clear();
        index.pop_due(Timestamp(10_000), &mut due);
        assert!(due.is_empty());
        assert!(index.is_empty());
    }

    #[test]
    fn rescheduling_later_moves_the_deadline() {
        let mut index = DeadlineIndex::new(1000);
        let a = DeadlineKey::new(0, 1);
        index.schedule(a, Timestamp(1_000));
        index.schedule(a, Timestamp(5_000));
        let mut due = Vec::new();
        index.pop_due(Timestamp(2_000), &mut due);
        assert!(due.is_empty());
        assert_eq!(index.next_due(), Some(Timestamp(5_000)));
        index.pop_due(Timestamp(5_000), &mut due);
        assert_eq!(due, vec![(a, Timestamp(5_000))]);
    }

    #[test]
    fn receding_deadlines_cost_one_entry_and_fire_once() {
        let mut index = DeadlineIndex::new(1000);
        let a = DeadlineKey::new(3, 4);
        index.schedule(a, Timestamp(10_000));
        index.schedule(a, Timestamp(5_000)); // earlier: a second entry
        for later in [20_000, 30_000, 40_000] {
            index.schedule(a, Timestamp(later)); // later: no new entry
        }
        let entries = index.wheel.entries();
        assert_eq!(entries, 2);
        let mut due = Vec::new();
        index.pop_due(Timestamp(39_999), &mut due);
        assert!(due.is_empty());
        assert_eq!(index.next_due(), Some(Timestamp(40_000)));
        index.pop_due(Timestamp(40_000), &mut due);
        assert_eq!(due, vec![(a, Timestamp(40_000))]);
        due.clear();
        index.pop_due(Timestamp(100_000), &mut due);
        assert!(due.is_empty(), "fires once");
    }

    #[test]
    fn next_due_sees_past_a_receded_entry_in_an_earlier_tick() {
        let mut index = DeadlineIndex::new(1000);
        let a = DeadlineKey::new(1, 1);
        let b = DeadlineKey::new(1, 2);
        index.schedule(a, Timestamp(1_000));
        index.schedule(a, Timestamp(4_000)); // receded: still filed at tick 1
        index.schedule(b, Timestamp(3_500));
        assert_eq!(
            index.next_due(),
            Some(Timestamp(3_000)),
            "capped at b's tick"
        );
        let mut due = Vec::new();
        index.pop_due(Timestamp(1_500), &mut due);
        assert!(due.is_empty());
        assert_eq!(index.next_due(), Some(Timestamp(3_500)));
        // An entry re-filed in the current tick reports its real deadline, never
        // one already past (a runtime sleeping until then must not spin).
        index.schedule(b, Timestamp::NEVER);
        index.schedule(a, Timestamp(1_900));
        index.pop_due(Timestamp(1_600), &mut due);
        assert_eq!(index.next_due(), Some(Timestamp(1_900)));
    }
}
