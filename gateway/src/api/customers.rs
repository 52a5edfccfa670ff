//! Customer routes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::problem::Problem;
use super::{Access, AppState, authorize};

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentRef {
    pub id: Uuid,
    pub name: String,
}

/// A customer: attributes from identify calls, computed traits from events,
/// and the segments they are in now.
#[derive(Debug, Serialize, ToSchema)]
pub struct Customer {
    pub id: String,
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
    #[schema(value_type = Object)]
    pub computed: Map<String, Value>,
    pub segments: Vec<SegmentRef>,
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/customers/{id}", tag = "customers",
    params(("org" = String, Path), ("id" = String, Path, description = "userId or anonymousId")),
    responses((status = 200, body = Customer), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Customer>, Problem> {
    let org = authorize(&state, &headers, &org, Access::Read)?;
    let c = state.runtime.customer(org, &id).await?;
    Ok(Json(Customer {
        id: c.id,
        attributes: c.attributes,
        computed: c.computed,
        segments: c
            .segments
            .into_iter()
            .map(|s| SegmentRef {
                id: s.id,
                name: s.name,
            })
            .collect(),
    }))
}
