//! The real services of the identity tests, on loopback: an SMTP server
//! (`aiosmtpd` from the test venv, writing a maildir) and an OpenID Connect
//! provider (`oidc-provider` from npm, `tests/e2e/oidc_provider.mjs`).

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use serde_json::{Value, json};

use super::{Server, e2e_script, free_loopback_port, python};

/// The password of the test accounts.
pub const PASSWORD: &str = "correct horse battery staple";

/// Signs up with [`PASSWORD`], confirms the address from the mailed link and
/// logs in; returns the token pair.
pub fn account(server: &Server, sink: &SmtpSink, email: &str) -> Value {
    server
        .call(
            "POST",
            "/api/v1/auth/signup",
            None,
            Some(&json!({"email": email, "password": PASSWORD, "name": "Test"})),
        )
        .expect(202, "signup");
    let token = query_value(&sink.wait_for(email, "Confirm your email", 0).body, "token");
    server
        .call(
            "GET",
            &format!("/api/v1/auth/verify-email?token={token}"),
            None,
            None,
        )
        .expect(200, "verify email");
    server
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(&json!({"email": email, "password": PASSWORD})),
        )
        .expect(200, "login")
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before it listened");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within 30 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// One received mail.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub to: String,
    pub subject: String,
    /// The decoded text body.
    pub body: String,
}

/// `aiosmtpd` writing every mail it receives into a maildir.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    maildir: TempDir,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unfold_quoted_printable(text: &str) -> String {
    let joined = text.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mail(raw: &str) -> ReceivedMail {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .or_else(|| raw.split_once("\n\n"))
        .unwrap_or((raw, ""));
    // Unfold continued header lines.
    let head = head.replace("\r\n ", " ").replace("\n ", " ");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let encoding = header("Content-Transfer-Encoding").to_ascii_lowercase();
    let body = match encoding.as_str() {
        "quoted-printable" => unfold_quoted_printable(body),
        "base64" => {
            use base64::Engine as _;
            let compact: String = body.split_whitespace().collect();
            String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .unwrap_or_default(),
            )
            .into_owned()
        }
        _ => body.to_string(),
    };
    ReceivedMail {
        to: header("To"),
        subject: header("Subject"),
        body,
    }
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let maildir = tempfile::Builder::new()
            .prefix("xeno-mail-")
            .tempdir()
            .expect("a maildir");
        let port = free_loopback_port();
        let mut child = Command::new(python())
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir.path().join("box"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd from the test venv (scripts/test installs it)");
        wait_for_port(port, &mut child, "aiosmtpd");
        SmtpSink {
            child,
            port,
            maildir,
        }
    }

    /// The `XENO__SMTP__*` settings that send to this sink.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("XENO__SMTP__HOST", "127.0.0.1".into()),
            ("XENO__SMTP__PORT", self.port.to_string()),
            ("XENO__SMTP__SECURITY", "none".into()),
            ("XENO__SMTP__FROM", "Xeno <no-reply@xeno.test>".into()),
        ]
    }

    /// Every mail received so far.
    pub fn mails(&self) -> Vec<ReceivedMail> {
        let mut paths: Vec<PathBuf> = ["new", "cur"]
            .iter()
            .filter_map(|d| fs::read_dir(self.maildir.path().join("box").join(d)).ok())
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        paths.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
        paths
            .iter()
            .filter_map(|p| fs::read_to_string(p).ok())
            .map(|raw| parse_mail(&raw))
            .collect()
    }

    /// Waits (up to 15 s) for a mail to `to` whose subject contains
    /// `subject`, beyond the first `seen` such mails, and returns it.
    pub fn wait_for(&self, to: &str, subject: &str, seen: usize) -> ReceivedMail {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let matching: Vec<ReceivedMail> = self
                .mails()
                .into_iter()
                .filter(|m| m.to.contains(to) && m.subject.contains(subject))
                .collect();
            if matching.len() > seen {
                return matching[seen].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no mail to {to} about {subject:?} within 15 s; received: {:?}",
                self.mails()
                    .iter()
                    .map(|m| (&m.to, &m.subject))
                    .collect::<Vec<_>>()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many mails to `to` about `subject` arrived.
    pub fn count(&self, to: &str, subject: &str) -> usize {
        self.mails()
            .iter()
            .filter(|m| m.to.contains(to) && m.subject.contains(subject))
            .count()
    }
}

/// The value of `name=` in the first link of `text` that has it.
pub fn query_value(text: &str, name: &str) -> String {
    let start = text
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no `{name}=` in {text}"))
        + name.len()
        + 1;
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect()
}

/// The token of an invitation link in a mail.
pub fn invitation_token(text: &str) -> String {
    let start = text
        .find("/api/v1/invitations/")
        .expect("an invitation link")
        + "/api/v1/invitations/".len();
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect()
}

/// `oidc-provider` on loopback (see `tests/e2e/oidc_provider.mjs`).
pub struct OidcProvider {
    child: Child,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    /// Starts the provider for a client whose redirect URI is `redirect_uri`.
    pub fn start(redirect_uri: &str) -> OidcProvider {
        let node = std::env::var("XENO_TEST_NODE").unwrap_or_else(|_| {
            panic!("XENO_TEST_NODE is not set: run scripts/test, which installs oidc-provider (npm ci) and exports it")
        });
        let port = free_loopback_port();
        let (client_id, client_secret) = (
            "xeno-test".to_string(),
            "xeno-test-secret-0123456789".to_string(),
        );
        let mut child = Command::new(node)
            .arg(e2e_script("oidc_provider.mjs"))
            .args([
                port.to_string(),
                client_id.clone(),
                client_secret.clone(),
                redirect_uri.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OIDC provider");
        wait_for_port(port, &mut child, "oidc-provider");
        OidcProvider {
            child,
            issuer: format!("http://127.0.0.1:{port}"),
            client_id,
            client_secret,
        }
    }

    pub fn settings(&self, redirect_uri: &str) -> Vec<(&'static str, String)> {
        vec![
            ("XENO__OIDC__ISSUER", self.issuer.clone()),
            ("XENO__OIDC__CLIENT_ID", self.client_id.clone()),
            ("XENO__OIDC__CLIENT_SECRET", self.client_secret.clone()),
            ("XENO__OIDC__REDIRECT_URL", redirect_uri.to_string()),
        ]
    }
}
