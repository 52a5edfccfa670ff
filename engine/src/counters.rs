//! Event counters behind `performed` conditions.
//!
//! Without a window a counter keeps the number of matching events per customer.
//! With a window `W` it keeps the timestamps of the `keep` most recent matching
//! events, which is exactly what `at_least k times within W` (k <= keep) needs:
//! the condition holds while the k-th most recent timestamp `r_k` satisfies
//! `r_k + W > now`, and flips at `r_k + W`. The state is a multiset maximum, so it
//! does not depend on arrival order.

use rustc_hash::FxHashMap;

use crate::rule::Rule;
use crate::rule::compile::{CounterSpec, eval_property_filter};
use crate::time::{Duration, Timestamp};

#[derive(Debug, Clone)]
pub struct Counter {
    pub spec: CounterSpec,
    state: CounterState,
    /// How many segments use it; freed at zero.
    pub(crate) users: u32,
}

#[derive(Debug, Clone)]
enum CounterState {
    Total(FxHashMap<u32, u32>),
    /// Most recent first, at most `keep` entries.
    Recent(FxHashMap<u32, Vec<i64>>),
}

impl Counter {
    pub fn new(spec: CounterSpec) -> Counter {
        let state = if spec.within.is_some() {
            CounterState::Recent(FxHashMap::default())
        } else {
            CounterState::Total(FxHashMap::default())
        };
        Counter {
            spec,
            state,
            users: 0,
        }
    }

    pub fn filter(&self) -> Option<&Rule> {
        self.spec.filter.as_ref()
    }

    pub fn window(&self) -> Option<Duration> {
        self.spec.within
    }

    /// Whether an event with this name and these properties counts.
    pub fn matches(&self, properties: Option<&serde_json::Map<String, serde_json::Value>>) -> bool {
        self.spec
            .filter
            .as_ref()
            .is_none_or(|f| eval_property_filter(f, properties))
    }

    /// Records one matching event. Returns whether the state changed.
    pub fn record(&mut self, row: u32, at: Timestamp) -> bool {
        match &mut self.state {
            CounterState::Total(counts) => {
                *counts.entry(row).or_default() += 1;
                true
            }
            CounterState::Recent(recent) => {
                let keep = self.spec.keep as usize;
                let list = recent.entry(row).or_default();
                // Most recent first; equal timestamps are distinct events and all count.
                let pos = list.partition_point(|t| *t >= at.0);
                if pos >= keep {
                    return false;
                }
                list.insert(pos, at.0);
                list.truncate(keep);
                true
            }
        }
    }

    /// Whether the customer performed at least `k` matching events (within the
    /// window, at `now`), and until when that answer holds with no new event.
    pub fn at_least(&self, row: u32, k: u32, now: Timestamp) -> (bool, Timestamp) {
        debug_assert!(k >= 1);
        match &self.state {
            CounterState::Total(counts) => (
                counts.get(&row).copied().unwrap_or(0) >= k,
                Timestamp::NEVER,
            ),
            CounterState::Recent(recent) => {
                debug_assert!(k <= self.spec.keep);
                let w = self.spec.within.expect("recent counters have a window");
                match recent.get(&row).and_then(|l| l.get(k as usize - 1)) {
                    Some(&t) => {
                        let end = Timestamp(t).plus(w);
                        if end > now {
                            (true, end)
                        } else {
                            (false, Timestamp::NEVER)
                        }
                    }
                    None => (false, Timestamp::NEVER),
                }
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        match &mut self.state {
            CounterState::Total(m) => *m = FxHashMap::default(),
            CounterState::Recent(m) => *m = FxHashMap::default(),
        }
    }

    pub fn heap_bytes(&self) -> usize {
        match &self.state {
            CounterState::Total(m) => m.capacity() * 9,
            CounterState::Recent(m) => {
                m.capacity() * 33 + m.values().map(|v| v.capacity() * 8).sum::<usize>()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::DAY;

    #[test]
    fn third_most_recent_decides_and_flips_exactly() {
        let mut c = Counter::new(CounterSpec {
            event: "Order Completed".into(),
            filter: None,
            within: Some(Duration::from_days(90)),
            keep: 3,
        });
        for d in [10, 50, 30, 20] {
            c.record(7, Timestamp(d * DAY));
        }
        // Most recent three: 50, 30, 20 -> the third is day 20, valid until day 110.
        assert_eq!(
            c.at_least(7, 3, Timestamp(100 * DAY)),
            (true, Timestamp(110 * DAY))
        );
        assert_eq!(
            c.at_least(7, 3, Timestamp(110 * DAY)),
            (false, Timestamp::NEVER)
        );
        assert_eq!(c.at_least(8, 1, Timestamp(0)), (false, Timestamp::NEVER));
    }
}
