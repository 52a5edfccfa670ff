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
    for path in [
        "/api/v1/orgs/{org}/segments",
        "/api/v1/orgs/{org}/segments/{id}",
        "/api/v1/orgs/{org}/segments/preview",
        "/api/v1/orgs/{org}/segments/{id}/members",
        "/api/v1/orgs/{org}/customers",
        "/api/v1/orgs/{org}/customers/{id}",
        "/api/v1/orgs/{org}/exports/customers",
        "/api/v1/orgs/{org}/orders",
        "/api/v1/orgs/{org}/fields",
        "/api/v1/orgs/{org}/fields/{name}",
        "/api/v1/orgs/{org}/segments/{id}/export",
        "/api/v1/orgs/{org}/imports",
        "/api/v1/orgs/{org}/imports/{id}",
        "/api/v1/orgs/{org}/imports/{id}/cancel",
        "/api/v1/orgs/{org}/imports/{id}/errors",
        "/api/v1/orgs/{org}/imports/{id}/events",
        "/api/v1/orgs/{org}/audit",
        "/api/v1/orgs/{org}/webhooks",
        "/api/v1/orgs/{org}/webhooks/{id}",
        "/api/v1/orgs/{org}/webhooks/{id}/rotate",
        "/api/v1/orgs/{org}/webhooks/{id}/test",
        "/api/v1/orgs/{org}/webhooks/{id}/deliveries",
        "/api/v1/orgs/{org}/webhooks/{id}/deliveries/{delivery}/replay",
    ] {
        assert!(
            document["paths"].get(path).is_some(),
            "{path} is not described"
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
