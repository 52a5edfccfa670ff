//! Webhook endpoint routes: subscribe, list, change, delete, rotate the
//! secret, send a test, list deliveries (dead letters among them), replay.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use xeno_actors::dispatch::{DeliveryRecord, DeliveryStatus};
use xeno_actors::{WebhookChange, WebhookInfo};

use super::problem::Problem;
use super::{Access, AppState, authorize, json_body, page_limit, path_id};

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

/// A webhook endpoint. `secret` (`whsec_...`) is shown on creation and rotation
/// only.
#[derive(Debug, Serialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub segments: Option<Vec<Uuid>>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<WebhookInfo> for Webhook {
    fn from(w: WebhookInfo) -> Webhook {
        Webhook {
            id: w.id,
            url: w.url,
            events: w.events,
            segments: w.segments,
            enabled: w.enabled,
            disabled_reason: w.disabled_reason,
            secret: w.secret,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<Webhook>,
    pub next_cursor: Option<String>,
}

/// One delivery of an endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    /// The `webhook-id` header, stable across retries.
    pub id: String,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    pub attempts: u32,
    pub last_status: Option<String>,
    /// Unix milliseconds of the next attempt, while pending.
    pub next_attempt_at: Option<i64>,
    pub created_at: String,
    #[schema(value_type = Object)]
    pub payload: Value,
}

impl From<DeliveryRecord> for Delivery {
    fn from(d: DeliveryRecord) -> Delivery {
        let status = match d.status {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        };
        Delivery {
            id: d.id,
            status: status.into(),
            attempts: d.attempts,
            last_status: d.last_status,
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
            payload: d.payload,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub items: Vec<Delivery>,
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

#[utoipa::path(post, path = "/api/v1/orgs/{org}/webhooks", tag = "webhooks",
    params(("org" = String, Path)), request_body = CreateWebhook,
    responses((status = 201, body = Webhook), (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Webhook>), Problem> {
    let org = authorize(&state, &headers, &org, Access::Write)?;
    let body: CreateWebhook = json_body(&body)?;
    let events = body.events.unwrap_or_else(|| {
        xeno_actors::catalog::WEBHOOK_EVENTS
            .iter()
            .map(|e| e.to_string())
            .collect()
    });
    let info = state
        .runtime
        .create_webhook(org, body.url, events, body.segments)?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/webhooks", tag = "webhooks",
    params(("org" = String, Path)), responses((status = 200, body = WebhookList)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Json<WebhookList>, Problem> {
    let org = authorize(&state, &headers, &org, Access::Read)?;
    let page = state.runtime.list_webhooks(org)?;
    Ok(Json(WebhookList {
        items: page.items.into_iter().map(Webhook::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/webhooks/{id}", tag = "webhooks",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, body = Webhook), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Webhook>, Problem> {
    let org = authorize(&state, &headers, &org, Access::Read)?;
    let id = path_id(&id, "webhook")?;
    Ok(Json(state.runtime.get_webhook(org, id)?.into()))
}

#[utoipa::path(put, path = "/api/v1/orgs/{org}/webhooks/{id}", tag = "webhooks",
    params(("org" = String, Path), ("id" = Uuid, Path)), request_body = UpdateWebhook,
    responses((status = 200, body = Webhook), (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Webhook>, Problem> {
    let org = authorize(&state, &headers, &org, Access::Write)?;
    let id = path_id(&id, "webhook")?;
    let body: UpdateWebhook = json_body(&body)?;
    let change = WebhookChange {
        url: body.url,
        events: body.events,
        segments: body.segments,
        enabled: body.enabled,
    };
    Ok(Json(state.runtime.update_webhook(org, id, change)?.into()))
}

#[utoipa::path(delete, path = "/api/v1/orgs/{org}/webhooks/{id}", tag = "webhooks",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    let org = authorize(&state, &headers, &org, Access::Write)?;
    let id = path_id(&id, "webhook")?;
    state.runtime.delete_webhook(org, id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/webhooks/{id}/rotate", tag = "webhooks",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, description = "the new secret; the previous one keeps signing for 24 h", body = Webhook)),
    security(("bearer" = [])))]
pub async fn rotate(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Webhook>, Problem> {
    let org = authorize(&state, &headers, &org, Access::Write)?;
    let id = path_id(&id, "webhook")?;
    Ok(Json(state.runtime.rotate_webhook_secret(org, id)?.into()))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/webhooks/{id}/test", tag = "webhooks",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 202, body = Queued)), security(("bearer" = [])))]
pub async fn test(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Queued>), Problem> {
    let org = authorize(&state, &headers, &org, Access::Write)?;
    let id = path_id(&id, "webhook")?;
    let delivery = state.runtime.test_webhook(org, id)?;
    Ok((StatusCode::ACCEPTED, Json(Queued { id: delivery })))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/webhooks/{id}/deliveries", tag = "webhooks",
    params(("org" = String, Path), ("id" = Uuid, Path), DeliveryQuery),
    responses((status = 200, body = DeliveryList)), security(("bearer" = [])))]
pub async fn deliveries(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Query(query): Query<DeliveryQuery>,
    headers: HeaderMap,
) -> Result<Json<DeliveryList>, Problem> {
    let org = authorize(&state, &headers, &org, Access::Read)?;
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
    let page = state
        .runtime
        .deliveries(org, id, status, query.cursor.as_deref(), limit)?;
    Ok(Json(DeliveryList {
        items: page.items.into_iter().map(Delivery::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/webhooks/{id}/deliveries/{delivery}/replay", tag = "webhooks",
    params(("org" = String, Path), ("id" = Uuid, Path), ("delivery" = String, Path)),
    responses((status = 202, body = Queued), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn replay(
    State(state): State<AppState>,
    Path((org, id, delivery)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Queued>), Problem> {
    let org = authorize(&state, &headers, &org, Access::Write)?;
    let id = path_id(&id, "webhook")?;
    state.runtime.replay_delivery(org, id, &delivery).await?;
    Ok((StatusCode::ACCEPTED, Json(Queued { id: delivery })))
}
