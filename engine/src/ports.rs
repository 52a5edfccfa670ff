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

/// A storage or network port failed. `retryable` says whether trying again can
/// help (a full disk, a timeout) or not (a corrupt record).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PortError {
    pub message: String,
    pub retryable: bool,
}

impl PortError {
    pub fn retryable(message: impl Into<String>) -> PortError {
        PortError {
            message: message.into(),
            retryable: true,
        }
    }

    pub fn permanent(message: impl Into<String>) -> PortError {
        PortError {
            message: message.into(),
            retryable: false,
        }
    }
}

/// A durable, partitioned log of opaque records, numbered per partition from 0.
/// Embedded: a local journal; scaled out: a topic's partitions.
///
/// Calls block (an fsync, a broker round trip): call them from a thread that may
/// block.
pub trait EventLogPort: Send + Sync {
    fn partitions(&self) -> u32;
    /// Appends `records` to `partition`; returns their offsets once they are
    /// durable. Many concurrent appends may share one flush.
    fn append(
        &self,
        partition: u32,
        records: Vec<Vec<u8>>,
    ) -> Result<std::ops::Range<u64>, PortError>;
    /// Up to `limit` records of `partition` from offset `from` on, in order.
    fn read(
        &self,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, PortError>;
    /// Deletes the records of `partition` before `before` (retention); returns
    /// how many went.
    fn truncate_before(&self, partition: u32, before: u64) -> Result<u64, PortError>;
    /// Replaces the records at the given offsets of `partition` with new bytes,
    /// durably, keeping every offset where it is. Erasure uses it to put a
    /// tombstone where a forgotten customer's events were (right to be
    /// forgotten); offsets below the retained range are ignored.
    fn overwrite(&self, partition: u32, records: Vec<(u64, Vec<u8>)>) -> Result<(), PortError>;
}

/// One change of a [`StatePort::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateWrite {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Key-value pairs, in key order.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// An ordered key-value store with atomic multi-key commits. Every key starts
/// with its tenant (invariant 4), so a tenant's data is one key range.
pub trait StatePort: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, PortError>;
    /// Up to `limit` pairs whose key starts with `prefix` and is greater than
    /// `after` (when given), in key order.
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyValues, PortError>;
    /// Applies all `writes` or none. With `durable`, returns only once they
    /// survive a crash.
    fn commit(&self, writes: Vec<StateWrite>, durable: bool) -> Result<(), PortError>;
}

/// One signed webhook request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    pub url: String,
    /// The Standard Webhooks `webhook-id`: stable across retries.
    pub id: String,
    /// Seconds since the epoch, for `webhook-timestamp`.
    pub timestamp: i64,
    /// `whsec_...` secrets; each signs the request (several during a rotation).
    pub secrets: Vec<String>,
    pub body: Vec<u8>,
    pub timeout: std::time::Duration,
}

/// What a webhook request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The receiver answered with this HTTP status.
    Status(u16),
    /// No answer: connection refused, timeout, TLS failure, bad URL...
    Failed(String),
}

/// Sends webhooks (HTTP POST with Standard Webhooks signatures).
pub trait WebhookPort: Send + Sync {
    /// A fresh signing secret, `whsec_...`.
    fn new_secret(&self) -> Result<String, PortError>;
    fn send(
        &self,
        request: WebhookRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = WebhookOutcome> + Send + 'static>>;
}
