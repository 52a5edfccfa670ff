//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{audit, customers, imports, problem, segments, webhooks};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Xeno management API", description = "Segments, customers, imports and webhooks of an organization. Ingest is the Segment HTTP Tracking API under /v1."),
    paths(
        segments::create, segments::list, segments::get, segments::update, segments::delete,
        segments::preview, segments::members,
        customers::get, customers::list, customers::create, customers::update, customers::delete,
        customers::create_order, customers::fields, customers::put_field, customers::export,
        customers::export_segment,
        imports::create, imports::list, imports::get, imports::cancel, imports::errors, imports::events,
        audit::list,
        webhooks::create, webhooks::list, webhooks::get, webhooks::update, webhooks::delete,
        webhooks::rotate, webhooks::test, webhooks::deliveries, webhooks::replay,
    ),
    components(schemas(problem::Problem, problem::FieldError)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
