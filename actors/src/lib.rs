//! Xeno's runtime: the actix actors that own state and the facade the gateway
//! talks to.
//!
//! ```text
//! gateway ──> Runtime (facade) ──append, durable──> event log port
//!                 │                     └─Append──> ShardActor p  (one per partition, own thread)
//!                 │                                   │ deltas → outbox (state port) → WebhookDispatcher (per endpoint)
//!                 │                                   └ counts ─────────────────────→ SegmentActor (per segment)
//!                 └── ClockActor ──Tick──> every ShardActor
//! ```
//!
//! The gateway never names an actix type: [`Runtime`]'s methods are plain async
//! functions. Actors hold port trait objects ([`Ports`]), never a concrete
//! connector.

pub mod audit;
pub mod catalog;
pub mod clock;
pub mod dispatch;
pub mod identity;
pub mod import;
pub mod record;
pub mod registry;
pub mod segment;
pub mod shard;

mod facade;

pub use facade::*;
