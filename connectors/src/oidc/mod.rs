//! OpenID Connect login against an external identity provider (Google,
//! Keycloak, Entra ID, ...): discovery, the authorization code flow with PKCE,
//! and verification of the ID token ([`client`]). Sessions, account linking and
//! the HTTP routes live in the gateway.

pub mod client;

#[cfg(test)]
mod tests;

pub use client::{OidcClient, OidcConfig, OidcError, OidcIdentity, PendingLogin};
/// The URL type of [`OidcClient::authorize`] (the `url` crate, re-exported).
pub use openidconnect::url::Url;
