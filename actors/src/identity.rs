//! The durable identity layer: people (users), their sessions (refresh-token
//! families), one-time tokens (email verification, password reset, OIDC
//! login state), organizations with their members and invitations, and the
//! keys machines use (write keys for ingest, API keys for the management API).
//!
//! Everything is a record in the state port, laid out as the key-layout
//! comment of [`crate::catalog`] says: people and sessions under `g/` (they
//! belong to no tenant), members, invitations and keys under `t/{org}/`. Every
//! change of several keys is one atomic, durable commit. Secrets are never
//! stored: callers hand in SHA-256 hashes of tokens, and key secrets are hashed
//! here before they are written. Read-check-write sequences (an email taken, a
//! token presented twice, the last owner) run under a lock per area, so two
//! concurrent requests cannot both win.

use std::fmt;
use std::sync::{Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use uuid::Uuid;
use xeno_engine::ports::StateWrite;

use crate::catalog::{ApiKeyRecord, OrgRecord, Role, encode, hash_key, org_key, scan_all};
use crate::clock::now;
use crate::facade::{Runtime, RuntimeError};

// ---- records -----------------------------------------------------------------

/// A person who signs in. Internal: the gateway maps it to what it shows.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: Uuid,
    /// Lowercase and trimmed.
    pub email: String,
    pub name: String,
    /// An argon2 PHC string, computed by the gateway; `None` for people who
    /// only sign in with OIDC.
    pub password_hash: Option<String>,
    pub email_verified: bool,
    pub created_at: String,
    pub oidc: Vec<OidcLink>,
}

// Hand-written so a logged user never carries its password hash.
impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("name", &self.name)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .field("email_verified", &self.email_verified)
            .field("created_at", &self.created_at)
            .field("oidc", &self.oidc)
            .finish()
    }
}

/// An identity at an OIDC provider linked to a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OidcLink {
    pub issuer: String,
    pub subject: String,
}

/// A sign-in: a family of refresh tokens, each used once to get the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionRecord {
    pub id: Uuid,
    pub user: Uuid,
    pub created_at: String,
    pub last_used_at: String,
    /// The family ends then, however often it is refreshed.
    pub expires_at_ms: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub revoked: bool,
}

/// What presenting a refresh token came to.
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshOutcome {
    /// It was the session's current token: the new one replaces it.
    Rotated(SessionRecord),
    /// It was an earlier, spent token of the family: someone holds a copy, so
    /// the whole session is now revoked.
    Reused(SessionRecord),
    /// Unknown, or its session is revoked or expired.
    Invalid,
}

/// What an OIDC sign-in came to (see [`Runtime::oidc_sign_in`]).
#[derive(Debug, Clone, PartialEq)]
pub enum OidcSignIn {
    /// The identity was linked to this user already.
    Existing(UserRecord),
    /// The identity is now linked to the user who has its email.
    Linked(UserRecord),
    /// A new user, with the identity linked.
    Created(UserRecord),
    /// Not signed in, and nothing written; the reason, for the person.
    Refused(String),
}

/// What a one-time token is for; a token of one purpose never serves another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenPurpose {
    VerifyEmail,
    ResetPassword,
    OidcLogin,
}

impl TokenPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenPurpose::VerifyEmail => "verify_email",
            TokenPurpose::ResetPassword => "reset_password",
            TokenPurpose::OidcLogin => "oidc_login",
        }
    }
}

/// A user's role in an organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Membership {
    pub org: Uuid,
    pub user: Uuid,
    pub role: Role,
    pub joined_at: String,
}

/// Where an invitation stands. "Expired" is not stored: callers compare
/// `expires_at_ms` with the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum InvitationStatus {
    Pending,
    Accepted,
    Declined,
    Cancelled,
}

/// An invitation to join an organization, sent to an email address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Invitation {
    pub id: Uuid,
    pub org: Uuid,
    /// Lowercase and trimmed.
    pub email: String,
    pub role: Role,
    pub invited_by: Uuid,
    pub created_at: String,
    pub expires_at_ms: i64,
    pub status: InvitationStatus,
    /// SHA-256 of the link's token (the token itself is only in the email).
    pub token_hash: String,
}

/// What a machine key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// Ingest (`/v1/*`).
    Write,
    /// The management API, with a role.
    Api,
}

/// A machine key, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyRecord {
    pub id: Uuid,
    pub org: Uuid,
    pub kind: KeyKind,
    pub name: String,
    /// API keys only.
    pub role: Option<Role>,
    /// The first 12 characters of the secret, e.g. `xeno_wk_AbCd`, to tell
    /// keys apart in lists.
    pub prefix: String,
    pub created_at: String,
    pub rotated_at: Option<String>,
}

/// A one-time token as stored, under the hash of the token.
#[derive(Serialize, Deserialize)]
struct OneTime {
    payload: Json,
    expires_at_ms: i64,
    /// The payload's `user`, when it names one (indexed, to void the user's
    /// older tokens).
    user: Option<Uuid>,
}

/// A refresh token as stored, under its hash.
#[derive(Serialize, Deserialize)]
struct RefreshEntry {
    session: Uuid,
    /// Used once already: presenting it again is a reuse.
    spent: bool,
}

/// Where an invitation link leads.
#[derive(Serialize, Deserialize)]
struct InvitationRef {
    org: Uuid,
    id: Uuid,
}

/// One lock per area of read-check-write sequences: a sign-up does not wait
/// for a token refresh. A change that needs several takes them in this
/// order, and only this order, so that none deadlocks: users, one-time
/// tokens, sessions, orgs (keys alone).
#[derive(Default)]
pub(crate) struct IdentityLocks {
    users: Mutex<()>,
    one_time: Mutex<()>,
    sessions: Mutex<()>,
    orgs: Mutex<()>,
    keys: Mutex<()>,
}

fn hold(lock: &Mutex<()>) -> MutexGuard<'_, ()> {
    // The guarded data is the store, which a panic cannot leave half-written
    // (commits are atomic), so a poisoned lock is still good.
    lock.lock().unwrap_or_else(|p| p.into_inner())
}

// ---- keys --------------------------------------------------------------------

fn user_key(id: Uuid) -> Vec<u8> {
    format!("g/user/{id}").into_bytes()
}
fn email_key(email: &str) -> Vec<u8> {
    format!("g/email/{email}").into_bytes()
}
fn oidc_key(issuer: &str, subject: &str) -> Vec<u8> {
    // Hashed: an issuer is a URL, and neither part is bounded in length.
    format!("g/oidc/{}", hash_key(&format!("{issuer}\n{subject}"))).into_bytes()
}
fn one_time_key(purpose: TokenPurpose, hash: &str) -> Vec<u8> {
    format!("g/ott/{}/{hash}", purpose.as_str()).into_bytes()
}
fn one_time_user_prefix(user: Uuid, purpose: TokenPurpose) -> Vec<u8> {
    format!("g/ott-user/{user}/{}/", purpose.as_str()).into_bytes()
}
fn session_key(id: Uuid) -> Vec<u8> {
    format!("g/sess/{id}").into_bytes()
}
fn user_sessions_prefix(user: Uuid) -> Vec<u8> {
    format!("g/usess/{user}/").into_bytes()
}
fn refresh_key(hash: &str) -> Vec<u8> {
    format!("g/rt/{hash}").into_bytes()
}
fn family_prefix(session: Uuid) -> Vec<u8> {
    format!("g/sess-rt/{session}/").into_bytes()
}
fn user_orgs_prefix(user: Uuid) -> Vec<u8> {
    format!("g/umem/{user}/").into_bytes()
}
fn member_prefix(org: Uuid) -> Vec<u8> {
    format!("t/{org}/mem/").into_bytes()
}
fn invitation_prefix(org: Uuid) -> Vec<u8> {
    format!("t/{org}/inv/").into_bytes()
}
fn invitation_token_key(hash: &str) -> Vec<u8> {
    format!("g/inv/{hash}").into_bytes()
}
fn key_prefix(org: Uuid) -> Vec<u8> {
    format!("t/{org}/key/").into_bytes()
}
fn key_hash_key(org: Uuid, id: Uuid) -> Vec<u8> {
    format!("t/{org}/keyhash/{id}").into_bytes()
}
fn secret_index_key(kind: KeyKind, hash: &str) -> Vec<u8> {
    match kind {
        KeyKind::Write => format!("g/wk/{hash}"),
        KeyKind::Api => format!("g/ak/{hash}"),
    }
    .into_bytes()
}

fn with(prefix: Vec<u8>, rest: impl fmt::Display) -> Vec<u8> {
    let mut key = prefix;
    key.extend_from_slice(rest.to_string().as_bytes());
    key
}

// ---- helpers -----------------------------------------------------------------

fn invalid(pointer: &str, reason: &str) -> RuntimeError {
    RuntimeError::Invalid {
        pointer: pointer.into(),
        reason: reason.into(),
    }
}

/// How emails are compared and stored.
/// An email address as stored (trimmed, lowercase), or why it is not one.
pub fn normalize_email(email: &str) -> Result<String, RuntimeError> {
    let email = email.trim().to_lowercase();
    if email.is_empty() || email.len() > 254 || !email.contains('@') {
        return Err(invalid("/email", "not an email address"));
    }
    Ok(email)
}

/// A key secret: `prefix` and 40 characters of a-z, A-Z, 0-9 (238 bits; one
/// word to double-click, unlike base64's `-` and `_`).
pub fn new_secret(prefix: &str) -> Result<String, RuntimeError> {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(prefix.len() + 40);
    out.push_str(prefix);
    let mut pool = [0u8; 64];
    while out.len() < prefix.len() + 40 {
        getrandom::fill(&mut pool).map_err(|e| RuntimeError::Internal(e.to_string()))?;
        // Bytes of 248 and above are dropped so that every character is
        // equally likely (248 = 4 × 62).
        for b in pool.iter().filter(|b| **b < 248) {
            if out.len() == prefix.len() + 40 {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(b % 62)]));
        }
    }
    Ok(out)
}

fn secret_prefix(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Write => "xeno_wk_",
        KeyKind::Api => "xeno_ak_",
    }
}

impl Runtime {
    fn get_record<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, RuntimeError> {
        match self.store().get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                RuntimeError::Internal(format!(
                    "record {} does not decode: {e}",
                    String::from_utf8_lossy(key)
                ))
            }),
        }
    }

    /// Every pair under `prefix`, as (the rest of the key, the value).
    fn scan_rest(&self, prefix: &[u8]) -> Result<Vec<(String, Vec<u8>)>, RuntimeError> {
        let mut out = Vec::new();
        scan_all(&**self.store(), prefix, &mut |k, v| {
            out.push((
                String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                v.to_vec(),
            ));
            Ok(())
        })?;
        Ok(out)
    }

    /// Every record under `prefix`, skipping none: a record that does not
    /// decode is an error, not a silent gap.
    fn scan_records<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>, RuntimeError> {
        self.scan_rest(prefix)?
            .into_iter()
            .map(|(rest, v)| {
                serde_json::from_slice(&v).map_err(|e| {
                    RuntimeError::Internal(format!(
                        "record {}{rest} does not decode: {e}",
                        String::from_utf8_lossy(prefix)
                    ))
                })
            })
            .collect()
    }

    fn commit_durably(&self, writes: Vec<StateWrite>) -> Result<(), RuntimeError> {
        self.store().commit(writes, true)?;
        Ok(())
    }

    /// Waits for the identity changes under way to be committed. Every change
    /// of an organization's members, invitations or keys checks, under these
    /// locks, that the catalog knows the organization: once it is out of the
    /// catalog and this returns, none writes to it any more (so a deletion
    /// that then removes its keys leaves nothing behind). Blocks for at most
    /// a commit or two.
    pub fn identity_barrier(&self) {
        drop(hold(&self.identity_locks().orgs));
        drop(hold(&self.identity_locks().keys));
    }

    /// The organization, which every change of its members, invitations and
    /// keys checks under its lock (see [`Self::identity_barrier`]).
    fn known_org(&self, org: Uuid) -> Result<OrgRecord, RuntimeError> {
        self.catalog()
            .org(org)
            .ok_or_else(|| RuntimeError::NotFound(format!("organization {org}")))
    }

    fn known_user(&self, id: Uuid) -> Result<UserRecord, RuntimeError> {
        self.user(id)?
            .ok_or_else(|| RuntimeError::NotFound(format!("user {id}")))
    }

    // ---- users -----------------------------------------------------------------

    /// A new user; `Conflict` when the email (compared lowercase, trimmed)
    /// belongs to someone already.
    pub fn create_user(
        &self,
        email: &str,
        name: &str,
        password_hash: Option<String>,
        email_verified: bool,
    ) -> Result<UserRecord, RuntimeError> {
        let email = normalize_email(email)?;
        let _guard = hold(&self.identity_locks().users);
        if self.store().get(&email_key(&email))?.is_some() {
            return Err(RuntimeError::Conflict(
                "a user with this email exists".into(),
            ));
        }
        let user = UserRecord {
            id: Uuid::now_v7(),
            email,
            name: name.trim().to_string(),
            password_hash,
            email_verified,
            created_at: now().to_rfc3339(),
            oidc: Vec::new(),
        };
        self.commit_durably(vec![
            StateWrite::Put(user_key(user.id), encode(&user)),
            StateWrite::Put(email_key(&user.email), encode(&user.id)),
        ])?;
        Ok(user)
    }

    pub fn user(&self, id: Uuid) -> Result<Option<UserRecord>, RuntimeError> {
        self.get_record(&user_key(id))
    }

    pub fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, RuntimeError> {
        let Ok(email) = normalize_email(email) else {
            return Ok(None);
        };
        match self.get_record::<Uuid>(&email_key(&email))? {
            Some(id) => self.user(id),
            None => Ok(None),
        }
    }

    /// Writes a changed user. The email and OIDC indexes follow the record;
    /// `Conflict` when the new email or a new OIDC identity belongs to
    /// someone else, `NotFound` for an unknown user.
    ///
    /// The whole record is written: a change made by someone else between
    /// the caller's read and this write is lost. Prefer
    /// [`Self::update_user`], which reads, changes and writes under the lock.
    pub fn put_user(&self, user: &UserRecord) -> Result<(), RuntimeError> {
        let mut user = user.clone();
        user.email = normalize_email(&user.email)?;
        let _guard = hold(&self.identity_locks().users);
        let old = self.known_user(user.id)?;
        let writes = self.user_writes(&old, &user)?;
        self.commit_durably(writes)
    }

    /// Changes a user by `change` on the record as stored, all under the
    /// users lock (no concurrent change is lost); the record after. The
    /// indexes follow, as with [`Self::put_user`].
    pub fn update_user(
        &self,
        id: Uuid,
        change: impl FnOnce(&mut UserRecord),
    ) -> Result<UserRecord, RuntimeError> {
        let _guard = hold(&self.identity_locks().users);
        let old = self.known_user(id)?;
        let mut user = old.clone();
        change(&mut user);
        user.id = id;
        user.email = normalize_email(&user.email)?;
        let writes = self.user_writes(&old, &user)?;
        self.commit_durably(writes)?;
        Ok(user)
    }

    /// The writes that replace `old` by `user`, its email and OIDC indexes
    /// included. Call under the users lock.
    fn user_writes(
        &self,
        old: &UserRecord,
        user: &UserRecord,
    ) -> Result<Vec<StateWrite>, RuntimeError> {
        let mut writes = Vec::new();
        if old.email != user.email {
            if self.store().get(&email_key(&user.email))?.is_some() {
                return Err(RuntimeError::Conflict(
                    "a user with this email exists".into(),
                ));
            }
            writes.push(StateWrite::Delete(email_key(&old.email)));
            writes.push(StateWrite::Put(email_key(&user.email), encode(&user.id)));
        }
        for link in old.oidc.iter().filter(|l| !user.oidc.contains(l)) {
            writes.push(StateWrite::Delete(oidc_key(&link.issuer, &link.subject)));
        }
        for link in user.oidc.iter().filter(|l| !old.oidc.contains(l)) {
            let key = oidc_key(&link.issuer, &link.subject);
            if self
                .get_record::<Uuid>(&key)?
                .is_some_and(|id| id != user.id)
            {
                return Err(RuntimeError::Conflict(
                    "this sign-in is linked to another user".into(),
                ));
            }
            writes.push(StateWrite::Put(key, encode(&user.id)));
        }
        writes.push(StateWrite::Put(user_key(user.id), encode(user)));
        Ok(writes)
    }

    pub fn user_by_oidc(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<UserRecord>, RuntimeError> {
        match self.get_record::<Uuid>(&oidc_key(issuer, subject))? {
            Some(id) => self.user(id),
            None => Ok(None),
        }
    }

    /// Links an OIDC identity to `user` (idempotent); `Conflict` when it is
    /// linked to another user.
    pub fn link_oidc(
        &self,
        user: Uuid,
        issuer: &str,
        subject: &str,
    ) -> Result<UserRecord, RuntimeError> {
        let _guard = hold(&self.identity_locks().users);
        let mut record = self.known_user(user)?;
        let key = oidc_key(issuer, subject);
        match self.get_record::<Uuid>(&key)? {
            Some(owner) if owner != user => {
                return Err(RuntimeError::Conflict(
                    "this sign-in is linked to another user".into(),
                ));
            }
            Some(_)
                if record
                    .oidc
                    .iter()
                    .any(|l| l.issuer == issuer && l.subject == subject) =>
            {
                return Ok(record);
            }
            _ => {}
        }
        record.oidc.push(OidcLink {
            issuer: issuer.to_string(),
            subject: subject.to_string(),
        });
        self.commit_durably(vec![
            StateWrite::Put(user_key(user), encode(&record)),
            StateWrite::Put(key, encode(&user)),
        ])?;
        Ok(record)
    }

    /// Signs in with an OIDC identity, deciding and writing under the users
    /// lock (two concurrent sign-ins cannot both create or link):
    ///
    /// - the identity is linked already: [`OidcSignIn::Existing`];
    /// - the provider gave no (usable) email, or does not assert that it is
    ///   verified: [`OidcSignIn::Refused`], and nothing is written;
    /// - a verified user has the email: the identity is linked to it
    ///   ([`OidcSignIn::Linked`]);
    /// - an unverified user has it (someone signed up with the address and
    ///   never proved it): the provider's verified owner takes the account
    ///   over, in one commit: its password, OIDC links, sessions and one-time
    ///   tokens go, the email is marked verified, the identity is linked
    ///   ([`OidcSignIn::Linked`]);
    /// - no user has it: a verified user is created with the link
    ///   ([`OidcSignIn::Created`]).
    pub fn oidc_sign_in(
        &self,
        issuer: &str,
        subject: &str,
        email: Option<&str>,
        email_verified: bool,
        name: &str,
    ) -> Result<OidcSignIn, RuntimeError> {
        let _users = hold(&self.identity_locks().users);
        let key = oidc_key(issuer, subject);
        if let Some(id) = self.get_record::<Uuid>(&key)?
            && let Some(user) = self.user(id)?
        {
            return Ok(OidcSignIn::Existing(user));
        }
        let Some(email) = email.map(str::trim).filter(|e| !e.is_empty()) else {
            return Ok(OidcSignIn::Refused(
                "the identity provider gave no email address".into(),
            ));
        };
        let Ok(email) = normalize_email(email) else {
            return Ok(OidcSignIn::Refused(
                "the identity provider gave no valid email address".into(),
            ));
        };
        if !email_verified {
            return Ok(OidcSignIn::Refused(
                "the identity provider does not assert that this email is verified".into(),
            ));
        }
        let link = OidcLink {
            issuer: issuer.to_string(),
            subject: subject.to_string(),
        };
        let existing = match self.get_record::<Uuid>(&email_key(&email))? {
            Some(id) => self.user(id)?,
            None => None,
        };
        let Some(mut user) = existing else {
            let user = UserRecord {
                id: Uuid::now_v7(),
                email,
                name: name.trim().to_string(),
                password_hash: None,
                email_verified: true,
                created_at: now().to_rfc3339(),
                oidc: vec![link],
            };
            self.commit_durably(vec![
                StateWrite::Put(user_key(user.id), encode(&user)),
                StateWrite::Put(email_key(&user.email), encode(&user.id)),
                StateWrite::Put(key, encode(&user.id)),
            ])?;
            return Ok(OidcSignIn::Created(user));
        };
        if user.email_verified {
            let mut writes = Vec::new();
            if !user.oidc.contains(&link) {
                user.oidc.push(link);
                writes.push(StateWrite::Put(user_key(user.id), encode(&user)));
            }
            writes.push(StateWrite::Put(key, encode(&user.id)));
            self.commit_durably(writes)?;
            return Ok(OidcSignIn::Linked(user));
        }
        // The take-over. Whoever set the password (or linked another
        // identity) never proved the address: all of it goes.
        let _one_time = hold(&self.identity_locks().one_time);
        let _sessions = hold(&self.identity_locks().sessions);
        let mut writes = Vec::new();
        for old in &user.oidc {
            if *old != link {
                writes.push(StateWrite::Delete(oidc_key(&old.issuer, &old.subject)));
            }
        }
        writes.extend(self.session_revocations_of(user.id)?);
        writes.extend(self.one_time_drops_of(user.id)?);
        user.password_hash = None;
        user.email_verified = true;
        user.oidc = vec![link];
        if !name.trim().is_empty() {
            user.name = name.trim().to_string();
        }
        writes.push(StateWrite::Put(user_key(user.id), encode(&user)));
        writes.push(StateWrite::Put(key, encode(&user.id)));
        self.commit_durably(writes)?;
        tracing::warn!(user = %user.id, %issuer, "an unverified account was taken over by the verified owner of its email");
        Ok(OidcSignIn::Linked(user))
    }

    // ---- one-time tokens -------------------------------------------------------

    /// Stores a one-time token by its hash. A payload `{"user": id, ...}` is
    /// indexed under the user (see [`Self::drop_one_time_of_user`]).
    pub fn put_one_time(
        &self,
        purpose: TokenPurpose,
        token_hash: &str,
        payload: Json,
        expires_at_ms: i64,
    ) -> Result<(), RuntimeError> {
        let user = payload
            .get("user")
            .and_then(Json::as_str)
            .and_then(|s| Uuid::parse_str(s).ok());
        let record = OneTime {
            payload,
            expires_at_ms,
            user,
        };
        let mut writes = vec![StateWrite::Put(
            one_time_key(purpose, token_hash),
            encode(&record),
        )];
        if let Some(user) = user {
            writes.push(StateWrite::Put(
                with(one_time_user_prefix(user, purpose), token_hash),
                Vec::new(),
            ));
        }
        self.commit_durably(writes)
    }

    /// Takes a one-time token: it is gone afterwards, whatever the answer.
    /// `None` when unknown (or of another purpose) or expired.
    pub fn take_one_time(
        &self,
        purpose: TokenPurpose,
        token_hash: &str,
    ) -> Result<Option<Json>, RuntimeError> {
        let key = one_time_key(purpose, token_hash);
        let _guard = hold(&self.identity_locks().one_time);
        let Some(record) = self.get_record::<OneTime>(&key)? else {
            return Ok(None);
        };
        let mut writes = vec![StateWrite::Delete(key)];
        if let Some(user) = record.user {
            writes.push(StateWrite::Delete(with(
                one_time_user_prefix(user, purpose),
                token_hash,
            )));
        }
        self.commit_durably(writes)?;
        Ok((record.expires_at_ms > now().0).then_some(record.payload))
    }

    /// Voids every token of `purpose` whose payload names `user` (a new
    /// password-reset link voids the older ones).
    pub fn drop_one_time_of_user(
        &self,
        purpose: TokenPurpose,
        user: Uuid,
    ) -> Result<(), RuntimeError> {
        let prefix = one_time_user_prefix(user, purpose);
        let _guard = hold(&self.identity_locks().one_time);
        let mut writes = Vec::new();
        for (hash, _) in self.scan_rest(&prefix)? {
            writes.push(StateWrite::Delete(one_time_key(purpose, &hash)));
            writes.push(StateWrite::Delete(with(prefix.clone(), &hash)));
        }
        if writes.is_empty() {
            return Ok(());
        }
        self.commit_durably(writes)
    }

    /// A one-time token's payload, leaving the token in place; `None` when
    /// unknown (or of another purpose) or expired.
    pub fn peek_one_time(
        &self,
        purpose: TokenPurpose,
        token_hash: &str,
    ) -> Result<Option<Json>, RuntimeError> {
        Ok(self
            .get_record::<OneTime>(&one_time_key(purpose, token_hash))?
            .filter(|t| t.expires_at_ms > now().0)
            .map(|t| t.payload))
    }

    /// The one-time token under `token_hash` and the writes that consume it.
    /// Call under the one-time lock.
    fn one_time_consumption(
        &self,
        purpose: TokenPurpose,
        token_hash: &str,
    ) -> Result<Option<(OneTime, Vec<StateWrite>)>, RuntimeError> {
        let key = one_time_key(purpose, token_hash);
        let Some(record) = self.get_record::<OneTime>(&key)? else {
            return Ok(None);
        };
        let mut writes = vec![StateWrite::Delete(key)];
        if let Some(user) = record.user {
            writes.push(StateWrite::Delete(with(
                one_time_user_prefix(user, purpose),
                token_hash,
            )));
        }
        Ok(Some((record, writes)))
    }

    /// Writes that void every one-time token naming `user`, whatever its
    /// purpose. Call under the one-time lock.
    fn one_time_drops_of(&self, user: Uuid) -> Result<Vec<StateWrite>, RuntimeError> {
        let prefix = format!("g/ott-user/{user}/").into_bytes();
        let mut writes = Vec::new();
        // `rest` is `{purpose}/{hash}`, as under `g/ott/`.
        for (rest, _) in self.scan_rest(&prefix)? {
            writes.push(StateWrite::Delete(with(b"g/ott/".to_vec(), &rest)));
            writes.push(StateWrite::Delete(with(prefix.clone(), &rest)));
        }
        Ok(writes)
    }

    /// Consumes an email-verification token and marks its user verified, in
    /// one commit: the user record is read and written under the users lock.
    /// `None` (the token consumed all the same, if it existed) when the token
    /// is unknown, used or expired, its user is gone, or the user's email is
    /// no longer the one the token was sent to.
    pub fn verify_email(&self, token_hash: &str) -> Result<Option<UserRecord>, RuntimeError> {
        let _users = hold(&self.identity_locks().users);
        let _one_time = hold(&self.identity_locks().one_time);
        let Some((token, mut writes)) =
            self.one_time_consumption(TokenPurpose::VerifyEmail, token_hash)?
        else {
            return Ok(None);
        };
        let mut user = match token.user {
            Some(id) if token.expires_at_ms > now().0 => self.user(id)?,
            _ => None,
        };
        if let (Some(u), Some(sent_to)) = (&user, token.payload.get("email").and_then(Json::as_str))
            && normalize_email(sent_to).ok().as_deref() != Some(u.email.as_str())
        {
            user = None;
        }
        if let Some(u) = &mut user {
            u.email_verified = true;
            writes.push(StateWrite::Put(user_key(u.id), encode(&*u)));
        }
        self.commit_durably(writes)?;
        Ok(user)
    }

    /// Consumes a password-reset token and, in one commit: sets the user's
    /// password hash, marks the email verified (the link proved it), revokes
    /// every session of the user with its refresh tokens, and voids the
    /// user's other one-time tokens. The user's id; `None` (the token
    /// consumed all the same, if it existed) when the token is unknown, used
    /// or expired, or its user is gone.
    pub fn reset_password(
        &self,
        token_hash: &str,
        password_hash: String,
    ) -> Result<Option<Uuid>, RuntimeError> {
        let _users = hold(&self.identity_locks().users);
        let _one_time = hold(&self.identity_locks().one_time);
        let _sessions = hold(&self.identity_locks().sessions);
        let Some((token, mut writes)) =
            self.one_time_consumption(TokenPurpose::ResetPassword, token_hash)?
        else {
            return Ok(None);
        };
        let user = match token.user {
            Some(id) if token.expires_at_ms > now().0 => self.user(id)?,
            _ => None,
        };
        // A link mailed to an address the account no longer has proves
        // nothing about the current one.
        let user = user.filter(|u| {
            token
                .payload
                .get("email")
                .and_then(Json::as_str)
                .is_none_or(|sent_to| {
                    normalize_email(sent_to).ok().as_deref() == Some(u.email.as_str())
                })
        });
        let Some(mut user) = user else {
            self.commit_durably(writes)?;
            return Ok(None);
        };
        user.password_hash = Some(password_hash);
        user.email_verified = true;
        for drop in self.one_time_drops_of(user.id)? {
            // The token itself is among them.
            if !writes.contains(&drop) {
                writes.push(drop);
            }
        }
        writes.extend(self.session_revocations_of(user.id)?);
        writes.push(StateWrite::Put(user_key(user.id), encode(&user)));
        self.commit_durably(writes)?;
        Ok(Some(user.id))
    }

    // ---- sessions ----------------------------------------------------------------

    /// A new session of `user` whose first refresh token hashes to
    /// `refresh_hash`.
    pub fn create_session(
        &self,
        user: Uuid,
        refresh_hash: &str,
        expires_at_ms: i64,
        ip: Option<String>,
        user_agent: Option<String>,
    ) -> Result<SessionRecord, RuntimeError> {
        // Under the lock, so that a revocation of all the user's sessions
        // (a password reset) sees this one or comes after it.
        let _guard = hold(&self.identity_locks().sessions);
        self.known_user(user)?;
        let at = now().to_rfc3339();
        let session = SessionRecord {
            id: Uuid::now_v7(),
            user,
            created_at: at.clone(),
            last_used_at: at,
            expires_at_ms,
            ip,
            user_agent,
            revoked: false,
        };
        let entry = RefreshEntry {
            session: session.id,
            spent: false,
        };
        self.commit_durably(vec![
            StateWrite::Put(session_key(session.id), encode(&session)),
            StateWrite::Put(with(user_sessions_prefix(user), session.id), Vec::new()),
            StateWrite::Put(refresh_key(refresh_hash), encode(&entry)),
            StateWrite::Put(with(family_prefix(session.id), refresh_hash), Vec::new()),
        ])?;
        Ok(session)
    }

    pub fn session(&self, id: Uuid) -> Result<Option<SessionRecord>, RuntimeError> {
        self.get_record(&session_key(id))
    }

    /// Writes that revoke `session` (marked, kept for the record) and forget
    /// its tokens: a later presentation of any of them is `Invalid`.
    fn revocation(&self, session: &mut SessionRecord) -> Result<Vec<StateWrite>, RuntimeError> {
        session.revoked = true;
        let prefix = family_prefix(session.id);
        let mut writes = vec![StateWrite::Put(session_key(session.id), encode(&*session))];
        for (hash, _) in self.scan_rest(&prefix)? {
            writes.push(StateWrite::Delete(refresh_key(&hash)));
            writes.push(StateWrite::Delete(with(prefix.clone(), &hash)));
        }
        Ok(writes)
    }

    /// Writes that revoke every session of `user` not revoked yet, expired
    /// ones too. Call under the sessions lock.
    fn session_revocations_of(&self, user: Uuid) -> Result<Vec<StateWrite>, RuntimeError> {
        let mut writes = Vec::new();
        for (id, _) in self.scan_rest(&user_sessions_prefix(user))? {
            let Ok(id) = Uuid::parse_str(&id) else {
                continue;
            };
            if let Some(mut s) = self.session(id)?
                && !s.revoked
            {
                writes.extend(self.revocation(&mut s)?);
            }
        }
        Ok(writes)
    }

    /// Exchanges a refresh token (by hash) for the next one of its family.
    /// Presenting a spent token of a live family revokes the family: one of
    /// the two holders is not the user.
    pub fn rotate_refresh(
        &self,
        presented_hash: &str,
        new_hash: &str,
        ip: Option<String>,
        user_agent: Option<String>,
    ) -> Result<RefreshOutcome, RuntimeError> {
        let _guard = hold(&self.identity_locks().sessions);
        let Some(entry) = self.get_record::<RefreshEntry>(&refresh_key(presented_hash))? else {
            return Ok(RefreshOutcome::Invalid);
        };
        let Some(mut session) = self.session(entry.session)? else {
            return Ok(RefreshOutcome::Invalid);
        };
        let now = now();
        if session.revoked || session.expires_at_ms <= now.0 {
            return Ok(RefreshOutcome::Invalid);
        }
        if entry.spent {
            let writes = self.revocation(&mut session)?;
            self.commit_durably(writes)?;
            tracing::warn!(user = %session.user, session = %session.id, "refresh token reused; session revoked");
            return Ok(RefreshOutcome::Reused(session));
        }
        session.last_used_at = now.to_rfc3339();
        if ip.is_some() {
            session.ip = ip;
        }
        if user_agent.is_some() {
            session.user_agent = user_agent;
        }
        let spent = RefreshEntry {
            session: session.id,
            spent: true,
        };
        let current = RefreshEntry {
            session: session.id,
            spent: false,
        };
        self.commit_durably(vec![
            StateWrite::Put(refresh_key(presented_hash), encode(&spent)),
            StateWrite::Put(refresh_key(new_hash), encode(&current)),
            StateWrite::Put(with(family_prefix(session.id), new_hash), Vec::new()),
            StateWrite::Put(session_key(session.id), encode(&session)),
        ])?;
        Ok(RefreshOutcome::Rotated(session))
    }

    /// The live sessions of `user` (not revoked, not expired), newest first.
    pub fn sessions_of(&self, user: Uuid) -> Result<Vec<SessionRecord>, RuntimeError> {
        let now = now().0;
        let mut live = Vec::new();
        for (id, _) in self
            .scan_rest(&user_sessions_prefix(user))?
            .into_iter()
            .rev()
        {
            let Ok(id) = Uuid::parse_str(&id) else {
                continue;
            };
            if let Some(s) = self.session(id)?
                && !s.revoked
                && s.expires_at_ms > now
            {
                live.push(s);
            }
        }
        Ok(live)
    }

    /// Revokes a session of `user`; `false` when it is unknown, someone
    /// else's, or not live.
    pub fn revoke_session(&self, user: Uuid, session: Uuid) -> Result<bool, RuntimeError> {
        let _guard = hold(&self.identity_locks().sessions);
        let Some(mut record) = self.session(session)? else {
            return Ok(false);
        };
        if record.user != user || record.revoked || record.expires_at_ms <= now().0 {
            return Ok(false);
        }
        let writes = self.revocation(&mut record)?;
        self.commit_durably(writes)?;
        Ok(true)
    }

    /// Revokes every live session of `user` (a password change, "sign out
    /// everywhere"); how many there were.
    pub fn revoke_sessions_of(&self, user: Uuid) -> Result<usize, RuntimeError> {
        let _guard = hold(&self.identity_locks().sessions);
        let now = now().0;
        let mut writes = Vec::new();
        let mut revoked = 0;
        for (id, _) in self.scan_rest(&user_sessions_prefix(user))? {
            let Ok(id) = Uuid::parse_str(&id) else {
                continue;
            };
            if let Some(mut s) = self.session(id)?
                && !s.revoked
                && s.expires_at_ms > now
            {
                writes.extend(self.revocation(&mut s)?);
                revoked += 1;
            }
        }
        if !writes.is_empty() {
            self.commit_durably(writes)?;
        }
        Ok(revoked)
    }

    /// Forgets what can no longer be used: expired one-time tokens, and
    /// sessions past their expiry (revoked ones are kept until then, to be
    /// listed as such) with their refresh tokens. How many records went. The
    /// janitor calls it hourly.
    pub fn prune_identity(&self) -> Result<usize, RuntimeError> {
        const BATCH: usize = 512;
        let now = now().0;
        let mut pruned = 0;
        let mut writes = Vec::new();
        let flush = |writes: &mut Vec<StateWrite>, force: bool| -> Result<(), RuntimeError> {
            if writes.len() >= BATCH || (force && !writes.is_empty()) {
                self.commit_durably(std::mem::take(writes))?;
            }
            Ok(())
        };
        for (rest, value) in self.scan_rest(b"g/ott/")? {
            let Ok(token) = serde_json::from_slice::<OneTime>(&value) else {
                continue;
            };
            if token.expires_at_ms > now {
                continue;
            }
            writes.push(StateWrite::Delete(with(b"g/ott/".to_vec(), &rest)));
            if let Some(user) = token.user {
                // `rest` is `{purpose}/{hash}`, as under the user's index.
                writes.push(StateWrite::Delete(
                    format!("g/ott-user/{user}/{rest}").into_bytes(),
                ));
            }
            pruned += 1;
            flush(&mut writes, false)?;
        }
        flush(&mut writes, true)?;
        let _guard = hold(&self.identity_locks().sessions);
        for session in self.scan_records::<SessionRecord>(b"g/sess/")? {
            if session.expires_at_ms > now {
                continue;
            }
            let family = family_prefix(session.id);
            for (hash, _) in self.scan_rest(&family)? {
                writes.push(StateWrite::Delete(refresh_key(&hash)));
                writes.push(StateWrite::Delete(with(family.clone(), &hash)));
            }
            writes.push(StateWrite::Delete(with(
                user_sessions_prefix(session.user),
                session.id,
            )));
            writes.push(StateWrite::Delete(session_key(session.id)));
            pruned += 1;
            flush(&mut writes, false)?;
        }
        flush(&mut writes, true)?;
        Ok(pruned)
    }

    // ---- organizations and members -------------------------------------------

    /// A new organization owned by `owner`, registered with the catalog (so
    /// ingest and the shards know it). `Conflict` when the slug is taken.
    pub fn create_org(
        &self,
        slug: &str,
        name: &str,
        owner: Uuid,
    ) -> Result<OrgRecord, RuntimeError> {
        let slug = slug.trim();
        crate::catalog::check_slug(slug).map_err(|reason| invalid("/slug", reason))?;
        let _guard = hold(&self.identity_locks().orgs);
        self.known_user(owner)?;
        if self.catalog().org_by_slug(slug).is_some() || self.store().get(&org_key(slug))?.is_some()
        {
            return Err(RuntimeError::Conflict(format!(
                "the organization slug {slug} is taken"
            )));
        }
        let at = now().to_rfc3339();
        let org = OrgRecord {
            id: Uuid::now_v7(),
            slug: slug.to_string(),
            name: name.trim().to_string(),
            created_at: at.clone(),
        };
        let membership = Membership {
            org: org.id,
            user: owner,
            role: Role::Owner,
            joined_at: at,
        };
        self.commit_durably(vec![
            StateWrite::Put(org_key(slug), encode(&org)),
            StateWrite::Put(with(member_prefix(org.id), owner), encode(&membership)),
            StateWrite::Put(with(user_orgs_prefix(owner), org.id), encode(&Role::Owner)),
        ])?;
        self.catalog().put_org(org.clone());
        Ok(org)
    }

    pub fn rename_org(&self, org: Uuid, name: &str) -> Result<OrgRecord, RuntimeError> {
        let _guard = hold(&self.identity_locks().orgs);
        let mut record = self.known_org(org)?;
        record.name = name.trim().to_string();
        self.commit_durably(vec![StateWrite::Put(
            org_key(&record.slug),
            encode(&record),
        )])?;
        self.catalog().update_org(record.clone());
        Ok(record)
    }

    /// The organizations `user` belongs to, with the role, oldest first.
    pub fn orgs_of(&self, user: Uuid) -> Result<Vec<(OrgRecord, Role)>, RuntimeError> {
        let mut orgs = Vec::new();
        for (org, role) in self.scan_rest(&user_orgs_prefix(user))? {
            let Ok(org) = Uuid::parse_str(&org) else {
                continue;
            };
            // An organization being deleted may leave its index behind a
            // moment longer than the catalog entry.
            let Some(record) = self.catalog().org(org) else {
                continue;
            };
            let role: Role = serde_json::from_slice(&role)
                .map_err(|e| RuntimeError::Internal(format!("membership index: {e}")))?;
            orgs.push((record, role));
        }
        Ok(orgs)
    }

    /// `user`'s role in `org`, if a member.
    pub fn membership(&self, org: Uuid, user: Uuid) -> Result<Option<Role>, RuntimeError> {
        Ok(self
            .get_record::<Membership>(&with(member_prefix(org), user))?
            .map(|m| m.role))
    }

    /// The members of `org`, in the order they joined. (Named apart from
    /// [`Runtime::members`], a segment's customers.)
    pub fn org_members(&self, org: Uuid) -> Result<Vec<Membership>, RuntimeError> {
        let mut members: Vec<Membership> = self.scan_records(&member_prefix(org))?;
        members.sort_by(|a, b| a.joined_at.cmp(&b.joined_at).then(a.user.cmp(&b.user)));
        Ok(members)
    }

    fn membership_writes(membership: &Membership) -> Vec<StateWrite> {
        vec![
            StateWrite::Put(
                with(member_prefix(membership.org), membership.user),
                encode(membership),
            ),
            StateWrite::Put(
                with(user_orgs_prefix(membership.user), membership.org),
                encode(&membership.role),
            ),
        ]
    }

    fn owner_count(&self, org: Uuid) -> Result<usize, RuntimeError> {
        Ok(self
            .org_members(org)?
            .iter()
            .filter(|m| m.role == Role::Owner)
            .count())
    }

    /// Adds `user` to `org`; `Conflict` when already a member.
    pub fn add_member(
        &self,
        org: Uuid,
        user: Uuid,
        role: Role,
    ) -> Result<Membership, RuntimeError> {
        let _guard = hold(&self.identity_locks().orgs);
        self.known_org(org)?;
        self.known_user(user)?;
        if self.membership(org, user)?.is_some() {
            return Err(RuntimeError::Conflict(
                "the user is a member of this organization already".into(),
            ));
        }
        let membership = Membership {
            org,
            user,
            role,
            joined_at: now().to_rfc3339(),
        };
        self.commit_durably(Self::membership_writes(&membership))?;
        Ok(membership)
    }

    /// Changes a member's role; the role before and the membership after.
    /// `Conflict` when that would leave the organization without an owner.
    /// (No caller: as [`Self::set_role_by`] an owner.)
    pub fn set_role(
        &self,
        org: Uuid,
        user: Uuid,
        role: Role,
    ) -> Result<(Role, Membership), RuntimeError> {
        self.set_role_by(org, user, role, Role::Owner)
    }

    /// Changes a member's role on behalf of a caller whose role is `by`; the
    /// role before and the membership after. Checked and written under the
    /// orgs lock: `NotFound` if not a member; `Forbidden` when the member is
    /// an owner, or `role` is owner, and `by` is not owner; `Conflict` when
    /// that would leave the organization without an owner.
    pub fn set_role_by(
        &self,
        org: Uuid,
        user: Uuid,
        role: Role,
        by: Role,
    ) -> Result<(Role, Membership), RuntimeError> {
        let _guard = hold(&self.identity_locks().orgs);
        self.known_org(org)?;
        let mut membership = self
            .get_record::<Membership>(&with(member_prefix(org), user))?
            .ok_or_else(|| RuntimeError::NotFound(format!("member {user}")))?;
        let before = membership.role;
        if by != Role::Owner {
            if before == Role::Owner {
                return Err(RuntimeError::Forbidden(
                    "only an owner may change the role of an owner".into(),
                ));
            }
            if role == Role::Owner {
                return Err(RuntimeError::Forbidden(
                    "only an owner may make a member owner".into(),
                ));
            }
        }
        if before == role {
            return Ok((before, membership));
        }
        if before == Role::Owner && self.owner_count(org)? <= 1 {
            return Err(RuntimeError::Conflict(
                "the last owner of an organization cannot be demoted; make another member owner first"
                    .into(),
            ));
        }
        membership.role = role;
        self.commit_durably(Self::membership_writes(&membership))?;
        Ok((before, membership))
    }

    /// Removes `user` from `org`; the membership it had. `Conflict` for the
    /// last owner. (No caller: as [`Self::remove_member_by`] an owner.)
    pub fn remove_member(&self, org: Uuid, user: Uuid) -> Result<Membership, RuntimeError> {
        self.remove_member_by(org, user, Role::Owner)
    }

    /// Removes `user` from `org` on behalf of a caller whose role is `by`;
    /// the membership it had. Checked and written under the orgs lock:
    /// `NotFound` if not a member; `Forbidden` when the member is an owner
    /// and `by` is not owner; `Conflict` for the last owner.
    pub fn remove_member_by(
        &self,
        org: Uuid,
        user: Uuid,
        by: Role,
    ) -> Result<Membership, RuntimeError> {
        let _guard = hold(&self.identity_locks().orgs);
        self.known_org(org)?;
        let membership = self
            .get_record::<Membership>(&with(member_prefix(org), user))?
            .ok_or_else(|| RuntimeError::NotFound(format!("member {user}")))?;
        if membership.role == Role::Owner && by != Role::Owner {
            return Err(RuntimeError::Forbidden(
                "only an owner may remove an owner".into(),
            ));
        }
        if membership.role == Role::Owner && self.owner_count(org)? <= 1 {
            return Err(RuntimeError::Conflict(
                "the last owner of an organization cannot be removed; make another member owner first"
                    .into(),
            ));
        }
        self.commit_durably(vec![
            StateWrite::Delete(with(member_prefix(org), user)),
            StateWrite::Delete(with(user_orgs_prefix(user), org)),
        ])?;
        Ok(membership)
    }

    // ---- invitations -----------------------------------------------------------

    /// Invites `email` to `org`. `Conflict` when a pending, unexpired
    /// invitation for the email exists, or the email's user is a member.
    pub fn create_invitation(
        &self,
        org: Uuid,
        email: &str,
        role: Role,
        invited_by: Uuid,
        token_hash: &str,
        expires_at_ms: i64,
    ) -> Result<Invitation, RuntimeError> {
        let email = normalize_email(email)?;
        let _guard = hold(&self.identity_locks().orgs);
        self.known_org(org)?;
        let now = now();
        if self.invitations(org)?.iter().any(|i| {
            i.email == email && i.status == InvitationStatus::Pending && i.expires_at_ms > now.0
        }) {
            return Err(RuntimeError::Conflict(format!(
                "{email} has a pending invitation to this organization"
            )));
        }
        if let Some(user) = self.user_by_email(&email)?
            && self.membership(org, user.id)?.is_some()
        {
            return Err(RuntimeError::Conflict(format!(
                "{email} is a member of this organization already"
            )));
        }
        let invitation = Invitation {
            id: Uuid::now_v7(),
            org,
            email,
            role,
            invited_by,
            created_at: now.to_rfc3339(),
            expires_at_ms,
            status: InvitationStatus::Pending,
            token_hash: token_hash.to_string(),
        };
        let link = InvitationRef {
            org,
            id: invitation.id,
        };
        self.commit_durably(vec![
            StateWrite::Put(
                with(invitation_prefix(org), invitation.id),
                encode(&invitation),
            ),
            StateWrite::Put(invitation_token_key(token_hash), encode(&link)),
        ])?;
        Ok(invitation)
    }

    /// The invitations of `org`, every status, newest first.
    pub fn invitations(&self, org: Uuid) -> Result<Vec<Invitation>, RuntimeError> {
        let mut all: Vec<Invitation> = self.scan_records(&invitation_prefix(org))?;
        all.reverse();
        Ok(all)
    }

    pub fn invitation(&self, org: Uuid, id: Uuid) -> Result<Option<Invitation>, RuntimeError> {
        self.get_record(&with(invitation_prefix(org), id))
    }

    /// The invitation a link's token (by hash) leads to, whatever its status.
    pub fn invitation_by_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<Invitation>, RuntimeError> {
        let Some(link) = self.get_record::<InvitationRef>(&invitation_token_key(token_hash))?
        else {
            return Ok(None);
        };
        Ok(self
            .invitation(link.org, link.id)?
            .filter(|i| i.token_hash == token_hash))
    }

    /// Accepts the pending invitation a link's token (by hash) leads to, for
    /// `user`. Checked under the orgs lock: the organization still exists,
    /// the invitation is pending, `token_hash` is its current token, it has
    /// not expired at `now_ms`, `user` has the invited email and is not a
    /// member yet. Then one commit: the membership, the invitation marked
    /// accepted, and the token forgotten (the link leads nowhere after).
    /// `NotFound("invitation")` for an unknown or replaced token; `Conflict`
    /// ("the invitation is accepted|declined|cancelled|expired", or already
    /// a member); `Forbidden` when `user` has another email.
    pub fn accept_invitation(
        &self,
        token_hash: &str,
        user: Uuid,
        now_ms: i64,
    ) -> Result<(Invitation, Membership), RuntimeError> {
        let _guard = hold(&self.identity_locks().orgs);
        let mut invitation = self
            .invitation_by_token(token_hash)?
            .ok_or_else(|| RuntimeError::NotFound("invitation".into()))?;
        if self.catalog().org(invitation.org).is_none() {
            return Err(RuntimeError::NotFound("invitation".into()));
        }
        pending_or_conflict(&invitation)?;
        if invitation.expires_at_ms <= now_ms {
            return Err(RuntimeError::Conflict("the invitation is expired".into()));
        }
        let person = self.known_user(user)?;
        if person.email != invitation.email {
            return Err(RuntimeError::Forbidden(
                "this invitation is for another email address".into(),
            ));
        }
        if self.membership(invitation.org, user)?.is_some() {
            return Err(RuntimeError::Conflict(
                "the user is a member of this organization already".into(),
            ));
        }
        let membership = Membership {
            org: invitation.org,
            user,
            role: invitation.role,
            joined_at: now().to_rfc3339(),
        };
        invitation.status = InvitationStatus::Accepted;
        let mut writes = Self::membership_writes(&membership);
        writes.push(StateWrite::Put(
            with(invitation_prefix(invitation.org), invitation.id),
            encode(&invitation),
        ));
        writes.push(StateWrite::Delete(invitation_token_key(token_hash)));
        self.commit_durably(writes)?;
        Ok((invitation, membership))
    }

    /// Moves a pending invitation to `to`, declined or cancelled, and forgets
    /// its token; the invitation after. A compare-and-set under the orgs
    /// lock: `Conflict` unless still pending. A decline by link passes the
    /// link's `token_hash`: `NotFound` unless it is the current token.
    pub fn close_invitation(
        &self,
        org: Uuid,
        id: Uuid,
        token_hash: Option<&str>,
        to: InvitationStatus,
    ) -> Result<Invitation, RuntimeError> {
        if !matches!(to, InvitationStatus::Declined | InvitationStatus::Cancelled) {
            return Err(invalid(
                "/status",
                "an invitation is closed as declined or cancelled",
            ));
        }
        let _guard = hold(&self.identity_locks().orgs);
        self.known_org(org)?;
        let key = with(invitation_prefix(org), id);
        let mut invitation = self
            .get_record::<Invitation>(&key)?
            .ok_or_else(|| RuntimeError::NotFound("invitation".into()))?;
        if token_hash.is_some_and(|h| h != invitation.token_hash) {
            return Err(RuntimeError::NotFound("invitation".into()));
        }
        pending_or_conflict(&invitation)?;
        invitation.status = to;
        self.commit_durably(vec![
            StateWrite::Put(key, encode(&invitation)),
            StateWrite::Delete(invitation_token_key(&invitation.token_hash)),
        ])?;
        Ok(invitation)
    }

    /// Gives a pending invitation a new token and expiry (a resend); the
    /// invitation after. Under the orgs lock, in one commit: the old token
    /// stops leading to it, the new one starts. `Conflict` unless pending,
    /// or when another pending, unexpired invitation for the email exists.
    pub fn renew_invitation(
        &self,
        org: Uuid,
        id: Uuid,
        new_token_hash: &str,
        expires_at_ms: i64,
    ) -> Result<Invitation, RuntimeError> {
        let _guard = hold(&self.identity_locks().orgs);
        self.known_org(org)?;
        let key = with(invitation_prefix(org), id);
        let mut invitation = self
            .get_record::<Invitation>(&key)?
            .ok_or_else(|| RuntimeError::NotFound("invitation".into()))?;
        pending_or_conflict(&invitation)?;
        let now = now().0;
        if self.invitations(org)?.iter().any(|i| {
            i.id != id
                && i.email == invitation.email
                && i.status == InvitationStatus::Pending
                && i.expires_at_ms > now
        }) {
            return Err(RuntimeError::Conflict(format!(
                "{} has another pending invitation to this organization",
                invitation.email
            )));
        }
        let mut writes = Vec::new();
        if invitation.token_hash != new_token_hash {
            writes.push(StateWrite::Delete(invitation_token_key(
                &invitation.token_hash,
            )));
        }
        invitation.token_hash = new_token_hash.to_string();
        invitation.expires_at_ms = expires_at_ms;
        writes.push(StateWrite::Put(key, encode(&invitation)));
        writes.push(StateWrite::Put(
            invitation_token_key(new_token_hash),
            encode(&InvitationRef { org, id }),
        ));
        self.commit_durably(writes)?;
        Ok(invitation)
    }

    // ---- machine keys ------------------------------------------------------------

    /// A new key of `org` and its secret, shown once. API keys need a role,
    /// write keys have none.
    pub fn create_key(
        &self,
        org: Uuid,
        kind: KeyKind,
        name: &str,
        role: Option<Role>,
    ) -> Result<(KeyRecord, String), RuntimeError> {
        match (kind, role) {
            (KeyKind::Api, None) => return Err(invalid("/role", "an API key needs a role")),
            (KeyKind::Write, Some(_)) => {
                return Err(invalid("/role", "a write key has no role"));
            }
            _ => {}
        }
        let _guard = hold(&self.identity_locks().keys);
        self.known_org(org)?;
        let secret = new_secret(secret_prefix(kind))?;
        let record = KeyRecord {
            id: Uuid::now_v7(),
            org,
            kind,
            name: name.trim().to_string(),
            role,
            prefix: secret[..12].to_string(),
            created_at: now().to_rfc3339(),
            rotated_at: None,
        };
        let hash = hash_key(&secret);
        let mut writes = vec![
            StateWrite::Put(with(key_prefix(org), record.id), encode(&record)),
            StateWrite::Put(key_hash_key(org, record.id), encode(&hash)),
        ];
        writes.push(Self::register_secret(&record, &hash)?);
        self.commit_durably(writes)?;
        self.cache_secret(&record, &secret);
        Ok((record, secret))
    }

    /// The write that makes the secret authenticate (`g/wk/` or `g/ak/`).
    fn register_secret(record: &KeyRecord, hash: &str) -> Result<StateWrite, RuntimeError> {
        let value = match record.kind {
            KeyKind::Write => encode(&record.org),
            KeyKind::Api => encode(&api_key_record(record)?),
        };
        Ok(StateWrite::Put(secret_index_key(record.kind, hash), value))
    }

    fn cache_secret(&self, record: &KeyRecord, secret: &str) {
        match record.kind {
            KeyKind::Write => self.catalog().put_write_key(secret, record.org),
            KeyKind::Api => {
                if let Ok(api) = api_key_record(record) {
                    self.catalog().put_api_key(secret, api);
                }
            }
        }
    }

    fn uncache_secret(&self, kind: KeyKind, hash: &str) {
        match kind {
            KeyKind::Write => self.catalog().remove_write_key(hash),
            KeyKind::Api => self.catalog().remove_api_key(hash),
        }
    }

    /// The keys of `org` issued here, oldest first (the bootstrap keys from
    /// the configuration are not among them).
    pub fn keys(&self, org: Uuid) -> Result<Vec<KeyRecord>, RuntimeError> {
        self.scan_records(&key_prefix(org))
    }

    fn key_and_hash(&self, org: Uuid, id: Uuid) -> Result<(KeyRecord, String), RuntimeError> {
        let record = self
            .get_record::<KeyRecord>(&with(key_prefix(org), id))?
            .ok_or_else(|| RuntimeError::NotFound(format!("key {id}")))?;
        let hash = self
            .get_record::<String>(&key_hash_key(org, id))?
            .ok_or_else(|| RuntimeError::Internal(format!("key {id} has no secret hash")))?;
        Ok((record, hash))
    }

    /// A new secret for a key; the old one stops working at once.
    pub fn rotate_key(&self, org: Uuid, id: Uuid) -> Result<(KeyRecord, String), RuntimeError> {
        let _guard = hold(&self.identity_locks().keys);
        self.known_org(org)?;
        let (mut record, old_hash) = self.key_and_hash(org, id)?;
        let secret = new_secret(secret_prefix(record.kind))?;
        let hash = hash_key(&secret);
        record.prefix = secret[..12].to_string();
        record.rotated_at = Some(now().to_rfc3339());
        let mut writes = vec![
            StateWrite::Delete(secret_index_key(record.kind, &old_hash)),
            StateWrite::Put(with(key_prefix(org), id), encode(&record)),
            StateWrite::Put(key_hash_key(org, id), encode(&hash)),
        ];
        writes.push(Self::register_secret(&record, &hash)?);
        self.commit_durably(writes)?;
        self.uncache_secret(record.kind, &old_hash);
        self.cache_secret(&record, &secret);
        Ok((record, secret))
    }

    /// Deletes a key; its secret stops working at once.
    pub fn revoke_key(&self, org: Uuid, id: Uuid) -> Result<KeyRecord, RuntimeError> {
        let _guard = hold(&self.identity_locks().keys);
        let (record, hash) = self.key_and_hash(org, id)?;
        self.commit_durably(vec![
            StateWrite::Delete(secret_index_key(record.kind, &hash)),
            StateWrite::Delete(with(key_prefix(org), id)),
            StateWrite::Delete(key_hash_key(org, id)),
        ])?;
        self.uncache_secret(record.kind, &hash);
        Ok(record)
    }
}

/// `Conflict("the invitation is accepted|declined|cancelled")` unless pending.
fn pending_or_conflict(invitation: &Invitation) -> Result<(), RuntimeError> {
    let status = match invitation.status {
        InvitationStatus::Pending => return Ok(()),
        InvitationStatus::Accepted => "accepted",
        InvitationStatus::Declined => "declined",
        InvitationStatus::Cancelled => "cancelled",
    };
    Err(RuntimeError::Conflict(format!(
        "the invitation is {status}"
    )))
}

/// How an API key authenticates (`g/ak/`): the same record the bootstrap
/// key has, so [`Runtime::principal`] serves both.
fn api_key_record(record: &KeyRecord) -> Result<ApiKeyRecord, RuntimeError> {
    let role = record
        .role
        .ok_or_else(|| RuntimeError::Internal(format!("API key {} has no role", record.id)))?;
    Ok(ApiKeyRecord {
        id: record.id,
        org: record.org,
        role,
        name: record.name.clone(),
        created_at: record.created_at.clone(),
    })
}
