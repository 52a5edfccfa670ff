//! End to end: customers' backends send identify and track calls through the real
//! Segment (`segment-analytics-python`) and RudderStack (`rudder-sdk-python`) SDKs,
//! and the management API shows their attributes, computed traits and segments.
//!
//! The two SDKs differ on the wire: Segment's posts plain JSON with the write key
//! also in the body; RudderStack's gzips and puts identify traits in
//! `context.traits`. Both must land the same way.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Server, WRITE_KEY, poll_until, run_node, run_python};
use serde_json::{Value, json};

/// What a customer should look like once everything is applied.
struct Expected {
    id: &'static str,
    plan: &'static str,
    spend: f64,
    total_spend: f64,
    order_count: f64,
    segments: &'static [&'static str],
}

const BIG_SPENDERS: &str = "Big spenders";
const PRO_PLAN: &str = "Pro plan, high spend";

const EXPECTED: &[Expected] = &[
    Expected {
        id: "segment-alice",
        plan: "pro",
        spend: 250.0,
        total_spend: 115.5,
        order_count: 2.0,
        segments: &[BIG_SPENDERS, PRO_PLAN],
    },
    Expected {
        id: "segment-bob",
        plan: "free",
        spend: 20.0,
        total_spend: 30.0,
        order_count: 1.0,
        segments: &[],
    },
    Expected {
        id: "rudder-carol",
        plan: "pro",
        spend: 300.0,
        total_spend: 150.0,
        order_count: 2.0,
        segments: &[BIG_SPENDERS, PRO_PLAN],
    },
    Expected {
        id: "rudder-dave",
        plan: "pro",
        spend: 50.0,
        total_spend: 500.0,
        order_count: 1.0,
        segments: &[BIG_SPENDERS],
    },
];

fn messages() -> Value {
    let identify = |sdk: &str, user: &str, plan: &str, spend: f64| {
        json!({"sdk": sdk, "type": "identify", "user_id": user,
               "traits": {"plan": plan, "spend": spend, "email": format!("{user}@example.com")}})
    };
    let order = |sdk: &str, user: &str, order_id: &str, revenue: f64| {
        json!({"sdk": sdk, "type": "track", "user_id": user, "event": "Order Completed",
               "properties": {"order_id": order_id, "revenue": revenue, "currency": "USD"}})
    };
    json!([
        identify("segment", "segment-alice", "pro", 250.0),
        order("segment", "segment-alice", "o-a1", 70.0),
        order("segment", "segment-alice", "o-a2", 45.5),
        identify("segment", "segment-bob", "free", 20.0),
        order("segment", "segment-bob", "o-b1", 30.0),
        identify("rudderstack", "rudder-carol", "pro", 300.0),
        order("rudderstack", "rudder-carol", "o-c1", 99.99),
        order("rudderstack", "rudder-carol", "o-c2", 50.01),
        identify("rudderstack", "rudder-dave", "pro", 50.0),
        order("rudderstack", "rudder-dave", "o-d1", 500.0),
    ])
}

fn close(actual: &Value, expected: f64) -> bool {
    actual
        .as_f64()
        .is_some_and(|actual| (actual - expected).abs() < 1e-6)
}

/// Why `customer` does not (yet) look like `expected`, or `Ok`.
fn compare(customer: &Value, expected: &Expected) -> Result<(), String> {
    let attributes = &customer["attributes"];
    let computed = &customer["computed"];
    let mut problems = Vec::new();
    if customer["id"] != json!(expected.id) {
        problems.push(format!("id is {}", customer["id"]));
    }
    if attributes["plan"] != json!(expected.plan) {
        problems.push(format!("attributes.plan is {}", attributes["plan"]));
    }
    if !close(&attributes["spend"], expected.spend) {
        problems.push(format!("attributes.spend is {}", attributes["spend"]));
    }
    let email = format!("{}@example.com", expected.id);
    if attributes["email"] != json!(email) {
        problems.push(format!("attributes.email is {}", attributes["email"]));
    }
    if !close(&computed["total_spend"], expected.total_spend) {
        problems.push(format!(
            "computed.total_spend is {}",
            computed["total_spend"]
        ));
    }
    if !close(&computed["order_count"], expected.order_count) {
        problems.push(format!(
            "computed.order_count is {}",
            computed["order_count"]
        ));
    }
    let segments: BTreeSet<&str> = customer["segments"]
        .as_array()
        .map(|segments| {
            segments
                .iter()
                .filter_map(|segment| segment["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let wanted: BTreeSet<&str> = expected.segments.iter().copied().collect();
    if segments != wanted {
        problems.push(format!("segments are {segments:?}, expected {wanted:?}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {customer}", problems.join("; ")))
    }
}

#[test]
fn both_python_sdks_land_attributes_computed_traits_and_segments() {
    common::python(); // fail before starting anything when it is missing
    let server = Server::start();

    // Created before any data: the built-in computed trait is known up front, and
    // customers must enter as their orders arrive.
    let big_spenders = server.create_segment(BIG_SPENDERS, "total_spend > 100");

    send(&server, &messages());

    // Every identify's traits are stored, whichever SDK sent them (RudderStack's in
    // context.traits), so a segment on them can be created now.
    for expected in EXPECTED {
        server.wait_for_attribute(expected.id, "plan");
    }
    let pro_plan = server.create_segment(PRO_PLAN, r#"plan = "pro" and spend > 100"#);

    for expected in EXPECTED {
        poll_until(
            &format!("customer {} to show its traits and segments", expected.id),
            Duration::from_secs(10),
            || compare(&server.customer(expected.id)?, expected),
        );
    }

    for (segment_id, name) in [(&big_spenders, BIG_SPENDERS), (&pro_plan, PRO_PLAN)] {
        let wanted: BTreeSet<String> = EXPECTED
            .iter()
            .filter(|customer| customer.segments.contains(&name))
            .map(|customer| customer.id.to_string())
            .collect();
        poll_until(
            &format!("the members of {name:?} to be {wanted:?}"),
            Duration::from_secs(10),
            || {
                let reply = server.admin_get(&format!("/segments/{segment_id}/members?limit=100"));
                if reply.status != 200 {
                    return Err(format!("{} {}", reply.status, reply.body));
                }
                let page = reply.json();
                let members: BTreeSet<String> = page["items"]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|id| id.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                if members == wanted && page["next_cursor"].is_null() {
                    Ok(())
                } else {
                    Err(page.to_string())
                }
            },
        );
    }
}

/// Sends `messages` through the Python SDKs.
fn send(server: &Server, messages: &Value) {
    let args = sdk_args(server, messages);
    run_python(
        "sdk_send.py",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

fn sdk_args(server: &Server, messages: &Value) -> Vec<String> {
    vec![
        "--host".into(),
        server.base_url.clone(),
        "--write-key".into(),
        WRITE_KEY.into(),
        "--messages".into(),
        messages.to_string(),
    ]
}

/// Anonymous activity merges into the customer it turns out to be: through an
/// identify that carries both ids (each SDK), and through an alias call.
#[test]
fn anonymous_activity_merges_into_the_identified_customer() {
    common::python();
    let server = Server::start();
    let order = |sdk: &str, anonymous: &str, revenue: i64| {
        json!({"sdk": sdk, "type": "track", "anonymous_id": anonymous,
               "event": "Order Completed", "properties": {"revenue": revenue}})
    };
    send(
        &server,
        &json!([
            order("segment", "anon-seg", 30),
            order("segment", "anon-seg", 40),
            order("rudderstack", "anon-rud", 7),
            order("segment", "anon-alias", 100),
        ]),
    );
    for anonymous in ["anon-seg", "anon-rud", "anon-alias"] {
        poll_until(
            &format!("the anonymous profile {anonymous}"),
            Duration::from_secs(10),
            || server.customer(anonymous).map(|_| ()),
        );
    }
    send(
        &server,
        &json!([
            {"sdk": "segment", "type": "identify", "user_id": "merge-seg",
             "anonymous_id": "anon-seg", "traits": {"plan": "pro"}},
            {"sdk": "rudderstack", "type": "identify", "user_id": "merge-rud",
             "anonymous_id": "anon-rud", "traits": {"plan": "free"}},
            {"sdk": "segment", "type": "alias", "previous_id": "anon-alias", "user_id": "merge-seg"},
        ]),
    );
    for (customer, orders, spend) in [("merge-seg", 3.0, 170.0), ("merge-rud", 1.0, 7.0)] {
        poll_until(
            &format!("{customer} to hold the merged orders"),
            Duration::from_secs(10),
            || {
                let c = server.customer(customer)?;
                let got = (&c["computed"]["order_count"], &c["computed"]["total_spend"]);
                if got == (&json!(orders), &json!(spend)) {
                    Ok(())
                } else {
                    Err(format!("{got:?} in {c}"))
                }
            },
        );
    }
    for anonymous in ["anon-seg", "anon-rud", "anon-alias"] {
        let reply = server.admin_get(&format!("/customers/{anonymous}"));
        assert_eq!(reply.status, 404, "{anonymous} was merged: {}", reply.body);
    }
    // Later anonymous activity of a merged visitor lands on the customer.
    send(&server, &json!([order("rudderstack", "anon-rud", 3)]));
    poll_until(
        "the later order on merge-rud",
        Duration::from_secs(10),
        || {
            let c = server.customer("merge-rud")?;
            if c["computed"]["order_count"] == json!(2.0) {
                Ok(())
            } else {
                Err(c.to_string())
            }
        },
    );
}

/// The Segment Node.js SDK (`@segment/analytics-node`), unchanged, pointed at
/// the server.
#[test]
fn the_segment_node_sdk_lands_traits_and_orders() {
    common::node();
    let server = Server::start();
    let messages = json!([
        {"type": "identify", "user_id": "node-1", "traits": {"plan": "pro", "email": "n@example.com"}},
        {"type": "track", "user_id": "node-1", "event": "Order Completed", "properties": {"revenue": 25}},
        {"type": "track", "user_id": "node-1", "event": "Order Completed", "properties": {"revenue": 17}},
    ]);
    let args = sdk_args(&server, &messages);
    run_node(
        "node_send.mjs",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    poll_until(
        "node-1 with its traits and orders",
        Duration::from_secs(10),
        || {
            let c = server.customer("node-1")?;
            let ok = c["attributes"]["plan"] == json!("pro")
                && c["attributes"]["email"] == json!("n@example.com")
                && c["computed"]["order_count"] == json!(2.0)
                && c["computed"]["total_spend"] == json!(42.0);
            if ok { Ok(()) } else { Err(c.to_string()) }
        },
    );
}
