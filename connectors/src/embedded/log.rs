//! A durable, partitioned event log with group commit.
//!
//! Records are opaque byte strings appended to a partition and numbered by a
//! per-partition offset (0, 1, 2, ...). [`EventLog::append`] returns only once
//! its records are fsynced; appends that arrive while a commit is running wait
//! for the next one and share its fsync, so many concurrent writers cost one
//! fsync per round rather than one each.
//!
//! ```text
//!  writers ──append──> queue ──> committer thread: drain queue, number records,
//!                                 one atomic batch, one fsync, answer everyone
//! ```
//!
//! Keys are `partition (u32 BE) ++ offset (u64 BE)`, so a partition is one
//! contiguous, ordered key range: reading from an offset is a range scan, and the
//! next offset after a restart is the last key of the range plus one.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

/// Most requests one commit takes from the queue.
const MAX_REQUESTS_PER_COMMIT: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The disk or the storage engine failed; the append may be retried (a
    /// retried append can duplicate records, which messageId dedup absorbs).
    #[error("event log storage failed: {0}")]
    Storage(String),
    #[error("partition {partition} does not exist (the log has {partitions})")]
    NoPartition { partition: u32, partitions: u32 },
    #[error("the event log is closed")]
    Closed,
}

fn storage(e: impl std::fmt::Display) -> LogError {
    LogError::Storage(e.to_string())
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Commits (each with one fsync).
    pub commits: AtomicU64,
    /// Appends acknowledged.
    pub appends: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
}

struct Request {
    partition: u32,
    records: Vec<Vec<u8>>,
    reply: mpsc::SyncSender<Result<Range<u64>, LogError>>,
}

/// The log. Cheap to share behind an `Arc`; appends from many threads are
/// batched by one committer thread.
pub struct EventLog {
    db: Database,
    keyspace: Keyspace,
    partitions: u32,
    queue: Mutex<Option<mpsc::Sender<Request>>>,
    committer: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<LogStats>,
}

fn key(partition: u32, offset: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(&offset.to_be_bytes());
    k
}

fn offset_of(key: &[u8]) -> Option<u64> {
    key.get(4..12)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

impl EventLog {
    /// Opens (or creates) the log in `dir` with `partitions` partitions and
    /// recovers each partition's next offset.
    pub fn open(dir: &Path, partitions: u32) -> Result<EventLog, LogError> {
        if partitions == 0 {
            return Err(LogError::NoPartition {
                partition: 0,
                partitions,
            });
        }
        std::fs::create_dir_all(dir).map_err(storage)?;
        let db = Database::builder(dir).open().map_err(storage)?;
        let keyspace = db
            .keyspace("event_log", KeyspaceCreateOptions::default)
            .map_err(storage)?;
        let mut next = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            next.push(Self::recover_next(&keyspace, p)?);
        }
        let stats = Arc::new(LogStats::default());
        let (sender, receiver) = mpsc::channel();
        let committer = {
            let (db, keyspace, stats) = (db.clone(), keyspace.clone(), stats.clone());
            std::thread::Builder::new()
                .name("xeno-log-commit".into())
                .spawn(move || commit_loop(db, keyspace, next, receiver, stats))
                .map_err(storage)?
        };
        Ok(EventLog {
            db,
            keyspace,
            partitions,
            queue: Mutex::new(Some(sender)),
            committer: Mutex::new(Some(committer)),
            stats,
        })
    }

    fn recover_next(keyspace: &Keyspace, partition: u32) -> Result<u64, LogError> {
        let last = keyspace
            .range(key(partition, 0)..=key(partition, u64::MAX))
            .next_back();
        match last {
            None => Ok(0),
            Some(guard) => {
                let k = guard.key().map_err(storage)?;
                let offset = offset_of(&k)
                    .ok_or_else(|| LogError::Storage("a log key is malformed".into()))?;
                Ok(offset + 1)
            }
        }
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    fn check(&self, partition: u32) -> Result<(), LogError> {
        if partition >= self.partitions {
            return Err(LogError::NoPartition {
                partition,
                partitions: self.partitions,
            });
        }
        Ok(())
    }

    /// Appends `records` to `partition` and returns their offsets once they are
    /// durable (fsynced). Blocks; call it from a thread that may block.
    pub fn append(&self, partition: u32, records: Vec<Vec<u8>>) -> Result<Range<u64>, LogError> {
        self.check(partition)?;
        let (reply, answer) = mpsc::sync_channel(1);
        {
            let queue = self.queue.lock().map_err(|_| LogError::Closed)?;
            let sender = queue.as_ref().ok_or(LogError::Closed)?;
            sender
                .send(Request {
                    partition,
                    records,
                    reply,
                })
                .map_err(|_| LogError::Closed)?;
        }
        answer.recv().map_err(|_| LogError::Closed)?
    }

    /// Up to `limit` records of `partition` from offset `from` on, in order.
    pub fn read(
        &self,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        self.check(partition)?;
        self.keyspace
            .range(key(partition, from)..=key(partition, u64::MAX))
            .take(limit)
            .map(|guard| {
                let (k, v) = guard.into_inner().map_err(storage)?;
                let offset = offset_of(&k)
                    .ok_or_else(|| LogError::Storage("a log key is malformed".into()))?;
                Ok((offset, v.to_vec()))
            })
            .collect()
    }

    /// Deletes the records of `partition` before offset `before` (retention).
    /// Returns how many were deleted.
    pub fn truncate_before(&self, partition: u32, before: u64) -> Result<u64, LogError> {
        self.check(partition)?;
        let keys: Vec<_> = self
            .keyspace
            .range(key(partition, 0)..key(partition, before))
            .map(|guard| guard.key().map_err(storage))
            .collect::<Result<_, _>>()?;
        let mut batch = self.db.batch();
        for k in &keys {
            batch.remove(&self.keyspace, k.clone());
        }
        batch.commit().map_err(storage)?;
        Ok(keys.len() as u64)
    }

    /// Stops the committer after the appends already queued.
    pub fn close(&self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.take();
        }
        if let Some(handle) = self.committer.lock().ok().and_then(|mut c| c.take()) {
            let _ = handle.join();
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn commit_loop(
    db: Database,
    keyspace: Keyspace,
    mut next: Vec<u64>,
    queue: mpsc::Receiver<Request>,
    stats: Arc<LogStats>,
) {
    while let Ok(first) = queue.recv() {
        // Everything that queued up while the previous commit ran joins this one.
        let mut requests = vec![first];
        while requests.len() < MAX_REQUESTS_PER_COMMIT {
            match queue.try_recv() {
                Ok(r) => requests.push(r),
                Err(_) => break,
            }
        }
        let mut batch = db.batch();
        let mut tentative = next.clone();
        let mut ranges = Vec::with_capacity(requests.len());
        let mut records = 0u64;
        for request in &requests {
            let start = tentative[request.partition as usize];
            for (i, record) in request.records.iter().enumerate() {
                batch.insert(&keyspace, key(request.partition, start + i as u64), record);
            }
            let end = start + request.records.len() as u64;
            tentative[request.partition as usize] = end;
            records += request.records.len() as u64;
            ranges.push(start..end);
        }
        let result = batch
            .commit()
            .and_then(|()| db.persist(PersistMode::SyncAll))
            .map_err(storage);
        stats.commits.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                next = tentative;
                stats
                    .appends
                    .fetch_add(requests.len() as u64, Ordering::Relaxed);
                stats.records.fetch_add(records, Ordering::Relaxed);
                for (request, range) in requests.into_iter().zip(ranges) {
                    let _ = request.reply.send(Ok(range));
                }
            }
            Err(e) => {
                // Offsets are not advanced; what may have reached the disk is
                // overwritten by the next commit at the same offsets.
                for request in requests {
                    let _ = request.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn port_error(e: LogError) -> xeno_engine::ports::PortError {
    use xeno_engine::ports::PortError;
    match e {
        LogError::Storage(m) => PortError::retryable(m),
        other => PortError::permanent(other.to_string()),
    }
}

impl xeno_engine::ports::EventLogPort for EventLog {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn append(
        &self,
        partition: u32,
        records: Vec<Vec<u8>>,
    ) -> Result<Range<u64>, xeno_engine::ports::PortError> {
        EventLog::append(self, partition, records).map_err(port_error)
    }

    fn read(
        &self,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, xeno_engine::ports::PortError> {
        EventLog::read(self, partition, from, limit).map_err(port_error)
    }

    fn truncate_before(
        &self,
        partition: u32,
        before: u64,
    ) -> Result<u64, xeno_engine::ports::PortError> {
        EventLog::truncate_before(self, partition, before).map_err(port_error)
    }
}
