//! Access control in one place. Every organization-scoped route is declared
//! once in [`org_routes`] with the typed [`Permission`] it needs; the router
//! is built from that table and one middleware ([`guard`]) authenticates the
//! caller (an access token or an API key), resolves the organization of the
//! path, checks membership and role against the permission, and appends the
//! audit entry of every successful mutating call. Handlers receive the checked
//! [`Caller`] and never look at credentials themselves.
//!
//! The matrix (which role holds which permission) is [`Permission::min_role`],
//! written out for people in `docs/permissions.md`; a test keeps the two equal.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use serde_json::{Value as Json, json};
use uuid::Uuid;
use xeno_actors::catalog::Role;

use super::problem::Problem;
use super::{AppState, audit, customers, imports, keys, members, orgs, segments, webhooks};

/// What a route needs. Each permission is held by a role and every role above
/// it (owner > admin > editor > viewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// See the organization, its members and its settings.
    OrgRead,
    /// Leave the organization (any member).
    OrgLeave,
    /// Rename the organization.
    OrgManage,
    /// Delete the organization and all its data.
    OrgDelete,
    SegmentsRead,
    SegmentsWrite,
    CustomersRead,
    /// Create and change customers, orders and field types; run imports.
    CustomersWrite,
    /// Export customer data as CSV.
    CustomersExport,
    /// Erase a customer (right to be forgotten).
    CustomersErase,
    /// See webhook endpoints (with their signing secrets) and deliveries.
    WebhooksRead,
    WebhooksWrite,
    /// Read the audit log.
    AuditRead,
    /// Change roles, remove members, invite.
    MembersManage,
    /// Create, rotate and revoke write keys and API keys.
    KeysManage,
}

impl Permission {
    pub const ALL: [Permission; 15] = [
        Permission::OrgRead,
        Permission::OrgLeave,
        Permission::OrgManage,
        Permission::OrgDelete,
        Permission::SegmentsRead,
        Permission::SegmentsWrite,
        Permission::CustomersRead,
        Permission::CustomersWrite,
        Permission::CustomersExport,
        Permission::CustomersErase,
        Permission::WebhooksRead,
        Permission::WebhooksWrite,
        Permission::AuditRead,
        Permission::MembersManage,
        Permission::KeysManage,
    ];

    /// The lowest role that holds the permission.
    pub fn min_role(self) -> Role {
        use Permission::*;
        match self {
            OrgRead | OrgLeave | SegmentsRead | CustomersRead => Role::Viewer,
            SegmentsWrite | CustomersWrite | CustomersExport => Role::Editor,
            OrgManage | CustomersErase | WebhooksRead | WebhooksWrite | AuditRead
            | MembersManage | KeysManage => Role::Admin,
            OrgDelete => Role::Owner,
        }
    }

    /// The name used in `docs/permissions.md` and in refusals.
    pub fn name(self) -> &'static str {
        use Permission::*;
        match self {
            OrgRead => "org.read",
            OrgLeave => "org.leave",
            OrgManage => "org.manage",
            OrgDelete => "org.delete",
            SegmentsRead => "segments.read",
            SegmentsWrite => "segments.write",
            CustomersRead => "customers.read",
            CustomersWrite => "customers.write",
            CustomersExport => "customers.export",
            CustomersErase => "customers.erase",
            WebhooksRead => "webhooks.read",
            WebhooksWrite => "webhooks.write",
            AuditRead => "audit.read",
            MembersManage => "members.manage",
            KeysManage => "keys.manage",
        }
    }

    pub fn allows(self, role: Role) -> bool {
        role.rank() >= self.min_role().rank()
    }
}

/// The prefix of every organization-scoped path.
pub const ORG_PREFIX: &str = "/api/v1/orgs/{org}";

/// One organization-scoped route of the table.
#[derive(Debug, Clone)]
pub struct OrgRoute {
    pub method: Method,
    /// The full path, e.g. `/api/v1/orgs/{org}/segments/{id}`.
    pub path: String,
    pub permission: Permission,
    /// The audit action of a successful call, e.g. `segment.created`.
    pub action: &'static str,
}

type Handler = MethodRouter<AppState>;

/// The table: every organization-scoped route, its permission, its audit
/// action, and its handler. The router is built from it, so a route cannot
/// exist without a permission.
fn org_routes() -> Vec<(Method, &'static str, Permission, &'static str, Handler)> {
    use Permission::*;
    let no_limit = axum::extract::DefaultBodyLimit::disable;
    vec![
        (Method::GET, "", OrgRead, "org.read", get(orgs::get)),
        (
            Method::PATCH,
            "",
            OrgManage,
            "org.renamed",
            patch(orgs::rename),
        ),
        (
            Method::DELETE,
            "",
            OrgDelete,
            "org.deleted",
            delete(orgs::delete),
        ),
        (
            Method::POST,
            "/leave",
            OrgLeave,
            "member.left",
            post(members::leave),
        ),
        (
            Method::GET,
            "/members",
            OrgRead,
            "member.list",
            get(members::list),
        ),
        (
            Method::PATCH,
            "/members/{user}",
            MembersManage,
            "member.role_changed",
            patch(members::change_role),
        ),
        (
            Method::DELETE,
            "/members/{user}",
            MembersManage,
            "member.removed",
            delete(members::remove),
        ),
        (
            Method::GET,
            "/invitations",
            MembersManage,
            "invitation.list",
            get(members::list_invitations),
        ),
        (
            Method::POST,
            "/invitations",
            MembersManage,
            "invitation.created",
            post(members::invite),
        ),
        (
            Method::POST,
            "/invitations/{id}/cancel",
            MembersManage,
            "invitation.cancelled",
            post(members::cancel_invitation),
        ),
        (
            Method::POST,
            "/invitations/{id}/resend",
            MembersManage,
            "invitation.resent",
            post(members::resend_invitation),
        ),
        (
            Method::GET,
            "/keys",
            KeysManage,
            "key.list",
            get(keys::list),
        ),
        (
            Method::POST,
            "/keys",
            KeysManage,
            "key.created",
            post(keys::create),
        ),
        (
            Method::POST,
            "/keys/{id}/rotate",
            KeysManage,
            "key.rotated",
            post(keys::rotate),
        ),
        (
            Method::DELETE,
            "/keys/{id}",
            KeysManage,
            "key.revoked",
            delete(keys::revoke),
        ),
        (
            Method::GET,
            "/segments",
            SegmentsRead,
            "segment.list",
            get(segments::list),
        ),
        (
            Method::POST,
            "/segments",
            SegmentsWrite,
            "segment.created",
            post(segments::create),
        ),
        (
            Method::POST,
            "/segments/preview",
            SegmentsRead,
            "segment.previewed",
            post(segments::preview),
        ),
        (
            Method::GET,
            "/segments/{id}",
            SegmentsRead,
            "segment.read",
            get(segments::get),
        ),
        (
            Method::PUT,
            "/segments/{id}",
            SegmentsWrite,
            "segment.updated",
            put(segments::update),
        ),
        (
            Method::DELETE,
            "/segments/{id}",
            SegmentsWrite,
            "segment.deleted",
            delete(segments::delete),
        ),
        (
            Method::GET,
            "/segments/{id}/members",
            SegmentsRead,
            "segment.members",
            get(segments::members),
        ),
        (
            Method::GET,
            "/segments/{id}/export",
            CustomersExport,
            "export.segment",
            get(customers::export_segment),
        ),
        (
            Method::GET,
            "/customers",
            CustomersRead,
            "customer.list",
            get(customers::list),
        ),
        (
            Method::POST,
            "/customers",
            CustomersWrite,
            "customer.created",
            post(customers::create),
        ),
        (
            Method::GET,
            "/customers/{id}",
            CustomersRead,
            "customer.read",
            get(customers::get),
        ),
        (
            Method::PATCH,
            "/customers/{id}",
            CustomersWrite,
            "customer.updated",
            patch(customers::update),
        ),
        (
            Method::DELETE,
            "/customers/{id}",
            CustomersErase,
            "customer.erased",
            delete(customers::delete),
        ),
        (
            Method::GET,
            "/exports/customers",
            CustomersExport,
            "export.customers",
            get(customers::export),
        ),
        (
            Method::POST,
            "/orders",
            CustomersWrite,
            "order.created",
            post(customers::create_order),
        ),
        (
            Method::GET,
            "/fields",
            CustomersRead,
            "field.list",
            get(customers::fields),
        ),
        (
            Method::PUT,
            "/fields/{name}",
            CustomersWrite,
            "field.changed",
            put(customers::put_field),
        ),
        (
            Method::GET,
            "/imports",
            CustomersRead,
            "import.list",
            get(imports::list),
        ),
        (
            Method::POST,
            "/imports",
            CustomersWrite,
            "import.uploaded",
            post(imports::create).layer(no_limit()),
        ),
        (
            Method::GET,
            "/imports/{id}",
            CustomersRead,
            "import.read",
            get(imports::get),
        ),
        (
            Method::POST,
            "/imports/{id}/cancel",
            CustomersWrite,
            "import.cancel_requested",
            post(imports::cancel),
        ),
        (
            Method::GET,
            "/imports/{id}/errors",
            CustomersRead,
            "import.errors",
            get(imports::errors),
        ),
        (
            Method::GET,
            "/imports/{id}/events",
            CustomersRead,
            "import.events",
            get(imports::events),
        ),
        (
            Method::GET,
            "/audit",
            AuditRead,
            "audit.read",
            get(audit::list),
        ),
        (
            Method::GET,
            "/webhooks",
            WebhooksRead,
            "webhook.list",
            get(webhooks::list),
        ),
        (
            Method::POST,
            "/webhooks",
            WebhooksWrite,
            "webhook.created",
            post(webhooks::create),
        ),
        (
            Method::GET,
            "/webhooks/{id}",
            WebhooksRead,
            "webhook.read",
            get(webhooks::get),
        ),
        (
            Method::PUT,
            "/webhooks/{id}",
            WebhooksWrite,
            "webhook.updated",
            put(webhooks::update),
        ),
        (
            Method::DELETE,
            "/webhooks/{id}",
            WebhooksWrite,
            "webhook.deleted",
            delete(webhooks::delete),
        ),
        (
            Method::POST,
            "/webhooks/{id}/rotate",
            WebhooksWrite,
            "webhook.secret_rotated",
            post(webhooks::rotate),
        ),
        (
            Method::POST,
            "/webhooks/{id}/test",
            WebhooksWrite,
            "webhook.tested",
            post(webhooks::test),
        ),
        (
            Method::GET,
            "/webhooks/{id}/deliveries",
            WebhooksRead,
            "webhook.deliveries",
            get(webhooks::deliveries),
        ),
        (
            Method::POST,
            "/webhooks/{id}/deliveries/{delivery}/replay",
            WebhooksWrite,
            "webhook.replayed",
            post(webhooks::replay),
        ),
    ]
}

/// The route table without handlers: what the security tests walk.
pub fn org_route_table() -> Vec<OrgRoute> {
    org_routes()
        .into_iter()
        .map(|(method, path, permission, action, _)| OrgRoute {
            method,
            path: format!("{ORG_PREFIX}{path}"),
            permission,
            action,
        })
        .collect()
}

/// What the guard looks routes up by.
pub type RouteIndex = HashMap<(Method, String), (Permission, &'static str)>;

pub fn route_index() -> RouteIndex {
    org_route_table()
        .into_iter()
        .map(|r| ((r.method, r.path), (r.permission, r.action)))
        .collect()
}

/// The organization-scoped router, every route behind [`guard`].
pub fn org_router(state: AppState) -> axum::Router<AppState> {
    let mut router = axum::Router::new();
    for (_, path, _, _, handler) in org_routes() {
        router = router.route(&format!("{ORG_PREFIX}{path}"), handler);
    }
    router.route_layer(axum::middleware::from_fn_with_state(state, guard))
}

/// Who is calling, checked: the organization of the path and the caller's
/// role in it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub org: Uuid,
    pub slug: String,
    pub role: Role,
    /// What the route needs (checked by the guard, and again by
    /// [`Caller::refreshed`]).
    pub permission: Permission,
    pub principal: Principal,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// An authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    User { user: Uuid, session: Uuid },
    Key { key: Uuid, org: Uuid, role: Role },
}

impl Principal {
    /// The actor of audit entries: `user:{id}` or `key:{id}`.
    pub fn actor(&self) -> String {
        match self {
            Principal::User { user, .. } => format!("user:{user}"),
            Principal::Key { key, .. } => format!("key:{key}"),
        }
    }
}

impl Caller {
    /// The organization id, for the slug of the path (always the caller's:
    /// the guard resolved it from the same path).
    pub fn org_id(&self, slug: &str) -> Result<Uuid, Problem> {
        if slug == self.slug {
            Ok(self.org)
        } else {
            Err(Problem::not_found("organization"))
        }
    }

    /// [`Caller::org_id`] and the audit actor.
    pub fn org_and_actor(&self, slug: &str) -> Result<(Uuid, String), Problem> {
        Ok((self.org_id(slug)?, self.principal.actor()))
    }

    pub fn actor(&self) -> String {
        self.principal.actor()
    }

    /// The caller with the role they hold now. The guard checks the role
    /// before the request body arrives, and a client controls how long that
    /// takes: handlers that change roles, invitations, keys or the
    /// organization itself act with the role re-read after the body (a
    /// member removed or demoted meanwhile gets 404 or their new role).
    pub async fn refreshed(mut self, state: &AppState) -> Result<Caller, Problem> {
        if let Principal::User { user, .. } = self.principal {
            let org = self.org;
            self.role = super::blocking(state, move |r| r.membership(org, user))
                .await?
                .ok_or_else(|| Problem::not_found("organization"))?;
            if !self.permission.allows(self.role) {
                return Err(refusal(self.permission, self.role));
            }
        }
        Ok(self)
    }

    pub fn user(&self) -> Option<Uuid> {
        match self.principal {
            Principal::User { user, .. } => Some(user),
            Principal::Key { .. } => None,
        }
    }
}

/// What a handler adds to its call's audit entry: the target and a short
/// before/after summary (response extension).
#[derive(Debug, Clone)]
pub struct AuditNote {
    pub target: Option<String>,
    pub summary: Json,
}

/// Marks a response whose call the handler audited itself (or that must not
/// be audited, e.g. the organization it belonged to is gone).
#[derive(Debug, Clone, Copy)]
pub struct Audited;

/// An address range: `addr/prefix`, or one address.
pub type Cidr = (std::net::IpAddr, u8);

/// Parses `10.0.0.0/8`, `::1` or `192.0.2.7`.
pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match text.trim().split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text.trim(), None),
    };
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("`{text}` is not an address or CIDR range"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("`{text}`: the prefix must be 0 to {max}"))?,
        None => max,
    };
    Ok((addr, prefix))
}

fn in_range(ip: std::net::IpAddr, (net, prefix): Cidr) -> bool {
    use std::net::IpAddr::{V4, V6};
    match (ip, net) {
        (V4(a), V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (V6(a), V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The client address and user agent of a request. The client is the TCP
/// peer, unless the peer is a trusted proxy: then it is the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy (entries left
/// of it are whatever the client claimed).
pub fn origin(
    request_headers: &HeaderMap,
    connect: Option<&ConnectInfo<SocketAddr>>,
    trusted: &[Cidr],
) -> (Option<String>, Option<String>) {
    let peer = connect.map(|c| c.0.ip());
    let trusted_ip = |ip: std::net::IpAddr| trusted.iter().any(|t| in_range(ip, *t));
    let ip = match peer {
        Some(p) if trusted_ip(p) => {
            let forwarded: Vec<std::net::IpAddr> = request_headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map_while(|s| s.trim().parse().ok())
                .collect();
            forwarded
                .into_iter()
                .rev()
                .find(|ip| !trusted_ip(*ip))
                .or(Some(p))
        }
        other => other,
    };
    let agent = request_headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect());
    (ip.map(|ip| ip.to_string()), agent)
}

/// The client address and user agent, as an extractor.
#[derive(Debug, Clone)]
pub struct ClientOrigin(pub Option<String>, pub Option<String>);

impl ClientOrigin {
    pub fn pair(&self) -> (Option<String>, Option<String>) {
        (self.0.clone(), self.1.clone())
    }
}

impl axum::extract::FromRequestParts<AppState> for ClientOrigin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let (ip, agent) = origin(
            &parts.headers,
            parts.extensions.get::<ConnectInfo<SocketAddr>>(),
            &state.trusted_proxies,
        );
        Ok(ClientOrigin(ip, agent))
    }
}

/// The bearer credential of a request.
fn bearer(headers: &HeaderMap) -> Result<&str, Problem> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Problem::unauthorized(
                "send an access token or API key as `Authorization: Bearer <token>`",
            )
        })?;
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Problem::unauthorized("the Authorization header must be `Bearer <token>`"))
}

/// Authenticates the bearer credential: an access token (a JWT, whose session
/// must still be live) or an API key.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, Problem> {
    let credential = bearer(headers)?;
    let refused = || Problem::unauthorized("the access token or API key is not valid");
    if credential.matches('.').count() == 2 {
        let claims = state
            .auth
            .tokens
            .verify(credential, crate::auth::now_secs())
            .map_err(|e| {
                tracing::debug!(reason = %e, "access token refused");
                refused()
            })?;
        let user = Uuid::parse_str(&claims.sub).map_err(|_| refused())?;
        let session = Uuid::parse_str(&claims.sid).map_err(|_| refused())?;
        let live = super::blocking(state, move |r| r.session(session))
            .await?
            .filter(|s| s.user == user && !s.revoked && s.expires_at_ms > crate::auth::now_ms());
        if live.is_none() {
            return Err(refused());
        }
        return Ok(Principal::User { user, session });
    }
    let key = state.runtime.principal(credential).ok_or_else(refused)?;
    Ok(Principal::Key {
        key: key.key_id,
        org: key.org,
        role: key.role,
    })
}

/// The guard of every organization-scoped route (see the module doc).
pub async fn guard(
    State(state): State<AppState>,
    matched: MatchedPath,
    mut request: Request,
    next: Next,
) -> Response {
    let method = if request.method() == Method::HEAD {
        Method::GET
    } else {
        request.method().clone()
    };
    let Some(&(permission, action)) = state
        .routes
        .get(&(method.clone(), matched.as_str().to_string()))
    else {
        // Unreachable while the router is built from the table; refuse rather
        // than serve a route nobody gave a permission.
        tracing::error!(
            path = matched.as_str(),
            "route without a permission refused"
        );
        return Problem::new(StatusCode::FORBIDDEN, "this route has no permission").into_response();
    };
    let slug = request
        .uri()
        .path()
        .split('/')
        .nth(4)
        .unwrap_or_default()
        .to_string();
    // What the call was about: the path after the organization, with its ids.
    let called = request
        .uri()
        .path()
        .splitn(5, '/')
        .nth(4)
        .map(|rest| rest.strip_prefix(slug.as_str()).unwrap_or(rest).to_string())
        .unwrap_or_default();
    let (ip, user_agent) = origin(
        request.headers(),
        request.extensions().get::<ConnectInfo<SocketAddr>>(),
        &state.trusted_proxies,
    );
    let headers = request.headers().clone();
    let caller = match check(&state, &headers, slug, (ip, user_agent), permission).await {
        Ok(c) => c,
        Err(p) => {
            // Read what the client sent before refusing: closing a connection
            // with unread bytes resets it, and the client would see the reset
            // instead of the answer.
            let _ = axum::body::to_bytes(request.into_body(), 1 << 20).await;
            return p.into_response();
        }
    };
    request.extensions_mut().insert(caller.clone());
    let response = next.run(request).await;
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS)
        && action != "segment.previewed";
    if mutating
        && response.status().is_success()
        && response.extensions().get::<Audited>().is_none()
    {
        let note = response.extensions().get::<AuditNote>().cloned();
        let target = note
            .as_ref()
            .and_then(|n| n.target.clone())
            .unwrap_or(called);
        let summary = note
            .map(|n| n.summary)
            .unwrap_or_else(|| json!({ "status": response.status().as_u16() }));
        record(&state, &caller, action, &target, summary).await;
    }
    response
}

/// Appends an audit entry for `caller` (failure to audit is logged, the call
/// already happened).
pub async fn record(state: &AppState, caller: &Caller, action: &str, target: &str, summary: Json) {
    let entry = xeno_actors::audit::AuditInput {
        actor: caller.actor(),
        action: action.to_string(),
        target: target.to_string(),
        summary,
        ip: caller.ip.clone(),
        user_agent: caller.user_agent.clone(),
    };
    let org = caller.org;
    if let Err(e) = super::blocking(state, move |r| r.audit_with(org, entry)).await {
        tracing::error!(org = %org, action, error = %e.detail, "audit entry not written");
    }
}

/// `slug` is the fourth segment of `/api/v1/orgs/{org}/...`.
async fn check(
    state: &AppState,
    headers: &HeaderMap,
    slug: String,
    (ip, user_agent): (Option<String>, Option<String>),
    permission: Permission,
) -> Result<Caller, Problem> {
    let principal = authenticate(state, headers).await?;
    let org = state
        .runtime
        .org_by_slug(&slug)
        .ok_or_else(|| Problem::not_found("organization"))?;
    let role = match principal {
        Principal::Key {
            org: key_org, role, ..
        } => (key_org == org.id).then_some(role),
        Principal::User { user, .. } => {
            let org_id = org.id;
            super::blocking(state, move |r| r.membership(org_id, user)).await?
        }
    }
    // Not a member: the same answer as no such organization, so slugs cannot
    // be probed.
    .ok_or_else(|| Problem::not_found("organization"))?;
    if !permission.allows(role) {
        return Err(refusal(permission, role));
    }
    Ok(Caller {
        org: org.id,
        slug,
        role,
        permission,
        principal,
        ip,
        user_agent,
    })
}

/// The 403 of a role without the permission.
fn refusal(permission: Permission, role: Role) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        format!(
            "this needs the {} permission (role {} or above); you are {}",
            permission.name(),
            permission.min_role().as_str(),
            role.as_str()
        ),
    )
}

/// The permission matrix as the Markdown table of `docs/permissions.md`.
pub fn matrix_markdown() -> String {
    let roles = [Role::Viewer, Role::Editor, Role::Admin, Role::Owner];
    let mut out =
        String::from("| permission | viewer | editor | admin | owner |\n|---|---|---|---|---|\n");
    for p in Permission::ALL {
        out.push_str(&format!("| `{}` |", p.name()));
        for r in roles {
            out.push_str(if p.allows(r) { " ✓ |" } else { "   |" });
        }
        out.push('\n');
    }
    out
}

/// The routes of each permission, as the second table of
/// `docs/permissions.md`.
pub fn routes_markdown() -> String {
    let mut out = String::from("| route | permission |\n|---|---|\n");
    for r in org_route_table() {
        out.push_str(&format!(
            "| `{} {}` | `{}` |\n",
            r.method,
            r.path,
            r.permission.name()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/permissions.md says what the code enforces.
    #[test]
    fn the_permissions_document_matches_the_code() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/permissions.md"
        ))
        .unwrap();
        assert!(
            doc.contains(&matrix_markdown()),
            "docs/permissions.md: the matrix differs from the code; it should read:\n{}",
            matrix_markdown()
        );
        assert!(
            doc.contains(&routes_markdown()),
            "docs/permissions.md: the route table differs from the code; it should read:\n{}",
            routes_markdown()
        );
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_forwarded() {
        let peer = |ip: &str| ConnectInfo(SocketAddr::new(ip.parse().unwrap(), 1));
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.7, 10.1.2.3".parse().unwrap(),
        );
        let trusted = [parse_cidr("10.0.0.0/8").unwrap()];
        // Not trusted: the header is the client's word, ignored.
        assert_eq!(
            origin(&headers, Some(&peer("192.0.2.1")), &trusted)
                .0
                .as_deref(),
            Some("192.0.2.1")
        );
        // Trusted: the right-most entry that is not a trusted proxy.
        assert_eq!(
            origin(&headers, Some(&peer("10.0.0.5")), &trusted)
                .0
                .as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(
            origin(&HeaderMap::new(), Some(&peer("10.0.0.5")), &trusted)
                .0
                .as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            origin(&headers, Some(&peer("10.0.0.5")), &[]).0.as_deref(),
            Some("10.0.0.5")
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope").is_err());
        assert!(in_range("::1".parse().unwrap(), parse_cidr("::1").unwrap()));
        assert!(in_range(
            "1.2.3.4".parse().unwrap(),
            parse_cidr("0.0.0.0/0").unwrap()
        ));
    }

    #[test]
    fn every_route_is_listed_once() {
        let table = org_route_table();
        let index = route_index();
        assert_eq!(table.len(), index.len(), "a method and path appear twice");
    }
}
