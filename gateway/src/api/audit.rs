//! The activity feed (audit log) of an organization: every mutating call and
//! security event, filtered by actor, action, target and time, a page at a
//! time.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use xeno_actors::audit::{AuditEntry, AuditFilter};

use super::access::Caller;
use super::problem::Problem;
use super::{ApiQuery, AppState, page_limit};

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Only entries of this actor, e.g. `user:{id}` or `key:{id}`.
    pub actor: Option<String>,
    /// Only entries of this action, e.g. `key.created`; a prefix ending in `.`
    /// (`key.`) takes every action under it.
    pub action: Option<String>,
    /// Only entries about this target, e.g. `key:{id}`.
    pub target: Option<String>,
    /// Entries at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Entries before this time (RFC 3339).
    pub to: Option<String>,
    /// 1 to 1000, 100 by default.
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub items: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

fn time_ms(pointer: &str, text: &Option<String>) -> Result<Option<i64>, Problem> {
    let Some(text) = text else { return Ok(None) };
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| Problem::field(StatusCode::BAD_REQUEST, pointer, "not an RFC 3339 time"))?;
    Ok(Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
}

#[utoipa::path(operation_id = "list_audit", get, path = "/api/v1/orgs/{org}/audit", tag = "audit",
    params(("org" = String, Path), AuditQuery),
    responses((status = 200, description = "oldest first", body = AuditList),
        (status = 400, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Path(org): Path<String>,
    ApiQuery(query): ApiQuery<AuditQuery>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<AuditList>, Problem> {
    let org = caller.org_id(&org)?;
    let limit = page_limit(query.limit)?;
    let filter = AuditFilter {
        actor: query.actor.clone(),
        action: query.action.clone(),
        target: query.target.clone(),
        from_ms: time_ms("/from", &query.from)?,
        to_ms: time_ms("/to", &query.to)?,
    };
    let page = super::blocking(&state, move |r| {
        r.audit_query(org, &filter, query.cursor.as_deref(), limit)
    })
    .await?;
    Ok(Json(AuditList {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}
