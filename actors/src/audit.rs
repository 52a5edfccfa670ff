//! The activity feed: one entry per change that matters to an organization
//! (an import's summary, an erasure, a field type change, an export),
//! oldest first, as it happened.
//! Entries are keyed by a UUIDv7 under the tenant (`t/{org}/audit/{id}`), so
//! the key order is time order and a page is one range scan.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use uuid::Uuid;
use xeno_engine::ports::StateWrite;

use crate::catalog::{audit_prefix, encode};
use crate::clock::now;
use crate::facade::{Page, Runtime, RuntimeError};

/// One entry of the activity feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: String,
    /// Who: `key:{api key id}`, or `system`.
    pub actor: String,
    /// What, e.g. `import.completed`, `customer.erased`, `field.changed`.
    pub action: String,
    /// What it was done to, e.g. `import:{id}`, `customer:{id}`.
    pub target: String,
    /// A short summary of the outcome.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub summary: Json,
    /// The caller's address, when the entry records an API call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The caller's user agent, when the entry records an API call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// What a caller records; the id and time are added on append.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditInput {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub summary: Json,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Which entries a query wants; every given filter must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// An action, or a prefix ending in `.` (`key.` = every key action).
    pub action: Option<String>,
    pub target: Option<String>,
    /// Entries at or after this instant (ms).
    pub from_ms: Option<i64>,
    /// Entries before this instant (ms).
    pub to_ms: Option<i64>,
}

impl AuditFilter {
    fn matches(&self, entry: &AuditEntry) -> bool {
        self.actor.as_ref().is_none_or(|a| *a == entry.actor)
            && self.action.as_ref().is_none_or(|a| {
                if a.ends_with('.') {
                    entry.action.starts_with(a.as_str())
                } else {
                    *a == entry.action
                }
            })
            && self.target.as_ref().is_none_or(|t| *t == entry.target)
    }
}

/// The smallest UUIDv7 of instant `ms`: entries are keyed by UUIDv7, so a time
/// bound is a key bound.
fn v7_floor(ms: i64) -> Uuid {
    let ms = ms.clamp(0, (1 << 48) - 1) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

/// Where the security events of one user (logins, failed logins, password
/// resets, sessions) are kept: they belong to no organization.
fn security_prefix(user: Option<Uuid>) -> Vec<u8> {
    match user {
        Some(u) => format!("g/sec/{u}/").into_bytes(),
        None => b"g/sec/anonymous/".to_vec(),
    }
}

impl Runtime {
    /// Appends an entry to `org`'s activity feed (durably).
    pub fn audit(
        &self,
        org: Uuid,
        actor: &str,
        action: &str,
        target: &str,
        summary: Json,
    ) -> Result<AuditEntry, RuntimeError> {
        self.audit_with(
            org,
            AuditInput {
                actor: actor.to_string(),
                action: action.to_string(),
                target: target.to_string(),
                summary,
                ip: None,
                user_agent: None,
            },
        )
    }

    /// Appends an entry to `org`'s activity feed (durably).
    pub fn audit_with(&self, org: Uuid, input: AuditInput) -> Result<AuditEntry, RuntimeError> {
        self.append_entry(audit_prefix(org), input)
    }

    /// Appends a security event of a user (or of no known user: a failed
    /// login for an unknown email).
    pub fn security_event(
        &self,
        user: Option<Uuid>,
        input: AuditInput,
    ) -> Result<AuditEntry, RuntimeError> {
        self.append_entry(security_prefix(user), input)
    }

    fn append_entry(&self, prefix: Vec<u8>, input: AuditInput) -> Result<AuditEntry, RuntimeError> {
        let entry = AuditEntry {
            id: Uuid::now_v7(),
            at: now().to_rfc3339(),
            actor: input.actor,
            action: input.action,
            target: input.target,
            summary: input.summary,
            ip: input.ip,
            user_agent: input.user_agent,
        };
        let mut key = prefix;
        key.extend_from_slice(entry.id.to_string().as_bytes());
        self.store()
            .commit(vec![StateWrite::Put(key, encode(&entry))], true)?;
        Ok(entry)
    }

    /// Entries of `org`, oldest first, optionally only those of `action`,
    /// `limit` at a time after `cursor` (an entry id).
    pub fn audit_log(
        &self,
        org: Uuid,
        action: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<AuditEntry>, RuntimeError> {
        let filter = AuditFilter {
            action: action.map(str::to_string),
            ..AuditFilter::default()
        };
        self.audit_query(org, &filter, cursor, limit)
    }

    /// Entries of `org` that match `filter`, oldest first, `limit` at a time
    /// after `cursor` (an entry id).
    pub fn audit_query(
        &self,
        org: Uuid,
        filter: &AuditFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<AuditEntry>, RuntimeError> {
        self.query_entries(audit_prefix(org), filter, cursor, limit)
    }

    /// Security events of `user`, oldest first.
    pub fn security_events(
        &self,
        user: Uuid,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<AuditEntry>, RuntimeError> {
        self.query_entries(
            security_prefix(Some(user)),
            &AuditFilter::default(),
            cursor,
            limit,
        )
    }

    fn query_entries(
        &self,
        prefix: Vec<u8>,
        filter: &AuditFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<AuditEntry>, RuntimeError> {
        let key_of = |id: Uuid| {
            let mut key = prefix.clone();
            key.extend_from_slice(id.to_string().as_bytes());
            key
        };
        let mut after: Option<Vec<u8>> = match cursor {
            Some(c) => {
                let id = Uuid::parse_str(c).map_err(|_| RuntimeError::Invalid {
                    pointer: "/cursor".into(),
                    reason: "not a cursor of this list".into(),
                })?;
                Some(key_of(id))
            }
            None => None,
        };
        if let Some(from) = filter.from_ms {
            // Start just before the first possible key of `from`.
            let floor = key_of(v7_floor(from));
            let before_floor = {
                let mut k = floor.clone();
                k.pop();
                k
            };
            if after.as_ref().is_none_or(|a| *a < floor) {
                after = Some(before_floor);
            }
        }
        let end = filter.to_ms.map(|to| key_of(v7_floor(to)));
        let mut items = Vec::new();
        'scan: loop {
            let page = self.store().scan(&prefix, after.as_deref(), 1024)?;
            let Some((last, _)) = page.last() else { break };
            let last = last.clone();
            for (key, value) in page {
                if end.as_ref().is_some_and(|e| key >= *e) {
                    break 'scan;
                }
                let Ok(entry) = serde_json::from_slice::<AuditEntry>(&value) else {
                    continue;
                };
                if !filter.matches(&entry) {
                    continue;
                }
                items.push(entry);
                if items.len() > limit {
                    break 'scan;
                }
            }
            after = Some(last);
        }
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|e| e.id.to_string())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Deletes audit entries and security events older than `before_ms`
    /// (retention); returns how many went.
    pub fn prune_audit(&self, before_ms: i64) -> Result<usize, RuntimeError> {
        let bound = v7_floor(before_ms).to_string();
        let mut prefixes: Vec<Vec<u8>> = self
            .catalog()
            .org_ids()
            .into_iter()
            .map(audit_prefix)
            .collect();
        let mut users = std::collections::BTreeSet::new();
        crate::catalog::scan_all(&**self.store(), b"g/sec/", &mut |k, _| {
            if let Some(user) = k[6..].split(|b| *b == b'/').next() {
                users.insert(user.to_vec());
            }
            Ok(())
        })?;
        for user in users {
            let mut p = b"g/sec/".to_vec();
            p.extend_from_slice(&user);
            p.push(b'/');
            prefixes.push(p);
        }
        let mut deleted = 0;
        for prefix in prefixes {
            // Keys are time-ordered: stop at the first one not older.
            let mut bound_key = prefix.clone();
            bound_key.extend_from_slice(bound.as_bytes());
            loop {
                let page = self.store().scan(&prefix, None, 1024)?;
                let doomed: Vec<StateWrite> = page
                    .into_iter()
                    .take_while(|(k, _)| *k < bound_key)
                    .map(|(k, _)| StateWrite::Delete(k))
                    .collect();
                if doomed.is_empty() {
                    break;
                }
                deleted += doomed.len();
                self.store().commit(doomed, false)?;
            }
        }
        Ok(deleted)
    }
}
