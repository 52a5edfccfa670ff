//! The activity feed of an organization.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use xeno_actors::audit::AuditEntry;

use super::problem::Problem;
use super::{Access, ApiQuery, AppState, authorize, page_limit};

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Only entries of this action, e.g. `import.completed`.
    pub action: Option<String>,
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

#[utoipa::path(operation_id = "list_audit", get, path = "/api/v1/orgs/{org}/audit", tag = "audit",
    params(("org" = String, Path), AuditQuery),
    responses((status = 200, description = "oldest first", body = AuditList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Path(org): Path<String>,
    ApiQuery(query): ApiQuery<AuditQuery>,
    headers: HeaderMap,
) -> Result<Json<AuditList>, Problem> {
    let org = authorize(&state, &headers, &org, Access::Read)?;
    let limit = page_limit(query.limit)?;
    let page = super::blocking(&state, move |r| {
        r.audit_log(org, query.action.as_deref(), query.cursor.as_deref(), limit)
    })
    .await?;
    Ok(Json(AuditList {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}
