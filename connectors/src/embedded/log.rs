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
//! One append is stored as one chunk under `partition (u32 BE) ++ first offset
//! (u64 BE)`, its records length-prefixed in the value. A partition is one
//! contiguous, ordered key range: reading from an offset starts at the chunk
//! that holds it, and the next offset after a restart is the last chunk's first
//! offset plus its record count. Chunks (tens of KiB for a batch of 500) are
//! stored key-value separated, so the LSM tree compacts small keys rather than
//! rewriting event bytes; one key per append instead of per record cut the
//! storage engine's share of ingest CPU (see BENCHMARKS.md).

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use fjall::{
    CompressionType, Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode,
};

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
    /// Retention and overwrites, one at a time.
    maintenance: Mutex<()>,
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

fn malformed() -> LogError {
    LogError::Storage("a log chunk is malformed".into())
}

/// `count (u32 LE)`, then each record as `len (u32 LE) ++ bytes`.
fn encode_chunk(records: &[Vec<u8>]) -> Vec<u8> {
    let size = 4 + records.iter().map(|r| 4 + r.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

fn chunk_count(chunk: &[u8]) -> Result<u64, LogError> {
    chunk
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(|b| u64::from(u32::from_le_bytes(b)))
        .ok_or_else(malformed)
}

/// The records of a chunk, in order.
fn decode_chunk(chunk: &[u8]) -> Result<Vec<&[u8]>, LogError> {
    let count = chunk_count(chunk)? as usize;
    let mut records = Vec::with_capacity(count);
    let mut at = 4;
    for _ in 0..count {
        let len = chunk
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(|b| u32::from_le_bytes(b) as usize)
            .ok_or_else(malformed)?;
        records.push(chunk.get(at + 4..at + 4 + len).ok_or_else(malformed)?);
        at += 4 + len;
    }
    Ok(records)
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
        // Chunks are compressed when they are flushed to blob files; doing it
        // again for the journal cost the committer, which every
        // acknowledgement waits on, 4 % of the CPU at full load.
        let db = Database::builder(dir)
            .journal_compression(CompressionType::None)
            .open()
            .map_err(storage)?;
        let keyspace = db
            .keyspace("event_log", || {
                KeyspaceCreateOptions::default()
                    .with_kv_separation(Some(KvSeparationOptions::default()))
                    // Smaller flushes: a 64 MiB one stalled concurrent fsyncs
                    // (acknowledgement p99 25-34 ms at 100k events/s, 18-24 ms
                    // with 8 MiB).
                    .max_memtable_size(8 * 1024 * 1024)
            })
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
            maintenance: Mutex::new(()),
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
                let (k, v) = guard.into_inner().map_err(storage)?;
                let first = offset_of(&k).ok_or_else(malformed)?;
                Ok(first + chunk_count(&v)?)
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
        // The chunk holding `from` starts at or before it.
        let start = match self
            .keyspace
            .range(key(partition, 0)..=key(partition, from))
            .next_back()
        {
            Some(guard) => offset_of(&guard.key().map_err(storage)?).ok_or_else(malformed)?,
            None => from,
        };
        let mut out = Vec::new();
        for guard in self
            .keyspace
            .range(key(partition, start)..=key(partition, u64::MAX))
        {
            let (k, v) = guard.into_inner().map_err(storage)?;
            let first = offset_of(&k).ok_or_else(malformed)?;
            for (i, record) in decode_chunk(&v)?.into_iter().enumerate() {
                let offset = first + i as u64;
                if offset >= from {
                    out.push((offset, record.to_vec()));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Deletes the records of `partition` before offset `before` (retention).
    /// Returns how many were deleted.
    pub fn truncate_before(&self, partition: u32, before: u64) -> Result<u64, LogError> {
        self.check(partition)?;
        let _maintenance = self.maintenance.lock().map_err(|_| LogError::Closed)?;
        // The partition's last chunk always stays: the next offset after a
        // restart is read from it.
        let last = match self
            .keyspace
            .range(key(partition, 0)..=key(partition, u64::MAX))
            .next_back()
        {
            Some(guard) => offset_of(&guard.key().map_err(storage)?).ok_or_else(malformed)?,
            None => return Ok(0),
        };
        let before = before.min(last);
        // Whole chunks only: a chunk that straddles `before` stays.
        let mut keys = Vec::new();
        let mut deleted = 0;
        for guard in self
            .keyspace
            .range(key(partition, 0)..key(partition, before))
        {
            let (k, v) = guard.into_inner().map_err(storage)?;
            let first = offset_of(&k).ok_or_else(malformed)?;
            let count = chunk_count(&v)?;
            if first + count > before {
                break;
            }
            deleted += count;
            keys.push(k);
        }
        let mut batch = self.db.batch();
        for k in &keys {
            batch.remove(&self.keyspace, k.clone());
        }
        batch.commit().map_err(storage)?;
        Ok(deleted)
    }

    /// Replaces the records at the given offsets with new bytes, durably;
    /// offsets that are not in the log (truncated, or never written) are
    /// ignored. Each chunk holding one of them is decoded, patched and written
    /// back under its key, so offsets and chunk boundaries stay as they are.
    /// Serialised with retention, so a chunk being deleted is not written back.
    pub fn overwrite(&self, partition: u32, records: Vec<(u64, Vec<u8>)>) -> Result<(), LogError> {
        self.check(partition)?;
        let _maintenance = self.maintenance.lock().map_err(|_| LogError::Closed)?;
        // First offset of a chunk -> (the chunk, its patches by index).
        type Patches = Vec<(u64, Vec<u8>)>;
        let mut by_chunk: std::collections::BTreeMap<u64, (Vec<u8>, Patches)> =
            std::collections::BTreeMap::new();
        for (offset, bytes) in records {
            let Some(guard) = self
                .keyspace
                .range(key(partition, 0)..=key(partition, offset))
                .next_back()
            else {
                continue;
            };
            let (k, v) = guard.into_inner().map_err(storage)?;
            let first = offset_of(&k).ok_or_else(malformed)?;
            if offset >= first + chunk_count(&v)? {
                continue;
            }
            by_chunk
                .entry(first)
                .or_insert_with(|| (v.to_vec(), Vec::new()))
                .1
                .push((offset - first, bytes));
        }
        if by_chunk.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        for (first, (chunk, patches)) in by_chunk {
            let mut records: Vec<Vec<u8>> = decode_chunk(&chunk)?
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect();
            for (index, bytes) in patches {
                records[index as usize] = bytes;
            }
            batch.insert(
                &self.keyspace,
                key(partition, first),
                encode_chunk(&records),
            );
        }
        batch.commit().map_err(storage)?;
        self.db.persist(PersistMode::SyncAll).map_err(storage)
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
            if !request.records.is_empty() {
                batch.insert(
                    &keyspace,
                    key(request.partition, start),
                    encode_chunk(&request.records),
                );
            }
            let end = start + request.records.len() as u64;
            tentative[request.partition as usize] = end;
            records += request.records.len() as u64;
            ranges.push(start..end);
        }
        let started = std::time::Instant::now();
        let result = batch.commit().map_err(storage).and_then(|()| {
            let synced = std::time::Instant::now();
            let r = db.persist(PersistMode::SyncAll).map_err(storage);
            metrics::histogram!("xeno_log_fsync_seconds").record(synced.elapsed().as_secs_f64());
            r
        });
        metrics::histogram!("xeno_log_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("xeno_log_commit_requests").record(requests.len() as f64);
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
                // Fail-stop: after a failed write or fsync the state of the
                // disk is unknown (a chunk may or may not be there, and an
                // fsync error may have dropped dirty pages), so nothing more is
                // acknowledged; a restart recovers from what is durable.
                for request in requests {
                    let _ = request.reply.send(Err(e.clone()));
                }
                while let Ok(request) = queue.try_recv() {
                    let _ = request.reply.send(Err(e.clone()));
                }
                metrics::counter!("xeno_log_failures_total").increment(1);
                return;
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

    fn overwrite(
        &self,
        partition: u32,
        records: Vec<(u64, Vec<u8>)>,
    ) -> Result<(), xeno_engine::ports::PortError> {
        EventLog::overwrite(self, partition, records).map_err(port_error)
    }
}
