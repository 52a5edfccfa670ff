//! Reading customer lists from CSV files as Excel and CRMs export them: the
//! dialect (delimiter, quote, encoding) is sniffed from the first bytes, then
//! [`CsvRows`] streams the rows of a file of any size with bounded memory.
//!
//! ```text
//! first 64 KiB ─sniff─> Dialect ─┐
//! file (Read + Seek) ────────────┴─> CsvRows ─read_header─> names
//!                                        └─next_row─> RowBuf (decoded fields) | RowIssue
//! ```
//!
//! Bad input never ends the import: a row that cannot be read becomes a
//! [`RowIssue`] (row number, line, column, reason) and reading goes on with the
//! next row. Only a file that is not CSV at all (empty, binary, no header)
//! is a [`FileError`].
//!
//! The parser is `csv_core` driven with our own buffers rather than the `csv`
//! crate: `csv` grows a record without bound (a stray quote in a 5 GB file
//! would buffer the whole rest of the file), and cannot tell us where a quoted
//! field opened, which we need to recover from an unbalanced quote.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};

use csv_core::{ReadFieldResult, ReadRecordResult, ReaderBuilder};
use serde::{Deserialize, Serialize};

/// The UTF-8 byte order mark Excel writes at the start of "CSV UTF-8" files.
const BOM: &[u8] = b"\xEF\xBB\xBF";
/// Bytes read from the file at a time.
const CHUNK_BYTES: usize = 256 * 1024;
/// The most of an oversized record's bytes kept while skipping it.
const SKIP_SCRATCH_BYTES: usize = 64 * 1024;
/// Delimiters sniffing chooses from, in order of preference on a tie.
const DELIMITER_CANDIDATES: [u8; 4] = [b',', b';', b'\t', b'|'];
/// Records of the sample whose field counts decide the delimiter.
const SNIFF_RECORDS: usize = 50;

/// How the file's bytes become text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Encoding {
    #[serde(rename = "utf-8", alias = "utf8")]
    Utf8,
    /// UTF-8 whose first three bytes are a byte order mark (skipped).
    #[serde(rename = "utf-8-bom", alias = "utf8-bom")]
    Utf8Bom,
    /// Windows exports. Decoded as Windows-1252, as browsers do for the
    /// `latin-1` label: bytes 0x80-0x9F are `€`, `’`, `–` and friends in these
    /// files, never the C1 control characters ISO 8859-1 puts there.
    #[serde(
        rename = "latin-1",
        alias = "latin1",
        alias = "iso-8859-1",
        alias = "windows-1252",
        alias = "cp1252"
    )]
    Latin1,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Utf8 => "utf-8",
            Encoding::Utf8Bom => "utf-8-bom",
            Encoding::Latin1 => "latin-1",
        })
    }
}

/// How a file is written: what separates fields, what quotes them, how its
/// bytes are text. Lines end with `\n`, `\r\n` or `\r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    pub delimiter: u8,
    /// Quotes a field; inside a quoted field, two quotes are one.
    pub quote: u8,
    pub encoding: Encoding,
}

impl Default for Dialect {
    fn default() -> Self {
        Dialect {
            delimiter: b',',
            quote: b'"',
            encoding: Encoding::Utf8,
        }
    }
}

/// What the user told us about the file; each `Some` overrides detection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DialectHints {
    pub delimiter: Option<u8>,
    pub quote: Option<u8>,
    pub encoding: Option<Encoding>,
}

/// Bounds that keep one bad row from taking the process's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A longer field makes its row a [`RowIssue`]. Default 1 MiB.
    pub max_field_bytes: usize,
    /// A longer row (all fields together) is a [`RowIssue`]. Default 8 MiB.
    pub max_record_bytes: usize,
    /// A row with more fields is a [`RowIssue`], a header with more is a
    /// [`FileError`]. Default 2000.
    pub max_columns: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_field_bytes: 1 << 20,
            max_record_bytes: 8 << 20,
            max_columns: 2000,
        }
    }
}

/// Why a file cannot be imported at all. Every case but [`FileError::Io`] is
/// the user's to fix (retrying the same file cannot help); `Io` is ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("the file is empty; upload a CSV file whose first row names the columns")]
    Empty,
    #[error(
        "the file is not text (binary data at byte {offset}); if it is an Excel workbook, save it as CSV first"
    )]
    Binary { offset: u64 },
    #[error(
        "the file is UTF-16 text (Excel's \"Unicode text\"); save it as \"CSV UTF-8\" and upload it again"
    )]
    Utf16,
    #[error("the first row names no columns; the first row must be a header such as `email,name`")]
    NoHeader,
    #[error("the header row cannot be read: {0}")]
    HeaderNotText(String),
    #[error("the delimiter and the quote are both `{}`; pick another delimiter", char::from(*.0))]
    DelimiterIsQuote(u8),
    #[error("cannot read the uploaded file: {0}")]
    Io(String),
}

impl FileError {
    /// Whether the fault is ours (the server's storage), not the file's.
    pub fn is_internal(&self) -> bool {
        matches!(self, FileError::Io(_))
    }
}

impl From<io::Error> for FileError {
    fn from(error: io::Error) -> Self {
        FileError::Io(error.to_string())
    }
}

/// A row that cannot be read; it goes to the error report and is not imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowIssue {
    /// 1-based data row number (the header is not a row, blank lines are not
    /// rows).
    pub number: u64,
    /// 1-based physical line where the row starts; the header is on line 1.
    pub line: u64,
    /// 0-based index of the column at fault, when one is.
    pub column: Option<usize>,
    pub reason: String,
}

impl fmt::Display for RowIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {} (line {})", self.number, self.line)?;
        if let Some(column) = self.column {
            write!(f, ", column {}", column + 1)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// One row's decoded fields, kept in a single string with field end offsets so
/// that reading a row into the same `RowBuf` again allocates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowBuf {
    text: String,
    ends: Vec<usize>,
    number: u64,
    line: u64,
}

impl RowBuf {
    pub fn new() -> Self {
        RowBuf::default()
    }

    /// A row from given fields, for callers that build rows themselves (tests,
    /// previews).
    pub fn from_fields(number: u64, line: u64, fields: &[&str]) -> Self {
        let mut row = RowBuf {
            number,
            line,
            ..RowBuf::default()
        };
        for field in fields {
            row.text.push_str(field);
            row.ends.push(row.text.len());
        }
        row
    }

    /// The number of fields, which may differ from the header's.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `index`, as written (not trimmed).
    pub fn get(&self, index: usize) -> Option<&str> {
        let end = *self.ends.get(index)?;
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        Some(&self.text[start..end])
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// 1-based data row number; the header is not a row.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// 1-based physical line where the row starts; the header is line 1.
    pub fn line(&self) -> u64 {
        self.line
    }
}

/// Detects the dialect of a file from its first bytes (`sample`, typically the
/// first 64 KiB). Hints override detection; the checks for an empty, binary or
/// UTF-16 file apply regardless.
///
/// - Encoding: a UTF-8 byte order mark gives [`Encoding::Utf8Bom`]; valid UTF-8
///   (a character cut by the end of the sample allowed) gives
///   [`Encoding::Utf8`]; anything else [`Encoding::Latin1`].
/// - Delimiter: each of `,` `;` tab `|` splits the first records (quotes
///   respected); the one whose most common field count (> 1) is shared by the
///   header and by the most records wins, then the one giving more fields.
///   `,` when none gives more than one field (a single-column file).
pub fn sniff(sample: &[u8], hints: &DialectHints) -> Result<Dialect, FileError> {
    if sample.starts_with(&[0xFF, 0xFE]) || sample.starts_with(&[0xFE, 0xFF]) {
        return Err(FileError::Utf16);
    }
    let body_offset = if sample.starts_with(BOM) {
        BOM.len()
    } else {
        0
    };
    let body = &sample[body_offset..];
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(FileError::Empty);
    }
    if let Some(offset) = binary_offset(body) {
        return Err(FileError::Binary {
            offset: (body_offset + offset) as u64,
        });
    }
    let quote = hints.quote.unwrap_or(b'"');
    let encoding = hints.encoding.unwrap_or_else(|| detect_encoding(sample));
    let delimiter = hints
        .delimiter
        .unwrap_or_else(|| detect_delimiter(body, quote));
    if delimiter == quote {
        return Err(FileError::DelimiterIsQuote(delimiter));
    }
    Ok(Dialect {
        delimiter,
        quote,
        encoding,
    })
}

/// Where the sample stops looking like text: the first NUL byte (text never
/// has one; UTF-16, images and zip files such as .xlsx always do), or the
/// first control byte when they are more than 1 in 100 bytes. Form feeds,
/// vertical tabs (some exports break lines inside cells with them) and the
/// DOS end-of-file byte are text.
fn binary_offset(body: &[u8]) -> Option<usize> {
    if let Some(offset) = body.iter().position(|&b| b == 0) {
        return Some(offset);
    }
    let is_control =
        |b: u8| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0B | 0x0C | 0x1A)) || b == 0x7F;
    let controls = body.iter().filter(|&&b| is_control(b)).count();
    if controls >= 8 && controls * 100 > body.len() {
        return body.iter().position(|&b| is_control(b));
    }
    None
}

fn detect_encoding(sample: &[u8]) -> Encoding {
    if sample.starts_with(BOM) {
        return Encoding::Utf8Bom;
    }
    match std::str::from_utf8(sample) {
        Ok(_) => Encoding::Utf8,
        // `error_len() == None`: a valid sequence cut by the end of the sample.
        Err(e) if e.error_len().is_none() => Encoding::Utf8,
        Err(_) => Encoding::Latin1,
    }
}

fn detect_delimiter(body: &[u8], quote: u8) -> u8 {
    // (header agrees with the common count, per-mille of records that agree,
    // the common count): a wrong delimiter that happens to appear in every row
    // (decimal commas in a `;` file) rarely appears in the header as often.
    let mut best: Option<((bool, usize, usize), u8)> = None;
    for delimiter in DELIMITER_CANDIDATES {
        if delimiter == quote {
            continue;
        }
        let counts = field_counts(body, delimiter, quote);
        let Some((mode, agreeing)) = most_common(&counts) else {
            continue;
        };
        if mode < 2 {
            continue;
        }
        let score = (counts[0] == mode, agreeing * 1000 / counts.len(), mode);
        if best.is_none_or(|(best_score, _)| score > best_score) {
            best = Some((score, delimiter));
        }
    }
    best.map_or(b',', |(_, delimiter)| delimiter)
}

/// The field count of each of the sample's first records.
fn field_counts(body: &[u8], delimiter: u8, quote: u8) -> Vec<usize> {
    let mut parser = ReaderBuilder::new()
        .delimiter(delimiter)
        .quote(quote)
        .build();
    let mut scratch = [0u8; 1024];
    let mut input = body;
    let mut counts = Vec::new();
    let mut fields = 0;
    let mut reached_end = false;
    while counts.len() < SNIFF_RECORDS {
        let (result, consumed, _) = parser.read_field(input, &mut scratch);
        input = &input[consumed..];
        match result {
            ReadFieldResult::InputEmpty | ReadFieldResult::OutputFull => {}
            ReadFieldResult::Field { record_end } => {
                fields += 1;
                if record_end {
                    counts.push(fields);
                    fields = 0;
                }
            }
            ReadFieldResult::End => {
                reached_end = true;
                break;
            }
        }
    }
    // The sample is likely cut in the middle of its last record.
    if reached_end && counts.len() > 1 && !body.ends_with(b"\n") && !body.ends_with(b"\r") {
        counts.pop();
    }
    counts
}

/// The most common value and how many times it occurs; the larger value on a
/// tie.
fn most_common(counts: &[usize]) -> Option<(usize, usize)> {
    let mut tally: Vec<(usize, usize)> = Vec::new();
    for &count in counts {
        match tally.iter_mut().find(|(value, _)| *value == count) {
            Some((_, times)) => *times += 1,
            None => tally.push((count, 1)),
        }
    }
    tally
        .into_iter()
        .max_by_key(|&(value, times)| (times, value))
}

/// Reads the rows of a CSV file one at a time into a reused [`RowBuf`].
///
/// Memory stays bounded by [`Limits`] whatever the file holds: an oversized
/// field is skipped without being buffered.
///
/// # Unbalanced quotes
///
/// A quote that is opened and never closed makes the parser read the rest of
/// the file as one field. Only a record that spans several physical lines can
/// be such a record, so the reader follows the quoting of those records from
/// their first line break on, and calls the quote unbalanced when:
///
/// 1. the quoted field is still open at the end of the file, or
/// 2. a quote that closes a quoted field is followed by something other than
///    the delimiter, a line end or another quote (a well-formed file never
///    does this; it happens when a later field's opening quote closes the
///    stray one), or
/// 3. a limit ([`Limits::max_field_bytes`], [`Limits::max_record_bytes`]) is
///    exceeded inside a quoted field after a line break, or
/// 4. the record's field count differs from the header's and a line inside
///    the quoted field holds a delimiter (swallowed rows do; an address or a
///    note written over several lines usually does not).
///
/// The row is then reported ("unbalanced quote: the quoted field opened on
/// line L is never closed") and reading resumes at line L + 1 by seeking the
/// underlying reader, so the rows the quote swallowed are read. Line breaks
/// are counted as `\n`; a file whose lines end with a lone `\r` has one
/// physical line, so only the limits stop a stray quote there.
pub struct CsvRows<R> {
    reader: R,
    dialect: Dialect,
    limits: Limits,
    parser: csv_core::Reader,
    input: Vec<u8>,
    /// The next unread byte of `input`.
    pos: usize,
    /// The end of the bytes read into `input`.
    end: usize,
    /// Offset in the file of `input[0]`.
    input_offset: u64,
    eof: bool,
    started: bool,
    /// The current record's unescaped field bytes.
    raw: Vec<u8>,
    /// End offsets in `raw` of the current record's fields.
    ends: Vec<usize>,
    /// The physical line of the next unread byte.
    line: u64,
    rows: u64,
    header_len: usize,
    failure: Option<FileError>,
}

/// What reading one record gave.
enum Outcome {
    End,
    Record {
        line: u64,
        fields: usize,
        len: usize,
    },
    TooLarge {
        line: u64,
        column: Option<usize>,
        reason: String,
    },
    Unbalanced {
        line: u64,
        column: usize,
    },
}

/// Which limit a record broke.
enum Overflow {
    Field { column: usize, start: usize },
    Record,
    Columns,
}

impl<R: Read + Seek> CsvRows<R> {
    /// A reader of `reader` from its current position (normally the start of
    /// the file; a byte order mark there is skipped). It buffers by itself:
    /// a plain `File` needs no `BufReader`.
    pub fn new(reader: R, dialect: Dialect, limits: Limits) -> Self {
        Self::with_chunk(reader, dialect, limits, CHUNK_BYTES)
    }

    fn with_chunk(reader: R, dialect: Dialect, limits: Limits, chunk: usize) -> Self {
        let parser = ReaderBuilder::new()
            .delimiter(dialect.delimiter)
            .quote(dialect.quote)
            .build();
        CsvRows {
            reader,
            dialect,
            limits,
            parser,
            // Room for a whole byte order mark in the first read.
            input: vec![0; chunk.max(BOM.len())],
            pos: 0,
            end: 0,
            input_offset: 0,
            eof: false,
            started: false,
            raw: vec![0; SKIP_SCRATCH_BYTES.min(limits.max_record_bytes.saturating_add(1))],
            ends: vec![0; 64.min(limits.max_columns.saturating_add(1))],
            line: 1,
            rows: 0,
            header_len: 0,
            failure: None,
        }
    }

    /// Reads the header row: its names, trimmed. Blank lines before it are
    /// skipped.
    pub fn read_header(&mut self) -> Result<Vec<String>, FileError> {
        loop {
            match self.read_record()? {
                Outcome::End => return Err(FileError::Empty),
                Outcome::Record { fields, len, .. } => {
                    if is_blank(&self.raw[..len]) {
                        continue;
                    }
                    let mut row = RowBuf::default();
                    self.decode(fields, len, &mut row)
                        .map_err(|(column, reason)| {
                            FileError::HeaderNotText(format!("column {}: {reason}", column + 1))
                        })?;
                    let names: Vec<String> = row.iter().map(|n| n.trim().to_string()).collect();
                    if names.iter().all(String::is_empty) {
                        return Err(FileError::NoHeader);
                    }
                    self.header_len = names.len();
                    return Ok(names);
                }
                Outcome::TooLarge { reason, .. } => {
                    return Err(FileError::HeaderNotText(reason));
                }
                Outcome::Unbalanced { line, .. } => {
                    return Err(FileError::HeaderNotText(format!(
                        "unbalanced quote: the quoted field opened on line {line} is never closed"
                    )));
                }
            }
        }
    }

    /// Reads the next row into `row`. `None` at the end of the file, or after
    /// an I/O error (see [`Self::failure`]). `Some(Err)` is a row that cannot
    /// be read; the next call reads the row after it.
    pub fn next_row(&mut self, row: &mut RowBuf) -> Option<Result<(), RowIssue>> {
        if self.failure.is_some() {
            return None;
        }
        loop {
            let outcome = match self.read_record() {
                Ok(outcome) => outcome,
                Err(error) => {
                    self.failure = Some(error);
                    return None;
                }
            };
            let (line, column, reason) = match outcome {
                Outcome::End => return None,
                Outcome::Record { line, fields, len } => {
                    if is_blank(&self.raw[..len]) {
                        continue;
                    }
                    self.rows += 1;
                    row.number = self.rows;
                    row.line = line;
                    return Some(self.decode(fields, len, row).map_err(|(column, reason)| {
                        RowIssue {
                            number: self.rows,
                            line,
                            column: Some(column),
                            reason,
                        }
                    }));
                }
                Outcome::TooLarge {
                    line,
                    column,
                    reason,
                } => (line, column, reason),
                Outcome::Unbalanced { line, column } => (
                    line,
                    Some(column),
                    format!(
                        "unbalanced quote: the quoted field opened on line {line} is never closed"
                    ),
                ),
            };
            self.rows += 1;
            return Some(Err(RowIssue {
                number: self.rows,
                line,
                column,
                reason,
            }));
        }
    }

    /// Offset in the file of the next unread byte, for progress.
    pub fn bytes_read(&self) -> u64 {
        self.input_offset + self.pos as u64
    }

    /// The I/O error that ended reading early, if one did: the rows after it
    /// were not read.
    pub fn failure(&self) -> Option<&FileError> {
        self.failure.as_ref()
    }

    /// Reads the first bytes: where the reader stands, and a byte order mark.
    fn start(&mut self) -> Result<(), FileError> {
        self.started = true;
        self.input_offset = self.reader.stream_position()?;
        while self.end < BOM.len().min(self.input.len()) {
            match self.reader.read(&mut self.input[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if self.input[..self.end].starts_with(BOM) {
            self.pos = BOM.len();
        }
        Ok(())
    }

    /// Replaces the consumed `input` with the next bytes of the file.
    fn fill(&mut self) -> Result<(), FileError> {
        debug_assert_eq!(self.pos, self.end, "only consumed input is replaced");
        self.input_offset += self.end as u64;
        self.pos = 0;
        self.end = 0;
        loop {
            match self.reader.read(&mut self.input) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end = n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Continues reading at `offset` in the file, which starts physical line
    /// `line`, with a fresh parser.
    fn resume_at(&mut self, offset: u64, line: u64) -> Result<(), FileError> {
        let buffered = self.input_offset..=self.input_offset + self.end as u64;
        if buffered.contains(&offset) {
            self.pos = (offset - self.input_offset) as usize;
        } else {
            self.reader.seek(SeekFrom::Start(offset))?;
            self.input_offset = offset;
            self.pos = 0;
            self.end = 0;
            self.eof = false;
        }
        self.parser.reset();
        self.line = line;
        Ok(())
    }

    /// Reads one record into `raw` and `ends`, or skips it when it breaks a
    /// limit, or recovers when its quote is unbalanced.
    fn read_record(&mut self) -> Result<Outcome, FileError> {
        if !self.started {
            self.start()?;
        }
        // Blank lines are skipped here rather than by the parser, so that the
        // record's first line is known.
        loop {
            if self.pos == self.end {
                if self.eof {
                    return Ok(Outcome::End);
                }
                self.fill()?;
                continue;
            }
            match self.input[self.pos] {
                b'\n' => self.line += 1,
                b'\r' => {}
                _ => break,
            }
            self.pos += 1;
        }
        let line = self.line;
        let (delimiter, quote) = (self.dialect.delimiter, self.dialect.quote);
        let max_field = self.limits.max_field_bytes;
        let max_record = self.limits.max_record_bytes;
        let max_columns = self.limits.max_columns;
        // Bytes of the record in `raw` (the whole record's, once skipping).
        let mut len = 0usize;
        let mut fields = 0usize;
        let mut field_start = 0usize;
        let mut overflow: Option<Overflow> = None;
        let mut oversized_field_len: Option<usize> = None;
        let mut span: Option<Span> = None;
        loop {
            if self.pos == self.end && !self.eof {
                self.fill()?;
                continue;
            }
            let input = &self.input[self.pos..self.end];
            let input_offset = self.input_offset + self.pos as u64;
            let lines_before = self.parser.line();
            let (result, consumed, written, ended) = if overflow.is_none() {
                // The output ends one byte past a limit, so that breaking it
                // shows as a full output.
                let out_end = self
                    .raw
                    .len()
                    .min(field_start.saturating_add(max_field).saturating_add(1))
                    .min(max_record.saturating_add(1));
                let ends_end = self.ends.len().min(max_columns.saturating_add(1));
                self.parser.read_record(
                    input,
                    &mut self.raw[len..out_end.max(len)],
                    &mut self.ends[fields..ends_end.max(fields)],
                )
            } else {
                // Skipping: the output is scratch, only the counts matter.
                let scratch = self.raw.len().min(SKIP_SCRATCH_BYTES);
                self.parser
                    .read_record(input, &mut self.raw[..scratch], &mut self.ends)
            };
            let record_done = result == ReadRecordResult::Record;
            let new_lines = self.parser.line() - lines_before;
            // A record's own line end is the last byte it consumes; any other
            // line break lies inside a quoted field.
            let only_terminator = span.is_none()
                && new_lines == 1
                && record_done
                && consumed > 0
                && input[consumed - 1] == b'\n';
            if (span.is_some() || new_lines > 0) && !only_terminator {
                let body = if record_done && consumed > 0 {
                    &input[..consumed - 1]
                } else {
                    &input[..consumed]
                };
                match span.as_mut() {
                    Some(span) => span.feed(body, delimiter, quote),
                    None => {
                        if let Some(i) = body.iter().position(|&b| b == b'\n') {
                            let mut opened = Span::new(input_offset + i as u64 + 1);
                            opened.feed(&body[i + 1..], delimiter, quote);
                            span = Some(opened);
                        }
                    }
                }
            }
            self.pos += consumed;
            self.line += new_lines;
            match &overflow {
                None => {
                    len += written;
                    if ended > 0 {
                        fields += ended;
                        field_start = self.ends[fields - 1];
                    }
                }
                Some(limit) => {
                    if ended > 0 {
                        if let (Overflow::Field { start, .. }, None) = (limit, oversized_field_len)
                        {
                            oversized_field_len = Some(self.ends[0] - start);
                        }
                        fields += ended;
                    }
                    len += written;
                }
            }
            match result {
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull if overflow.is_none() => {
                    if len - field_start > max_field {
                        overflow = Some(Overflow::Field {
                            column: fields,
                            start: field_start,
                        });
                    } else if len > max_record {
                        overflow = Some(Overflow::Record);
                    } else if len == self.raw.len() {
                        let grown =
                            (self.raw.len() * 2).clamp(len + 1, max_record.saturating_add(1));
                        self.raw.resize(grown, 0);
                    }
                }
                ReadRecordResult::OutputFull => {}
                ReadRecordResult::OutputEndsFull if overflow.is_none() => {
                    if fields > max_columns {
                        overflow = Some(Overflow::Columns);
                    } else {
                        let grown =
                            (self.ends.len() * 2).clamp(fields + 1, max_columns.saturating_add(1));
                        self.ends.resize(grown, 0);
                    }
                }
                ReadRecordResult::OutputEndsFull => {}
                ReadRecordResult::Record | ReadRecordResult::End => {}
            }
            if let Some(opened) = &span {
                let mismatch = record_done
                    && self.header_len > 0
                    && fields != self.header_len
                    && opened.delimiter_in_quotes;
                let unbalanced = opened.malformed
                    || (record_done && opened.state == QuoteState::Quoted)
                    || (overflow.is_some() && opened.in_quotes())
                    || mismatch;
                if unbalanced {
                    let current = if record_done {
                        fields.saturating_sub(1)
                    } else {
                        fields
                    };
                    let column = current.saturating_sub(opened.delimiters_after);
                    self.resume_at(opened.resume_offset, line + 1)?;
                    return Ok(Outcome::Unbalanced { line, column });
                }
            }
            match result {
                ReadRecordResult::Record => {}
                // Only reachable with no record started, which the blank line
                // skipping above rules out; answered as the end all the same.
                ReadRecordResult::End => return Ok(Outcome::End),
                _ => continue,
            }
            let reason = match overflow {
                None => return Ok(Outcome::Record { line, fields, len }),
                Some(Overflow::Field { column, .. }) => {
                    let size = oversized_field_len.unwrap_or(len);
                    return Ok(Outcome::TooLarge {
                        line,
                        column: Some(column),
                        reason: format!("the field is {size} bytes; at most {max_field}"),
                    });
                }
                Some(Overflow::Record) => {
                    format!("the row is {len} bytes; at most {max_record}")
                }
                Some(Overflow::Columns) => {
                    format!("the row has {fields} fields; at most {max_columns}")
                }
            };
            return Ok(Outcome::TooLarge {
                line,
                column: None,
                reason,
            });
        }
    }

    /// Decodes the record in `raw` into `row`, or names the column whose bytes
    /// are not text in the dialect's encoding.
    fn decode(&self, fields: usize, len: usize, row: &mut RowBuf) -> Result<(), (usize, String)> {
        let bytes = &self.raw[..len];
        let ends = &self.ends[..fields];
        row.text.clear();
        row.ends.clear();
        match self.dialect.encoding {
            Encoding::Utf8 | Encoding::Utf8Bom => {
                // One check for the record; a character split by a field end
                // is valid in the record but not in its fields.
                if let Ok(text) = std::str::from_utf8(bytes)
                    && ends.iter().all(|&end| text.is_char_boundary(end))
                {
                    row.text.push_str(text);
                    row.ends.extend_from_slice(ends);
                    return Ok(());
                }
                let mut start = 0;
                for (column, &end) in ends.iter().enumerate() {
                    if let Err(e) = std::str::from_utf8(&bytes[start..end]) {
                        let at = e.valid_up_to();
                        return Err((
                            column,
                            format!(
                                "not valid UTF-8 (byte 0x{:02X} at position {}); is the file Latin-1? pass encoding=latin-1",
                                bytes[start + at],
                                at + 1
                            ),
                        ));
                    }
                    start = end;
                }
                unreachable!("a record of valid fields is valid");
            }
            Encoding::Latin1 => {
                let mut start = 0;
                for &end in ends {
                    let field = &bytes[start..end];
                    match std::str::from_utf8(field) {
                        Ok(ascii) if field.is_ascii() => row.text.push_str(ascii),
                        _ => row.text.extend(field.iter().map(|&b| windows_1252(b))),
                    }
                    row.ends.push(row.text.len());
                    start = end;
                }
                Ok(())
            }
        }
    }
}

/// A record of blanks only (`   ` or `,,,`) is a blank line, not a row.
fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// Windows-1252 bytes 0x80-0x9F; the five it leaves undefined stay U+0080-U+009F.
const WINDOWS_1252_HIGH: [char; 32] = [
    '\u{20AC}', '\u{0081}', '\u{201A}', '\u{0192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{02C6}', '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{008D}', '\u{017D}', '\u{008F}',
    '\u{0090}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{02DC}', '\u{2122}', '\u{0161}', '\u{203A}', '\u{0153}', '\u{009D}', '\u{017E}', '\u{0178}',
];

fn windows_1252(byte: u8) -> char {
    match byte {
        0x80..=0x9F => WINDOWS_1252_HIGH[usize::from(byte - 0x80)],
        _ => char::from(byte),
    }
}

/// Where the parser stands in a record, as far as quoting goes; mirrors
/// `csv_core`'s states with `\r` and `\n` as line ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    StartField,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: its end, or the first of two.
    QuoteInQuoted,
    Ended,
}

/// Follows a record's quoting from its first line break on (which always lies
/// inside a quoted field), to tell a multi-line field from an unbalanced
/// quote. Only multi-line records pay for it.
struct Span {
    state: QuoteState,
    /// Offset in the file of the line after the record's first line.
    resume_offset: u64,
    /// Delimiters outside quotes since the line break: how many fields lie
    /// between the quoted field and the parser's position.
    delimiters_after: usize,
    /// A quoted field holds a delimiter after the line break.
    delimiter_in_quotes: bool,
    /// A closing quote is followed by something other than a delimiter, a line
    /// end or a quote.
    malformed: bool,
}

impl Span {
    fn new(resume_offset: u64) -> Self {
        Span {
            state: QuoteState::Quoted,
            resume_offset,
            delimiters_after: 0,
            delimiter_in_quotes: false,
            malformed: false,
        }
    }

    fn in_quotes(&self) -> bool {
        matches!(self.state, QuoteState::Quoted | QuoteState::QuoteInQuoted)
    }

    fn feed(&mut self, bytes: &[u8], delimiter: u8, quote: u8) {
        for &b in bytes {
            let line_end = b == b'\n' || b == b'\r';
            self.state = match self.state {
                QuoteState::Quoted => {
                    if b == quote {
                        QuoteState::QuoteInQuoted
                    } else {
                        self.delimiter_in_quotes |= b == delimiter;
                        QuoteState::Quoted
                    }
                }
                QuoteState::QuoteInQuoted if b == quote => QuoteState::Quoted,
                QuoteState::QuoteInQuoted | QuoteState::StartField | QuoteState::Unquoted
                    if b == delimiter =>
                {
                    self.delimiters_after += 1;
                    QuoteState::StartField
                }
                _ if line_end => QuoteState::Ended,
                QuoteState::QuoteInQuoted => {
                    self.malformed = true;
                    QuoteState::Unquoted
                }
                QuoteState::StartField if b == quote => QuoteState::Quoted,
                QuoteState::StartField | QuoteState::Unquoted => QuoteState::Unquoted,
                QuoteState::Ended => QuoteState::Ended,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A row as read: (number, line, fields), or its issue.
    type RowRead = Result<(u64, u64, Vec<String>), RowIssue>;

    fn read_all_with(
        data: &[u8],
        dialect: Dialect,
        limits: Limits,
        chunk: usize,
    ) -> (Vec<String>, Vec<RowRead>) {
        let mut rows = CsvRows::with_chunk(Cursor::new(data.to_vec()), dialect, limits, chunk);
        let header = rows.read_header().expect("header");
        let mut out = Vec::new();
        let mut row = RowBuf::new();
        while let Some(result) = rows.next_row(&mut row) {
            out.push(result.map(|()| {
                (
                    row.number(),
                    row.line(),
                    row.iter().map(str::to_string).collect(),
                )
            }));
        }
        assert!(rows.failure().is_none());
        assert_eq!(rows.bytes_read(), data.len() as u64);
        (header, out)
    }

    fn read_all(data: &[u8]) -> (Vec<String>, Vec<RowRead>) {
        let dialect = sniff(data, &DialectHints::default()).expect("dialect");
        read_all_with(data, dialect, Limits::default(), CHUNK_BYTES)
    }

    fn ok(number: u64, line: u64, fields: &[&str]) -> RowRead {
        Ok((number, line, fields.iter().map(|f| f.to_string()).collect()))
    }

    fn sniffed(data: &[u8]) -> Dialect {
        sniff(data, &DialectHints::default()).expect("dialect")
    }

    #[test]
    fn sniff_detects_delimiters() {
        assert_eq!(sniffed(b"id,email,name\n1,a@x.io,Ann\n").delimiter, b',');
        assert_eq!(
            sniffed(b"id;email;spend\n1;a@x.io;5000,50\n2;b@x.io;12,00\n").delimiter,
            b';'
        );
        assert_eq!(
            sniffed(b"id\temail\tname\n1\ta@x.io\tAnn, Jr\n").delimiter,
            b'\t'
        );
        assert_eq!(sniffed(b"id|email|name\n1|a@x.io|Ann\n").delimiter, b'|');
        // Semicolons inside a comma file's text column do not win.
        assert_eq!(
            sniffed(b"name,tags\nBob,a;b;c\nAl,d;e;f\nCy,g;h;i\n").delimiter,
            b','
        );
        // Quoted commas in a semicolon file do not count.
        assert_eq!(
            sniffed(b"name;city\n\"Doe, Jane\";Paris\n\"Roe, Rick\";Lyon\n").delimiter,
            b';'
        );
    }

    #[test]
    fn sniff_single_column_defaults_to_comma() {
        let dialect = sniffed(b"email\na@x.io\nb@x.io\n");
        assert_eq!(dialect.delimiter, b',');
        assert_eq!(dialect.quote, b'"');
    }

    #[test]
    fn sniff_detects_encodings() {
        assert_eq!(
            sniffed(b"\xEF\xBB\xBFemail\na@x.io\n").encoding,
            Encoding::Utf8Bom
        );
        assert_eq!(sniffed("name\nJosé\n".as_bytes()).encoding, Encoding::Utf8);
        assert_eq!(sniffed(b"name\nJos\xE9\n").encoding, Encoding::Latin1);
        // A character cut by the end of the sample is still UTF-8.
        assert_eq!(sniffed(b"name\nJos\xC3").encoding, Encoding::Utf8);
    }

    #[test]
    fn sniff_refuses_empty_and_binary_files() {
        let hints = DialectHints::default();
        assert_eq!(sniff(b"", &hints), Err(FileError::Empty));
        assert_eq!(sniff(b" \r\n\n\t", &hints), Err(FileError::Empty));
        assert_eq!(sniff(BOM, &hints), Err(FileError::Empty));
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\x01\0";
        assert_eq!(sniff(png, &hints), Err(FileError::Binary { offset: 8 }));
        assert_eq!(
            sniff(b"a,b\n1,\x002\n", &hints),
            Err(FileError::Binary { offset: 6 })
        );
        let controls: Vec<u8> = (0..200u8)
            .map(|i| if i % 10 == 3 { 0x02 } else { b'a' })
            .collect();
        assert_eq!(
            sniff(&controls, &hints),
            Err(FileError::Binary { offset: 3 })
        );
        assert_eq!(sniff(b"\xFF\xFEe\0m\0", &hints), Err(FileError::Utf16));
    }

    #[test]
    fn hints_override_detection() {
        let hints = DialectHints {
            delimiter: Some(b';'),
            quote: Some(b'\''),
            encoding: Some(Encoding::Latin1),
        };
        let dialect = sniff(b"a,b\n1,2\n", &hints).unwrap();
        assert_eq!(
            dialect,
            Dialect {
                delimiter: b';',
                quote: b'\'',
                encoding: Encoding::Latin1
            }
        );
        let same = DialectHints {
            delimiter: Some(b'"'),
            ..DialectHints::default()
        };
        assert_eq!(
            sniff(b"a,b\n", &same),
            Err(FileError::DelimiterIsQuote(b'"'))
        );
    }

    #[test]
    fn encoding_names_round_trip_through_serde() {
        for (encoding, name) in [
            (Encoding::Utf8, "\"utf-8\""),
            (Encoding::Utf8Bom, "\"utf-8-bom\""),
            (Encoding::Latin1, "\"latin-1\""),
        ] {
            assert_eq!(serde_json::to_string(&encoding).unwrap(), name);
            assert_eq!(serde_json::from_str::<Encoding>(name).unwrap(), encoding);
        }
        assert_eq!(
            serde_json::from_str::<Encoding>("\"windows-1252\"").unwrap(),
            Encoding::Latin1
        );
    }

    #[test]
    fn reads_quoted_fields_with_delimiters_newlines_and_escaped_quotes() {
        let data = b"id,note,city\n1,\"a, b\",Paris\n2,\"line one\nline two\",\"He said \"\"hi\"\"\"\n3,plain,Lyon\n";
        let (header, rows) = read_all(data);
        assert_eq!(header, ["id", "note", "city"]);
        assert_eq!(
            rows,
            vec![
                ok(1, 2, &["1", "a, b", "Paris"]),
                ok(2, 3, &["2", "line one\nline two", "He said \"hi\""]),
                ok(3, 5, &["3", "plain", "Lyon"]),
            ]
        );
    }

    #[test]
    fn reads_crlf_files_and_skips_blank_lines() {
        let data = b"\r\n id , email \r\n1,a@x.io\r\n\r\n\r\n2,b@x.io\r\n  \r\n,\r\n3,c@x.io";
        let (header, rows) = read_all(data);
        assert_eq!(header, ["id", "email"]);
        assert_eq!(
            rows,
            vec![
                ok(1, 3, &["1", "a@x.io"]),
                ok(2, 6, &["2", "b@x.io"]),
                ok(3, 9, &["3", "c@x.io"]),
            ]
        );
    }

    #[test]
    fn skips_the_bom_and_reads_semicolon_tab_and_pipe_files() {
        for delimiter in [";", "\t", "|"] {
            let text = format!("\u{FEFF}id{delimiter}email\n1{delimiter}a@x.io\n");
            let (header, rows) = read_all(text.as_bytes());
            assert_eq!(header, ["id", "email"], "delimiter {delimiter:?}");
            assert_eq!(rows, vec![ok(1, 2, &["1", "a@x.io"])]);
        }
    }

    #[test]
    fn reads_ragged_rows_with_all_their_fields() {
        let (_, rows) = read_all(b"a,b,c\n1,2\n1,2,3,4\n");
        assert_eq!(
            rows,
            vec![ok(1, 2, &["1", "2"]), ok(2, 3, &["1", "2", "3", "4"])]
        );
    }

    #[test]
    fn decodes_latin1_as_windows_1252() {
        let data = b"name,price\nJos\xE9 M\xFCller,\x80 5\n\x93quoted\x94,x\n";
        let (header, rows) = read_all(data);
        assert_eq!(header, ["name", "price"]);
        assert_eq!(
            rows,
            vec![
                ok(1, 2, &["José Müller", "€ 5"]),
                ok(2, 3, &["\u{201C}quoted\u{201D}", "x"])
            ]
        );
    }

    #[test]
    fn invalid_utf8_fails_only_its_row() {
        let data = b"id,name\n1,Ann\n2,Jos\xE9\n3,Bob\n";
        let (_, rows) = read_all_with(data, Dialect::default(), Limits::default(), CHUNK_BYTES);
        assert_eq!(rows[0], ok(1, 2, &["1", "Ann"]));
        assert_eq!(
            rows[1],
            Err(RowIssue {
                number: 2,
                line: 3,
                column: Some(1),
                reason: "not valid UTF-8 (byte 0xE9 at position 4); is the file Latin-1? pass encoding=latin-1".into()
            })
        );
        assert_eq!(rows[2], ok(3, 4, &["3", "Bob"]));
    }

    #[test]
    fn a_character_split_between_fields_is_invalid() {
        let data = b"a,b\n\xC3,\xA9\n";
        let (_, rows) = read_all_with(data, Dialect::default(), Limits::default(), CHUNK_BYTES);
        let issue = rows[0].clone().unwrap_err();
        assert_eq!(issue.column, Some(0));
        assert!(
            issue
                .reason
                .starts_with("not valid UTF-8 (byte 0xC3 at position 1)")
        );
    }

    #[test]
    fn an_oversized_field_is_reported_and_reading_goes_on() {
        let big = "x".repeat(5 * 1024 * 1024);
        let data =
            format!("id,bio,city\n1,short,Paris\n2,{big},Lyon\n3,\"{big}\",Nice\n4,ok,Rome\n");
        let (_, rows) = read_all(data.as_bytes());
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0], ok(1, 2, &["1", "short", "Paris"]));
        let expected = |number, line| {
            Err(RowIssue {
                number,
                line,
                column: Some(1),
                reason: "the field is 5242880 bytes; at most 1048576".into(),
            })
        };
        assert_eq!(rows[1], expected(2, 3));
        assert_eq!(rows[2], expected(3, 4));
        assert_eq!(rows[3], ok(4, 5, &["4", "ok", "Rome"]));
    }

    #[test]
    fn oversized_records_and_too_many_columns_are_reported() {
        let limits = Limits {
            max_field_bytes: 10,
            max_record_bytes: 20,
            max_columns: 4,
        };
        let data = b"a,b,c\n1,2,3\n123456789,123456789,12345\n1,2,3,4,5,6\n4,5,6\n";
        let (_, rows) = read_all_with(data, Dialect::default(), limits, 7);
        assert_eq!(rows[0], ok(1, 2, &["1", "2", "3"]));
        assert_eq!(
            rows[1].clone().unwrap_err().reason,
            "the row is 23 bytes; at most 20"
        );
        assert_eq!(
            rows[2].clone().unwrap_err().reason,
            "the row has 6 fields; at most 4"
        );
        assert_eq!(rows[3], ok(4, 5, &["4", "5", "6"]));
    }

    #[test]
    fn an_unclosed_quote_mid_file_is_reported_and_the_swallowed_rows_are_read() {
        // Line 3 opens a quote; line 5's opening quote would close it.
        let data =
            b"id,name,city\n1,Ann,Paris\n2,\"Bob,Lyon\n3,Cy,Nice\n4,\"Di\",Rome\n5,Ed,Oslo\n";
        for chunk in [1, 2, 5, 16, CHUNK_BYTES] {
            let (_, rows) = read_all_with(data, Dialect::default(), Limits::default(), chunk);
            assert_eq!(
                rows,
                vec![
                    ok(1, 2, &["1", "Ann", "Paris"]),
                    Err(RowIssue {
                        number: 2,
                        line: 3,
                        column: Some(1),
                        reason:
                            "unbalanced quote: the quoted field opened on line 3 is never closed"
                                .into()
                    }),
                    ok(3, 4, &["3", "Cy", "Nice"]),
                    ok(4, 5, &["4", "Di", "Rome"]),
                    ok(5, 6, &["5", "Ed", "Oslo"]),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn an_unclosed_quote_running_to_the_end_is_reported() {
        let data = b"id,name\n1,\"Ann\n2,Bob\n3,Cy\n";
        let (_, rows) = read_all_with(data, Dialect::default(), Limits::default(), 4);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].clone().unwrap_err().line, 2);
        assert_eq!(rows[1], ok(2, 3, &["2", "Bob"]));
        assert_eq!(rows[2], ok(3, 4, &["3", "Cy"]));
    }

    #[test]
    fn a_quote_swallowing_rows_until_it_closes_cleanly_is_caught_by_the_field_count() {
        let data = b"id,name,city,plan\n1,\"Ann,Paris,pro\n2,Bob,Lyon,free\n3,Cy,Nice,free\"\n4,Di,Rome,pro\n";
        let (_, rows) = read_all(data);
        assert_eq!(rows[0].clone().unwrap_err().line, 2);
        assert_eq!(rows[1], ok(2, 3, &["2", "Bob", "Lyon", "free"]));
        assert_eq!(rows[2], ok(3, 4, &["3", "Cy", "Nice", "free\""]));
        assert_eq!(rows[3], ok(4, 5, &["4", "Di", "Rome", "pro"]));
    }

    #[test]
    fn an_unclosed_quote_is_caught_by_the_field_limit_long_before_the_end() {
        let limits = Limits {
            max_field_bytes: 64,
            ..Limits::default()
        };
        let mut data = b"id,name\n1,\"Ann\n".to_vec();
        for i in 2..200 {
            data.extend_from_slice(format!("{i},name{i}\n").as_bytes());
        }
        let (_, rows) = read_all_with(&data, Dialect::default(), limits, 32);
        assert_eq!(rows.len(), 199);
        assert_eq!(rows[0].clone().unwrap_err().line, 2);
        assert_eq!(rows[198], ok(199, 200, &["199", "name199"]));
    }

    #[test]
    fn a_multi_line_field_that_closes_properly_is_not_a_stray_quote() {
        let data = b"id,address,plan\n1,\"1 Main St\nApt 2, Floor 3\nSpringfield\",pro\n2,x,free\n";
        let (_, rows) = read_all(data);
        assert_eq!(
            rows,
            vec![
                ok(
                    1,
                    2,
                    &["1", "1 Main St\nApt 2, Floor 3\nSpringfield", "pro"]
                ),
                ok(2, 5, &["2", "x", "free"]),
            ]
        );
    }

    #[test]
    fn chunk_size_does_not_change_what_is_read() {
        let big = "y".repeat(300);
        let data = format!(
            "\u{FEFF}id;note\r\n1;\"a;\"\"b\"\"\r\nc\"\r\n\r\n2;{big}\r\n3;\"x\r\n4;y\r\n5;z"
        );
        let limits = Limits {
            max_field_bytes: 100,
            ..Limits::default()
        };
        let dialect = sniffed(data.as_bytes());
        let expected = read_all_with(data.as_bytes(), dialect, limits, CHUNK_BYTES);
        assert_eq!(expected.1.len(), 5, "{:?}", expected.1);
        for chunk in [1, 2, 3, 7, 64] {
            assert_eq!(
                read_all_with(data.as_bytes(), dialect, limits, chunk),
                expected,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn empty_files_and_header_only_files() {
        let mut rows = CsvRows::new(
            Cursor::new(Vec::new()),
            Dialect::default(),
            Limits::default(),
        );
        assert_eq!(rows.read_header(), Err(FileError::Empty));
        let mut rows = CsvRows::new(
            Cursor::new(b"\n\n,,\n".to_vec()),
            Dialect::default(),
            Limits::default(),
        );
        assert_eq!(rows.read_header(), Err(FileError::Empty));
        let (header, rows) = read_all(b"id,email\n");
        assert_eq!(header, ["id", "email"]);
        assert!(rows.is_empty());
    }

    #[test]
    fn a_header_that_is_not_text_is_a_file_error() {
        let mut rows = CsvRows::new(
            Cursor::new(b"id,n\xE9\n1,2\n".to_vec()),
            Dialect::default(),
            Limits::default(),
        );
        assert_eq!(
            rows.read_header(),
            Err(FileError::HeaderNotText(
                "column 2: not valid UTF-8 (byte 0xE9 at position 2); is the file Latin-1? pass encoding=latin-1".into()
            ))
        );
        // Blank lines before the header are skipped; names that are only
        // (non-ASCII) spaces are no header.
        let mut rows = CsvRows::new(
            Cursor::new(" ,\t\n\u{A0},\u{3000}\n1,2\n".as_bytes().to_vec()),
            Dialect::default(),
            Limits::default(),
        );
        assert_eq!(rows.read_header(), Err(FileError::NoHeader));
    }

    #[test]
    fn io_errors_end_reading_and_are_kept() {
        struct Failing(Cursor<Vec<u8>>);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.position() >= 8 {
                    return Err(io::Error::other("disk gone"));
                }
                let len = buf.len().min(4);
                self.0.read(&mut buf[..len])
            }
        }
        impl Seek for Failing {
            fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
                self.0.seek(pos)
            }
        }
        let data = Failing(Cursor::new(b"a,b\n1,2\n3,4\n".to_vec()));
        let mut rows = CsvRows::new(data, Dialect::default(), Limits::default());
        rows.read_header().unwrap();
        let mut row = RowBuf::new();
        assert_eq!(rows.next_row(&mut row), Some(Ok(())));
        assert_eq!(rows.next_row(&mut row), None);
        assert_eq!(rows.next_row(&mut row), None);
        assert_eq!(rows.failure(), Some(&FileError::Io("disk gone".into())));
    }

    /// Reader throughput by hand: `cargo test --release -p xeno-actors --lib
    /// import::csv -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn reader_throughput() {
        let mut data = Vec::new();
        data.extend_from_slice(
            b"id,email,first_name,last_name,city,country,plan,spend,created_at,phone\n",
        );
        for i in 0..1_000_000u64 {
            data.extend_from_slice(
                format!(
                    "{i},user{i}@example.com,Ann,Smith,Springfield,US,pro,{}.50,2024-03-{:02},+1555{:07}\n",
                    i % 5000,
                    i % 28 + 1,
                    i
                )
                .as_bytes(),
            );
        }
        let started = std::time::Instant::now();
        let mut rows = CsvRows::new(
            Cursor::new(&data[..]),
            Dialect::default(),
            Limits::default(),
        );
        rows.read_header().unwrap();
        let mut row = RowBuf::new();
        let mut count = 0u64;
        let mut bytes = 0usize;
        while let Some(result) = rows.next_row(&mut row) {
            result.unwrap();
            bytes += row.get(9).map_or(0, str::len);
            count += 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(count, 1_000_000);
        assert!(bytes > 0);
        println!(
            "{count} rows, {:.1} MB in {seconds:.3} s: {:.0} rows/s, {:.0} MB/s",
            data.len() as f64 / 1e6,
            count as f64 / seconds,
            data.len() as f64 / 1e6 / seconds
        );
    }
}
