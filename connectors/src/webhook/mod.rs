//! Outgoing webhooks. So far: signatures per the Standard Webhooks
//! specification ([`signing`]); the durable outbox and per-endpoint dispatchers
//! come with the runtime.

pub mod signing;
