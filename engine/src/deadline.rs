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
//! Cancellation is lazy: rescheduling a pair only overwrites `current`; the old
//! wheel entry stays and is skipped when popped because it no longer matches.
//! Within the tick being popped, entries whose exact deadline is still ahead of
//! `now` are kept for the next call, so an answer is never re-evaluated before it
//! can change and never later than the first `advance_time` past its deadline.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::time::Timestamp;

/// Packs a target and a customer row into one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

#[derive(Debug, Clone)]
pub struct DeadlineIndex {
    tick: i64,
    wheel: BTreeMap<i64, Vec<(i64, DeadlineKey)>>,
    current: FxHashMap<DeadlineKey, i64>,
}

impl DeadlineIndex {
    /// `tick_ms` is the wheel's granularity (1..=1000 ms).
    pub fn new(tick_ms: i64) -> Self {
        assert!((1..=1000).contains(&tick_ms), "tick must be 1 ms to 1 s");
        DeadlineIndex {
            tick: tick_ms,
            wheel: BTreeMap::new(),
            current: FxHashMap::default(),
        }
    }

    /// Sets the deadline of `key`; [`Timestamp::NEVER`] removes it.
    pub fn schedule(&mut self, key: DeadlineKey, at: Timestamp) {
        if at == Timestamp::NEVER {
            self.current.remove(&key);
            return;
        }
        if self.current.insert(key, at.0) != Some(at.0) {
            self.wheel
                .entry(at.0.div_euclid(self.tick))
                .or_default()
                .push((at.0, key));
        }
    }

    /// The deadline currently set for `key`.
    pub fn get(&self, key: DeadlineKey) -> Option<Timestamp> {
        self.current.get(&key).map(|t| Timestamp(*t))
    }

    /// Removes every key whose target satisfies `drop` (a deleted segment).
    pub fn forget_targets(&mut self, drop: impl Fn(u32) -> bool) {
        self.current.retain(|k, _| !drop(k.target()));
    }

    /// Moves every pair due at or before `now` into `due` (deadline order is not
    /// guaranteed) and forgets them.
    pub fn pop_due(&mut self, now: Timestamp, due: &mut Vec<(DeadlineKey, Timestamp)>) {
        let last_tick = now.0.div_euclid(self.tick);
        let mut not_yet = Vec::new();
        while let Some(entry) = self.wheel.first_entry() {
            if *entry.key() > last_tick {
                break;
            }
            for (at, key) in entry.remove() {
                if self.current.get(&key) != Some(&at) {
                    continue; // cancelled or rescheduled
                }
                if at <= now.0 {
                    self.current.remove(&key);
                    due.push((key, Timestamp(at)));
                } else {
                    not_yet.push((at, key));
                }
            }
        }
        if !not_yet.is_empty() {
            self.wheel.entry(last_tick).or_default().extend(not_yet);
        }
    }

    /// The earliest pending deadline, for a runtime that sleeps until then.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.wheel.first_key_value().map(|(tick, entries)| {
            entries
                .iter()
                .filter(|(at, key)| self.current.get(key) == Some(at))
                .map(|(at, _)| Timestamp(*at))
                .min()
                .unwrap_or(Timestamp(tick * self.tick))
        })
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    pub fn heap_bytes(&self) -> usize {
        self.current.capacity() * 17
            + self
                .wheel
                .values()
                .map(|v| v.capacity() * 16 + 48)
                .sum::<usize>()
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
}
