//! The operator's routes and the API description: the generated OpenAPI
//! document passes the reference validator (`openapi-spec-validator`, PyPI)
//! and describes every management route; `/healthz`, `/readyz` and `/metrics`
//! answer, and the metrics count what the server did.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Server, python};
use serde_json::{Value, json};

#[test]
fn openapi_document_is_valid_and_covers_the_management_api() {
    let server = Server::start();
    let reply = server.get("/api/v1/openapi.json").expect("an answer");
    assert_eq!(reply.status, 200);
    let document: Value = serde_json::from_str(&reply.body).expect("JSON");
    // Every organization-scoped route of the access table is described, with
    // its method, and nothing under the organization prefix is described
    // that the table (and so the access guard) does not know.
    let table = xeno_gateway::api::access::org_route_table();
    for route in &table {
        let method = route.method.as_str().to_lowercase();
        assert!(
            document["paths"][&route.path].get(&method).is_some(),
            "{} {} is not described",
            route.method,
            route.path
        );
    }
    for (path, item) in document["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/orgs/{org}") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            assert!(
                table
                    .iter()
                    .any(|r| r.path == *path && r.method.as_str().eq_ignore_ascii_case(method)),
                "{method} {path} is described but not in the access table"
            );
        }
    }
    // The routes of people, outside organizations.
    for (method, path) in [
        ("post", "/api/v1/auth/signup"),
        ("get", "/api/v1/auth/verify-email"),
        ("post", "/api/v1/auth/login"),
        ("post", "/api/v1/auth/refresh"),
        ("post", "/api/v1/auth/logout"),
        ("post", "/api/v1/auth/password/forgot"),
        ("post", "/api/v1/auth/password/reset"),
        ("get", "/api/v1/auth/jwks"),
        ("get", "/api/v1/auth/oidc/start"),
        ("get", "/api/v1/auth/oidc/callback"),
        ("get", "/api/v1/me"),
        ("get", "/api/v1/me/sessions"),
        ("delete", "/api/v1/me/sessions/{id}"),
        ("get", "/api/v1/me/security-events"),
        ("get", "/api/v1/orgs"),
        ("post", "/api/v1/orgs"),
        ("get", "/api/v1/invitations/{token}"),
        ("post", "/api/v1/invitations/{token}/accept"),
        ("post", "/api/v1/invitations/{token}/decline"),
    ] {
        assert!(
            document["paths"][path].get(method).is_some(),
            "{method} {path} is not described"
        );
    }
    for schema in [
        "SegmentInfo",
        "CustomerInfo",
        "ImportJob",
        "FieldInfo",
        "Erasure",
        "AuditEntry",
        "WebhookInfo",
        "DeliveryRecord",
        "Problem",
        "Tokens",
        "OrgInfo",
        "MemberInfo",
        "InvitationInfo",
        "KeyRecord",
        "KeySecret",
    ] {
        assert!(
            document["components"]["schemas"].get(schema).is_some(),
            "schema {schema} is missing"
        );
    }

    let mut validator = Command::new(python())
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             validate(json.load(sys.stdin))\n\
             print('valid')",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    validator
        .stdin
        .take()
        .unwrap()
        .write_all(reply.body.as_bytes())
        .unwrap();
    let out = validator.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn health_readiness_and_metrics() {
    let server = Server::start();
    assert_eq!(server.get("/healthz").unwrap().status, 200);
    assert_eq!(server.get("/readyz").unwrap().status, 200);
    server.ingest(
        "/v1/track",
        &json!({"userId": "ops-1", "event": "Order Completed", "properties": {"revenue": 3}, "messageId": "ops-m1"}),
    );
    common::poll_until(
        "the event is applied",
        std::time::Duration::from_secs(10),
        || {
            let reply = server.admin_get("/customers/ops-1");
            if reply.status == 200 {
                Ok(())
            } else {
                Err(reply.body)
            }
        },
    );
    let metrics = server.get("/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    for name in [
        "xeno_ingest_events_total 1",
        "xeno_events_applied_total 1",
        "xeno_ingest_requests_total{status=\"200\"} 1",
        "xeno_log_append_seconds",
        "xeno_log_fsync_seconds",
        "xeno_shard_pending_events{partition=\"0\"}",
    ] {
        assert!(
            metrics.body.contains(name),
            "{name} missing from\n{}",
            metrics.body
        );
    }
    let unknown = server.get("/no/such/route").unwrap();
    assert_eq!(unknown.status, 404);
}
