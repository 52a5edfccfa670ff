//! End to end: segment entries and exits reach a customer's webhook endpoint, signed
//! so that the Standard Webhooks reference library (`standardwebhooks`, PyPI)
//! verifies them; time windows close on their own within the 2 s the design
//! promises; an endpoint that is down gets every delivery once it is back, each
//! under the `webhook-id` it was first attempted with.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant};

use common::{Delivery, Receiver, Server, now_millis, poll_until};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const HIGH_SPEND: &str = "High spend";

/// Declares `spend` as a number the way a tenant does, by sending it: a rule can
/// only name attributes the tenant has seen.
fn seed_spend_attribute(server: &Server) {
    server.ingest(
        "/v1/identify",
        &json!({"userId": "seed-customer", "traits": {"spend": 0}}),
    );
    server.wait_for_attribute("seed-customer", "spend");
}

fn identify(user: &str, spend: f64) -> Value {
    json!({"type": "identify", "userId": user, "traits": {"spend": spend, "plan": "pro"}})
}

/// The deliveries by webhook-id, checking that every copy of one id (at-least-once
/// delivery may repeat one) carries the same body.
fn distinct(deliveries: &[Delivery]) -> BTreeMap<String, Delivery> {
    let mut by_id: BTreeMap<String, Delivery> = BTreeMap::new();
    for delivery in deliveries {
        if let Some(first) = by_id.get(&delivery.webhook_id) {
            assert_eq!(
                first.body, delivery.body,
                "two deliveries share webhook-id {} but differ",
                delivery.webhook_id
            );
        } else {
            by_id.insert(delivery.webhook_id.clone(), delivery.clone());
        }
    }
    by_id
}

/// Transitions seen, as (customer, "entered"|"exited") pairs, from distinct ids.
fn transitions(deliveries: &BTreeMap<String, Delivery>) -> BTreeSet<(String, String)> {
    deliveries
        .values()
        .map(|delivery| {
            (
                delivery.customer_id().to_string(),
                delivery.body["data"]["transition"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

fn is_rfc3339(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|text| OffsetDateTime::parse(text, &Rfc3339).is_ok())
}

/// Checks the documented payload of one delivery.
fn check_payload(delivery: &Delivery, segment_id: &str, segment_name: &str) {
    let body = &delivery.body;
    let data = &body["data"];
    let transition = data["transition"].as_str().unwrap_or("");
    assert!(
        matches!(transition, "entered" | "exited"),
        "transition is neither entered nor exited: {body}"
    );
    assert_eq!(
        body["type"],
        json!(format!("segment.{transition}")),
        "type does not match the transition: {body}"
    );
    assert_eq!(
        data["organization"],
        json!(common::ORG),
        "organization: {body}"
    );
    assert_eq!(
        data["segment"]["id"],
        json!(segment_id),
        "segment id: {body}"
    );
    assert_eq!(
        data["segment"]["name"],
        json!(segment_name),
        "segment name: {body}"
    );
    assert!(
        !delivery.customer_id().is_empty(),
        "no customer id in the payload: {body}"
    );
    assert!(
        is_rfc3339(&body["timestamp"]),
        "timestamp is not RFC 3339: {body}"
    );
    assert!(is_rfc3339(&data["at"]), "data.at is not RFC 3339: {body}");
}

#[test]
fn customers_entering_and_leaving_a_segment_get_verified_webhooks() {
    let receiver = Receiver::start();
    let server = Server::start();
    seed_spend_attribute(&server);
    let segment = server.create_segment(HIGH_SPEND, "spend > 100");
    let (_webhook, secret) = server.create_webhook(&receiver.url, &[&segment]);
    receiver.set_secret(&secret);

    server.ingest(
        "/v1/batch",
        &json!({"batch": [
            identify("customer-1", 150.0),
            identify("customer-2", 200.0),
            identify("customer-3", 500.0),
            identify("customer-4", 50.0),
        ]}),
    );
    let entered: BTreeSet<(String, String)> = ["customer-1", "customer-2", "customer-3"]
        .iter()
        .map(|customer| (customer.to_string(), "entered".to_string()))
        .collect();
    poll_until(
        "segment.entered webhooks for customer-1, customer-2 and customer-3",
        Duration::from_secs(10),
        || {
            let seen = transitions(&distinct(&receiver.deliveries()));
            if entered.is_subset(&seen) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    );

    // customer-1's spend drops under the threshold: it leaves the segment.
    server.ingest(
        "/v1/identify",
        &json!({"userId": "customer-1", "traits": {"spend": 10}}),
    );
    let mut expected = entered.clone();
    expected.insert(("customer-1".to_string(), "exited".to_string()));
    let deliveries = poll_until(
        "a segment.exited webhook for customer-1",
        Duration::from_secs(10),
        || {
            let deliveries = distinct(&receiver.deliveries());
            if transitions(&deliveries).contains(&("customer-1".to_string(), "exited".to_string()))
            {
                Ok(deliveries)
            } else {
                Err(format!("{:?}", transitions(&deliveries)))
            }
        },
    );

    receiver.assert_every_request_verified();
    assert_eq!(
        transitions(&deliveries),
        expected,
        "exactly these transitions, each under its own webhook-id (customer-4 never entered)"
    );
    for delivery in deliveries.values() {
        check_payload(delivery, &segment, HIGH_SPEND);
        let spend = &delivery.body["data"]["customer"]["traits"]["spend"];
        let wanted = match (delivery.customer_id(), delivery.kind()) {
            ("customer-1", "segment.entered") => 150.0,
            ("customer-1", _) => 10.0,
            ("customer-2", _) => 200.0,
            _ => 500.0,
        };
        assert_eq!(
            spend.as_f64(),
            Some(wanted),
            "the payload carries the customer's attributes at the transition: {}",
            delivery.body
        );
    }
    for attempt in receiver.attempts() {
        assert!(
            attempt
                .content_type
                .as_deref()
                .is_some_and(|kind| kind.starts_with("application/json")),
            "webhook-id {:?} came with content-type {:?}",
            attempt.webhook_id,
            attempt.content_type
        );
    }
}

#[test]
fn a_time_window_closes_with_an_exit_webhook_within_two_seconds() {
    let receiver = Receiver::start();
    let server = Server::start();
    let segment_name = "Ordered in the last 3 seconds";
    let segment = server.create_segment(segment_name, r#"performed "Order Completed" within 3s"#);
    let (_webhook, secret) = server.create_webhook(&receiver.url, &[&segment]);
    receiver.set_secret(&secret);

    let (timestamp, sent_at_ms) = now_millis();
    server.ingest(
        "/v1/track",
        &json!({"userId": "window-customer", "event": "Order Completed",
                "properties": {"revenue": 25}, "timestamp": timestamp}),
    );
    // The window closes at the event's time + 3 s; nothing else is sent after it.
    let boundary_ms = (sent_at_ms + 3_000) as f64;

    let find = |kind: &str| {
        receiver
            .deliveries()
            .into_iter()
            .find(|delivery| delivery.customer_id() == "window-customer" && delivery.kind() == kind)
    };
    let exited = poll_until(
        "the segment.exited webhook of window-customer",
        Duration::from_secs(15),
        || find("segment.exited").ok_or_else(|| format!("{:?}", receiver.deliveries())),
    );
    let entered = find("segment.entered").expect("the entry was delivered before the exit");

    receiver.assert_every_request_verified();
    check_payload(&entered, &segment, segment_name);
    check_payload(&exited, &segment, segment_name);
    assert!(
        entered.received_at <= exited.received_at,
        "entry delivered after the exit: {entered:?} {exited:?}"
    );
    let late_ms = exited.received_at - boundary_ms;
    eprintln!("exit webhook received {late_ms:.0} ms after the window closed");
    assert!(
        late_ms >= 0.0,
        "the exit arrived {:.0} ms before the window closed (event at {timestamp}): {:?}",
        -late_ms,
        exited.body
    );
    assert!(
        late_ms <= 2_000.0,
        "the exit arrived {late_ms:.0} ms after the window closed (event at {timestamp}); \
         the limit is 2000 ms: {:?}",
        exited.body
    );
}

#[test]
fn an_endpoint_that_was_down_gets_every_delivery_under_its_first_webhook_id() {
    let receiver = Receiver::start_down();
    let server = Server::start();
    seed_spend_attribute(&server);
    let segment = server.create_segment(HIGH_SPEND, "spend > 100");
    let (webhook, secret) = server.create_webhook(&receiver.url, &[&segment]);
    receiver.set_secret(&secret);

    let customers = ["down-1", "down-2", "down-3", "down-4"];
    let outage_started = Instant::now();
    let batch: Vec<Value> = customers
        .iter()
        .enumerate()
        .map(|(i, customer)| identify(customer, 200.0 + i as f64))
        .collect();
    server.ingest("/v1/batch", &json!({ "batch": batch }));

    // Each entry is attempted, verified and refused with 503 while the endpoint is down.
    let refused_customers = || -> BTreeSet<String> {
        receiver
            .attempts()
            .into_iter()
            .filter(|attempt| attempt.status == 503 && attempt.verified)
            .filter_map(|attempt| {
                attempt.body["data"]["customer"]["id"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    };
    let all: BTreeSet<String> = customers.iter().map(|c| c.to_string()).collect();
    poll_until(
        "a refused (503) attempt for each entering customer",
        Duration::from_secs(10),
        || {
            let refused = refused_customers();
            if refused == all {
                Ok(())
            } else {
                Err(format!("{refused:?}"))
            }
        },
    );
    // The outage lasts about 3 s, long enough for retries to fail too.
    if let Some(rest) = Duration::from_secs(3).checked_sub(outage_started.elapsed()) {
        thread::sleep(rest);
    }
    receiver.come_up();

    let deliveries = poll_until(
        "every entry delivered after the endpoint came back",
        Duration::from_secs(30),
        || {
            let deliveries = distinct(&receiver.deliveries());
            let delivered: BTreeSet<String> = deliveries
                .values()
                .map(|delivery| delivery.customer_id().to_string())
                .collect();
            if delivered == all {
                Ok(deliveries)
            } else {
                Err(format!("delivered so far: {delivered:?}"))
            }
        },
    );

    receiver.assert_every_request_verified();
    let attempts = receiver.attempts();
    for customer in customers {
        let delivered: Vec<&Delivery> = deliveries
            .values()
            .filter(|delivery| delivery.customer_id() == customer)
            .collect();
        assert_eq!(
            delivered.len(),
            1,
            "{customer} entered once, so one webhook-id: {delivered:?}"
        );
        let delivered = delivered[0];
        check_payload(delivered, &segment, HIGH_SPEND);
        assert_eq!(delivered.kind(), "segment.entered", "{:?}", delivered.body);

        let refused: Vec<_> = attempts
            .iter()
            .filter(|attempt| {
                attempt.status == 503
                    && attempt.verified
                    && attempt.body["data"]["customer"]["id"] == json!(customer)
            })
            .collect();
        let refused_ids: BTreeSet<&str> = refused
            .iter()
            .filter_map(|attempt| attempt.webhook_id.as_deref())
            .collect();
        assert_eq!(
            refused_ids,
            BTreeSet::from([delivered.webhook_id.as_str()]),
            "{customer}: the webhook-ids of the refused attempts must be the one finally delivered"
        );
        for attempt in refused {
            assert_eq!(
                attempt.body, delivered.body,
                "{customer}: a retry under webhook-id {} carried another body",
                delivered.webhook_id
            );
        }
    }

    // The delivery log of the webhook agrees: every entry delivered, after retries.
    poll_until(
        "the deliveries API to list the 4 entries as delivered",
        Duration::from_secs(10),
        || {
            let reply =
                server.admin_get(&format!("/webhooks/{webhook}/deliveries?status=delivered"));
            if reply.status != 200 {
                return Err(format!("{} {}", reply.status, reply.body));
            }
            let page = reply.json();
            let items = page["items"].as_array().cloned().unwrap_or_default();
            let retried = items
                .iter()
                .filter(|item| item["status"] == json!("delivered"))
                .filter(|item| item["attempts"].as_u64().is_some_and(|n| n >= 2))
                .count();
            if items.len() == customers.len() && retried == customers.len() {
                Ok(())
            } else {
                Err(page.to_string())
            }
        },
    );
}
