//! The facade: what the gateway may ask of the runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Map, Value as Json, json};
use uuid::Uuid;
use xeno_engine::model::{AttrType, Event, EventKind};
use xeno_engine::ports::{EventLogPort, PortError, StatePort, StateWrite, WebhookPort};
use xeno_engine::rule::compile::RuleError;
use xeno_engine::rule::{Rule, dsl};
use xeno_engine::shard::SegmentError;
use xeno_engine::time::Timestamp;

use crate::catalog::{
    ApiKeyRecord, Catalog, OrgRecord, Role, SegmentRecord, WEBHOOK_EVENTS, WebhookRecord,
    alias_key, api_key_key, delivery_key, delivery_prefix, encode, epoch_key, field_key, org_key,
    segment_key, webhook_key, write_key_key,
};
use crate::clock::{ClockActor, NowFn};
use crate::dispatch::{
    DeliveryRecord, DeliveryStatus, DispatchSettings, EndpointChanged, Replay, StopDispatcher,
    WebhookDispatcher,
};
use crate::record::{LogRecord, partition_of};
use crate::registry::{DispatcherEntry, Registry};
use crate::segment::GetCount;
use crate::shard::{
    Append, DeclareFields, FieldTypes, GetCustomer, InjectEnginePanic, Members, MergeCustomers,
    Preview, PutSegment, RemoveSegment, ShardActor, ShardSettings, SnapshotNow, WhenApplied,
};

mod customers;
pub use customers::*;
mod orgs;
pub use orgs::*;

/// The ports the runtime runs on.
#[derive(Clone)]
pub struct Ports {
    pub log: Arc<dyn EventLogPort>,
    pub store: Arc<dyn StatePort>,
    pub webhooks: Arc<dyn WebhookPort>,
}

/// What a first start creates.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub org: String,
    pub write_key: Option<String>,
    pub admin_api_key: Option<String>,
}

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub shard: ShardSettings,
    pub dispatch: DispatchSettings,
    pub tick: Duration,
    /// Events accepted but not yet applied, per partition, before ingest
    /// answers "busy".
    pub max_inflight_per_partition: i64,
    pub bootstrap: Option<Bootstrap>,
    /// Where CSV uploads are spooled and error reports kept.
    pub import_dir: std::path::PathBuf,
    /// How long audit entries and account security events are kept (ms).
    pub audit_retention_ms: i64,
}

/// What went wrong, and whose fault it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    /// The caller named something that does not exist (404).
    #[error("{0} not found")]
    NotFound(String),
    /// The caller sent something invalid (400/422); `pointer` locates it in the
    /// request body.
    #[error("{pointer}: {reason}")]
    Invalid { pointer: String, reason: String },
    /// The request conflicts with the state of what it names (409): an
    /// erased customer id, a type change that existing data cannot satisfy.
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this (403): e.g. an admin changing an owner.
    #[error("{0}")]
    Forbidden(String),
    /// Saturated: try again after a while (503).
    #[error("the server is busy; retry in {retry_after_secs} s")]
    Busy { retry_after_secs: u64 },
    /// Storage failed; retrying may help (503).
    #[error("storage unavailable: {0}")]
    Storage(String),
    /// A bug or a stopped actor (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<PortError> for RuntimeError {
    fn from(e: PortError) -> Self {
        RuntimeError::Storage(e.message)
    }
}

impl From<MailboxError> for RuntimeError {
    fn from(e: MailboxError) -> Self {
        RuntimeError::Internal(format!("actor unavailable: {e}"))
    }
}

fn invalid(pointer: impl Into<String>, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Invalid {
        pointer: pointer.into(),
        reason: reason.into(),
    }
}

fn rule_invalid(e: RuleError) -> RuntimeError {
    let reason = match &e.field {
        Some(field) => format!("`{field}`: {}", e.reason),
        None => e.reason.clone(),
    };
    invalid(format!("/rule{}", e.path), reason)
}

fn segment_error(e: SegmentError) -> RuntimeError {
    match e {
        SegmentError::Rule(e) => rule_invalid(e),
        SegmentError::History(e) => RuntimeError::Storage(e.0),
        other => RuntimeError::Internal(other.to_string()),
    }
}

use crate::clock::now;

/// Parses a rule given as DSL text (a JSON string) or as the JSON AST.
pub fn parse_rule(value: &Json) -> Result<Rule, RuntimeError> {
    match value {
        Json::String(text) => dsl::parse(text).map_err(|e| {
            invalid(
                "/rule",
                format!("line {}, column {}: {}", e.line, e.column, e.message),
            )
        }),
        Json::Object(_) => serde_json::from_value(value.clone())
            .map_err(|e| invalid("/rule", format!("not a valid rule: {e}"))),
        _ => Err(invalid(
            "/rule",
            "a rule is DSL text (a string) or a JSON rule object",
        )),
    }
}

/// A segment as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SegmentInfo {
    pub id: Uuid,
    pub name: String,
    /// The rule in DSL text.
    pub rule: String,
    /// Starts at 1; every update adds one.
    pub version: u64,
    pub member_count: u64,
    pub created_at: String,
    pub updated_at: String,
}

/// A customer: attributes from identify calls, computed traits from events,
/// and the segments they are in now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CustomerInfo {
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub attributes: Map<String, Json>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub computed: Map<String, Json>,
    pub segments: Vec<SegmentRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SegmentRef {
    pub id: Uuid,
    pub name: String,
}

/// How long an import's folder (its error report) is kept after the job.
const IMPORT_FOLDER_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Deletes import folders (error reports, uploads of jobs that died with a
/// previous process) older than [`IMPORT_FOLDER_RETENTION`]; a job this
/// process runs is never touched.
fn prune_import_folders(dir: &std::path::Path, imports: &crate::import::ImportRegistry) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let live: Vec<String> = imports
        .jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .map(Uuid::to_string)
        .collect();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > IMPORT_FOLDER_RETENTION);
        if old
            && !live.contains(&name)
            && let Err(e) = std::fs::remove_dir_all(entry.path())
        {
            tracing::warn!(folder = %name, error = %e, "pruning an import folder failed");
        }
    }
}

/// Forgets suppressions that ended longer ago than the log keeps events: no
/// event they could refuse is left to replay.
fn prune_suppressions(inner: &Inner) {
    let horizon = now().0 - inner.settings.shard.log_retention_ms;
    for org in inner.catalog.org_ids() {
        let ended: Vec<String> = inner
            .catalog
            .with_org(org, |o| {
                o.suppressed
                    .iter()
                    .filter(|(_, s)| s.until < horizon)
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default();
        if ended.is_empty() {
            continue;
        }
        let writes = ended
            .iter()
            .map(|id| StateWrite::Delete(crate::catalog::suppression_key(org, id)))
            .collect();
        match inner.ports.store.commit(writes, true) {
            Ok(()) => inner.catalog.remove_suppressions(org, &ended),
            Err(e) => tracing::warn!(org = %org, error = %e, "pruning ended suppressions failed"),
        }
    }
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A webhook endpoint as the API shows it; the secret only on creation and
/// rotation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookInfo {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub segments: Option<Vec<Uuid>>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl WebhookInfo {
    fn of(record: &WebhookRecord, with_secret: bool) -> WebhookInfo {
        WebhookInfo {
            id: record.id,
            url: record.url.clone(),
            events: record.events.clone(),
            segments: record.segments.clone(),
            enabled: record.enabled,
            disabled_reason: record.disabled_reason.clone(),
            secret: with_secret.then(|| record.secret.clone()),
            created_at: record.created_at.clone(),
            updated_at: record.updated_at.clone(),
        }
    }
}

/// Changes to a webhook endpoint; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct WebhookChange {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub segments: Option<Option<Vec<Uuid>>>,
    pub enabled: Option<bool>,
}

/// What [`Runtime::ingest`] did with a request's events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Events logged durably.
    pub accepted: usize,
    /// Positions (in the request) of events not logged because they name an
    /// erased customer whose suppression period has not ended.
    pub suppressed: Vec<usize>,
}

/// Who a bearer key belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub org: Uuid,
    pub role: Role,
    pub key_id: Uuid,
}

/// Keys created by [`Runtime::start`]'s bootstrap that were generated, to be
/// shown once.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub write_key: Option<String>,
    pub admin_api_key: Option<String>,
}

struct Inner {
    settings: RuntimeSettings,
    ports: Ports,
    catalog: Arc<Catalog>,
    registry: Arc<Registry>,
    shards: Vec<Addr<ShardActor>>,
    inflight: Vec<Arc<AtomicI64>>,
    ready: Vec<Arc<AtomicBool>>,
    io: ArbiterHandle,
    /// Segment changes run one at a time.
    segment_lock: Arc<tokio::sync::Mutex<()>>,
    /// New profile links are decided one request at a time.
    alias_lock: tokio::sync::Mutex<()>,
    arbiters: std::sync::Mutex<Vec<Arbiter>>,
    imports: crate::import::ImportRegistry,
    /// Read-check-write sequences of the identity layer run one at a time.
    identity_locks: crate::identity::IdentityLocks,
    /// The tokio runtime the facade's futures run on, for threads of our own
    /// (imports) that call it.
    tokio: tokio::runtime::Handle,
}

/// The running runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl Runtime {
    /// Loads the catalog, applies the bootstrap, and starts the actors: one
    /// shard actor per log partition (each on its own thread; it recovers its
    /// state before serving), the clock, and one dispatcher per endpoint. Call
    /// it inside an actix `System`.
    pub fn start(
        settings: RuntimeSettings,
        ports: Ports,
        clock: NowFn,
    ) -> Result<(Runtime, Generated), RuntimeError> {
        let catalog = Arc::new(Catalog::load(&*ports.store)?);
        // Before the bootstrap (which may take a freed slug or key again) and
        // before the shards recover (they never see a deleted organization).
        orgs::finish_marked_deletions(&catalog, &ports, &settings.import_dir);
        let generated = match &settings.bootstrap {
            Some(b) => bootstrap(&catalog, &*ports.store, b)?,
            None => Generated::default(),
        };
        let partitions = ports.log.partitions();
        check_partitions(&*ports.store, partitions)?;
        let io = Arbiter::new();
        let registry = Arc::new(Registry::new(partitions, io.handle()));
        let mut arbiters = Vec::new();
        let mut shards = Vec::new();
        let mut inflight = Vec::new();
        let mut ready = Vec::new();
        let mut clock_shards = Vec::new();
        for partition in 0..partitions {
            let arbiter = Arbiter::new();
            let flight = Arc::new(AtomicI64::new(0));
            let is_ready = Arc::new(AtomicBool::new(false));
            let (log, store, cat, reg) = (
                ports.log.clone(),
                ports.store.clone(),
                catalog.clone(),
                registry.clone(),
            );
            let (f, r) = (flight.clone(), is_ready.clone());
            let tick_queued = Arc::new(AtomicBool::new(false));
            let queued = tick_queued.clone();
            let shard_settings = settings.shard;
            let addr = ShardActor::start_in_arbiter(&arbiter.handle(), move |_| {
                let mut actor =
                    ShardActor::new(partition, shard_settings, log, store, cat, reg, f, r);
                actor.tick_queued = queued;
                if let Err(e) = actor.recover() {
                    tracing::error!(partition, error = %e, "shard recovery failed; the partition stays unready");
                }
                actor
            });
            clock_shards.push((addr.clone(), tick_queued));
            shards.push(addr);
            inflight.push(flight);
            ready.push(is_ready);
            arbiters.push(arbiter);
        }
        registry.set_shards(
            shards
                .iter()
                .cloned()
                .zip(inflight.iter().cloned())
                .collect(),
        );
        let tick = settings.tick;
        ClockActor::start_in_arbiter(&io.handle(), move |_| ClockActor {
            tick,
            shards: clock_shards,
            now: clock,
        });
        let io_handle = io.handle();
        arbiters.push(io);
        let runtime = Runtime {
            inner: Arc::new(Inner {
                settings,
                ports,
                catalog,
                registry,
                shards,
                inflight,
                ready,
                io: io_handle,
                segment_lock: Arc::new(tokio::sync::Mutex::new(())),
                alias_lock: tokio::sync::Mutex::new(()),
                arbiters: std::sync::Mutex::new(arbiters),
                imports: crate::import::ImportRegistry::default(),
                identity_locks: crate::identity::IdentityLocks::default(),
                tokio: tokio::runtime::Handle::current(),
            }),
        };
        runtime.fail_interrupted_imports(&runtime.inner.catalog.org_ids())?;
        runtime.start_janitor();
        for org in runtime.inner.catalog.org_ids() {
            let endpoints: Vec<Uuid> = runtime
                .inner
                .catalog
                .with_org(org, |o| o.webhooks.keys().copied().collect())
                .unwrap_or_default();
            for endpoint in endpoints {
                runtime.start_dispatcher(org, endpoint);
            }
        }
        Ok((runtime, generated))
    }

    /// Whether every partition is ready and has room for `events` more
    /// pending events within half its limit (the importer waits for that
    /// rather than filling the room live ingest needs).
    pub(crate) fn has_room(&self, events: i64) -> bool {
        // Half the room: live ingest keeps the other half while an import runs.
        let limit = self.inner.settings.max_inflight_per_partition / 2;
        self.inner.ready.iter().all(|r| r.load(Ordering::Acquire))
            && self.inner.inflight.iter().all(|f| {
                let pending = f.load(Ordering::Acquire);
                // An empty partition takes a batch whatever the limit.
                pending <= 0 || pending + events <= limit
            })
    }

    /// The types the catalog records for those of `names` it knows.
    pub(crate) fn recorded_types(&self, org: Uuid, names: &[String]) -> HashMap<String, AttrType> {
        self.inner
            .catalog
            .with_org(org, |o| {
                names
                    .iter()
                    .filter_map(|n| o.fields.get(n).map(|t| (n.clone(), *t)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The type the catalog records for a field, if it does.
    pub(crate) fn catalog_field_type(&self, org: Uuid, name: &str) -> Option<AttrType> {
        self.inner
            .catalog
            .with_org(org, |o| o.fields.get(name).copied())
            .flatten()
    }

    pub(crate) fn store(&self) -> &Arc<dyn StatePort> {
        &self.inner.ports.store
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub(crate) fn identity_locks(&self) -> &crate::identity::IdentityLocks {
        &self.inner.identity_locks
    }

    pub(crate) fn import_registry(&self) -> &crate::import::ImportRegistry {
        &self.inner.imports
    }

    /// Where CSV uploads are spooled (one folder per job, see
    /// [`crate::import::job_dir`]).
    pub fn import_dir(&self) -> &std::path::Path {
        &self.inner.settings.import_dir
    }

    pub(crate) fn tokio(&self) -> &tokio::runtime::Handle {
        &self.inner.tokio
    }

    /// A thread that prunes old delivery history every hour.
    fn start_janitor(&self) {
        let weak = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("xeno-janitor".into())
            .spawn(move || {
                loop {
                    let Some(inner) = weak.upgrade() else { return };
                    let retention = inner.settings.dispatch.history_retention;
                    let mut deleted = 0;
                    for org in inner.catalog.org_ids() {
                        let endpoints: Vec<Uuid> = inner
                            .catalog
                            .with_org(org, |o| o.webhooks.keys().copied().collect())
                            .unwrap_or_default();
                        for endpoint in endpoints {
                            match crate::dispatch::prune_history(
                                &*inner.ports.store,
                                org,
                                endpoint,
                                retention,
                                now().0,
                            ) {
                                Ok(n) => deleted += n,
                                Err(e) => tracing::warn!(endpoint = %endpoint, error = %e, "pruning delivery history failed"),
                            }
                        }
                    }
                    if deleted > 0 {
                        tracing::info!(deleted, "old webhook deliveries pruned");
                    }
                    prune_import_folders(&inner.settings.import_dir, &inner.imports);
                    prune_suppressions(&inner);
                    let runtime = Runtime { inner };
                    match runtime.prune_identity() {
                        Ok(0) => {}
                        Ok(pruned) => tracing::info!(pruned, "expired sessions and one-time tokens pruned"),
                        Err(e) => tracing::warn!(error = %e, "pruning expired sessions and tokens failed"),
                    }
                    let cutoff = now().0 - runtime.inner.settings.audit_retention_ms;
                    match runtime.prune_audit(cutoff) {
                        Ok(0) => {}
                        Ok(deleted) => tracing::info!(deleted, "audit entries past their retention deleted"),
                        Err(e) => tracing::warn!(error = %e, "audit retention failed"),
                    }
                    drop(runtime);
                    std::thread::sleep(Duration::from_secs(3600));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the janitor thread; delivery history is not pruned");
        }
    }

    fn start_dispatcher(&self, org: Uuid, endpoint: Uuid) {
        // Starts "missed": its first rescan picks up deliveries committed
        // between its own outbox scan and its registration.
        let missed = Arc::new(AtomicBool::new(true));
        let (settings, store, catalog, port, m) = (
            self.inner.settings.dispatch,
            self.inner.ports.store.clone(),
            self.inner.catalog.clone(),
            self.inner.ports.webhooks.clone(),
            missed.clone(),
        );
        let addr = WebhookDispatcher::start_in_arbiter(&self.inner.io, move |_| {
            WebhookDispatcher::new(org, endpoint, settings, store, catalog, port, m)
        });
        self.inner
            .registry
            .add_dispatcher(endpoint, DispatcherEntry { addr, missed });
    }

    /// Whether every shard has recovered.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.iter().all(|r| r.load(Ordering::Acquire))
    }

    /// Events accepted and not yet applied, per partition.
    pub fn lag(&self) -> Vec<i64> {
        self.inner
            .inflight
            .iter()
            .map(|f| f.load(Ordering::Relaxed))
            .collect()
    }

    /// Snapshots every shard and stops the actors.
    pub async fn shutdown(&self) {
        self.stop(true).await
    }

    /// Stops the actors without the final snapshots: what a crash leaves
    /// behind, for recovery tests.
    pub async fn stop_without_snapshot(&self) {
        self.stop(false).await
    }

    async fn stop(&self, snapshot: bool) {
        if !snapshot {
            self.inner.registry.halting.store(true, Ordering::Release);
        }
        for shard in self.inner.shards.iter().filter(|_| snapshot) {
            match tokio::time::timeout(Duration::from_secs(30), shard.send(SnapshotNow)).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "final snapshot failed"),
                _ => tracing::warn!("a shard did not answer the final snapshot"),
            }
        }
        let arbiters = self
            .inner
            .arbiters
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default();
        for arbiter in &arbiters {
            arbiter.stop();
        }
        // Wait for the actors to drop their ports, so the storage is closed
        // when this returns.
        let _ = tokio::task::spawn_blocking(move || {
            for arbiter in arbiters {
                let _ = arbiter.join();
            }
        })
        .await;
    }

    /// Fault injection for tests: makes the engine of `org` panic in every
    /// partition that holds some of its customers, after damaging its state.
    /// Returns how many tenants' shards were rebuilt.
    #[doc(hidden)]
    pub async fn inject_engine_panic(&self, org: Uuid) -> usize {
        let mut rebuilt = 0;
        for shard in &self.inner.shards {
            if shard.send(InjectEnginePanic { org }).await.unwrap_or(false) {
                rebuilt += 1;
            }
        }
        rebuilt
    }

    // ---- authentication ------------------------------------------------------

    pub fn org_for_write_key(&self, key: &str) -> Option<Uuid> {
        self.inner.catalog.org_for_write_key(key)
    }

    pub fn principal(&self, api_key: &str) -> Option<Principal> {
        self.inner.catalog.api_key(api_key).map(|k| Principal {
            org: k.org,
            role: k.role,
            key_id: k.id,
        })
    }

    pub fn org_by_slug(&self, slug: &str) -> Option<OrgRecord> {
        self.inner.catalog.org_by_slug(slug)
    }

    pub fn org_by_id(&self, id: Uuid) -> Option<OrgRecord> {
        self.inner.catalog.org(id)
    }

    // ---- ingest --------------------------------------------------------------

    /// Logs `events` of `org` durably and hands them to their shards. Returns
    /// once every event is fsynced; application follows within milliseconds.
    /// Events of an erased customer id are not logged while its suppression
    /// lasts; the outcome lists their positions.
    pub async fn ingest(
        &self,
        org: Uuid,
        events: Vec<Event>,
        received_at: Timestamp,
    ) -> Result<IngestOutcome, RuntimeError> {
        self.log_events(org, events, received_at, false).await
    }

    /// [`Self::ingest`], returning only once the shards have applied the
    /// events when `wait_applied` (the customers API reads its own writes).
    pub(crate) async fn log_events(
        &self,
        org: Uuid,
        events: Vec<Event>,
        received_at: Timestamp,
        wait_applied: bool,
    ) -> Result<IngestOutcome, RuntimeError> {
        self.log_events_or_give_back(org, events, received_at, wait_applied, None)
            .await
    }

    /// [`Self::ingest`] that, when it answers busy, puts the events (which
    /// were not logged) into `give_back`, so a caller that retries needs no
    /// copy of them.
    pub(crate) async fn ingest_or_give_back(
        &self,
        org: Uuid,
        events: Vec<Event>,
        received_at: Timestamp,
        give_back: &mut Vec<Event>,
    ) -> Result<IngestOutcome, RuntimeError> {
        self.log_events_or_give_back(org, events, received_at, false, Some(give_back))
            .await
    }

    async fn log_events_or_give_back(
        &self,
        org: Uuid,
        events: Vec<Event>,
        received_at: Timestamp,
        wait_applied: bool,
        give_back: Option<&mut Vec<Event>>,
    ) -> Result<IngestOutcome, RuntimeError> {
        // (A deleted organization's events are never logged again.)
        self.require_org(org)?;
        let partitions = self.inner.shards.len() as u32;
        // A caller that retries gets its events back untouched (order and
        // suppressed positions intact) when the shards have no room now.
        if let Some(back) = give_back
            && !self.room_for(org, &events, partitions)
        {
            metrics::counter!("xeno_ingest_busy_total").increment(1);
            back.extend(events);
            return Err(RuntimeError::Busy {
                retry_after_secs: 1,
            });
        }
        let (mut events, suppressed) = self.drop_suppressed(org, events, received_at);
        if !suppressed.is_empty() {
            metrics::counter!("xeno_ingest_suppressed_total").increment(suppressed.len() as u64);
        }
        if events.is_empty() {
            return Ok(IngestOutcome {
                accepted: 0,
                suppressed,
            });
        }
        let accepted = events.len();
        let (merges, origins) = self.resolve_identities(org, &mut events).await?;
        // The merges read what the shards have applied; this request's own
        // events are re-keyed already and need not wait.
        self.start_merges(org, merges);
        let mut by_partition: HashMap<u32, Vec<LogRecord>> = HashMap::new();
        for (event, origin) in events.into_iter().zip(origins) {
            let key = event
                .customer_key()
                .ok_or_else(|| invalid("", "an event has neither userId nor anonymousId"))?;
            let p = partition_of(org, key, partitions);
            by_partition.entry(p).or_default().push(LogRecord {
                org,
                received_at,
                event,
                origin,
            });
        }
        let limit = self.inner.settings.max_inflight_per_partition;
        let saturated = by_partition.iter().any(|(p, records)| {
            self.inner.inflight[*p as usize].load(Ordering::Acquire) + records.len() as i64 > limit
        });
        let unready = by_partition
            .keys()
            .any(|p| !self.inner.ready[*p as usize].load(Ordering::Acquire));
        if saturated || unready {
            if saturated {
                metrics::counter!("xeno_ingest_busy_total").increment(1);
            }
            // (Rare: another writer took the room since the check above.
            // The events were processed and cannot be given back as they
            // came, so the caller hears "busy" with nothing to retry.)
            return Err(RuntimeError::Busy {
                retry_after_secs: 1,
            });
        }
        // Each partition's append and hand-off run in a task of their own: a
        // client that hangs up cannot cancel the hand-off of events that are
        // durable (or leave the pending count raised).
        let mut appends = Vec::with_capacity(by_partition.len());
        for (p, records) in by_partition {
            let n = records.len() as i64;
            let flight = self.inner.inflight[p as usize].clone();
            flight.fetch_add(n, Ordering::AcqRel);
            let log = self.inner.ports.log.clone();
            let shard = self.inner.shards[p as usize].clone();
            let waiter = shard.clone();
            appends.push(tokio::spawn(async move {
                let encoded: Vec<Vec<u8>> = records.iter().map(LogRecord::encode).collect();
                let started = std::time::Instant::now();
                let appended = tokio::task::spawn_blocking(move || log.append(p, encoded))
                    .await
                    .map_err(|e| RuntimeError::Internal(e.to_string()))
                    .and_then(|r| r.map_err(RuntimeError::from));
                metrics::histogram!("xeno_log_append_seconds")
                    .record(started.elapsed().as_secs_f64());
                let range = match appended {
                    Ok(range) => range,
                    Err(e) => {
                        flight.fetch_sub(n, Ordering::AcqRel);
                        return Err(e);
                    }
                };
                // Durable: acknowledge without waiting for the shard (unless
                // the caller reads its own write next).
                let hand_off = tokio::spawn(async move {
                    let message = Append {
                        first: range.start,
                        records,
                    };
                    if shard.send(message).await.is_err() {
                        flight.fetch_sub(n, Ordering::AcqRel);
                        tracing::error!(
                            partition = p,
                            "shard actor unavailable; it will read the events from the log"
                        );
                    }
                });
                if wait_applied {
                    let _ = hand_off.await;
                    // The hand-off may wait in the reorder buffer behind an
                    // earlier one: wait until the shard applied this range.
                    let (done, applied) = tokio::sync::oneshot::channel();
                    let ask = WhenApplied {
                        until: range.end,
                        done,
                    };
                    if waiter.send(ask).await.is_ok() {
                        let _ = tokio::time::timeout(Duration::from_secs(10), applied).await;
                    }
                }
                Ok(n as u64)
            }));
        }
        let mut failure = None;
        let mut count = 0u64;
        for append in appends {
            match append.await {
                Ok(Ok(n)) => count += n,
                Ok(Err(e)) => failure = Some(e),
                Err(e) => failure = Some(RuntimeError::Internal(e.to_string())),
            }
        }
        metrics::counter!("xeno_ingest_events_total").increment(count);
        match failure {
            Some(e) => Err(e),
            None => Ok(IngestOutcome {
                accepted,
                suppressed,
            }),
        }
    }

    /// Whether every partition `events` go to is ready and has room for
    /// them (by their ids as sent; a merge may re-key a few elsewhere).
    fn room_for(&self, org: Uuid, events: &[Event], partitions: u32) -> bool {
        let mut counts: HashMap<u32, i64> = HashMap::new();
        for key in events.iter().filter_map(Event::customer_key) {
            *counts
                .entry(partition_of(org, key, partitions))
                .or_default() += 1;
        }
        let limit = self.inner.settings.max_inflight_per_partition;
        counts.iter().all(|(p, n)| {
            self.inner.ready[*p as usize].load(Ordering::Acquire)
                && self.inner.inflight[*p as usize].load(Ordering::Acquire) + n <= limit
        })
    }

    /// Splits off the events that name an erased customer id whose
    /// suppression lasts beyond `received_at`; returns the rest and the
    /// positions of those dropped.
    fn drop_suppressed(
        &self,
        org: Uuid,
        events: Vec<Event>,
        received_at: Timestamp,
    ) -> (Vec<Event>, Vec<usize>) {
        let catalog = &self.inner.catalog;
        if !catalog.has_suppressions(org) {
            return (events, Vec::new());
        }
        let blocked = |id: &Option<String>| {
            id.as_deref()
                .and_then(|id| catalog.suppression(org, id))
                .is_some_and(|s| s.until > received_at.0)
        };
        let mut kept = Vec::with_capacity(events.len());
        let mut dropped = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            let previous = match &event.kind {
                EventKind::Alias { previous_id } => Some(previous_id.clone()),
                _ => None,
            };
            if blocked(&event.user_id) || blocked(&event.anonymous_id) || blocked(&previous) {
                dropped.push(i);
            } else {
                kept.push(event);
            }
        }
        (kept, dropped)
    }

    /// Links profiles: an `alias` (previousId -> userId), or any event with
    /// both a userId and an anonymousId, merges the first profile into the
    /// second (into its root, when that one was itself merged). New links are
    /// recorded durably before the events are logged; every event of an
    /// already merged id is re-keyed to the profile it lives in now. Returns
    /// the new merges to carry out.
    async fn resolve_identities(
        &self,
        org: Uuid,
        events: &mut [Event],
    ) -> Result<(Vec<(String, String)>, Vec<Option<String>>), RuntimeError> {
        let catalog = self.inner.catalog.clone();
        let mut origins = vec![None; events.len()];
        let links: Vec<(String, String)> = events
            .iter()
            .filter_map(|event| match &event.kind {
                EventKind::Alias { previous_id } => event
                    .user_id
                    .clone()
                    .filter(|u| !u.is_empty() && !previous_id.is_empty())
                    .map(|u| (previous_id.clone(), u)),
                _ => match (&event.user_id, &event.anonymous_id) {
                    (Some(u), Some(a)) if !u.is_empty() && !a.is_empty() && u != a => {
                        Some((a.clone(), u.clone()))
                    }
                    _ => None,
                },
            })
            .filter(|(from, _)| catalog.alias_of(org, from).is_none())
            .collect();
        let root = |id: &str, new: &[(String, String)]| -> String {
            let mut current = id.to_string();
            for _ in 0..64 {
                let next = new
                    .iter()
                    .find(|(from, _)| *from == current)
                    .map(|(_, into)| into.clone())
                    .or_else(|| catalog.alias_of(org, &current));
                match next {
                    Some(next) if next != current => current = next,
                    _ => break,
                }
            }
            current
        };
        let mut new: Vec<(String, String)> = Vec::new();
        // New links are decided and recorded one request at a time, so two
        // requests cannot link one id to two profiles or two ids to each other.
        let _guard = match links.is_empty() {
            true => None,
            false => Some(self.inner.alias_lock.lock().await),
        };
        if _guard.is_some() {
            // Deleted while this request waited: it records nothing of it.
            self.require_org(org)?;
        }
        for (from, to) in links {
            if root(&from, &new) != from {
                continue; // merged already (the first link wins)
            }
            let into = root(&to, &new);
            if into == from {
                continue;
            }
            for (_, target) in new.iter_mut() {
                if *target == from {
                    *target = into.clone();
                }
            }
            new.push((from, into));
        }
        if !new.is_empty() {
            let writes: Vec<StateWrite> = new
                .iter()
                .map(|(from, into)| StateWrite::Put(alias_key(org, from), encode(into)))
                .collect();
            // The commit and the memory update run together off the async
            // workers: a cancelled request cannot leave a link durable but
            // unknown (which a later opposite link could turn into a cycle).
            let (store, memory, recorded) =
                (self.inner.ports.store.clone(), catalog.clone(), new.clone());
            tokio::task::spawn_blocking(move || {
                store.commit(writes, true)?;
                memory.put_aliases(org, &recorded);
                Ok::<_, PortError>(())
            })
            .await
            .map_err(|e| RuntimeError::Internal(e.to_string()))??;
        }
        if new.is_empty() && !catalog.has_aliases(org) {
            return Ok((new, origins));
        }
        for (event, origin) in events.iter_mut().zip(origins.iter_mut()) {
            let Some(key) = event.customer_key() else {
                continue;
            };
            let into = root(key, &[]);
            if into != key {
                // Derived from the client's id, so a retry of this event, or
                // a merge carrying the original, lands once.
                let original = std::mem::take(&mut event.message_id);
                event.message_id = crate::record::merged_message_id(&original, &into);
                event.user_id = Some(into);
                *origin = Some(original);
            }
        }
        Ok((new, origins))
    }

    /// Hands new merges to the shards of the merged profiles.
    fn start_merges(&self, org: Uuid, merges: Vec<(String, String)>) {
        let partitions = self.inner.shards.len() as u32;
        let mut by_partition: HashMap<u32, Vec<(String, String)>> = HashMap::new();
        for (from, into) in merges {
            by_partition
                .entry(partition_of(org, &from, partitions))
                .or_default()
                .push((from, into));
        }
        for (p, merges) in by_partition {
            let shard = self.inner.shards[p as usize].clone();
            tokio::spawn(async move {
                if shard.send(MergeCustomers { org, merges }).await.is_err() {
                    tracing::error!(
                        partition = p,
                        "merge not handed to its shard; carried out at the next start"
                    );
                }
            });
        }
    }

    // ---- segments ------------------------------------------------------------

    fn require_org(&self, org: Uuid) -> Result<(), RuntimeError> {
        self.inner
            .catalog
            .org(org)
            .map(|_| ())
            .ok_or_else(|| RuntimeError::NotFound("organization".into()))
    }

    fn segment_record(&self, org: Uuid, id: Uuid) -> Result<SegmentRecord, RuntimeError> {
        self.inner
            .catalog
            .with_org(org, |o| o.segments.get(&id).cloned())
            .flatten()
            .ok_or_else(|| RuntimeError::NotFound("segment".into()))
    }

    async fn segment_info(&self, org: Uuid, record: SegmentRecord) -> SegmentInfo {
        let member_count = match self.inner.registry.segment(org, record.engine_id) {
            Some(addr) => addr.send(GetCount).await.unwrap_or(0),
            None => 0,
        };
        SegmentInfo {
            id: record.id,
            name: record.name,
            rule: record.rule,
            version: record.version,
            member_count,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }

    fn check_name(name: &str) -> Result<String, RuntimeError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(invalid("/name", "the name must not be empty"));
        }
        if name.chars().count() > 200 {
            return Err(invalid("/name", "the name is longer than 200 characters"));
        }
        Ok(name.to_string())
    }

    /// Creates a segment: every shard backfills it, then it is recorded.
    pub async fn create_segment(
        &self,
        org: Uuid,
        name: &str,
        rule: Rule,
    ) -> Result<SegmentInfo, RuntimeError> {
        let this = self.clone();
        let name = name.to_string();
        self.serialised(async move { this.create_segment_now(org, &name, rule).await })
            .await
    }

    /// Runs a segment change in a task of its own (a client that hangs up
    /// cannot stop it half-way through the shards) and one at a time (two
    /// updates cannot interleave per shard).
    async fn serialised<T: Send + 'static>(
        &self,
        change: impl std::future::Future<Output = Result<T, RuntimeError>> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let lock = self.inner.segment_lock.clone();
        tokio::spawn(async move {
            let _guard = lock.lock().await;
            change.await
        })
        .await
        .map_err(|e| RuntimeError::Internal(e.to_string()))?
    }

    async fn create_segment_now(
        &self,
        org: Uuid,
        name: &str,
        rule: Rule,
    ) -> Result<SegmentInfo, RuntimeError> {
        self.require_org(org)?;
        let name = Self::check_name(name)?;
        let id = Uuid::now_v7();
        // The random low half of a UUIDv7; unique within a tenant in practice,
        // and checked.
        let engine_id = id.as_u128() as u64;
        if self
            .inner
            .catalog
            .with_org(org, |o| o.by_engine_id.contains_key(&engine_id))
            .unwrap_or(false)
        {
            return Err(RuntimeError::Internal("segment id collision; retry".into()));
        }
        let text = dsl::print(&rule);
        self.ensure_fields(org, &rule, true).await?;
        self.apply_to_shards(org, engine_id, &rule, None).await?;
        let at = now().to_rfc3339();
        let record = SegmentRecord {
            id,
            engine_id,
            name,
            rule: text,
            version: 1,
            created_at: at.clone(),
            updated_at: at,
        };
        if let Err(e) = self.commit_segment(org, &record) {
            self.remove_from_shards(org, engine_id).await;
            return Err(e.into());
        }
        Ok(self.segment_info(org, record).await)
    }

    /// Makes every shard of the tenant agree on the types of the attributes
    /// `rule` reads: each shard infers types from its own customers, so a field
    /// seen in one partition is declared in all (and recorded in the catalog
    /// when `persist`). Differing types are the caller's error.
    async fn ensure_fields(
        &self,
        org: Uuid,
        rule: &Rule,
        persist: bool,
    ) -> Result<(), RuntimeError> {
        let names: Vec<String> = rule
            .customer_fields()
            .into_iter()
            .map(str::to_string)
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let mut types = self.recorded_types(org, &names);
        let recorded: Vec<String> = types.keys().cloned().collect();
        for shard in &self.inner.shards {
            let known = shard
                .send(FieldTypes {
                    org,
                    names: names.clone(),
                })
                .await?;
            for (name, ty) in known {
                match types.get(&name) {
                    Some(existing) if *existing != ty => {
                        return Err(invalid(
                            "/rule",
                            format!(
                                "`{name}` holds {existing:?} values for some customers and {ty:?} for others"
                            ),
                        ));
                    }
                    _ => {
                        types.insert(name, ty);
                    }
                }
            }
        }
        if types.is_empty() {
            return Ok(());
        }
        let fields: Vec<(String, AttrType)> = types.into_iter().collect();
        self.declare_fields(org, fields, &recorded, persist, "/rule")
            .await
    }

    /// Declares `fields` on every shard of the tenant, and records those not
    /// in `recorded` in the catalog when `persist`.
    pub(crate) async fn declare_fields(
        &self,
        org: Uuid,
        fields: Vec<(String, AttrType)>,
        recorded: &[String],
        persist: bool,
        pointer: &str,
    ) -> Result<(), RuntimeError> {
        for shard in &self.inner.shards {
            shard
                .send(DeclareFields {
                    org,
                    fields: fields.clone(),
                })
                .await?
                .map_err(|reason| invalid(pointer, reason))?;
        }
        let new: Vec<(String, AttrType)> = fields
            .into_iter()
            .filter(|(n, _)| !recorded.contains(n))
            .collect();
        if persist && !new.is_empty() {
            let writes = new
                .iter()
                .map(|(n, t)| StateWrite::Put(field_key(org, n), encode(t)))
                .collect();
            self.inner
                .catalog
                .commit(&*self.inner.ports.store, writes, |c| {
                    c.put_fields(org, &new)
                })?;
        }
        Ok(())
    }

    /// Sends the rule to every shard; on a refusal, puts back `previous` (or
    /// removes the segment) where it was already applied.
    async fn apply_to_shards(
        &self,
        org: Uuid,
        engine_id: u64,
        rule: &Rule,
        previous: Option<&Rule>,
    ) -> Result<(), RuntimeError> {
        for (i, shard) in self.inner.shards.iter().enumerate() {
            let put = PutSegment {
                org,
                engine_id,
                rule: rule.clone(),
            };
            let error = match shard.send(put).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => segment_error(e),
                Err(e) => e.into(),
            };
            for done in &self.inner.shards[..i] {
                let _ = match previous {
                    None => done
                        .send(RemoveSegment { org, engine_id })
                        .await
                        .map(|_| ()),
                    Some(old) => done
                        .send(PutSegment {
                            org,
                            engine_id,
                            rule: old.clone(),
                        })
                        .await
                        .map(|_| ()),
                };
            }
            return Err(error);
        }
        Ok(())
    }

    /// Records a segment durably, then in the catalog's memory.
    fn commit_segment(&self, org: Uuid, record: &SegmentRecord) -> Result<(), PortError> {
        let write = StateWrite::Put(segment_key(org, record.id), encode(record));
        let stored = record.clone();
        self.inner
            .catalog
            .commit(&*self.inner.ports.store, vec![write], |c| {
                c.put_segment(org, stored)
            })
    }

    async fn remove_from_shards(&self, org: Uuid, engine_id: u64) {
        for shard in &self.inner.shards {
            let _ = shard.send(RemoveSegment { org, engine_id }).await;
        }
    }

    pub async fn get_segment(&self, org: Uuid, id: Uuid) -> Result<SegmentInfo, RuntimeError> {
        self.require_org(org)?;
        let record = self.segment_record(org, id)?;
        Ok(self.segment_info(org, record).await)
    }

    pub async fn list_segments(
        &self,
        org: Uuid,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<SegmentInfo>, RuntimeError> {
        self.require_org(org)?;
        let after = match cursor {
            Some(c) => Some(
                Uuid::parse_str(c).map_err(|_| invalid("/cursor", "not a cursor of this list"))?,
            ),
            None => None,
        };
        let mut records: Vec<SegmentRecord> = self
            .inner
            .catalog
            .with_org(org, |o| o.segments.values().cloned().collect())
            .unwrap_or_default();
        records.sort_by_key(|r| r.id);
        let records: Vec<SegmentRecord> = records
            .into_iter()
            .filter(|r| after.is_none_or(|a| r.id > a))
            .take(limit + 1)
            .collect();
        let more = records.len() > limit;
        let mut items = Vec::new();
        for record in records.into_iter().take(limit) {
            items.push(self.segment_info(org, record).await);
        }
        let next_cursor = more
            .then(|| items.last().map(|s: &SegmentInfo| s.id.to_string()))
            .flatten();
        Ok(Page { items, next_cursor })
    }

    /// Changes a segment's name and/or rule. Only customers whose membership
    /// changes get a delta.
    pub async fn update_segment(
        &self,
        org: Uuid,
        id: Uuid,
        name: Option<&str>,
        rule: Option<Rule>,
    ) -> Result<SegmentInfo, RuntimeError> {
        let this = self.clone();
        let name = name.map(str::to_string);
        self.serialised(async move {
            this.update_segment_now(org, id, name.as_deref(), rule)
                .await
        })
        .await
    }

    async fn update_segment_now(
        &self,
        org: Uuid,
        id: Uuid,
        name: Option<&str>,
        rule: Option<Rule>,
    ) -> Result<SegmentInfo, RuntimeError> {
        self.require_org(org)?;
        let mut record = self.segment_record(org, id)?;
        if let Some(name) = name {
            record.name = Self::check_name(name)?;
        }
        let mut previous_rule = None;
        if let Some(rule) = rule {
            let old = dsl::parse(&record.rule)
                .map_err(|e| RuntimeError::Internal(format!("stored rule: {e}")))?;
            previous_rule = Some(old.clone());
            if old != rule {
                self.ensure_fields(org, &rule, true).await?;
                self.apply_to_shards(org, record.engine_id, &rule, Some(&old))
                    .await?;
                record.rule = dsl::print(&rule);
            }
        }
        record.version += 1;
        record.updated_at = now().to_rfc3339();
        if let Err(e) = self.commit_segment(org, &record) {
            // Put the shards back on the recorded rule.
            if let (Some(old), Ok(new)) = (&previous_rule, dsl::parse(&record.rule))
                && *old != new
            {
                let _ = self
                    .apply_to_shards(org, record.engine_id, old, Some(&new))
                    .await;
            }
            return Err(e.into());
        }
        Ok(self.segment_info(org, record).await)
    }

    pub async fn delete_segment(&self, org: Uuid, id: Uuid) -> Result<(), RuntimeError> {
        let this = self.clone();
        self.serialised(async move { this.delete_segment_now(org, id).await })
            .await
    }

    async fn delete_segment_now(&self, org: Uuid, id: Uuid) -> Result<(), RuntimeError> {
        self.require_org(org)?;
        let record = self.segment_record(org, id)?;
        let write = StateWrite::Delete(segment_key(org, id));
        self.inner
            .catalog
            .commit(&*self.inner.ports.store, vec![write], |c| {
                c.remove_segment(org, id)
            })?;
        self.remove_from_shards(org, record.engine_id).await;
        self.inner.registry.forget_segment(org, record.engine_id);
        // The segment's last-transition markers of the current epoch go too
        // (a deleted segment's id never comes back, so this is only space).
        let epoch = self
            .inner
            .catalog
            .with_org(org, |o| o.endpoint_epoch)
            .unwrap_or(0);
        let prefix = format!("t/{org}/last/{epoch}/{id}/").into_bytes();
        let store = self.inner.ports.store.clone();
        let pruned = tokio::task::spawn_blocking(move || -> Result<(), PortError> {
            loop {
                let page = store.scan(&prefix, None, 4096)?;
                if page.is_empty() {
                    return Ok(());
                }
                store.commit(
                    page.into_iter()
                        .map(|(k, _)| StateWrite::Delete(k))
                        .collect(),
                    false,
                )?;
            }
        })
        .await;
        if !matches!(pruned, Ok(Ok(()))) {
            tracing::warn!(org = %org, segment = %id, "pruning the deleted segment's markers failed");
        }
        Ok(())
    }

    /// Count and a sample of the customers an ad-hoc rule matches now.
    pub async fn preview(
        &self,
        org: Uuid,
        rule: Rule,
        sample: usize,
    ) -> Result<(u64, Vec<String>), RuntimeError> {
        self.require_org(org)?;
        self.ensure_fields(org, &rule, false).await?;
        let mut count = 0;
        let mut ids = Vec::new();
        for shard in &self.inner.shards {
            let (n, some) = shard
                .send(Preview {
                    org,
                    rule: rule.clone(),
                    sample,
                })
                .await?
                .map_err(segment_error)?;
            count += n;
            ids.extend(some);
        }
        ids.truncate(sample);
        Ok((count, ids))
    }

    /// Members of a segment, `limit` at a time, in a stable order.
    pub async fn members(
        &self,
        org: Uuid,
        id: Uuid,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<String>, RuntimeError> {
        self.require_org(org)?;
        let record = self.segment_record(org, id)?;
        let engine_id = record.engine_id;
        self.page_by_partition(cursor, limit, |shard, after, want| async move {
            let (_, page) = shard
                .send(Members {
                    org,
                    engine_id,
                    after,
                    limit: want,
                })
                .await?;
            Ok(page)
        })
        .await
    }

    /// A page of a list kept per partition in dense-id order (segment
    /// members): partitions in turn, the cursor being (partition, last dense
    /// id). `fetch(shard, after, want)` answers up to `want` (dense id, item)
    /// of one partition's shard after `after`.
    pub(crate) async fn page_by_partition<T, F, Fut>(
        &self,
        cursor: Option<&str>,
        limit: usize,
        mut fetch: F,
    ) -> Result<Page<T>, RuntimeError>
    where
        F: FnMut(Addr<ShardActor>, Option<u32>, usize) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<(u32, T)>, RuntimeError>>,
    {
        let (mut partition, mut after) = match cursor {
            Some(c) => {
                decode_cursor(c).ok_or_else(|| invalid("/cursor", "not a cursor of this list"))?
            }
            None => (0, None),
        };
        let mut items = Vec::new();
        let mut next_cursor = None;
        while (partition as usize) < self.inner.shards.len() {
            let want = limit - items.len();
            let shard = self.inner.shards[partition as usize].clone();
            let page = fetch(shard, after, want).await?;
            let full = page.len() == want;
            let last = page.last().map(|(row, _)| *row);
            items.extend(page.into_iter().map(|(_, item)| item));
            if full {
                next_cursor = last.map(|row| encode_cursor(partition, row));
                break;
            }
            partition += 1;
            after = None;
        }
        Ok(Page { items, next_cursor })
    }

    pub async fn customer(&self, org: Uuid, id: &str) -> Result<CustomerInfo, RuntimeError> {
        self.require_org(org)?;
        let p = partition_of(org, id, self.inner.shards.len() as u32);
        let data = self.inner.shards[p as usize]
            .send(GetCustomer {
                org,
                id: id.to_string(),
            })
            .await?
            .ok_or_else(|| RuntimeError::NotFound("customer".into()))?;
        self.customer_infos(org, vec![data])
            .pop()
            .ok_or_else(|| RuntimeError::NotFound("organization".into()))
    }

    // ---- webhooks ------------------------------------------------------------

    fn check_webhook(&self, org: Uuid, record: &WebhookRecord) -> Result<(), RuntimeError> {
        let url = record.url.trim();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| invalid("/url", "the URL must start with http:// or https://"))?;
        if rest.is_empty()
            || rest.starts_with('/')
            || url.len() > 2048
            || url.contains(char::is_whitespace)
        {
            return Err(invalid("/url", "the URL has no host or is malformed"));
        }
        if record.events.is_empty() {
            return Err(invalid("/events", "subscribe to at least one event type"));
        }
        for (i, e) in record.events.iter().enumerate() {
            if !WEBHOOK_EVENTS.contains(&e.as_str()) {
                return Err(invalid(
                    format!("/events/{i}"),
                    format!(
                        "unknown event type `{e}`; known: {}",
                        WEBHOOK_EVENTS.join(", ")
                    ),
                ));
            }
        }
        if let Some(segments) = &record.segments {
            for (i, s) in segments.iter().enumerate() {
                if self.segment_record(org, *s).is_err() {
                    return Err(invalid(format!("/segments/{i}"), format!("no segment {s}")));
                }
            }
        }
        Ok(())
    }

    pub fn create_webhook(
        &self,
        org: Uuid,
        url: String,
        events: Vec<String>,
        segments: Option<Vec<Uuid>>,
    ) -> Result<WebhookInfo, RuntimeError> {
        self.require_org(org)?;
        let at = now().to_rfc3339();
        let record = WebhookRecord {
            id: Uuid::now_v7(),
            url: url.trim().to_string(),
            events,
            segments,
            enabled: true,
            disabled_reason: None,
            secret: self.inner.ports.webhooks.new_secret()?,
            previous_secrets: Vec::new(),
            created_at: at.clone(),
            updated_at: at,
        };
        self.check_webhook(org, &record)?;
        let mut writes = vec![StateWrite::Put(
            webhook_key(org, record.id),
            encode(&record),
        )];
        // The first endpoint after none starts a new marker epoch.
        let (first, epoch) = self
            .inner
            .catalog
            .with_org(org, |o| (o.webhooks.is_empty(), o.endpoint_epoch + 1))
            .unwrap_or((false, 0));
        if first {
            writes.push(StateWrite::Put(epoch_key(org), encode(&epoch)));
        }
        let stored = record.clone();
        self.inner
            .catalog
            .commit(&*self.inner.ports.store, writes, |c| {
                if first {
                    c.set_endpoint_epoch(org, epoch);
                }
                c.put_webhook(org, stored)
            })?;
        self.start_dispatcher(org, record.id);
        Ok(WebhookInfo::of(&record, true))
    }

    fn webhook_record(&self, org: Uuid, id: Uuid) -> Result<WebhookRecord, RuntimeError> {
        self.require_org(org)?;
        self.inner
            .catalog
            .webhook(org, id)
            .ok_or_else(|| RuntimeError::NotFound("webhook".into()))
    }

    pub fn get_webhook(&self, org: Uuid, id: Uuid) -> Result<WebhookInfo, RuntimeError> {
        Ok(WebhookInfo::of(&self.webhook_record(org, id)?, false))
    }

    pub fn list_webhooks(&self, org: Uuid) -> Result<Page<WebhookInfo>, RuntimeError> {
        self.require_org(org)?;
        let mut items: Vec<WebhookInfo> = self
            .inner
            .catalog
            .with_org(org, |o| {
                o.webhooks
                    .values()
                    .map(|w| WebhookInfo::of(w, false))
                    .collect()
            })
            .unwrap_or_default();
        items.sort_by_key(|w| w.id);
        Ok(Page {
            items,
            next_cursor: None,
        })
    }

    /// Applies `change` to the endpoint under the catalog's write lock and
    /// tells its dispatcher.
    fn change_webhook(
        &self,
        org: Uuid,
        id: Uuid,
        change: impl FnOnce(&mut WebhookRecord) -> Result<(), RuntimeError>,
    ) -> Result<WebhookRecord, RuntimeError> {
        self.require_org(org)?;
        let record = self
            .inner
            .catalog
            .modify_webhook(&*self.inner.ports.store, org, id, |record| {
                change(record)?;
                record.updated_at = now().to_rfc3339();
                Ok::<_, RuntimeError>(true)
            })?
            .ok_or_else(|| RuntimeError::NotFound("webhook".into()))?;
        if let Some(addr) = self.inner.registry.dispatcher(id) {
            let _ = addr.try_send(EndpointChanged);
        }
        Ok(record)
    }

    pub fn update_webhook(
        &self,
        org: Uuid,
        id: Uuid,
        change: WebhookChange,
    ) -> Result<WebhookInfo, RuntimeError> {
        let record = self.change_webhook(org, id, |record| {
            if let Some(url) = change.url {
                record.url = url.trim().to_string();
            }
            if let Some(events) = change.events {
                record.events = events;
            }
            if let Some(segments) = change.segments {
                record.segments = segments;
            }
            if let Some(enabled) = change.enabled {
                record.enabled = enabled;
                if enabled {
                    record.disabled_reason = None;
                }
            }
            self.check_webhook(org, record)
        })?;
        Ok(WebhookInfo::of(&record, false))
    }

    pub fn delete_webhook(&self, org: Uuid, id: Uuid) -> Result<(), RuntimeError> {
        self.require_org(org)?;
        if !self
            .inner
            .catalog
            .delete_webhook(&*self.inner.ports.store, org, id)?
        {
            return Err(RuntimeError::NotFound("webhook".into()));
        }
        if let Some(addr) = self.inner.registry.remove_dispatcher(id) {
            let _ = addr.try_send(StopDispatcher);
        }
        Ok(())
    }

    /// A new secret; the old one keeps signing for 24 hours so receivers can
    /// switch without a gap.
    pub fn rotate_webhook_secret(&self, org: Uuid, id: Uuid) -> Result<WebhookInfo, RuntimeError> {
        let secret = self.inner.ports.webhooks.new_secret()?;
        let record = self.change_webhook(org, id, |record| {
            let at = now().0;
            let old = std::mem::replace(&mut record.secret, secret);
            record.previous_secrets.retain(|(_, until)| *until > at);
            record.previous_secrets.push((old, at + 24 * 3_600_000));
            Ok(())
        })?;
        Ok(WebhookInfo::of(&record, true))
    }

    /// Queues a `webhook.test` delivery to the endpoint.
    pub fn test_webhook(&self, org: Uuid, id: Uuid) -> Result<String, RuntimeError> {
        let record = self.webhook_record(org, id)?;
        let slug = self
            .inner
            .catalog
            .org(org)
            .map(|o| o.slug)
            .unwrap_or_default();
        let at = now();
        let payload = json!({
            "type": "webhook.test",
            "timestamp": at.to_rfc3339(),
            "data": {"organization": slug, "endpoint": record.id},
        });
        let delivery = DeliveryRecord::new(id, payload, at);
        let write = StateWrite::Put(delivery_key(org, id, &delivery.id), encode(&delivery));
        self.inner.ports.store.commit(vec![write], true)?;
        let delivery_id = delivery.id.clone();
        self.inner
            .registry
            .notify_dispatchers(vec![(org, delivery)]);
        Ok(delivery_id)
    }

    /// The endpoint's deliveries, oldest first, optionally of one status.
    pub fn deliveries(
        &self,
        org: Uuid,
        id: Uuid,
        status: Option<DeliveryStatus>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<DeliveryRecord>, RuntimeError> {
        self.webhook_record(org, id)?;
        let prefix = delivery_prefix(org, id);
        let mut after = cursor.map(|c| delivery_key(org, id, c));
        let mut items = Vec::new();
        let mut next_cursor = None;
        'pages: loop {
            let page = self
                .inner
                .ports
                .store
                .scan(&prefix, after.as_deref(), 512)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (_, value) in page {
                let Ok(d) = serde_json::from_slice::<DeliveryRecord>(&value) else {
                    continue;
                };
                if status.is_none_or(|s| s == d.status) {
                    items.push(d);
                    if items.len() == limit {
                        next_cursor = items.last().map(|d| d.id.clone());
                        break 'pages;
                    }
                }
            }
        }
        Ok(Page { items, next_cursor })
    }

    /// Sends a delivery again (a dead letter, or a delivered one on request).
    pub async fn replay_delivery(
        &self,
        org: Uuid,
        id: Uuid,
        delivery: &str,
    ) -> Result<(), RuntimeError> {
        self.webhook_record(org, id)?;
        let addr = self
            .inner
            .registry
            .dispatcher(id)
            .ok_or_else(|| RuntimeError::Internal("no dispatcher for the endpoint".into()))?;
        if addr.send(Replay(delivery.to_string())).await? {
            Ok(())
        } else {
            Err(RuntimeError::NotFound("delivery".into()))
        }
    }
}

fn encode_cursor(partition: u32, row: u32) -> String {
    URL_SAFE_NO_PAD.encode(format!("{partition}:{row}"))
}

fn decode_cursor(cursor: &str) -> Option<(u32, Option<u32>)> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (p, r) = text.split_once(':')?;
    Some((p.parse().ok()?, Some(r.parse().ok()?)))
}

/// The number of log partitions is fixed at the first start: customers are
/// hashed to partitions, so another count would put them on shards that do
/// not hold their state.
fn check_partitions(store: &dyn StatePort, partitions: u32) -> Result<(), RuntimeError> {
    const KEY: &[u8] = b"g/partitions";
    match store.get(KEY)? {
        Some(bytes) => {
            let stored = bytes
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .unwrap_or(0);
            if stored != partitions {
                return Err(invalid(
                    "storage.partitions",
                    format!(
                        "this data folder was created with {stored} partitions; {partitions} would put customers on shards without their state"
                    ),
                ));
            }
            Ok(())
        }
        None => Ok(store.commit(
            vec![StateWrite::Put(
                KEY.to_vec(),
                partitions.to_be_bytes().to_vec(),
            )],
            true,
        )?),
    }
}

/// Creates the bootstrap organization and keys when missing; registers keys
/// given in the configuration that the store does not know yet.
fn bootstrap(
    catalog: &Catalog,
    store: &dyn StatePort,
    b: &Bootstrap,
) -> Result<Generated, RuntimeError> {
    let slug = b.org.trim();
    crate::catalog::check_slug(slug).map_err(|reason| invalid("bootstrap.org", reason))?;
    let mut generated = Generated::default();
    let mut writes = Vec::new();
    let at = now().to_rfc3339();
    let (org, created) = match catalog.org_by_slug(slug) {
        Some(o) => (o, false),
        None => {
            let o = OrgRecord {
                id: Uuid::now_v7(),
                slug: slug.to_string(),
                name: String::new(),
                created_at: at.clone(),
            };
            writes.push(StateWrite::Put(org_key(slug), encode(&o)));
            (o, true)
        }
    };
    // A configured key is registered whenever missing; an absent one is
    // generated (and reported once) only when the organization is new.
    let key = |configured: &Option<String>,
               prefix: &str,
               shown: &mut Option<String>|
     -> Result<Option<String>, RuntimeError> {
        Ok(match (configured, created) {
            (Some(k), _) => Some(k.clone()),
            (None, true) => {
                let k = crate::identity::new_secret(prefix)?;
                *shown = Some(k.clone());
                Some(k)
            }
            (None, false) => None,
        })
    };
    let write_key = key(&b.write_key, "wk_", &mut generated.write_key)?;
    let admin_key = key(&b.admin_api_key, "xk_", &mut generated.admin_api_key)?;
    let mut key_records = Vec::new();
    if let Some(k) = &write_key
        && catalog.org_for_write_key(k).is_none()
    {
        writes.push(StateWrite::Put(write_key_key(k), encode(&org.id)));
    }
    if let Some(k) = &admin_key
        && catalog.api_key(k).is_none()
    {
        let record = ApiKeyRecord {
            id: Uuid::now_v7(),
            org: org.id,
            role: Role::Owner,
            name: "bootstrap admin key".into(),
            created_at: at,
        };
        writes.push(StateWrite::Put(api_key_key(k), encode(&record)));
        key_records.push((k.clone(), record));
    }
    if writes.is_empty() {
        return Ok(generated);
    }
    catalog.commit(store, writes, |c| {
        c.put_org(org.clone());
        if let Some(k) = &write_key {
            c.put_write_key(k, org.id);
        }
        for (k, r) in key_records {
            c.put_api_key(&k, r);
        }
    })?;
    if created {
        tracing::info!(org = %org.slug, id = %org.id, "bootstrap organization created");
    }
    Ok(generated)
}
