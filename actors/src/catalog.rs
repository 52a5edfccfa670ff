//! The catalog: organizations, their keys, segment definitions and webhook
//! endpoints. Durable in the state store (every tenant key starts with
//! `t/{org}/`), cached in memory for the hot paths (authenticating a write
//! key, fanning a membership change out to the endpoints that want it).
//!
//! Key layout:
//! ```text
//! g/org/{slug}                -> OrgRecord          (global: slugs are unique)
//! g/wk/{sha256(key)}          -> org id             (write keys, hashed)
//! g/ak/{sha256(key)}          -> ApiKeyRecord       (API keys, hashed)
//! g/user/{user}               -> UserRecord         (people; see identity.rs)
//! g/email/{email}             -> user id            (lowercase-trimmed: emails are unique)
//! g/oidc/{sha256(issuer, subject)} -> user id       (linked OIDC identities)
//! g/ott/{purpose}/{sha256(token)} -> one-time token (payload and expiry; single use)
//! g/ott-user/{user}/{purpose}/{sha256(token)} -> () (a user's one-time tokens, to void them)
//! g/sess/{session}            -> SessionRecord      (a refresh-token family)
//! g/usess/{user}/{session}    -> ()                 (a user's sessions)
//! g/rt/{sha256(token)}        -> session and spent  (refresh tokens, current and spent)
//! g/sess-rt/{session}/{sha256(token)} -> ()         (a family's tokens, dropped on revocation)
//! g/umem/{user}/{org}         -> Role               (a user's organizations)
//! g/inv/{sha256(token)}       -> org and invitation (invitation links)
//! t/{org}/seg/{segment}       -> SegmentRecord
//! t/{org}/wh/{endpoint}       -> WebhookRecord
//! t/{org}/dl/{endpoint}/{id}  -> DeliveryRecord     (the webhook outbox and its history)
//! t/{org}/field/{name}        -> AttrType           (types segments rely on, declared on every shard)
//! t/{org}/alias/{id}          -> the customer id `id` was merged into
//! t/{org}/fdesc/{name}        -> a field's description
//! t/{org}/sup/{sha256(org, id)} -> Suppression      (an erased customer id, hashed; refused until then)
//! t/{org}/imp/{job}           -> ImportRecord       (CSV import jobs)
//! t/{org}/audit/{uuidv7}      -> AuditEntry         (the activity feed)
//! t/{org}/mem/{user}          -> Membership         (members and their roles)
//! t/{org}/inv/{invitation}    -> Invitation
//! t/{org}/key/{key}           -> KeyRecord          (write and API keys issued by the identity layer)
//! t/{org}/keyhash/{key}       -> sha256 of its secret (to unregister it on rotation or revocation)
//! t/{org}/epoch               -> endpoint epoch     (see OrgState::endpoint_epoch)
//! t/{org}/last/{epoch}/{segment}/{customer} -> last transition (written by the shards)
//! t/{org}/shard/{partition}   -> offset ++ engine snapshot (written by the shards)
//! g/partitions                -> log partition count, fixed at the first start
//! g/deleting/{org}            -> DeletionMark       (an organization deletion under way; see facade/orgs.rs)
//! p/{partition}/snapshot|outboxed|checkpoint/{ms} -> a shard's offsets (node bookkeeping)
//! ```

use std::collections::HashMap;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use xeno_engine::model::AttrType;
use xeno_engine::ports::{PortError, StatePort, StateWrite};

/// An organization (tenant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrgRecord {
    pub id: Uuid,
    pub slug: String,
    /// The display name; empty for organizations created before names
    /// existed (show the slug then).
    #[serde(default)]
    pub name: String,
    pub created_at: String,
}

/// What a member or an API key may do. The bootstrap admin key is an `Owner`
/// key of its organization, the same kind of key the identity layer issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    /// Called `member` before; records written then still read.
    #[serde(alias = "member")]
    Editor,
    Viewer,
}

impl Role {
    /// Owner 3, admin 2, editor 1, viewer 0: a role may do what any lower one
    /// may.
    pub fn rank(self) -> u8 {
        match self {
            Role::Owner => 3,
            Role::Admin => 2,
            Role::Editor => 1,
            Role::Viewer => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub org: Uuid,
    pub role: Role,
    pub name: String,
    pub created_at: String,
}

/// A segment definition. The engine knows it by `engine_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub id: Uuid,
    pub engine_id: u64,
    pub name: String,
    /// The rule in DSL text (the canonical printed form).
    pub rule: String,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
}

/// A customer id erased by a right-to-be-forgotten request: events for it
/// are refused until `until` (ms), and events logged before `until` are never
/// applied again. The id itself is kept only as a hash (see
/// [`suppression_hash`]): the list must not remember whom it forgot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    pub erased_at: i64,
    pub until: i64,
    /// The log partition of the id (a hash cannot be partitioned).
    pub partition: u32,
}

/// How an erased id is remembered: SHA-256 of the organization and the id.
pub fn suppression_hash(org: Uuid, id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digest = Sha256::new();
    digest.update(org.as_bytes());
    digest.update(id.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest.finalize() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// The membership transitions an endpoint can subscribe to.
pub const WEBHOOK_EVENTS: [&str; 2] = ["segment.entered", "segment.exited"];

/// A webhook endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    /// Only these segments; `None` for all.
    pub segments: Option<Vec<Uuid>>,
    pub enabled: bool,
    /// Why the endpoint was disabled, when the server did it (a 410).
    pub disabled_reason: Option<String>,
    pub secret: String,
    /// Secrets replaced by a rotation, still signing until their expiry (ms).
    pub previous_secrets: Vec<(String, i64)>,
    pub created_at: String,
    pub updated_at: String,
}

impl WebhookRecord {
    /// Whether this endpoint wants `event_type` of segment `segment`.
    pub fn wants(&self, event_type: &str, segment: Uuid) -> bool {
        self.enabled
            && self.events.iter().any(|e| e == event_type)
            && self.segments.as_ref().is_none_or(|s| s.contains(&segment))
    }

    /// The secrets to sign with at `now_ms`: the current one first.
    pub fn signing_secrets(&self, now_ms: i64) -> Vec<String> {
        std::iter::once(self.secret.clone())
            .chain(
                self.previous_secrets
                    .iter()
                    .filter(|(_, until)| *until > now_ms)
                    .map(|(s, _)| s.clone()),
            )
            .collect()
    }
}

pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn org_key(slug: &str) -> Vec<u8> {
    format!("g/org/{slug}").into_bytes()
}
pub fn write_key_key(key: &str) -> Vec<u8> {
    format!("g/wk/{}", hash_key(key)).into_bytes()
}
pub fn api_key_key(key: &str) -> Vec<u8> {
    format!("g/ak/{}", hash_key(key)).into_bytes()
}
pub fn segment_key(org: Uuid, id: Uuid) -> Vec<u8> {
    format!("t/{org}/seg/{id}").into_bytes()
}
pub fn webhook_key(org: Uuid, id: Uuid) -> Vec<u8> {
    format!("t/{org}/wh/{id}").into_bytes()
}
pub fn delivery_prefix(org: Uuid, endpoint: Uuid) -> Vec<u8> {
    format!("t/{org}/dl/{endpoint}/").into_bytes()
}
pub fn delivery_key(org: Uuid, endpoint: Uuid, id: &str) -> Vec<u8> {
    format!("t/{org}/dl/{endpoint}/{id}").into_bytes()
}
pub fn field_key(org: Uuid, name: &str) -> Vec<u8> {
    format!("t/{org}/field/{name}").into_bytes()
}
pub fn alias_key(org: Uuid, from: &str) -> Vec<u8> {
    format!("t/{org}/alias/{from}").into_bytes()
}
pub fn field_description_key(org: Uuid, name: &str) -> Vec<u8> {
    format!("t/{org}/fdesc/{name}").into_bytes()
}
/// The key of a suppression, by [`suppression_hash`].
pub fn suppression_key(org: Uuid, hash: &str) -> Vec<u8> {
    format!("t/{org}/sup/{hash}").into_bytes()
}
pub fn import_key(org: Uuid, job: Uuid) -> Vec<u8> {
    format!("t/{org}/imp/{job}").into_bytes()
}
pub fn audit_prefix(org: Uuid) -> Vec<u8> {
    format!("t/{org}/audit/").into_bytes()
}
pub fn epoch_key(org: Uuid) -> Vec<u8> {
    format!("t/{org}/epoch").into_bytes()
}
pub fn shard_key(org: Uuid, partition: u32) -> Vec<u8> {
    format!("t/{org}/shard/{partition:08}").into_bytes()
}

/// Whether `slug` can name an organization (it appears in every path of the
/// organization's API): 1 to 64 of a-z, 0-9 and -.
pub fn check_slug(slug: &str) -> Result<(), &'static str> {
    let valid = !slug.is_empty()
        && slug.len() <= 64
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err("an organization slug is 1 to 64 of a-z, 0-9 and -")
    }
}

/// One organization in memory.
#[derive(Debug, Clone)]
pub struct OrgState {
    pub record: OrgRecord,
    pub segments: HashMap<Uuid, SegmentRecord>,
    pub by_engine_id: HashMap<u64, Uuid>,
    pub webhooks: HashMap<Uuid, WebhookRecord>,
    /// Attribute types segments rely on, declared on every shard of the tenant
    /// (each shard infers types from its own customers' data otherwise).
    pub fields: HashMap<String, AttrType>,
    /// Merged profiles: customer id -> the id it was merged into (always a
    /// root: the target is not itself merged).
    pub aliases: HashMap<String, String>,
    /// Descriptions of fields, by name.
    pub descriptions: HashMap<String, String>,
    /// Erased customer ids, by [`suppression_hash`] (see [`Suppression`]).
    pub suppressed: HashMap<String, Suppression>,
    /// Bumped whenever the organization gets its first webhook endpoint:
    /// last-transition markers are kept per epoch, so markers left from a
    /// time the organization had endpoints are never read again after a time
    /// it had none.
    pub endpoint_epoch: u64,
}

#[derive(Debug, Default)]
struct State {
    orgs: HashMap<Uuid, OrgState>,
    by_slug: HashMap<String, Uuid>,
    write_keys: HashMap<String, Uuid>,
    api_keys: HashMap<String, ApiKeyRecord>,
}

/// The in-memory catalog. Writers persist first, then update it.
#[derive(Debug, Default)]
pub struct Catalog {
    state: RwLock<State>,
    /// Held across a read-modify-write of a record and its commit, so two
    /// writers (a rotation and a 410 disable) cannot lose each other's change.
    modify: std::sync::Mutex<()>,
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T, PortError> {
    serde_json::from_slice(bytes).map_err(|e| {
        PortError::permanent(format!(
            "catalog record {} does not decode: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("catalog records serialise")
}

type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), PortError> + 'a;

/// Visits every pair whose key starts with `prefix`, a page at a time (the
/// visitor may delete what it has seen).
pub fn scan_all(
    store: &dyn StatePort,
    prefix: &[u8],
    visit: &mut Visit<'_>,
) -> Result<(), PortError> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan(prefix, after.as_deref(), 1024)?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        let last = last.clone();
        for (k, v) in &page {
            visit(k, v)?;
        }
        after = Some(last);
    }
}

/// Every record under `prefix`, by the rest of its key (a field name, a
/// customer id, a hash).
fn load_named<T: for<'de> Deserialize<'de>>(
    store: &dyn StatePort,
    prefix: &str,
) -> Result<HashMap<String, T>, PortError> {
    let mut named = HashMap::new();
    scan_all(store, prefix.as_bytes(), &mut |k, v| {
        let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        named.insert(name, decode(k, v)?);
        Ok(())
    })?;
    Ok(named)
}

impl Catalog {
    /// Loads everything but deliveries and snapshots from `store`.
    pub fn load(store: &dyn StatePort) -> Result<Catalog, PortError> {
        let mut state = State::default();
        scan_all(store, b"g/org/", &mut |k, v| {
            let record: OrgRecord = decode(k, v)?;
            state.by_slug.insert(record.slug.clone(), record.id);
            state.orgs.insert(
                record.id,
                OrgState {
                    record,
                    segments: HashMap::new(),
                    by_engine_id: HashMap::new(),
                    webhooks: HashMap::new(),
                    fields: HashMap::new(),
                    aliases: HashMap::new(),
                    descriptions: HashMap::new(),
                    suppressed: HashMap::new(),
                    endpoint_epoch: 0,
                },
            );
            Ok(())
        })?;
        scan_all(store, b"g/wk/", &mut |k, v| {
            let org: Uuid = decode(k, v)?;
            let hash = String::from_utf8_lossy(&k[5..]).into_owned();
            state.write_keys.insert(hash, org);
            Ok(())
        })?;
        scan_all(store, b"g/ak/", &mut |k, v| {
            let record: ApiKeyRecord = decode(k, v)?;
            let hash = String::from_utf8_lossy(&k[5..]).into_owned();
            state.api_keys.insert(hash, record);
            Ok(())
        })?;
        for (id, org) in state.orgs.iter_mut() {
            scan_all(store, format!("t/{id}/seg/").as_bytes(), &mut |k, v| {
                let record: SegmentRecord = decode(k, v)?;
                org.by_engine_id.insert(record.engine_id, record.id);
                org.segments.insert(record.id, record);
                Ok(())
            })?;
            org.fields = load_named(store, &format!("t/{id}/field/"))?;
            org.aliases = load_named(store, &format!("t/{id}/alias/"))?;
            org.descriptions = load_named(store, &format!("t/{id}/fdesc/"))?;
            org.suppressed = load_named(store, &format!("t/{id}/sup/"))?;
            // Chains (a merged into b, b later into c) resolve to their root;
            // a link that would close a cycle is dropped.
            let direct = org.aliases.clone();
            let mut cyclic = Vec::new();
            for (from, target) in org.aliases.iter_mut() {
                let mut hops = 0;
                while let Some(next) = direct.get(target.as_str()) {
                    hops += 1;
                    if hops > 64 || next == from {
                        cyclic.push(from.clone());
                        break;
                    }
                    *target = next.clone();
                }
                if target == from {
                    cyclic.push(from.clone());
                }
            }
            for from in cyclic {
                org.aliases.remove(&from);
            }
            if let Some(bytes) = store.get(format!("t/{id}/epoch").as_bytes())? {
                org.endpoint_epoch = decode(b"epoch", &bytes)?;
            }
            scan_all(store, format!("t/{id}/wh/").as_bytes(), &mut |k, v| {
                let record: WebhookRecord = decode(k, v)?;
                org.webhooks.insert(record.id, record);
                Ok(())
            })?;
        }
        Ok(Catalog {
            state: RwLock::new(state),
            modify: std::sync::Mutex::new(()),
        })
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.write().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn org_ids(&self) -> Vec<Uuid> {
        self.read(|s| s.orgs.keys().copied().collect())
    }

    pub fn org_by_slug(&self, slug: &str) -> Option<OrgRecord> {
        self.read(|s| {
            s.by_slug
                .get(slug)
                .and_then(|id| s.orgs.get(id))
                .map(|o| o.record.clone())
        })
    }

    pub fn org(&self, id: Uuid) -> Option<OrgRecord> {
        self.read(|s| s.orgs.get(&id).map(|o| o.record.clone()))
    }

    pub fn org_for_write_key(&self, key: &str) -> Option<Uuid> {
        let hash = hash_key(key);
        self.read(|s| s.write_keys.get(&hash).copied())
    }

    pub fn api_key(&self, key: &str) -> Option<ApiKeyRecord> {
        let hash = hash_key(key);
        self.read(|s| s.api_keys.get(&hash).cloned())
    }

    /// Runs `f` on an organization's in-memory state.
    pub fn with_org<R>(&self, org: Uuid, f: impl FnOnce(&OrgState) -> R) -> Option<R> {
        self.read(|s| s.orgs.get(&org).map(f))
    }

    pub fn put_org(&self, record: OrgRecord) {
        self.write(|s| {
            s.by_slug.insert(record.slug.clone(), record.id);
            s.orgs.entry(record.id).or_insert(OrgState {
                record,
                segments: HashMap::new(),
                by_engine_id: HashMap::new(),
                webhooks: HashMap::new(),
                fields: HashMap::new(),
                aliases: HashMap::new(),
                descriptions: HashMap::new(),
                suppressed: HashMap::new(),
                endpoint_epoch: 0,
            });
        })
    }

    /// Forgets an organization (it is being deleted): its state, its slug (if
    /// the slug still names it), and every write key and API key of it.
    /// Answers the record it had.
    pub fn remove_org(&self, org: Uuid) -> Option<OrgRecord> {
        self.write(|s| {
            let removed = s.orgs.remove(&org).map(|o| o.record);
            s.by_slug.retain(|_, id| *id != org);
            s.write_keys.retain(|_, id| *id != org);
            s.api_keys.retain(|_, record| record.org != org);
            removed
        })
    }

    /// Whether any profile of `org` was merged (a fast path for the hot loops).
    pub fn has_aliases(&self, org: Uuid) -> bool {
        self.read(|s| s.orgs.get(&org).is_some_and(|o| !o.aliases.is_empty()))
    }

    /// The profile `customer` was merged into, if it was.
    pub fn alias_of(&self, org: Uuid, customer: &str) -> Option<String> {
        self.read(|s| s.orgs.get(&org)?.aliases.get(customer).cloned())
    }

    /// Records merges `from -> into` (`into` already resolved to a root).
    /// Profiles merged into `from` earlier now point at `into` too.
    pub fn put_aliases(&self, org: Uuid, merges: &[(String, String)]) {
        self.write(|s| {
            if let Some(o) = s.orgs.get_mut(&org) {
                for (from, into) in merges {
                    // Never a self-link or a cycle (from is not a root's ancestor).
                    if from == into || o.aliases.get(into).is_some_and(|root| root == from) {
                        continue;
                    }
                    for target in o.aliases.values_mut() {
                        if target == from {
                            *target = into.clone();
                        }
                    }
                    o.aliases.insert(from.clone(), into.clone());
                }
            }
        })
    }

    /// Every merge of `org`.
    pub fn aliases(&self, org: Uuid) -> Vec<(String, String)> {
        self.read(|s| {
            s.orgs
                .get(&org)
                .map(|o| {
                    o.aliases
                        .iter()
                        .map(|(a, b)| (a.clone(), b.clone()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Whether `org` has erased customers (a fast path for the hot loops).
    pub fn has_suppressions(&self, org: Uuid) -> bool {
        self.read(|s| s.orgs.get(&org).is_some_and(|o| !o.suppressed.is_empty()))
    }

    /// The suppression of an erased customer id, if any (expired ones too:
    /// events logged before `until` stay unapplied).
    pub fn suppression(&self, org: Uuid, customer: &str) -> Option<Suppression> {
        let hash = suppression_hash(org, customer);
        self.read(|s| s.orgs.get(&org)?.suppressed.get(&hash).copied())
    }

    /// Records suppressions, by [`suppression_hash`].
    pub fn put_suppressions(&self, org: Uuid, suppressions: &[(String, Suppression)]) {
        self.write(|s| {
            if let Some(o) = s.orgs.get_mut(&org) {
                for (hash, record) in suppressions {
                    o.suppressed.insert(hash.clone(), *record);
                }
            }
        })
    }

    /// Forgets suppressions, by [`suppression_hash`].
    pub fn remove_suppressions(&self, org: Uuid, hashes: &[String]) {
        self.write(|s| {
            if let Some(o) = s.orgs.get_mut(&org) {
                for hash in hashes {
                    o.suppressed.remove(hash);
                }
            }
        })
    }

    /// Forgets the links of the given merged ids.
    pub fn remove_aliases(&self, org: Uuid, ids: &[String]) {
        self.write(|s| {
            if let Some(o) = s.orgs.get_mut(&org) {
                for id in ids {
                    o.aliases.remove(id);
                }
            }
        })
    }

    pub fn put_description(&self, org: Uuid, name: &str, text: Option<String>) {
        self.write(|s| {
            if let Some(o) = s.orgs.get_mut(&org) {
                match text {
                    Some(t) => o.descriptions.insert(name.to_string(), t),
                    None => o.descriptions.remove(name),
                };
            }
        })
    }

    pub fn put_fields(&self, org: Uuid, fields: &[(String, AttrType)]) {
        self.write(|s| {
            if let Some(o) = s.orgs.get_mut(&org) {
                for (name, ty) in fields {
                    o.fields.insert(name.clone(), *ty);
                }
            }
        })
    }

    pub fn put_write_key(&self, key: &str, org: Uuid) {
        let hash = hash_key(key);
        self.write(|s| s.write_keys.insert(hash, org));
    }

    pub fn put_api_key(&self, key: &str, record: ApiKeyRecord) {
        let hash = hash_key(key);
        self.write(|s| s.api_keys.insert(hash, record));
    }

    /// Forgets a write key, by the [`hash_key`] of its secret.
    pub fn remove_write_key(&self, hash: &str) {
        self.write(|s| s.write_keys.remove(hash));
    }

    /// Forgets an API key, by the [`hash_key`] of its secret.
    pub fn remove_api_key(&self, hash: &str) {
        self.write(|s| s.api_keys.remove(hash));
    }

    /// Replaces the record of a known organization (a rename); its slug is
    /// fixed.
    pub fn update_org(&self, record: OrgRecord) {
        self.write(|s| {
            if let Some(o) = s.orgs.get_mut(&record.id) {
                debug_assert_eq!(o.record.slug, record.slug);
                o.record = record;
            }
        })
    }

    pub fn put_segment(&self, org: Uuid, record: SegmentRecord) {
        self.write(|s| {
            if let Some(o) = s.orgs.get_mut(&org) {
                o.by_engine_id.insert(record.engine_id, record.id);
                o.segments.insert(record.id, record);
            }
        })
    }

    pub fn remove_segment(&self, org: Uuid, id: Uuid) {
        self.write(|s| {
            if let Some(o) = s.orgs.get_mut(&org)
                && let Some(record) = o.segments.remove(&id)
            {
                o.by_engine_id.remove(&record.engine_id);
            }
        })
    }

    pub fn set_endpoint_epoch(&self, org: Uuid, epoch: u64) {
        self.write(|s| {
            if let Some(o) = s.orgs.get_mut(&org) {
                o.endpoint_epoch = epoch;
            }
        })
    }

    pub fn put_webhook(&self, org: Uuid, record: WebhookRecord) {
        self.write(|s| {
            if let Some(o) = s.orgs.get_mut(&org) {
                o.webhooks.insert(record.id, record);
            }
        })
    }

    pub fn remove_webhook(&self, org: Uuid, id: Uuid) {
        self.write(|s| {
            if let Some(o) = s.orgs.get_mut(&org) {
                o.webhooks.remove(&id);
            }
        })
    }

    pub fn webhook(&self, org: Uuid, id: Uuid) -> Option<WebhookRecord> {
        self.with_org(org, |o| o.webhooks.get(&id).cloned())
            .flatten()
    }

    /// Changes a webhook endpoint atomically with respect to other changes:
    /// `change` sees the current record and says whether it changed it; the
    /// record is then committed and cached. `None` when there is no such
    /// endpoint.
    pub fn modify_webhook<E: From<PortError>>(
        &self,
        store: &dyn StatePort,
        org: Uuid,
        id: Uuid,
        change: impl FnOnce(&mut WebhookRecord) -> Result<bool, E>,
    ) -> Result<Option<WebhookRecord>, E> {
        let _guard = self.modify.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut record) = self.webhook(org, id) else {
            return Ok(None);
        };
        if change(&mut record)? {
            let write = StateWrite::Put(webhook_key(org, id), encode(&record));
            store.commit(vec![write], true)?;
            self.put_webhook(org, record.clone());
        }
        Ok(Some(record))
    }

    /// Deletes an endpoint under the same lock as [`Self::modify_webhook`], so
    /// a concurrent change cannot write it back. Whether it existed.
    pub fn delete_webhook(
        &self,
        store: &dyn StatePort,
        org: Uuid,
        id: Uuid,
    ) -> Result<bool, PortError> {
        let _guard = self.modify.lock().unwrap_or_else(|p| p.into_inner());
        if self.webhook(org, id).is_none() {
            return Ok(false);
        }
        store.commit(vec![StateWrite::Delete(webhook_key(org, id))], true)?;
        self.remove_webhook(org, id);
        Ok(true)
    }

    /// Writes `writes` durably, then applies `then` to memory.
    pub fn commit(
        &self,
        store: &dyn StatePort,
        writes: Vec<StateWrite>,
        then: impl FnOnce(&Catalog),
    ) -> Result<(), PortError> {
        store.commit(writes, true)?;
        then(self);
        Ok(())
    }
}
