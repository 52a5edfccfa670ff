//! Xeno's HTTP edge and the `xeno` binary. So far: the layered configuration
//! ([`config`], `xeno config show`) and the decoding of Segment HTTP Tracking
//! API requests ([`ingest`]); the axum server, the management API and
//! `xeno serve` arrive with the rest of the single-node runtime.

pub mod config;
pub mod ingest;
