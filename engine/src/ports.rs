//! Ports: what the engine needs from the outside world, as traits. The runtime
//! implements them over its event log; the engine never does I/O itself.

use crate::model::Event;

/// Why the history could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event history unavailable: {0}")]
pub struct HistoryError(pub String);

/// Every event the shard has applied so far, in any order, duplicates allowed
/// (they are removed by `messageId`). New segments and computed traits that need
/// state no existing one keeps (a new `performed` counter, a new trait) are filled
/// from it.
pub trait EventHistory {
    fn replay(&self, visit: &mut dyn FnMut(&Event)) -> Result<(), HistoryError>;
}

/// An in-memory history, for tests and for callers that keep events in memory.
impl EventHistory for [Event] {
    fn replay(&self, visit: &mut dyn FnMut(&Event)) -> Result<(), HistoryError> {
        self.iter().for_each(visit);
        Ok(())
    }
}

impl EventHistory for Vec<Event> {
    fn replay(&self, visit: &mut dyn FnMut(&Event)) -> Result<(), HistoryError> {
        self.as_slice().replay(visit)
    }
}

impl EventHistory for &[Event] {
    fn replay(&self, visit: &mut dyn FnMut(&Event)) -> Result<(), HistoryError> {
        (**self).replay(visit)
    }
}
