//! Import jobs: a CSV file the gateway spooled to disk becomes identify
//! events on the ordinary ingest path (so segments and webhooks follow as the
//! rows land), one batch at a time, on a thread of its own.
//!
//! ```text
//! upload.csv ─sniff─> dialect ─header + 1000 rows─> plan (mapping, types)
//!            ─rows─> coerce ─ok─> identify event ─batch─> Runtime::ingest (durable)
//!                           └bad─> errors.csv (row, line, column, reason, value)
//! ```
//!
//! A row's event has a messageId derived from the job and the row number, so a
//! batch retried after "busy" lands once. Rows of one customer repeated in the
//! file are applied in file order with timestamps one millisecond apart, so
//! the last one wins (attributes are last-writer-wins by event time) and the
//! repeats are counted. Progress is kept in memory and persisted every few
//! seconds and at the end; a job interrupted by a restart is marked failed
//! (importing the file again upserts the same customers, nothing doubles).

use std::collections::HashMap;
use std::fs::File;
use std::hash::BuildHasherDefault;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};
use uuid::Uuid;
use xeno_engine::model::{AttrType, Event};
use xeno_engine::ports::StateWrite;
use xeno_engine::time::Timestamp;

use super::csv::{CsvRows, Dialect, DialectHints, Encoding, Limits, RowBuf, RowIssue, sniff};
use super::mapping::{MappingRequest, Plan, RowKey, RowProblem, UpsertBy, coerce, plan, row_id};
use crate::catalog::{encode, import_key};
use crate::clock::now;
use crate::facade::{Runtime, RuntimeError};

/// Rows per ingest call.
const BATCH_ROWS: usize = 4096;
/// Rows read before the columns are planned (types are inferred from them).
const SAMPLE_ROWS: usize = 1000;
/// At most this much text is held for type inference (rows may be large).
const SAMPLE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Imports running at once; later ones wait as `queued`.
const RUNNING_IMPORTS: usize = 2;
/// Batches being logged while the next is parsed.
const IN_FLIGHT: usize = 4;
/// Bytes the dialect is sniffed from.
const SAMPLE_BYTES: usize = 64 * 1024;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ImportStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl ImportStatus {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            ImportStatus::Completed | ImportStatus::Failed | ImportStatus::Cancelled
        )
    }
}

/// How to read the file and map its columns; every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ImportOptions {
    /// One character, or `tab`; detected when absent.
    pub delimiter: Option<String>,
    /// One character; `"` when absent.
    pub quote: Option<String>,
    /// `utf-8`, `utf-8-bom` or `latin-1`; detected when absent.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub encoding: Option<Encoding>,
    /// CSV header -> target attribute (`id` and `email` are the keys);
    /// `null` skips the column.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub mapping: HashMap<String, Option<String>>,
    /// `attributes` (default): unmapped columns become attributes named
    /// after their header; `skip`: they are ignored.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub unmapped: Option<super::mapping::Unmapped>,
    /// `id` or `email`; `id` when a column maps to it.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub upsert_by: Option<UpsertBy>,
    /// Target -> type (`string`, `number`, `bool`, `timestamp`, `list_of_strings`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub types: HashMap<String, AttrType>,
}

fn one_byte(text: &str, pointer: &str) -> Result<u8, RuntimeError> {
    let invalid = |reason: &str| RuntimeError::Invalid {
        pointer: pointer.into(),
        reason: reason.into(),
    };
    match text {
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        t if t.len() == 1
            && t.as_bytes()[0].is_ascii()
            && !t.as_bytes()[0].is_ascii_alphanumeric() =>
        {
            Ok(t.as_bytes()[0])
        }
        _ => Err(invalid("one ASCII punctuation character, or `tab`")),
    }
}

impl ImportOptions {
    /// Checks what can be checked before the file is read.
    pub fn hints(&self) -> Result<DialectHints, RuntimeError> {
        // A computed trait as a target is refused now, not after the upload.
        let computed = xeno_engine::traits::ComputedTraitDef::builtins();
        for (column, target) in &self.mapping {
            if let Some(target) = target
                && computed.iter().any(|c| c.name == *target)
            {
                return Err(RuntimeError::Invalid {
                    pointer: format!("/options/mapping/{column}"),
                    reason: format!(
                        "`{target}` is computed from Order Completed events; import it as an attribute such as `lifetime_spend`, or send orders"
                    ),
                });
            }
        }
        Ok(DialectHints {
            delimiter: self
                .delimiter
                .as_deref()
                .map(|d| one_byte(d, "/options/delimiter"))
                .transpose()?,
            quote: self
                .quote
                .as_deref()
                .map(|q| one_byte(q, "/options/quote"))
                .transpose()?,
            encoding: self.encoding,
        })
    }

    fn mapping(&self) -> MappingRequest {
        MappingRequest {
            columns: self.mapping.clone(),
            unmapped: self
                .unmapped
                .unwrap_or(super::mapping::Unmapped::Attributes),
            types: self.types.clone(),
            upsert_by: self.upsert_by,
        }
    }
}

/// An import job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportJob {
    pub id: Uuid,
    pub status: ImportStatus,
    pub file_name: String,
    pub bytes_total: u64,
    pub bytes_read: u64,
    /// Data rows read (the header is not a row).
    pub rows_read: u64,
    /// Rows logged durably (each an upsert of one customer).
    pub rows_imported: u64,
    /// Rows in the error report.
    pub rows_failed: u64,
    /// Rows whose customer appeared earlier in the file (the last row wins).
    pub duplicates: u64,
    pub rows_per_second: f64,
    /// Why the job failed, when it did.
    pub error: Option<String>,
    /// The dialect read (detected or given).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub dialect: Option<Json>,
    /// Where each column went.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub columns: Option<Json>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Who started it.
    pub actor: String,
}

/// A job in memory: its record and its cancel flag.
pub(crate) struct JobHandle {
    pub(crate) org: Uuid,
    pub(crate) job: Mutex<ImportJob>,
    pub(crate) cancel: Arc<AtomicBool>,
}

/// The jobs this process knows.
#[derive(Default)]
pub(crate) struct ImportRegistry {
    pub(crate) jobs: Mutex<HashMap<Uuid, Arc<JobHandle>>>,
    /// Imports running now (at most [`RUNNING_IMPORTS`]).
    running: Mutex<usize>,
    slot_freed: std::sync::Condvar,
}

/// The folder of one job: `upload.csv` (deleted once the job ends) and
/// `errors.csv` (the error report).
pub fn job_dir(import_dir: &Path, job: Uuid) -> PathBuf {
    import_dir.join(job.to_string())
}

fn report_path(import_dir: &Path, job: Uuid) -> PathBuf {
    job_dir(import_dir, job).join("errors.csv")
}

/// The error report: `row,line,column,reason,value`, quoted per RFC 4180.
struct Report {
    out: BufWriter<File>,
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

impl Report {
    fn create(path: &Path) -> std::io::Result<Report> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(b"row,line,column,reason,value\n")?;
        Ok(Report { out })
    }

    fn write(&mut self, row: u64, line: u64, column: &str, reason: &str, value: &str) {
        // A value is cut at 200 characters: the report locates the problem,
        // it does not copy a 5 MB field.
        let value: String = value.chars().take(200).collect();
        let _ = writeln!(
            self.out,
            "{row},{line},{},{},{}",
            csv_field(column),
            csv_field(reason),
            csv_field(&value)
        );
    }
}

impl Runtime {
    fn imports(&self) -> &ImportRegistry {
        self.import_registry()
    }

    /// Starts importing the file at `path` (spooled by the caller into
    /// [`job_dir`]) for `org`. Answers the queued job.
    #[allow(clippy::too_many_arguments)]
    pub fn start_import(
        &self,
        org: Uuid,
        id: Uuid,
        path: PathBuf,
        file_name: &str,
        bytes_total: u64,
        options: ImportOptions,
        actor: &str,
    ) -> Result<ImportJob, RuntimeError> {
        let hints = options.hints()?;
        let job = ImportJob {
            id,
            status: ImportStatus::Queued,
            file_name: file_name.to_string(),
            bytes_total,
            bytes_read: 0,
            rows_read: 0,
            rows_imported: 0,
            rows_failed: 0,
            duplicates: 0,
            rows_per_second: 0.0,
            error: None,
            dialect: None,
            columns: None,
            created_at: now().to_rfc3339(),
            started_at: None,
            finished_at: None,
            actor: actor.to_string(),
        };
        self.store().commit(
            vec![StateWrite::Put(import_key(org, id), encode(&job))],
            true,
        )?;
        let handle = Arc::new(JobHandle {
            org,
            job: Mutex::new(job.clone()),
            cancel: Arc::new(AtomicBool::new(false)),
        });
        self.imports()
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, handle.clone());
        let runtime = self.clone();
        std::thread::Builder::new()
            .name("xeno-import".into())
            .spawn(move || runtime.run_import(handle, path, hints, options))
            .map_err(|e| RuntimeError::Internal(format!("cannot start the import thread: {e}")))?;
        metrics::counter!("xeno_imports_started_total").increment(1);
        tracing::info!(org = %org, job = %id, file = file_name, bytes = bytes_total, "import started");
        Ok(job)
    }

    /// A job of `org`: live when this process runs it, else as persisted.
    pub fn import_job(&self, org: Uuid, id: Uuid) -> Result<ImportJob, RuntimeError> {
        if let Some(handle) = self.live_job(org, id) {
            return Ok(handle.job.lock().unwrap_or_else(|p| p.into_inner()).clone());
        }
        let bytes = self
            .store()
            .get(&import_key(org, id))?
            .ok_or_else(|| RuntimeError::NotFound("import".into()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| RuntimeError::Internal(format!("an import record does not decode: {e}")))
    }

    fn live_job(&self, org: Uuid, id: Uuid) -> Option<Arc<JobHandle>> {
        self.imports()
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .filter(|h| h.org == org)
            .cloned()
    }

    /// The jobs of `org`, newest first (at most `limit`).
    pub fn import_jobs(&self, org: Uuid, limit: usize) -> Result<Vec<ImportJob>, RuntimeError> {
        let mut jobs = Vec::new();
        crate::catalog::scan_all(
            &**self.store(),
            format!("t/{org}/imp/").as_bytes(),
            &mut |_, v| {
                if let Ok(job) = serde_json::from_slice::<ImportJob>(v) {
                    jobs.push(job);
                }
                Ok(())
            },
        )?;
        for job in jobs.iter_mut() {
            if let Some(handle) = self.live_job(org, job.id) {
                *job = handle.job.lock().unwrap_or_else(|p| p.into_inner()).clone();
            }
        }
        jobs.sort_by_key(|j| std::cmp::Reverse(j.id));
        jobs.truncate(limit);
        Ok(jobs)
    }

    /// Asks a running job to stop after its current batch; rows already
    /// imported stay. A finished job is answered as it is.
    pub fn cancel_import(&self, org: Uuid, id: Uuid) -> Result<ImportJob, RuntimeError> {
        match self.live_job(org, id) {
            Some(handle) => {
                handle.cancel.store(true, Ordering::Release);
                Ok(handle.job.lock().unwrap_or_else(|p| p.into_inner()).clone())
            }
            None => self.import_job(org, id),
        }
    }

    /// The error report of a job: a CSV file, once the job has started.
    pub fn import_report(&self, org: Uuid, id: Uuid) -> Result<PathBuf, RuntimeError> {
        self.import_job(org, id)?;
        let path = report_path(self.import_dir(), id);
        if path.exists() {
            Ok(path)
        } else {
            Err(RuntimeError::NotFound("error report".into()))
        }
    }

    /// Marks jobs a previous process left running as failed.
    pub(crate) fn fail_interrupted_imports(&self, orgs: &[Uuid]) -> Result<(), RuntimeError> {
        let mut writes = Vec::new();
        for org in orgs {
            crate::catalog::scan_all(
                &**self.store(),
                format!("t/{org}/imp/").as_bytes(),
                &mut |k, v| {
                    if let Ok(mut job) = serde_json::from_slice::<ImportJob>(v)
                        && !job.status.is_finished()
                    {
                        job.status = ImportStatus::Failed;
                        job.error = Some(format!(
                            "interrupted by a restart after {} rows; import the file again (rows are upserted, none is doubled)",
                            job.rows_imported
                        ));
                        job.finished_at = Some(now().to_rfc3339());
                        writes.push(StateWrite::Put(k.to_vec(), encode(&job)));
                        // The spooled upload is of no use now (it may be large).
                        let _ = std::fs::remove_file(
                            job_dir(self.import_dir(), job.id).join("upload.csv"),
                        );
                    }
                    Ok(())
                },
            )?;
        }
        if !writes.is_empty() {
            self.store().commit(writes, true)?;
        }
        Ok(())
    }

    fn run_import(
        &self,
        handle: Arc<JobHandle>,
        path: PathBuf,
        hints: DialectHints,
        options: ImportOptions,
    ) {
        // Wait for a slot: imports share the shards with live ingest.
        {
            let registry = self.imports();
            let mut running = registry.running.lock().unwrap_or_else(|p| p.into_inner());
            while *running >= RUNNING_IMPORTS && !handle.cancel.load(Ordering::Acquire) {
                running = registry
                    .slot_freed
                    .wait_timeout(running, Duration::from_millis(200))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            *running += 1;
        }
        let started = Instant::now();
        update(&handle, |j| {
            j.status = ImportStatus::Running;
            j.started_at = Some(now().to_rfc3339());
        });
        let outcome = if handle.cancel.load(Ordering::Acquire) {
            Ok(false)
        } else {
            // A bug in a reader or the engine must not keep the slot (and
            // every later import) taken.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.import_file(&handle, &path, hints, &options, started)
            }))
            .unwrap_or_else(|_| {
                tracing::error!(job = %handle.job.lock().unwrap_or_else(|p| p.into_inner()).id, "the import panicked");
                Err("internal error: the import stopped unexpectedly; rows imported so far stay".into())
            })
        };
        {
            let registry = self.imports();
            let mut running = registry.running.lock().unwrap_or_else(|p| p.into_inner());
            *running -= 1;
            registry.slot_freed.notify_one();
        }
        let job = update(&handle, |j| {
            match &outcome {
                Ok(true) => j.status = ImportStatus::Completed,
                Ok(false) => j.status = ImportStatus::Cancelled,
                Err(reason) => {
                    j.status = ImportStatus::Failed;
                    j.error = Some(reason.clone());
                }
            }
            j.finished_at = Some(now().to_rfc3339());
            j.rows_per_second = rate(j.rows_imported, started);
        });
        let _ = std::fs::remove_file(&path);
        if let Err(e) = self.persist_job(handle.org, &job) {
            tracing::error!(job = %job.id, error = %e, "the import's final state was not saved");
        }
        let summary = json!({
            "file_name": job.file_name,
            "status": job.status,
            "rows_read": job.rows_read,
            "rows_imported": job.rows_imported,
            "rows_failed": job.rows_failed,
            "duplicates": job.duplicates,
            "error": job.error,
        });
        let action = match job.status {
            ImportStatus::Completed => "import.completed",
            ImportStatus::Cancelled => "import.cancelled",
            _ => "import.failed",
        };
        if let Err(e) = self.audit(
            handle.org,
            &job.actor,
            action,
            &format!("import:{}", job.id),
            summary,
        ) {
            tracing::error!(job = %job.id, error = %e, "the import's audit entry was not written");
        }
        // The persisted record is the job from now on.
        self.imports()
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job.id);
        metrics::counter!("xeno_import_rows_total", "outcome" => "imported")
            .increment(job.rows_imported);
        metrics::counter!("xeno_import_rows_total", "outcome" => "failed")
            .increment(job.rows_failed);
        tracing::info!(job = %job.id, status = ?job.status, rows = job.rows_imported, failed = job.rows_failed, duplicates = job.duplicates, rows_per_second = job.rows_per_second as u64, "import finished");
    }

    fn persist_job(&self, org: Uuid, job: &ImportJob) -> Result<(), RuntimeError> {
        self.store().commit(
            vec![StateWrite::Put(import_key(org, job.id), encode(job))],
            true,
        )?;
        Ok(())
    }

    /// Reads, maps and logs the file. `Ok(false)` when cancelled; `Err` with
    /// the reason a user reads when the file cannot be imported at all.
    fn import_file(
        &self,
        handle: &JobHandle,
        path: &Path,
        hints: DialectHints,
        options: &ImportOptions,
        started: Instant,
    ) -> Result<bool, String> {
        let org = handle.org;
        let job_id = handle.job.lock().unwrap_or_else(|p| p.into_inner()).id;
        let mut file = File::open(path).map_err(|e| format!("the upload cannot be read: {e}"))?;
        let mut sample = Vec::with_capacity(SAMPLE_BYTES);
        (&mut file)
            .take(SAMPLE_BYTES as u64)
            .read_to_end(&mut sample)
            .map_err(|e| format!("the upload cannot be read: {e}"))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| format!("the upload cannot be read: {e}"))?;
        let dialect: Dialect = sniff(&sample, &hints).map_err(|e| e.to_string())?;
        drop(sample);
        update(handle, |j| {
            j.dialect = Some(json!({
                "delimiter": (dialect.delimiter as char).to_string(),
                "quote": (dialect.quote as char).to_string(),
                "encoding": dialect.encoding,
            }))
        });
        let mut rows = CsvRows::new(file, dialect, Limits::default());
        let header = rows.read_header().map_err(|e| e.to_string())?;
        let mut report = Report::create(&report_path(self.import_dir(), job_id))
            .map_err(|e| format!("the error report cannot be written: {e}"))?;

        // The first rows decide the column types.
        let mut buffered: Vec<Result<RowBuf, RowIssue>> = Vec::new();
        let mut row = RowBuf::default();
        let mut at_end = false;
        let mut sampled_bytes = 0usize;
        while buffered.len() < SAMPLE_ROWS && sampled_bytes < SAMPLE_MAX_BYTES {
            match rows.next_row(&mut row) {
                None => {
                    at_end = true;
                    break;
                }
                Some(Ok(())) => {
                    sampled_bytes += row.iter().map(str::len).sum::<usize>();
                    buffered.push(Ok(row.clone()));
                }
                Some(Err(issue)) => buffered.push(Err(issue)),
            }
        }
        if buffered.is_empty() {
            return Err("the file has a header but no rows".into());
        }
        let sample_fields: Vec<Vec<String>> = buffered
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect()
            })
            .collect();
        let fields = self
            .tokio()
            .block_on(self.fields(org))
            .map_err(|e| e.to_string())?;
        let known: HashMap<String, AttrType> = fields
            .iter()
            .filter(|f| f.origin != "computed")
            .map(|f| (f.name.clone(), f.ty))
            .collect();
        let computed: Vec<String> = fields
            .iter()
            .filter(|f| f.origin == "computed")
            .map(|f| f.name.clone())
            .collect();
        let plan: Plan = plan(
            &header,
            &options.mapping(),
            &known,
            &computed,
            &sample_fields,
        )
        .map_err(|e| e.to_string())?;
        update(handle, |j| {
            j.columns = serde_json::to_value(&plan.columns).ok()
        });
        // Every partition gets the planned types before the first row: left
        // to infer, partitions could disagree (a text column whose first
        // value looks like a date) and drop values without a report.
        // (Fields some partition knows already keep their types: the plan
        // used them.)
        let planned: Vec<(String, AttrType)> = plan
            .columns
            .iter()
            .filter_map(|c| c.target.clone().map(|t| (t, c.ty)))
            .filter(|(t, _)| t != super::mapping::ID && !known.contains_key(t))
            .collect();
        let recorded: Vec<String> = planned
            .iter()
            .filter(|(n, _)| self.catalog_field_type(org, n).is_some())
            .map(|(n, _)| n.clone())
            .collect();
        self.tokio()
            .block_on(self.declare_fields(org, planned, &recorded, true, "/columns"))
            .map_err(|e| format!("the columns' types cannot be declared: {e}"))?;
        let mut by_email = match plan.upsert_by {
            UpsertBy::Email => self
                .tokio()
                .block_on(self.string_index(org, "email"))
                .map_err(|e| e.to_string())?,
            UpsertBy::Id => HashMap::new(),
        };

        // Row-derived messageIds: a batch retried lands once.
        let id_prefix = format!("import-{}-", job_id.simple());
        let mut state = Progress {
            base: now().0,
            seen: HashMap::default(),
            batch: Vec::with_capacity(BATCH_ROWS),
            batch_rows: Vec::with_capacity(BATCH_ROWS),
            in_flight: std::collections::VecDeque::new(),
            rows_read: 0,
            imported: 0,
            failed: 0,
            duplicates: 0,
            last_persist: Instant::now(),
        };
        let mut traits = Map::new();
        let mut handle_row =
            |state: &mut Progress, report: &mut Report, result: Result<&RowBuf, RowIssue>| {
                state.rows_read += 1;
                let row = match result {
                    Ok(row) => row,
                    Err(issue) => {
                        let column = issue
                            .column
                            .and_then(|c| header.get(c).cloned())
                            .unwrap_or_default();
                        report.write(issue.number, issue.line, &column, &issue.reason, "");
                        state.failed += 1;
                        return;
                    }
                };
                traits.clear();
                match coerce(&plan, row, header.len(), &mut traits) {
                    Ok(key) => {
                        let customer = match key {
                            RowKey::Id(id) => id,
                            // An existing customer with that email, else the
                            // file's id when it has one, else the email.
                            RowKey::Email(email) => match by_email.get(&email) {
                                Some(id) => id.clone(),
                                None => {
                                    // Later rows with this email update this
                                    // customer (and count as repeats).
                                    let id = row_id(&plan, row)
                                        .map(str::to_string)
                                        .unwrap_or_else(|| email.clone());
                                    by_email.insert(email, id.clone());
                                    id
                                }
                            },
                        };
                        let hash = xxhash_rust::xxh3::xxh3_64(customer.as_bytes());
                        let repeat = state.seen.entry(hash).or_insert(0);
                        if *repeat > 0 {
                            state.duplicates += 1;
                        }
                        let at = Timestamp(state.base + i64::from(*repeat));
                        *repeat += 1;
                        let mut message_id = String::with_capacity(id_prefix.len() + 12);
                        message_id.push_str(&id_prefix);
                        push_decimal(&mut message_id, row.number());
                        let event = Event::identify(
                            message_id,
                            customer,
                            at,
                            Json::Object(std::mem::take(&mut traits)),
                        );
                        state.batch.push(event);
                        state.batch_rows.push((row.number(), row.line()));
                    }
                    Err(problems) => {
                        for RowProblem { column, reason } in problems {
                            let value = column
                                .as_ref()
                                .and_then(|c| header.iter().position(|h| h == c))
                                .and_then(|i| row.get(i))
                                .unwrap_or("");
                            report.write(
                                row.number(),
                                row.line(),
                                column.as_deref().unwrap_or(""),
                                &reason,
                                value,
                            );
                        }
                        state.failed += 1;
                    }
                }
            };
        for result in buffered.drain(..) {
            match result {
                Ok(row) => handle_row(&mut state, &mut report, Ok(&row)),
                Err(issue) => handle_row(&mut state, &mut report, Err(issue)),
            }
            if state.batch.len() >= BATCH_ROWS {
                self.send_batch(handle, &mut state, &mut report)
                    .map_err(|e| self.fail(handle, &mut state, &mut report, e))?;
            }
        }
        while !at_end {
            if handle.cancel.load(Ordering::Acquire) {
                break;
            }
            match rows.next_row(&mut row) {
                None => at_end = true,
                Some(Ok(())) => handle_row(&mut state, &mut report, Ok(&row)),
                Some(Err(issue)) => handle_row(&mut state, &mut report, Err(issue)),
            }
            let send = state.batch.len() >= BATCH_ROWS || (at_end && !state.batch.is_empty());
            if send {
                self.send_batch(handle, &mut state, &mut report)
                    .map_err(|e| self.fail(handle, &mut state, &mut report, e))?;
            }
            // Progress also moves through a stretch of bad rows.
            if send || state.rows_read.is_multiple_of(BATCH_ROWS as u64) {
                update(handle, |j| {
                    j.bytes_read = rows.bytes_read().min(j.bytes_total);
                    j.rows_read = state.rows_read;
                    j.rows_imported = state.imported;
                    j.rows_failed = state.failed;
                    j.duplicates = state.duplicates;
                    j.rows_per_second = rate(state.imported, started);
                });
                if state.last_persist.elapsed() > Duration::from_secs(2) {
                    state.last_persist = Instant::now();
                    let job = handle.job.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let _ = self.persist_job(org, &job);
                }
            }
        }
        if !state.batch.is_empty() {
            self.send_batch(handle, &mut state, &mut report)
                .map_err(|e| self.fail(handle, &mut state, &mut report, e))?;
        }
        self.settle_all(&mut state, &mut report)
            .map_err(|e| self.fail(handle, &mut state, &mut report, e))?;
        if let Some(failure) = rows.failure() {
            let reason = format!("reading stopped after {} rows: {failure}", state.rows_read);
            return Err(self.fail(handle, &mut state, &mut report, reason));
        }
        report
            .out
            .flush()
            .map_err(|e| format!("the error report cannot be written: {e}"))?;
        let cancelled = handle.cancel.load(Ordering::Acquire) && !at_end;
        update(handle, |j| {
            if !cancelled {
                j.bytes_read = j.bytes_total;
            }
            j.rows_read = state.rows_read;
            j.rows_imported = state.imported;
            j.rows_failed = state.failed;
            j.duplicates = state.duplicates;
        });
        Ok(!cancelled)
    }

    /// Hands the batch to the ingest path without waiting for it to be
    /// durable: up to [`IN_FLIGHT`] batches are appended while the next rows
    /// are parsed. Waits for room first, so a batch is refused as busy only
    /// when other writers raced it to the last room.
    fn send_batch(
        &self,
        handle: &JobHandle,
        state: &mut Progress,
        report: &mut Report,
    ) -> Result<(), String> {
        let events = std::mem::take(&mut state.batch);
        let rows = std::mem::take(&mut state.batch_rows);
        let mut waited = Duration::ZERO;
        while !self.has_room(events.len() as i64) {
            if handle.cancel.load(Ordering::Acquire) {
                // Sent anyway: the rows read so far land, then the job stops.
                break;
            }
            if waited > Duration::from_secs(300) {
                return Err(format!(
                    "stopped after {} rows: the server stayed saturated for 5 minutes",
                    state.imported
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
            waited += Duration::from_millis(5);
        }
        let (runtime, org, cancel) = (self.clone(), handle.org, handle.cancel.clone());
        let count = events.len();
        // Busy answers (another writer took the room) are retried with the
        // same events, which ingest gives back: row-derived messageIds make a
        // retry land once anyway.
        let pending = self.tokio().spawn(async move {
            let mut events = events;
            let mut retries = 0u32;
            loop {
                let mut back = Vec::new();
                match runtime
                    .ingest_or_give_back(org, events, now(), &mut back)
                    .await
                {
                    // A cancelled job stops retrying: the batch is dropped
                    // (not counted as imported).
                    Err(RuntimeError::Busy { .. }) if cancel.load(Ordering::Acquire) => {
                        return Ok(None);
                    }
                    Err(RuntimeError::Busy { .. }) if retries < 6000 && !back.is_empty() => {
                        retries += 1;
                        events = back;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => return other.map(Some),
                }
            }
        });
        state.in_flight.push_back((pending, rows, count));
        while state.in_flight.len() >= IN_FLIGHT {
            self.settle_oldest(state, report)?;
        }
        Ok(())
    }

    /// On a failure: waits for the batches already handed off (they land
    /// anyway) so the counters say what landed, records them, and answers
    /// the reason.
    fn fail(
        &self,
        handle: &JobHandle,
        state: &mut Progress,
        report: &mut Report,
        reason: String,
    ) -> String {
        while !state.in_flight.is_empty() {
            // A later batch's failure is the same story; the first reason stands.
            let _ = self.settle_oldest(state, report);
        }
        let _ = report.out.flush();
        update(handle, |j| {
            j.rows_read = state.rows_read;
            j.rows_imported = state.imported;
            j.rows_failed = state.failed;
            j.duplicates = state.duplicates;
        });
        reason
    }

    /// Waits for every batch handed off to be durable.
    fn settle_all(&self, state: &mut Progress, report: &mut Report) -> Result<(), String> {
        while !state.in_flight.is_empty() {
            self.settle_oldest(state, report)?;
        }
        Ok(())
    }

    fn settle_oldest(&self, state: &mut Progress, report: &mut Report) -> Result<(), String> {
        let Some((pending, rows, count)) = state.in_flight.pop_front() else {
            return Ok(());
        };
        let result = self
            .tokio()
            .block_on(pending)
            .unwrap_or_else(|e| Err(RuntimeError::Internal(e.to_string())));
        match result {
            Ok(None) => Ok(()),
            Ok(Some(outcome)) => {
                state.imported += (count - outcome.suppressed.len()) as u64;
                for i in outcome.suppressed {
                    let (number, line) = rows[i];
                    report.write(
                        number,
                        line,
                        "",
                        "the customer was erased; imports for it are refused during the suppression period",
                        "",
                    );
                    state.failed += 1;
                }
                Ok(())
            }
            Err(e) => Err(format!(
                "stopped after {} rows: {e}; import the file again (rows are upserted, none is doubled)",
                state.imported
            )),
        }
    }
}

/// A batch's ingest: `None` when it was dropped because the job was cancelled.
type PendingBatch =
    tokio::task::JoinHandle<Result<Option<crate::facade::IngestOutcome>, RuntimeError>>;
/// A batch being logged: its task, the (row, line) of each event, its size.
type InFlight = (PendingBatch, Vec<(u64, u64)>, usize);

/// Mutable state of a running import.
struct Progress {
    /// Event time of every row (repeats of a customer get +1 ms each).
    base: i64,
    /// Customers seen in the file (by a hash of their id) and how often.
    seen: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    batch: Vec<Event>,
    batch_rows: Vec<(u64, u64)>,
    /// Batches handed to ingest, oldest first, not yet known durable.
    in_flight: std::collections::VecDeque<InFlight>,
    rows_read: u64,
    imported: u64,
    failed: u64,
    duplicates: u64,
    last_persist: Instant,
}

/// The keys of `Progress::seen` are xxh3 hashes already: hashing them again
/// (SipHash) was a measurable part of the import thread.
#[derive(Default)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Appends a row number in decimal, without the formatting machinery.
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|d| char::from(*d)));
}

fn rate(rows: u64, started: Instant) -> f64 {
    let secs = started.elapsed().as_secs_f64();
    if secs > 0.0 {
        (rows as f64 / secs).round()
    } else {
        0.0
    }
}

fn update(handle: &JobHandle, change: impl FnOnce(&mut ImportJob)) -> ImportJob {
    let mut job = handle.job.lock().unwrap_or_else(|p| p.into_inner());
    change(&mut job);
    job.clone()
}
