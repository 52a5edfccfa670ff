//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{account, audit, customers, imports, keys, members, orgs, problem, segments, webhooks};

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
    info(title = "Xeno management API", description = "Accounts, organizations, members, keys, segments, customers, imports, webhooks and the audit log. Ingest is the Segment HTTP Tracking API under /v1. Organization-scoped routes need the permission docs/permissions.md gives them."),
    paths(
        account::signup, account::verify_email, account::login, account::refresh, account::logout,
        account::forgot_password, account::reset_password, account::jwks, account::oidc_start,
        account::oidc_callback, account::me, account::sessions, account::revoke_session,
        account::security_events, account::get_invitation, account::accept_invitation,
        account::decline_invitation,
        orgs::list_mine, orgs::create, orgs::get, orgs::rename, orgs::delete,
        members::list, members::change_role, members::remove, members::leave,
        members::list_invitations, members::invite, members::cancel_invitation, members::resend_invitation,
        keys::list, keys::create, keys::rotate, keys::revoke,
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
