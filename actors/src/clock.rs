//! The clock actor: the only reader of the wall clock on the membership path.
//! Every tick it hands `now` to each shard actor, which advances its tenants'
//! time (windows close, windowed traits refresh) and takes due snapshots. A
//! shard that has not yet handled its previous tick is not sent another: the
//! next one it handles advances to the then current `now`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::prelude::*;
use xeno_engine::time::Timestamp;

use crate::shard::{ShardActor, Tick};

/// Where the clock reads `now`: the wall clock in production, a test clock in
/// tests.
pub type NowFn = std::sync::Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The wall clock, in milliseconds since the epoch.
pub fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp(ms)
}

/// The wall clock, strictly increasing across calls in this process: two
/// writes of one customer through the API in the same millisecond still
/// apply in order (attributes are last-writer-wins by event time, and a tie
/// would be broken by value, not by order).
pub fn write_time() -> Timestamp {
    static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);
    let wall = now().0;
    let previous = LAST
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
            Some(wall.max(last.saturating_add(1)))
        })
        .unwrap_or(wall);
    Timestamp(wall.max(previous.saturating_add(1)))
}

pub fn wall_clock() -> NowFn {
    std::sync::Arc::new(now)
}

pub struct ClockActor {
    pub tick: Duration,
    /// Each shard with its "a tick is queued" flag: at most one tick waits in
    /// a shard's mailbox, and a busy shard still gets its ticks (a full
    /// mailbox of appends does not crowd them out).
    pub shards: Vec<(Addr<ShardActor>, Arc<AtomicBool>)>,
    pub now: NowFn,
}

impl Actor for ClockActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.tick, |act, _| {
            let now = (act.now)();
            for (shard, queued) in &act.shards {
                if queued.swap(true, Ordering::AcqRel) {
                    metrics::counter!("xeno_clock_ticks_coalesced_total").increment(1);
                } else {
                    shard.do_send(Tick { now });
                }
            }
        });
    }
}
