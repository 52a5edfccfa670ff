//! Deleting an organization: every piece of its data, durably, in an order a
//! crash cannot break.
//!
//! ```text
//! 1. mark      g/deleting/{org} written and g/org/{slug} deleted, in one durable
//!              commit: no request reaches the organization any more, the slug
//!              is free, and a restart knows to finish the deletion
//! 2. memory    the catalog forgets it (its keys stop authenticating); its
//!              dispatchers stop; its import jobs are cancelled and waited for
//! 3. shards    each shard drops the tenant's state and snapshot and skips (and
//!              tombstones) any record of it met later
//! 4. log       every record of it in every partition becomes a tombstone
//! 5. files     its import folders under the import directory go
//! 6. store     every key under t/{org}/ but the audit entries to keep, and its
//!              global keys (write keys, API keys, memberships, invitations)
//! 7. unmark    g/deleting/{org} deleted
//! ```
//!
//! A deletion that stopped anywhere after step 1 is finished by calling
//! [`Runtime::delete_org`] again or, at the latest, by the next
//! [`Runtime::start`] (before the shards recover, so they never see it).

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use super::*;
use crate::catalog::{audit_prefix, scan_all};
use crate::import::job_dir;
use crate::record::{ERASED, read_range};
use crate::shard::DropTenant;

/// What deleting an organization removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrgDeleted {
    pub id: Uuid,
    pub slug: String,
    /// Customers the shards held.
    pub customers: u64,
    /// Log records overwritten with tombstones.
    pub records_tombstoned: u64,
    /// Store keys deleted: the organization's (`t/{org}/...`) and its global
    /// ones (slug, write and API keys, memberships, invitations).
    pub keys_deleted: u64,
    /// Import job folders deleted under the import directory.
    pub import_folders_deleted: u64,
}

/// The durable mark of a deletion under way, at [`deletion_mark_key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeletionMark {
    pub org: Uuid,
    pub slug: String,
    /// Audit entries (`t/{org}/audit/{id}`) that survive the deletion: the
    /// record of the deletion itself.
    #[serde(default)]
    pub keep: Vec<Uuid>,
    pub started_at: String,
}

const MARK_PREFIX: &str = "g/deleting/";

/// `g/deleting/{org}`: present while the deletion of `org` is under way.
pub fn deletion_mark_key(org: Uuid) -> Vec<u8> {
    format!("{MARK_PREFIX}{org}").into_bytes()
}

/// Store keys deleted per commit.
const DELETE_BATCH: usize = 1024;
/// Tombstones written per overwrite.
const TOMBSTONE_BATCH: usize = 4096;
/// How long a deletion waits for the organization's import jobs to stop.
const IMPORT_STOP_WAIT: Duration = Duration::from_secs(120);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::Internal(e.to_string()))?
}

impl Runtime {
    /// Deletes the organization `org` and everything of it: customers and
    /// their state on every shard, its logged events (overwritten with
    /// tombstones), segments, webhook endpoints and their deliveries, fields,
    /// aliases, suppressions, import jobs (cancelled) and their files, keys,
    /// memberships, invitations and its activity feed, except the entry
    /// `keep` (the record of this deletion, written by the caller first). Its
    /// slug is free again once this returns.
    ///
    /// Durable and resumable: once the deletion is marked, a call that fails
    /// or a crash is finished by calling again or by the next start.
    /// `NotFound` when there is no such organization and no deletion of it
    /// under way.
    pub async fn delete_org(
        &self,
        org: Uuid,
        keep: Option<Uuid>,
    ) -> Result<OrgDeleted, RuntimeError> {
        // In a task of its own: a client that hangs up cannot stop it half way.
        let this = self.clone();
        tokio::spawn(async move { this.delete_org_now(org, keep).await })
            .await
            .map_err(|e| RuntimeError::Internal(e.to_string()))?
    }

    async fn delete_org_now(
        &self,
        org: Uuid,
        keep: Option<Uuid>,
    ) -> Result<OrgDeleted, RuntimeError> {
        // No segment or field change of it runs meanwhile, and none starts
        // after: the organization is out of the catalog when this is released.
        let _segments = self.inner.segment_lock.lock().await;
        let (store, catalog) = (self.inner.ports.store.clone(), self.inner.catalog.clone());
        // 1. The mark.
        let mark = blocking(move || Ok(mark_deletion(&*store, &catalog, org, keep)?))
            .await?
            .ok_or_else(|| RuntimeError::NotFound("organization".into()))?;
        // 2. Out of memory: its keys stop authenticating, its endpoints stop.
        let store = self.inner.ports.store.clone();
        let mut endpoints: HashSet<Uuid> =
            blocking(move || Ok(stored_endpoints(&*store, org)?)).await?;
        let engine_ids: Vec<u64> = self
            .inner
            .catalog
            .with_org(org, |o| {
                endpoints.extend(o.webhooks.keys().copied());
                o.by_engine_id.keys().copied().collect()
            })
            .unwrap_or_default();
        self.inner.catalog.remove_org(org);
        // A request that decided new profile links before the removal has
        // recorded them when this lock is free; later ones find no
        // organization.
        drop(self.inner.alias_lock.lock().await);
        // Likewise for changes of its members, invitations and keys.
        let this = self.clone();
        blocking(move || {
            this.identity_barrier();
            Ok(())
        })
        .await?;
        for endpoint in endpoints {
            if let Some(addr) = self.inner.registry.remove_dispatcher(endpoint) {
                let _ = addr.send(StopDispatcher).await;
            }
        }
        self.stop_imports(org).await?;
        // 3. The shards, all at once.
        let mut answers = Vec::with_capacity(self.inner.shards.len());
        for shard in &self.inner.shards {
            let (done, answer) = tokio::sync::oneshot::channel();
            shard.send(DropTenant { org, done }).await?;
            answers.push(answer);
        }
        let mut customers = 0;
        for answer in answers {
            customers += answer.await.map_err(|_| {
                RuntimeError::Internal("a shard stopped during the deletion".into())
            })??;
        }
        for engine_id in engine_ids {
            self.inner.registry.forget_segment(org, engine_id);
        }
        // 4-7. The log, the files, the store, the mark.
        let (log, store, dir) = (
            self.inner.ports.log.clone(),
            self.inner.ports.store.clone(),
            self.inner.settings.import_dir.clone(),
        );
        let marked = mark.clone();
        let mut deleted =
            blocking(move || Ok(finish_deletion(&*log, &*store, &dir, &marked)?)).await?;
        deleted.customers = customers;
        metrics::counter!("xeno_orgs_deleted_total").increment(1);
        tracing::info!(
            org = %org,
            slug = %deleted.slug,
            customers,
            records = deleted.records_tombstoned,
            keys = deleted.keys_deleted,
            "organization deleted"
        );
        Ok(deleted)
    }

    /// Cancels the import jobs of `org` this process runs and waits until
    /// they stopped (a job writes its record and an audit entry as it ends).
    async fn stop_imports(&self, org: Uuid) -> Result<(), RuntimeError> {
        let live = || -> Vec<Arc<crate::import::JobHandle>> {
            self.inner
                .imports
                .jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|h| h.org == org)
                .cloned()
                .collect()
        };
        let started = std::time::Instant::now();
        loop {
            let jobs = live();
            if jobs.is_empty() {
                return Ok(());
            }
            for job in &jobs {
                job.cancel.store(true, Ordering::Release);
            }
            if started.elapsed() > IMPORT_STOP_WAIT {
                tracing::warn!(org = %org, jobs = jobs.len(), "import jobs of a deleted organization did not stop; the deletion is finished by a later call or start");
                return Err(RuntimeError::Busy {
                    retry_after_secs: 10,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Writes the mark of `org`'s deletion (adding `keep` to the entries to keep)
/// and frees its slug, in one durable commit. `None` when there is neither
/// such an organization nor a deletion of it under way.
fn mark_deletion(
    store: &dyn StatePort,
    catalog: &Catalog,
    org: Uuid,
    keep: Option<Uuid>,
) -> Result<Option<DeletionMark>, PortError> {
    let key = deletion_mark_key(org);
    let existing = match store.get(&key)? {
        Some(bytes) => Some(decode_mark(&key, &bytes)?),
        None => None,
    };
    let mut mark = match existing {
        Some(mark) => mark,
        None => match catalog.org(org) {
            Some(record) => DeletionMark {
                org,
                slug: record.slug,
                keep: Vec::new(),
                started_at: now().to_rfc3339(),
            },
            None => return Ok(None),
        },
    };
    if let Some(k) = keep
        && !mark.keep.contains(&k)
    {
        mark.keep.push(k);
    }
    let mut writes = vec![StateWrite::Put(key, encode(&mark))];
    // The slug, unless another organization took it since.
    let slug = org_key(&mark.slug);
    if store
        .get(&slug)?
        .is_some_and(|bytes| record_id(&bytes) == Some(org))
    {
        writes.push(StateWrite::Delete(slug));
    }
    store.commit(writes, true)?;
    Ok(Some(mark))
}

fn decode_mark(key: &[u8], bytes: &[u8]) -> Result<DeletionMark, PortError> {
    serde_json::from_slice(bytes).map_err(|e| {
        PortError::permanent(format!(
            "deletion mark {} does not decode: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

/// The `id` of a JSON record (an organization's).
fn record_id(bytes: &[u8]) -> Option<Uuid> {
    let value: Json = serde_json::from_slice(bytes).ok()?;
    value.get("id")?.as_str()?.parse().ok()
}

/// The webhook endpoints of `org` in the store (`t/{org}/wh/{id}`).
fn stored_endpoints(store: &dyn StatePort, org: Uuid) -> Result<HashSet<Uuid>, PortError> {
    let prefix = format!("t/{org}/wh/");
    let mut ids = HashSet::new();
    scan_all(store, prefix.as_bytes(), &mut |k, _| {
        if let Ok(id) = String::from_utf8_lossy(&k[prefix.len()..]).parse() {
            ids.insert(id);
        }
        Ok(())
    })?;
    Ok(ids)
}

/// Finishes the deletions a previous process left marked: called by
/// [`Runtime::start`] after the catalog is loaded and before the shards
/// recover. A failure is logged; the mark stays for the next start (or a
/// call of [`Runtime::delete_org`]).
pub(super) fn finish_marked_deletions(catalog: &Catalog, ports: &Ports, import_dir: &Path) {
    let mut marks = Vec::new();
    let scanned = scan_all(&*ports.store, MARK_PREFIX.as_bytes(), &mut |k, v| {
        marks.push(decode_mark(k, v)?);
        Ok(())
    });
    if let Err(e) = scanned {
        tracing::error!(error = %e, "reading the marks of organization deletions failed");
        return;
    }
    for mark in marks {
        // The catalog loaded its keys (the slug went with the mark).
        catalog.remove_org(mark.org);
        match finish_deletion(&*ports.log, &*ports.store, import_dir, &mark) {
            Ok(deleted) => tracing::info!(
                org = %mark.org,
                slug = %mark.slug,
                records = deleted.records_tombstoned,
                keys = deleted.keys_deleted,
                "an interrupted organization deletion finished"
            ),
            Err(e) => tracing::error!(
                org = %mark.org,
                error = %e,
                "finishing an interrupted organization deletion failed; retried at the next start"
            ),
        }
    }
}

/// Steps 4 to 7: tombstones the log records of the organization, deletes its
/// import folders and its store keys, then the mark.
fn finish_deletion(
    log: &dyn EventLogPort,
    store: &dyn StatePort,
    import_dir: &Path,
    mark: &DeletionMark,
) -> Result<OrgDeleted, PortError> {
    let org = mark.org;
    let records_tombstoned = tombstone_records(log, org)?;
    // Before the store: the job ids are the keys of its import records.
    let import_folders_deleted = delete_import_folders(store, import_dir, org)?;
    let keys_deleted = delete_keys(store, org, &mark.keep)?;
    store.commit(vec![StateWrite::Delete(deletion_mark_key(org))], true)?;
    Ok(OrgDeleted {
        id: org,
        slug: mark.slug.clone(),
        customers: 0,
        records_tombstoned,
        keys_deleted,
        import_folders_deleted,
    })
}

/// Overwrites every record of `org` in every partition with a tombstone, as
/// erasure does ([`ERASED`]; readers skip it). Answers how many.
fn tombstone_records(log: &dyn EventLogPort, org: Uuid) -> Result<u64, PortError> {
    let mut total = 0u64;
    for partition in 0..log.partitions() {
        let mut offsets = Vec::new();
        read_range(log, partition, 0, u64::MAX, &mut |offset, record| {
            if record.org == org {
                offsets.push(offset);
            }
        })
        .map_err(|e| PortError::retryable(e.0))?;
        for chunk in offsets.chunks(TOMBSTONE_BATCH) {
            log.overwrite(
                partition,
                chunk.iter().map(|o| (*o, ERASED.to_vec())).collect(),
            )?;
        }
        total += offsets.len() as u64;
    }
    Ok(total)
}

/// Deletes the folders of `org`'s import jobs. Answers how many existed.
fn delete_import_folders(
    store: &dyn StatePort,
    import_dir: &Path,
    org: Uuid,
) -> Result<u64, PortError> {
    let prefix = format!("t/{org}/imp/");
    let mut jobs: Vec<Uuid> = Vec::new();
    scan_all(store, prefix.as_bytes(), &mut |k, _| {
        if let Ok(id) = String::from_utf8_lossy(&k[prefix.len()..]).parse() {
            jobs.push(id);
        }
        Ok(())
    })?;
    let mut deleted = 0;
    for job in jobs {
        let dir = job_dir(import_dir, job);
        if !dir.exists() {
            continue;
        }
        std::fs::remove_dir_all(&dir).map_err(|e| {
            PortError::retryable(format!("deleting import folder {}: {e}", dir.display()))
        })?;
        deleted += 1;
    }
    Ok(deleted)
}

/// Deletes every key under `t/{org}/` but the audit entries in `keep`, and
/// every global key of `org`: its slug, write keys (`g/wk/`, valued by the
/// org id), API keys and invitations (records whose `org` is it), and any
/// key naming it (memberships `g/umem/{user}/{org}`). Answers how many.
fn delete_keys(store: &dyn StatePort, org: Uuid, keep: &[Uuid]) -> Result<u64, PortError> {
    let kept: HashSet<Vec<u8>> = keep
        .iter()
        .map(|id| {
            let mut key = audit_prefix(org);
            key.extend_from_slice(id.to_string().as_bytes());
            key
        })
        .collect();
    let mut deleted = delete_where(store, format!("t/{org}/").as_bytes(), &|k, _| {
        !kept.contains(k)
    })?;
    let id = org.to_string();
    let mark = deletion_mark_key(org);
    deleted += delete_where(store, b"g/", &|k, v| {
        k != mark.as_slice() && global_key_of(k, v, org, &id)
    })?;
    Ok(deleted)
}

/// Whether the global pair (`key`, `value`) belongs to `org` (`id` is its
/// text form).
fn global_key_of(key: &[u8], value: &[u8], org: Uuid, id: &str) -> bool {
    if key.windows(id.len()).any(|w| w == id.as_bytes()) {
        return true;
    }
    let Ok(value) = serde_json::from_slice::<Json>(value) else {
        return false;
    };
    let is_org = |v: Option<&Json>| {
        v.and_then(Json::as_str)
            .and_then(|s| s.parse::<Uuid>().ok())
            == Some(org)
    };
    is_org(Some(&value))
        || is_org(value.get("org"))
        || (key.starts_with(b"g/org/") && is_org(value.get("id")))
}

/// Deletes the pairs under `prefix` that `doomed` picks, a page at a time.
fn delete_where(
    store: &dyn StatePort,
    prefix: &[u8],
    doomed: &dyn Fn(&[u8], &[u8]) -> bool,
) -> Result<u64, PortError> {
    let mut deleted = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan(prefix, after.as_deref(), DELETE_BATCH)?;
        let Some((last, _)) = page.last() else {
            return Ok(deleted);
        };
        let last = last.clone();
        let deletes: Vec<StateWrite> = page
            .into_iter()
            .filter(|(k, v)| doomed(k, v))
            .map(|(k, _)| StateWrite::Delete(k))
            .collect();
        if !deletes.is_empty() {
            deleted += deletes.len() as u64;
            store.commit(deletes, true)?;
        }
        after = Some(last);
    }
}
