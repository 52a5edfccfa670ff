//! Webhook dispatchers: one actor per endpoint, so a slow or failing endpoint
//! never delays another.
//!
//! Deliveries are created durably in the outbox by the shard actors (key
//! `t/{org}/dl/{endpoint}/{id}`) before a dispatcher hears of them; the
//! dispatcher sends each at least once with its stable `webhook-id`, keeps up to
//! `max_in_flight` requests open, and records every outcome on the delivery:
//!
//! - 2xx: delivered;
//! - 410 Gone: the endpoint is disabled; deliveries already queued wait,
//!   pending, until it is enabled again, and no new ones are created for it
//!   meanwhile (a disabled endpoint is not subscribed);
//! - anything else: retried with exponential backoff and jitter
//!   (`first_retry`·2ⁿ, at most an hour apart) until `max_attempts`, about a day
//!   with the defaults; then the delivery is dead and can be replayed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use uuid::Uuid;
use xeno_engine::ports::{StatePort, StateWrite, WebhookOutcome, WebhookPort, WebhookRequest};

use crate::catalog::{Catalog, delivery_key, delivery_prefix, encode, scan_all};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

/// One webhook delivery: the outbox entry and its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryRecord {
    /// The `webhook-id`, stable across retries and replays.
    pub id: String,
    pub endpoint: Uuid,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// The last HTTP status, or why there was none.
    pub last_status: Option<String>,
    /// Unix ms of the next attempt, while pending.
    pub next_attempt_at: Option<i64>,
    pub created_at: String,
    /// When it was delivered or given up on (retention counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Json,
}

/// Dispatcher settings.
#[derive(Debug, Clone, Copy)]
pub struct DispatchSettings {
    pub first_retry: Duration,
    pub max_retry_interval: Duration,
    pub max_attempts: u32,
    pub max_in_flight: usize,
    pub timeout: Duration,
    /// Delivered deliveries are kept this long for the deliveries list, dead
    /// ones (the dead letters) ten times as long.
    pub history_retention: Duration,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            first_retry: Duration::from_secs(5),
            max_retry_interval: Duration::from_secs(3600),
            max_attempts: 32,
            max_in_flight: 16,
            timeout: Duration::from_secs(10),
            history_retention: Duration::from_secs(3 * 24 * 3600),
        }
    }
}

impl DispatchSettings {
    /// The wait before attempt `attempts + 1`, with ±20 % jitter.
    pub fn backoff(&self, attempts: u32, jitter_unit: f64) -> Duration {
        let base =
            self.first_retry.as_secs_f64() * 2f64.powi(attempts.saturating_sub(1).min(30) as i32);
        let capped = base.min(self.max_retry_interval.as_secs_f64());
        Duration::from_secs_f64(capped * (0.8 + 0.4 * jitter_unit.clamp(0.0, 1.0)))
    }
}

fn now_ms() -> i64 {
    crate::clock::now().0
}

fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
}

/// Deletes the delivered (and long-dead) deliveries of `endpoint` created
/// before their retention; returns how many went. Pending ones always stay.
pub fn prune_history(
    store: &dyn StatePort,
    org: Uuid,
    endpoint: Uuid,
    retention: Duration,
    now_ms: i64,
) -> Result<u64, xeno_engine::ports::PortError> {
    let delivered_before = now_ms - retention.as_millis() as i64;
    let dead_before = now_ms - 10 * retention.as_millis() as i64;
    let mut deleted = 0;
    let mut writes = Vec::new();
    scan_all(store, &delivery_prefix(org, endpoint), &mut |key, value| {
        let Ok(d) = serde_json::from_slice::<DeliveryRecord>(value) else {
            return Ok(());
        };
        let finished = d.finished_at.as_deref().unwrap_or(&d.created_at);
        let finished = xeno_engine::time::Timestamp::parse_rfc3339(finished)
            .map(|t| t.0)
            .unwrap_or(i64::MAX);
        let expired = match d.status {
            DeliveryStatus::Pending => false,
            DeliveryStatus::Delivered => finished < delivered_before,
            DeliveryStatus::Dead => finished < dead_before,
        };
        if expired {
            writes.push(StateWrite::Delete(key.to_vec()));
            deleted += 1;
        }
        if writes.len() >= 1024 {
            store.commit(std::mem::take(&mut writes), false)?;
        }
        Ok(())
    })?;
    if !writes.is_empty() {
        store.commit(writes, false)?;
    }
    Ok(deleted)
}

/// New deliveries, already durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct NewDeliveries(pub Vec<DeliveryRecord>);

/// The endpoint's settings changed (enabled again, new URL, new secret).
#[derive(Message)]
#[rtype(result = "()")]
pub struct EndpointChanged;

/// Send a dead or delivered delivery again.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Replay(pub String);

pub struct WebhookDispatcher {
    org: Uuid,
    endpoint: Uuid,
    settings: DispatchSettings,
    store: Arc<dyn StatePort>,
    catalog: Arc<Catalog>,
    port: Arc<dyn WebhookPort>,
    missed: Arc<AtomicBool>,
    ready: VecDeque<DeliveryRecord>,
    /// Waiting for a retry, by (next attempt ms, id).
    waiting: BTreeMap<(i64, String), DeliveryRecord>,
    /// Ids of the requests on the wire.
    in_flight: std::collections::HashSet<String>,
    /// Ids of every delivery this dispatcher holds (ready, waiting or on the
    /// wire) until its final outcome: a delivery announced twice (by a
    /// notification and by an outbox rescan) is queued once.
    known: std::collections::HashSet<String>,
}

impl WebhookDispatcher {
    pub fn new(
        org: Uuid,
        endpoint: Uuid,
        settings: DispatchSettings,
        store: Arc<dyn StatePort>,
        catalog: Arc<Catalog>,
        port: Arc<dyn WebhookPort>,
        missed: Arc<AtomicBool>,
    ) -> WebhookDispatcher {
        WebhookDispatcher {
            org,
            endpoint,
            settings,
            store,
            catalog,
            port,
            missed,
            ready: VecDeque::new(),
            waiting: BTreeMap::new(),
            in_flight: std::collections::HashSet::new(),
            known: std::collections::HashSet::new(),
        }
    }

    /// Queues every pending delivery of the outbox not already queued.
    fn load_pending(&mut self) {
        let (known, waiting) = (&mut self.known, &mut self.waiting);
        let scanned = scan_all(
            &*self.store,
            &delivery_prefix(self.org, self.endpoint),
            &mut |_, value| {
                if let Ok(d) = serde_json::from_slice::<DeliveryRecord>(value)
                    && d.status == DeliveryStatus::Pending
                    && known.insert(d.id.clone())
                {
                    waiting.insert((d.next_attempt_at.unwrap_or(0), d.id.clone()), d);
                }
                Ok(())
            },
        );
        if let Err(e) = scanned {
            tracing::error!(endpoint = %self.endpoint, error = %e, "reading the outbox failed");
            self.missed.store(true, Ordering::Release);
        }
    }

    fn promote_due(&mut self) {
        let now = now_ms();
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.ready.push_back(entry.remove());
        }
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        let Some(endpoint) = self.catalog.webhook(self.org, self.endpoint) else {
            return;
        };
        if !endpoint.enabled {
            return;
        }
        while self.in_flight.len() < self.settings.max_in_flight {
            let Some(delivery) = self.ready.pop_front() else {
                break;
            };
            let body = serde_json::to_vec(&delivery.payload).expect("payloads serialise");
            let now = now_ms();
            let request = WebhookRequest {
                url: endpoint.url.clone(),
                id: delivery.id.clone(),
                timestamp: now / 1000,
                secrets: endpoint.signing_secrets(now),
                body,
                timeout: self.settings.timeout,
            };
            self.in_flight.insert(delivery.id.clone());
            let started = std::time::Instant::now();
            let send = self.port.send(request);
            ctx.spawn(send.into_actor(self).map(move |outcome, act, ctx| {
                act.in_flight.remove(&delivery.id);
                metrics::histogram!("xeno_webhook_request_seconds")
                    .record(started.elapsed().as_secs_f64());
                act.on_outcome(delivery, outcome, ctx);
                act.pump(ctx);
            }));
        }
    }

    fn on_outcome(
        &mut self,
        mut delivery: DeliveryRecord,
        outcome: WebhookOutcome,
        _ctx: &mut Context<Self>,
    ) {
        delivery.attempts += 1;
        let (label, gone) = match &outcome {
            WebhookOutcome::Status(code) if (200..300).contains(code) => {
                delivery.status = DeliveryStatus::Delivered;
                delivery.next_attempt_at = None;
                ("delivered", false)
            }
            WebhookOutcome::Status(410) => ("gone", true),
            WebhookOutcome::Status(_) => ("failed", false),
            WebhookOutcome::Failed(_) => ("unreachable", false),
        };
        delivery.last_status = Some(match &outcome {
            WebhookOutcome::Status(code) => code.to_string(),
            WebhookOutcome::Failed(reason) => reason.clone(),
        });
        metrics::counter!("xeno_webhook_attempts_total", "outcome" => label).increment(1);
        if gone {
            self.disable_after_gone();
            delivery.next_attempt_at = Some(now_ms());
            self.persist(&delivery);
            self.waiting.insert(
                (delivery.next_attempt_at.unwrap_or(0), delivery.id.clone()),
                delivery,
            );
            return;
        }
        if delivery.status == DeliveryStatus::Pending {
            if delivery.attempts >= self.settings.max_attempts {
                delivery.status = DeliveryStatus::Dead;
                delivery.next_attempt_at = None;
                metrics::counter!("xeno_webhook_dead_total").increment(1);
                tracing::warn!(endpoint = %self.endpoint, delivery = %delivery.id, attempts = delivery.attempts, "webhook delivery exhausted its retries");
            } else {
                let wait = self.settings.backoff(delivery.attempts, jitter());
                let at = now_ms() + wait.as_millis() as i64;
                delivery.next_attempt_at = Some(at);
                self.persist(&delivery);
                self.waiting.insert((at, delivery.id.clone()), delivery);
                return;
            }
        }
        self.known.remove(&delivery.id);
        delivery.finished_at = Some(xeno_engine::time::Timestamp(now_ms()).to_rfc3339());
        self.persist(&delivery);
    }

    fn persist(&self, delivery: &DeliveryRecord) {
        let write = StateWrite::Put(
            delivery_key(self.org, self.endpoint, &delivery.id),
            encode(delivery),
        );
        if let Err(e) = self.store.commit(vec![write], false) {
            tracing::error!(endpoint = %self.endpoint, delivery = %delivery.id, error = %e, "recording a delivery outcome failed");
        }
    }

    fn disable_after_gone(&mut self) {
        let result =
            self.catalog
                .modify_webhook(&*self.store, self.org, self.endpoint, |endpoint| {
                    if !endpoint.enabled {
                        return Ok::<_, xeno_engine::ports::PortError>(false);
                    }
                    endpoint.enabled = false;
                    endpoint.disabled_reason = Some("the endpoint answered 410 Gone".into());
                    endpoint.updated_at = xeno_engine::time::Timestamp(now_ms()).to_rfc3339();
                    Ok(true)
                });
        match result {
            Ok(Some(endpoint)) if !endpoint.enabled => {
                tracing::warn!(org = %self.org, endpoint = %self.endpoint, "webhook endpoint disabled after 410");
                metrics::counter!("xeno_webhook_endpoints_disabled_total").increment(1);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(endpoint = %self.endpoint, error = %e, "disabling the endpoint failed")
            }
        }
        // Everything queued waits until the endpoint is enabled again.
        let now = now_ms();
        for d in self.ready.drain(..) {
            self.waiting.insert((now, d.id.clone()), d);
        }
    }
}

impl Actor for WebhookDispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(256);
        self.load_pending();
        ctx.run_interval(Duration::from_millis(100), |act, ctx| {
            if act.missed.swap(false, Ordering::AcqRel) {
                act.load_pending();
            }
            act.promote_due();
            act.pump(ctx);
            metrics::gauge!("xeno_webhook_queue_depth", "endpoint" => act.endpoint.to_string())
                .set(act.known.len() as f64);
        });
    }
}

impl Handler<NewDeliveries> for WebhookDispatcher {
    type Result = ();

    fn handle(&mut self, msg: NewDeliveries, ctx: &mut Self::Context) {
        for delivery in msg.0 {
            if self.known.insert(delivery.id.clone()) {
                self.ready.push_back(delivery);
            }
        }
        self.pump(ctx);
    }
}

impl Handler<EndpointChanged> for WebhookDispatcher {
    type Result = ();

    fn handle(&mut self, _: EndpointChanged, ctx: &mut Self::Context) {
        if self
            .catalog
            .webhook(self.org, self.endpoint)
            .is_some_and(|e| e.enabled)
        {
            let now = now_ms();
            let parked: Vec<_> = std::mem::take(&mut self.waiting).into_values().collect();
            for mut d in parked {
                d.next_attempt_at = Some(d.next_attempt_at.unwrap_or(now).min(now));
                self.ready.push_back(d);
            }
            self.pump(ctx);
        }
    }
}

impl Handler<Replay> for WebhookDispatcher {
    type Result = bool;

    fn handle(&mut self, msg: Replay, ctx: &mut Self::Context) -> bool {
        let key = delivery_key(self.org, self.endpoint, &msg.0);
        let Ok(Some(bytes)) = self.store.get(&key) else {
            return false;
        };
        let Ok(mut delivery) = serde_json::from_slice::<DeliveryRecord>(&bytes) else {
            return false;
        };
        if delivery.status == DeliveryStatus::Pending || self.known.contains(&delivery.id) {
            return true;
        }
        // A replay gets the full retry schedule again.
        delivery.attempts = 0;
        delivery.finished_at = None;
        delivery.status = DeliveryStatus::Pending;
        delivery.next_attempt_at = Some(now_ms());
        if self
            .store
            .commit(vec![StateWrite::Put(key, encode(&delivery))], true)
            .is_err()
        {
            return false;
        }
        self.known.insert(delivery.id.clone());
        self.ready.push_back(delivery);
        self.pump(ctx);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_pruning_keeps_pending_and_recent_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let store = xeno_connectors::embedded::StateStore::open(dir.path()).unwrap();
        let (org, endpoint) = (Uuid::now_v7(), Uuid::now_v7());
        let day = 24 * 3_600_000i64;
        let now = 100 * day;
        let record = |id: &str, status, age_days: i64| DeliveryRecord {
            id: id.into(),
            endpoint,
            status,
            attempts: 1,
            last_status: None,
            next_attempt_at: None,
            created_at: xeno_engine::time::Timestamp(now - age_days * day).to_rfc3339(),
            finished_at: None,
            payload: serde_json::json!({}),
        };
        let all = [
            record("pending-old", DeliveryStatus::Pending, 90),
            record("delivered-old", DeliveryStatus::Delivered, 4),
            record("delivered-new", DeliveryStatus::Delivered, 1),
            record("dead-recent", DeliveryStatus::Dead, 20),
            record("dead-old", DeliveryStatus::Dead, 40),
            // Created long ago but delivered after a day of retries: kept.
            DeliveryRecord {
                finished_at: Some(xeno_engine::time::Timestamp(now - day).to_rfc3339()),
                ..record("retried-late", DeliveryStatus::Delivered, 5)
            },
        ];
        store
            .commit(
                all.iter()
                    .map(|d| StateWrite::Put(delivery_key(org, endpoint, &d.id), encode(d)))
                    .collect(),
                true,
            )
            .unwrap();
        let deleted = prune_history(
            &store,
            org,
            endpoint,
            Duration::from_secs(3 * 24 * 3600),
            now,
        )
        .unwrap();
        assert_eq!(deleted, 2);
        let left: Vec<String> = store
            .scan(&delivery_prefix(org, endpoint), None, 10)
            .unwrap()
            .into_iter()
            .map(|(_, v)| serde_json::from_slice::<DeliveryRecord>(&v).unwrap().id)
            .collect();
        assert_eq!(
            left,
            [
                "dead-recent",
                "delivered-new",
                "pending-old",
                "retried-late"
            ]
        );
    }

    #[test]
    fn backoff_doubles_caps_and_spans_about_a_day() {
        let s = DispatchSettings::default();
        assert_eq!(s.backoff(1, 0.5), Duration::from_secs(5));
        assert_eq!(s.backoff(2, 0.5), Duration::from_secs(10));
        assert_eq!(s.backoff(30, 0.5), Duration::from_secs(3600));
        assert!(s.backoff(1, 0.0) >= Duration::from_secs(4));
        assert!(s.backoff(1, 1.0) <= Duration::from_secs(6));
        let total: f64 = (1..s.max_attempts)
            .map(|a| s.backoff(a, 0.5).as_secs_f64())
            .sum();
        assert!((20.0 * 3600.0..30.0 * 3600.0).contains(&total), "{total}");
    }
}

/// The endpoint was deleted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDispatcher;

impl Handler<StopDispatcher> for WebhookDispatcher {
    type Result = ();

    fn handle(&mut self, _: StopDispatcher, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
