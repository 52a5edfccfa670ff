//! Walks the access table (`xeno_gateway::api::access::org_route_table`, the
//! table the router is built from): every organization-scoped route refuses a
//! second organization's credentials with no side effect, refuses another
//! organization's ids on the caller's own organization, and gives each role
//! (as a person's token and as an API key) exactly what the permission matrix
//! says. A route added to the table is walked without touching this file; a
//! path parameter the walk does not know fails it, so a new kind of route
//! cannot pass unchecked.

mod common;

use common::services::{PASSWORD, SmtpSink, account, invitation_token};
use common::{Reply, Server};
use serde_json::{Value, json};
use xeno_actors::catalog::Role;
use xeno_gateway::api::access::{OrgRoute, Permission, org_route_table};

fn access_token(server: &Server, sink: &SmtpSink, email: &str) -> String {
    account(server, sink, email)["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The ids a path's parameters take.
#[derive(Debug, Clone)]
struct Ids {
    segment: String,
    customer: String,
    webhook: String,
    import: String,
    invitation: String,
    key: String,
    user: String,
    delivery: String,
    field: String,
}

impl Ids {
    fn random() -> Ids {
        let r = || uuid::Uuid::now_v7().to_string();
        Ids {
            segment: r(),
            customer: format!("nobody-{}", r()),
            webhook: r(),
            import: r(),
            invitation: r(),
            key: r(),
            user: r(),
            delivery: r(),
            field: "walk_field".into(),
        }
    }
}

/// `route.path` with `{org}` = `org` and every other parameter filled from
/// `ids`; panics on a parameter it does not know.
fn fill(route: &OrgRoute, org: &str, ids: &Ids) -> String {
    let path = route.path.replace("{org}", org);
    let mut out = String::new();
    let mut previous = "";
    for segment in path.split('/').skip(1) {
        out.push('/');
        if segment.starts_with('{') {
            let value = match (previous, segment) {
                ("segments", "{id}") => &ids.segment,
                ("customers", "{id}") => &ids.customer,
                ("webhooks", "{id}") => &ids.webhook,
                ("imports", "{id}") => &ids.import,
                ("invitations", "{id}") => &ids.invitation,
                ("keys", "{id}") => &ids.key,
                ("members", "{user}") => &ids.user,
                ("deliveries", "{delivery}") => &ids.delivery,
                ("fields", "{name}") => &ids.field,
                _ => panic!(
                    "the access walk does not know the parameter {segment} after /{previous} in {} {}: \
                     teach `fill` what it takes, so the new route is walked",
                    route.method, route.path
                ),
            };
            out.push_str(value);
        } else {
            out.push_str(segment);
        }
        previous = segment;
    }
    out
}

/// Whether the route reads a request body (a body sent to one that does not
/// may be left unread, and a server that closes such a connection races the
/// client's read of the answer).
fn takes_body(route: &OrgRoute) -> bool {
    match route.method.as_str() {
        "PUT" | "PATCH" => true,
        "DELETE" => route.path.ends_with("{org}"),
        "POST" => ![
            "/cancel", "/resend", "/rotate", "/test", "/replay", "/leave",
        ]
        .iter()
        .any(|tail| route.path.ends_with(tail)),
        _ => false,
    }
}

/// A body that would succeed if the guard let it through (for the walk of
/// another organization's credentials).
fn valid_body(route: &OrgRoute) -> Option<Value> {
    if !takes_body(route) {
        return None;
    }
    let tail = route.path.trim_start_matches("/api/v1/orgs/{org}");
    Some(match (route.method.as_str(), tail) {
        ("PATCH", "") => json!({"name": "pwned"}),
        ("DELETE", "") => json!({"confirm": "acme"}),
        ("PATCH", "/members/{user}") => json!({"role": "owner"}),
        ("POST", "/invitations") => json!({"email": "mallory@evil.example", "role": "owner"}),
        ("POST", "/keys") => json!({"kind": "api", "name": "backdoor", "role": "owner"}),
        ("POST", "/segments") | ("PUT", "/segments/{id}") => {
            json!({"name": "stolen", "rule": "plan = \"pro\""})
        }
        ("POST", "/segments/preview") => json!({"rule": "plan = \"pro\""}),
        ("POST", "/customers") => json!({"id": "planted", "traits": {"plan": "pro"}}),
        ("PATCH", "/customers/{id}") => json!({"traits": {"plan": "free"}}),
        ("POST", "/orders") => json!({"customer_id": "c-1", "order_id": "o-9", "total": 10}),
        ("PUT", "/fields/{name}") => json!({"type": "text", "description": "planted"}),
        ("POST", "/webhooks") | ("PUT", "/webhooks/{id}") => {
            json!({"url": "http://127.0.0.1:9/steal"})
        }
        ("GET", _) | ("DELETE", _) | ("POST", _) => return None,
        _ => json!({}),
    })
}

/// Everything an owner sees of an organization (exports write their own
/// audit entries, so those are left out).
fn snapshot(server: &Server, token: &str, org: &str) -> Value {
    let get = |path: &str| {
        server
            .call(
                "GET",
                &format!("/api/v1/orgs/{org}{path}"),
                Some(token),
                None,
            )
            .expect(200, path)
    };
    let mut audit = get("/audit?limit=1000");
    audit["items"] = Value::Array(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] != "customers.exported")
            .cloned()
            .collect(),
    );
    json!({
        "org": get(""), "members": get("/members"), "invitations": get("/invitations"), "keys": get("/keys"),
        "segments": get("/segments"), "customers": get("/customers"), "webhooks": get("/webhooks"),
        "fields": get("/fields"), "imports": get("/imports"), "audit": audit,
        "customer": get("/customers/c-1"),
    })
}

struct World {
    server: Server,
    _sink: SmtpSink,
    owner: String,
    ids: Ids,
    /// Role, person's access token, API key of that role.
    members: Vec<(Role, String, String)>,
    mallory: String,
    mallory_key: String,
}

fn world() -> World {
    let sink = SmtpSink::start();
    let server = Server::start_with(&sink.settings());
    let owner = access_token(&server, &sink, "alice@acme.example");
    server
        .call(
            "POST",
            "/api/v1/orgs",
            Some(&owner),
            Some(&json!({"slug": "acme"})),
        )
        .expect(201, "acme");
    let org = |path: &str| format!("/api/v1/orgs/acme{path}");
    let mut members = Vec::new();
    for role in [Role::Viewer, Role::Editor, Role::Admin, Role::Owner] {
        let token = if role == Role::Owner {
            owner.clone()
        } else {
            let email = format!("{}@acme.example", role.as_str());
            server
                .call(
                    "POST",
                    &org("/invitations"),
                    Some(&owner),
                    Some(&json!({"email": email, "role": role})),
                )
                .expect(201, "invite");
            let link = invitation_token(&sink.wait_for(&email, "invited", 0).body);
            let joined = server
                .call(
                    "POST",
                    &format!("/api/v1/invitations/{link}/accept"),
                    None,
                    Some(&json!({"password": PASSWORD})),
                )
                .expect(200, "accept");
            joined["tokens"]["access_token"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let key = server
            .call(
                "POST",
                &org("/keys"),
                Some(&owner),
                Some(&json!({"kind": "api", "name": role.as_str(), "role": role})),
            )
            .expect(201, "key");
        members.push((role, token, key["secret"].as_str().unwrap().to_string()));
    }
    server
        .call(
            "POST",
            &org("/customers"),
            Some(&owner),
            Some(&json!({"id": "c-1", "traits": {"plan": "pro"}})),
        )
        .expect(201, "customer");
    let segment = server
        .call(
            "POST",
            &org("/segments"),
            Some(&owner),
            Some(&json!({"name": "pro", "rule": "plan = \"pro\""})),
        )
        .expect(201, "segment");
    let webhook = server
        .call(
            "POST",
            &org("/webhooks"),
            Some(&owner),
            Some(&json!({"url": "http://127.0.0.1:9/hook"})),
        )
        .expect(201, "webhook");
    let invitation = server
        .call(
            "POST",
            &org("/invitations"),
            Some(&owner),
            Some(&json!({"email": "pending@acme.example", "role": "viewer"})),
        )
        .expect(201, "pending invitation");
    let write_key = server
        .call(
            "POST",
            &org("/keys"),
            Some(&owner),
            Some(&json!({"kind": "write", "name": "web"})),
        )
        .expect(201, "write key");
    let viewer_id = {
        let list = server
            .call("GET", &org("/members"), Some(&owner), None)
            .expect(200, "members");
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["role"] == "viewer")
            .unwrap()["user"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ids = Ids {
        segment: segment["id"].as_str().unwrap().into(),
        customer: "c-1".into(),
        webhook: webhook["id"].as_str().unwrap().into(),
        import: uuid::Uuid::now_v7().to_string(),
        invitation: invitation["id"].as_str().unwrap().into(),
        key: write_key["key"]["id"].as_str().unwrap().into(),
        user: viewer_id,
        delivery: uuid::Uuid::now_v7().to_string(),
        field: "plan".into(),
    };
    let mallory = access_token(&server, &sink, "mallory@evil.example");
    server
        .call(
            "POST",
            "/api/v1/orgs",
            Some(&mallory),
            Some(&json!({"slug": "evil"})),
        )
        .expect(201, "evil");
    let mallory_key = server
        .call(
            "POST",
            "/api/v1/orgs/evil/keys",
            Some(&mallory),
            Some(&json!({"kind": "api", "name": "evil", "role": "owner"})),
        )
        .expect(201, "evil key")["secret"]
        .as_str()
        .unwrap()
        .to_string();
    World {
        server,
        _sink: sink,
        owner,
        ids,
        members,
        mallory,
        mallory_key,
    }
}

/// One call on a connection of its own (see `Server::call_fresh`).
fn send(
    server: &Server,
    route: &OrgRoute,
    path: &str,
    bearer: &str,
    body: Option<&Value>,
) -> Reply {
    server.call_fresh(route.method.as_str(), path, Some(bearer), body)
}

fn is_org_not_found(reply: &Reply) -> bool {
    reply.status == 404 && reply.body.contains("organization not found")
}

#[test]
fn every_org_route_refuses_another_organization() {
    let w = world();
    let table = org_route_table();
    assert!(
        table.len() >= 45,
        "the table lists every organization route ({})",
        table.len()
    );
    let before = snapshot(&w.server, &w.owner, "acme");
    for route in &table {
        let body = valid_body(route);
        // Another organization's person and key, on this organization.
        for credential in [&w.mallory, &w.mallory_key] {
            let path = fill(route, "acme", &w.ids);
            let reply = send(&w.server, route, &path, credential, body.as_ref());
            assert!(
                is_org_not_found(&reply),
                "{} {path} with another organization's credentials answered {}: {}",
                route.method,
                reply.status,
                reply.body
            );
        }
        // This organization's ids, on the caller's own organization.
        if route.path.contains("{id}")
            || route.path.contains("{user}")
            || route.path.contains("{delivery}")
        {
            let path = fill(route, "evil", &w.ids);
            for credential in [&w.mallory, &w.mallory_key] {
                let reply = send(&w.server, route, &path, credential, body.as_ref());
                assert!(
                    !(200..300).contains(&reply.status)
                        || route.method == "DELETE" && route.path.ends_with("/customers/{id}"),
                    "{} {path} reached acme's object from evil: {} {}",
                    route.method,
                    reply.status,
                    reply.body
                );
                if route.method == "GET" {
                    assert_eq!(reply.status, 404, "{} {path}: {}", route.method, reply.body);
                }
            }
        }
        // No credentials at all.
        let reply = w.server.call_fresh(
            route.method.as_str(),
            &fill(route, "acme", &w.ids),
            None,
            body.as_ref(),
        );
        assert_eq!(
            reply.status, 401,
            "{} {} without credentials: {}",
            route.method, route.path, reply.body
        );
    }
    let after = snapshot(&w.server, &w.owner, "acme");
    assert_eq!(before, after, "another organization's calls changed acme");
}

#[test]
fn every_role_gets_exactly_what_the_matrix_gives() {
    let w = world();
    let table = org_route_table();
    let before = snapshot(&w.server, &w.owner, "acme");
    // Ids nobody has, and empty bodies: an allowed call gets past the guard
    // and fails in the handler (404, 400, 422), so the walk changes nothing.
    let random = Ids::random();
    for (role, token, key) in &w.members {
        for (who, credential) in [("token", token), ("api key", key)] {
            for route in table
                .iter()
                .filter(|r| r.permission != Permission::OrgLeave)
            {
                let path = fill(route, "acme", &random);
                let body = takes_body(route).then(|| json!({}));
                let reply = send(&w.server, route, &path, credential, body.as_ref());
                if route.permission.allows(*role) {
                    // Past the guard, into the handler: its own answer to
                    // ids nobody has and empty bodies, never an error of ours.
                    assert!(
                        reply.status != 401
                            && reply.status != 403
                            && reply.status != 405
                            && reply.status < 500
                            && !is_org_not_found(&reply),
                        "{} ({who}) may {} {} ({}), but got {}: {}",
                        role.as_str(),
                        route.method,
                        route.path,
                        route.permission.name(),
                        reply.status,
                        reply.body
                    );
                } else {
                    assert_eq!(
                        reply.status,
                        403,
                        "{} ({who}) may not {} {} ({}): {}",
                        role.as_str(),
                        route.method,
                        route.path,
                        route.permission.name(),
                        reply.body
                    );
                }
            }
        }
    }
    let after = snapshot(&w.server, &w.owner, "acme");
    assert_eq!(before, after, "the role walk changed something");

    // Leaving: any member may (keys cannot, they are revoked instead); the
    // last owner may not.
    for (role, token, key) in &w.members {
        let reply = w
            .server
            .call("POST", "/api/v1/orgs/acme/leave", Some(key), None);
        assert_eq!(reply.status, 403, "an API key leaves: {}", reply.body);
        let reply = w
            .server
            .call("POST", "/api/v1/orgs/acme/leave", Some(token), None);
        let expected = if *role == Role::Owner { 409 } else { 204 };
        assert_eq!(
            reply.status,
            expected,
            "{} leaves: {}",
            role.as_str(),
            reply.body
        );
    }
}
