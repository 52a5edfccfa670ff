//! Every piece of Xeno's I/O, behind the engine's ports. So far: the embedded
//! event log ([`embedded`]), the single-machine default.

pub mod embedded;
