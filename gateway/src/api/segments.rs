//! Segment routes: create (DSL text or JSON AST), read, list, update with
//! backfill, delete, preview, members.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use xeno_actors::{SegmentInfo, parse_rule};

use super::access::Caller;
use super::problem::Problem;
use super::{ApiBody, ApiQuery, AppState, json_body, page_limit, path_id};
use axum::extract::Extension;

/// A new segment, or a change of one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentBody {
    /// Display name (required on create).
    pub name: Option<String>,
    /// The rule: DSL text, e.g. `total_spend > 5000 and not performed "Order Completed" within 90d`,
    /// or the JSON rule object.
    #[schema(value_type = Object)]
    pub rule: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentList {
    pub items: Vec<SegmentInfo>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PageQuery {
    /// 1 to 1000, 100 by default.
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewBody {
    #[schema(value_type = Object)]
    pub rule: Value,
    /// How many matching customer ids to return (0 to 100, default 10).
    pub sample: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewResult {
    /// Exact number of customers matching now.
    pub count: u64,
    pub sample: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberList {
    /// Customer ids.
    pub items: Vec<String>,
    pub next_cursor: Option<String>,
}

fn required_rule(rule: &Option<Value>) -> Result<&Value, Problem> {
    rule.as_ref()
        .ok_or_else(|| Problem::field(StatusCode::BAD_REQUEST, "/rule", "`rule` is required"))
}

#[utoipa::path(operation_id = "create_segment", post, path = "/api/v1/orgs/{org}/segments", tag = "segments",
    params(("org" = String, Path, description = "organization slug")),
    request_body = SegmentBody,
    responses((status = 201, body = SegmentInfo),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid rule", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
    ApiBody(body): ApiBody,
) -> Result<(StatusCode, Json<SegmentInfo>), Problem> {
    let org = caller.org_id(&org)?;
    let body: SegmentBody = json_body(&body)?;
    let name = body
        .name
        .as_deref()
        .ok_or_else(|| Problem::field(StatusCode::BAD_REQUEST, "/name", "`name` is required"))?;
    let rule = parse_rule(required_rule(&body.rule)?)?;
    let segment = state.runtime.create_segment(org, name, rule).await?;
    Ok((StatusCode::CREATED, Json(segment)))
}

#[utoipa::path(operation_id = "list_segments", get, path = "/api/v1/orgs/{org}/segments", tag = "segments",
    params(("org" = String, Path, description = "organization slug"), PageQuery),
    responses((status = 200, body = SegmentList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Path(org): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<SegmentList>, Problem> {
    let org = caller.org_id(&org)?;
    let limit = page_limit(query.limit)?;
    let page = state
        .runtime
        .list_segments(org, query.cursor.as_deref(), limit)
        .await?;
    Ok(Json(SegmentList {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(operation_id = "get_segment", get, path = "/api/v1/orgs/{org}/segments/{id}", tag = "segments",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, body = SegmentInfo), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<SegmentInfo>, Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "segment")?;
    Ok(Json(state.runtime.get_segment(org, id).await?))
}

#[utoipa::path(operation_id = "update_segment", put, path = "/api/v1/orgs/{org}/segments/{id}", tag = "segments",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    request_body = SegmentBody,
    responses((status = 200, body = SegmentInfo), (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    ApiBody(body): ApiBody,
) -> Result<Json<SegmentInfo>, Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "segment")?;
    let body: SegmentBody = json_body(&body)?;
    let rule = body.rule.as_ref().map(parse_rule).transpose()?;
    let segment = state
        .runtime
        .update_segment(org, id, body.name.as_deref(), rule)
        .await?;
    Ok(Json(segment))
}

#[utoipa::path(operation_id = "delete_segment", delete, path = "/api/v1/orgs/{org}/segments/{id}", tag = "segments",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<StatusCode, Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "segment")?;
    state.runtime.delete_segment(org, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(operation_id = "preview_segment", post, path = "/api/v1/orgs/{org}/segments/preview", tag = "segments",
    params(("org" = String, Path)),
    request_body = PreviewBody,
    responses((status = 200, body = PreviewResult), (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn preview(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
    ApiBody(body): ApiBody,
) -> Result<Json<PreviewResult>, Problem> {
    let org = caller.org_id(&org)?;
    let body: PreviewBody = json_body(&body)?;
    let sample = body.sample.unwrap_or(10);
    if sample > 100 {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "/sample",
            "sample must be 0 to 100",
        ));
    }
    let rule = parse_rule(&body.rule)?;
    let (count, sample) = state.runtime.preview(org, rule, sample).await?;
    Ok(Json(PreviewResult { count, sample }))
}

#[utoipa::path(operation_id = "list_segment_members", get, path = "/api/v1/orgs/{org}/segments/{id}/members", tag = "segments",
    params(("org" = String, Path), ("id" = Uuid, Path), PageQuery),
    responses((status = 200, body = MemberList), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn members(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<PageQuery>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<MemberList>, Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "segment")?;
    let limit = page_limit(query.limit)?;
    let page = state
        .runtime
        .members(org, id, query.cursor.as_deref(), limit)
        .await?;
    Ok(Json(MemberList {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}
