//! Customer data on a shard actor: listing customers with a rule filter,
//! search and sort; segment members with their data (export); the schema and
//! changing a field's type with data in place; the values of a string field
//! (the importer's email lookup); erasure (right to be forgotten); and
//! forgetting a whole tenant when its organization is deleted.

use super::*;
use xeno_engine::model::FieldDef;
use xeno_engine::shard::{CustomerQuery, FieldTypeCheck, FieldTypeError, ListPosition};

use crate::catalog::{Suppression, suppression_hash};
use crate::record::ERASED;

/// One page of this partition's customers of `org` in the query's order.
#[derive(Message)]
#[rtype(result = "Result<Vec<(ListPosition, CustomerData)>, SegmentError>")]
pub struct QueryCustomers {
    pub org: Uuid,
    pub filter: Option<Rule>,
    pub search: Option<String>,
    pub sort: Option<String>,
    pub descending: bool,
    pub after: Option<ListPosition>,
    pub limit: usize,
}

/// Members of a segment with their data, after dense id `after`.
#[derive(Message)]
#[rtype(result = "Vec<(u32, CustomerData)>")]
pub struct MembersData {
    pub org: Uuid,
    pub engine_id: u64,
    pub after: Option<u32>,
    pub limit: usize,
}

/// Customers matching a filter and a search with their data, in dense-id
/// order after `after` (exports of a filtered list).
#[derive(Message)]
#[rtype(result = "Result<Vec<(u32, CustomerData)>, SegmentError>")]
pub struct MatchingData {
    pub org: Uuid,
    pub filter: Option<Rule>,
    pub search: Option<String>,
    pub after: Option<u32>,
    pub limit: usize,
}

/// The attribute fields this partition's shard of `org` knows.
#[derive(Message)]
#[rtype(result = "Vec<FieldDef>")]
pub struct GetSchema {
    pub org: Uuid,
}

/// How many customers hold a value of `name` that `ty` cannot hold.
#[derive(Message)]
#[rtype(result = "Result<FieldTypeCheck, FieldTypeError>")]
pub struct CheckFieldType {
    pub org: Uuid,
    pub name: String,
    pub ty: AttrType,
}

/// Changes the type of `name`, converting the values; declares it when this
/// partition has not seen it yet.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct ChangeFieldType {
    pub org: Uuid,
    pub name: String,
    pub ty: AttrType,
}

/// Every (value, customer id) of a string field.
#[derive(Message)]
#[rtype(result = "Vec<(String, String)>")]
pub struct StringValues {
    pub org: Uuid,
    pub field: String,
}

/// Erases customers: their profiles (exits are sent), every value the shard
/// kept of them, and their events in this partition's log. Answers how many
/// profiles existed here.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct EraseCustomers {
    pub org: Uuid,
    pub ids: Vec<String>,
    /// End of their suppression: events received before it are erased.
    pub until: i64,
}

/// Forgets a deleted organization on this partition: its engine state, what
/// waits for the outbox, and its snapshot (`t/{org}/shard/{partition}`).
/// From then on its records are skipped (and those logged after the
/// deletion's log scan are tombstoned at the next tick). Answers, through
/// `done`, how many customers it had here, once no snapshot in flight can
/// write its state back.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DropTenant {
    pub org: Uuid,
    pub done: tokio::sync::oneshot::Sender<Result<u64, PortError>>,
}

/// A [`DropTenant`] waiting for the snapshot in flight.
pub(super) struct DropWaiter {
    org: Uuid,
    customers: u64,
    done: tokio::sync::oneshot::Sender<Result<u64, PortError>>,
}

impl ShardActor {
    /// Whether `org` was deleted: dropped by this actor, or unknown to the
    /// catalog with no state here (a replay meeting the records of an
    /// organization deleted before the restart).
    pub(super) fn is_deleted_org(&self, org: Uuid) -> bool {
        (!self.dropped.is_empty() && self.dropped.contains(&org))
            || (!self.tenants.contains_key(&org) && self.catalog.with_org(org, |_| ()).is_none())
    }

    /// Deletes the snapshots of the tenants dropped while a snapshot was in
    /// flight, and answers their deletions.
    pub(super) fn answer_drop_waiters(&mut self) {
        for waiter in std::mem::take(&mut self.drop_waiters) {
            let deleted = self.store.commit(
                vec![StateWrite::Delete(shard_key(waiter.org, self.partition))],
                true,
            );
            let _ = waiter.done.send(deleted.map(|()| waiter.customers));
        }
    }

    /// Overwrites records of deleted organizations applied since their
    /// deletion with tombstones (kept for the next tick on failure).
    pub(super) fn tombstone_dropped_records(&mut self) {
        if self.drop_tombstones.is_empty() {
            return;
        }
        let offsets = std::mem::take(&mut self.drop_tombstones);
        let writes = offsets.iter().map(|o| (*o, ERASED.to_vec())).collect();
        match self.log.overwrite(self.partition, writes) {
            Ok(()) => {
                tracing::info!(
                    partition = self.partition,
                    records = offsets.len(),
                    "late records of deleted organizations overwritten"
                );
            }
            Err(e) => {
                tracing::error!(partition = self.partition, error = %e, "overwriting records of a deleted organization failed; retrying");
                self.drop_tombstones = offsets;
            }
        }
    }

    /// Removes and purges the given customers of `org`; exits go to the
    /// outbox before the ids are forgotten.
    pub(super) fn erase(&mut self, org: Uuid, ids: &[String]) -> usize {
        let Some(shard) = self.tenants.get_mut(&org) else {
            return 0;
        };
        let mut out = Vec::new();
        // The tenant's clock passes the erasure, so a snapshot taken from now
        // on tells recovery it already holds the erasure (see
        // `erase_suppressed`).
        let now = shard.now().max(crate::clock::now());
        shard.advance_time(now, &mut out);
        let mut rows = Vec::new();
        for id in ids {
            if let Some(row) = shard.customer_row(id)
                && shard.remove_customer(id, &mut out)
            {
                rows.push(row);
            }
        }
        self.deltas.extend(out.into_iter().map(|d| (org, d)));
        if rows.is_empty() {
            return 0;
        }
        // The exits' deliveries are built (with the ids) here; only then are
        // the ids dropped from memory.
        self.flush();
        self.publish_counts();
        if let Some(shard) = self.tenants.get_mut(&org) {
            for row in &rows {
                shard.purge_removed(*row);
            }
        }
        self.state_changed = true;
        rows.len()
    }

    /// Finishes erasures a stop interrupted. A profile erased after the
    /// tenant's snapshot was taken is back in memory (the replay skipped its
    /// events, the snapshot still had it): it is erased again. A profile
    /// created after its suppression ended is left alone (its snapshot is
    /// newer than the erasure). Logged events of erasures recent enough to
    /// still be in the log are tombstoned again (an interrupted or failed
    /// overwrite; records already overwritten are skipped).
    pub(super) fn erase_suppressed(&mut self, snapshot_times: &HashMap<Uuid, Timestamp>) {
        let horizon = crate::clock::now().0 - self.settings.log_retention_ms;
        for org in self.catalog.org_ids() {
            if !self.catalog.has_suppressions(org) {
                continue;
            }
            let mine: Vec<(String, Suppression)> = self
                .catalog
                .with_org(org, |o| {
                    o.suppressed
                        .iter()
                        .filter(|(_, s)| s.partition == self.partition)
                        .map(|(hash, s)| (hash.clone(), *s))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            // While a suppression lasts, no profile of its id may exist (every
            // write and replay refuses it): one that does came from a snapshot
            // the erasure did not reach. After it, only a snapshot older than
            // the erasure can hold the erased profile.
            let now = crate::clock::now().0;
            let snapshot_at = snapshot_times.get(&org).copied();
            let stale: HashSet<&String> = mine
                .iter()
                .filter(|(_, s)| s.until > now || snapshot_at.is_some_and(|t| t.0 < s.erased_at))
                .map(|(hash, _)| hash)
                .collect();
            if !stale.is_empty() {
                // The list keeps hashes only: find the ids among the customers.
                let ids: Vec<String> = self
                    .tenants
                    .get(&org)
                    .map(|shard| {
                        shard
                            .customer_ids()
                            .filter(|id| stale.contains(&suppression_hash(org, id)))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                self.erase(org, &ids);
            }
            let recent: HashMap<String, i64> = mine
                .into_iter()
                .filter(|(_, s)| s.erased_at > horizon)
                .map(|(hash, s)| (hash, s.until))
                .collect();
            if !recent.is_empty() {
                self.erase_logged_events(org, recent);
            }
        }
    }

    /// Overwrites the records of the customers ([`suppression_hash`] of the
    /// id -> end of its suppression) received before their suppression's end
    /// with tombstones, on a thread of its own (a scan of the retained log).
    /// Records received later belong to a customer who came back after the
    /// suppression and are kept. Requests that come while a scan runs are
    /// merged into the next one: a burst of erasures costs a few scans, not
    /// one each.
    fn erase_logged_events(&mut self, org: Uuid, hashes: HashMap<String, i64>) {
        self.erase_queue.entry(org).or_default().extend(hashes);
        self.start_erase_scan();
    }

    pub(super) fn start_erase_scan(&mut self) {
        if self.erase_running || self.erase_queue.is_empty() || self.self_addr.is_none() {
            return;
        }
        let work: HashMap<Uuid, HashMap<String, i64>> = std::mem::take(&mut self.erase_queue);
        let (log, partition) = (self.log.clone(), self.partition);
        let addr = self.self_addr.clone().expect("checked above");
        self.erase_running = true;
        let spawned = std::thread::Builder::new()
            .name(format!("xeno-erase-{partition}"))
            .spawn(move || {
                // Reported even if the scan panics, so later erasures still run.
                let _done = ScanDone(addr);
                let mut offsets = Vec::new();
                let scanned = read_range(&*log, partition, 0, u64::MAX, &mut |offset, record| {
                    let Some(hashes) = work.get(&record.org) else {
                        return;
                    };
                    let before_end = |id: &Option<String>| {
                        id.as_ref()
                            .and_then(|i| hashes.get(&suppression_hash(record.org, i)))
                            .is_some_and(|until| record.received_at.0 < *until)
                    };
                    if before_end(&record.event.user_id) || before_end(&record.event.anonymous_id) {
                        offsets.push(offset);
                    }
                });
                let result = scanned
                    .map_err(|e| PortError::retryable(e.0))
                    .and_then(|()| {
                        let count = offsets.len();
                        log.overwrite(
                            partition,
                            offsets.into_iter().map(|o| (o, ERASED.to_vec())).collect(),
                        )
                        .map(|()| count)
                    });
                match result {
                    Ok(count) => {
                        metrics::counter!("xeno_events_erased_total").increment(count as u64);
                        tracing::info!(
                            partition,
                            events = count,
                            "erased customers' events overwritten in the log"
                        );
                    }
                    // The suppression keeps them from being applied again; a
                    // restart scans again; retention deletes them in the end.
                    Err(e) => {
                        tracing::error!(partition, error = %e, "overwriting erased events failed")
                    }
                }
            });
        if let Err(e) = spawned {
            self.erase_running = false;
            tracing::error!(partition = self.partition, error = %e, "cannot start the erasure thread");
        }
    }

    /// Makes the shards' field types match the catalog's (a type change that
    /// reached the catalog but not a snapshot before a crash).
    pub(super) fn reconcile_field_types(&mut self) {
        for org in self.tenants.keys().copied().collect::<Vec<_>>() {
            let fields: Vec<(String, AttrType)> = self
                .catalog
                .with_org(org, |o| {
                    o.fields.iter().map(|(n, t)| (n.clone(), *t)).collect()
                })
                .unwrap_or_default();
            let shard = self.tenants.get_mut(&org).expect("listed above");
            let mut out = Vec::new();
            for (name, ty) in fields {
                let current = shard.schema().get(&name).map(|(_, f)| f.ty);
                if current.is_some_and(|c| c != ty)
                    && let Err(e) = shard.change_field_type(&name, ty, &mut out)
                {
                    tracing::error!(partition = self.partition, org = %org, field = %name, error = %e, "field keeps its old type on this partition");
                }
            }
            self.deltas.extend(out.into_iter().map(|d| (org, d)));
        }
    }
}

fn engine_failed() -> SegmentError {
    SegmentError::History(xeno_engine::ports::HistoryError(
        "the engine failed on this query".into(),
    ))
}

impl Handler<QueryCustomers> for ShardActor {
    type Result = MessageResult<QueryCustomers>;

    fn handle(&mut self, msg: QueryCustomers, _: &mut Self::Context) -> Self::Result {
        let query = CustomerQuery {
            filter: msg.filter.as_ref(),
            search: msg.search.as_deref(),
            sort: msg.sort.as_deref(),
            descending: msg.descending,
            after: msg.after.as_ref(),
            limit: msg.limit,
        };
        let Some(shard) = self.tenants.get(&msg.org) else {
            // No customer here: still check the query on an empty shard.
            let empty = Shard::new(self.settings.engine);
            let no_history: &[Event] = &[];
            let checked = catch_unwind(AssertUnwindSafe(|| {
                empty
                    .query_customers(&query, &no_history)
                    .map(|_| Vec::new())
            }));
            return MessageResult(checked.unwrap_or_else(|_| Err(engine_failed())));
        };
        let history = self.history(msg.org);
        let listed = catch_unwind(AssertUnwindSafe(|| shard.query_customers(&query, &history)));
        MessageResult(match listed {
            Ok(Ok(listed)) => Ok(listed
                .into_iter()
                .filter_map(|l| {
                    let data = customer_data(shard, &l.position.id)?;
                    Some((l.position, data))
                })
                .collect()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(engine_failed()),
        })
    }
}

impl Handler<MembersData> for ShardActor {
    type Result = MessageResult<MembersData>;

    fn handle(&mut self, msg: MembersData, _: &mut Self::Context) -> Self::Result {
        let Some(shard) = self.tenants.get(&msg.org) else {
            return MessageResult(Vec::new());
        };
        let Some(members) = shard.members(SegmentId(msg.engine_id)) else {
            return MessageResult(Vec::new());
        };
        let from = msg.after.map(|a| a.saturating_add(1)).unwrap_or(0);
        MessageResult(
            members
                .range(from..)
                .filter_map(|row| {
                    let id = shard.customer_id(row)?;
                    Some((row, customer_data(shard, id)?))
                })
                .take(msg.limit)
                .collect(),
        )
    }
}

impl Handler<MatchingData> for ShardActor {
    type Result = MessageResult<MatchingData>;

    fn handle(&mut self, msg: MatchingData, _: &mut Self::Context) -> Self::Result {
        let Some(shard) = self.tenants.get(&msg.org) else {
            return MessageResult(Ok(Vec::new()));
        };
        let history = self.history(msg.org);
        let rows = catch_unwind(AssertUnwindSafe(|| {
            shard.matching_rows(
                msg.filter.as_ref(),
                msg.search.as_deref(),
                msg.after,
                msg.limit,
                &history,
            )
        }));
        MessageResult(match rows {
            Ok(Ok(rows)) => Ok(rows
                .into_iter()
                .filter_map(|row| {
                    let id = shard.customer_id(row)?;
                    Some((row, customer_data(shard, id)?))
                })
                .collect()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(engine_failed()),
        })
    }
}

impl Handler<GetSchema> for ShardActor {
    type Result = MessageResult<GetSchema>;

    fn handle(&mut self, msg: GetSchema, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.tenants
                .get(&msg.org)
                .map(|s| s.schema().fields().to_vec())
                .unwrap_or_default(),
        )
    }
}

impl Handler<CheckFieldType> for ShardActor {
    type Result = MessageResult<CheckFieldType>;

    fn handle(&mut self, msg: CheckFieldType, _: &mut Self::Context) -> Self::Result {
        let Some(shard) = self.tenants.get(&msg.org) else {
            return MessageResult(Ok(FieldTypeCheck::default()));
        };
        if shard.schema().get(&msg.name).is_none() {
            return MessageResult(Ok(FieldTypeCheck::default()));
        }
        MessageResult(shard.check_field_type(&msg.name, msg.ty))
    }
}

impl Handler<ChangeFieldType> for ShardActor {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: ChangeFieldType, _: &mut Self::Context) -> Self::Result {
        let mut outcome = Ok(());
        let changed = self.segment_change(msg.org, |shard, _, out| {
            outcome = if shard.schema().get(&msg.name).is_none() {
                shard
                    .declare_field(&msg.name, msg.ty)
                    .map_err(|e| e.to_string())
            } else {
                shard
                    .change_field_type(&msg.name, msg.ty, out)
                    .map_err(|e| e.to_string())
            };
            Ok(())
        });
        changed.map_err(|e| e.to_string())?;
        if outcome.is_ok() {
            self.state_changed = true;
        }
        outcome
    }
}

impl Handler<StringValues> for ShardActor {
    type Result = MessageResult<StringValues>;

    fn handle(&mut self, msg: StringValues, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.tenants
                .get(&msg.org)
                .map(|s| s.string_values(&msg.field))
                .unwrap_or_default(),
        )
    }
}

/// Tells the actor its erasure scan ended, however it ended.
struct ScanDone(Addr<ShardActor>);

impl Drop for ScanDone {
    fn drop(&mut self) {
        self.0.do_send(EraseScanned);
    }
}

/// A log scan of erasures finished.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct EraseScanned;

impl Handler<EraseScanned> for ShardActor {
    type Result = ();

    fn handle(&mut self, _: EraseScanned, _: &mut Self::Context) {
        self.erase_running = false;
        self.start_erase_scan();
    }
}

impl Handler<EraseCustomers> for ShardActor {
    type Result = usize;

    fn handle(&mut self, msg: EraseCustomers, _: &mut Self::Context) -> usize {
        if self.failed {
            return 0;
        }
        let erased = self.erase(msg.org, &msg.ids);
        // Even when no profile lives here, events of the ids may.
        let (org, until) = (msg.org, msg.until);
        let hashes = msg
            .ids
            .iter()
            .map(|id| (suppression_hash(org, id), until))
            .collect();
        self.erase_logged_events(org, hashes);
        // The previous snapshot still holds the profiles: `erase` marked the
        // state changed, so the next tick writes a new one in the background
        // (a crash before that is covered by recovery, which erases again).
        erased
    }
}

impl Handler<DropTenant> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: DropTenant, _: &mut Self::Context) {
        let org = msg.org;
        self.dropped.insert(org);
        let customers = self
            .tenants
            .remove(&org)
            .map(|shard| shard.customer_count() as u64)
            .unwrap_or(0);
        // Nothing of it reaches the outbox, the log or the store any more.
        self.deltas.retain(|(o, _)| *o != org);
        self.unflushed.retain(|(o, _)| *o != org);
        let prefix = format!("t/{org}/").into_bytes();
        self.unflushed_markers
            .retain(|k, _| !k.starts_with(&prefix));
        self.forwards.retain(|r| r.org != org);
        self.merge_retry.remove(&org);
        self.erase_queue.remove(&org);
        self.counts_changed.retain(|(o, _)| *o != org);
        let waiter = DropWaiter {
            org,
            customers,
            done: msg.done,
        };
        self.drop_waiters.push(waiter);
        if !self.snapshot_in_flight {
            self.answer_drop_waiters();
        }
        tracing::info!(partition = self.partition, org = %org, customers, "tenant of a deleted organization dropped");
    }
}
