//! Outgoing webhooks: signatures per the Standard Webhooks specification
//! ([`signing`]) and the HTTP sender behind the engine's `WebhookPort`
//! ([`sender`]). Queues, retries and the outbox live in the actor runtime.

pub mod sender;
pub mod signing;
