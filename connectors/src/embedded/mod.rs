//! The embedded backend: fjall databases in the data directory, one for the
//! event log and one for state.
//!
//! fjall (pure Rust LSM tree) was chosen over RocksDB because it builds in
//! seconds on two cores instead of minutes of C++, writes atomic batches across
//! keyspaces (state, offsets, deadlines and outbox in one commit, which the
//! shard runtime needs), and its journal gives group-commit durability with one
//! `persist(SyncAll)` per batch.

mod log;
mod store;

pub use log::{EventLog, LogError, LogStats};
pub use store::StateStore;
