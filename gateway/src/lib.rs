//! Xeno's HTTP edge: the Segment-compatible ingest decoder ([`ingest`]), the
//! axum API ([`api`]), the configuration ([`config`]) and the server wiring
//! ([`server`]) of the `xeno` binary.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod ingest;
pub mod server;
