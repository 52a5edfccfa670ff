//! Every piece of Xeno's I/O, behind the engine's ports. So far: the embedded
//! event log ([`embedded`]), the single-machine default, and the signing of
//! outgoing webhooks ([`webhook`]).

pub mod embedded;
pub mod webhook;
