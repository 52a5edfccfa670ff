//! Members and invitations of an organization (behind the access guard), and
//! leaving it. Granting, changing or removing the owner role needs an owner;
//! the last owner can neither leave nor be demoted or removed.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;
use xeno_actors::catalog::Role;
use xeno_actors::identity::{Invitation, InvitationStatus};
use xeno_connectors::mail::Mail;

use super::access::{AuditNote, Caller, Principal};
use super::problem::Problem;
use super::{ApiBody, AppState, blocking, json_body, path_id};
use crate::auth::{hash_secret, now_ms, random_secret};

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberInfo {
    pub user: Uuid,
    pub email: String,
    pub name: String,
    #[schema(value_type = String, example = "editor")]
    pub role: Role,
    pub joined_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberList {
    pub items: Vec<MemberInfo>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    #[schema(value_type = String, example = "admin")]
    pub role: Role,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    pub email: String,
    #[schema(value_type = String, example = "editor")]
    pub role: Role,
}

/// An invitation as admins see it (never its token).
#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationInfo {
    pub id: Uuid,
    pub email: String,
    #[schema(value_type = String)]
    pub role: Role,
    /// pending, accepted, declined, cancelled or expired.
    pub status: String,
    pub invited_by: Uuid,
    pub created_at: String,
    pub expires_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationList {
    pub items: Vec<InvitationInfo>,
}

pub fn status_of(i: &Invitation, now: i64) -> &'static str {
    match i.status {
        InvitationStatus::Pending if i.expires_at_ms <= now => "expired",
        InvitationStatus::Pending => "pending",
        InvitationStatus::Accepted => "accepted",
        InvitationStatus::Declined => "declined",
        InvitationStatus::Cancelled => "cancelled",
    }
}

pub fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn invitation_info(i: &Invitation) -> InvitationInfo {
    InvitationInfo {
        id: i.id,
        email: i.email.clone(),
        role: i.role,
        status: status_of(i, now_ms()).to_string(),
        invited_by: i.invited_by,
        created_at: i.created_at.clone(),
        expires_at: rfc3339_ms(i.expires_at_ms),
    }
}

/// Owner-level changes need an owner.
fn check_owner_change(caller: &Caller, roles: &[Role]) -> Result<(), Problem> {
    if roles.contains(&Role::Owner) && caller.role != Role::Owner {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "only an owner can grant, change or remove the owner role",
        ));
    }
    Ok(())
}

#[utoipa::path(operation_id = "list_members", get, path = "/api/v1/orgs/{org}/members", tag = "members",
    params(("org" = String, Path)), responses((status = 200, body = MemberList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<MemberList>, Problem> {
    let org = caller.org_id(&org)?;
    let items = blocking(&state, move |r| {
        let mut out = Vec::new();
        for m in r.org_members(org)? {
            let user = r.user(m.user)?;
            out.push(MemberInfo {
                user: m.user,
                email: user.as_ref().map(|u| u.email.clone()).unwrap_or_default(),
                name: user.map(|u| u.name).unwrap_or_default(),
                role: m.role,
                joined_at: m.joined_at,
            });
        }
        Ok(out)
    })
    .await?;
    Ok(Json(MemberList { items }))
}

#[utoipa::path(operation_id = "change_member_role", patch, path = "/api/v1/orgs/{org}/members/{user}", tag = "members",
    params(("org" = String, Path), ("user" = Uuid, Path)), request_body = RoleBody,
    responses((status = 200, body = Object), (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the last owner", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn change_role(
    State(state): State<AppState>,
    Path((org, user)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    ApiBody(body): ApiBody,
) -> Result<Response, Problem> {
    let org = caller.org_id(&org)?;
    let caller = caller.refreshed(&state).await?;
    let user = path_id(&user, "member")?;
    let body: RoleBody = json_body(&body)?;
    // The owner rule is checked with the change, under the identity lock.
    let (role, by) = (body.role, caller.role);
    let (before, membership) =
        blocking(&state, move |r| r.set_role_by(org, user, role, by)).await?;
    let note = AuditNote {
        target: Some(format!("user:{user}")),
        summary: json!({ "before": before.as_str(), "after": membership.role.as_str() }),
    };
    Ok((
        Extension(note),
        Json(json!({ "user": user, "role": membership.role })),
    )
        .into_response())
}

#[utoipa::path(operation_id = "remove_member", delete, path = "/api/v1/orgs/{org}/members/{user}", tag = "members",
    params(("org" = String, Path), ("user" = Uuid, Path)),
    responses((status = 204), (status = 409, description = "the last owner", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    Path((org, user)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Problem> {
    let org = caller.org_id(&org)?;
    let caller = caller.refreshed(&state).await?;
    let user = path_id(&user, "member")?;
    removal(&state, org, user, caller.role).await
}

/// Removes `user` on behalf of a caller with role `by` (the owner rule and
/// the last owner are checked with the change).
async fn removal(state: &AppState, org: Uuid, user: Uuid, by: Role) -> Result<Response, Problem> {
    let removed = blocking(state, move |r| r.remove_member_by(org, user, by)).await?;
    let note = AuditNote {
        target: Some(format!("user:{user}")),
        summary: json!({ "before": removed.role.as_str(), "after": null }),
    };
    Ok((Extension(note), StatusCode::NO_CONTENT).into_response())
}

#[utoipa::path(operation_id = "leave_org", post, path = "/api/v1/orgs/{org}/leave", tag = "members",
    params(("org" = String, Path)),
    responses((status = 204), (status = 409, description = "the last owner cannot leave", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn leave(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Problem> {
    let org = caller.org_id(&org)?;
    let Principal::User { user, .. } = caller.principal else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "an API key cannot leave; revoke it instead",
        ));
    };
    removal(&state, org, user, caller.role).await
}

#[utoipa::path(operation_id = "list_invitations", get, path = "/api/v1/orgs/{org}/invitations", tag = "members",
    params(("org" = String, Path)), responses((status = 200, body = InvitationList)), security(("bearer" = [])))]
pub async fn list_invitations(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<InvitationList>, Problem> {
    let org = caller.org_id(&org)?;
    let items = blocking(&state, move |r| r.invitations(org)).await?;
    Ok(Json(InvitationList {
        items: items.iter().map(invitation_info).collect(),
    }))
}

/// Mails the invitation link.
fn mail_invitation(state: &AppState, caller: &Caller, invitation: &Invitation, token: &str) {
    let org_name = state
        .runtime
        .org_by_slug(&caller.slug)
        .map(|o| if o.name.is_empty() { o.slug } else { o.name })
        .unwrap_or_default();
    let link = format!("{}/api/v1/invitations/{token}", state.auth.public_url);
    state.auth.mail.send(Mail {
        to: invitation.email.clone(),
        subject: format!("You are invited to {org_name} on Xeno"),
        text: format!(
            "You are invited to join {org_name} on Xeno as {}.\n\nOpen this link to accept or decline (it works until {}):\n{link}\n\nIf you have no account yet, you can create one from the link.\n",
            invitation.role.as_str(),
            rfc3339_ms(invitation.expires_at_ms)
        ),
    });
}

#[utoipa::path(operation_id = "invite_member", post, path = "/api/v1/orgs/{org}/invitations", tag = "members",
    params(("org" = String, Path)), request_body = InviteBody,
    responses((status = 201, body = InvitationInfo),
        (status = 409, description = "already a member, or a pending invitation", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn invite(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
    ApiBody(body): ApiBody,
) -> Result<Response, Problem> {
    let org = caller.org_id(&org)?;
    let caller = caller.refreshed(&state).await?;
    let body: InviteBody = json_body(&body)?;
    check_owner_change(&caller, &[body.role])?;
    let email = body.email.clone();
    let existing = blocking(&state, move |r| match r.user_by_email(&email)? {
        Some(u) => r.membership(org, u.id),
        None => Ok(None),
    })
    .await?;
    if existing.is_some() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "this person is already a member",
        ));
    }
    let token = random_secret("xeno_inv_");
    let hash = hash_secret(&token);
    let expires = now_ms() + state.auth.invitation_ttl_ms;
    let invited_by = match caller.principal {
        Principal::User { user, .. } => user,
        Principal::Key { key, .. } => key,
    };
    let (email, role) = (body.email.clone(), body.role);
    let invitation = blocking(&state, move |r| {
        r.create_invitation(org, &email, role, invited_by, &hash, expires)
    })
    .await?;
    mail_invitation(&state, &caller, &invitation, &token);
    let note = AuditNote {
        target: Some(format!("invitation:{}", invitation.id)),
        summary: json!({ "email": invitation.email, "role": role.as_str() }),
    };
    Ok((
        StatusCode::CREATED,
        Extension(note),
        Json(invitation_info(&invitation)),
    )
        .into_response())
}

async fn pending_invitation(state: &AppState, org: Uuid, id: &str) -> Result<Invitation, Problem> {
    let id = path_id(id, "invitation")?;
    let invitation = blocking(state, move |r| r.invitation(org, id))
        .await?
        .ok_or_else(|| Problem::not_found("invitation"))?;
    Ok(invitation)
}

#[utoipa::path(operation_id = "cancel_invitation", post, path = "/api/v1/orgs/{org}/invitations/{id}/cancel", tag = "members",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, body = InvitationInfo), (status = 409, description = "no longer pending", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn cancel_invitation(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Problem> {
    let org = caller.org_id(&org)?;
    let caller = caller.refreshed(&state).await?;
    let invitation = pending_invitation(&state, org, &id).await?;
    check_owner_change(&caller, &[invitation.role])?;
    // Compare-and-set: only a pending invitation is cancelled.
    let id = invitation.id;
    let invitation = blocking(&state, move |r| {
        r.close_invitation(org, id, None, InvitationStatus::Cancelled)
    })
    .await?;
    let note = AuditNote {
        target: Some(format!("invitation:{}", invitation.id)),
        summary: json!({ "before": "pending", "after": "cancelled" }),
    };
    Ok((Extension(note), Json(invitation_info(&invitation))).into_response())
}

#[utoipa::path(operation_id = "resend_invitation", post, path = "/api/v1/orgs/{org}/invitations/{id}/resend", tag = "members",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, description = "a new link, valid for another 7 days; the old link stops working", body = InvitationInfo),
        (status = 409, description = "accepted, declined or cancelled", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn resend_invitation(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Problem> {
    let org = caller.org_id(&org)?;
    let caller = caller.refreshed(&state).await?;
    let invitation = pending_invitation(&state, org, &id).await?;
    check_owner_change(&caller, &[invitation.role])?;
    let token = random_secret("xeno_inv_");
    let (id, hash) = (invitation.id, hash_secret(&token));
    let expires = now_ms() + state.auth.invitation_ttl_ms;
    // Compare-and-set: only a pending invitation gets a new link.
    let invitation = blocking(&state, move |r| r.renew_invitation(org, id, &hash, expires)).await?;
    mail_invitation(&state, &caller, &invitation, &token);
    let note = AuditNote {
        target: Some(format!("invitation:{}", invitation.id)),
        summary: json!({ "expires_at": rfc3339_ms(invitation.expires_at_ms) }),
    };
    Ok((Extension(note), Json(invitation_info(&invitation))).into_response())
}
