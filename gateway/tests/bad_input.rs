//! Invariant 6 end to end: bad input gets a clear 4xx as an RFC 9457
//! `application/problem+json` document that names the field and the reason,
//! never a panic and never a partial write.
//!
//! One `xeno serve` process answers a table of bad requests, to the ingest API
//! and to the management API. Afterwards nothing may have changed: no customer
//! named in a refused request exists and no segment was created. A good
//! request at the end shows the server still works.

mod xeno_process;

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use xeno_process::{ADMIN_KEY, WRITE_KEY, Xeno, admin, agent, basic, bearer, get, send};

/// One bad request and what must come back.
struct Case {
    what: &'static str,
    method: &'static str,
    /// Path from the server's root.
    path: String,
    authorization: Option<String>,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    /// The acceptable statuses (more than one only where the contract allows it).
    statuses: &'static [u16],
    /// A JSON pointer that must appear in the problem's `errors`.
    pointer: Option<&'static str>,
    /// Text that the problem's `detail` or one of its `errors` reasons must
    /// contain (case-insensitive), so that it names what is wrong.
    mentions: Option<&'static str>,
}

impl Case {
    fn new(what: &'static str, method: &'static str, path: impl Into<String>) -> Case {
        Case {
            what,
            method,
            path: path.into(),
            authorization: None,
            headers: Vec::new(),
            body: Vec::new(),
            statuses: &[],
            pointer: None,
            mentions: None,
        }
    }

    fn ingest(what: &'static str, endpoint: &str, body: impl Into<Vec<u8>>) -> Case {
        Case {
            authorization: Some(basic(WRITE_KEY)),
            body: body.into(),
            ..Case::new(what, "POST", format!("/v1/{endpoint}"))
        }
    }

    fn admin(what: &'static str, method: &'static str, path: &str, body: Option<Json>) -> Case {
        Case {
            authorization: Some(bearer(ADMIN_KEY)),
            body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            ..Case::new(what, method, org_path(path))
        }
    }

    fn auth(mut self, authorization: Option<String>) -> Case {
        self.authorization = authorization;
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Case {
        self.headers.push((name, value));
        self
    }

    fn expect(mut self, statuses: &'static [u16]) -> Case {
        self.statuses = statuses;
        self
    }

    fn pointer(mut self, pointer: &'static str) -> Case {
        self.pointer = Some(pointer);
        self
    }

    fn mentions(mut self, text: &'static str) -> Case {
        self.mentions = Some(text);
        self
    }
}

fn org_path(rest: &str) -> String {
    format!("/api/v1/orgs/{}{rest}", xeno_process::ORG)
}

fn batch(events: Json) -> String {
    json!({"batch": events}).to_string()
}

fn order(user_id: &str) -> Json {
    json!({"type": "track", "event": "Order Completed", "userId": user_id,
           "properties": {"revenue": 10}})
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Customer ids that appear in a refused request: none of them may exist after.
const REFUSED_IDS: &[&str] = &[
    "bad-json",
    "bad-not-object",
    "bad-batch-object",
    "bad-userid-bool",
    "bad-ts-number",
    "bad-ts-text",
    "bad-partial-good",
    "bad-partial-bad",
    "bad-unknown-type",
    "bad-event-not-object",
    "bad-track-no-event",
    "bad-identify-traits",
    "bad-big-event-small",
    "bad-big-event",
    "bad-big-batch",
    "bad-big-single",
    "bad-gzip-declared",
    "bad-no-key",
    "bad-unknown-key",
    "bad-unknown-body-key",
    "bad-bearer-on-ingest",
];

fn cases() -> Vec<Case> {
    let big = "x".repeat(33 * 1024);
    // About 600 KiB of events of about 1 KiB each: each is fine, the request is not.
    let padding = "y".repeat(1000);
    let many: Vec<Json> = (0..600)
        .map(|i| {
            json!({"type": "track", "event": "Order Completed", "userId": "bad-big-batch",
                   "messageId": format!("big-batch-{i}"), "properties": {"padding": padding}})
        })
        .collect();
    let unknown_segment = format!("/segments/{}", uuid::Uuid::now_v7());
    let segment = |rule: Json| Some(json!({"name": "never created", "rule": rule}));
    vec![
        // Ingest: the body.
        Case::ingest(
            "malformed JSON",
            "batch",
            r#"{"batch": [{"type": "track", "event": "E", "userId": "bad-json""#,
        )
        .expect(&[400]),
        Case::ingest("empty body", "batch", "").expect(&[400]),
        Case::ingest(
            "body is a list, not an object",
            "batch",
            json!([order("bad-not-object")]).to_string(),
        )
        .expect(&[400]),
        Case::ingest(
            "batch is an object, not a list",
            "batch",
            json!({"batch": order("bad-batch-object")}).to_string(),
        )
        .expect(&[400])
        .pointer("/batch"),
        Case::ingest("batch missing", "batch", "{}")
            .expect(&[400])
            .pointer("/batch"),
        Case::ingest(
            "event without userId or anonymousId",
            "batch",
            batch(json!([{"type": "track", "event": "Order Completed", "properties": {"revenue": 1}}])),
        )
        .expect(&[400])
        .pointer("/batch/0/userId"),
        // A number is a valid id (the Segment spec allows it); a boolean is not.
        Case::ingest(
            "userId is a boolean",
            "batch",
            batch(json!([order("bad-userid-bool"), {"type": "track", "event": "E", "userId": true}])),
        )
        .expect(&[400])
        .pointer("/batch/1/userId"),
        Case::ingest(
            "timestamp is a number",
            "batch",
            batch(json!([{"type": "track", "event": "E", "userId": "bad-ts-number", "timestamp": 42}])),
        )
        .expect(&[400])
        .pointer("/batch/0/timestamp"),
        Case::ingest(
            "timestamp is not RFC 3339",
            "batch",
            batch(json!([{"type": "track", "event": "E", "userId": "bad-ts-text", "timestamp": "yesterday"}])),
        )
        .expect(&[400])
        .pointer("/batch/0/timestamp")
        .mentions("yesterday"),
        Case::ingest(
            "one good event and one bad: refused whole",
            "batch",
            batch(json!([order("bad-partial-good"),
                         {"type": "track", "event": "E", "userId": "bad-partial-bad", "properties": [1]}])),
        )
        .expect(&[400])
        .pointer("/batch/1/properties"),
        Case::ingest(
            "unknown event type",
            "batch",
            batch(json!([{"type": "purchase", "userId": "bad-unknown-type"}])),
        )
        .expect(&[400])
        .pointer("/batch/0/type")
        .mentions("purchase"),
        Case::ingest(
            "batch item is not an object",
            "batch",
            batch(json!([order("bad-event-not-object"), 7])),
        )
        .expect(&[400])
        .pointer("/batch/1"),
        Case::ingest(
            "track without an event name",
            "track",
            json!({"userId": "bad-track-no-event"}).to_string(),
        )
        .expect(&[400])
        .pointer("/event"),
        Case::ingest(
            "identify traits are a string",
            "identify",
            json!({"userId": "bad-identify-traits", "traits": "vip"}).to_string(),
        )
        .expect(&[400])
        .pointer("/traits"),
        // Ingest: sizes.
        Case::ingest(
            "event over 32 KiB in a batch",
            "batch",
            batch(json!([order("bad-big-event-small"),
                         {"type": "track", "event": "E", "userId": "bad-big-event", "properties": {"p": big}}])),
        )
        .expect(&[413])
        .pointer("/batch/1"),
        Case::ingest("batch over 500 KiB", "batch", batch(Json::Array(many))).expect(&[413]),
        Case::ingest(
            "single event over 32 KiB",
            "track",
            json!({"userId": "bad-big-single", "event": "E", "properties": {"p": big}}).to_string(),
        )
        .expect(&[413]),
        Case::ingest(
            "gzip that inflates past 500 KiB",
            "batch",
            gzip(&vec![b' '; 600 * 1024]),
        )
        .header("content-encoding", "gzip")
        .expect(&[413]),
        // Ingest: encoding.
        Case::ingest("corrupt gzip", "batch", vec![0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6])
            .header("content-encoding", "gzip")
            .expect(&[400]),
        Case::ingest(
            "declared gzip, sent plain",
            "batch",
            batch(json!([order("bad-gzip-declared")])),
        )
        .header("content-encoding", "gzip")
        .expect(&[400]),
        // Ingest: write keys.
        Case::ingest("no write key", "batch", batch(json!([order("bad-no-key")])))
            .auth(None)
            .expect(&[401]),
        Case::ingest(
            "unknown write key (Basic)",
            "batch",
            batch(json!([order("bad-unknown-key")])),
        )
        .auth(Some(basic("wk_not_a_key")))
        .expect(&[401]),
        Case::ingest(
            "unknown write key (body)",
            "batch",
            json!({"batch": [order("bad-unknown-body-key")], "writeKey": "wk_not_a_key"}).to_string(),
        )
        .auth(None)
        .expect(&[401]),
        Case::ingest(
            "admin bearer on ingest",
            "batch",
            batch(json!([order("bad-bearer-on-ingest")])),
        )
        .auth(Some(bearer(ADMIN_KEY)))
        .expect(&[401]),
        // Management API: authentication.
        Case::admin("segments without bearer", "GET", "/segments", None)
            .auth(None)
            .expect(&[401]),
        Case::admin("segments with a wrong bearer", "GET", "/segments", None)
            .auth(Some(bearer("xk_wrong")))
            .expect(&[401]),
        Case::admin("the write key is not an admin key", "GET", "/segments", None)
            .auth(Some(bearer(WRITE_KEY)))
            .expect(&[401]),
        Case::admin(
            "create segment without bearer",
            "POST",
            "/segments",
            segment(json!("order_count >= 1")),
        )
        .auth(None)
        .expect(&[401]),
        Case::admin(
            "create segment with a wrong bearer",
            "POST",
            "/segments",
            segment(json!("order_count >= 1")),
        )
        .auth(Some(bearer("xk_wrong")))
        .expect(&[401]),
        // Management API: invalid segments.
        Case::admin(
            "rule DSL that does not parse",
            "POST",
            "/segments",
            segment(json!("order_count >")),
        )
        .expect(&[400, 422])
        .mentions("expected a value"),
        Case::admin(
            "rule DSL naming an unknown field",
            "POST",
            "/segments",
            segment(json!("no_such_trait > 1")),
        )
        .expect(&[400, 422])
        .mentions("no_such_trait"),
        Case::admin(
            "rule comparing a number to text",
            "POST",
            "/segments",
            segment(json!(r#"order_count > "ten""#)),
        )
        .expect(&[400, 422])
        .mentions("order_count"),
        Case::admin(
            "rule JSON with a misspelt node",
            "POST",
            "/segments",
            segment(json!({"conditon": {"field": "order_count", "op": ">", "value": 1}})),
        )
        .expect(&[400, 422])
        .mentions("conditon"),
        Case::admin(
            "segment without a rule",
            "POST",
            "/segments",
            Some(json!({"name": "no rule"})),
        )
        .expect(&[400, 422])
        .mentions("rule"),
        Case {
            body: br#"{"name": "x", "rule": "#.to_vec(),
            ..Case::admin("segment body is not JSON", "POST", "/segments", None)
        }
        .expect(&[400]),
        Case::admin(
            "preview of a rule that does not parse",
            "POST",
            "/segments/preview",
            Some(json!({"rule": "order_count >", "sample": 10})),
        )
        .expect(&[400, 422])
        .mentions("expected a value"),
        // Management API: things that do not exist.
        Case {
            path: "/api/v1/orgs/no-such-org/segments".into(),
            ..Case::admin("unknown org", "GET", "", None)
        }
        .expect(&[404]),
        Case {
            path: "/api/v1/orgs/no-such-org/segments".into(),
            ..Case::admin(
                "create segment in an unknown org",
                "POST",
                "",
                segment(json!("order_count >= 1")),
            )
        }
        .expect(&[404]),
        Case::admin("unknown segment", "GET", &unknown_segment, None).expect(&[404]),
        Case::admin(
            "update an unknown segment",
            "PUT",
            &unknown_segment,
            segment(json!("order_count >= 1")),
        )
        .expect(&[404]),
        Case::admin("delete an unknown segment", "DELETE", &unknown_segment, None).expect(&[404]),
        Case::admin(
            "members of an unknown segment",
            "GET",
            &format!("{unknown_segment}/members"),
            None,
        )
        .expect(&[404]),
        Case::admin("segment id that is not a UUID", "GET", "/segments/not-a-uuid", None)
            .expect(&[400, 404]),
        Case::admin(
            "unknown customer",
            "GET",
            "/customers/bad-never-sent",
            None,
        )
        .expect(&[404]),
        Case::admin("a limit that is not a number", "GET", "/segments?limit=abc", None)
            .expect(&[400]),
        Case::admin("a limit out of range", "GET", "/segments?limit=0", None)
            .expect(&[400])
            .pointer("/limit"),
        Case::admin("a method the route does not take", "DELETE", "/segments", None)
            .expect(&[405]),
    ]
}

/// Checks one answer against its case; returns what is wrong, if anything.
fn check(case: &Case, status: u16, content_type: &str, body: &str) -> Vec<String> {
    let mut wrong = Vec::new();
    if !case.statuses.contains(&status) {
        wrong.push(format!(
            "status {status}, expected one of {:?}",
            case.statuses
        ));
    }
    if !content_type.starts_with("application/problem+json") {
        wrong.push(format!(
            "content-type {content_type:?}, expected application/problem+json"
        ));
    }
    let Ok(problem) = serde_json::from_str::<Json>(body) else {
        wrong.push("the body is not JSON".to_string());
        return wrong;
    };
    if problem["status"].as_u64() != Some(u64::from(status)) {
        wrong.push(format!(
            "problem `status` is {}, not {status}",
            problem["status"]
        ));
    }
    if problem["title"].as_str().is_none_or(str::is_empty) {
        wrong.push("problem has no `title`".to_string());
    }
    if !problem["type"].is_string() {
        wrong.push("problem has no `type`".to_string());
    }
    let detail = problem["detail"].as_str().unwrap_or("");
    if detail.is_empty() {
        wrong.push("problem has no `detail`".to_string());
    }
    let errors = problem["errors"].as_array().cloned().unwrap_or_default();
    if let Some(pointer) = case.pointer {
        let named = errors.iter().any(|e| {
            let p = e["pointer"].as_str().unwrap_or("");
            p == pointer || p.strip_prefix('#') == Some(pointer)
        });
        if !named {
            wrong.push(format!("no entry of `errors` has pointer {pointer:?}"));
        }
    }
    if let Some(text) = case.mentions {
        let mut said = detail.to_lowercase();
        for e in &errors {
            said.push('\n');
            said.push_str(&e["reason"].as_str().unwrap_or("").to_lowercase());
        }
        if !said.contains(&text.to_lowercase()) {
            wrong.push(format!("neither `detail` nor `errors` mention {text:?}"));
        }
    }
    wrong
}

#[test]
fn bad_requests_get_a_problem_and_change_nothing() {
    let xeno = Xeno::start();
    let client = agent(Duration::from_secs(10));

    let mut failures = Vec::new();
    for case in cases() {
        let url = format!("{}{}", xeno.base, case.path);
        let reply = send(
            &client,
            case.method,
            &url,
            case.authorization.as_deref(),
            &case.headers,
            &case.body,
        );
        match reply {
            Ok(reply) => {
                let wrong = check(&case, reply.status, &reply.content_type, &reply.body);
                if !wrong.is_empty() {
                    let shown: String = reply.body.chars().take(400).collect();
                    failures.push(format!(
                        "{} ({} {}): {}\n    answer: {} {} {shown}",
                        case.what,
                        case.method,
                        case.path,
                        wrong.join("; "),
                        reply.status,
                        reply.content_type,
                    ));
                }
            }
            Err(e) => failures.push(format!(
                "{} ({} {}): no answer: {e}",
                case.what, case.method, case.path
            )),
        }
        assert!(
            xeno_process_alive(&xeno),
            "the server died on `{}`",
            case.what
        );
    }
    assert!(
        failures.is_empty(),
        "{} bad requests were not answered as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing changed. Ingest is applied asynchronously: give a wrongly
    // accepted event time to show up before concluding it did not.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        for id in REFUSED_IDS {
            let reply = admin(
                &client,
                "GET",
                &xeno.org_url(&format!("/customers/{id}")),
                None,
            );
            assert_eq!(
                reply.status, 404,
                "customer {id} exists although every request naming it was refused: {}",
                reply.body
            );
            assert!(
                reply.content_type.starts_with("application/problem+json"),
                "404 for customer {id} has content-type {:?}",
                reply.content_type
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let segments = admin(&client, "GET", &xeno.org_url("/segments"), None);
    assert_eq!(segments.status, 200, "list segments: {}", segments.body);
    assert_eq!(
        segments.json()["items"],
        json!([]),
        "a refused request created a segment"
    );

    // The server still works: a good batch is acknowledged and applied.
    let good = batch(
        json!([{"type": "track", "event": "Order Completed", "userId": "good-1",
                             "messageId": "good-1-order-1", "properties": {"revenue": 42}}]),
    );
    let reply = send(
        &client,
        "POST",
        &format!("{}/v1/batch", xeno.base),
        Some(&basic(WRITE_KEY)),
        &[],
        good.as_bytes(),
    )
    .expect("good batch answered");
    assert_eq!(reply.status, 200, "good batch: {}", reply.body);
    assert_eq!(reply.json(), json!({"success": true}));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = admin(&client, "GET", &xeno.org_url("/customers/good-1"), None);
        if reply.status == 200 {
            let computed = &reply.json()["computed"];
            if computed["order_count"].as_f64() == Some(1.0) {
                assert_eq!(
                    computed["total_spend"].as_f64(),
                    Some(42.0),
                    "{}",
                    reply.body
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the good event was not applied within 10 s: {} {}",
            reply.status,
            reply.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let created = admin(
        &client,
        "POST",
        &xeno.org_url("/segments"),
        Some(&json!({"name": "buyers", "rule": "order_count >= 1"})),
    );
    assert_eq!(created.status, 201, "create segment: {}", created.body);
    let readyz = get(&client, &format!("{}/readyz", xeno.base), None).expect("readyz");
    assert_eq!(readyz.status, 200);
}

fn xeno_process_alive(xeno: &Xeno) -> bool {
    // `is_running` needs `&mut`; a health check over HTTP says the same here.
    get(
        &agent(Duration::from_secs(5)),
        &format!("{}/healthz", xeno.base),
        None,
    )
    .is_ok_and(|r| r.status == 200)
}
