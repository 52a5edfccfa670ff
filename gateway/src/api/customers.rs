//! Customer routes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use xeno_actors::CustomerInfo;

use super::problem::Problem;
use super::{Access, AppState, authorize};

#[utoipa::path(operation_id = "get_customer", get, path = "/api/v1/orgs/{org}/customers/{id}", tag = "customers",
    params(("org" = String, Path), ("id" = String, Path, description = "userId or anonymousId")),
    responses((status = 200, body = CustomerInfo), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<CustomerInfo>, Problem> {
    let org = authorize(&state, &headers, &org, Access::Read)?;
    Ok(Json(state.runtime.customer(org, &id).await?))
}
