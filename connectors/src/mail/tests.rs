//! The SMTP channel against a real server: `aiosmtpd` (PyPI) on loopback,
//! storing what it receives in a maildir that Python's own `email` package
//! reads back, so encoding mistakes on our side show up as wrong text.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

fn python() -> PathBuf {
    match std::env::var_os("XENO_TEST_PYTHON") {
        Some(python) if !python.is_empty() => PathBuf::from(python),
        _ => panic!(
            "XENO_TEST_PYTHON is not set: the SMTP tests send to a real aiosmtpd server. Run \
             scripts/test, which installs scripts/test-requirements.txt into a venv and exports \
             XENO_TEST_PYTHON, or set XENO_TEST_PYTHON to a python with aiosmtpd installed"
        ),
    }
}

/// A port that was free a moment ago (bound on port 0, then released).
fn free_loopback_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// aiosmtpd storing every message in `maildir`; killed on drop.
struct SmtpServer {
    child: Child,
    port: u16,
}

impl SmtpServer {
    fn start(maildir: &Path) -> SmtpServer {
        let port = free_loopback_port();
        let child = Command::new(python())
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aiosmtpd with XENO_TEST_PYTHON");
        let mut server = SmtpServer { child, port };
        server.wait_until_accepting();
        server
    }

    fn wait_until_accepting(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("poll aiosmtpd") {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                panic!(
                    "aiosmtpd exited with {status} before listening (is aiosmtpd installed?): {stderr}"
                );
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen on port {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message as Python's `email` package decodes it from the maildir.
#[derive(Debug, serde::Deserialize)]
struct Received {
    envelope_to: String,
    from: String,
    to: String,
    subject: String,
    content_type: String,
    body: String,
}

fn received(maildir: &Path) -> Vec<Received> {
    const READER: &str = r#"
import email, email.policy, json, mailbox, sys
box = mailbox.Maildir(sys.argv[1], create=False)
out = []
for key in box.keys():
    m = email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
    out.append({
        "envelope_to": m["X-RcptTo"], "from": str(m["From"]), "to": str(m["To"]),
        "subject": str(m["Subject"]), "content_type": m.get_content_type(),
        "body": m.get_content(),
    })
print(json.dumps(out))
"#;
    let output = Command::new(python())
        .args(["-c", READER])
        .arg(maildir)
        .output()
        .expect("run the maildir reader");
    assert!(
        output.status.success(),
        "maildir reader failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("maildir reader prints JSON")
}

fn config(port: u16) -> SmtpConfig {
    SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        security: SmtpSecurity::None,
        username: None,
        password: None,
        from: "Xeno <noreply@xeno.test>".into(),
        timeout_ms: 5_000,
    }
}

#[tokio::test]
async fn a_sent_mail_arrives_with_its_recipient_subject_and_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let maildir = dir.path().join("maildir");
    let server = SmtpServer::start(&maildir);
    let mailer = SmtpMailer::new(&config(server.port)).expect("mailer");

    let text = "Hello Zoë,\n\nyour export is ready: 3 files, 12 MB.\nSee you soon\n";
    mailer
        .send(&Mail {
            to: "zoe@example.com".into(),
            subject: "Your export is ready ✓".into(),
            text: text.into(),
        })
        .await
        .expect("first mail");
    // A second send goes over the pooled connection and must arrive too.
    mailer
        .send(&Mail {
            to: "Bob <bob@example.org>".into(),
            subject: "Second".into(),
            text: "plain ascii".into(),
        })
        .await
        .expect("second mail");

    let mut mails = received(&maildir);
    mails.sort_by(|a, b| a.subject.cmp(&b.subject));
    assert_eq!(mails.len(), 2, "{mails:?}");
    let (second, first) = (&mails[0], &mails[1]);

    assert_eq!(first.envelope_to, "zoe@example.com");
    assert_eq!(first.to, "zoe@example.com");
    assert_eq!(first.from, "Xeno <noreply@xeno.test>");
    assert_eq!(first.subject, "Your export is ready ✓");
    assert_eq!(first.content_type, "text/plain");
    assert_eq!(first.body.replace("\r\n", "\n").trim_end(), text.trim_end());

    assert_eq!(second.envelope_to, "bob@example.org");
    assert_eq!(second.to, "Bob <bob@example.org>");
    assert_eq!(second.body.replace("\r\n", "\n").trim_end(), "plain ascii");
}

#[tokio::test]
async fn a_malformed_recipient_is_the_data_s_fault_and_not_retryable() {
    // Nothing listens: the address must be refused before any connection.
    let mailer = SmtpMailer::new(&config(free_loopback_port())).expect("mailer");
    let error = mailer
        .send(&Mail {
            to: "not an address".into(),
            subject: "s".into(),
            text: "t".into(),
        })
        .await
        .expect_err("malformed address");
    assert!(matches!(error, MailError::Address(_)), "{error:?}");
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn an_unreachable_server_is_a_retryable_transport_error() {
    let mailer = SmtpMailer::new(&config(free_loopback_port())).expect("mailer");
    let error = mailer
        .send(&Mail {
            to: "a@example.com".into(),
            subject: "s".into(),
            text: "t".into(),
        })
        .await
        .expect_err("nobody listens");
    assert!(
        matches!(
            error,
            MailError::Transport {
                retryable: true,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn configuration_mistakes_are_reported_before_any_connection() {
    let half_credentials = SmtpConfig {
        username: Some("user".into()),
        ..config(25)
    };
    assert!(matches!(
        SmtpMailer::new(&half_credentials),
        Err(MailError::Config(_))
    ));

    let clear_text_password = SmtpConfig {
        host: "smtp.example.com".into(),
        username: Some("user".into()),
        password: Some("hunter2".into()),
        ..config(25)
    };
    assert!(matches!(
        SmtpMailer::new(&clear_text_password),
        Err(MailError::Config(_))
    ));

    let bad_from = SmtpConfig {
        from: "nobody".into(),
        ..config(25)
    };
    assert!(matches!(
        SmtpMailer::new(&bad_from),
        Err(MailError::Config(_))
    ));
}

#[test]
fn the_password_never_shows_in_debug_output() {
    let with_password = SmtpConfig {
        username: Some("mailer".into()),
        password: Some("s3cr3t-passw0rd".into()),
        security: SmtpSecurity::Starttls,
        ..config(587)
    };
    let printed = format!("{with_password:?}");
    assert!(!printed.contains("s3cr3t-passw0rd"), "{printed}");
    assert!(
        printed.contains("mailer") && printed.contains("<redacted>"),
        "{printed}"
    );
}

#[test]
fn the_config_reads_from_toml_like_keys() {
    let config: SmtpConfig = serde_json::from_value(serde_json::json!({
        "host": "smtp.example.com", "port": 465, "security": "tls",
        "from": "noreply@example.com", "timeout_ms": 10000
    }))
    .expect("config");
    assert_eq!(config.security, SmtpSecurity::Tls);
    assert!(config.username.is_none() && config.password.is_none());
    let unknown = serde_json::from_value::<SmtpConfig>(serde_json::json!({
        "host": "h", "port": 25, "security": "none", "from": "a@b.c", "timeout_ms": 1, "tls": true
    }));
    assert!(unknown.is_err(), "unknown keys are refused");
}

/// Compile-time only: dispatchers share one mailer and await `send` on any
/// runtime thread.
#[allow(dead_code)]
fn the_mailer_and_its_futures_can_cross_threads(mailer: &SmtpMailer, mail: &Mail) {
    fn shared<T: Send + Sync>(_: &T) {}
    fn sendable<T: Send>(_: T) {}
    shared(mailer);
    sendable(mailer.send(mail));
}
