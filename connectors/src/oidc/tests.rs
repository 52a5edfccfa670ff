//! The OIDC client against a real provider: panva's `oidc-provider` (npm) on
//! loopback, driven by `gateway/tests/e2e/oidc_provider.mjs`. The test plays
//! the browser: it follows the provider's redirects by hand, keeping its
//! cookies, until the provider sends it back to the redirect URL with a code.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::*;

const CLIENT_ID: &str = "xeno-test";
const CLIENT_SECRET: &str = "a-long-client-secret-for-the-test-provider";
/// Never requested: the test stops at the redirect that points here.
const REDIRECT_URL: &str = "http://127.0.0.1:9/api/auth/oidc/callback";

fn node() -> PathBuf {
    match std::env::var_os("XENO_TEST_NODE") {
        Some(node) if !node.is_empty() => PathBuf::from(node),
        _ => panic!(
            "XENO_TEST_NODE is not set: the OIDC tests log in against a real oidc-provider (npm). \
             Run scripts/test, which runs npm ci in gateway/tests/e2e and exports XENO_TEST_NODE, \
             or set XENO_TEST_NODE to a node binary after `npm ci --prefix gateway/tests/e2e`"
        ),
    }
}

fn free_loopback_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// `oidc_provider.mjs` on loopback; killed on drop.
struct Provider {
    child: Child,
    issuer: String,
}

impl Provider {
    fn start(flags: &[&str]) -> Provider {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/tests/e2e/oidc_provider.mjs");
        let port = free_loopback_port();
        let mut child = Command::new(node())
            .arg(&script)
            .arg(port.to_string())
            .args([CLIENT_ID, CLIENT_SECRET, REDIRECT_URL])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node with XENO_TEST_NODE");
        // The provider's stderr goes through the test's own output capture, so
        // it shows only when a test fails.
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("oidc_provider.mjs: {line}");
            }
        });
        // Wait for the "listening" line; a reader thread keeps draining stdout.
        let stdout = child.stdout.take().expect("stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(issuer) = line.strip_prefix("listening ") {
                    let _ = ready_tx.send(issuer.to_owned());
                }
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(issuer) => Provider { child, issuer },
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                let _ = child.kill();
                panic!(
                    "oidc_provider.mjs did not print `listening` within 30 s (exit: {status:?}); \
                     did `npm ci --prefix gateway/tests/e2e` run? its stderr is in the output above"
                );
            }
        }
    }

    fn config(&self) -> OidcConfig {
        OidcConfig {
            issuer: self.issuer.clone(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            redirect_url: REDIRECT_URL.into(),
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the provider hands the browser back at the redirect URL.
#[derive(Debug)]
struct Callback {
    code: String,
    state: String,
    iss: Option<String>,
}

/// Plays the browser from the authorization URL to the redirect back to us:
/// no redirect following by reqwest, cookies kept by hand (every cookie goes
/// back to the one loopback origin, which is all this provider needs).
async fn browse_to_callback(authorize_url: &Url) -> Callback {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("browser client");
    let mut cookies: BTreeMap<String, String> = BTreeMap::new();
    let mut url = authorize_url.clone();
    for _hop in 0..12 {
        let cookie_header = cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut request = browser.get(url.clone());
        if !cookie_header.is_empty() {
            request = request.header("cookie", cookie_header);
        }
        let response = request.send().await.expect("provider answers");
        for set_cookie in response.headers().get_all("set-cookie") {
            let set_cookie = set_cookie.to_str().expect("ascii set-cookie");
            let (pair, attributes) = set_cookie.split_once(';').unwrap_or((set_cookie, ""));
            let (name, value) = pair.split_once('=').expect("name=value");
            let expired = attributes
                .to_ascii_lowercase()
                .contains("expires=thu, 01 jan 1970");
            if value.is_empty() || expired {
                cookies.remove(name.trim());
            } else {
                cookies.insert(name.trim().to_owned(), value.to_owned());
            }
        }
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().expect("ascii location").to_owned());
        let Some(location) = location.filter(|_| status.is_redirection()) else {
            let body = response.text().await.unwrap_or_default();
            panic!("expected a redirect from {url}, got {status}: {body}");
        };
        let next = url.join(&location).expect("location is a URL");
        if next.as_str().starts_with(REDIRECT_URL) {
            let query: BTreeMap<String, String> = next.query_pairs().into_owned().collect();
            if let Some(error) = query.get("error") {
                panic!(
                    "the provider answered with error {error}: {:?}",
                    query.get("error_description")
                );
            }
            return Callback {
                code: query.get("code").expect("code in the callback").clone(),
                state: query.get("state").expect("state in the callback").clone(),
                iss: query.get("iss").cloned(),
            };
        }
        url = next;
    }
    panic!("no redirect back to {REDIRECT_URL} within 12 hops");
}

/// A full login up to the callback, with the usual state check of the gateway.
async fn login(client: &OidcClient, login_hint: &str) -> (Callback, PendingLogin) {
    let (url, pending) = client.authorize(Some(login_hint));
    let query: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(
        query.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    assert_eq!(
        query.get("login_hint").map(String::as_str),
        Some(login_hint)
    );
    assert_eq!(query.get("state"), Some(&pending.state));
    assert_eq!(query.get("nonce"), Some(&pending.nonce));
    assert!(
        !query.values().any(|v| v == &pending.pkce_verifier),
        "the verifier never leaves the server"
    );

    let callback = browse_to_callback(&url).await;
    assert_eq!(
        callback.state, pending.state,
        "the provider returns our state"
    );
    if let Some(iss) = &callback.iss {
        assert_eq!(iss, client.issuer());
    }
    (callback, pending)
}

#[tokio::test]
async fn a_login_yields_the_verified_identity_with_claims_from_userinfo() {
    // The provider's default for the code flow: the ID token carries only
    // `sub`; email and name come from the userinfo endpoint.
    let provider = Provider::start(&[]);
    let client = OidcClient::discover(&provider.config())
        .await
        .expect("discovery");

    let (callback, pending) = login(&client, "alice@example.com").await;
    let alice = client
        .finish(&callback.code, &pending)
        .await
        .expect("alice logs in");
    assert_eq!(
        alice,
        OidcIdentity {
            issuer: provider.issuer.clone(),
            subject: "alice@example.com".into(),
            email: Some("alice@example.com".into()),
            email_verified: true,
            name: Some("Alice".into()),
        }
    );

    let (callback, pending) = login(&client, "unverified:bob@example.com").await;
    let bob = client
        .finish(&callback.code, &pending)
        .await
        .expect("bob logs in");
    assert_eq!(bob.subject, "unverified:bob@example.com");
    assert_eq!(bob.email.as_deref(), Some("bob@example.com"));
    assert!(
        !bob.email_verified,
        "bob's email is not verified at the provider"
    );
    assert_eq!(bob.name.as_deref(), Some("Bob"));
}

#[tokio::test]
async fn a_login_yields_the_verified_identity_with_claims_in_the_id_token() {
    // As Google does: email and name in the ID token itself.
    let provider = Provider::start(&["--claims-in-id-token"]);
    let client = OidcClient::discover(&provider.config())
        .await
        .expect("discovery");

    let (callback, pending) = login(&client, "alice@example.com").await;
    let alice = client
        .finish(&callback.code, &pending)
        .await
        .expect("alice logs in");
    assert_eq!(alice.subject, "alice@example.com");
    assert_eq!(alice.email.as_deref(), Some("alice@example.com"));
    assert!(alice.email_verified);
    assert_eq!(alice.name.as_deref(), Some("Alice"));

    let (callback, pending) = login(&client, "unverified:carol@example.com").await;
    let carol = client
        .finish(&callback.code, &pending)
        .await
        .expect("carol logs in");
    assert_eq!(carol.email.as_deref(), Some("carol@example.com"));
    assert!(!carol.email_verified);
}

#[tokio::test]
async fn replayed_codes_foreign_nonces_and_wrong_verifiers_are_rejected() {
    let provider = Provider::start(&[]);
    let client = OidcClient::discover(&provider.config())
        .await
        .expect("discovery");

    // A code works once.
    let (callback, pending) = login(&client, "alice@example.com").await;
    client
        .finish(&callback.code, &pending)
        .await
        .expect("first use");
    let replay = client
        .finish(&callback.code, &pending)
        .await
        .expect_err("second use");
    assert!(matches!(replay, OidcError::Rejected(_)), "{replay:?}");

    // The ID token must carry the nonce of this login, not another one's.
    let (callback, pending) = login(&client, "alice@example.com").await;
    let (_, other) = client.authorize(None);
    let foreign_nonce = PendingLogin {
        nonce: other.nonce,
        ..pending
    };
    let error = client
        .finish(&callback.code, &foreign_nonce)
        .await
        .expect_err("foreign nonce");
    assert!(
        matches!(&error, OidcError::Rejected(m) if m.contains("nonce")),
        "{error:?}"
    );

    // A code injected into another login (its own state, verifier and nonce)
    // fails at the token endpoint: PKCE binds the code to its verifier.
    let (attacker_callback, _attacker_pending) = login(&client, "mallory@example.com").await;
    let (_, victim_pending) = client.authorize(Some("alice@example.com"));
    let error = client
        .finish(&attacker_callback.code, &victim_pending)
        .await
        .expect_err("injected code");
    assert!(matches!(error, OidcError::Rejected(_)), "{error:?}");
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn operator_mistakes_are_configuration_errors() {
    let provider = Provider::start(&[]);

    let wrong_secret = OidcConfig {
        client_secret: "not-the-secret".into(),
        ..provider.config()
    };
    let client = OidcClient::discover(&wrong_secret)
        .await
        .expect("discovery needs no secret");
    let (callback, pending) = login(&client, "alice@example.com").await;
    let error = client
        .finish(&callback.code, &pending)
        .await
        .expect_err("wrong secret");
    assert!(matches!(error, OidcError::Config(_)), "{error:?}");

    // The issuer must be spelled as the provider spells it.
    let trailing_slash = OidcConfig {
        issuer: format!("{}/", provider.issuer),
        ..provider.config()
    };
    let error = OidcClient::discover(&trailing_slash)
        .await
        .expect_err("issuer mismatch");
    assert!(matches!(error, OidcError::Config(_)), "{error:?}");

    let not_a_url = OidcConfig {
        redirect_url: "callback".into(),
        ..provider.config()
    };
    assert!(matches!(
        OidcClient::discover(&not_a_url).await,
        Err(OidcError::Config(_))
    ));
}

#[tokio::test]
async fn an_unreachable_provider_is_a_retryable_provider_error() {
    let config = OidcConfig {
        issuer: format!("http://127.0.0.1:{}", free_loopback_port()),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_url: REDIRECT_URL.into(),
        scopes: vec!["openid".into()],
    };
    let error = OidcClient::discover(&config)
        .await
        .expect_err("nobody listens");
    assert!(
        matches!(
            error,
            OidcError::Provider {
                retryable: true,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn the_client_secret_and_verifier_never_show_in_debug_output() {
    let config: OidcConfig = serde_json::from_value(serde_json::json!({
        "issuer": "https://accounts.example.com",
        "client_id": "xeno",
        "client_secret": "very-secret-value",
        "redirect_url": "https://xeno.example.com/callback"
    }))
    .expect("config with default scopes");
    assert_eq!(config.scopes, ["openid", "email", "profile"]);
    assert!(!format!("{config:?}").contains("very-secret-value"));

    let pending = PendingLogin {
        state: "s".into(),
        nonce: "n-secret".into(),
        pkce_verifier: "v-secret".into(),
    };
    let printed = format!("{pending:?}");
    assert!(
        !printed.contains("v-secret") && !printed.contains("n-secret"),
        "{printed}"
    );
}

/// Compile-time only: the gateway keeps the client in shared state and awaits
/// its futures inside axum handlers, which need `Send`.
#[allow(dead_code)]
fn the_client_and_its_futures_can_cross_threads(
    client: &OidcClient,
    config: &OidcConfig,
    pending: &PendingLogin,
) {
    fn shared<T: Send + Sync>(_: &T) {}
    fn sendable<T: Send>(_: T) {}
    shared(client);
    sendable(OidcClient::discover(config));
    sendable(client.finish("code", pending));
}
