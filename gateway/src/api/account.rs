//! Accounts and sessions: sign-up with email verification, login (throttled,
//! the same answer whether an email has an account or not), refresh-token
//! rotation with reuse detection, logout, password reset, the caller's
//! sessions, invitations opened from their link, and OIDC login.
//!
//! A session is a family of refresh tokens; every access token names its
//! session, and the guard refuses tokens of a revoked one, so logout and
//! "revoke session" take effect at once, not when the JWT expires.

use std::time::Instant;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json_, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use xeno_actors::audit::{AuditEntry, AuditInput};
use xeno_actors::identity::{
    InvitationStatus, OidcSignIn, RefreshOutcome, SessionRecord, TokenPurpose, UserRecord,
};
use xeno_connectors::mail::Mail;

use super::access::{ClientOrigin, Principal, authenticate};
use super::members::{rfc3339_ms, status_of};
use super::problem::Problem;
use super::{ApiBody, ApiQuery, AppState, blocking, json_body, page_limit, path_id};
use crate::auth::password::Passwords;
use crate::auth::{hash_secret, now_ms, now_secs, random_secret};

/// The caller's address and user agent.
type Origin = (Option<String>, Option<String>);

/// The signed-in user of a user route (API keys are refused: they belong to
/// an organization, not to a person).
pub async fn signed_in_user(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(Uuid, Uuid), Problem> {
    match authenticate(state, headers).await? {
        Principal::User { user, session } => Ok((user, session)),
        Principal::Key { .. } => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "this route needs a person's access token, not an API key",
        )),
    }
}

/// Appends a security event (failures are logged, never answered).
async fn security_event(
    state: &AppState,
    user: Option<Uuid>,
    action: &str,
    summary: Json_,
    origin: &Origin,
) {
    let input = AuditInput {
        actor: user
            .map(|u| format!("user:{u}"))
            .unwrap_or_else(|| "anonymous".into()),
        action: action.to_string(),
        target: user.map(|u| format!("user:{u}")).unwrap_or_default(),
        summary,
        ip: origin.0.clone(),
        user_agent: origin.1.clone(),
    };
    if let Err(e) = blocking(state, move |r| r.security_event(user, input)).await {
        tracing::error!(action, error = %e.detail, "security event not written");
    }
}

/// An access token and the refresh token that renews it.
#[derive(Serialize, ToSchema)]
pub struct Tokens {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds the access token is valid.
    pub expires_in: i64,
    /// Single use: each refresh returns the next one.
    pub refresh_token: String,
    pub session_id: Uuid,
}

/// A new session for `user`, who proved `credential` (the password hash
/// that was verified; `None` for OIDC and invitation sign-ups). If the
/// credential changed while the login was in flight (a password reset, which
/// revokes every session), the new session is revoked too: a login that
/// started with the old password cannot outlive the reset.
async fn start_session(
    state: &AppState,
    user: Uuid,
    credential: Option<String>,
    origin: &Origin,
) -> Result<Tokens, Problem> {
    let refresh = random_secret("xeno_rt_");
    let hash = hash_secret(&refresh);
    let expires = now_ms() + state.auth.refresh_ttl_ms;
    let (ip, agent) = origin.clone();
    let session = blocking(state, move |r| {
        let session = r.create_session(user, &hash, expires, ip, agent)?;
        let current = r.user(user)?;
        let unchanged =
            current.is_some_and(|u| credential.is_none() || u.password_hash == credential);
        if !unchanged {
            r.revoke_session(user, session.id)?;
            return Ok(None);
        }
        Ok(Some(session))
    })
    .await?
    .ok_or_else(wrong_credentials)?;
    tokens(state, user, session.id, refresh)
}

fn tokens(state: &AppState, user: Uuid, session: Uuid, refresh: String) -> Result<Tokens, Problem> {
    let (access, _) = state
        .auth
        .tokens
        .issue(user, session, now_secs())
        .map_err(|e| {
            tracing::error!(error = %e, "access token not signed");
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        })?;
    Ok(Tokens {
        access_token: access,
        token_type: "Bearer".into(),
        expires_in: state.auth.tokens.access_ttl_secs(),
        refresh_token: refresh,
        session_id: session,
    })
}

/// The answer of requests whose outcome must not tell whether an email has
/// an account.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub status: String,
}

fn accepted(text: &str) -> (StatusCode, Json<Accepted>) {
    (
        StatusCode::ACCEPTED,
        Json(Accepted {
            status: text.into(),
        }),
    )
}

/// Runs argon2 work on the blocking pool, at most as many at once as the
/// hashing semaphore allows (each hash takes its memory cost: unbounded
/// parallel requests must not add up to gigabytes).
async fn with_argon<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&crate::auth::Auth) -> T + Send + 'static,
) -> Result<T, Problem> {
    let _permit = state
        .auth
        .hashing
        .acquire()
        .await
        .map_err(|_| Problem::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let auth = state.auth.clone();
    tokio::task::spawn_blocking(move || work(&auth))
        .await
        .map_err(|_| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
}

async fn hash_password(state: &AppState, password: String) -> Result<String, Problem> {
    with_argon(state, move |auth| auth.passwords.hash(&password))
        .await?
        .map_err(|e| {
            tracing::error!(error = %e, "password not hashed");
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        })
}

fn check_password(password: &str) -> Result<(), Problem> {
    Passwords::check_policy(password)
        .map_err(|reason| Problem::field(StatusCode::UNPROCESSABLE_ENTITY, "/password", reason))
}

/// An address a sign-up may use: what the identity layer stores
/// ([`xeno_actors::identity::normalize_email`]), with a domain that has a dot
/// and nothing blank inside (a sign-up mails a link at once).
fn check_email(email: &str) -> Result<String, Problem> {
    let email = xeno_actors::identity::normalize_email(email).map_err(Problem::from)?;
    let deliverable = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
    }) && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !deliverable {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/email",
            "not an email address",
        ));
    }
    Ok(email)
}

/// Mails a single-use link.
async fn mail_link(
    state: &AppState,
    purpose: TokenPurpose,
    user: &UserRecord,
    subject: &str,
    text: impl FnOnce(&str) -> String,
) -> Result<(), Problem> {
    let token = random_secret("xeno_");
    let hash = hash_secret(&token);
    let expires = now_ms() + state.auth.email_token_ttl_ms;
    let (id, email) = (user.id, user.email.clone());
    blocking(state, move |r| {
        r.drop_one_time_of_user(purpose, id)?;
        r.put_one_time(
            purpose,
            &hash,
            json!({ "user": id, "email": email }),
            expires,
        )
    })
    .await?;
    state.auth.mail.send(Mail {
        to: user.email.clone(),
        subject: subject.into(),
        text: text(&token),
    });
    Ok(())
}

async fn mail_verification(state: &AppState, user: &UserRecord) -> Result<(), Problem> {
    let base = state.auth.public_url.clone();
    mail_link(state, TokenPurpose::VerifyEmail, user, "Confirm your email for Xeno", |token| {
        format!("Confirm your email address by opening this link (it works once, for a limited time):\n{base}/api/v1/auth/verify-email?token={token}\n")
    })
    .await
}

// ---- sign-up and verification ----------------------------------------------

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupBody {
    pub email: String,
    /// At least 10 characters.
    pub password: String,
    pub name: Option<String>,
}

#[utoipa::path(operation_id = "signup", post, path = "/api/v1/auth/signup", tag = "auth",
    request_body = SignupBody,
    responses((status = 202, description = "a verification link was mailed (the same answer when the email already has an account)", body = Accepted),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn signup(
    State(state): State<AppState>,
    client: ClientOrigin,
    ApiBody(body): ApiBody,
) -> Result<Response, Problem> {
    let body: SignupBody = json_body(&body)?;
    let email = check_email(&body.email)?;
    check_password(&body.password)?;
    let origin = client.pair();
    let name = body
        .name
        .unwrap_or_default()
        .trim()
        .chars()
        .take(200)
        .collect::<String>();
    let hash = hash_password(&state, body.password).await?;
    // The rest happens after the answer: a new and a known email must not
    // differ in what they cost (their storage writes differ).
    let task_state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = finish_signup(&task_state, email, name, hash, origin).await {
            tracing::error!(error = %e.detail, "sign-up not completed");
        }
    });
    Ok(accepted("check your email for a link to confirm your address").into_response())
}

async fn finish_signup(
    state: &AppState,
    email: String,
    name: String,
    hash: String,
    origin: Origin,
) -> Result<(), Problem> {
    let lookup = email.clone();
    let created = blocking(state, move |r| match r.user_by_email(&lookup)? {
        Some(existing) => Ok(Err(existing)),
        None => match r.create_user(&lookup, &name, Some(hash), false) {
            Ok(u) => Ok(Ok(u)),
            Err(xeno_actors::RuntimeError::Conflict(_)) => Ok(Err(r
                .user_by_email(&lookup)?
                .ok_or_else(|| xeno_actors::RuntimeError::Internal("user vanished".into()))?)),
            Err(e) => Err(e),
        },
    })
    .await?;
    match created {
        Ok(user) => {
            mail_verification(state, &user).await?;
            security_event(state, Some(user.id), "user.signed_up", json!({}), &origin).await;
        }
        Err(existing) => {
            // Tell the owner of the address, not the caller.
            let base = state.auth.public_url.clone();
            state.auth.mail.send(Mail {
                to: existing.email.clone(),
                subject: "Someone tried to sign up to Xeno with your email".into(),
                text: format!("Your email address already has a Xeno account. If this was you, log in, or reset your password at {base}/api/v1/auth/password/forgot.\n"),
            });
            security_event(
                state,
                Some(existing.id),
                "user.signup_repeated",
                json!({}),
                &origin,
            )
            .await;
        }
    }
    Ok(())
}

#[derive(Deserialize, IntoParams, ToSchema)]
pub struct TokenQuery {
    pub token: String,
}

#[utoipa::path(operation_id = "verify_email", get, path = "/api/v1/auth/verify-email", tag = "auth",
    params(TokenQuery),
    responses((status = 200, body = Object), (status = 400, description = "unknown, used or expired link", body = Problem, content_type = "application/problem+json")))]
pub async fn verify_email(
    State(state): State<AppState>,
    client: ClientOrigin,
    ApiQuery(query): ApiQuery<TokenQuery>,
) -> Result<Json<Json_>, Problem> {
    let hash = hash_secret(&query.token);
    let record = blocking(&state, move |r| r.verify_email(&hash))
        .await?
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "this link is unknown, already used or expired",
            )
        })?;
    let user = record.id;
    security_event(
        &state,
        Some(user),
        "user.email_verified",
        json!({}),
        &client.pair(),
    )
    .await;
    Ok(Json(
        json!({ "email": record.email, "email_verified": true }),
    ))
}

// ---- login, refresh, logout --------------------------------------------------

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub email: String,
    pub password: String,
}

fn wrong_credentials() -> Problem {
    Problem::unauthorized("the email or the password is wrong")
}

fn throttled(wait: std::time::Duration) -> Problem {
    let mut p = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed logins; wait before trying again",
    );
    // Rounded up: a client that waits this long finds the lockout over.
    p.retry_after = Some(wait.as_millis().div_ceil(1000).max(1) as u64);
    p
}

#[utoipa::path(operation_id = "login", post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginBody,
    responses((status = 200, body = Tokens),
        (status = 401, description = "wrong email or password (the same answer for an unknown email)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the email is not verified yet", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "too many failures: wait Retry-After seconds", body = Problem, content_type = "application/problem+json")))]
pub async fn login(
    State(state): State<AppState>,
    client: ClientOrigin,
    ApiBody(body): ApiBody,
) -> Result<Json<Tokens>, Problem> {
    let body: LoginBody = json_body(&body)?;
    let origin = client.pair();
    let email = body.email.trim().to_lowercase();
    state
        .auth
        .throttle
        .attempt(&email, origin.0.as_deref(), Instant::now())
        .map_err(throttled)?;
    let lookup = email.clone();
    let user = blocking(&state, move |r| r.user_by_email(&lookup)).await?;
    let known = user.as_ref().map(|u| u.id);
    let stored = user.as_ref().and_then(|u| u.password_hash.clone());
    let password = body.password;
    // Unknown emails are verified against a decoy hash: the same cost.
    let ok = with_argon(&state, move |auth| {
        auth.passwords.verify(&password, stored.as_deref())
    })
    .await
    .unwrap_or(false);
    let Some(user) = user.filter(|_| ok) else {
        let locked = state
            .auth
            .throttle
            .locked_for(&email, origin.0.as_deref(), Instant::now());
        security_event(
            &state,
            known,
            "user.login_failed",
            json!({ "locked_for_secs": locked.map(|d| d.as_secs()) }),
            &origin,
        )
        .await;
        return Err(match locked {
            Some(wait) => throttled(wait),
            None => wrong_credentials(),
        });
    };
    state.auth.throttle.succeeded(&email, origin.0.as_deref());
    if !user.email_verified {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "confirm your email address first: open the link we mailed you",
        ));
    }
    let tokens = start_session(&state, user.id, user.password_hash.clone(), &origin).await?;
    security_event(
        &state,
        Some(user.id),
        "user.logged_in",
        json!({ "session": tokens.session_id, "method": "password" }),
        &origin,
    )
    .await;
    Ok(Json(tokens))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    pub refresh_token: String,
}

#[utoipa::path(operation_id = "refresh", post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body = RefreshBody,
    responses((status = 200, description = "new tokens; the presented refresh token is spent", body = Tokens),
        (status = 401, description = "unknown, spent, revoked or expired (a spent one also revokes its whole session)", body = Problem, content_type = "application/problem+json")))]
pub async fn refresh(
    State(state): State<AppState>,
    client: ClientOrigin,
    ApiBody(body): ApiBody,
) -> Result<Json<Tokens>, Problem> {
    let body: RefreshBody = json_body(&body)?;
    let origin = client.pair();
    let next = random_secret("xeno_rt_");
    let (presented, new_hash) = (hash_secret(&body.refresh_token), hash_secret(&next));
    let (ip, agent) = origin.clone();
    let outcome = blocking(&state, move |r| {
        r.rotate_refresh(&presented, &new_hash, ip, agent)
    })
    .await?;
    match outcome {
        RefreshOutcome::Rotated(session) => {
            Ok(Json(tokens(&state, session.user, session.id, next)?))
        }
        RefreshOutcome::Reused(session) => {
            tracing::warn!(user = %session.user, session = %session.id, "a spent refresh token was presented again; the session is revoked");
            security_event(
                &state,
                Some(session.user),
                "session.reuse_detected",
                json!({ "session": session.id }),
                &origin,
            )
            .await;
            Err(Problem::unauthorized(
                "this refresh token was already used; the session is revoked, log in again",
            ))
        }
        RefreshOutcome::Invalid => Err(Problem::unauthorized("the refresh token is not valid")),
    }
}

#[utoipa::path(operation_id = "logout", post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204, description = "the session is revoked: its access and refresh tokens stop working")),
    security(("bearer" = [])))]
pub async fn logout(
    State(state): State<AppState>,
    client: ClientOrigin,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    let (user, session) = signed_in_user(&state, &headers).await?;
    blocking(&state, move |r| r.revoke_session(user, session)).await?;
    security_event(
        &state,
        Some(user),
        "user.logged_out",
        json!({ "session": session }),
        &client.pair(),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- password reset ----------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgotBody {
    pub email: String,
}

#[utoipa::path(operation_id = "forgot_password", post, path = "/api/v1/auth/password/forgot", tag = "auth",
    request_body = ForgotBody,
    responses((status = 202, description = "a reset link was mailed if the email has an account (the answer does not say)", body = Accepted)))]
pub async fn forgot_password(
    State(state): State<AppState>,
    client: ClientOrigin,
    ApiBody(body): ApiBody,
) -> Result<Response, Problem> {
    let body: ForgotBody = json_body(&body)?;
    let email = body.email.trim().to_lowercase();
    // After the answer: a known email must not take longer than an unknown one.
    let task_state = state.clone();
    let origin = client.pair();
    tokio::spawn(async move {
        let state = task_state;
        let user = match blocking(&state, move |r| r.user_by_email(&email)).await {
            Ok(Some(user)) => user,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e.detail, "password reset not started");
                return;
            }
        };
        let base = state.auth.public_url.clone();
        let sent = mail_link(&state, TokenPurpose::ResetPassword, &user, "Reset your Xeno password", |token| {
            format!("Someone asked to reset the password of your Xeno account. If it was you, set a new one with this token (single use, for a limited time):\n{base}/api/v1/auth/password/reset?token={token}\n\nPOST {{\"token\": \"{token}\", \"password\": \"...\"}} to that address. If it was not you, ignore this mail.\n")
        })
        .await;
        if let Err(e) = sent {
            tracing::error!(error = %e.detail, "password reset not started");
            return;
        }
        security_event(
            &state,
            Some(user.id),
            "user.password_reset_requested",
            json!({}),
            &origin,
        )
        .await;
    });
    Ok(accepted("if this email has an account, a reset link is on its way").into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    pub token: String,
    pub password: String,
}

#[utoipa::path(operation_id = "reset_password", post, path = "/api/v1/auth/password/reset", tag = "auth",
    request_body = ResetBody,
    responses((status = 200, description = "the password is changed and every session of the account is revoked", body = Object),
        (status = 400, description = "unknown, used or expired token", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn reset_password(
    State(state): State<AppState>,
    client: ClientOrigin,
    ApiBody(body): ApiBody,
) -> Result<Json<Json_>, Problem> {
    let body: ResetBody = json_body(&body)?;
    check_password(&body.password)?;
    let token_hash = hash_secret(&body.token);
    let unknown = || {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "this reset token is unknown, already used or expired",
        )
    };
    // A token nobody was mailed costs no password hash.
    let peek = token_hash.clone();
    blocking(&state, move |r| {
        r.peek_one_time(TokenPurpose::ResetPassword, &peek)
    })
    .await?
    .ok_or_else(unknown)?;
    let hash = hash_password(&state, body.password).await?;
    // One commit: the token is spent, the password set, every session ended.
    let user = blocking(&state, move |r| r.reset_password(&token_hash, hash))
        .await?
        .ok_or_else(unknown)?;
    security_event(
        &state,
        Some(user),
        "user.password_reset",
        json!({ "sessions_revoked": true }),
        &client.pair(),
    )
    .await;
    Ok(Json(json!({ "password_changed": true })))
}

// ---- me and my sessions ------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub email_verified: bool,
    pub created_at: String,
    /// OIDC providers (issuers) linked to the account.
    pub linked_providers: Vec<String>,
    pub orgs: Vec<super::orgs::OrgInfo>,
}

#[utoipa::path(operation_id = "me", get, path = "/api/v1/me", tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn me(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Me>, Problem> {
    let (user, _) = signed_in_user(&state, &headers).await?;
    let (record, orgs) = blocking(&state, move |r| {
        let u = r
            .user(user)?
            .ok_or_else(|| xeno_actors::RuntimeError::NotFound("user".into()))?;
        Ok((u, r.orgs_of(user)?))
    })
    .await?;
    Ok(Json(Me {
        id: record.id,
        email: record.email,
        name: record.name,
        email_verified: record.email_verified,
        created_at: record.created_at,
        linked_providers: record.oidc.into_iter().map(|l| l.issuer).collect(),
        orgs: orgs
            .into_iter()
            .map(|(o, role)| super::orgs::OrgInfo {
                id: o.id,
                name: if o.name.is_empty() {
                    o.slug.clone()
                } else {
                    o.name
                },
                slug: o.slug,
                created_at: o.created_at,
                role,
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    #[serde(flatten)]
    pub session: SessionRecord,
    /// The session of the token that asked.
    pub current: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub items: Vec<SessionInfo>,
}

#[utoipa::path(operation_id = "list_sessions", get, path = "/api/v1/me/sessions", tag = "auth",
    responses((status = 200, body = SessionList)), security(("bearer" = [])))]
pub async fn sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<SessionList>, Problem> {
    let (user, current) = signed_in_user(&state, &headers).await?;
    let items = blocking(&state, move |r| r.sessions_of(user)).await?;
    Ok(Json(SessionList {
        items: items
            .into_iter()
            .map(|s| SessionInfo {
                current: s.id == current,
                session: s,
            })
            .collect(),
    }))
}

#[utoipa::path(operation_id = "revoke_session", delete, path = "/api/v1/me/sessions/{id}", tag = "auth",
    params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn revoke_session(
    State(state): State<AppState>,
    client: ClientOrigin,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let (user, _) = signed_in_user(&state, &headers).await?;
    let id = path_id(&id, "session")?;
    if !blocking(&state, move |r| r.revoke_session(user, id)).await? {
        return Err(Problem::not_found("session"));
    }
    security_event(
        &state,
        Some(user),
        "session.revoked",
        json!({ "session": id }),
        &client.pair(),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PageQuery {
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecurityEventList {
    pub items: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(operation_id = "list_security_events", get, path = "/api/v1/me/security-events", tag = "auth",
    params(PageQuery),
    responses((status = 200, description = "logins, failed logins, password resets and session changes of the account, oldest first", body = SecurityEventList)),
    security(("bearer" = [])))]
pub async fn security_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<SecurityEventList>, Problem> {
    let (user, _) = signed_in_user(&state, &headers).await?;
    let limit = page_limit(query.limit)?;
    let page = blocking(&state, move |r| {
        r.security_events(user, query.cursor.as_deref(), limit)
    })
    .await?;
    Ok(Json(SecurityEventList {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(operation_id = "jwks", get, path = "/api/v1/auth/jwks", tag = "auth",
    responses((status = 200, description = "the public keys of access tokens (JWKS)", body = Object)))]
pub async fn jwks(State(state): State<AppState>) -> Json<Json_> {
    Json(state.auth.tokens.jwks(now_secs()))
}

// ---- invitations, from their link --------------------------------------------

/// What the holder of an invitation link sees.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationView {
    pub org_slug: String,
    pub org_name: String,
    pub email: String,
    #[schema(value_type = String)]
    pub role: xeno_actors::catalog::Role,
    pub status: String,
    pub expires_at: String,
    /// Whether the invited email has an account (else: sign up from the link).
    pub has_account: bool,
}

async fn invitation_of_token(
    state: &AppState,
    token: &str,
) -> Result<xeno_actors::identity::Invitation, Problem> {
    let hash = hash_secret(token);
    blocking(state, move |r| r.invitation_by_token(&hash))
        .await?
        .ok_or_else(|| Problem::not_found("invitation"))
}

#[utoipa::path(operation_id = "get_invitation", get, path = "/api/v1/invitations/{token}", tag = "invitations",
    params(("token" = String, Path, description = "the token of the mailed link")),
    responses((status = 200, body = InvitationView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_invitation(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Json<InvitationView>, Problem> {
    let invitation = invitation_of_token(&state, &token).await?;
    let org = state
        .runtime
        .org_by_id(invitation.org)
        .ok_or_else(|| Problem::not_found("invitation"))?;
    let email = invitation.email.clone();
    let has_account = blocking(&state, move |r| r.user_by_email(&email))
        .await?
        .is_some();
    Ok(Json(InvitationView {
        org_name: if org.name.is_empty() {
            org.slug.clone()
        } else {
            org.name
        },
        org_slug: org.slug,
        email: invitation.email.clone(),
        role: invitation.role,
        status: status_of(&invitation, now_ms()).into(),
        expires_at: rfc3339_ms(invitation.expires_at_ms),
        has_account,
    }))
}

#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptBody {
    /// Signing up from the link: the new account's name and password (no
    /// access token needed; the link proves the address).
    pub name: Option<String>,
    pub password: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Accepted_ {
    pub org: String,
    #[schema(value_type = String)]
    pub role: xeno_actors::catalog::Role,
    /// Present when the account was created from the link.
    pub tokens: Option<Tokens>,
}

fn pending_or_conflict(invitation: &xeno_actors::identity::Invitation) -> Result<(), Problem> {
    let status = status_of(invitation, now_ms());
    if status != "pending" {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("the invitation is {status}"),
        ));
    }
    Ok(())
}

#[utoipa::path(operation_id = "accept_invitation", post, path = "/api/v1/invitations/{token}/accept", tag = "invitations",
    params(("token" = String, Path)), request_body(content = AcceptBody, description = "only when signing up from the link"),
    responses((status = 200, body = Accepted_),
        (status = 403, description = "signed in as someone else than the invited email", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "not pending (accepted, declined, cancelled or expired), or the email has an account: sign in first", body = Problem, content_type = "application/problem+json")),
    security((), ("bearer" = [])))]
pub async fn accept_invitation(
    State(state): State<AppState>,
    client: ClientOrigin,
    headers: HeaderMap,
    Path(token): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Json<Accepted_>, Problem> {
    let invitation = invitation_of_token(&state, &token).await?;
    pending_or_conflict(&invitation)?;
    let origin = client.pair();
    let org = state
        .runtime
        .org_by_id(invitation.org)
        .ok_or_else(|| Problem::not_found("invitation"))?;
    let (user, fresh_tokens) = if headers.contains_key(header::AUTHORIZATION) {
        let (user, _) = signed_in_user(&state, &headers).await?;
        let record = blocking(&state, move |r| r.user(user))
            .await?
            .ok_or_else(|| Problem::unauthorized("unknown user"))?;
        if record.email != invitation.email {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "this invitation is for another email address",
            ));
        }
        if !record.email_verified {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "confirm your email address first: open the link we mailed you",
            ));
        }
        (user, None)
    } else {
        let body: AcceptBody = if body.is_empty() {
            AcceptBody::default()
        } else {
            json_body(&body)?
        };
        let password = body.password.ok_or_else(|| {
            Problem::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "/password",
                "sign in first, or give a password to create your account",
            )
        })?;
        check_password(&password)?;
        let hash = hash_password(&state, password).await?;
        let (email, name) = (invitation.email.clone(), body.name.unwrap_or_default());
        let user = blocking(&state, move |r| {
            r.create_user(&email, name.trim(), Some(hash), true)
        })
        .await
        .map_err(|p| {
            if p.status == StatusCode::CONFLICT {
                Problem::new(
                    StatusCode::CONFLICT,
                    "this email has an account: sign in, then accept with your access token",
                )
            } else {
                p
            }
        })?;
        security_event(
            &state,
            Some(user.id),
            "user.signed_up",
            json!({ "via": "invitation" }),
            &origin,
        )
        .await;
        (user.id, Some(()))
    };
    // One commit, checked under the lock: still pending, this link, not
    // expired, the organization still there.
    let token_hash = hash_secret(&token);
    let (invitation, membership) = blocking(&state, move |r| {
        r.accept_invitation(&token_hash, user, now_ms())
    })
    .await?;
    let (org_id, role) = (invitation.org, membership.role);
    let entry = AuditInput {
        actor: format!("user:{user}"),
        action: "invitation.accepted".into(),
        target: format!("invitation:{}", invitation.id),
        summary: json!({ "role": role.as_str(), "email": invitation.email }),
        ip: origin.0.clone(),
        user_agent: origin.1.clone(),
    };
    blocking(&state, move |r| r.audit_with(org_id, entry)).await?;
    let tokens = match fresh_tokens {
        Some(()) => Some(start_session(&state, user, None, &origin).await?),
        None => None,
    };
    Ok(Json(Accepted_ {
        org: org.slug,
        role,
        tokens,
    }))
}

#[utoipa::path(operation_id = "decline_invitation", post, path = "/api/v1/invitations/{token}/decline", tag = "invitations",
    params(("token" = String, Path)),
    responses((status = 204), (status = 409, description = "not pending", body = Problem, content_type = "application/problem+json")))]
pub async fn decline_invitation(
    State(state): State<AppState>,
    client: ClientOrigin,
    Path(token): Path<String>,
) -> Result<StatusCode, Problem> {
    let invitation = invitation_of_token(&state, &token).await?;
    pending_or_conflict(&invitation)?;
    let (org, id, hash) = (invitation.org, invitation.id, hash_secret(&token));
    let invitation = blocking(&state, move |r| {
        r.close_invitation(org, id, Some(&hash), InvitationStatus::Declined)
    })
    .await?;
    let origin = client.pair();
    let entry = AuditInput {
        actor: format!("invitee:{}", invitation.email),
        action: "invitation.declined".into(),
        target: format!("invitation:{}", invitation.id),
        summary: json!({}),
        ip: origin.0,
        user_agent: origin.1,
    };
    let org = invitation.org;
    blocking(&state, move |r| r.audit_with(org, entry)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- OIDC login ----------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
pub struct OidcStartQuery {
    /// Passed to the provider (which account to preselect).
    pub login_hint: Option<String>,
}

fn oidc_unavailable() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "OIDC login is not configured")
}

#[utoipa::path(operation_id = "oidc_start", get, path = "/api/v1/auth/oidc/start", tag = "auth",
    params(OidcStartQuery),
    responses((status = 302, description = "to the provider's authorization endpoint (code flow with PKCE, state and nonce)"),
        (status = 404, description = "OIDC is not configured", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "the provider cannot be reached", body = Problem, content_type = "application/problem+json")))]
pub async fn oidc_start(
    State(state): State<AppState>,
    Query(query): Query<OidcStartQuery>,
) -> Result<Response, Problem> {
    let oidc = state.auth.oidc.as_ref().ok_or_else(oidc_unavailable)?;
    let client = oidc.client().await.map_err(|e| {
        tracing::warn!(error = %e, "oidc discovery failed");
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "the identity provider cannot be reached",
        )
    })?;
    let (url, pending) = client.authorize(query.login_hint.as_deref());
    let hash = hash_secret(&pending.state);
    // The login is bound to this browser by a cookie: whoever else gets hold
    // of the callback URL (code and state) cannot finish it.
    let binding = random_secret("");
    let payload = json!({ "pending": pending, "binding": hash_secret(&binding) });
    // Ten minutes to come back from the provider.
    let expires = now_ms() + 600_000;
    blocking(&state, move |r| {
        r.put_one_time(TokenPurpose::OidcLogin, &hash, payload, expires)
    })
    .await?;
    let secure = if state.auth.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, url.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (
                header::SET_COOKIE,
                format!("{OIDC_COOKIE}={binding}; Path=/api/v1/auth/oidc; HttpOnly; SameSite=Lax; Max-Age=600{secure}"),
            ),
        ],
    )
        .into_response())
}

/// The cookie that binds an OIDC login to the browser that started it.
const OIDC_COOKIE: &str = "xeno_oidc";

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[derive(Deserialize, IntoParams)]
pub struct OidcCallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

#[utoipa::path(operation_id = "oidc_callback", get, path = "/api/v1/auth/oidc/callback", tag = "auth",
    params(OidcCallbackQuery),
    responses((status = 200, description = "signed in", body = Tokens),
        (status = 400, description = "unknown or used state, or the provider refused", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "an account has this email but the provider does not assert it is verified", body = Problem, content_type = "application/problem+json")))]
pub async fn oidc_callback(
    State(state): State<AppState>,
    client: ClientOrigin,
    headers: HeaderMap,
    Query(query): Query<OidcCallbackQuery>,
) -> Result<Json<Tokens>, Problem> {
    let oidc = state.auth.oidc.as_ref().ok_or_else(oidc_unavailable)?;
    if let Some(error) = &query.error {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the identity provider refused: {error} {}",
                query.error_description.clone().unwrap_or_default()
            ),
        ));
    }
    let (Some(code), Some(login_state)) = (query.code.clone(), query.state.clone()) else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "the callback needs `code` and `state`",
        ));
    };
    let hash = hash_secret(&login_state);
    let pending = blocking(&state, move |r| {
        r.take_one_time(TokenPurpose::OidcLogin, &hash)
    })
    .await?
    .ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "this login is unknown, already finished or expired; start again",
        )
    })?;
    let bound = cookie(&headers, OIDC_COOKIE).map(hash_secret);
    if bound.is_none() || bound.as_deref() != pending.get("binding").and_then(Json_::as_str) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "this login was started in another browser; start again",
        ));
    }
    let pending = pending
        .get("pending")
        .cloned()
        .and_then(|p| serde_json::from_value::<xeno_connectors::oidc::PendingLogin>(p).ok())
        .filter(|p| p.state == login_state)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "this login is unknown; start again",
            )
        })?;
    let provider = oidc.client().await.map_err(|_| {
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "the identity provider cannot be reached",
        )
    })?;
    let identity = provider.finish(&code, &pending).await.map_err(|e| {
        tracing::warn!(error = %e, "oidc login refused");
        Problem::new(
            StatusCode::BAD_REQUEST,
            "the identity provider's answer was refused",
        )
    })?;
    let origin = client.pair();
    let id = identity.clone();
    // Decided and written at once (see `oidc_sign_in`): a link only on the
    // provider's word that the address is verified; an unproven sign-up of
    // that address is taken over, its password dropped.
    let outcome = blocking(&state, move |r| {
        r.oidc_sign_in(
            &id.issuer,
            &id.subject,
            id.email.as_deref(),
            id.email_verified,
            id.name.as_deref().unwrap_or_default(),
        )
    })
    .await?;
    let (user, how) = match outcome {
        OidcSignIn::Existing(u) => (u, "existing"),
        OidcSignIn::Linked(u) => (u, "linked"),
        OidcSignIn::Created(u) => (u, "created"),
        OidcSignIn::Refused(reason) => return Err(Problem::new(StatusCode::CONFLICT, reason)),
    };
    if how != "existing" {
        security_event(
            &state,
            Some(user.id),
            "user.oidc_linked",
            json!({ "issuer": identity.issuer, "account": how }),
            &origin,
        )
        .await;
    }
    let tokens = start_session(&state, user.id, None, &origin).await?;
    security_event(
        &state,
        Some(user.id),
        "user.logged_in",
        json!({ "session": tokens.session_id, "method": "oidc", "issuer": identity.issuer }),
        &origin,
    )
    .await;
    Ok(Json(tokens))
}
