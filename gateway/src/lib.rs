//! Xeno's HTTP edge. So far: decoding and normalising requests of the Segment
//! HTTP Tracking API ([`ingest`]); the axum server, the management API and the
//! `xeno` binary arrive with the single-node runtime.

pub mod ingest;
