//! Every piece of Xeno's I/O, behind the engine's ports. So far: the embedded
//! event log and state store ([`embedded`]), the single-machine default,
//! outgoing webhooks ([`webhook`]) and mail ([`mail`]), and OpenID Connect
//! login against an external identity provider ([`oidc`]).

pub mod embedded;
pub mod mail;
pub mod oidc;
pub mod webhook;
