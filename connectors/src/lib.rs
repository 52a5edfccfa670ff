//! Every piece of Xeno's I/O, behind the engine's ports. So far: the embedded
//! event log and state store ([`embedded`]), the single-machine default, and
//! outgoing webhooks ([`webhook`]).

pub mod embedded;
pub mod webhook;
