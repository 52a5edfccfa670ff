//! The engine's [`EventHistory`] port over the embedded log: what a new segment
//! or computed trait is filled from.
//!
//! Events are stored in the log as their JSON (the engine's `Event` serde form),
//! so the log stays readable with ordinary tools and a record written by one
//! build reads back in the next.

use xeno_engine::model::Event;
use xeno_engine::ports::{EventHistory, HistoryError};

use super::log::EventLog;

/// Records read per round trip to the store.
const READ_CHUNK: usize = 4096;

/// The bytes an event is stored as.
pub fn encode_event(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).expect("an engine event always serialises")
}

/// An event back from its stored bytes.
pub fn decode_event(bytes: &[u8]) -> Result<Event, HistoryError> {
    serde_json::from_slice(bytes)
        .map_err(|e| HistoryError(format!("a stored event does not decode: {e}")))
}

/// One partition's events from its first retained offset up to (not including)
/// `until`: the events a shard has applied when its consumed offset is `until`.
pub struct LogHistory<'a> {
    pub log: &'a EventLog,
    pub partition: u32,
    pub until: u64,
}

impl EventHistory for LogHistory<'_> {
    fn replay(&self, visit: &mut dyn FnMut(&Event)) -> Result<(), HistoryError> {
        let mut from = 0;
        loop {
            let chunk = self
                .log
                .read(self.partition, from, READ_CHUNK)
                .map_err(|e| HistoryError(e.to_string()))?;
            let Some(&(last, _)) = chunk.last() else {
                return Ok(());
            };
            for (offset, bytes) in &chunk {
                if *offset >= self.until {
                    return Ok(());
                }
                visit(&decode_event(bytes)?);
            }
            from = last + 1;
        }
    }
}
