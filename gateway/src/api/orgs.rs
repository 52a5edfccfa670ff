//! Organizations: create and list mine (user routes), get, rename and delete
//! (organization-scoped, behind the access guard).

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;
use xeno_actors::catalog::{OrgRecord, Role};

use super::access::{AuditNote, Audited, Caller};
use super::account::signed_in_user;
use super::problem::Problem;
use super::{ApiBody, AppState, blocking, json_body};

/// An organization as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgInfo {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub created_at: String,
    /// The caller's role in it.
    #[schema(value_type = String, example = "owner")]
    pub role: Role,
}

fn info(record: OrgRecord, role: Role) -> OrgInfo {
    let name = if record.name.is_empty() {
        record.slug.clone()
    } else {
        record.name
    };
    OrgInfo {
        id: record.id,
        slug: record.slug,
        name,
        created_at: record.created_at,
        role,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrgList {
    pub items: Vec<OrgInfo>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    /// 1 to 64 of a-z, 0-9 and -; unique; used in paths.
    pub slug: String,
    /// Display name (the slug when absent).
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameOrg {
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteOrg {
    /// The organization's slug, typed again to confirm.
    pub confirm: String,
}

fn check_name(name: &str) -> Result<String, Problem> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/name",
            "a name has 1 to 200 characters",
        ));
    }
    Ok(name.to_string())
}

#[utoipa::path(operation_id = "list_my_orgs", get, path = "/api/v1/orgs", tag = "organizations",
    responses((status = 200, body = OrgList), (status = 401, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_mine(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<OrgList>, Problem> {
    let (user, _) = signed_in_user(&state, &headers).await?;
    let orgs = blocking(&state, move |r| r.orgs_of(user)).await?;
    Ok(Json(OrgList {
        items: orgs.into_iter().map(|(o, role)| info(o, role)).collect(),
    }))
}

#[utoipa::path(operation_id = "create_org", post, path = "/api/v1/orgs", tag = "organizations",
    request_body = CreateOrg,
    responses((status = 201, body = OrgInfo),
        (status = 409, description = "slug taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    client: super::access::ClientOrigin,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<(StatusCode, Json<OrgInfo>), Problem> {
    let (user, _) = signed_in_user(&state, &headers).await?;
    let body: CreateOrg = json_body(&body)?;
    let name = match &body.name {
        Some(n) => check_name(n)?,
        None => body.slug.trim().to_string(),
    };
    let slug = body.slug.clone();
    let record = blocking(&state, move |r| r.create_org(&slug, &name, user)).await?;
    let org = record.id;
    let (ip, user_agent) = client.pair();
    let entry = xeno_actors::audit::AuditInput {
        actor: format!("user:{user}"),
        action: "org.created".into(),
        target: format!("org:{org}"),
        summary: json!({ "slug": record.slug, "name": record.name }),
        ip,
        user_agent,
    };
    blocking(&state, move |r| r.audit_with(org, entry)).await?;
    Ok((StatusCode::CREATED, Json(info(record, Role::Owner))))
}

#[utoipa::path(operation_id = "get_org", get, path = "/api/v1/orgs/{org}", tag = "organizations",
    params(("org" = String, Path, description = "organization slug")),
    responses((status = 200, body = OrgInfo), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<OrgInfo>, Problem> {
    let id = caller.org_id(&org)?;
    let record = state
        .runtime
        .org_by_slug(&org)
        .filter(|o| o.id == id)
        .ok_or_else(|| Problem::not_found("organization"))?;
    Ok(Json(info(record, caller.role)))
}

#[utoipa::path(operation_id = "rename_org", patch, path = "/api/v1/orgs/{org}", tag = "organizations",
    params(("org" = String, Path)), request_body = RenameOrg,
    responses((status = 200, body = OrgInfo), (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn rename(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
    ApiBody(body): ApiBody,
) -> Result<Response, Problem> {
    let id = caller.org_id(&org)?;
    let caller = caller.refreshed(&state).await?;
    let body: RenameOrg = json_body(&body)?;
    let name = check_name(&body.name)?;
    let before = state
        .runtime
        .org_by_slug(&org)
        .map(|o| o.name)
        .unwrap_or_default();
    let record = blocking(&state, move |r| r.rename_org(id, &name)).await?;
    let note = AuditNote {
        target: Some(format!("org:{id}")),
        summary: json!({ "before": before, "after": record.name }),
    };
    Ok((Extension(note), Json(info(record, caller.role))).into_response())
}

#[utoipa::path(operation_id = "delete_org", delete, path = "/api/v1/orgs/{org}", tag = "organizations",
    params(("org" = String, Path)), request_body = DeleteOrg,
    responses((status = 200, description = "everything of the organization is gone", body = Object),
        (status = 422, description = "the confirmation is not the slug", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
    ApiBody(body): ApiBody,
) -> Result<Response, Problem> {
    let id = caller.org_id(&org)?;
    let caller = caller.refreshed(&state).await?;
    let body: DeleteOrg = json_body(&body)?;
    if body.confirm != caller.slug {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/confirm",
            "type the organization's slug to confirm the deletion",
        ));
    }
    // The deletion record is written first and is the one entry that stays.
    let entry = xeno_actors::audit::AuditInput {
        actor: caller.actor(),
        action: "org.deleted".into(),
        target: format!("org:{id}"),
        summary: json!({ "slug": caller.slug }),
        ip: caller.ip.clone(),
        user_agent: caller.user_agent.clone(),
    };
    let record = blocking(&state, move |r| r.audit_with(id, entry)).await?;
    let deleted = state.runtime.delete_org(id, Some(record.id)).await?;
    tracing::warn!(org = %id, slug = %caller.slug, actor = %caller.actor(), "organization deleted");
    Ok((
        Extension(Audited),
        Json(json!({ "deleted": caller.slug, "summary": deleted })),
    )
        .into_response())
}
