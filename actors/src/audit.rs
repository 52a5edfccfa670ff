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
        let entry = AuditEntry {
            id: Uuid::now_v7(),
            at: now().to_rfc3339(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            summary,
        };
        let mut key = audit_prefix(org);
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
        let prefix = audit_prefix(org);
        let mut after: Option<Vec<u8>> = match cursor {
            Some(c) => {
                let id = Uuid::parse_str(c).map_err(|_| RuntimeError::Invalid {
                    pointer: "/cursor".into(),
                    reason: "not a cursor of this list".into(),
                })?;
                let mut key = prefix.clone();
                key.extend_from_slice(id.to_string().as_bytes());
                Some(key)
            }
            None => None,
        };
        let mut items = Vec::new();
        loop {
            let page = self.store().scan(&prefix, after.as_deref(), 1024)?;
            let Some((last, _)) = page.last() else { break };
            let last = last.clone();
            for (_, value) in page {
                let Ok(entry) = serde_json::from_slice::<AuditEntry>(&value) else {
                    continue;
                };
                if action.is_some_and(|a| a != entry.action) {
                    continue;
                }
                items.push(entry);
                if items.len() > limit {
                    break;
                }
            }
            if items.len() > limit {
                break;
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
}
