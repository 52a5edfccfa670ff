//! Benchmarks of the Xeno engine. The bench targets live in `benches/`; this
//! library holds what they share: deterministic generators of customers, events,
//! segment sets and the audience-preview table ([`data`]), so every bench and its
//! Python peer measure the same, reproducible work.

pub mod data;
