//! The SMTP side of mail: one plain-text message per [`SmtpMailer::send`], over
//! a connection pool kept by lettre. Implicit TLS (`tls`, usually port 465),
//! STARTTLS that must succeed (`starttls`, usually 587) or plain text (`none`,
//! for a relay on loopback or inside a trusted network).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

/// How to reach the mail server (`[mail.smtp]` in `config.toml`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Host name of the SMTP server; with TLS it is also the name the
    /// server's certificate must carry.
    pub host: String,
    /// TCP port: 465 for `tls`, 587 for `starttls`, 25 for a plain relay.
    pub port: u16,
    /// Transport security, see [`SmtpSecurity`].
    pub security: SmtpSecurity,
    /// User name for SMTP AUTH; set it together with `password`, or neither.
    pub username: Option<String>,
    /// Password for SMTP AUTH. Never printed: `Debug` shows `<redacted>`.
    pub password: Option<String>,
    /// The `From:` mailbox, e.g. `Xeno <noreply@example.com>`.
    pub from: String,
    /// Limit for each network step (connect, TLS handshake, each command), in
    /// milliseconds.
    pub timeout_ms: u64,
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// Transport security towards the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain text. Credentials are refused unless the server is on loopback.
    None,
    /// Plain connection upgraded with STARTTLS; sending fails if the server
    /// does not offer it.
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

/// One message to send.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The recipient's address, e.g. `alice@example.com` or `Alice <alice@example.com>`.
    pub to: String,
    pub subject: String,
    /// The plain-text body (UTF-8; lettre picks the transfer encoding).
    pub text: String,
}

/// Why a mail was not sent, and whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The operator's `[mail.smtp]` settings are unusable; fix the config.
    #[error("smtp configuration: {0}")]
    Config(String),
    /// The message cannot be built, usually a malformed recipient address
    /// (the customer's data); retrying the same mail cannot help.
    #[error("mail address: {0}")]
    Address(String),
    /// The server or the network refused or failed. `retryable` is true for
    /// transient SMTP replies (4xx), timeouts and connection failures, false
    /// for permanent replies (5xx, e.g. an unknown mailbox or rejected
    /// credentials) and TLS failures.
    #[error("smtp transport: {message}")]
    Transport { message: String, retryable: bool },
}

impl MailError {
    /// Whether sending the same mail again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            MailError::Transport {
                retryable: true,
                ..
            }
        )
    }
}

/// Sends mail through one SMTP server. Cheap to share: the transport keeps a
/// pool of connections and reuses them across calls.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    host: String,
}

impl fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("host", &self.host)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpMailer {
    /// Checks the settings and prepares the transport; connects on the first
    /// [`send`](Self::send), not here.
    pub fn new(config: &SmtpConfig) -> Result<SmtpMailer, MailError> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| MailError::Config(format!("from {:?}: {e}", config.from)))?;
        if config.host.is_empty() {
            return Err(MailError::Config("host is empty".into()));
        }
        if config.timeout_ms == 0 {
            return Err(MailError::Config("timeout_ms must be positive".into()));
        }
        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(password)) => Some(Credentials::new(user.clone(), password.clone())),
            (None, None) => None,
            _ => {
                return Err(MailError::Config(
                    "username and password go together: set both or neither".into(),
                ));
            }
        };
        if credentials.is_some()
            && config.security == SmtpSecurity::None
            && !is_loopback(&config.host)
        {
            return Err(MailError::Config(format!(
                "refusing to send the smtp password in plain text to {}: use security = \"starttls\" or \"tls\"",
                config.host
            )));
        }

        let tls = match config.security {
            SmtpSecurity::None => Tls::None,
            SmtpSecurity::Starttls => Tls::Required(tls_parameters(&config.host)?),
            SmtpSecurity::Tls => Tls::Wrapper(tls_parameters(&config.host)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(Duration::from_millis(config.timeout_ms)));
        if let Some(credentials) = credentials {
            builder = builder.credentials(credentials);
        }
        Ok(SmtpMailer {
            transport: builder.build(),
            from,
            host: config.host.clone(),
        })
    }

    /// Sends one message and waits for the server to accept it.
    pub async fn send(&self, mail: &Mail) -> Result<(), MailError> {
        let result = self.try_send(mail).await;
        // The recipient's domain, not the address: logs are not a mailing list.
        let domain = mail
            .to
            .rsplit('@')
            .next()
            .unwrap_or("")
            .trim_end_matches('>');
        match &result {
            Ok(()) => {
                metrics::counter!("xeno_mail_sent_total", "outcome" => "sent").increment(1);
                tracing::debug!(host = %self.host, recipient_domain = %domain, "mail sent");
            }
            Err(e) => {
                let outcome = match e {
                    MailError::Transport {
                        retryable: true, ..
                    } => "retryable",
                    _ => "failed",
                };
                metrics::counter!("xeno_mail_sent_total", "outcome" => outcome).increment(1);
                tracing::warn!(host = %self.host, recipient_domain = %domain, retryable = e.is_retryable(), error = %e, "mail not sent");
            }
        }
        result
    }

    async fn try_send(&self, mail: &Mail) -> Result<(), MailError> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|e| MailError::Address(format!("to {:?}: {e}", mail.to)))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.as_str())
            .header(ContentType::TEXT_PLAIN)
            .body(mail.text.clone())
            .map_err(|e| MailError::Address(e.to_string()))?;
        self.transport
            .send(message)
            .await
            .map(|_response| ())
            .map_err(|e| MailError::Transport {
                retryable: !(e.is_permanent()
                    || e.is_client()
                    || e.is_tls()
                    || e.is_transport_shutdown()),
                message: error_chain(&e),
            })
    }
}

fn tls_parameters(host: &str) -> Result<TlsParameters, MailError> {
    TlsParameters::new(host.to_owned())
        .map_err(|e| MailError::Config(format!("tls for {host}: {e}")))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// lettre's top-level messages are terse ("network error"); the cause is in
/// the source chain.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
