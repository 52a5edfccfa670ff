//! The clock actor: the only reader of the wall clock on the membership path.
//! Every tick it hands `now` to each shard actor, which advances its tenants'
//! time (windows close, windowed traits refresh) and takes due snapshots. A
//! tick that does not fit a full mailbox is skipped: the next one covers it.

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

pub fn wall_clock() -> NowFn {
    std::sync::Arc::new(now)
}

pub struct ClockActor {
    pub tick: Duration,
    pub shards: Vec<Addr<ShardActor>>,
    pub now: NowFn,
}

impl Actor for ClockActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.tick, |act, _| {
            let now = (act.now)();
            for shard in &act.shards {
                if shard.try_send(Tick { now }).is_err() {
                    metrics::counter!("xeno_clock_ticks_skipped_total").increment(1);
                }
            }
        });
    }
}
