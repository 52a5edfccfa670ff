//! Segment actors, one per (tenant, segment): the live member count, summed
//! from the absolute per-partition counts the shard actors publish after every
//! change (so a dropped or repeated message never skews it).

use actix::prelude::*;
use uuid::Uuid;

#[derive(Message)]
#[rtype(result = "()")]
pub struct PartitionCount {
    pub partition: u32,
    pub count: u64,
}

#[derive(Message)]
#[rtype(result = "u64")]
pub struct GetCount;

pub struct SegmentActor {
    org: Uuid,
    engine_id: u64,
    counts: Vec<u64>,
}

impl SegmentActor {
    pub fn new(org: Uuid, engine_id: u64, partitions: u32) -> SegmentActor {
        SegmentActor {
            org,
            engine_id,
            counts: vec![0; partitions as usize],
        }
    }
}

impl Actor for SegmentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
    }
}

impl Handler<PartitionCount> for SegmentActor {
    type Result = ();

    fn handle(&mut self, msg: PartitionCount, _: &mut Self::Context) {
        if let Some(slot) = self.counts.get_mut(msg.partition as usize) {
            *slot = msg.count;
        }
        tracing::trace!(org = %self.org, segment = self.engine_id, partition = msg.partition, count = msg.count, "segment count");
    }
}

impl Handler<GetCount> for SegmentActor {
    type Result = u64;

    fn handle(&mut self, _: GetCount, _: &mut Self::Context) -> u64 {
        self.counts.iter().sum()
    }
}
