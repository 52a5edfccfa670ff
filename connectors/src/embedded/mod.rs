//! The embedded backend: one fjall database in the data directory.
//!
//! fjall (pure Rust LSM tree) was chosen over RocksDB because it builds in
//! seconds on two cores instead of minutes of C++, writes atomic batches across
//! keyspaces (state, offsets, deadlines and outbox in one commit, which the
//! shard runtime needs), and its journal gives group-commit durability with one
//! `persist(SyncAll)` per batch.

mod history;
mod log;

pub use history::{LogHistory, decode_event, encode_event};
pub use log::{EventLog, LogError, LogStats};
