//! `xeno import`: uploads a CSV file of customers to a running server, then
//! follows the import job until it ends.
//!
//! The file is streamed from disk as the multipart body (imports run to
//! several GB, so it is never read into memory), the command shows upload and
//! import progress on stderr, cancels the job on Ctrl-C, and saves the
//! server's report of the rows it refused next to the input.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;
use futures_util::TryStreamExt;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::multipart::{Form, Part};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio_util::io::ReaderStream;

use super::{
    ApiClient, ApiError, DEFAULT_SERVER, EXIT_INTERRUPTED, UsageError, describe_transport_error,
};

/// How often the job is polled while it runs.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often a progress line is printed when stderr is not a terminal (a log
/// file or a test's pipe must not get a line per poll).
const PLAIN_LINE_INTERVAL: Duration = Duration::from_secs(1);
/// How long polling rides out an unreachable or overloaded server (a restart
/// behind a proxy) before giving up on an import that may run for hours.
const POLL_OUTAGE_TOLERANCE: Duration = Duration::from_secs(30);
/// Read size of the upload: big enough that a GB file is not a million
/// small writes, small enough to keep the progress bar smooth.
const UPLOAD_CHUNK_BYTES: usize = 256 * 1024;

/// Arguments of `xeno import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The CSV file to import (streamed; files of several GB are fine).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// The organization the customers belong to.
    #[arg(long, value_name = "ORG")]
    pub org: String,

    /// The server's base URL. The API key is read from XENO_API_KEY.
    #[arg(long, value_name = "URL", default_value = DEFAULT_SERVER)]
    pub server: String,

    /// Import the CSV column COLUMN as the attribute TARGET, e.g.
    /// `--map total_spend=Spend`. Repeatable.
    #[arg(long = "map", value_name = "TARGET=COLUMN", value_parser = parse_map)]
    pub map: Vec<(String, String)>,

    /// Do not import the CSV column COLUMN. Repeatable.
    #[arg(long = "skip", value_name = "COLUMN")]
    pub skip: Vec<String>,

    /// What becomes of columns neither mapped nor skipped (server default
    /// when absent).
    #[arg(long, value_enum, value_name = "WHAT")]
    pub unmapped: Option<Unmapped>,

    /// The attribute that identifies an existing customer to update.
    #[arg(long, value_enum, value_name = "KEY")]
    pub upsert_by: Option<UpsertBy>,

    /// The field delimiter: a single character, or `tab`.
    #[arg(long, value_name = "C", value_parser = parse_delimiter)]
    pub delimiter: Option<char>,

    /// The file's text encoding; `auto` lets the server detect it.
    #[arg(long, value_enum, value_name = "ENCODING", default_value_t = Encoding::Auto)]
    pub encoding: Encoding,

    /// Parse the attribute TARGET as TYPE (string, number, bool, timestamp,
    /// list_of_strings), e.g. `--type total_spend=number`. Repeatable.
    #[arg(long = "type", value_name = "TARGET=TYPE", value_parser = parse_type)]
    pub types: Vec<(String, AttributeType)>,

    /// Where to save the report of refused rows [default: FILE.errors.csv].
    #[arg(long, value_name = "PATH")]
    pub errors: Option<PathBuf>,

    /// Print the job id once the file is uploaded and exit without waiting.
    #[arg(long)]
    pub no_wait: bool,
}

/// `--unmapped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Unmapped {
    /// Keep them as attributes named after their header.
    Attributes,
    /// Drop them.
    Skip,
}

/// `--upsert-by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpsertBy {
    Id,
    Email,
}

/// `--encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Encoding {
    Auto,
    #[value(name = "utf-8")]
    Utf8,
    #[value(name = "utf-8-bom")]
    Utf8Bom,
    #[value(name = "latin-1")]
    Latin1,
}

/// The TYPE of `--type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttributeType {
    String,
    Number,
    Bool,
    Timestamp,
    #[value(name = "list_of_strings", alias = "list-of-strings")]
    ListOfStrings,
}

impl Unmapped {
    fn as_str(self) -> &'static str {
        match self {
            Unmapped::Attributes => "attributes",
            Unmapped::Skip => "skip",
        }
    }
}

impl UpsertBy {
    fn as_str(self) -> &'static str {
        match self {
            UpsertBy::Id => "id",
            UpsertBy::Email => "email",
        }
    }
}

impl Encoding {
    /// The name the server takes; `None` for `auto`, which the server
    /// expresses by the key's absence.
    fn as_option(self) -> Option<&'static str> {
        match self {
            Encoding::Auto => None,
            Encoding::Utf8 => Some("utf-8"),
            Encoding::Utf8Bom => Some("utf-8-bom"),
            Encoding::Latin1 => Some("latin-1"),
        }
    }
}

impl AttributeType {
    fn as_str(self) -> &'static str {
        match self {
            AttributeType::String => "string",
            AttributeType::Number => "number",
            AttributeType::Bool => "bool",
            AttributeType::Timestamp => "timestamp",
            AttributeType::ListOfStrings => "list_of_strings",
        }
    }
}

/// `TARGET=COLUMN`. The split is at the first `=`: attribute names have no
/// `=`, CSV headers might.
fn parse_map(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((target, column)) if !target.is_empty() && !column.is_empty() => {
            Ok((target.to_string(), column.to_string()))
        }
        _ => Err(format!(
            "expected TARGET=COLUMN (e.g. total_spend=Spend), got `{value}`"
        )),
    }
}

/// `TARGET=TYPE`.
fn parse_type(value: &str) -> Result<(String, AttributeType), String> {
    let Some((target, kind)) = value.split_once('=').filter(|(t, _)| !t.is_empty()) else {
        return Err(format!(
            "expected TARGET=TYPE (e.g. total_spend=number), got `{value}`"
        ));
    };
    let kind = AttributeType::from_str(kind, true).map_err(|_| {
        format!(
            "unknown type `{kind}`; expected one of string, number, bool, timestamp, list_of_strings"
        )
    })?;
    Ok((target.to_string(), kind))
}

/// `--delimiter`: one character, or `tab` since a literal tab is awkward to
/// type in a shell.
fn parse_delimiter(value: &str) -> Result<char, String> {
    if value.eq_ignore_ascii_case("tab") || value == "\\t" {
        return Ok('\t');
    }
    let mut chars = value.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(format!(
            "expected a single character or `tab`, got `{value}`"
        )),
    }
}

/// Translates the arguments into the `options` part of `POST /imports`.
/// Keys the user did not set are left out so the server's defaults apply.
pub fn import_options(args: &ImportArgs) -> Result<Value, UsageError> {
    // CSV header → target attribute, or null to skip the column.
    let mut mapping: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    let mut column_of_target: BTreeMap<&str, &str> = BTreeMap::new();
    for (target, column) in &args.map {
        if let Some(previous) = mapping.get(column.as_str()) {
            return Err(UsageError(match previous {
                Some(other) if other == target => {
                    format!("--map {target}={column} is given twice")
                }
                Some(other) => {
                    format!("column `{column}` is mapped to both `{other}` and `{target}`")
                }
                None => unreachable!("skips are added after maps"),
            }));
        }
        if let Some(other) = column_of_target.insert(target, column) {
            return Err(UsageError(format!(
                "attribute `{target}` is mapped from both columns `{other}` and `{column}`"
            )));
        }
        mapping.insert(column, Some(target));
    }
    for column in &args.skip {
        if let Some(Some(target)) = mapping.get(column.as_str()) {
            return Err(UsageError(format!(
                "column `{column}` is both mapped (to `{target}`) and skipped"
            )));
        }
        mapping.insert(column, None);
    }
    let mut types: BTreeMap<&str, AttributeType> = BTreeMap::new();
    for (target, kind) in &args.types {
        match types.insert(target, *kind) {
            Some(previous) if previous != *kind => {
                return Err(UsageError(format!(
                    "attribute `{target}` is given two types: {} and {}",
                    previous.as_str(),
                    kind.as_str()
                )));
            }
            _ => {}
        }
    }

    let mut options = Map::new();
    if !mapping.is_empty() {
        let mapping: Map<String, Value> = mapping
            .into_iter()
            .map(|(column, target)| (column.to_string(), json!(target)))
            .collect();
        options.insert("mapping".into(), Value::Object(mapping));
    }
    if let Some(unmapped) = args.unmapped {
        options.insert("unmapped".into(), json!(unmapped.as_str()));
    }
    if let Some(upsert_by) = args.upsert_by {
        options.insert("upsert_by".into(), json!(upsert_by.as_str()));
    }
    if let Some(delimiter) = args.delimiter {
        options.insert("delimiter".into(), json!(delimiter.to_string()));
    }
    if let Some(encoding) = args.encoding.as_option() {
        options.insert("encoding".into(), json!(encoding));
    }
    if !types.is_empty() {
        let types: Map<String, Value> = types
            .into_iter()
            .map(|(target, kind)| (target.to_string(), json!(kind.as_str())))
            .collect();
        options.insert("types".into(), Value::Object(types));
    }
    Ok(Value::Object(options))
}

/// Where the report of refused rows goes: `--errors`, else `FILE.errors.csv`.
pub fn error_report_path(args: &ImportArgs) -> PathBuf {
    match &args.errors {
        Some(path) => path.clone(),
        None => {
            let mut path = args.file.clone().into_os_string();
            path.push(".errors.csv");
            PathBuf::from(path)
        }
    }
}

/// The state of an import job, as `GET /imports/{id}` answers it. Fields
/// missing from the answer take their defaults, unknown ones are ignored, so
/// the client outlives small changes of the server.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ImportJob {
    pub id: String,
    pub status: JobStatus,
    pub file_name: String,
    pub bytes_total: u64,
    pub bytes_read: u64,
    pub rows_read: u64,
    pub rows_imported: u64,
    pub rows_failed: u64,
    pub duplicates: u64,
    pub rows_per_second: f64,
    pub error: Option<String>,
    pub errors_url: Option<String>,
}

/// `ImportJob::status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    #[default]
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    /// A status this client does not know: it keeps polling.
    #[serde(other)]
    Unknown,
}

impl JobStatus {
    fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Unknown => "unknown",
        }
    }
}

/// Runs `xeno import`.
pub fn run(args: ImportArgs) -> ExitCode {
    super::block_on(async move {
        match import(args).await {
            Ok(code) => code,
            Err(e) => super::report_error(&e),
        }
    })
}

async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let options = import_options(&args)?;
    let client = ApiClient::from_env(&args.server, &args.org)?;
    let interactive = std::io::stderr().is_terminal();
    let mut interrupts = watch_interrupts();
    let started = Instant::now();

    let job = match upload(&client, &args, &options, interactive, &mut interrupts).await? {
        Some(job) => job,
        None => {
            eprintln!("xeno: upload interrupted");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
    };
    if job.id.is_empty() {
        bail!("the server accepted the file but answered without a job id");
    }
    if args.no_wait {
        println!("{}", job.id);
        return Ok(ExitCode::SUCCESS);
    }

    let job = wait(&client, job, interactive, &mut interrupts).await?;
    let job = match job {
        Waited::Finished(job) => job,
        Waited::Abandoned(id) => {
            eprintln!("xeno: stopped waiting; the server is still cancelling import {id}");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
    };

    let report = if job.rows_failed > 0 {
        let path = error_report_path(&args);
        download_error_report(&client, &job, &path)
            .await
            .with_context(|| format!("saving the error report to {}", path.display()))?;
        Some(path)
    } else {
        None
    };

    eprintln!("{}", summary(&job, started.elapsed()));
    if let Some(path) = &report {
        eprintln!("error report: {}", path.display());
    }
    Ok(match job.status {
        JobStatus::Completed => ExitCode::SUCCESS,
        JobStatus::Cancelled => {
            eprintln!("xeno: import cancelled");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        _ => {
            let reason = job.error.as_deref().unwrap_or("the server gave no reason");
            eprintln!("xeno: import failed: {reason}");
            ExitCode::from(super::EXIT_FAILURE)
        }
    })
}

/// The last line of a finished import. The duration is the wall time the
/// user waited (upload included); the rate is the server's own measure.
fn summary(job: &ImportJob, elapsed: Duration) -> String {
    format!(
        "imported {} rows ({} failed, {} duplicates) in {:.1} s, {:.0} rows/s",
        job.rows_imported,
        job.rows_failed,
        job.duplicates,
        elapsed.as_secs_f64(),
        job.rows_per_second
    )
}

/// Counts Ctrl-C presses. Installing the handler once, in a task of its own,
/// means a press while a request is in flight is not lost: it shows up at
/// the next `changed()`.
fn watch_interrupts() -> watch::Receiver<u32> {
    let (presses, receiver) = watch::channel(0u32);
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            presses.send_modify(|count| *count += 1);
        }
    });
    receiver
}

/// Resolves at the next Ctrl-C; never when no handler could be installed.
async fn next_interrupt(interrupts: &mut watch::Receiver<u32>) {
    if interrupts.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Streams the file to `POST /imports`. `None` when Ctrl-C interrupted it.
async fn upload(
    client: &ApiClient,
    args: &ImportArgs,
    options: &Value,
    interactive: bool,
    interrupts: &mut watch::Receiver<u32>,
) -> anyhow::Result<Option<ImportJob>> {
    let path = &args.file;
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let metadata = file
        .metadata()
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !metadata.is_file() {
        bail!("{} is not a file", path.display());
    }
    let length = metadata.len();
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "import.csv".to_string());

    let mut meter = UploadMeter::new(interactive, length, &file_name);
    let bar = meter.bar.clone();
    let body = ReaderStream::with_capacity(file, UPLOAD_CHUNK_BYTES)
        .inspect_ok(move |chunk| meter.sent(chunk.len()));
    let file_part = Part::stream_with_length(reqwest::Body::wrap_stream(body), length)
        .file_name(file_name.clone())
        .mime_str("text/csv")?;
    let options_part = Part::text(options.to_string()).mime_str("application/json")?;
    let form = Form::new()
        .part("options", options_part)
        .part("file", file_part);
    let request = client.post(client.org_url(&["imports"])).multipart(form);

    let started = Instant::now();
    let response = tokio::select! {
        response = request.send() => response,
        () = next_interrupt(interrupts) => {
            if let Some(bar) = &bar {
                bar.abandon();
            }
            return Ok(None);
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let response = match response {
        Ok(response) => response,
        Err(e) if e.is_body() => {
            return Err(
                anyhow::Error::new(e).context(format!("uploading {} failed", path.display()))
            );
        }
        Err(e) => return Err(describe_transport_error(e)),
    };
    let response = super::check(response).await?;
    if !interactive {
        eprintln!(
            "uploaded {} ({}) in {:.1} s",
            file_name,
            HumanBytes(length),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(Some(super::json(response).await?))
}

/// Counts the bytes of the upload as the body stream yields them: a bar on a
/// terminal, a line a second otherwise.
struct UploadMeter {
    bar: Option<ProgressBar>,
    file_name: String,
    total: u64,
    sent: u64,
    started: Instant,
    last_line: Instant,
}

impl UploadMeter {
    fn new(interactive: bool, total: u64, file_name: &str) -> UploadMeter {
        let bar = interactive.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        let now = Instant::now();
        UploadMeter {
            bar,
            file_name: file_name.to_string(),
            total,
            sent: 0,
            started: now,
            last_line: now,
        }
    }

    fn sent(&mut self, bytes: usize) {
        self.sent += bytes as u64;
        if let Some(bar) = &self.bar {
            bar.inc(bytes as u64);
        } else if self.last_line.elapsed() >= PLAIN_LINE_INTERVAL {
            self.last_line = Instant::now();
            let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
            eprintln!(
                "uploading {}: {} of {} ({}%), {}/s",
                self.file_name,
                HumanBytes(self.sent),
                HumanBytes(self.total),
                percent(self.sent, self.total),
                HumanBytes((self.sent as f64 / seconds) as u64)
            );
        }
    }
}

fn percent(part: u64, total: u64) -> u64 {
    if total == 0 {
        0
    } else {
        (part.min(total) as u128 * 100 / total as u128) as u64
    }
}

/// How waiting for the job ended.
enum Waited {
    /// The job reached a final status.
    Finished(ImportJob),
    /// A second Ctrl-C: the user stopped waiting for the cancellation.
    Abandoned(String),
}

/// Why one poll failed, and whether the next one may succeed.
struct PollError {
    error: anyhow::Error,
    transient: bool,
}

async fn poll(client: &ApiClient, id: &str) -> Result<ImportJob, PollError> {
    let url = client.org_url(&["imports", id]);
    let response = client.get(url).send().await.map_err(|e| PollError {
        error: describe_transport_error(e),
        transient: true,
    })?;
    let response = super::check(response).await.map_err(|error| PollError {
        transient: error
            .downcast_ref::<ApiError>()
            .is_some_and(ApiError::is_transient),
        error,
    })?;
    super::json(response).await.map_err(|error| PollError {
        error,
        transient: false,
    })
}

/// Polls the job until it finishes, showing its progress. The first Ctrl-C
/// asks the server to cancel and keeps polling until the job says so; a
/// second one stops waiting.
async fn wait(
    client: &ApiClient,
    mut job: ImportJob,
    interactive: bool,
    interrupts: &mut watch::Receiver<u32>,
) -> anyhow::Result<Waited> {
    let id = job.id.clone();
    let mut display = JobDisplay::new(interactive, &id);
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cancelling = false;
    let mut outage_since: Option<Instant> = None;
    loop {
        display.show(&job);
        if job.status.is_finished() {
            display.finish();
            return Ok(Waited::Finished(job));
        }
        tokio::select! {
            _ = ticker.tick() => {}
            () = next_interrupt(interrupts) => {
                if cancelling {
                    display.finish();
                    return Ok(Waited::Abandoned(id));
                }
                cancelling = true;
                display.println("cancelling the import (Ctrl-C again to stop waiting)");
                let url = client.org_url(&["imports", &id, "cancel"]);
                // A refused cancel (the job just finished) is worth saying,
                // not worth stopping for: the next poll tells the outcome.
                if let Err(e) = super::send(client.post(url)).await {
                    display.println(&format!("xeno: cancel refused: {e:#}"));
                }
                continue;
            }
        }
        match poll(client, &id).await {
            Ok(polled) => {
                outage_since = None;
                job = polled;
            }
            Err(PollError {
                error,
                transient: true,
            }) => {
                let since = *outage_since.get_or_insert_with(Instant::now);
                if since.elapsed() > POLL_OUTAGE_TOLERANCE {
                    display.finish();
                    return Err(error.context(format!("following import {id}")));
                }
            }
            Err(PollError { error, .. }) => {
                display.finish();
                return Err(error.context(format!("following import {id}")));
            }
        }
    }
}

/// The progress of the job on the server: a bar over the bytes it has read
/// on a terminal, a line a second otherwise.
struct JobDisplay {
    bar: Option<ProgressBar>,
    short_id: String,
    last_line: Option<Instant>,
}

impl JobDisplay {
    fn new(interactive: bool, id: &str) -> JobDisplay {
        let bar = interactive.then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} importing [{bar:30}] {percent:>3}% {elapsed} {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        JobDisplay {
            bar,
            short_id: id.chars().take(8).collect(),
            last_line: None,
        }
    }

    fn show(&mut self, job: &ImportJob) {
        let rows = format!(
            "{} rows imported, {:.0} rows/s, {} failed",
            job.rows_imported, job.rows_per_second, job.rows_failed
        );
        if let Some(bar) = &self.bar {
            bar.set_length(job.bytes_total);
            bar.set_position(job.bytes_read);
            bar.set_message(match job.status {
                JobStatus::Queued => "queued".to_string(),
                _ => rows,
            });
            return;
        }
        let due = self
            .last_line
            .is_none_or(|last| last.elapsed() >= PLAIN_LINE_INTERVAL);
        if due && !job.status.is_finished() {
            self.last_line = Some(Instant::now());
            eprintln!(
                "import {}: {}, {}% read, {}",
                self.short_id,
                job.status.as_str(),
                percent(job.bytes_read, job.bytes_total),
                rows
            );
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Streams `GET /imports/{id}/errors` to `path`.
async fn download_error_report(
    client: &ApiClient,
    job: &ImportJob,
    path: &Path,
) -> anyhow::Result<()> {
    let url = match job.errors_url.as_deref().filter(|url| !url.is_empty()) {
        Some(given) => client.server_url(given)?,
        None => client.org_url(&["imports", &job.id, "errors"]),
    };
    let mut response = super::send(client.get(url)).await?;
    let file = std::fs::File::create(path).context("cannot create the file")?;
    // Blocking writes are fine here: this runtime runs nothing but this
    // command, and the file is local.
    let mut file = std::io::BufWriter::new(file);
    while let Some(chunk) = response.chunk().await.context("the download broke off")? {
        file.write_all(&chunk).context("cannot write the file")?;
    }
    file.flush().context("cannot write the file")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct TestCli {
        #[command(flatten)]
        import: ImportArgs,
    }

    fn parse(extra: &[&str]) -> Result<ImportArgs, clap::Error> {
        let mut argv = vec!["xeno-import", "customers.csv", "--org", "acme"];
        argv.extend_from_slice(extra);
        TestCli::try_parse_from(argv).map(|cli| cli.import)
    }

    fn options(extra: &[&str]) -> Result<Value, UsageError> {
        import_options(&parse(extra).expect("valid arguments"))
    }

    #[test]
    fn no_flags_send_an_empty_options_document() {
        assert_eq!(options(&[]).unwrap(), json!({}));
    }

    #[test]
    fn maps_skips_and_types_become_the_mapping_and_types() {
        let options = options(&[
            "--map",
            "total_spend=Spend",
            "--map",
            "email=E-Mail Address",
            "--skip",
            "Notes",
            "--type",
            "total_spend=number",
            "--type",
            "tags=list_of_strings",
            "--unmapped",
            "skip",
            "--upsert-by",
            "email",
            "--delimiter",
            ";",
            "--encoding",
            "latin-1",
        ])
        .unwrap();
        assert_eq!(
            options,
            json!({
                "mapping": {"Spend": "total_spend", "E-Mail Address": "email", "Notes": null},
                "types": {"total_spend": "number", "tags": "list_of_strings"},
                "unmapped": "skip",
                "upsert_by": "email",
                "delimiter": ";",
                "encoding": "latin-1",
            })
        );
    }

    #[test]
    fn a_column_header_may_contain_an_equals_sign() {
        assert_eq!(
            options(&["--map", "ratio=a=b"]).unwrap(),
            json!({"mapping": {"a=b": "ratio"}})
        );
    }

    #[test]
    fn auto_encoding_is_left_to_the_server() {
        assert_eq!(options(&["--encoding", "auto"]).unwrap(), json!({}));
        assert_eq!(
            options(&["--encoding", "utf-8-bom"]).unwrap(),
            json!({"encoding": "utf-8-bom"})
        );
    }

    #[test]
    fn tab_and_single_characters_are_delimiters() {
        assert_eq!(
            options(&["--delimiter", "tab"]).unwrap(),
            json!({"delimiter": "\t"})
        );
        assert_eq!(
            options(&["--delimiter", "|"]).unwrap(),
            json!({"delimiter": "|"})
        );
        let error = parse(&["--delimiter", ";;"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("single character"), "{error}");
    }

    #[test]
    fn malformed_pairs_and_unknown_types_are_usage_errors() {
        for bad in [
            ["--map", "total_spend"],
            ["--map", "=Spend"],
            ["--map", "total_spend="],
            ["--type", "total_spend"],
            ["--type", "total_spend=decimal"],
            ["--unmapped", "keep"],
            ["--upsert-by", "phone"],
            ["--encoding", "utf-16"],
        ] {
            let error = parse(&bad).map(|_| ()).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad:?}");
        }
        let error = parse(&["--type", "x=decimal"]).unwrap_err().to_string();
        assert!(error.contains("list_of_strings"), "{error}");
    }

    #[test]
    fn contradictory_mappings_are_refused() {
        let error = options(&["--map", "a=Spend", "--map", "b=Spend"]).unwrap_err();
        assert_eq!(error.0, "column `Spend` is mapped to both `a` and `b`");
        let error = options(&["--map", "spend=A", "--map", "spend=B"]).unwrap_err();
        assert_eq!(
            error.0,
            "attribute `spend` is mapped from both columns `A` and `B`"
        );
        let error = options(&["--map", "spend=Spend", "--skip", "Spend"]).unwrap_err();
        assert_eq!(
            error.0,
            "column `Spend` is both mapped (to `spend`) and skipped"
        );
        let error = options(&["--type", "a=number", "--type", "a=bool"]).unwrap_err();
        assert_eq!(error.0, "attribute `a` is given two types: number and bool");
        // Repeating the same thing is harmless.
        assert_eq!(
            options(&[
                "--skip", "Notes", "--skip", "Notes", "--type", "a=bool", "--type", "a=bool"
            ])
            .unwrap(),
            json!({"mapping": {"Notes": null}, "types": {"a": "bool"}})
        );
    }

    #[test]
    fn the_error_report_goes_next_to_the_input_unless_told() {
        let args = parse(&[]).unwrap();
        assert_eq!(
            error_report_path(&args),
            PathBuf::from("customers.csv.errors.csv")
        );
        let args = parse(&["--errors", "/tmp/refused.csv"]).unwrap();
        assert_eq!(error_report_path(&args), PathBuf::from("/tmp/refused.csv"));
    }

    #[test]
    fn jobs_parse_leniently() {
        let job: ImportJob = serde_json::from_value(json!({
            "id": "0190f0c4-0000-7000-8000-000000000000",
            "status": "running",
            "rows_imported": 10,
            "rows_per_second": 12.5,
            "error": null,
            "something_new": [1, 2, 3],
        }))
        .unwrap();
        assert_eq!(job.status, JobStatus::Running);
        assert_eq!(job.rows_imported, 10);
        assert_eq!(job.rows_failed, 0);
        let job: ImportJob = serde_json::from_value(json!({"status": "paused"})).unwrap();
        assert_eq!(job.status, JobStatus::Unknown);
        assert!(!job.status.is_finished());
    }

    #[test]
    fn the_summary_line_names_rows_failures_duplicates_and_rate() {
        let job = ImportJob {
            rows_imported: 998,
            rows_failed: 2,
            duplicates: 5,
            rows_per_second: 1234.4,
            ..ImportJob::default()
        };
        assert_eq!(
            summary(&job, Duration::from_millis(2500)),
            "imported 998 rows (2 failed, 5 duplicates) in 2.5 s, 1234 rows/s"
        );
    }
}
