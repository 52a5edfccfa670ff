//! Event counters behind `performed` conditions.
//!
//! Without a window a counter keeps the number of matching events per customer.
//! With a window `W` it keeps the timestamps of the `keep` most recent matching
//! events, which is exactly what `at_least k times within W` (k <= keep) needs:
//! the condition holds while the k-th most recent timestamp `r_k` satisfies
//! `r_k + W > now`, and flips at `r_k + W`. The state is a multiset maximum, so it
//! does not depend on arrival order.
//!
//! ## Layout
//! Counters are grouped by event name, and a group stores, per customer, one
//! contiguous array of cells (one per counter of that name). An event then costs
//! one hash lookup for all the counters of its name, and the segment evaluations
//! that follow read the same, now cached, cells. Identical counters (same event,
//! filter, window and depth) are shared between segments and reference-counted;
//! a freed position is reused by the next counter of the group.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use smallvec::SmallVec;

use crate::rule::compile::{CounterSpec, eval_property_filter};
use crate::time::Timestamp;

/// One customer's state for one counter.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cell {
    count: u32,
    /// Most recent first, at most `keep` entries.
    recent: SmallVec<[i64; 3]>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    spec: CounterSpec,
    group: u32,
    position: u32,
    /// How many segments (or previews) use it; dead at zero.
    users: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Group {
    /// Counter id at each cell position; `DEAD` where the position is free.
    counters: Vec<u32>,
    rows: FxHashMap<u32, Vec<Cell>>,
}

const DEAD: u32 = u32::MAX;

/// Every counter of a tenant shard.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CounterStore {
    metas: Vec<Meta>,
    by_key: FxHashMap<String, u32>,
    groups: Vec<Group>,
    group_by_event: FxHashMap<String, u32>,
    /// Ids of freed counters, handed out again before new ones.
    free_ids: Vec<u32>,
}

impl CounterStore {
    /// The id of a live counter with this spec.
    pub fn find(&self, spec: &CounterSpec) -> Option<u32> {
        self.by_key.get(&spec.key()).copied()
    }

    /// One more than the largest id handed out (ids of freed counters are reused).
    pub fn id_count(&self) -> usize {
        self.metas.len()
    }

    /// Finds or creates a counter and takes a reference on it. `true` when it is
    /// new, and so empty: the caller fills it from history.
    pub fn acquire(&mut self, spec: &CounterSpec) -> (u32, bool) {
        let key = spec.key();
        if let Some(&id) = self.by_key.get(&key) {
            self.metas[id as usize].users += 1;
            return (id, false);
        }
        let group_id = match self.group_by_event.get(&spec.event) {
            Some(&g) => g,
            None => {
                let g = self.groups.len() as u32;
                self.groups.push(Group::default());
                self.group_by_event.insert(spec.event.clone(), g);
                g
            }
        };
        let id = self.free_ids.pop().unwrap_or(self.metas.len() as u32);
        let group = &mut self.groups[group_id as usize];
        let position = match group.counters.iter().position(|c| *c == DEAD) {
            Some(p) => {
                // A freed position still holds the old counter's cells.
                for cells in group.rows.values_mut() {
                    if let Some(cell) = cells.get_mut(p) {
                        *cell = Cell::default();
                    }
                }
                group.counters[p] = id;
                p
            }
            None => {
                group.counters.push(id);
                group.counters.len() - 1
            }
        };
        let meta = Meta {
            spec: spec.clone(),
            group: group_id,
            position: position as u32,
            users: 1,
        };
        match self.metas.get_mut(id as usize) {
            Some(slot) => *slot = meta,
            None => self.metas.push(meta),
        }
        self.by_key.insert(key, id);
        (id, true)
    }

    /// Drops a reference; the counter is freed at zero.
    pub fn release(&mut self, id: u32) {
        let meta = &mut self.metas[id as usize];
        debug_assert!(meta.users > 0);
        meta.users -= 1;
        if meta.users == 0 {
            let key = meta.spec.key();
            self.by_key.remove(&key);
            self.groups[meta.group as usize].counters[meta.position as usize] = DEAD;
            self.free_ids.push(id);
        }
    }

    /// Folds one track event into every counter of its name (or only into
    /// `only`, when filling new counters from history). Pushes the ids whose
    /// state changed.
    pub fn record(
        &mut self,
        event: &str,
        row: u32,
        at: Timestamp,
        properties: Option<&Map<String, Json>>,
        only: Option<&[u32]>,
        changed: &mut Vec<u32>,
    ) {
        let Some(&g) = self.group_by_event.get(event) else {
            return;
        };
        let group = &mut self.groups[g as usize];
        // Decide which counters match before touching the row, so that an event
        // matching none allocates nothing.
        let mut matching: SmallVec<[(usize, u32); 16]> = SmallVec::new();
        for (position, &id) in group.counters.iter().enumerate() {
            if id == DEAD || only.is_some_and(|o| !o.contains(&id)) {
                continue;
            }
            let filter = &self.metas[id as usize].spec.filter;
            if filter
                .as_ref()
                .is_none_or(|f| eval_property_filter(f, properties))
            {
                matching.push((position, id));
            }
        }
        if matching.is_empty() {
            return;
        }
        let width = group.counters.len();
        let cells = group.rows.entry(row).or_default();
        if cells.len() < width {
            cells.resize(width, Cell::default());
        }
        for (position, id) in matching {
            let spec = &self.metas[id as usize].spec;
            let cell = &mut cells[position];
            let did_change = if spec.within.is_some() {
                let keep = spec.keep as usize;
                // Equal timestamps are distinct events and all count.
                let pos = cell.recent.partition_point(|t| *t >= at.0);
                if pos < keep {
                    cell.recent.insert(pos, at.0);
                    cell.recent.truncate(keep);
                    true
                } else {
                    false
                }
            } else {
                cell.count += 1;
                true
            };
            if did_change {
                changed.push(id);
            }
        }
    }

    /// Drops every cell of `row`, as for a customer with no events.
    pub fn forget_row(&mut self, row: u32) {
        for group in &mut self.groups {
            group.rows.remove(&row);
        }
    }

    /// Whether the customer performed at least `k` matching events (within the
    /// window, at `now`), and until when that answer holds with no new event.
    pub fn at_least(&self, id: u32, row: u32, k: u32, now: Timestamp) -> (bool, Timestamp) {
        debug_assert!(k >= 1);
        let meta = &self.metas[id as usize];
        let cell = self.groups[meta.group as usize]
            .rows
            .get(&row)
            .and_then(|cells| cells.get(meta.position as usize));
        let Some(cell) = cell else {
            return (false, Timestamp::NEVER);
        };
        match meta.spec.within {
            None => (cell.count >= k, Timestamp::NEVER),
            Some(w) => {
                debug_assert!(k <= meta.spec.keep);
                match cell.recent.get(k as usize - 1) {
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

    pub fn heap_bytes(&self) -> usize {
        let cell = std::mem::size_of::<Cell>();
        self.groups
            .iter()
            .map(|g| {
                g.rows.capacity() * 32 + g.rows.values().map(|c| c.capacity() * cell).sum::<usize>()
            })
            .sum::<usize>()
            + self.metas.capacity() * std::mem::size_of::<Meta>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{DAY, Duration};

    fn spec(keep: u32, within: Option<i64>) -> CounterSpec {
        CounterSpec {
            event: "Order Completed".into(),
            filter: None,
            within: within.map(|d| Duration(d * DAY)),
            keep,
        }
    }

    #[test]
    fn third_most_recent_decides_and_flips_exactly() {
        let mut store = CounterStore::default();
        let (id, fresh) = store.acquire(&spec(3, Some(90)));
        assert!(fresh);
        let mut changed = Vec::new();
        for d in [10, 50, 30, 20] {
            store.record(
                "Order Completed",
                7,
                Timestamp(d * DAY),
                None,
                None,
                &mut changed,
            );
        }
        // Most recent three: 50, 30, 20 -> the third is day 20, valid until day 110.
        assert_eq!(
            store.at_least(id, 7, 3, Timestamp(100 * DAY)),
            (true, Timestamp(110 * DAY))
        );
        assert_eq!(
            store.at_least(id, 7, 3, Timestamp(110 * DAY)),
            (false, Timestamp::NEVER)
        );
        assert_eq!(
            store.at_least(id, 8, 1, Timestamp(0)),
            (false, Timestamp::NEVER)
        );
        // Day 10 fell out of the top three: no change.
        assert_eq!(changed, vec![id, id, id, id]);
        changed.clear();
        store.record(
            "Order Completed",
            7,
            Timestamp(DAY),
            None,
            None,
            &mut changed,
        );
        assert!(changed.is_empty());
    }

    #[test]
    fn forgotten_rows_start_over_and_others_keep_their_counts() {
        let mut store = CounterStore::default();
        let (total, _) = store.acquire(&spec(0, None));
        let (windowed, _) = store.acquire(&spec(2, Some(30)));
        let mut changed = Vec::new();
        for row in [1, 2, 1] {
            store.record(
                "Order Completed",
                row,
                Timestamp(DAY),
                None,
                None,
                &mut changed,
            );
        }
        store.forget_row(1);
        let now = Timestamp(2 * DAY);
        assert!(!store.at_least(total, 1, 1, now).0);
        assert!(!store.at_least(windowed, 1, 1, now).0);
        assert!(store.at_least(total, 2, 1, now).0);
        assert!(store.at_least(windowed, 2, 1, now).0);
        store.record(
            "Order Completed",
            1,
            Timestamp(DAY),
            None,
            None,
            &mut changed,
        );
        assert!(store.at_least(total, 1, 1, now).0);
        assert!(!store.at_least(total, 1, 2, now).0, "counting restarted");
    }

    #[test]
    fn shared_counters_are_refcounted_and_positions_reused_clean() {
        let mut store = CounterStore::default();
        let (total, _) = store.acquire(&spec(0, None));
        let (again, fresh) = store.acquire(&spec(0, None));
        assert_eq!((again, fresh), (total, false));
        let mut changed = Vec::new();
        store.record("Order Completed", 1, Timestamp(0), None, None, &mut changed);
        store.release(total);
        assert!(store.find(&spec(0, None)).is_some(), "one user left");
        store.release(total);
        assert!(store.find(&spec(0, None)).is_none());
        // The next counter of the group takes the freed position, with no leftovers.
        let (windowed, fresh) = store.acquire(&spec(1, Some(30)));
        assert!(fresh);
        assert!(!store.at_least(windowed, 1, 1, Timestamp(0)).0);
    }
}
