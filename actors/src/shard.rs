//! The shard actor: owns one partition of the event log and, for every tenant
//! with customers in it, one engine [`Shard`].
//!
//! ```text
//! facade ──Append{offsets, records}──> ShardActor ──(reorder by offset)──> Shard::apply
//! clock  ──Tick{now}────────────────>            ──> Shard::advance_time
//!                                        │ deltas
//!                                        ├─> outbox: deliveries + outboxed offset, one durable commit
//!                                        ├─> dispatchers (per endpoint): "new deliveries"
//!                                        └─> segment actors: live counts
//!   every few seconds: snapshot of every tenant + consumed offset, one durable commit
//! ```
//!
//! Exactly-once effect: state is recovered from the last snapshot (taken at
//! consumed offset `S`) and the log is replayed from `S`; `messageId` dedup in
//! the engine absorbs records that were logged twice (a client retry). Deltas of
//! records below the outboxed offset `O` were already committed to the outbox
//! before the crash and are not produced again.
//!
//! A panic inside the engine is caught; the tenant's shard is rebuilt from its
//! snapshot and the log (other tenants are not touched), and the record that
//! panicked is skipped and logged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;

use actix::prelude::*;
use serde_json::{Map, Value as Json, json};
use uuid::Uuid;
use xeno_engine::model::{AttrType, Event};
use xeno_engine::ports::{EventLogPort, PortError, StatePort, StateWrite};
use xeno_engine::rule::{Rule, dsl};
use xeno_engine::shard::{Cause, Delta, SegmentError, SegmentId, Shard, ShardConfig, Transition};
use xeno_engine::time::Timestamp;

use crate::catalog::{Catalog, delivery_key, encode, shard_key};
use crate::dispatch::{DeliveryRecord, DeliveryStatus};
use crate::record::{LogRecord, TenantHistory, partition_of, read_range};
use crate::registry::Registry;

mod people;
pub use people::*;

/// Settings of a shard actor.
#[derive(Debug, Clone, Copy)]
pub struct ShardSettings {
    pub engine: ShardConfig,
    /// Snapshot at least this often...
    pub snapshot_every: std::time::Duration,
    /// ...or after this many events, whichever comes first.
    pub snapshot_after_events: u64,
    /// Log records older than this (by receive time) are deleted once a
    /// snapshot covers them.
    pub log_retention_ms: i64,
}

fn partition_key(partition: u32, what: &str) -> Vec<u8> {
    format!("p/{partition:08}/{what}").into_bytes()
}

fn read_u64(store: &dyn StatePort, key: &[u8]) -> Result<u64, PortError> {
    Ok(store
        .get(key)?
        .and_then(|b| b.get(..8).and_then(|b| b.try_into().ok()))
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// Records to apply, starting at log offset `first`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Append {
    pub first: u64,
    pub records: Vec<LogRecord>,
}

/// Answers (through `done`) once every record below offset `until` is
/// applied: a writer that reads its own write next waits for this.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WhenApplied {
    pub until: u64,
    pub done: tokio::sync::oneshot::Sender<()>,
}

/// The clock: advance every tenant to `now`, flush what is due.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Tick {
    pub now: Timestamp,
}

/// Adds the segment, or replaces its rule (only customers whose membership
/// changes get a delta).
#[derive(Message)]
#[rtype(result = "Result<(), SegmentError>")]
pub struct PutSegment {
    pub org: Uuid,
    pub engine_id: u64,
    pub rule: Rule,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoveSegment {
    pub org: Uuid,
    pub engine_id: u64,
}

/// An ad-hoc rule over this partition's customers of `org`.
#[derive(Message)]
#[rtype(result = "Result<(u64, Vec<String>), SegmentError>")]
pub struct Preview {
    pub org: Uuid,
    pub rule: Rule,
    pub sample: usize,
}

/// Members of a segment in this partition with a dense id above `after`.
#[derive(Message)]
#[rtype(result = "(u64, Vec<(u32, String)>)")]
pub struct Members {
    pub org: Uuid,
    pub engine_id: u64,
    pub after: Option<u32>,
    pub limit: usize,
}

/// A customer's attributes, computed traits and segments (engine ids).
#[derive(Message)]
#[rtype(result = "Option<CustomerData>")]
pub struct GetCustomer {
    pub org: Uuid,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CustomerData {
    pub id: String,
    pub attributes: Map<String, Json>,
    pub computed: Map<String, Json>,
    pub segments: Vec<u64>,
}

/// The types this partition's shard of `org` knows for `names`.
#[derive(Message)]
#[rtype(result = "Vec<(String, AttrType)>")]
pub struct FieldTypes {
    pub org: Uuid,
    pub names: Vec<String>,
}

/// Declares attribute types on this partition's shard of `org`.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct DeclareFields {
    pub org: Uuid,
    pub fields: Vec<(String, AttrType)>,
}

/// A background snapshot finished.
#[derive(Message)]
#[rtype(result = "()")]
struct SnapshotDone {
    offset: u64,
    now: Timestamp,
    started: Instant,
    result: Result<(), PortError>,
}

/// The writes of a snapshot of `tenants` at consumed offset `offset`: each
/// tenant's state, the partition's snapshot offset, and a retention checkpoint.
fn snapshot_writes<'a>(
    partition: u32,
    offset: u64,
    now: Timestamp,
    tenants: impl Iterator<Item = (&'a Uuid, &'a Shard)>,
) -> Result<(Vec<StateWrite>, usize), PortError> {
    let mut writes = Vec::new();
    let mut bytes_total = 0usize;
    for (org, shard) in tenants {
        let snapshot = shard
            .snapshot()
            .map_err(|e| PortError::permanent(e.to_string()))?;
        let mut value = Vec::with_capacity(8 + snapshot.len());
        value.extend_from_slice(&offset.to_be_bytes());
        value.extend_from_slice(&snapshot);
        bytes_total += value.len();
        writes.push(StateWrite::Put(shard_key(*org, partition), value));
    }
    writes.push(StateWrite::Put(
        partition_key(partition, "snapshot"),
        offset.to_be_bytes().to_vec(),
    ));
    writes.push(StateWrite::Put(
        partition_key(partition, &format!("checkpoint/{:020}", now.0.max(0))),
        offset.to_be_bytes().to_vec(),
    ));
    Ok((writes, bytes_total))
}

/// Takes a snapshot now (shutdown).
#[derive(Message)]
#[rtype(result = "Result<(), PortError>")]
pub struct SnapshotNow;

/// The shard actor. See the module docs.
pub struct ShardActor {
    partition: u32,
    settings: ShardSettings,
    log: Arc<dyn EventLogPort>,
    store: Arc<dyn StatePort>,
    catalog: Arc<Catalog>,
    registry: Arc<Registry>,
    tenants: HashMap<Uuid, Shard>,
    /// Next log offset to apply (everything below is in `tenants`).
    applied: u64,
    /// Deltas of records below this offset are in the outbox already.
    outboxed: u64,
    /// Offset of the last durable snapshot.
    snapshot_at: u64,
    pending: BTreeMap<u64, Vec<LogRecord>>,
    gap_since: Option<Instant>,
    /// Events accepted by the facade and not yet applied (backpressure).
    inflight: Arc<AtomicI64>,
    /// Events of merged customers, re-keyed to the profile they were merged
    /// into, waiting to be appended to that profile's partition.
    forwards: Vec<LogRecord>,
    /// Organizations with a merge to finish once forwarding works again.
    merge_retry: HashSet<Uuid>,
    /// Deltas waiting for their outbox commit.
    deltas: Vec<(Uuid, Delta)>,
    /// Deliveries whose commit failed; retried on the next tick.
    unflushed: Vec<(Uuid, DeliveryRecord)>,
    /// Last-transition markers of that commit.
    unflushed_markers: HashMap<Vec<u8>, Vec<u8>>,
    counts_changed: HashSet<(Uuid, u64)>,
    last_snapshot: Instant,
    events_since_snapshot: u64,
    snapshot_in_flight: bool,
    /// Erasures waiting for a log scan, per organization: suppression hash
    /// -> end of the suppression.
    erase_queue: HashMap<Uuid, HashMap<String, i64>>,
    /// A log scan of erasures runs.
    erase_running: bool,
    /// Organizations deleted while this actor ran (see [`DropTenant`]): their
    /// records are skipped (and tombstoned), their state never snapshotted.
    dropped: HashSet<Uuid>,
    /// Offsets of records of deleted organizations applied since their
    /// deletion (a request in flight during it), to tombstone at the next tick.
    drop_tombstones: Vec<u64>,
    /// Deletions waiting for the snapshot in flight (which may still write
    /// their tenant's snapshot) before they delete it and answer.
    drop_waiters: Vec<DropWaiter>,
    /// This actor's address, for threads that report back.
    self_addr: Option<Addr<ShardActor>>,
    /// Writers waiting for an offset to be applied (see [`WhenApplied`]).
    waiters: Vec<(u64, tokio::sync::oneshot::Sender<()>)>,
    /// State changed without a log record (an erasure, a field type
    /// change): the next snapshot is due even at the same offset.
    state_changed: bool,
    /// When the last `Append` arrived.
    last_append: Instant,
    /// Recovery failed: the actor serves nothing and writes nothing, so a
    /// half-loaded state never overwrites good snapshots.
    failed: bool,
    /// Set by the clock when a tick is queued, so at most one waits.
    pub(crate) tick_queued: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
}

impl ShardActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        partition: u32,
        settings: ShardSettings,
        log: Arc<dyn EventLogPort>,
        store: Arc<dyn StatePort>,
        catalog: Arc<Catalog>,
        registry: Arc<Registry>,
        inflight: Arc<AtomicI64>,
        ready: Arc<AtomicBool>,
    ) -> ShardActor {
        ShardActor {
            partition,
            settings,
            log,
            store,
            catalog,
            registry,
            tenants: HashMap::new(),
            applied: 0,
            outboxed: 0,
            snapshot_at: 0,
            pending: BTreeMap::new(),
            gap_since: None,
            inflight,
            forwards: Vec::new(),
            merge_retry: HashSet::new(),
            deltas: Vec::new(),
            unflushed: Vec::new(),
            unflushed_markers: HashMap::new(),
            counts_changed: HashSet::new(),
            last_snapshot: Instant::now(),
            events_since_snapshot: 0,
            snapshot_in_flight: false,
            state_changed: false,
            waiters: Vec::new(),
            erase_queue: HashMap::new(),
            erase_running: false,
            dropped: HashSet::new(),
            drop_tombstones: Vec::new(),
            drop_waiters: Vec::new(),
            self_addr: None,
            last_append: Instant::now(),
            failed: false,
            tick_queued: Arc::new(AtomicBool::new(false)),
            ready,
        }
    }

    /// Restores the last snapshot, replays the log tail and reconciles the
    /// segments with the catalog. On failure the actor stays unready and
    /// inert (see `failed`).
    pub fn recover(&mut self) -> Result<(), PortError> {
        let result = self.recover_inner();
        if result.is_err() {
            self.failed = true;
            self.tenants.clear();
            self.pending.clear();
        }
        result
    }

    fn recover_inner(&mut self) -> Result<(), PortError> {
        let started = Instant::now();
        let store = self.store.clone();
        self.snapshot_at = read_u64(&*store, &partition_key(self.partition, "snapshot"))?;
        self.outboxed = read_u64(&*store, &partition_key(self.partition, "outboxed"))?;
        self.applied = self.snapshot_at;
        // The time each tenant's snapshot was taken at: an erasure newer than
        // it is done again after the replay.
        let mut snapshot_times = HashMap::new();
        for org in self.catalog.org_ids() {
            if let Some(shard) = self.load_tenant(org)? {
                snapshot_times.insert(org, shard.now());
                self.tenants.insert(org, shard);
            }
        }
        // Segments created or changed after the snapshot exist before the
        // replay, so the replayed events produce their transitions.
        self.reconcile_segments();
        let log = self.log.clone();
        let mut replayed = 0u64;
        read_range(
            &*log,
            self.partition,
            self.applied,
            u64::MAX,
            &mut |offset, record| {
                if offset >= self.applied {
                    self.apply_record(offset, &record);
                    replayed += 1;
                }
            },
        )
        .map_err(|e| PortError::retryable(e.0))?;

        // Time passed while the server was down: windows that closed meanwhile
        // close now, before the shard serves.
        let now = crate::clock::now();
        for org in self.tenants.keys().copied().collect::<Vec<_>>() {
            let shard = self.tenants.get_mut(&org).expect("listed above");
            let mut out = Vec::new();
            match catch_unwind(AssertUnwindSafe(|| shard.advance_time(now, &mut out))) {
                Ok(()) => self.deltas.extend(out.into_iter().map(|d| (org, d))),
                Err(_) => self.recover_tenant_after_panic(org, self.applied),
            }
        }
        // Field type changes and erasures newer than the snapshot.
        self.reconcile_field_types();
        self.erase_suppressed(&snapshot_times);
        // Merges recorded but not carried out before the stop.
        for org in self.tenants.keys().copied().collect::<Vec<_>>() {
            self.finish_merges(org);
        }
        self.flush_forwards();
        self.flush();
        for org in self.tenants.keys().copied().collect::<Vec<_>>() {
            self.touch_all_counts(org);
        }
        self.publish_counts();
        tracing::info!(
            partition = self.partition,
            tenants = self.tenants.len(),
            snapshot_offset = self.snapshot_at,
            replayed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shard recovered"
        );
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// The tenant's shard from its snapshot, when it has one at the partition's
    /// snapshot offset.
    fn load_tenant(&self, org: Uuid) -> Result<Option<Shard>, PortError> {
        let Some(bytes) = self.store.get(&shard_key(org, self.partition))? else {
            return Ok(None);
        };
        if bytes.len() < 8 {
            return Err(PortError::permanent("a shard snapshot is truncated"));
        }
        match Shard::restore(&bytes[8..]) {
            Ok(shard) => Ok(Some(shard)),
            Err(e) => Err(PortError::permanent(format!(
                "the snapshot of partition {} of {org} does not restore: {e}",
                self.partition
            ))),
        }
    }

    fn new_tenant_shard(&self, org: Uuid) -> Shard {
        let mut shard = Shard::new(self.settings.engine);
        let (fields, segments) = self
            .catalog
            .with_org(org, |o| {
                let fields: Vec<(String, AttrType)> =
                    o.fields.iter().map(|(n, t)| (n.clone(), *t)).collect();
                let segments: Vec<(u64, String)> = o
                    .segments
                    .values()
                    .map(|s| (s.engine_id, s.rule.clone()))
                    .collect();
                (fields, segments)
            })
            .unwrap_or_default();
        for (name, ty) in fields {
            if let Err(e) = shard.declare_field(&name, ty) {
                tracing::error!(org = %org, field = %name, error = %e, "declaring a tenant field failed");
            }
        }
        let no_history: &[Event] = &[];
        let mut ignored = Vec::new();
        for (engine_id, text) in segments {
            match dsl::parse(&text) {
                Ok(rule) => {
                    if let Err(e) =
                        shard.add_segment(SegmentId(engine_id), rule, &no_history, &mut ignored)
                    {
                        tracing::error!(org = %org, engine_id, error = %e, "segment does not compile for a new tenant shard");
                    }
                }
                Err(e) => {
                    tracing::error!(org = %org, engine_id, error = %e, "stored segment rule does not parse")
                }
            }
        }
        shard
    }

    /// Makes every tenant's segments match the catalog (after a crash between a
    /// catalog write and the shards, or the other way round).
    fn reconcile_segments(&mut self) {
        let orgs: Vec<Uuid> = self.tenants.keys().copied().collect();
        for org in orgs {
            self.reconcile_tenant(org);
        }
    }

    fn reconcile_tenant(&mut self, org: Uuid) {
        if !self.tenants.contains_key(&org) {
            return;
        }
        {
            let wanted: Vec<(u64, String)> = self
                .catalog
                .with_org(org, |o| {
                    o.segments
                        .values()
                        .map(|s| (s.engine_id, s.rule.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let history = TenantHistory {
                log: &*self.log,
                partition: self.partition,
                org,
                until: self.applied,
            };
            let Some(shard) = self.tenants.get_mut(&org) else {
                return;
            };
            let mut deltas = Vec::new();
            let wanted_ids: HashSet<u64> = wanted.iter().map(|(id, _)| *id).collect();
            for (engine_id, text) in wanted {
                let Ok(rule) = dsl::parse(&text) else {
                    continue;
                };
                let id = SegmentId(engine_id);
                let result = match shard.segment_rule(id) {
                    None => shard.add_segment(id, rule, &history, &mut deltas),
                    Some((current, _)) if *current != rule => shard
                        .update_segment(id, rule, &history, &mut deltas)
                        .map(|_| ()),
                    Some(_) => Ok(()),
                };
                if let Err(e) = result {
                    tracing::error!(org = %org, engine_id, error = %e, "segment reconciliation failed");
                }
            }
            let extra: Vec<SegmentId> = shard
                .segment_ids()
                .filter(|id| !wanted_ids.contains(&id.0))
                .collect();
            for id in extra {
                let _ = shard.remove_segment(id);
            }
            self.deltas.extend(deltas.into_iter().map(|d| (org, d)));
        }
    }

    fn tenant(&mut self, org: Uuid) -> &mut Shard {
        if !self.tenants.contains_key(&org) {
            let shard = self.new_tenant_shard(org);
            self.tenants.insert(org, shard);
        }
        self.tenants.get_mut(&org).expect("inserted above")
    }

    /// Applies the record at `offset`; its deltas are queued for the outbox
    /// unless they are there already.
    fn apply_record(&mut self, offset: u64, record: &LogRecord) {
        if offset < self.applied {
            return;
        }
        if self.is_deleted_org(record.org) {
            // A deleted organization's record (met in a replay, or logged by
            // a request in flight during the deletion) never brings its
            // tenant back.
            if self.dropped.contains(&record.org) {
                self.drop_tombstones.push(offset);
            }
            metrics::counter!("xeno_events_of_deleted_orgs_total").increment(1);
            self.applied = offset + 1;
            return;
        }
        if offset > self.applied {
            tracing::warn!(
                partition = self.partition,
                from = self.applied,
                to = offset,
                "log records skipped"
            );
        }
        if let Some(into) = record
            .event
            .customer_key()
            .filter(|_| self.catalog.has_aliases(record.org))
            .and_then(|key| {
                self.catalog
                    .alias_of(record.org, key)
                    .filter(|into| into != key)
            })
        {
            // The customer was merged into `into`: the event belongs there.
            self.forwards.push(record.rekeyed(&into));
            self.applied = offset + 1;
            return;
        }
        if let Some(key) = record
            .event
            .customer_key()
            .filter(|_| self.catalog.has_suppressions(record.org))
            && self
                .catalog
                .suppression(record.org, key)
                .is_some_and(|s| record.received_at.0 < s.until)
        {
            // The customer was erased; this event was logged before (or in a
            // race with) the erasure and is never applied.
            metrics::counter!("xeno_events_suppressed_total").increment(1);
            self.applied = offset + 1;
            return;
        }
        let emit = offset >= self.outboxed;
        let org = record.org;
        let shard = self.tenant(org);
        let now = shard.now().max(record.received_at);
        let mut out = Vec::new();
        let result = catch_unwind(AssertUnwindSafe(|| {
            shard.advance_time(now, &mut out);
            shard.apply(&record.event, now, &mut out)
        }));
        match result {
            Ok(Ok(applied)) => {
                if !applied.rejected.is_empty() {
                    metrics::counter!("xeno_fields_rejected_total")
                        .increment(applied.rejected.len() as u64);
                }
                if applied.duplicate {
                    metrics::counter!("xeno_events_duplicate_total").increment(1);
                }
            }
            Ok(Err(e)) => {
                metrics::counter!("xeno_events_refused_total").increment(1);
                tracing::warn!(partition = self.partition, offset, org = %org, error = %e, "logged event refused by the engine");
            }
            Err(_) => {
                out.clear();
                self.recover_tenant_after_panic(org, offset);
            }
        }
        self.applied = offset + 1;
        self.events_since_snapshot += 1;
        if emit {
            self.deltas.extend(out.into_iter().map(|d| (org, d)));
        }
    }

    /// Rebuilds one tenant from its snapshot and the log up to `poison`, which
    /// is skipped.
    fn recover_tenant_after_panic(&mut self, org: Uuid, poison: u64) {
        metrics::counter!("xeno_actor_panics_total", "actor" => "shard").increment(1);
        tracing::error!(partition = self.partition, org = %org, offset = poison, "engine panicked; rebuilding the tenant's shard and skipping the event");
        self.tenants.remove(&org);
        let mut shard = match self.load_tenant(org) {
            Ok(Some(shard)) => shard,
            Ok(None) => self.new_tenant_shard(org),
            Err(e) => {
                tracing::error!(org = %org, error = %e, "tenant snapshot unreadable; rebuilding from the log only");
                self.new_tenant_shard(org)
            }
        };
        let mut ignored = Vec::new();
        let log = self.log.clone();
        let replay = read_range(
            &*log,
            self.partition,
            self.snapshot_at,
            poison,
            &mut |_, record| {
                if record.org == org {
                    let now = shard.now().max(record.received_at);
                    let _ = catch_unwind(AssertUnwindSafe(|| {
                        shard.advance_time(now, &mut ignored);
                        let _ = shard.apply(&record.event, now, &mut ignored);
                    }));
                    ignored.clear();
                }
            },
        );
        if let Err(e) = replay {
            tracing::error!(org = %org, error = %e, "log replay for a panicked tenant failed");
        }
        self.tenants.insert(org, shard);
        // Segments created or changed since the snapshot.
        self.reconcile_tenant(org);
        // Merged profiles come back from the replay and are merged again: their
        // events reach the target under the same derived ids (so once), and the
        // exits of a merge cut short by the panic are produced.
        self.finish_merges(org);
    }

    /// Applies what is contiguous in the reorder buffer.
    fn drain_pending(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            let first = *entry.key();
            if first > self.applied {
                self.gap_since.get_or_insert_with(Instant::now);
                return;
            }
            let records = entry.remove();
            let count = records.len() as i64;
            for (i, record) in records.iter().enumerate() {
                let offset = first + i as u64;
                if offset >= self.applied {
                    self.apply_record(offset, record);
                }
            }
            self.inflight.fetch_sub(count, Ordering::AcqRel);
        }
        self.gap_since = None;
    }

    /// Answers the writers whose offsets are applied now.
    fn wake_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let applied = self.applied;
        for (_, done) in self.waiters.extract_if(.., |(until, _)| *until <= applied) {
            let _ = done.send(());
        }
    }

    /// Reads from the log a range whose `Append` never came (its request was
    /// cancelled between the append and the send).
    fn repair_gap(&mut self) {
        let Some(&next) = self.pending.keys().next() else {
            self.gap_since = None;
            return;
        };
        let mut records = Vec::new();
        let log = self.log.clone();
        if let Err(e) = read_range(&*log, self.partition, self.applied, next, &mut |o, r| {
            records.push((o, r))
        }) {
            tracing::error!(partition = self.partition, error = %e, "reading a log gap failed");
            return;
        }
        tracing::warn!(
            partition = self.partition,
            from = self.applied,
            to = next,
            "applying a log range read back after a lost hand-off"
        );
        for (offset, record) in records {
            if offset >= self.applied {
                self.apply_record(offset, &record);
            }
        }
        // Offsets the read did not visit are erased events' tombstones: the
        // range up to the buffered hand-off is done.
        self.applied = self.applied.max(next);
        self.drain_pending();
    }

    /// Applies records past `applied` that no `Append` announced (their
    /// hand-off was lost, or they were appended while the shards were still
    /// starting). Called when the partition has been quiet for a while, so an
    /// `Append` still on its way finds them applied and is skipped.
    fn catch_up_tail(&mut self) {
        let mut records = Vec::new();
        let log = self.log.clone();
        let until = self.applied.saturating_add(4096);
        if let Err(e) = read_range(&*log, self.partition, self.applied, until, &mut |o, r| {
            records.push((o, r))
        }) {
            tracing::error!(partition = self.partition, error = %e, "reading the log tail failed");
            return;
        }
        if records.is_empty() {
            return;
        }
        tracing::warn!(
            partition = self.partition,
            from = self.applied,
            records = records.len(),
            "applying log records that were never handed off"
        );
        for (offset, record) in records {
            self.apply_record(offset, &record);
        }
        self.drain_pending();
    }

    /// Merges each `from` profile of this partition into its `into` profile:
    /// the events `from` was built from are re-keyed to `into` and appended to
    /// `into`'s partition (so `into` gets the state it would have had with
    /// every event under its id), then `from` is removed, leaving its
    /// segments. Re-keyed events get derived message ids, so carrying a merge
    /// out twice (after a crash) applies them once.
    ///
    /// The events are found by reading this partition's retained log: a merge
    /// costs a scan of it (batched per request).
    fn merge(&mut self, org: Uuid, merges: Vec<(String, String)>) {
        let targets = self.merge_targets(org, merges);
        if targets.is_empty() {
            return;
        }
        match scan_for_merge(&*self.log, self.partition, self.applied, org, &targets) {
            Ok(moved) => self.complete_merge(org, targets, moved),
            Err(e) => {
                tracing::error!(partition = self.partition, org = %org, error = %e, "reading the log for a merge failed; retried at the next start")
            }
        }
    }

    /// [`Self::merge`] with the log scan on a thread of its own, so the
    /// partition keeps applying events meanwhile (new events of the merged ids
    /// are forwarded by `apply_record` already: the links exist).
    fn merge_in_background(
        &mut self,
        org: Uuid,
        merges: Vec<(String, String)>,
        ctx: &mut Context<Self>,
    ) {
        let targets = self.merge_targets(org, merges);
        if targets.is_empty() {
            return;
        }
        let (log, partition, until, addr) = (
            self.log.clone(),
            self.partition,
            self.applied,
            ctx.address(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("xeno-merge-{partition}"))
            .spawn(move || {
                let scanned = scan_for_merge(&*log, partition, until, org, &targets);
                addr.do_send(MergeScanned {
                    org,
                    targets,
                    scanned,
                });
            });
        if let Err(e) = spawned {
            tracing::error!(partition = self.partition, error = %e, "cannot start a merge thread; merging on the actor");
            self.finish_merges(org);
        }
    }

    /// The merges whose `from` profile exists here.
    fn merge_targets(&self, org: Uuid, merges: Vec<(String, String)>) -> HashMap<String, String> {
        let Some(shard) = self.tenants.get(&org) else {
            return HashMap::new();
        };
        merges
            .into_iter()
            .filter(|(from, _)| shard.customer_row(from).is_some())
            .collect()
    }

    /// Forwards the re-keyed events and removes the merged profiles.
    fn complete_merge(
        &mut self,
        org: Uuid,
        targets: HashMap<String, String>,
        moved: Vec<LogRecord>,
    ) {
        let count = moved.len();
        self.forwards.extend(moved);
        self.flush_forwards();
        if !self.forwards.is_empty() {
            // Not appended: keep the profiles; the next tick tries again.
            self.merge_retry.insert(org);
            return;
        }
        let mut out = Vec::new();
        if let Some(shard) = self.tenants.get_mut(&org) {
            for from in targets.keys() {
                shard.remove_customer(from, &mut out);
            }
        }
        metrics::counter!("xeno_profiles_merged_total").increment(targets.len() as u64);
        tracing::info!(partition = self.partition, org = %org, profiles = targets.len(), events = count, "profiles merged");
        self.deltas.extend(out.into_iter().map(|d| (org, d)));
    }

    /// Carries out the merges of `org` recorded in the catalog whose merged
    /// profile still exists in this partition (after a restart, a panic
    /// rebuild, or a merge whose forwarding failed).
    fn finish_merges(&mut self, org: Uuid) {
        let pending = self.pending_merges(org);
        if !pending.is_empty() {
            self.merge(org, pending);
        }
    }

    /// The recorded merges of `org` whose merged profile still exists here.
    fn pending_merges(&self, org: Uuid) -> Vec<(String, String)> {
        let Some(shard) = self.tenants.get(&org) else {
            return Vec::new();
        };
        if !self.catalog.has_aliases(org) {
            return Vec::new();
        }
        let partitions = self.log.partitions();
        let pending: Vec<(String, String)> = self
            .catalog
            .aliases(org)
            .into_iter()
            .filter(|(from, _)| {
                partition_of(org, from, partitions) == self.partition
                    && shard.customer_row(from).is_some()
            })
            .collect();
        pending
    }

    /// Appends forwarded events to their partitions and hands them to their
    /// shards. On failure they stay queued for the next tick.
    fn flush_forwards(&mut self) {
        if self.forwards.is_empty() {
            return;
        }
        let partitions = self.log.partitions();
        let mut by_partition: BTreeMap<u32, Vec<LogRecord>> = BTreeMap::new();
        for record in std::mem::take(&mut self.forwards) {
            let p = record
                .event
                .customer_key()
                .map_or(self.partition, |k| partition_of(record.org, k, partitions));
            by_partition.entry(p).or_default().push(record);
        }
        for (p, records) in by_partition {
            let encoded: Vec<Vec<u8>> = records.iter().map(LogRecord::encode).collect();
            match self.log.append(p, encoded) {
                Ok(range) => {
                    let Some((addr, flight)) = self.registry.shard(p) else {
                        continue; // read back from the log by the gap repair
                    };
                    let n = records.len() as i64;
                    flight.fetch_add(n, Ordering::AcqRel);
                    actix::spawn(async move {
                        let message = Append {
                            first: range.start,
                            records,
                        };
                        if addr.send(message).await.is_err() {
                            flight.fetch_sub(n, Ordering::AcqRel);
                        }
                    });
                }
                Err(e) => {
                    tracing::error!(partition = self.partition, to = p, error = %e, "forwarding merged events failed; retrying");
                    self.forwards.extend(records);
                }
            }
        }
    }

    /// Turns queued deltas into outbox deliveries, commits them with the
    /// outboxed offset, then tells the dispatchers.
    fn flush(&mut self) {
        let deltas = std::mem::take(&mut self.deltas);
        let mut deliveries = std::mem::take(&mut self.unflushed);
        let mut markers = std::mem::take(&mut self.unflushed_markers);
        let now = crate::clock::now();
        for (org, delta) in deltas {
            self.counts_changed.insert((org, delta.segment.0));
            let event_type = match delta.transition {
                Transition::Entered => "segment.entered",
                Transition::Exited => "segment.exited",
            };
            let Some((slug, segment_id, segment, endpoints, any_endpoint, epoch)) = self
                .catalog
                .with_org(org, |o| {
                    let segment_id = *o.by_engine_id.get(&delta.segment.0)?;
                    let segment = o.segments.get(&segment_id)?;
                    let endpoints: Vec<Uuid> = o
                        .webhooks
                        .values()
                        .filter(|w| w.wants(event_type, segment_id))
                        .map(|w| w.id)
                        .collect();
                    Some((
                        o.record.slug.clone(),
                        segment_id,
                        json!({"id": segment_id, "name": segment.name}),
                        endpoints,
                        !o.webhooks.is_empty(),
                        o.endpoint_epoch,
                    ))
                })
                .flatten()
            else {
                continue;
            };
            // Backfill deltas send nothing and need no marker: a missing
            // marker can only let a repeat through, never suppress.
            if !any_endpoint || delta.cause == Cause::Backfill {
                continue;
            }
            // The last transition per (segment, customer), kept while the
            // organization has endpoints. A pair's transitions alternate, so a
            // repeat of the last one is a transition produced again after a
            // restart (a window that closed before the crash, a rule change
            // reconciled again) and is not sent twice.
            let Some(customer_id) = self
                .tenants
                .get(&org)
                .and_then(|s| s.customer_id(delta.customer))
                .map(str::to_string)
            else {
                continue;
            };
            let key = last_transition_key(org, epoch, segment_id, &customer_id);
            let value = event_type.as_bytes().to_vec();
            let previous = match markers.get(&key) {
                Some(v) => Some(v.clone()),
                None => self.store.get(&key).ok().flatten(),
            };
            if previous.as_deref() == Some(value.as_slice()) {
                metrics::counter!("xeno_webhook_repeats_suppressed_total").increment(1);
                continue;
            }
            markers.insert(key, value);
            if endpoints.is_empty() {
                continue;
            }
            let customer = self.customer_json(org, delta.customer);
            let payload = json!({
                "type": event_type,
                "timestamp": now.to_rfc3339(),
                "data": {
                    "organization": slug,
                    "segment": segment,
                    "customer": customer,
                    "transition": delta.transition,
                    "at": delta.at.to_rfc3339(),
                    "cause": delta.cause,
                }
            });
            for endpoint in endpoints {
                deliveries.push((org, DeliveryRecord::new(endpoint, payload.clone(), now)));
            }
        }
        if deliveries.is_empty() && markers.is_empty() {
            return;
        }
        let mut writes: Vec<StateWrite> = deliveries
            .iter()
            .map(|(org, d)| StateWrite::Put(delivery_key(*org, d.endpoint, &d.id), encode(d)))
            .collect();
        writes.extend(
            markers
                .iter()
                .map(|(k, v)| StateWrite::Put(k.clone(), v.clone())),
        );
        // Markers alone need no fsync: losing one can only let a repeat
        // through (at least once), never suppress a transition.
        let durable = !deliveries.is_empty();
        if durable {
            writes.push(StateWrite::Put(
                partition_key(self.partition, "outboxed"),
                self.applied.to_be_bytes().to_vec(),
            ));
        }
        let started = Instant::now();
        match self.store.commit(writes, durable) {
            Ok(()) => {
                if durable {
                    metrics::histogram!("xeno_outbox_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!("xeno_webhook_deliveries_created_total")
                        .increment(deliveries.len() as u64);
                    self.outboxed = self.applied;
                    self.registry.notify_dispatchers(deliveries);
                }
            }
            Err(e) => {
                tracing::error!(partition = self.partition, error = %e, "outbox commit failed; retrying on the next tick");
                self.unflushed = deliveries;
                self.unflushed_markers = markers;
            }
        }
    }

    fn customer_json(&self, org: Uuid, row: u32) -> Json {
        let Some(shard) = self.tenants.get(&org) else {
            return Json::Null;
        };
        let Some(id) = shard.customer_id(row) else {
            return Json::Null;
        };
        match customer_data(shard, id) {
            Some(c) => {
                let mut traits = c.attributes;
                traits.insert("computed".into(), Json::Object(c.computed));
                json!({"id": c.id, "traits": traits})
            }
            None => json!({"id": id}),
        }
    }

    fn touch_all_counts(&mut self, org: Uuid) {
        if let Some(shard) = self.tenants.get(&org) {
            for id in shard.segment_ids() {
                self.counts_changed.insert((org, id.0));
            }
        }
    }

    fn publish_counts(&mut self) {
        for (org, engine_id) in std::mem::take(&mut self.counts_changed) {
            let count = self
                .tenants
                .get(&org)
                .and_then(|s| s.members(SegmentId(engine_id)))
                .map(|m| m.len())
                .unwrap_or(0);
            self.registry
                .publish_count(org, engine_id, self.partition, count);
        }
    }

    /// Starts a snapshot when one is due. The tenants' shards are cloned here
    /// (a memory copy) and serialised and committed on a thread of their own,
    /// so the partition keeps applying events meanwhile.
    fn maybe_snapshot(&mut self, ctx: &mut Context<Self>) {
        let due = self.last_snapshot.elapsed() >= self.settings.snapshot_every
            || self.events_since_snapshot >= self.settings.snapshot_after_events
            || self.state_changed;
        if !due
            || self.snapshot_in_flight
            || (self.applied <= self.snapshot_at && !self.state_changed)
        {
            return;
        }
        if !self.outbox_is_committed() {
            tracing::warn!(
                partition = self.partition,
                "snapshot postponed: the outbox is not committed yet"
            );
            return;
        }
        let started = Instant::now();
        // A change after this copy makes the next snapshot due again.
        self.state_changed = false;
        let copies: Vec<(Uuid, Shard)> = self
            .tenants
            .iter()
            .filter(|(org, _)| !self.dropped.contains(org))
            .map(|(org, shard)| (*org, shard.clone()))
            .collect();
        metrics::histogram!("xeno_snapshot_pause_seconds").record(started.elapsed().as_secs_f64());
        let (partition, offset, store, addr) = (
            self.partition,
            self.applied,
            self.store.clone(),
            ctx.address(),
        );
        self.snapshot_in_flight = true;
        let spawned = std::thread::Builder::new()
            .name(format!("xeno-snapshot-{partition}"))
            .spawn(move || {
                let now = crate::clock::now();
                let result =
                    snapshot_writes(partition, offset, now, copies.iter().map(|(o, s)| (o, s)))
                        .and_then(|(writes, _)| store.commit(writes, true));
                addr.do_send(SnapshotDone {
                    offset,
                    now,
                    started,
                    result,
                });
            });
        if let Err(e) = spawned {
            self.snapshot_in_flight = false;
            tracing::error!(partition = self.partition, error = %e, "cannot start the snapshot thread");
        }
    }

    /// Flushes pending deltas; whether the outbox holds everything applied.
    fn outbox_is_committed(&mut self) -> bool {
        // Forwarded events are applied (offsets passed) but not yet in their
        // partition's log: a snapshot now would lose them in a crash.
        self.flush_forwards();
        if !self.unflushed.is_empty() || !self.deltas.is_empty() {
            self.flush();
        }
        self.unflushed.is_empty() && self.forwards.is_empty()
    }

    /// Writes every tenant's state and the consumed offset in one durable
    /// commit, on this thread (shutdown), then applies log retention.
    fn snapshot(&mut self) -> Result<(), PortError> {
        if self.failed || (self.applied <= self.snapshot_at && !self.state_changed) {
            return Ok(());
        }
        if !self.outbox_is_committed() {
            return Err(PortError::retryable("the outbox is not committed yet"));
        }
        let started = Instant::now();
        let now = crate::clock::now();
        self.state_changed = false;
        let dropped = &self.dropped;
        let tenants = self
            .tenants
            .iter()
            .filter(|(org, _)| !dropped.contains(org));
        let (writes, _) = snapshot_writes(self.partition, self.applied, now, tenants)?;
        self.store.commit(writes, true)?;
        self.snapshot_written(self.applied, now, started);
        Ok(())
    }

    fn snapshot_written(&mut self, offset: u64, now: Timestamp, started: Instant) {
        for org in self.tenants.keys().copied().collect::<Vec<_>>() {
            self.touch_all_counts(org);
        }
        self.publish_counts();
        self.snapshot_at = self.snapshot_at.max(offset);
        self.last_snapshot = Instant::now();
        self.events_since_snapshot = self.applied.saturating_sub(offset);
        metrics::histogram!("xeno_snapshot_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!(partition = self.partition, offset, "snapshot written");
        self.apply_retention(now);
    }

    /// Deletes log records older than the retention that a snapshot covers:
    /// the newest checkpoint older than the retention tells up to where.
    fn apply_retention(&mut self, now: Timestamp) {
        let prefix = partition_key(self.partition, "checkpoint/");
        let Ok(checkpoints) = self.store.scan(&prefix, None, 10_000) else {
            return;
        };
        let horizon = now.0.saturating_sub(self.settings.log_retention_ms);
        let mut cut = None;
        let mut obsolete = Vec::new();
        for (key, value) in &checkpoints {
            let at: i64 = std::str::from_utf8(&key[prefix.len()..])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(i64::MAX);
            if at > horizon {
                break;
            }
            cut = Some(value.clone());
            obsolete.push(key.clone());
        }
        let Some(cut) = cut.and_then(|v| v.get(..8).and_then(|b| b.try_into().ok())) else {
            return;
        };
        let before = u64::from_be_bytes(cut).min(self.snapshot_at);
        match self.log.truncate_before(self.partition, before) {
            Ok(deleted) => {
                // Keep the checkpoint that marks the cut; drop older ones.
                obsolete.pop();
                let _ = self.store.commit(
                    obsolete.into_iter().map(StateWrite::Delete).collect(),
                    false,
                );
                if deleted > 0 {
                    tracing::info!(
                        partition = self.partition,
                        before,
                        deleted,
                        "log retention applied"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(partition = self.partition, error = %e, "log retention failed")
            }
        }
    }

    fn history(&self, org: Uuid) -> TenantHistory<'_> {
        TenantHistory {
            log: &*self.log,
            partition: self.partition,
            org,
            until: self.applied,
        }
    }

    /// Runs a segment change on one tenant with panic isolation.
    fn segment_change(
        &mut self,
        org: Uuid,
        change: impl FnOnce(&mut Shard, &TenantHistory<'_>, &mut Vec<Delta>) -> Result<(), SegmentError>,
    ) -> Result<(), SegmentError> {
        self.tenant(org);
        let mut shard = self.tenants.remove(&org).expect("created above");
        let mut out = Vec::new();
        let history = TenantHistory {
            log: &*self.log,
            partition: self.partition,
            org,
            until: self.applied,
        };
        let result = catch_unwind(AssertUnwindSafe(|| change(&mut shard, &history, &mut out)));
        self.tenants.insert(org, shard);
        match result {
            Ok(r) => {
                self.deltas.extend(out.into_iter().map(|d| (org, d)));
                self.flush();
                self.publish_counts();
                r
            }
            Err(_) => {
                self.recover_tenant_after_panic(org, self.applied);
                Err(SegmentError::History(xeno_engine::ports::HistoryError(
                    "the engine failed on this segment; the tenant was restored".into(),
                )))
            }
        }
    }
}

/// Makes one tenant's engine call panic after damaging its state, as a bug
/// would: a fault injection for the tests of panic isolation (the server never
/// sends it). Answers whether a tenant panicked and was rebuilt.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "bool")]
pub struct InjectEnginePanic {
    pub org: Uuid,
}

impl Handler<InjectEnginePanic> for ShardActor {
    type Result = bool;

    fn handle(&mut self, msg: InjectEnginePanic, _: &mut Self::Context) -> bool {
        if !self.tenants.contains_key(&msg.org) {
            return false;
        }
        let result = self.segment_change(msg.org, |shard, _, out| {
            if let Some(id) = shard.customer_id(1).map(str::to_string) {
                shard.remove_customer(&id, out);
            }
            panic!("injected engine panic");
        });
        result.is_err()
    }
}

/// Where the last transition of (segment, customer) is kept, per endpoint
/// epoch: `t/{org}/last/{epoch}/{segment}/{customer}`.
fn last_transition_key(org: Uuid, epoch: u64, segment: Uuid, customer: &str) -> Vec<u8> {
    format!("t/{org}/last/{epoch}/{segment}/{customer}").into_bytes()
}

/// Merge profiles of this partition into others (see [`ShardActor::merge`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct MergeCustomers {
    pub org: Uuid,
    /// (from, into) pairs; `from` lives in this partition.
    pub merges: Vec<(String, String)>,
}

impl Handler<MergeCustomers> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: MergeCustomers, ctx: &mut Self::Context) {
        if self.failed {
            return;
        }
        self.merge_in_background(msg.org, msg.merges, ctx);
    }
}

/// A background merge scan finished.
#[derive(Message)]
#[rtype(result = "()")]
struct MergeScanned {
    org: Uuid,
    targets: HashMap<String, String>,
    scanned: Result<Vec<LogRecord>, xeno_engine::ports::HistoryError>,
}

impl Handler<MergeScanned> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: MergeScanned, _: &mut Self::Context) {
        if self.failed || self.dropped.contains(&msg.org) {
            return;
        }
        match msg.scanned {
            Ok(moved) => self.complete_merge(msg.org, msg.targets, moved),
            Err(e) => {
                tracing::error!(partition = self.partition, org = %msg.org, error = %e, "reading the log for a merge failed; retrying");
                self.merge_retry.insert(msg.org);
            }
        }
        self.flush();
        self.publish_counts();
    }
}

/// The events of the `targets` profiles in `partition` below `until`,
/// re-keyed to the profiles they merge into.
fn scan_for_merge(
    log: &dyn EventLogPort,
    partition: u32,
    until: u64,
    org: Uuid,
    targets: &HashMap<String, String>,
) -> Result<Vec<LogRecord>, xeno_engine::ports::HistoryError> {
    let mut moved = Vec::new();
    read_range(log, partition, 0, until, &mut |_, record| {
        if record.org != org {
            return;
        }
        if let Some(into) = record.event.customer_key().and_then(|k| targets.get(k)) {
            moved.push(record.rekeyed(into));
        }
    })?;
    Ok(moved)
}

/// A customer's data from a shard, values as JSON.
pub fn customer_data(shard: &Shard, id: &str) -> Option<CustomerData> {
    let view = shard.customer(id)?;
    Some(CustomerData {
        id: view.id,
        attributes: view
            .attributes
            .into_iter()
            .map(|(k, v)| (k, v.to_json()))
            .collect(),
        computed: view
            .computed
            .into_iter()
            .map(|(k, v)| (k, v.to_json()))
            .collect(),
        segments: view.segments.into_iter().map(|s| s.0).collect(),
    })
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        self.self_addr = Some(ctx.address());
        // Erasure scans recovery asked for before the actor ran.
        self.start_erase_scan();
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if self.registry.halting.load(Ordering::Acquire) {
            return Running::Stop;
        }
        if let Err(e) = self.snapshot() {
            tracing::warn!(partition = self.partition, error = %e, "final snapshot failed");
        }
        Running::Stop
    }
}

impl Handler<Append> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: Append, _: &mut Self::Context) {
        if self.failed {
            self.inflight
                .fetch_sub(msg.records.len() as i64, Ordering::AcqRel);
            return;
        }
        let started = Instant::now();
        self.last_append = started;
        let count = msg.records.len() as u64;
        if msg.first + count <= self.applied {
            // Already applied (read back from the log after a gap).
            self.inflight.fetch_sub(count as i64, Ordering::AcqRel);
            return;
        }
        self.pending.insert(msg.first, msg.records);
        self.drain_pending();
        self.flush_forwards();
        self.flush();
        self.publish_counts();
        self.wake_waiters();
        metrics::counter!("xeno_events_applied_total").increment(count);
        metrics::histogram!("xeno_shard_apply_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("xeno_log_lag_events", "partition" => self.partition.to_string())
            .set(self.inflight.load(Ordering::Relaxed) as f64);
        metrics::gauge!("xeno_shard_reorder_buffer", "partition" => self.partition.to_string())
            .set(self.pending.len() as f64);
    }
}

impl Handler<WhenApplied> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: WhenApplied, _: &mut Self::Context) {
        if self.applied >= msg.until || self.failed {
            let _ = msg.done.send(());
        } else {
            self.waiters.push((msg.until, msg.done));
        }
    }
}

impl Handler<Tick> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: Tick, ctx: &mut Self::Context) {
        self.tick_queued.store(false, Ordering::Release);
        if self.failed {
            return;
        }
        self.tombstone_dropped_records();
        if self
            .gap_since
            .is_some_and(|since| since.elapsed() > std::time::Duration::from_secs(2))
        {
            self.repair_gap();
        }
        if self.pending.is_empty() && self.last_append.elapsed() > std::time::Duration::from_secs(1)
        {
            self.catch_up_tail();
        }
        // What a gap repair or the tail caught up on may be what a writer
        // waits for.
        self.wake_waiters();
        self.flush_forwards();
        if self.forwards.is_empty() {
            for org in std::mem::take(&mut self.merge_retry) {
                let pending = self.pending_merges(org);
                if !pending.is_empty() {
                    self.merge_in_background(org, pending, ctx);
                }
            }
        }
        let orgs: Vec<Uuid> = self.tenants.keys().copied().collect();
        for org in orgs {
            let shard = self.tenants.get_mut(&org).expect("listed above");
            if shard.next_deadline().is_none_or(|d| d > msg.now) {
                continue;
            }
            let mut out = Vec::new();
            let now = shard.now().max(msg.now);
            let result = catch_unwind(AssertUnwindSafe(|| shard.advance_time(now, &mut out)));
            match result {
                Ok(()) => self.deltas.extend(out.into_iter().map(|d| (org, d))),
                Err(_) => self.recover_tenant_after_panic(org, self.applied),
            }
        }
        self.flush_forwards();
        self.flush();
        self.publish_counts();
        self.maybe_snapshot(ctx);
    }
}

impl Handler<PutSegment> for ShardActor {
    type Result = Result<(), SegmentError>;

    fn handle(&mut self, msg: PutSegment, _: &mut Self::Context) -> Self::Result {
        let id = SegmentId(msg.engine_id);
        self.segment_change(msg.org, |shard, history, out| {
            if shard.segment_rule(id).is_some() {
                shard.update_segment(id, msg.rule, history, out).map(|_| ())
            } else {
                shard.add_segment(id, msg.rule, history, out)
            }
        })
    }
}

impl Handler<RemoveSegment> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: RemoveSegment, _: &mut Self::Context) {
        if let Some(shard) = self.tenants.get_mut(&msg.org) {
            let _ = shard.remove_segment(SegmentId(msg.engine_id));
        }
        self.registry
            .publish_count(msg.org, msg.engine_id, self.partition, 0);
    }
}

impl Handler<Preview> for ShardActor {
    type Result = Result<(u64, Vec<String>), SegmentError>;

    fn handle(&mut self, msg: Preview, _: &mut Self::Context) -> Self::Result {
        let Some(shard) = self.tenants.get(&msg.org) else {
            // No customer here yet: validate the rule on an empty shard.
            let empty = Shard::new(self.settings.engine);
            let no_history: &[Event] = &[];
            catch_unwind(AssertUnwindSafe(|| {
                empty.preview(&msg.rule, 0, &no_history)
            }))
            .map_err(|_| {
                SegmentError::History(xeno_engine::ports::HistoryError(
                    "the engine failed on this rule".into(),
                ))
            })??;
            return Ok((0, Vec::new()));
        };
        let history = self.history(msg.org);
        let preview = catch_unwind(AssertUnwindSafe(|| {
            shard.preview(&msg.rule, msg.sample, &history)
        }))
        .map_err(|_| {
            SegmentError::History(xeno_engine::ports::HistoryError(
                "the engine failed on this rule".into(),
            ))
        })??;
        let sample = preview
            .sample
            .iter()
            .filter_map(|row| shard.customer_id(*row).map(str::to_string))
            .collect();
        Ok((preview.count, sample))
    }
}

impl Handler<Members> for ShardActor {
    type Result = MessageResult<Members>;

    fn handle(&mut self, msg: Members, _: &mut Self::Context) -> Self::Result {
        let Some(shard) = self.tenants.get(&msg.org) else {
            return MessageResult((0, Vec::new()));
        };
        let Some(members) = shard.members(SegmentId(msg.engine_id)) else {
            return MessageResult((0, Vec::new()));
        };
        let from = msg.after.map(|a| a.saturating_add(1)).unwrap_or(0);
        let page = members
            .range(from..)
            .take(msg.limit)
            .filter_map(|row| shard.customer_id(row).map(|id| (row, id.to_string())))
            .collect();
        MessageResult((members.len(), page))
    }
}

impl Handler<GetCustomer> for ShardActor {
    type Result = Option<CustomerData>;

    fn handle(&mut self, msg: GetCustomer, _: &mut Self::Context) -> Self::Result {
        customer_data(self.tenants.get(&msg.org)?, &msg.id)
    }
}

impl Handler<FieldTypes> for ShardActor {
    type Result = MessageResult<FieldTypes>;

    fn handle(&mut self, msg: FieldTypes, _: &mut Self::Context) -> Self::Result {
        let Some(shard) = self.tenants.get(&msg.org) else {
            return MessageResult(Vec::new());
        };
        MessageResult(
            msg.names
                .into_iter()
                .filter_map(|name| {
                    let ty = shard.schema().get(&name).map(|(_, def)| def.ty)?;
                    Some((name, ty))
                })
                .collect(),
        )
    }
}

impl Handler<DeclareFields> for ShardActor {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: DeclareFields, _: &mut Self::Context) -> Self::Result {
        let shard = self.tenant(msg.org);
        for (name, ty) in msg.fields {
            shard
                .declare_field(&name, ty)
                .map_err(|e| format!("`{name}`: {e}"))?;
        }
        Ok(())
    }
}

impl Handler<SnapshotDone> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: SnapshotDone, _: &mut Self::Context) {
        self.snapshot_in_flight = false;
        match msg.result {
            Ok(()) => self.snapshot_written(msg.offset, msg.now, msg.started),
            Err(e) => {
                self.last_snapshot = Instant::now();
                tracing::error!(partition = self.partition, error = %e, "snapshot failed; the log keeps everything since the last one");
            }
        }
        // The snapshot may have written tenants deleted meanwhile.
        self.answer_drop_waiters();
    }
}

impl Handler<SnapshotNow> for ShardActor {
    type Result = Result<(), PortError>;

    fn handle(&mut self, _: SnapshotNow, _: &mut Self::Context) -> Self::Result {
        self.snapshot()
    }
}

/// How a delivery starts its life.
impl DeliveryRecord {
    pub fn new(endpoint: Uuid, payload: Json, now: Timestamp) -> DeliveryRecord {
        DeliveryRecord {
            id: format!("msg_{}", Uuid::now_v7().simple()),
            endpoint,
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_status: None,
            next_attempt_at: Some(now.0),
            created_at: now.to_rfc3339(),
            finished_at: None,
            payload,
        }
    }
}
