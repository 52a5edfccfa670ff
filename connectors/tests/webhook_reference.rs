//! Our webhook signatures, verified by the Standard Webhooks reference library
//! (the `standardwebhooks` package from PyPI), as receivers will verify them.
//! `scripts/test` installs it and names its Python in `XENO_TEST_PYTHON`.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;
use xeno_connectors::webhook::signing::{Secret, headers};

const VERIFY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
cases = json.load(sys.stdin)
for case in cases:
    try:
        Webhook(case["receiver_secret"]).verify(case["body"].encode(), case["headers"])
        verified = True
    except Exception:
        verified = False
    if verified != case["valid"]:
        sys.exit(f"case {case['name']}: verified={verified}, expected {case['valid']}")
print(f"ok {len(cases)}")
"#;

#[test]
fn the_reference_library_verifies_our_signatures() {
    let Ok(python) = std::env::var("XENO_TEST_PYTHON") else {
        eprintln!("skipped: XENO_TEST_PYTHON is not set (scripts/test sets it)");
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let old = Secret::generate().unwrap();
    let new = Secret::generate().unwrap();
    let body = json!({"type": "segment.entered", "segment": {"id": "s1"}, "customer": {"id": "ada", "name": "Ada Łovelace ✓"}}).to_string();
    let case = |name: &str, signers: &[Secret], receiver: &Secret, sent: &str, valid: bool| {
        let h: serde_json::Map<String, serde_json::Value> =
            headers(signers, "msg_01", now, body.as_bytes())
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
        json!({"name": name, "headers": h, "body": sent, "receiver_secret": receiver.expose(), "valid": valid})
    };
    let cases = json!([
        case("one secret", std::slice::from_ref(&new), &new, &body, true),
        case(
            "rotation, receiver has the old secret",
            &[new.clone(), old.clone()],
            &old,
            &body,
            true
        ),
        case(
            "rotation, receiver has the new secret",
            &[new.clone(), old.clone()],
            &new,
            &body,
            true
        ),
        case(
            "tampered body",
            std::slice::from_ref(&new),
            &new,
            &body.replace("ada", "eve"),
            false
        ),
        case(
            "wrong secret",
            std::slice::from_ref(&old),
            &new,
            &body,
            false
        ),
    ]);
    let mut child = Command::new(python)
        .args(["-c", VERIFY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("XENO_TEST_PYTHON runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cases.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 5");
}
