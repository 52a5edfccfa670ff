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
    pub bootstrap: BootstrapConfig,
}

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
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

/// `[bootstrap]`: what a first start creates so the server is usable at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
            partitions: 4,
            log_retention: "7d".into(),
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
            Duration::parse(text).map_err(|e| ConfigError::Invalid {
                key,
                reason: e.to_string(),
            })
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
        if !(1..=1024).contains(&self.storage.partitions) {
            return Err(ConfigError::Invalid {
                key: "storage.partitions",
                reason: "must be 1 to 1024".into(),
            });
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
