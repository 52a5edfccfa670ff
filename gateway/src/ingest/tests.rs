use std::io::Write;

use base64::Engine as _;
use serde_json::json;

use super::*;

fn at(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).unwrap()
}

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn request<'a>(endpoint: Endpoint, auth: Option<&'a str>, body: &'a [u8]) -> IngestRequest<'a> {
    IngestRequest {
        endpoint,
        authorization: auth,
        content_encoding: None,
        body,
        received_at: at("2026-11-25T10:00:03Z"),
    }
}

/// The shape segment-analytics-python posts: Basic auth and `writeKey` in the
/// body, per-message `timestamp` with microseconds, batch-level `sentAt`.
#[test]
fn segment_python_batch() {
    let body = json!({
        "batch": [
            {"type": "track", "event": "Order Completed", "userId": "u1", "anonymousId": null,
             "properties": {"revenue": 12.5}, "context": {"library": {"name": "analytics-python"}},
             "integrations": {}, "timestamp": "2026-11-25T10:00:00.000000+00:00",
             "messageId": "5c1a9c1e-8a5e-4e0e-9c3c-2f1d0d3f3a11"},
            {"type": "identify", "userId": "u1", "traits": {"plan": "pro"},
             "timestamp": "2026-11-25T09:59:59.500000+00:00", "messageId": "m2"}
        ],
        "sentAt": "2026-11-25T10:00:01.000000+00:00",
        "writeKey": "wk_live"
    })
    .to_string();
    let auth = basic("wk_live");
    let decoded = decode(&request(Endpoint::Batch, Some(&auth), body.as_bytes())).unwrap();
    assert_eq!(decoded.write_key, "wk_live");
    assert_eq!(decoded.events.len(), 2);
    let track = &decoded.events[0];
    assert_eq!(track.track_name(), Some("Order Completed"));
    assert_eq!(track.user_id.as_deref(), Some("u1"));
    assert_eq!(track.anonymous_id, None);
    // The client's clock is 2 s behind: sent at 10:00:01, received at 10:00:03.
    assert_eq!(track.timestamp, at("2026-11-25T10:00:02Z"));
    assert_eq!(decoded.events[1].timestamp, at("2026-11-25T10:00:01.5Z"));
    assert!(
        matches!(&decoded.events[1].kind, EventKind::Identify { traits } if traits["plan"] == "pro")
    );
}

/// RudderStack's SDKs gzip by default and may label the body form-urlencoded
/// with no Content-Encoding; its Python SDK puts identify traits in the context.
#[test]
fn rudderstack_gzip_and_context_traits() {
    let body = json!({
        "batch": [{"type": "identify", "anonymousId": "a-1", "messageId": "r1",
                   "context": {"traits": {"email": "ada@example.com"}},
                   "originalTimestamp": "2026-11-25T10:00:00Z"}],
        "sentAt": "2026-11-25T10:00:00Z"
    })
    .to_string();
    let compressed = gzip(body.as_bytes());
    let auth = basic("rs_key");
    let decoded = decode(&request(Endpoint::Batch, Some(&auth), &compressed)).unwrap();
    assert_eq!(decoded.write_key, "rs_key");
    let EventKind::Identify { traits } = &decoded.events[0].kind else {
        panic!("{:?}", decoded.events[0]);
    };
    assert_eq!(traits["email"], "ada@example.com");
    assert_eq!(decoded.events[0].customer_key(), Some("a-1"));
    // Declared gzip works the same.
    let mut declared = request(Endpoint::Batch, Some(&auth), &compressed);
    declared.content_encoding = Some("gzip");
    assert_eq!(decode(&declared).unwrap(), decoded);
}

#[test]
fn single_event_endpoints_take_the_type_from_the_path() {
    let body = json!({"userId": 42, "event": "Signed Up", "writeKey": "wk"}).to_string();
    let decoded = decode(&request(Endpoint::Track, None, body.as_bytes())).unwrap();
    let event = &decoded.events[0];
    assert_eq!(event.user_id.as_deref(), Some("42"));
    assert_eq!(event.track_name(), Some("Signed Up"));
    // No client time: it happened when it arrived.
    assert_eq!(event.timestamp, at("2026-11-25T10:00:03Z"));
    // No messageId: a UUIDv7 is generated.
    let generated = uuid::Uuid::parse_str(&event.message_id).unwrap();
    assert_eq!(generated.get_version_num(), 7);
    for (endpoint, body) in [
        (
            Endpoint::Page,
            json!({"anonymousId": "a", "name": "Pricing", "writeKey": "k"}),
        ),
        (
            Endpoint::Screen,
            json!({"anonymousId": "a", "name": "Home", "writeKey": "k"}),
        ),
        (
            Endpoint::Group,
            json!({"userId": "u", "groupId": "g1", "writeKey": "k"}),
        ),
        (
            Endpoint::Alias,
            json!({"userId": "u", "previousId": "a", "writeKey": "k"}),
        ),
        (
            Endpoint::Identify,
            json!({"userId": "u", "traits": {"x": 1}, "writeKey": "k"}),
        ),
    ] {
        let text = body.to_string();
        decode(&request(endpoint, None, text.as_bytes()))
            .unwrap_or_else(|e| panic!("{endpoint:?}: {e}"));
    }
}

#[test]
fn write_key_from_header_or_body() {
    let body = json!({"userId": "u", "event": "E"}).to_string();
    let auth = basic("from_header");
    let decoded = decode(&request(Endpoint::Track, Some(&auth), body.as_bytes())).unwrap();
    assert_eq!(decoded.write_key, "from_header");
    for auth in [None, Some("Bearer abc"), Some("Basic !!!")] {
        let err = decode(&request(Endpoint::Track, auth, body.as_bytes())).unwrap_err();
        assert_eq!(err.status, 401, "{auth:?}: {err}");
    }
}

/// A table of bad requests: each is refused whole, with the status and a
/// pointer to what is wrong.
#[test]
fn bad_requests_are_refused_with_a_reason() {
    let key = basic("k");
    let ok_event = json!({"type": "track", "userId": "u", "event": "E"});
    let big = "x".repeat(MAX_EVENT_BYTES);
    let cases: Vec<(&str, Endpoint, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", Endpoint::Batch, b"{\"batch\": [".to_vec(), 400, ""),
        ("not an object", Endpoint::Batch, b"[1, 2]".to_vec(), 400, ""),
        ("no batch", Endpoint::Batch, b"{}".to_vec(), 400, "/batch"),
        ("corrupt gzip", Endpoint::Batch, vec![0x1f, 0x8b, 8, 0, 1, 2, 3], 400, ""),
        (
            "gzip bomb",
            Endpoint::Batch,
            gzip(&vec![b' '; MAX_REQUEST_BYTES + 10]),
            413,
            "",
        ),
        (
            "oversize request",
            Endpoint::Batch,
            json!({"batch": [ok_event], "pad": "x".repeat(MAX_REQUEST_BYTES)})
                .to_string()
                .into_bytes(),
            413,
            "",
        ),
        (
            "oversize event",
            Endpoint::Batch,
            json!({"batch": [ok_event, {"type": "track", "userId": "u", "event": "E", "properties": {"p": big}}]})
                .to_string()
                .into_bytes(),
            413,
            "/batch/1",
        ),
        (
            "oversize single event",
            Endpoint::Track,
            json!({"userId": "u", "event": "E", "properties": {"p": big}}).to_string().into_bytes(),
            413,
            "",
        ),
        (
            "no ids",
            Endpoint::Batch,
            json!({"batch": [{"type": "track", "event": "E", "userId": ""}]}).to_string().into_bytes(),
            400,
            "/batch/0/userId",
        ),
        (
            "bad timestamp",
            Endpoint::Batch,
            json!({"batch": [ok_event, {"type": "track", "userId": "u", "event": "E", "timestamp": "yesterday"}]})
                .to_string()
                .into_bytes(),
            400,
            "/batch/1/timestamp",
        ),
        (
            "unknown type",
            Endpoint::Batch,
            json!({"batch": [{"type": "purchase", "userId": "u"}]}).to_string().into_bytes(),
            400,
            "/batch/0/type",
        ),
        (
            "track without event",
            Endpoint::Track,
            json!({"userId": "u"}).to_string().into_bytes(),
            400,
            "/event",
        ),
        (
            "properties not an object",
            Endpoint::Track,
            json!({"userId": "u", "event": "E", "properties": [1]}).to_string().into_bytes(),
            400,
            "/properties",
        ),
        (
            "userId an object",
            Endpoint::Identify,
            json!({"userId": {"id": 1}}).to_string().into_bytes(),
            400,
            "/userId",
        ),
        (
            "batch event not an object",
            Endpoint::Batch,
            json!({"batch": [ok_event, 7]}).to_string().into_bytes(),
            400,
            "/batch/1",
        ),
    ];
    for (what, endpoint, body, status, pointer) in cases {
        let err = decode(&request(endpoint, Some(&key), &body))
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(
            (err.status, err.pointer.as_str()),
            (status, pointer),
            "{what}: {err}"
        );
        assert!(!err.reason.is_empty(), "{what}");
    }
}
