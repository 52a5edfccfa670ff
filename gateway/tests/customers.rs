//! Customer data end to end against a real `xeno serve`: the customers API
//! (create, update, list with filter/search/sort/cursor, orders, the schema and
//! type changes), erasure with suppression, and segment and list exports.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Server, poll_until};
use serde_json::{Value, json};

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

fn create(server: &Server, id: &str, traits: Value) -> Value {
    server
        .admin_post("/customers", &json!({"id": id, "traits": traits}))
        .expect(201, &format!("create {id}"))
}

#[test]
fn customers_api_writes_through_events_and_lists_with_filter_search_sort_and_cursor() {
    let server = Server::start();
    let big = server.create_segment("big spenders", "total_spend >= 100");

    // Create: the answer is the customer as applied.
    let ada = create(
        &server,
        "ada",
        json!({"email": "Ada@Example.com", "name": "Ada Lovelace", "city": "London", "age": 36}),
    );
    assert_eq!(ada["attributes"]["city"], json!("London"), "{ada}");
    create(
        &server,
        "bob",
        json!({"email": "bob@example.com", "name": "Bob Stone", "city": "Paris", "age": 52}),
    );
    create(
        &server,
        "cy",
        json!({"email": "cy@example.com", "name": "Cy Young", "age": 19}),
    );
    for i in 0..25 {
        create(
            &server,
            &format!("bulk-{i:02}"),
            json!({"age": i, "city": "Oslo"}),
        );
    }
    let dup = server.admin_post("/customers", &json!({"id": "ada", "traits": {}}));
    assert_eq!(dup.status, 409, "a second create of an id: {}", dup.body);
    let wrong = server.admin_post(
        "/customers",
        &json!({"id": "dee", "traits": {"age": "old"}}),
    );
    assert_eq!(
        wrong.status, 422,
        "a string for a number field: {}",
        wrong.body
    );
    assert_eq!(
        wrong.json()["errors"][0]["pointer"],
        json!("/traits/age"),
        "{}",
        wrong.body
    );
    let computed = server.admin_post(
        "/customers",
        &json!({"id": "dee", "traits": {"total_spend": 5}}),
    );
    assert_eq!(
        computed.status, 422,
        "setting a computed trait: {}",
        computed.body
    );
    assert_eq!(
        server.admin_get("/customers/dee").status,
        404,
        "refused writes create nothing"
    );

    // Update merges; null clears.
    let bob = server
        .admin_call(
            "PATCH",
            "/customers/bob",
            Some(&json!({"traits": {"city": "Lyon", "age": null}})),
        )
        .expect(200, "patch bob");
    assert_eq!(bob["attributes"]["city"], json!("Lyon"), "{bob}");
    assert!(bob["attributes"].get("age").is_none(), "age cleared: {bob}");
    assert_eq!(
        server
            .admin_call(
                "PATCH",
                "/customers/nobody",
                Some(&json!({"traits": {"age": 1}}))
            )
            .status,
        404
    );

    // Orders: computed traits and segments follow; the same order twice counts once.
    let order = json!({"customer_id": "ada", "order_id": "o-1", "currency": "EUR",
        "items": [{"product_id": "p1", "name": "Tea", "price": 40.0, "quantity": 2},
                  {"sku": "s2", "price": 30.5}]});
    let after = server
        .admin_post("/orders", &order)
        .expect(201, "order o-1");
    assert_eq!(after["computed"]["total_spend"], json!(110.5), "{after}");
    assert_eq!(after["computed"]["order_count"], json!(1.0), "{after}");
    assert!(
        after["segments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == json!(big)),
        "ada entered `big spenders`: {after}"
    );
    let again = server
        .admin_post("/orders", &order)
        .expect(201, "order o-1 again");
    assert_eq!(
        again["computed"]["order_count"],
        json!(1.0),
        "a retried order counts once: {again}"
    );
    let bad_order = server.admin_post(
        "/orders",
        &json!({"customer_id": "ada", "order_id": "o-2", "items": [{"price": -1}]}),
    );
    assert_eq!(bad_order.status, 422, "{}", bad_order.body);
    assert_eq!(
        bad_order.json()["errors"][0]["pointer"],
        json!("/items/0/price")
    );

    // List: filter (the rule DSL), search, sort, and a cursor that visits all.
    let adults = server
        .admin_get("/customers?filter=age%20%3E%3D%2020&limit=1000")
        .expect(200, "filter");
    let adult_ids: BTreeSet<String> = ids(&adults).into_iter().collect();
    let expected: BTreeSet<String> = ["ada", "bulk-20", "bulk-21", "bulk-22", "bulk-23", "bulk-24"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(adult_ids, expected, "age >= 20 (bob's age was cleared)");
    let bad_filter = server.admin_get("/customers?filter=age%20%3E%3E%201");
    assert_eq!(bad_filter.status, 422, "{}", bad_filter.body);

    let by_email = server
        .admin_get("/customers?q=ADA%40")
        .expect(200, "search by email");
    assert_eq!(ids(&by_email), vec!["ada"], "case-insensitive email prefix");
    let by_name = server
        .admin_get("/customers?q=stone")
        .expect(200, "search by a word of the name");
    assert_eq!(ids(&by_name), vec!["bob"]);
    let by_id = server
        .admin_get("/customers?q=bulk-1")
        .expect(200, "search by id prefix");
    assert_eq!(ids(&by_id).len(), 10);

    let oldest = server
        .admin_get("/customers?sort=-age&limit=3")
        .expect(200, "sort");
    assert_eq!(
        ids(&oldest),
        vec!["ada", "bulk-24", "bulk-23"],
        "descending by age"
    );
    let youngest = server
        .admin_get("/customers?sort=age&limit=2")
        .expect(200, "sort");
    assert_eq!(ids(&youngest), vec!["bulk-00", "bulk-01"]);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/customers?sort=age&limit=4&cursor={c}"),
            None => "/customers?sort=age&limit=4".to_string(),
        };
        let page = server.admin_get(&path).expect(200, &path);
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 28, "every customer once: {seen:?}");
    assert_eq!(
        seen.iter().collect::<BTreeSet<_>>().len(),
        28,
        "no repeats: {seen:?}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("bob"),
        "no age sorts last: {seen:?}"
    );

    // The schema: inferred, computed; a type change existing data refuses.
    let fields = server.admin_get("/fields").expect(200, "fields");
    let field = |name: &str| {
        fields["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == json!(name))
            .cloned()
            .unwrap_or_else(|| panic!("no field {name}: {fields}"))
    };
    assert_eq!(field("age")["type"], json!("number"));
    assert_eq!(field("city")["origin"], json!("inferred"));
    assert_eq!(field("total_spend")["origin"], json!("computed"));

    create(&server, "zed", json!({"zip": "02134"}));
    create(&server, "yan", json!({"zip": "75001"}));
    create(&server, "xia", json!({"zip": "SW1A"}));
    let refused = server.admin_call("PUT", "/fields/zip", Some(&json!({"type": "number"})));
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(
        refused.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("1 customers"),
        "names the count: {}",
        refused.body
    );
    assert!(
        refused.body.contains("xia"),
        "names an offender: {}",
        refused.body
    );
    server
        .admin_call(
            "PATCH",
            "/customers/xia",
            Some(&json!({"traits": {"zip": null}})),
        )
        .expect(200, "clear xia's zip");
    let changed = server
        .admin_call(
            "PUT",
            "/fields/zip",
            Some(&json!({"type": "number", "description": "postal code"})),
        )
        .expect(200, "zip to number");
    assert_eq!(changed["type"], json!("number"), "{changed}");
    assert_eq!(changed["description"], json!("postal code"), "{changed}");
    let zed = server.customer("zed").unwrap();
    assert_eq!(
        zed["attributes"]["zip"],
        json!(2134.0),
        "converted in place: {zed}"
    );
    let segment = server.create_segment("zip over 50000", "zip > 50000");
    let members = server
        .admin_get(&format!("/segments/{segment}/members"))
        .expect(200, "members");
    assert_eq!(
        members["items"],
        json!(["yan"]),
        "numbers compare as numbers"
    );

    let audit = server
        .admin_get("/audit?action=field.changed")
        .expect(200, "audit");
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "{audit}");
}

#[test]
fn erasing_a_customer_forgets_it_and_refuses_its_id_for_the_suppression_period() {
    let server = Server::start();
    // Declared ahead of data, so the segment can name it.
    server
        .admin_call("PUT", "/fields/city", Some(&json!({"type": "string"})))
        .expect(200, "declare city");
    let segment = server.create_segment("Londoners", "city = \"London\"");
    create(
        &server,
        "erin",
        json!({"email": "erin@example.com", "city": "London"}),
    );
    create(&server, "finn", json!({"city": "London"}));
    server.ingest(
        "/v1/track",
        &json!({"userId": "erin", "event": "Order Completed", "properties": {"revenue": 10}}),
    );
    // An anonymous profile merged into erin is erased with her.
    server.ingest(
        "/v1/identify",
        &json!({"anonymousId": "anon-e", "traits": {"plan": "pro"}}),
    );
    server.ingest(
        "/v1/alias",
        &json!({"previousId": "anon-e", "userId": "erin"}),
    );
    poll_until("the order and the merge", Duration::from_secs(10), || {
        let erin = server.customer("erin")?;
        match (
            &erin["computed"]["order_count"],
            &erin["attributes"]["plan"],
        ) {
            (Value::Number(n), Value::String(_)) if n.as_f64() == Some(1.0) => Ok(()),
            _ => Err(erin.to_string()),
        }
    });

    let erased = server
        .admin_call("DELETE", "/customers/erin", None)
        .expect(200, "erase");
    let erased_ids: BTreeSet<&str> = erased["erased_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(erased_ids, BTreeSet::from(["erin", "anon-e"]), "{erased}");
    assert_eq!(server.admin_get("/customers/erin").status, 404);
    assert_eq!(server.admin_get("/customers/anon-e").status, 404);
    let members = server
        .admin_get(&format!("/segments/{segment}/members"))
        .expect(200, "members");
    assert_eq!(members["items"], json!(["finn"]), "erin left the segment");
    let listed = server.admin_get("/customers?q=erin").expect(200, "search");
    assert_eq!(ids(&listed), Vec::<String>::new(), "not listed");

    // Later ingest is refused (and said so), as are API writes.
    let reply = server.ingest_reply(
        "/v1/batch",
        &json!({"batch": [
            {"type": "identify", "userId": "finn", "traits": {"age": 3}},
            {"type": "identify", "userId": "erin", "traits": {"city": "Paris"}},
            {"type": "track", "anonymousId": "anon-e", "event": "Viewed"},
        ]}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["suppressed"], json!([1, 2]), "{}", reply.body);
    let write = server.admin_post("/customers", &json!({"id": "erin", "traits": {}}));
    assert_eq!(write.status, 409, "{}", write.body);
    let order = server.admin_post(
        "/orders",
        &json!({"customer_id": "erin", "order_id": "x", "total": 1}),
    );
    assert_eq!(order.status, 409, "{}", order.body);
    server.wait_for_attribute("finn", "age");
    assert_eq!(
        server.admin_get("/customers/erin").status,
        404,
        "nothing came back"
    );
    assert_eq!(
        server
            .admin_call("DELETE", "/customers/nobody", None)
            .status,
        404
    );
    let again = server
        .admin_call("DELETE", "/customers/erin", None)
        .expect(200, "a repeated erasure finishes what may be left");
    assert_eq!(
        again["suppressed_until"], erased["suppressed_until"],
        "{again}"
    );
}

#[test]
fn exports_stream_segment_members_and_filtered_lists_as_csv() {
    let server = Server::start();
    for i in 0..2500 {
        server.ingest(
            "/v1/identify",
            &json!({"userId": format!("c{i:04}"), "traits": {"score": i, "note": format!("says \"hi\", n{i}")}}),
        );
    }
    server.wait_for_attribute("c2499", "score");
    let segment = server.create_segment("high", "score >= 1000");
    let reply = server.admin_get(&format!("/segments/{segment}/export"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut lines = reply.body.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("id,"), "{header}");
    assert!(
        header.contains("score") && header.contains("total_spend") && header.ends_with("segments"),
        "{header}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(
        rows.len(),
        1500,
        "every member, across pages and partitions"
    );
    let c1234 = rows
        .iter()
        .find(|r| r.starts_with("c1234,"))
        .expect("c1234 exported");
    assert!(
        c1234.contains("\"says \"\"hi\"\", n1234\""),
        "quoted per RFC 4180: {c1234}"
    );
    assert!(c1234.ends_with(",high"), "segment names: {c1234}");

    let filtered = server.admin_get("/exports/customers?filter=score%20%3C%2010");
    assert_eq!(filtered.status, 200, "{}", filtered.body);
    assert_eq!(
        filtered.body.lines().count(),
        11,
        "header and 10 rows: {}",
        filtered.body
    );
    let many = server.admin_get("/exports/customers?filter=score%20%3E%3D%201000");
    assert_eq!(many.status, 200, "{}", many.body);
    let mut exported: Vec<&str> = many
        .body
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    exported.sort_unstable();
    exported.dedup();
    assert_eq!(
        exported.len(),
        1500,
        "every match once, across pages and partitions"
    );
    let bad = server.admin_get("/exports/customers?filter=score%20%3C");
    assert_eq!(
        bad.status, 422,
        "a bad filter is a problem, not a truncated file: {}",
        bad.body
    );
    let audit = server
        .admin_get("/audit?action=customers.exported")
        .expect(200, "audit");
    let entries = audit["items"].as_array().unwrap();
    assert_eq!(
        entries.len(),
        3,
        "each export is in the activity feed: {audit}"
    );
    assert_eq!(
        entries[1]["summary"]["filter"],
        json!("score < 10"),
        "{audit}"
    );
}
