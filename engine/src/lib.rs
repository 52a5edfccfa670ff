//! Xeno's engine: the pure domain core.
//!
//! No I/O and no clock: `now` is always an argument, so every result is
//! deterministic and testable. The only threads it starts are scoped ones inside
//! a columnar scan (audience preview, and the backfill of a segment whose rule
//! does not depend on time).
//!
//! * [`model`]: attribute types and values, the tenant schema, Segment-spec events.
//! * [`rule`]: the rule language (AST, DSL, validation, compilation).
//! * [`traits`] and [`counters`]: per-customer aggregates over events.
//! * [`shard`]: incremental segment membership, with the [`deadline`] index for
//!   time windows.
//! * [`preview`]: columnar evaluation of ad-hoc rules.
//! * [`ports`]: what the runtime provides (event history).

pub mod counters;
pub mod deadline;
mod json_text;
pub mod model;
pub mod ports;
pub mod preview;
pub mod rule;
pub mod shard;
pub mod table;
pub mod time;
pub mod traits;
