//! Where actors find each other: the dispatcher of each webhook endpoint and
//! the actor of each segment. Sends from the shard's hot path are `try_send`s
//! into bounded mailboxes; a message that does not fit is not lost: counts are
//! absolute (the next one heals a dropped one) and a dispatcher that missed a
//! notification rescans the durable outbox.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use actix::prelude::*;
use uuid::Uuid;

use crate::dispatch::{DeliveryRecord, NewDeliveries, WebhookDispatcher};
use crate::segment::{PartitionCount, SegmentActor};
use crate::shard::ShardActor;

pub struct DispatcherEntry {
    pub addr: Addr<WebhookDispatcher>,
    /// Set when a notification did not fit in the mailbox.
    pub missed: Arc<AtomicBool>,
}

#[derive(Default)]
pub struct Registry {
    /// Set when the runtime stops without final snapshots (a simulated crash).
    pub halting: AtomicBool,
    /// Each partition's shard actor and its count of events not yet applied.
    shards: RwLock<Vec<(Addr<ShardActor>, Arc<AtomicI64>)>>,
    dispatchers: RwLock<HashMap<Uuid, DispatcherEntry>>,
    segments: RwLock<HashMap<(Uuid, u64), Addr<SegmentActor>>>,
    partitions: u32,
    arbiter: Option<ArbiterHandle>,
}

impl Registry {
    pub fn new(partitions: u32, arbiter: ArbiterHandle) -> Registry {
        Registry {
            partitions,
            arbiter: Some(arbiter),
            ..Registry::default()
        }
    }

    pub fn set_shards(&self, shards: Vec<(Addr<ShardActor>, Arc<AtomicI64>)>) {
        *self.shards.write().unwrap_or_else(|p| p.into_inner()) = shards;
    }

    /// The shard actor of `partition` and its pending-events counter.
    pub fn shard(&self, partition: u32) -> Option<(Addr<ShardActor>, Arc<AtomicI64>)> {
        let shards = self.shards.read().unwrap_or_else(|p| p.into_inner());
        shards.get(partition as usize).cloned()
    }

    pub fn add_dispatcher(&self, endpoint: Uuid, entry: DispatcherEntry) {
        let mut map = self.dispatchers.write().unwrap_or_else(|p| p.into_inner());
        map.insert(endpoint, entry);
    }

    pub fn remove_dispatcher(&self, endpoint: Uuid) -> Option<Addr<WebhookDispatcher>> {
        let mut map = self.dispatchers.write().unwrap_or_else(|p| p.into_inner());
        map.remove(&endpoint).map(|e| e.addr)
    }

    pub fn dispatcher(&self, endpoint: Uuid) -> Option<Addr<WebhookDispatcher>> {
        let map = self.dispatchers.read().unwrap_or_else(|p| p.into_inner());
        map.get(&endpoint).map(|e| e.addr.clone())
    }

    /// Hands committed deliveries to their endpoints' dispatchers.
    pub fn notify_dispatchers(&self, deliveries: Vec<(Uuid, DeliveryRecord)>) {
        let mut by_endpoint: HashMap<Uuid, Vec<DeliveryRecord>> = HashMap::new();
        for (_, d) in deliveries {
            by_endpoint.entry(d.endpoint).or_default().push(d);
        }
        let map = self.dispatchers.read().unwrap_or_else(|p| p.into_inner());
        for (endpoint, records) in by_endpoint {
            let Some(entry) = map.get(&endpoint) else {
                continue;
            };
            if entry.addr.try_send(NewDeliveries(records)).is_err() {
                entry.missed.store(true, Ordering::Release);
                metrics::counter!("xeno_mailbox_full_total", "actor" => "dispatcher").increment(1);
            }
        }
    }

    /// The segment actor of `(org, engine_id)`, started on first use.
    pub fn segment(&self, org: Uuid, engine_id: u64) -> Option<Addr<SegmentActor>> {
        if let Some(addr) = self
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(org, engine_id))
        {
            return Some(addr.clone());
        }
        let arbiter = self.arbiter.as_ref()?;
        let mut map = self.segments.write().unwrap_or_else(|p| p.into_inner());
        let partitions = self.partitions;
        Some(
            map.entry((org, engine_id))
                .or_insert_with(|| {
                    SegmentActor::start_in_arbiter(arbiter, move |_| {
                        SegmentActor::new(org, engine_id, partitions)
                    })
                })
                .clone(),
        )
    }

    pub fn forget_segment(&self, org: Uuid, engine_id: u64) {
        let mut map = self.segments.write().unwrap_or_else(|p| p.into_inner());
        map.remove(&(org, engine_id));
    }

    pub fn publish_count(&self, org: Uuid, engine_id: u64, partition: u32, count: u64) {
        if let Some(addr) = self.segment(org, engine_id)
            && addr.try_send(PartitionCount { partition, count }).is_err()
        {
            metrics::counter!("xeno_mailbox_full_total", "actor" => "segment").increment(1);
        }
    }
}
