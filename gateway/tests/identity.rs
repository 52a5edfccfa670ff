//! Identity end to end against a real `xeno serve`, a real SMTP server
//! (aiosmtpd) and a real OIDC provider (oidc-provider): accounts, email
//! verification, login throttling, refresh rotation with reuse detection,
//! sessions, password reset, organizations, members, invitations, machine
//! keys, the audit log, token forgery, CORS, and what the log must never say.

mod common;

use std::time::Duration;

use common::services::{OidcProvider, PASSWORD, SmtpSink, account, invitation_token, query_value};
use common::{Server, free_loopback_port};
use serde_json::{Value, json};

fn login(server: &Server, email: &str, password: &str) -> common::Reply {
    server.call(
        "POST",
        "/api/v1/auth/login",
        None,
        Some(&json!({"email": email, "password": password})),
    )
}

fn access(tokens: &Value) -> String {
    tokens["access_token"]
        .as_str()
        .expect("an access token")
        .to_string()
}

/// A server mailing through `sink`, logging at debug level (the log checks
/// then cover more than production's default `info`).
fn smtp_server(sink: &SmtpSink, extra: &[(&'static str, String)]) -> Server {
    let mut env = sink.settings();
    env.push(("RUST_LOG", "debug".into()));
    env.extend_from_slice(extra);
    Server::start_with(&env)
}

/// Nothing secret appears in the server's log.
fn assert_log_clean(server: &Server, secrets: &[String]) {
    let log = server.log();
    assert!(
        !log.is_empty(),
        "the server log is empty: the check would prove nothing"
    );
    for secret in secrets {
        assert!(
            secret.len() >= 8,
            "a secret to look for is too short: {secret}"
        );
        assert!(
            !log.contains(secret.as_str()),
            "the server log contains a secret ({}…)",
            &secret[..8]
        );
    }
    assert!(
        !log.contains("$argon2"),
        "the server log contains a password hash"
    );
    assert!(
        !log.contains("xeno_rt_"),
        "the server log contains a refresh token"
    );
    assert!(
        !log.contains("xeno_ak_") && !log.contains("xeno_wk_"),
        "the server log contains a key secret"
    );
}

#[test]
fn accounts_sessions_refresh_rotation_and_password_reset() {
    let sink = SmtpSink::start();
    let server = smtp_server(&sink, &[]);
    let email = "ada@example.com";
    let mut secrets = vec![PASSWORD.to_string()];

    // Sign-up answers the same whether the email has an account or not.
    let first = server.call(
        "POST",
        "/api/v1/auth/signup",
        None,
        Some(&json!({"email": "Ada@Example.com", "password": PASSWORD})),
    );
    assert_eq!(first.status, 202, "{}", first.body);
    let again = server.call(
        "POST",
        "/api/v1/auth/signup",
        None,
        Some(&json!({"email": email, "password": "another password!"})),
    );
    assert_eq!(
        (again.status, &again.body),
        (first.status, &first.body),
        "a repeated sign-up must look like a first one"
    );
    sink.wait_for(email, "Someone tried to sign up", 0);
    let weak = server.call(
        "POST",
        "/api/v1/auth/signup",
        None,
        Some(&json!({"email": "x@example.com", "password": "short"})),
    );
    assert_eq!(weak.status, 422, "{}", weak.body);
    assert!(weak.body.contains("/password"), "{}", weak.body);
    let bad_email = server.call(
        "POST",
        "/api/v1/auth/signup",
        None,
        Some(&json!({"email": "not-an-email", "password": PASSWORD})),
    );
    assert_eq!(bad_email.status, 422, "{}", bad_email.body);

    // No login before the address is confirmed; the link works once.
    assert_eq!(login(&server, email, PASSWORD).status, 403);
    let mail = sink.wait_for(email, "Confirm your email", 0);
    let verify = query_value(&mail.body, "token");
    secrets.push(verify.clone());
    server
        .call(
            "GET",
            &format!("/api/v1/auth/verify-email?token={verify}"),
            None,
            None,
        )
        .expect(200, "verify");
    assert_eq!(
        server
            .call(
                "GET",
                &format!("/api/v1/auth/verify-email?token={verify}"),
                None,
                None
            )
            .status,
        400,
        "a used link"
    );

    let tokens = login(&server, email, PASSWORD).expect(200, "login");
    assert_eq!(tokens["token_type"], "Bearer");
    let me = server
        .call("GET", "/api/v1/me", Some(&access(&tokens)), None)
        .expect(200, "me");
    assert_eq!(me["email"], email);
    assert_eq!(me["email_verified"], true);

    // Refresh rotates; a spent refresh token presented again revokes the
    // whole family (the newest refresh token and every access token of it).
    let refresh1 = tokens["refresh_token"].as_str().unwrap().to_string();
    assert!(refresh1.starts_with("xeno_rt_"));
    let rotated = server
        .call(
            "POST",
            "/api/v1/auth/refresh",
            None,
            Some(&json!({"refresh_token": refresh1})),
        )
        .expect(200, "refresh");
    let refresh2 = rotated["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh1, refresh2);
    assert_eq!(
        rotated["session_id"], tokens["session_id"],
        "the same session"
    );
    server
        .call("GET", "/api/v1/me", Some(&access(&rotated)), None)
        .expect(200, "me with the refreshed token");
    let reuse = server.call(
        "POST",
        "/api/v1/auth/refresh",
        None,
        Some(&json!({"refresh_token": refresh1})),
    );
    assert_eq!(reuse.status, 401, "{}", reuse.body);
    assert_eq!(
        server
            .call(
                "POST",
                "/api/v1/auth/refresh",
                None,
                Some(&json!({"refresh_token": refresh2}))
            )
            .status,
        401,
        "the family is revoked"
    );
    assert_eq!(
        server
            .call("GET", "/api/v1/me", Some(&access(&rotated)), None)
            .status,
        401,
        "its access tokens too"
    );
    secrets.extend([refresh1, refresh2, access(&tokens), access(&rotated)]);

    // Sessions: list, revoke another, logout.
    let phone = login(&server, email, PASSWORD).expect(200, "login on a phone");
    let laptop = login(&server, email, PASSWORD).expect(200, "login on a laptop");
    let sessions = server
        .call("GET", "/api/v1/me/sessions", Some(&access(&laptop)), None)
        .expect(200, "sessions");
    let items = sessions["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "two live sessions: {sessions}");
    assert_eq!(items.iter().filter(|s| s["current"] == true).count(), 1);
    let phone_session = phone["session_id"].as_str().unwrap();
    server
        .call(
            "DELETE",
            &format!("/api/v1/me/sessions/{phone_session}"),
            Some(&access(&laptop)),
            None,
        )
        .expect(204, "revoke the phone's session");
    assert_eq!(
        server
            .call("GET", "/api/v1/me", Some(&access(&phone)), None)
            .status,
        401,
        "a revoked session's token"
    );
    assert_eq!(
        server
            .call(
                "POST",
                "/api/v1/auth/refresh",
                None,
                Some(&json!({"refresh_token": phone["refresh_token"]}))
            )
            .status,
        401
    );
    server
        .call("POST", "/api/v1/auth/logout", Some(&access(&laptop)), None)
        .expect(204, "logout");
    assert_eq!(
        server
            .call("GET", "/api/v1/me", Some(&access(&laptop)), None)
            .status,
        401,
        "after logout"
    );
    secrets.extend([
        access(&phone),
        access(&laptop),
        phone["refresh_token"].as_str().unwrap().into(),
        laptop["refresh_token"].as_str().unwrap().into(),
    ]);

    // Password reset: the same answer for an unknown email; the link is
    // single use; every session ends; the old password stops working.
    let live = login(&server, email, PASSWORD).expect(200, "login");
    let unknown = server.call(
        "POST",
        "/api/v1/auth/password/forgot",
        None,
        Some(&json!({"email": "nobody@example.com"})),
    );
    let known = server.call(
        "POST",
        "/api/v1/auth/password/forgot",
        None,
        Some(&json!({"email": email})),
    );
    assert_eq!((unknown.status, &unknown.body), (known.status, &known.body));
    assert_eq!(known.status, 202);
    let reset_mail = sink.wait_for(email, "Reset your Xeno password", 0);
    let reset = query_value(&reset_mail.body, "token");
    secrets.push(reset.clone());
    let new_password = "a brand new passphrase";
    server
        .call(
            "POST",
            "/api/v1/auth/password/reset",
            None,
            Some(&json!({"token": reset, "password": new_password})),
        )
        .expect(200, "reset");
    assert_eq!(
        server
            .call(
                "POST",
                "/api/v1/auth/password/reset",
                None,
                Some(&json!({"token": reset, "password": new_password}))
            )
            .status,
        400,
        "a used reset token"
    );
    assert_eq!(
        server
            .call("GET", "/api/v1/me", Some(&access(&live)), None)
            .status,
        401,
        "sessions end at a reset"
    );
    assert_eq!(login(&server, email, PASSWORD).status, 401);
    let fresh = login(&server, email, new_password).expect(200, "login with the new password");
    secrets.extend([new_password.to_string(), access(&live), access(&fresh)]);

    // The account's security events.
    let events = server
        .call(
            "GET",
            "/api/v1/me/security-events?limit=1000",
            Some(&access(&fresh)),
            None,
        )
        .expect(200, "events");
    let actions: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for wanted in [
        "user.signed_up",
        "user.email_verified",
        "user.logged_in",
        "user.login_failed",
        "session.reuse_detected",
        "session.revoked",
        "user.logged_out",
        "user.password_reset_requested",
        "user.password_reset",
    ] {
        assert!(actions.contains(&wanted), "no {wanted} among {actions:?}");
    }
    let failed = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "user.login_failed")
        .unwrap();
    assert_eq!(failed["ip"], "127.0.0.1");

    assert_log_clean(&server, &secrets);
}

#[test]
fn login_is_throttled_and_does_not_reveal_accounts() {
    let sink = SmtpSink::start();
    let server = smtp_server(
        &sink,
        &[
            ("XENO__AUTH__LOGIN_MAX_FAILURES", "3".into()),
            ("XENO__AUTH__LOGIN_BACKOFF", "2s".into()),
        ],
    );
    let email = "grace@example.com";
    account(&server, &sink, email);

    let wrong = login(&server, email, "not the password");
    let unknown = login(&server, "nobody@example.com", "not the password");
    assert_eq!(wrong.status, 401);
    assert_eq!(
        (wrong.status, &wrong.body),
        (unknown.status, &unknown.body),
        "an unknown email must look like a wrong password"
    );

    assert_eq!(login(&server, email, "still wrong").status, 401);
    let third = server.call_headers(
        "POST",
        "/api/v1/auth/login",
        &[],
        Some(&json!({"email": email, "password": "wrong again"})),
    );
    assert_eq!(
        third.0, 429,
        "the third failure starts a lockout: {}",
        third.2
    );
    let wait: u64 = third
        .1
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(wait, 2, "the first lockout is login_backoff");
    // Locked: even the right password waits.
    assert_eq!(login(&server, email, PASSWORD).status, 429);
    std::thread::sleep(Duration::from_secs(wait) + Duration::from_millis(200));
    // The backoff doubles with each failure past the limit.
    let (status, headers, _) = server.call_headers(
        "POST",
        "/api/v1/auth/login",
        &[],
        Some(&json!({"email": email, "password": "wrong"})),
    );
    assert_eq!(status, 429);
    let longer: u64 = headers
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(longer, 4, "the lockout doubles");
    std::thread::sleep(Duration::from_secs(longer) + Duration::from_millis(200));
    login(&server, email, PASSWORD).expect(200, "after the backoff");
    // A success clears the count: one wrong password is just a 401 again.
    assert_eq!(login(&server, email, "wrong").status, 401);
}

/// Tokens a forger could make: every one is refused.
#[test]
fn forged_expired_and_revoked_tokens_are_refused() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let sink = SmtpSink::start();
    let key_dir = tempfile::tempdir().unwrap();
    let pem = xeno_gateway::auth::jwt::generate_pem().unwrap();
    let key_file = key_dir.path().join("signing.pem");
    std::fs::write(&key_file, &pem).unwrap();
    let server = smtp_server(
        &sink,
        &[(
            "XENO__AUTH__SIGNING_KEYS",
            format!("[{{kid=\"test-1\",file=\"{}\"}}]", key_file.display()),
        )],
    );
    let tokens = account(&server, &sink, "lin@example.com");
    let good = access(&tokens);
    server
        .call("GET", "/api/v1/me", Some(&good), None)
        .expect(200, "a genuine token");
    let header = jsonwebtoken::decode_header(&good).unwrap();
    assert_eq!(
        header.kid.as_deref(),
        Some("test-1"),
        "signed by the configured key"
    );
    assert_eq!(header.alg, Algorithm::EdDSA);

    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let parts: Vec<&str> = good.split('.').collect();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    let der = {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    };
    let sign = |claims: &Value, kid: &str| {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_ed_der(&der)).unwrap()
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let with = |field: &str, value: Value| {
        let mut c = claims.clone();
        c[field] = value;
        c
    };
    // Sanity: the forger's signing works (a faithful copy is accepted).
    server
        .call("GET", "/api/v1/me", Some(&sign(&claims, "test-1")), None)
        .expect(200, "a re-signed copy");

    let other_pem = xeno_gateway::auth::jwt::generate_pem().unwrap();
    let other_der = {
        let body: String = other_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    };
    let mut other_header = Header::new(Algorithm::EdDSA);
    other_header.kid = Some("test-1".into());
    let cases: Vec<(&str, String)> = vec![
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(&with("sub", json!(uuid::Uuid::now_v7().to_string()))),
                parts[2]
            ),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT", "kid": "test-1"})),
                parts[1]
            ),
        ),
        ("HS256 with the public key as secret", {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("test-1".into());
            jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(b"test-1")).unwrap()
        }),
        ("expired", sign(&with("exp", json!(now - 5)), "test-1")),
        (
            "wrong audience",
            sign(&with("aud", json!("another-api")), "test-1"),
        ),
        (
            "wrong issuer",
            sign(&with("iss", json!("someone-else")), "test-1"),
        ),
        ("unknown kid", sign(&claims, "test-2")),
        (
            "another key",
            jsonwebtoken::encode(
                &other_header,
                &claims,
                &EncodingKey::from_ed_der(&other_der),
            )
            .unwrap(),
        ),
        (
            "unknown session",
            sign(
                &with("sid", json!(uuid::Uuid::now_v7().to_string())),
                "test-1",
            ),
        ),
        ("garbage", "a.b.c".to_string()),
    ];
    for (what, token) in &cases {
        let reply = server.call("GET", "/api/v1/me", Some(token), None);
        assert_eq!(reply.status, 401, "{what}: {}", reply.body);
        let org_reply = server.call("GET", "/api/v1/orgs/demo/segments", Some(token), None);
        assert_eq!(
            org_reply.status, 401,
            "{what} on an organization route: {}",
            org_reply.body
        );
    }
    // Revoked: logout ends the token at once, not when it expires.
    server
        .call("POST", "/api/v1/auth/logout", Some(&good), None)
        .expect(204, "logout");
    assert_eq!(
        server.call("GET", "/api/v1/me", Some(&good), None).status,
        401,
        "revoked"
    );
    assert_eq!(
        server
            .call("GET", "/api/v1/me", Some(&sign(&claims, "test-1")), None)
            .status,
        401,
        "revoked, re-signed"
    );
    assert_log_clean(&server, &[good]);
}

#[test]
fn cors_origins_come_from_config() {
    let server = Server::start_with(&[(
        "XENO__AUTH__CORS_ORIGINS",
        "[\"https://console.example.com\"]".into(),
    )]);
    let preflight = |origin: &str| {
        server.call_headers(
            "OPTIONS",
            "/api/v1/orgs/demo/segments",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization,content-type",
                ),
            ],
            None,
        )
    };
    let (_, allowed, _) = preflight("https://console.example.com");
    assert_eq!(
        allowed
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://console.example.com")
    );
    let (_, refused, _) = preflight("https://evil.example.com");
    assert!(
        refused.get("access-control-allow-origin").is_none(),
        "an origin not configured gets no CORS grant"
    );
    let plain = Server::start();
    let (_, none, _) = plain.call_headers(
        "OPTIONS",
        "/api/v1/orgs/demo/segments",
        &[
            ("origin", "https://console.example.com"),
            ("access-control-request-method", "GET"),
        ],
        None,
    );
    assert!(
        none.get("access-control-allow-origin").is_none(),
        "no origins configured: no CORS"
    );
}

#[test]
fn without_smtp_the_links_are_logged() {
    let server = Server::start();
    server
        .call(
            "POST",
            "/api/v1/auth/signup",
            None,
            Some(&json!({"email": "offline@example.com", "password": PASSWORD})),
        )
        .expect(202, "signup");
    let token = common::poll_until(
        "the verification link in the log",
        Duration::from_secs(10),
        || {
            let log = server.log();
            match log.find("verify-email?token=") {
                Some(i) => Ok(query_value(&log[i..], "token")),
                None => Err("not logged yet".to_string()),
            }
        },
    );
    server
        .call(
            "GET",
            &format!("/api/v1/auth/verify-email?token={token}"),
            None,
            None,
        )
        .expect(200, "verify from the logged link");
    login(&server, "offline@example.com", PASSWORD).expect(200, "login");
}

#[test]
fn organizations_members_invitations_keys_and_the_audit_log() {
    let sink = SmtpSink::start();
    let server = smtp_server(&sink, &[]);
    let alice = access(&account(&server, &sink, "alice@example.com"));
    let mut secrets = vec![alice.clone()];

    // Create; the slug is unique; the creator is owner.
    let org = server
        .call(
            "POST",
            "/api/v1/orgs",
            Some(&alice),
            Some(&json!({"slug": "acme", "name": "Acme Inc"})),
        )
        .expect(201, "create org");
    assert_eq!(org["role"], "owner");
    assert_eq!(
        server
            .call(
                "POST",
                "/api/v1/orgs",
                Some(&alice),
                Some(&json!({"slug": "acme"}))
            )
            .status,
        409
    );
    assert_eq!(
        server
            .call(
                "POST",
                "/api/v1/orgs",
                Some(&alice),
                Some(&json!({"slug": "Bad Slug"}))
            )
            .status,
        422
    );
    assert_eq!(
        server
            .call(
                "POST",
                "/api/v1/orgs",
                Some(common::ADMIN_API_KEY),
                Some(&json!({"slug": "bykey"}))
            )
            .status,
        403,
        "keys belong to an org, not a person"
    );
    let mine = server
        .call("GET", "/api/v1/orgs", Some(&alice), None)
        .expect(200, "my orgs");
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    server
        .call(
            "PATCH",
            "/api/v1/orgs/acme",
            Some(&alice),
            Some(&json!({"name": "Acme Corp"})),
        )
        .expect(200, "rename");
    assert_eq!(
        server
            .call("GET", "/api/v1/orgs/acme", Some(&alice), None)
            .expect(200, "get")["name"],
        "Acme Corp"
    );

    // An invitation to someone without an account: sign-up from the link.
    let invited = server
        .call(
            "POST",
            "/api/v1/orgs/acme/invitations",
            Some(&alice),
            Some(&json!({"email": "bob@example.com", "role": "editor"})),
        )
        .expect(201, "invite bob");
    assert_eq!(invited["status"], "pending");
    let mail = sink.wait_for("bob@example.com", "invited to Acme Corp", 0);
    let token = invitation_token(&mail.body);
    secrets.push(token.clone());
    let view = server
        .call("GET", &format!("/api/v1/invitations/{token}"), None, None)
        .expect(200, "open the link");
    assert_eq!(view["org_slug"], "acme");
    assert_eq!(view["has_account"], false);
    let joined = server
        .call(
            "POST",
            &format!("/api/v1/invitations/{token}/accept"),
            None,
            Some(&json!({"name": "Bob", "password": PASSWORD})),
        )
        .expect(200, "accept by signing up");
    assert_eq!(joined["role"], "editor");
    let bob = access(&joined["tokens"]);
    secrets.push(bob.clone());
    assert_eq!(
        server
            .call(
                "POST",
                &format!("/api/v1/invitations/{token}/accept"),
                Some(&bob),
                None
            )
            .status,
        404,
        "used"
    );
    let members = server
        .call("GET", "/api/v1/orgs/acme/members", Some(&bob), None)
        .expect(200, "members");
    assert_eq!(members["items"].as_array().unwrap().len(), 2);
    let bob_id = server
        .call("GET", "/api/v1/me", Some(&bob), None)
        .expect(200, "me")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let alice_id = server
        .call("GET", "/api/v1/me", Some(&alice), None)
        .expect(200, "me")["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Decline, then invite again; resend replaces the link; cancel ends it.
    server
        .call(
            "POST",
            "/api/v1/orgs/acme/invitations",
            Some(&alice),
            Some(&json!({"email": "carol@example.com", "role": "viewer"})),
        )
        .expect(201, "invite carol");
    let carol_link = invitation_token(&sink.wait_for("carol@example.com", "invited", 0).body);
    server
        .call(
            "POST",
            &format!("/api/v1/invitations/{carol_link}/decline"),
            None,
            None,
        )
        .expect(204, "decline");
    assert_eq!(
        server
            .call(
                "POST",
                &format!("/api/v1/invitations/{carol_link}/accept"),
                None,
                Some(&json!({"password": PASSWORD}))
            )
            .status,
        404,
        "declined"
    );
    let again = server
        .call(
            "POST",
            "/api/v1/orgs/acme/invitations",
            Some(&alice),
            Some(&json!({"email": "carol@example.com", "role": "viewer"})),
        )
        .expect(201, "invite carol again");
    assert_eq!(
        server
            .call(
                "POST",
                "/api/v1/orgs/acme/invitations",
                Some(&alice),
                Some(&json!({"email": "carol@example.com", "role": "viewer"}))
            )
            .status,
        409,
        "one pending invitation at a time"
    );
    let first_link = invitation_token(&sink.wait_for("carol@example.com", "invited", 1).body);
    let id = again["id"].as_str().unwrap();
    server
        .call(
            "POST",
            &format!("/api/v1/orgs/acme/invitations/{id}/resend"),
            Some(&alice),
            None,
        )
        .expect(200, "resend");
    let second_link = invitation_token(&sink.wait_for("carol@example.com", "invited", 2).body);
    assert_ne!(first_link, second_link);
    assert_eq!(
        server
            .call(
                "GET",
                &format!("/api/v1/invitations/{first_link}"),
                None,
                None
            )
            .status,
        404,
        "the old link is void"
    );
    server
        .call(
            "POST",
            &format!("/api/v1/orgs/acme/invitations/{id}/cancel"),
            Some(&alice),
            None,
        )
        .expect(200, "cancel");
    assert_eq!(
        server
            .call(
                "POST",
                &format!("/api/v1/invitations/{second_link}/accept"),
                None,
                Some(&json!({"password": PASSWORD}))
            )
            .status,
        404,
        "cancelled"
    );
    let invitations = server
        .call("GET", "/api/v1/orgs/acme/invitations", Some(&alice), None)
        .expect(200, "invitations");
    let statuses: Vec<&str> = invitations["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses.contains(&"declined")
            && statuses.contains(&"cancelled")
            && statuses.contains(&"accepted"),
        "{statuses:?}"
    );

    // Roles: an editor cannot manage members; only an owner grants owner;
    // the last owner can neither leave nor be demoted.
    assert_eq!(
        server
            .call(
                "PATCH",
                &format!("/api/v1/orgs/acme/members/{alice_id}"),
                Some(&bob),
                Some(&json!({"role": "viewer"}))
            )
            .status,
        403
    );
    server
        .call(
            "PATCH",
            &format!("/api/v1/orgs/acme/members/{bob_id}"),
            Some(&alice),
            Some(&json!({"role": "admin"})),
        )
        .expect(200, "bob becomes admin");
    assert_eq!(
        server
            .call(
                "PATCH",
                &format!("/api/v1/orgs/acme/members/{bob_id}"),
                Some(&bob),
                Some(&json!({"role": "owner"}))
            )
            .status,
        403,
        "an admin cannot make an owner"
    );
    assert_eq!(
        server
            .call(
                "PATCH",
                &format!("/api/v1/orgs/acme/members/{alice_id}"),
                Some(&bob),
                Some(&json!({"role": "viewer"}))
            )
            .status,
        403,
        "an admin cannot demote an owner"
    );
    assert_eq!(
        server
            .call("POST", "/api/v1/orgs/acme/leave", Some(&alice), None)
            .status,
        409,
        "the last owner stays"
    );
    assert_eq!(
        server
            .call(
                "PATCH",
                &format!("/api/v1/orgs/acme/members/{alice_id}"),
                Some(&alice),
                Some(&json!({"role": "admin"}))
            )
            .status,
        409,
        "the last owner cannot step down"
    );

    // Switching organizations needs no new login: bob's token works in his own.
    server
        .call(
            "POST",
            "/api/v1/orgs",
            Some(&bob),
            Some(&json!({"slug": "bobs-shop"})),
        )
        .expect(201, "bob's org");
    server
        .call("GET", "/api/v1/orgs/bobs-shop/segments", Some(&bob), None)
        .expect(200, "his own org");
    server
        .call("GET", "/api/v1/orgs/acme/segments", Some(&bob), None)
        .expect(200, "and acme, same token");
    assert_eq!(
        server
            .call("GET", "/api/v1/orgs/bobs-shop/segments", Some(&alice), None)
            .status,
        404,
        "alice is not in bob's"
    );

    // Keys: shown once, prefixed, hashed; rotation and revocation bite at once.
    let write = server
        .call(
            "POST",
            "/api/v1/orgs/acme/keys",
            Some(&alice),
            Some(&json!({"kind": "write", "name": "web"})),
        )
        .expect(201, "write key");
    let write_secret = write["secret"].as_str().unwrap().to_string();
    assert!(write_secret.starts_with("xeno_wk_"), "{write_secret}");
    let viewer_key = server
        .call(
            "POST",
            "/api/v1/orgs/acme/keys",
            Some(&alice),
            Some(&json!({"kind": "api", "name": "dashboards", "role": "viewer"})),
        )
        .expect(201, "api key");
    let viewer_secret = viewer_key["secret"].as_str().unwrap().to_string();
    assert!(viewer_secret.starts_with("xeno_ak_"));
    secrets.extend([write_secret.clone(), viewer_secret.clone()]);
    let listed_reply = server.call("GET", "/api/v1/orgs/acme/keys", Some(&alice), None);
    assert!(
        !listed_reply.body.contains(&write_secret) && !listed_reply.body.contains(&viewer_secret),
        "a list never shows secrets"
    );
    let listed = listed_reply.expect(200, "keys");
    assert_eq!(
        listed["items"][0]["prefix"].as_str().unwrap(),
        &write_secret[..12]
    );
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{write_secret}:"))
    };
    let identify = json!({"type": "identify", "userId": "u-1", "traits": {"plan": "pro"}});
    let (status, _, body) = server.call_headers(
        "POST",
        "/v1/identify",
        &[("authorization", &format!("Basic {basic}"))],
        Some(&identify),
    );
    assert_eq!(status, 200, "ingest with the new write key: {body}");
    server
        .call(
            "GET",
            "/api/v1/orgs/acme/segments",
            Some(&viewer_secret),
            None,
        )
        .expect(200, "a viewer key reads");
    assert_eq!(
        server
            .call(
                "POST",
                "/api/v1/orgs/acme/segments",
                Some(&viewer_secret),
                Some(&json!({"name": "x", "rule": "plan = \"pro\""}))
            )
            .status,
        403,
        "and only reads"
    );
    assert_eq!(
        server
            .call(
                "POST",
                "/api/v1/orgs/acme/keys",
                Some(&bob),
                Some(&json!({"kind": "api", "name": "too much", "role": "owner"}))
            )
            .status,
        403,
        "no key above the creator's role"
    );
    let key_id = viewer_key["key"]["id"].as_str().unwrap();
    let rotated = server
        .call(
            "POST",
            &format!("/api/v1/orgs/acme/keys/{key_id}/rotate"),
            Some(&alice),
            None,
        )
        .expect(200, "rotate");
    let rotated_secret = rotated["secret"].as_str().unwrap().to_string();
    secrets.push(rotated_secret.clone());
    assert_eq!(
        server
            .call(
                "GET",
                "/api/v1/orgs/acme/segments",
                Some(&viewer_secret),
                None
            )
            .status,
        401,
        "the old secret"
    );
    server
        .call(
            "GET",
            "/api/v1/orgs/acme/segments",
            Some(&rotated_secret),
            None,
        )
        .expect(200, "the new secret");
    server
        .call(
            "DELETE",
            &format!("/api/v1/orgs/acme/keys/{key_id}"),
            Some(&alice),
            None,
        )
        .expect(204, "revoke");
    assert_eq!(
        server
            .call(
                "GET",
                "/api/v1/orgs/acme/segments",
                Some(&rotated_secret),
                None
            )
            .status,
        401,
        "revoked"
    );

    // The audit log: who did what to what, from where, with filters and a cursor.
    let audit = |query: &str| {
        server
            .call(
                "GET",
                &format!("/api/v1/orgs/acme/audit{query}"),
                Some(&alice),
                None,
            )
            .expect(200, "audit")
    };
    let all = audit("?limit=1000");
    let entries = all["items"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for wanted in [
        "org.created",
        "org.renamed",
        "invitation.created",
        "invitation.accepted",
        "invitation.declined",
        "invitation.resent",
        "invitation.cancelled",
        "member.role_changed",
        "key.created",
        "key.rotated",
        "key.revoked",
    ] {
        assert!(actions.contains(&wanted), "no {wanted} in {actions:?}");
    }
    let role_change = entries
        .iter()
        .find(|e| e["action"] == "member.role_changed")
        .unwrap();
    assert_eq!(
        role_change["summary"],
        json!({"before": "editor", "after": "admin"})
    );
    assert_eq!(role_change["actor"], format!("user:{alice_id}"));
    assert_eq!(role_change["target"], format!("user:{bob_id}"));
    assert_eq!(role_change["ip"], "127.0.0.1");
    assert!(
        role_change["user_agent"]
            .as_str()
            .is_some_and(|a| !a.is_empty())
    );
    assert!(
        !actions.contains(&"segment.created"),
        "refused calls are not audited"
    );
    let keys_only = audit("?action=key.");
    assert!(
        keys_only["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"].as_str().unwrap().starts_with("key."))
    );
    assert_eq!(keys_only["items"].as_array().unwrap().len(), 4);
    let by_bob = audit(&format!("?actor=user:{bob_id}"));
    assert!(
        by_bob["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == format!("user:{bob_id}"))
    );
    let on_key = audit(&format!("?target=key:{key_id}"));
    assert_eq!(
        on_key["items"].as_array().unwrap().len(),
        3,
        "created, rotated, revoked"
    );
    let middle = entries[entries.len() / 2]["at"]
        .as_str()
        .unwrap()
        .to_string();
    let later = audit(&format!("?from={}", middle.replace('+', "%2B")));
    let earlier = audit(&format!("?to={}", middle.replace('+', "%2B")));
    assert_eq!(
        later["items"].as_array().unwrap().len() + earlier["items"].as_array().unwrap().len(),
        entries.len(),
        "from and to split the log"
    );
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = audit(&format!(
            "?limit=3{}",
            cursor
                .as_ref()
                .map(|c| format!("&cursor={c}"))
                .unwrap_or_default()
        ));
        paged.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        paged,
        entries.iter().map(|e| e["id"].clone()).collect::<Vec<_>>(),
        "pages cover the log once"
    );
    assert_eq!(
        server
            .call("GET", "/api/v1/orgs/acme/audit", Some(&bob), None)
            .status,
        200,
        "admins read the log"
    );

    // The owner rules the handlers enforce (bob is an admin here): an admin
    // can neither invite an owner, nor cancel or resend an owner invitation,
    // nor rotate or revoke an owner key, nor remove an owner.
    let owner_invite = |who: &str| {
        server.call(
            "POST",
            "/api/v1/orgs/acme/invitations",
            Some(who),
            Some(&json!({"email": "partner@example.com", "role": "owner"})),
        )
    };
    assert_eq!(owner_invite(&bob).status, 403, "an admin invites an owner");
    let pending_owner = owner_invite(&alice).expect(201, "an owner invites an owner");
    let pending_id = pending_owner["id"].as_str().unwrap();
    for action in ["cancel", "resend"] {
        let reply = server.call(
            "POST",
            &format!("/api/v1/orgs/acme/invitations/{pending_id}/{action}"),
            Some(&bob),
            None,
        );
        assert_eq!(
            reply.status, 403,
            "an admin may not {action} it: {}",
            reply.body
        );
    }
    let owner_key = server
        .call(
            "POST",
            "/api/v1/orgs/acme/keys",
            Some(&alice),
            Some(&json!({"kind": "api", "name": "ops", "role": "owner"})),
        )
        .expect(201, "an owner key");
    secrets.push(owner_key["secret"].as_str().unwrap().to_string());
    let owner_key_id = owner_key["key"]["id"].as_str().unwrap();
    assert_eq!(
        server
            .call(
                "POST",
                &format!("/api/v1/orgs/acme/keys/{owner_key_id}/rotate"),
                Some(&bob),
                None
            )
            .status,
        403
    );
    assert_eq!(
        server
            .call(
                "DELETE",
                &format!("/api/v1/orgs/acme/keys/{owner_key_id}"),
                Some(&bob),
                None
            )
            .status,
        403
    );
    assert_eq!(
        server
            .call(
                "DELETE",
                &format!("/api/v1/orgs/acme/members/{alice_id}"),
                Some(&bob),
                None
            )
            .status,
        403,
        "an admin removes an owner"
    );
    server
        .call(
            "POST",
            &format!("/api/v1/orgs/acme/invitations/{pending_id}/cancel"),
            Some(&alice),
            None,
        )
        .expect(200, "the owner cancels it");

    // A role is re-read after a slow body: carol (admin) starts creating a
    // key, is removed before her body arrives, and gets nothing.
    server
        .call(
            "POST",
            "/api/v1/orgs/acme/invitations",
            Some(&alice),
            Some(&json!({"email": "dan@example.com", "role": "admin"})),
        )
        .expect(201, "invite dan");
    let dan_link = invitation_token(&sink.wait_for("dan@example.com", "invited", 0).body);
    let dan_tokens = server
        .call(
            "POST",
            &format!("/api/v1/invitations/{dan_link}/accept"),
            None,
            Some(&json!({"password": PASSWORD})),
        )
        .expect(200, "dan joins as admin");
    let dan = access(&dan_tokens["tokens"]);
    secrets.push(dan.clone());
    let dan_id = server
        .call("GET", "/api/v1/me", Some(&dan), None)
        .expect(200, "me")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let body = json!({"kind": "api", "name": "parting gift", "role": "admin"}).to_string();
    let mut slow =
        std::net::TcpStream::connect(server.base_url.trim_start_matches("http://")).unwrap();
    use std::io::{Read as _, Write as _};
    write!(
        slow,
        "POST /api/v1/orgs/acme/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {dan}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    slow.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server
        .call(
            "DELETE",
            &format!("/api/v1/orgs/acme/members/{dan_id}"),
            Some(&alice),
            None,
        )
        .expect(204, "dan is removed meanwhile");
    slow.write_all(body.as_bytes()).unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 404"),
        "a removed member's slow request: {answer}"
    );
    let keys = server
        .call("GET", "/api/v1/orgs/acme/keys", Some(&alice), None)
        .expect(200, "keys");
    assert!(!keys.to_string().contains("parting gift"), "{keys}");

    // Ownership passes on; then the old owner may leave.
    server
        .call(
            "PATCH",
            &format!("/api/v1/orgs/acme/members/{bob_id}"),
            Some(&alice),
            Some(&json!({"role": "owner"})),
        )
        .expect(200, "bob becomes owner");
    server
        .call("POST", "/api/v1/orgs/acme/leave", Some(&alice), None)
        .expect(204, "alice leaves");
    assert_eq!(
        server
            .call("GET", "/api/v1/orgs/acme", Some(&alice), None)
            .status,
        404,
        "no longer a member"
    );

    // Deletion: confirmed by name; everything goes; the slug is free again.
    server
        .call(
            "POST",
            "/api/v1/orgs/acme/customers",
            Some(&bob),
            Some(&json!({"id": "c-1", "traits": {"plan": "pro"}})),
        )
        .expect(201, "a customer");
    let wrong = server.call(
        "DELETE",
        "/api/v1/orgs/acme",
        Some(&bob),
        Some(&json!({"confirm": "acme-typo"})),
    );
    assert_eq!(wrong.status, 422, "{}", wrong.body);
    server
        .call(
            "DELETE",
            "/api/v1/orgs/acme",
            Some(&bob),
            Some(&json!({"confirm": "acme"})),
        )
        .expect(200, "delete");
    assert_eq!(
        server
            .call("GET", "/api/v1/orgs/acme", Some(&bob), None)
            .status,
        404
    );
    let (status, _, _) = server.call_headers(
        "POST",
        "/v1/identify",
        &[("authorization", &format!("Basic {basic}"))],
        Some(&identify),
    );
    assert_eq!(status, 401, "its write keys are gone");
    server
        .call(
            "POST",
            "/api/v1/orgs",
            Some(&bob),
            Some(&json!({"slug": "acme"})),
        )
        .expect(201, "the slug is free");
    assert_eq!(
        server
            .call("GET", "/api/v1/orgs/acme/customers/c-1", Some(&bob), None)
            .status,
        404,
        "a new org starts empty"
    );
    let fresh_audit = server
        .call("GET", "/api/v1/orgs/acme/audit", Some(&bob), None)
        .expect(200, "audit");
    assert_eq!(
        fresh_audit["items"].as_array().unwrap().len(),
        1,
        "only its own creation: {fresh_audit}"
    );

    assert_log_clean(&server, &secrets);
}

/// OIDC login end to end: the authorization code flow with PKCE, state and
/// nonce against a real provider; linking only on a verified email.
#[test]
fn oidc_login_end_to_end() {
    let sink = SmtpSink::start();
    let port = free_loopback_port();
    let callback = format!("http://127.0.0.1:{port}/api/v1/auth/oidc/callback");
    let provider = OidcProvider::start(&callback);
    let mut env = provider.settings(&callback);
    env.push(("XENO__SERVER__LISTEN", format!("127.0.0.1:{port}")));
    let server = smtp_server(&sink, &env);

    // Follows the browser's redirects from /oidc/start through the provider
    // (keeping its cookies) until it is sent back to our callback.
    // Cookies are kept like a browser's: one jar for the host (ports share
    // cookies); `same_browser: false` finishes the login without Xeno's
    // binding cookie, as someone who only got hold of the callback URL.
    let sign_in_from = |hint: &str, same_browser: bool| -> common::Reply {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .build()
            .into();
        let mut url = server.url(&format!(
            "/api/v1/auth/oidc/start?login_hint={}",
            hint.replace(':', "%3A").replace('@', "%40")
        ));
        let mut cookies: Vec<(String, String)> = Vec::new();
        for _ in 0..20 {
            let jar = cookies
                .iter()
                .filter(|(k, _)| same_browser || k != "xeno_oidc")
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            if url.starts_with(&callback) {
                let path = url.trim_start_matches(&server.base_url).to_string();
                let headers: Vec<(&str, &str)> = if jar.is_empty() {
                    vec![]
                } else {
                    vec![("cookie", jar.as_str())]
                };
                return server.call_with("GET", &path, None, None, &headers);
            }
            let host = url.split('/').take(3).collect::<Vec<_>>().join("/");
            let mut request = agent.get(&url);
            if !jar.is_empty() {
                request = request.header("cookie", &jar);
            }
            let response = request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
            for set in response.headers().get_all("set-cookie") {
                let pair = set.to_str().unwrap().split(';').next().unwrap().to_string();
                if let Some((k, v)) = pair.split_once('=') {
                    cookies.retain(|(name, _)| name != k);
                    if !v.is_empty() {
                        cookies.push((k.to_string(), v.to_string()));
                    }
                }
            }
            let location = response
                .headers()
                .get("location")
                .unwrap_or_else(|| {
                    panic!(
                        "GET {url} answered {} without a redirect",
                        response.status()
                    )
                })
                .to_str()
                .unwrap()
                .to_string();
            url = if location.starts_with("http") {
                location
            } else {
                format!("{host}{location}")
            };
        }
        panic!("too many redirects");
    };
    let sign_in = |hint: &str| sign_in_from(hint, true);

    // Someone who holds only the callback URL cannot finish the login.
    let stolen = sign_in_from("alice@example.com", false);
    assert_eq!(stolen.status, 400, "{}", stolen.body);
    assert!(stolen.body.contains("another browser"), "{}", stolen.body);

    // A new person: an account is created, verified by the provider.
    let first = sign_in("alice@example.com").expect(200, "OIDC login");
    let me = server
        .call("GET", "/api/v1/me", Some(&access(&first)), None)
        .expect(200, "me");
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["email_verified"], true);
    assert_eq!(me["linked_providers"], json!([provider.issuer]));
    // The same identity signs in to the same account.
    let again = sign_in("alice@example.com").expect(200, "OIDC login again");
    let me_again = server
        .call("GET", "/api/v1/me", Some(&access(&again)), None)
        .expect(200, "me");
    assert_eq!(me_again["id"], me["id"]);

    // An existing password account links when the provider asserts the email
    // is verified...
    let carol = account(&server, &sink, "carol@example.com");
    let carol_id = server
        .call("GET", "/api/v1/me", Some(&access(&carol)), None)
        .expect(200, "me")["id"]
        .clone();
    let linked = sign_in("carol@example.com").expect(200, "OIDC login links carol");
    assert_eq!(
        server
            .call("GET", "/api/v1/me", Some(&access(&linked)), None)
            .expect(200, "me")["id"],
        carol_id
    );
    // ...and not when it does not.
    account(&server, &sink, "bob@example.com");
    let refused = sign_in("unverified:bob@example.com");
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("verified"), "{}", refused.body);
    // An address the provider does not vouch for gets no account at all.
    let nobody = sign_in("unverified:dave@example.com");
    assert_eq!(nobody.status, 409, "{}", nobody.body);
    // Had the refused attempt made (and linked) an account, this verified
    // sign-in would find it; it creates one instead.
    let dave = sign_in("dave@example.com").expect(200, "a vouched sign-in");
    let events = server
        .call(
            "GET",
            "/api/v1/me/security-events",
            Some(&access(&dave)),
            None,
        )
        .expect(200, "dave's events");
    let links: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "user.oidc_linked")
        .collect();
    assert_eq!(links.len(), 1, "{events}");
    assert_eq!(links[0]["summary"]["account"], "created", "{events}");

    // Someone who signed up with a victim's address and never proved it
    // loses the account when its real owner signs in through the provider:
    // the squatter's password stops working.
    server
        .call(
            "POST",
            "/api/v1/auth/signup",
            None,
            Some(&json!({"email": "erin@example.com", "password": "squatter's password"})),
        )
        .expect(202, "a squatter signs up");
    sink.wait_for("erin@example.com", "Confirm your email", 0);
    let erin = sign_in("erin@example.com").expect(200, "the real erin signs in");
    let squat_link = query_value(
        &sink
            .wait_for("erin@example.com", "Confirm your email", 0)
            .body,
        "token",
    );
    assert_eq!(
        server
            .call(
                "GET",
                &format!("/api/v1/auth/verify-email?token={squat_link}"),
                None,
                None
            )
            .status,
        400,
        "the squatter's pending links died with the take-over"
    );
    assert_eq!(
        login(&server, "erin@example.com", "squatter's password").status,
        401,
        "the squatter's password is gone"
    );
    server
        .call("GET", "/api/v1/me", Some(&access(&erin)), None)
        .expect(200, "erin's session");

    // A state is single use, and unknown ones are refused.
    let replay = server.call(
        "GET",
        "/api/v1/auth/oidc/callback?code=abc&state=not-a-state",
        None,
        None,
    );
    assert_eq!(replay.status, 400, "{}", replay.body);
}
