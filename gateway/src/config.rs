//! Configuration, layered with figment: built-in defaults, then the TOML file
//! (`config.toml` at the repository root is the embedded default), then
//! environment variables `XENO__SECTION__KEY` (for example
//! `XENO__SERVER__LISTEN=0.0.0.0:8080`). Unknown keys are errors, so a typo
//! never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use xeno_engine::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub engine: EngineConfig,
    pub webhooks: WebhooksConfig,
    pub customers: CustomersConfig,
    pub bootstrap: BootstrapConfig,
    pub auth: AuthConfig,
    pub audit: AuditConfig,
    /// `[smtp]`: the mail server of account mail; absent: links are logged.
    pub smtp: Option<SmtpSection>,
    /// `[oidc]`: "Sign in with ..." through an OpenID Connect provider; absent:
    /// email and password only.
    pub oidc: Option<OidcSection>,
}

/// `[auth]`: accounts, sessions and access tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens; tokens for another audience are refused.
    pub audience: String,
    /// Lifetime of an access token (a JWT), e.g. "15m".
    pub access_ttl: String,
    /// Lifetime of a session: its refresh token rotates on every use, and the
    /// session ends this long after login.
    pub refresh_ttl: String,
    /// Ed25519 keys (PKCS#8 PEM) that sign access tokens. The first signs;
    /// the others only verify, until `retired_at` plus `access_ttl`. Empty: a
    /// key is generated at the first start under `data_dir/auth/`.
    pub signing_keys: Vec<SigningKeyConfig>,
    /// argon2id memory cost of password hashes, in KiB.
    pub argon2_memory_kib: u32,
    /// argon2id passes.
    pub argon2_iterations: u32,
    /// Failed logins for one email before a lockout (four times as many from
    /// one address).
    pub login_max_failures: u32,
    /// First lockout; each further failure doubles it.
    pub login_backoff: String,
    /// Longest lockout.
    pub login_backoff_max: String,
    /// How long an email verification or password reset link works.
    pub email_token_ttl: String,
    /// How long an invitation link works.
    pub invitation_ttl: String,
    /// Base URL of the links in mails, e.g. "https://xeno.example.com".
    pub public_url: String,
    /// Origins a browser may call the API from (CORS), e.g.
    /// ["https://console.example.com"]. Empty: no cross-origin calls.
    pub cors_origins: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "xeno".into(),
            audience: "xeno-api".into(),
            access_ttl: "15m".into(),
            refresh_ttl: "30d".into(),
            signing_keys: Vec::new(),
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            login_max_failures: 5,
            login_backoff: "1s".into(),
            login_backoff_max: "15m".into(),
            email_token_ttl: "24h".into(),
            invitation_ttl: "7d".into(),
            public_url: "http://127.0.0.1:8080".into(),
            cors_origins: Vec::new(),
        }
    }
}

/// One access-token signing key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    /// Key id, carried in each token's header.
    pub kid: String,
    /// The PEM text (`-----BEGIN PRIVATE KEY-----`), or
    pub pem: Option<String>,
    /// a file holding it (`openssl genpkey -algorithm ed25519`).
    pub file: Option<PathBuf>,
    /// When the key stopped signing (RFC 3339); it verifies until its last
    /// tokens expire.
    pub retired_at: Option<String>,
}

// Hand-written: a logged configuration never shows a private key.
impl std::fmt::Debug for SigningKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyConfig")
            .field("kid", &self.kid)
            .field("pem", &self.pem.as_ref().map(|_| "<redacted>"))
            .field("file", &self.file)
            .field("retired_at", &self.retired_at)
            .finish()
    }
}

/// `[audit]`: the activity feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// How long entries are kept, e.g. "365d".
    pub retention: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: "365d".into(),
        }
    }
}

/// `[smtp]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSection {
    pub host: String,
    pub port: u16,
    /// "none", "starttls" or "tls".
    #[serde(default = "default_smtp_security")]
    pub security: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The sender, e.g. "Xeno <no-reply@example.com>".
    pub from: String,
    #[serde(default = "default_smtp_timeout")]
    pub timeout: String,
}

// Hand-written: a logged configuration never shows the password.
impl std::fmt::Debug for SmtpSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSection")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for OidcSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSection")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("redirect_url", &self.redirect_url)
            .finish_non_exhaustive()
    }
}

fn default_smtp_security() -> String {
    "starttls".into()
}

fn default_smtp_timeout() -> String {
    "10s".into()
}

/// `[oidc]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    /// The provider's issuer URL (its discovery document is
    /// `{issuer}/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Where the provider sends the browser back: this server's
    /// `/api/v1/auth/oidc/callback`.
    pub redirect_url: String,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

/// `[customers]`: customer data, imports and erasure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CustomersConfig {
    /// After a customer is erased (right to be forgotten), events and writes
    /// for its ids are refused for this long, e.g. "30d".
    pub suppression: String,
    /// Largest CSV upload accepted, in bytes.
    pub max_import_bytes: u64,
}

impl Default for CustomersConfig {
    fn default() -> Self {
        CustomersConfig {
            suppression: "30d".into(),
            max_import_bytes: 50 * 1024 * 1024 * 1024,
        }
    }
}

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Events accepted but not yet applied, per partition, beyond which ingest
    /// answers 503 with Retry-After instead of buffering more.
    pub max_pending_events: u32,
    /// Reverse proxies whose `X-Forwarded-For` is believed, as addresses or
    /// CIDR ranges (e.g. ["10.0.0.0/8"]). Empty: the TCP peer is the client
    /// (what the audit log, sessions and the login throttle record).
    pub trusted_proxies: Vec<String>,
}

/// `[storage]`: the embedded store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Folder of the event log and state; created if missing.
    pub data_dir: PathBuf,
    /// Event log partitions (one shard actor each).
    pub partitions: u32,
    /// How long the event log keeps events, e.g. "7d".
    pub log_retention: String,
    /// How often each shard writes a snapshot of its state (a restart replays
    /// the log from the last one).
    pub snapshot_every: String,
}

/// `[engine]`: segment evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Granularity of time-window deadlines, at most "1s".
    pub tick: String,
    /// How long a messageId is remembered for deduplication.
    pub dedup_window: String,
}

/// `[webhooks]`: delivery of segment webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Wait before the first retry; each further retry waits twice as long, at
    /// most an hour.
    pub first_retry: String,
    /// Attempts before a delivery becomes a dead letter (32 with a 5s first
    /// retry spans about a day).
    pub max_attempts: u32,
    /// How long one request may take.
    pub timeout: String,
    /// Requests in flight per endpoint.
    pub max_in_flight: u32,
    /// How long delivered webhooks stay listed (dead letters: ten times as long).
    pub history_retention: String,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            first_retry: "5s".into(),
            max_attempts: 32,
            timeout: "10s".into(),
            max_in_flight: 16,
            history_retention: "3d".into(),
        }
    }
}

/// `[bootstrap]`: what a first start creates so the server is usable at once.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapConfig {
    /// Create the organization and keys below on first start.
    pub enabled: bool,
    /// Slug of the organization.
    pub org: String,
    /// Ingest write key; generated (and logged once) when absent.
    pub write_key: Option<String>,
    /// Admin API key, sent as `Authorization: Bearer <key>`; generated when absent.
    pub admin_api_key: Option<String>,
}

// Hand-written: a logged configuration never shows the keys.
impl std::fmt::Debug for BootstrapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapConfig")
            .field("enabled", &self.enabled)
            .field("org", &self.org)
            .field("write_key", &self.write_key.as_ref().map(|_| "<redacted>"))
            .field(
                "admin_api_key",
                &self.admin_api_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_pending_events: 200_000,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
            partitions: 4,
            log_retention: "7d".into(),
            snapshot_every: "10s".into(),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            tick: "1s".into(),
            dedup_window: "24h".into(),
        }
    }
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            enabled: true,
            org: "demo".into(),
            write_key: None,
            admin_api_key: None,
        }
    }
}

/// A duration of the configuration: what rules accept (`30s`, `5m`, `7d`, ...)
/// plus milliseconds (`100ms`) for ticks and retries.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Some(ms) = text.trim().strip_suffix("ms") {
        return ms
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Duration)
            .ok_or_else(|| format!("`{text}` is not a duration"));
    }
    Duration::parse(text).map_err(|e| e.to_string())
}

/// A configuration that could not be loaded, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Config {
    /// Defaults, then `file` (when given; a missing file is an error), then the
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    reason: format!("{} does not exist", file.display()),
                });
            }
            figment = figment.merge(Toml::file(file));
        }
        let config: Config = figment
            .merge(Env::prefixed("XENO__").split("__"))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let duration = |key: &'static str, text: &str| {
            parse_duration(text).map_err(|e| ConfigError::Invalid { key, reason: e })
        };
        let tick = duration("engine.tick", &self.engine.tick)?;
        if tick.millis() > 1000 {
            return Err(ConfigError::Invalid {
                key: "engine.tick",
                reason: "must be at most 1s".into(),
            });
        }
        duration("engine.dedup_window", &self.engine.dedup_window)?;
        duration("storage.log_retention", &self.storage.log_retention)?;
        duration("customers.suppression", &self.customers.suppression)?;
        let positive = |key: &'static str, text: &str| {
            let d = duration(key, text)?;
            if d.millis() <= 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be positive".into(),
                });
            }
            Ok(d)
        };
        positive("storage.snapshot_every", &self.storage.snapshot_every)?;
        positive("webhooks.first_retry", &self.webhooks.first_retry)?;
        positive("webhooks.timeout", &self.webhooks.timeout)?;
        positive(
            "webhooks.history_retention",
            &self.webhooks.history_retention,
        )?;
        if !(1..=1000).contains(&self.webhooks.max_attempts) {
            return Err(ConfigError::Invalid {
                key: "webhooks.max_attempts",
                reason: "must be 1 to 1000".into(),
            });
        }
        if !(1..=1024).contains(&self.webhooks.max_in_flight) {
            return Err(ConfigError::Invalid {
                key: "webhooks.max_in_flight",
                reason: "must be 1 to 1024".into(),
            });
        }
        if self.server.max_pending_events == 0 {
            return Err(ConfigError::Invalid {
                key: "server.max_pending_events",
                reason: "must be positive".into(),
            });
        }
        if !(1..=1024).contains(&self.storage.partitions) {
            return Err(ConfigError::Invalid {
                key: "storage.partitions",
                reason: "must be 1 to 1024".into(),
            });
        }
        for (key, text) in [
            ("auth.access_ttl", &self.auth.access_ttl),
            ("auth.refresh_ttl", &self.auth.refresh_ttl),
            ("auth.login_backoff", &self.auth.login_backoff),
            ("auth.login_backoff_max", &self.auth.login_backoff_max),
            ("auth.email_token_ttl", &self.auth.email_token_ttl),
            ("auth.invitation_ttl", &self.auth.invitation_ttl),
            ("audit.retention", &self.audit.retention),
        ] {
            positive(key, text)?;
        }
        if duration("auth.access_ttl", &self.auth.access_ttl)?.millis() < 1000 {
            return Err(ConfigError::Invalid {
                key: "auth.access_ttl",
                reason: "must be at least 1s".into(),
            });
        }
        for proxy in &self.server.trusted_proxies {
            crate::api::access::parse_cidr(proxy).map_err(|reason| ConfigError::Invalid {
                key: "server.trusted_proxies",
                reason,
            })?;
        }
        if let Some(smtp) = &self.smtp {
            positive("smtp.timeout", &smtp.timeout)?;
            if !["none", "starttls", "tls"].contains(&smtp.security.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "smtp.security",
                    reason: "must be none, starttls or tls".into(),
                });
            }
        }
        if self.bootstrap.org.is_empty() {
            return Err(ConfigError::Invalid {
                key: "bootstrap.org",
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets masked (their last four
    /// characters kept, so an operator can tell keys apart).
    pub fn show(&self) -> String {
        let mask = |secret: &Option<String>| {
            secret.as_ref().map(|s| {
                let tail: String = s
                    .chars()
                    .rev()
                    .take(4)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                if s.chars().count() > 8 {
                    format!("****{tail}")
                } else {
                    "****".to_string()
                }
            })
        };
        let mut shown = self.clone();
        shown.bootstrap.write_key = mask(&self.bootstrap.write_key);
        shown.bootstrap.admin_api_key = mask(&self.bootstrap.admin_api_key);
        for key in &mut shown.auth.signing_keys {
            if key.pem.is_some() {
                key.pem = Some("****".into());
            }
        }
        if let Some(smtp) = &mut shown.smtp {
            smtp.password = mask(&smtp.password);
        }
        if let Some(oidc) = &mut shown.oidc {
            oidc.client_secret = "****".into();
        }
        toml::to_string(&shown)
            .unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }
}

#[cfg(test)]
// figment's Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_unknown_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "xeno.toml",
                "[server]\nlisten = \"127.0.0.1:9000\"\n[storage]\ndata_dir = \"/tmp/x\"\n",
            )?;
            let from_file = Config::load(Some(Path::new("xeno.toml"))).unwrap();
            assert_eq!(from_file.server.listen.port(), 9000);
            assert_eq!(from_file.storage.data_dir, PathBuf::from("/tmp/x"));
            assert_eq!(from_file.storage.partitions, 4, "defaults fill the rest");

            jail.set_env("XENO__SERVER__LISTEN", "127.0.0.1:9100");
            jail.set_env("XENO__BOOTSTRAP__WRITE_KEY", "wk_0123456789abcdef");
            let from_env = Config::load(Some(Path::new("xeno.toml"))).unwrap();
            assert_eq!(from_env.server.listen.port(), 9100, "env beats the file");
            assert_eq!(
                from_env.bootstrap.write_key.as_deref(),
                Some("wk_0123456789abcdef")
            );

            jail.create_file("typo.toml", "[server]\nlisten_on = \"127.0.0.1:1\"\n")?;
            let err = Config::load(Some(Path::new("typo.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("listen_on"), "{err}");

            jail.create_file("bad.toml", "[engine]\ntick = \"5s\"\n")?;
            let err = Config::load(Some(Path::new("bad.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("engine.tick"), "{err}");
            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn show_masks_secrets() {
        let mut config = Config::default();
        config.bootstrap.write_key = Some("wk_live_0123456789abcdef".into());
        config.bootstrap.admin_api_key = Some("short".into());
        let shown = config.show();
        assert!(!shown.contains("0123456789"), "{shown}");
        assert!(shown.contains("****cdef"), "{shown}");
        assert!(shown.contains("admin_api_key = \"****\""), "{shown}");
        assert!(shown.contains("listen = \"127.0.0.1:8080\""), "{shown}");
        // Debug output (what a careless `?config` would log) hides them too.
        config.smtp = Some(SmtpSection {
            host: "smtp.example.com".into(),
            port: 587,
            security: "starttls".into(),
            username: Some("xeno".into()),
            password: Some("smtp-password-123".into()),
            from: "x@example.com".into(),
            timeout: "10s".into(),
        });
        config.auth.signing_keys.push(SigningKeyConfig {
            kid: "k".into(),
            pem: Some("-----BEGIN PRIVATE KEY-----secret".into()),
            file: None,
            retired_at: None,
        });
        let debug = format!("{config:?}");
        for secret in ["0123456789", "smtp-password-123", "BEGIN PRIVATE KEY"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }

    /// The repository's config.toml is the embedded default: it loads, and says
    /// what the defaults say.
    #[test]
    fn the_repository_config_is_the_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml");
        figment::Jail::expect_with(|_| {
            assert_eq!(Config::load(Some(&path)).unwrap(), Config::default());
            Ok(())
        });
    }
}
