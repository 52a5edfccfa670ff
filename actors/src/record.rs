//! What the event log holds: one record per accepted event, with the tenant it
//! belongs to and when the server received it, stored as JSON so the log stays
//! readable with ordinary tools and a record written by one build reads back in
//! the next.
//!
//! Events are partitioned by hash(tenant, customer), so one customer's events
//! stay in one partition, in order, and one shard actor owns them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use xeno_engine::model::Event;
use xeno_engine::ports::{EventHistory, EventLogPort, HistoryError};
use xeno_engine::time::Timestamp;

/// One logged event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub org: Uuid,
    pub received_at: Timestamp,
    pub event: Event,
    /// The messageId the client sent, when the event was re-keyed to the
    /// profile its customer was merged into (its id is then derived, see
    /// [`merged_message_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// The messageId of an event re-keyed to profile `into`: derived from the id
/// the client sent (never from an earlier derived one), so the same event
/// reaches a profile under one id however many merges and retries carried it.
pub fn merged_message_id(original: &str, into: &str) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(original.as_bytes());
    h.update(&[0]);
    h.update(into.as_bytes());
    format!("merged-{:032x}", h.digest128())
}

impl LogRecord {
    /// This record as an event of profile `into`.
    pub fn rekeyed(&self, into: &str) -> LogRecord {
        let original = self
            .origin
            .clone()
            .unwrap_or_else(|| self.event.message_id.clone());
        let mut moved = self.clone();
        moved.event.message_id = merged_message_id(&original, into);
        moved.event.user_id = Some(into.to_string());
        moved.origin = Some(original);
        moved
    }
}

impl LogRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a log record always serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<LogRecord, HistoryError> {
        serde_json::from_slice(bytes)
            .map_err(|e| HistoryError(format!("a logged event does not decode: {e}")))
    }
}

/// What an erased event's record is overwritten with (see
/// [`xeno_engine::ports::EventLogPort::overwrite`]): readers skip it.
pub const ERASED: &[u8] = b"erased";

/// The partition of a customer of `org` among `partitions`.
pub fn partition_of(org: Uuid, customer: &str, partitions: u32) -> u32 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(org.as_bytes());
    h.update(customer.as_bytes());
    (h.digest() % u64::from(partitions.max(1))) as u32
}

/// Records read per round trip to the log.
const READ_CHUNK: usize = 4096;

/// Reads `partition` from `from` up to (not including) `until`, in order.
pub fn read_range(
    log: &dyn EventLogPort,
    partition: u32,
    from: u64,
    until: u64,
    visit: &mut dyn FnMut(u64, LogRecord),
) -> Result<(), HistoryError> {
    let mut next = from;
    while next < until {
        let chunk = log
            .read(partition, next, READ_CHUNK)
            .map_err(|e| HistoryError(e.to_string()))?;
        let Some(&(last, _)) = chunk.last() else {
            return Ok(());
        };
        for (offset, bytes) in chunk {
            if offset >= until {
                return Ok(());
            }
            if bytes == ERASED {
                continue;
            }
            match LogRecord::decode(&bytes) {
                Ok(record) => visit(offset, record),
                // One unreadable record must not wedge the partition: it is
                // skipped, logged and counted.
                Err(e) => {
                    metrics::counter!("xeno_log_records_unreadable_total").increment(1);
                    tracing::error!(partition, offset, error = %e, "skipping an unreadable log record");
                }
            }
        }
        next = last + 1;
    }
    Ok(())
}

/// The engine's [`EventHistory`] port over the log: one tenant's events of one
/// partition from the first retained offset up to `until` (what the shard has
/// applied). New segments and computed traits are filled from it.
pub struct TenantHistory<'a> {
    pub log: &'a dyn EventLogPort,
    pub partition: u32,
    pub org: Uuid,
    pub until: u64,
}

impl EventHistory for TenantHistory<'_> {
    fn replay(&self, visit: &mut dyn FnMut(&Event)) -> Result<(), HistoryError> {
        read_range(self.log, self.partition, 0, self.until, &mut |_, record| {
            if record.org == self.org {
                visit(&record.event);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_round_trip_and_partitioning_is_stable_and_spread() {
        let org = Uuid::now_v7();
        let event = Event::track(
            "m1",
            "ada",
            Timestamp(1_700_000_000_000),
            "Order",
            json!({"revenue": 5}),
        );
        let record = LogRecord {
            org,
            received_at: Timestamp(1_700_000_000_123),
            event,
            origin: None,
        };
        assert_eq!(LogRecord::decode(&record.encode()).unwrap(), record);
        assert!(LogRecord::decode(b"{").is_err());
        let p = partition_of(org, "ada", 8);
        assert_eq!(partition_of(org, "ada", 8), p);
        let used: std::collections::HashSet<u32> = (0..200)
            .map(|i| partition_of(org, &format!("c{i}"), 8))
            .collect();
        assert_eq!(used.len(), 8);
    }
}
