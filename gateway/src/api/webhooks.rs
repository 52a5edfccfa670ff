//! Webhook endpoint routes: subscribe, list, change, delete, rotate the
//! secret, send a test, list deliveries (dead letters among them), replay.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use xeno_actors::dispatch::{DeliveryRecord, DeliveryStatus};
use xeno_actors::{WebhookChange, WebhookInfo};

use super::access::Caller;
use super::problem::Problem;
use super::{ApiBody, ApiQuery, AppState, blocking, json_body, page_limit, path_id};
use axum::extract::Extension;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    pub url: String,
    /// `segment.entered` and/or `segment.exited`; both when absent.
    pub events: Option<Vec<String>>,
    /// Only these segments; all when absent.
    pub segments: Option<Vec<Uuid>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    /// `null` for all segments.
    #[serde(default, deserialize_with = "some_or_null")]
    #[schema(value_type = Option<Vec<Uuid>>)]
    pub segments: Option<Option<Vec<Uuid>>>,
    pub enabled: Option<bool>,
}

fn some_or_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Vec<Uuid>>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<WebhookInfo>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub items: Vec<DeliveryRecord>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DeliveryQuery {
    /// `pending`, `delivered` or `dead`.
    pub status: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Queued {
    /// The delivery's id.
    pub id: String,
}

#[utoipa::path(operation_id = "create_webhook", post, path = "/api/v1/orgs/{org}/webhooks", tag = "webhooks",
    params(("org" = String, Path)), request_body = CreateWebhook,
    responses((status = 201, body = WebhookInfo), (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
    ApiBody(body): ApiBody,
) -> Result<(StatusCode, Json<WebhookInfo>), Problem> {
    let org = caller.org_id(&org)?;
    let body: CreateWebhook = json_body(&body)?;
    let events = body.events.unwrap_or_else(|| {
        xeno_actors::catalog::WEBHOOK_EVENTS
            .iter()
            .map(|e| e.to_string())
            .collect()
    });
    let info = blocking(&state, move |r| {
        r.create_webhook(org, body.url, events, body.segments)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

#[utoipa::path(operation_id = "list_webhooks", get, path = "/api/v1/orgs/{org}/webhooks", tag = "webhooks",
    params(("org" = String, Path)), responses((status = 200, body = WebhookList)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<WebhookList>, Problem> {
    let org = caller.org_id(&org)?;
    let page = state.runtime.list_webhooks(org)?;
    Ok(Json(WebhookList {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(operation_id = "get_webhook", get, path = "/api/v1/orgs/{org}/webhooks/{id}", tag = "webhooks",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, body = WebhookInfo), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<WebhookInfo>, Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "webhook")?;
    Ok(Json(state.runtime.get_webhook(org, id)?))
}

#[utoipa::path(operation_id = "update_webhook", put, path = "/api/v1/orgs/{org}/webhooks/{id}", tag = "webhooks",
    params(("org" = String, Path), ("id" = Uuid, Path)), request_body = UpdateWebhook,
    responses((status = 200, body = WebhookInfo), (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    ApiBody(body): ApiBody,
) -> Result<Json<WebhookInfo>, Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "webhook")?;
    let body: UpdateWebhook = json_body(&body)?;
    let change = WebhookChange {
        url: body.url,
        events: body.events,
        segments: body.segments,
        enabled: body.enabled,
    };
    Ok(Json(
        blocking(&state, move |r| r.update_webhook(org, id, change)).await?,
    ))
}

#[utoipa::path(operation_id = "delete_webhook", delete, path = "/api/v1/orgs/{org}/webhooks/{id}", tag = "webhooks",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<StatusCode, Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "webhook")?;
    blocking(&state, move |r| r.delete_webhook(org, id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(operation_id = "rotate_webhook_secret", post, path = "/api/v1/orgs/{org}/webhooks/{id}/rotate", tag = "webhooks",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, description = "the new secret; the previous one keeps signing for 24 h", body = WebhookInfo)),
    security(("bearer" = [])))]
pub async fn rotate(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<WebhookInfo>, Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "webhook")?;
    Ok(Json(
        blocking(&state, move |r| r.rotate_webhook_secret(org, id)).await?,
    ))
}

#[utoipa::path(operation_id = "test_webhook", post, path = "/api/v1/orgs/{org}/webhooks/{id}/test", tag = "webhooks",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 202, body = Queued)), security(("bearer" = [])))]
pub async fn test(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<(StatusCode, Json<Queued>), Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "webhook")?;
    let delivery = blocking(&state, move |r| r.test_webhook(org, id)).await?;
    Ok((StatusCode::ACCEPTED, Json(Queued { id: delivery })))
}

#[utoipa::path(operation_id = "list_webhook_deliveries", get, path = "/api/v1/orgs/{org}/webhooks/{id}/deliveries", tag = "webhooks",
    params(("org" = String, Path), ("id" = Uuid, Path), DeliveryQuery),
    responses((status = 200, body = DeliveryList)), security(("bearer" = [])))]
pub async fn deliveries(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<DeliveryList>, Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "webhook")?;
    let status = match query.status.as_deref() {
        None => None,
        Some("pending") => Some(DeliveryStatus::Pending),
        Some("delivered") => Some(DeliveryStatus::Delivered),
        Some("dead") => Some(DeliveryStatus::Dead),
        Some(_) => {
            return Err(Problem::field(
                StatusCode::BAD_REQUEST,
                "/status",
                "status must be pending, delivered or dead",
            ));
        }
    };
    let limit = page_limit(query.limit)?;
    let cursor = query.cursor;
    let page = blocking(&state, move |r| {
        r.deliveries(org, id, status, cursor.as_deref(), limit)
    })
    .await?;
    Ok(Json(DeliveryList {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(operation_id = "replay_webhook_delivery", post, path = "/api/v1/orgs/{org}/webhooks/{id}/deliveries/{delivery}/replay", tag = "webhooks",
    params(("org" = String, Path), ("id" = Uuid, Path), ("delivery" = String, Path)),
    responses((status = 202, body = Queued), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn replay(
    State(state): State<AppState>,
    Path((org, id, delivery)): Path<(String, String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<(StatusCode, Json<Queued>), Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "webhook")?;
    state.runtime.replay_delivery(org, id, &delivery).await?;
    Ok((StatusCode::ACCEPTED, Json(Queued { id: delivery })))
}
