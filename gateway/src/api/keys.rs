//! Keys for machines: write keys (ingest, named by source) and management API
//! keys (scoped to a role). The secret is shown once, at creation or rotation,
//! and stored hashed; its prefix (`xeno_wk_`, `xeno_ak_`) makes it
//! recognisable in logs and to secret scanners.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use xeno_actors::catalog::Role;
use xeno_actors::identity::{KeyKind, KeyRecord};

use super::access::{AuditNote, Caller};
use super::problem::Problem;
use super::{ApiBody, AppState, blocking, json_body, path_id};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// `write` (ingest) or `api` (management API).
    pub kind: KeyKind,
    /// What it is for, e.g. the source of a write key ("web", "ios").
    pub name: String,
    /// API keys: the role the key acts with (at most the creator's own).
    #[schema(value_type = Option<String>, example = "editor")]
    pub role: Option<Role>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub items: Vec<KeyRecord>,
}

/// A key with its secret: the only time the secret is shown.
#[derive(Serialize, ToSchema)]
pub struct KeySecret {
    pub key: KeyRecord,
    pub secret: String,
}

#[utoipa::path(operation_id = "list_keys", get, path = "/api/v1/orgs/{org}/keys", tag = "keys",
    params(("org" = String, Path)), responses((status = 200, body = KeyList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<KeyList>, Problem> {
    let org = caller.org_id(&org)?;
    Ok(Json(KeyList {
        items: blocking(&state, move |r| r.keys(org)).await?,
    }))
}

#[utoipa::path(operation_id = "create_key", post, path = "/api/v1/orgs/{org}/keys", tag = "keys",
    params(("org" = String, Path)), request_body = CreateKey,
    responses((status = 201, body = KeySecret), (status = 403, description = "a role above the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
    ApiBody(body): ApiBody,
) -> Result<Response, Problem> {
    let org = caller.org_id(&org)?;
    let caller = caller.refreshed(&state).await?;
    let body: CreateKey = json_body(&body)?;
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/name",
            "a key name has 1 to 100 characters",
        ));
    }
    if let Some(role) = body.role
        && role.rank() > caller.role.rank()
    {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            format!(
                "you are {}: a key you create can have at most that role",
                caller.role.as_str()
            ),
        ));
    }
    let (kind, role) = (body.kind, body.role);
    let (key, secret) = blocking(&state, move |r| r.create_key(org, kind, &name, role)).await?;
    let note = AuditNote {
        target: Some(format!("key:{}", key.id)),
        summary: json!({ "kind": key.kind, "name": key.name, "role": key.role, "prefix": key.prefix }),
    };
    Ok((
        StatusCode::CREATED,
        Extension(note),
        Json(KeySecret { key, secret }),
    )
        .into_response())
}

#[utoipa::path(operation_id = "rotate_key", post, path = "/api/v1/orgs/{org}/keys/{id}/rotate", tag = "keys",
    params(("org" = String, Path), ("id" = uuid::Uuid, Path)),
    responses((status = 200, description = "the new secret; the old one stops working at once", body = KeySecret), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn rotate(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Problem> {
    let org = caller.org_id(&org)?;
    let caller = caller.refreshed(&state).await?;
    let id = path_id(&id, "key")?;
    check_key_role(&state, &caller, org, id).await?;
    let (key, secret) = blocking(&state, move |r| r.rotate_key(org, id)).await?;
    let note = AuditNote {
        target: Some(format!("key:{id}")),
        summary: json!({ "prefix": key.prefix }),
    };
    Ok((Extension(note), Json(KeySecret { key, secret })).into_response())
}

#[utoipa::path(operation_id = "revoke_key", delete, path = "/api/v1/orgs/{org}/keys/{id}", tag = "keys",
    params(("org" = String, Path), ("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Problem> {
    let org = caller.org_id(&org)?;
    let caller = caller.refreshed(&state).await?;
    let id = path_id(&id, "key")?;
    check_key_role(&state, &caller, org, id).await?;
    let key = blocking(&state, move |r| r.revoke_key(org, id)).await?;
    let note = AuditNote {
        target: Some(format!("key:{id}")),
        summary: json!({ "kind": key.kind, "name": key.name, "prefix": key.prefix }),
    };
    Ok((Extension(note), StatusCode::NO_CONTENT).into_response())
}

/// A key with a role above the caller's is out of the caller's reach.
async fn check_key_role(
    state: &AppState,
    caller: &Caller,
    org: uuid::Uuid,
    id: uuid::Uuid,
) -> Result<(), Problem> {
    let keys = blocking(state, move |r| r.keys(org)).await?;
    let key = keys
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| Problem::not_found("key"))?;
    if key.role.is_some_and(|r| r.rank() > caller.role.rank()) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "this key has a role above yours",
        ));
    }
    Ok(())
}
