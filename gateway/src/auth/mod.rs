//! Identity at the edge: access tokens, password hashing, login throttling,
//! the mail the account flows send, and OIDC login. The durable records
//! (users, sessions, memberships, invitations, keys) live in the actors'
//! identity layer; this module holds the secrets and the crypto.

pub mod jwt;
pub mod password;
pub mod throttle;

use std::sync::Arc;
use std::time::Duration;

use xeno_connectors::mail::{Mail, SmtpConfig, SmtpMailer, SmtpSecurity};
use xeno_connectors::oidc::{OidcClient, OidcConfig};

use crate::config::Config;

/// Everything the account and access routes need.
pub struct Auth {
    pub tokens: jwt::TokenKeys,
    pub passwords: password::Passwords,
    /// Bounds the argon2 hashes running at once (one per core).
    pub hashing: tokio::sync::Semaphore,
    pub throttle: throttle::LoginThrottle,
    pub mail: Outbox,
    /// OIDC login, when configured (discovered lazily: the provider may be
    /// down when Xeno starts).
    pub oidc: Option<OidcLogin>,
    pub refresh_ttl_ms: i64,
    pub email_token_ttl_ms: i64,
    pub invitation_ttl_ms: i64,
    /// Base URL of the links in mails.
    pub public_url: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// The configured OIDC provider; its discovery document is fetched on first
/// use and kept.
pub struct OidcLogin {
    pub config: OidcConfig,
    client: tokio::sync::OnceCell<Arc<OidcClient>>,
}

impl OidcLogin {
    pub async fn client(&self) -> Result<Arc<OidcClient>, xeno_connectors::oidc::OidcError> {
        self.client
            .get_or_try_init(|| async { OidcClient::discover(&self.config).await.map(Arc::new) })
            .await
            .cloned()
    }
}

impl Auth {
    pub fn from_config(config: &Config) -> anyhow::Result<Auth> {
        let auth = &config.auth;
        let ms = |text: &str| -> anyhow::Result<i64> {
            Ok(crate::config::parse_duration(text)
                .map_err(anyhow::Error::msg)?
                .millis())
        };
        let access_ttl_ms = ms(&auth.access_ttl)?;
        let tokens = jwt::TokenKeys::load(auth, &config.storage.data_dir, access_ttl_ms / 1000)?;
        let mail = match &config.smtp {
            Some(smtp) => {
                let security = match smtp.security.as_str() {
                    "none" => SmtpSecurity::None,
                    "tls" => SmtpSecurity::Tls,
                    _ => SmtpSecurity::Starttls,
                };
                let settings = SmtpConfig {
                    host: smtp.host.clone(),
                    port: smtp.port,
                    security,
                    username: smtp.username.clone(),
                    password: smtp.password.clone(),
                    from: smtp.from.clone(),
                    timeout_ms: ms(&smtp.timeout)?.max(1) as u64,
                };
                Outbox::Smtp(Arc::new(
                    SmtpMailer::new(&settings).map_err(|e| anyhow::anyhow!("smtp: {e}"))?,
                ))
            }
            None => Outbox::Log,
        };
        Ok(Auth {
            tokens,
            passwords: password::Passwords::new(auth.argon2_memory_kib, auth.argon2_iterations)?,
            hashing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            throttle: throttle::LoginThrottle::new(
                auth.login_max_failures,
                Duration::from_millis(ms(&auth.login_backoff)?.max(1) as u64),
                Duration::from_millis(ms(&auth.login_backoff_max)?.max(1) as u64),
            ),
            mail,
            oidc: config.oidc.as_ref().map(|o| OidcLogin {
                config: OidcConfig {
                    issuer: o.issuer.clone(),
                    client_id: o.client_id.clone(),
                    client_secret: o.client_secret.clone(),
                    redirect_url: o.redirect_url.clone(),
                    scopes: o.scopes.clone(),
                },
                client: tokio::sync::OnceCell::new(),
            }),
            refresh_ttl_ms: ms(&auth.refresh_ttl)?,
            email_token_ttl_ms: ms(&auth.email_token_ttl)?,
            invitation_ttl_ms: ms(&auth.invitation_ttl)?,
            public_url: auth.public_url.trim_end_matches('/').to_string(),
        })
    }
}

/// Where account mail goes: an SMTP server, or (with none configured) the
/// log, so a single binary on a laptop still shows the links.
pub enum Outbox {
    Smtp(Arc<SmtpMailer>),
    Log,
}

impl Outbox {
    /// Sends in the background: an answer never waits on (or reveals, by its
    /// timing) a mail server.
    pub fn send(&self, mail: Mail) {
        match self {
            Outbox::Smtp(mailer) => {
                let mailer = mailer.clone();
                tokio::spawn(async move {
                    if let Err(e) = mailer.send(&mail).await {
                        tracing::warn!(subject = %mail.subject, error = %e, "account mail not sent");
                    }
                });
            }
            Outbox::Log => {
                tracing::warn!(
                    to = %mail.to, subject = %mail.subject, body = %mail.text,
                    "no SMTP server configured; the mail is logged instead of sent"
                );
            }
        }
    }
}

/// A new secret: `prefix` then 40 random characters of a-z, A-Z, 0-9 (the
/// generator of machine keys).
pub fn random_secret(prefix: &str) -> String {
    xeno_actors::identity::new_secret(prefix).expect("the OS has randomness")
}

/// How a secret is stored: SHA-256, hex, as machine keys are. Secrets are
/// random and long, so a fast hash is enough (passwords use argon2id).
pub use xeno_actors::catalog::hash_key as hash_secret;

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
