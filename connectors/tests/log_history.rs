//! A segment created after its events were logged is filled from the log.

use serde_json::json;
use xeno_connectors::embedded::{EventLog, LogHistory, encode_event};
use xeno_engine::model::Event;
use xeno_engine::rule::dsl;
use xeno_engine::shard::{SegmentId, Shard};
use xeno_engine::time::Timestamp;

#[test]
fn new_segments_are_backfilled_from_the_log_up_to_the_applied_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), 1).unwrap();
    let t0 = Timestamp(1_767_225_600_000);
    let mut shard = Shard::new(Default::default());
    let mut deltas = Vec::new();
    let mut applied = 0;
    for i in 0..5000 {
        let user = format!("c{}", i % 50);
        let at = Timestamp(t0.0 + i as i64 * 1000);
        let event = Event::track(format!("m{i}"), user, at, "Login", json!({"device": "ios"}));
        let range = log.append(0, vec![encode_event(&event)]).unwrap();
        shard.apply(&event, at, &mut deltas).unwrap();
        applied = range.end;
    }
    // Logged but not yet applied: must not be counted by the backfill.
    let pending = Event::track("late", "c0", t0, "Login", json!({}));
    log.append(0, vec![encode_event(&pending)]).unwrap();

    let history = LogHistory {
        log: &log,
        partition: 0,
        until: applied,
    };
    let rule = dsl::parse("performed \"Login\" at_least 100 times within 30d").unwrap();
    shard
        .add_segment(SegmentId(1), rule, &history, &mut deltas)
        .unwrap();
    // 5000 logins over 50 customers: 100 each, all within the window.
    assert_eq!(shard.members(SegmentId(1)).unwrap().len(), 50);
    let stricter = dsl::parse("performed \"Login\" at_least 101 times").unwrap();
    shard
        .add_segment(SegmentId(2), stricter, &history, &mut deltas)
        .unwrap();
    assert_eq!(
        shard.members(SegmentId(2)).unwrap().len(),
        0,
        "the pending event is not counted"
    );
}
