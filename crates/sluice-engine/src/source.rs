//! Landing-folder sources: discovery of settled files, cutting files into slices, and reading a
//! slice into Arrow with the declared input columns.
//!
//! **When is a file read?** A file is picked up once its modification time is at least
//! `settle` old (default 2 s): a writer still appending keeps touching it and is never read
//! half-way. Names starting with `.` or `_`, and names ending in `.tmp`, `.part`, `.crc`,
//! `.inprogress` or `.partial` are never read, so write-then-rename writers are safe with any
//! settle time. A file is taken in once per pipeline, by path. A file whose size or modification
//! time changes afterwards is handled by `source.on_change` ([`OnChange`]): reported (the
//! default, as Auto Loader ignores it), a pipeline error, or its new content taken in — only
//! the appended complete lines when a checksum of the bytes taken in still matches, so growing
//! logs are tailed exactly once.
//!
//! **Slices.** CSV and JSON Lines files are cut by a single scan that finds record boundaries
//! (quote-aware for CSV), so a slice is a byte range a worker can read without parsing the rows
//! before it. Parquet files are cut by row ranges.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arrow::array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow::compute::{CastOptions, cast_with_options, concat_batches};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_core::BatchSlice;

use crate::spec::Format;

/// Why a file or slice could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The data is wrong: retrying will not help. Names file, line (or row) and reason.
    #[error("{file}{}: {reason}", .line.map(|l| format!(":{l}")).unwrap_or_default())]
    BadData {
        file: String,
        /// 1-based line for CSV/JSON Lines, 1-based row for Parquet.
        line: Option<u64>,
        reason: String,
    },
    /// The file has columns the dataset does not know, under the `evolve` policy.
    #[error("{file}: new columns {}: the source dataset needs a new version", .columns.iter().map(|(n, t)| format!("{n} ({t})")).collect::<Vec<_>>().join(", "))]
    NewColumns {
        file: String,
        /// Name and sluice type of each new column.
        columns: Vec<(String, String)>,
    },
    #[error("reading {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

impl SourceError {
    /// The same error, naming `file` (a compressed file read through its spool).
    pub fn in_file(self, file: &str) -> SourceError {
        match self {
            SourceError::BadData { line, reason, .. } => SourceError::BadData {
                file: file.to_string(),
                line,
                reason,
            },
            SourceError::NewColumns { columns, .. } => SourceError::NewColumns {
                file: file.to_string(),
                columns,
            },
            SourceError::Io { source, .. } => SourceError::Io {
                file: file.to_string(),
                source,
            },
        }
    }

    pub(crate) fn bad(file: &str, line: Option<u64>, reason: impl Into<String>) -> SourceError {
        SourceError::BadData {
            file: file.to_string(),
            line,
            reason: reason.into(),
        }
    }
    pub(crate) fn io(file: &str, source: std::io::Error) -> SourceError {
        SourceError::Io {
            file: file.to_string(),
            source,
        }
    }
}

/// A file that is ready to be taken in.
#[derive(Debug, Clone, PartialEq)]
pub struct LandedFile {
    pub path: String,
    pub size: u64,
    pub modified_ms: i64,
}

/// Lists the files matching `pattern` that have settled and are not temporary.
pub fn discover(pattern: &str, settle: std::time::Duration) -> Result<Vec<LandedFile>, String> {
    let paths = glob::glob(pattern).map_err(|e| format!("bad glob {pattern:?}: {e}"))?;
    let now = SystemTime::now();
    let mut out = Vec::new();
    for entry in paths {
        let Ok(path) = entry else { continue };
        if is_temporary(&path) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // vanished between listing and stat: it will be seen again if it returns
        };
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified().unwrap_or(now);
        let age = now.duration_since(modified).unwrap_or_default();
        if age < settle {
            continue;
        }
        let modified_ms = modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        out.push(LandedFile {
            path: path.display().to_string(),
            size: meta.len(),
            modified_ms,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn is_temporary(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return true;
    };
    name.starts_with('.')
        || name.starts_with('_')
        || [".tmp", ".part", ".crc", ".inprogress", ".partial"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Cuts a file into slices of at most `max_rows` records.
pub fn slice_file(
    path: &str,
    format: Format,
    max_rows: u64,
) -> Result<Vec<BatchSlice>, SourceError> {
    Ok(slice_file_from(path, format, max_rows, &CutFrom::default())?.slices)
}

/// Where to start cutting a file, and whether its end must be a complete line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutFrom {
    /// A record boundary: 0, or the end of what was taken in before (an appended part; the
    /// CSV header stays the file's first line).
    pub byte: u64,
    /// The index of the first record from there (rows are numbered across the whole file).
    pub row: u64,
    /// Leave a last record without its newline for later (it may still be being written), as
    /// Vector and Filebeat do when they tail a file.
    pub complete_lines: bool,
    /// The index of the first slice cut: 0, or the slices a cut that stopped part-way queued
    /// (it goes on from the end of its last slice).
    pub index: u32,
}

/// The slices cut, and how far they reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub slices: Vec<BatchSlice>,
    /// The byte after the last record cut: where the next part starts.
    pub end: u64,
    /// Records cut: `from.row` plus these is where the next part's rows are numbered from.
    pub rows: u64,
    /// Hex BLAKE3 of bytes `[0, end)`, when the cut read exactly those (a text file cut from
    /// its start to its end), so taking a file in reads it once; `None` otherwise: see
    /// [`Cut::checksum_of`].
    pub checksum: Option<String>,
}

impl Cut {
    /// The checksum of what this cut takes in of `path` (bytes `[0, end)`): the one the scan
    /// computed, or read again from the file.
    pub fn checksum_of(&self, path: &str) -> Result<String, SourceError> {
        if let Some(sum) = &self.checksum {
            return Ok(sum.clone());
        }
        checksum(path, self.end)?.ok_or_else(|| SourceError::Io {
            file: path.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file got shorter while it was read",
            ),
        })
    }
}

/// Cuts a file (from `from`) into slices of at most `max_rows` records. Parquet files are
/// always cut whole.
pub fn slice_file_from(
    path: &str,
    format: Format,
    max_rows: u64,
    from: &CutFrom,
) -> Result<Cut, SourceError> {
    slice_file_streaming(path, format, max_rows, from, &mut |_| true)
}

/// [`slice_file_from`], handing each full slice of a CSV or JSON Lines file to `on_slice` as
/// soon as the scan finds its end, so its batch can be queued while the rest of the file is
/// scanned (the last, partial slice comes only in the [`Cut`]). The slices are exactly those of
/// [`slice_file_from`]. `on_slice` returning false stops the scan (an `Interrupted` error).
pub fn slice_file_streaming(
    path: &str,
    format: Format,
    max_rows: u64,
    from: &CutFrom,
    on_slice: &mut dyn FnMut(&BatchSlice) -> bool,
) -> Result<Cut, SourceError> {
    match format {
        Format::Csv => slice_text(path, max_rows, true, from, on_slice),
        Format::Jsonl => slice_text(path, max_rows, false, from, on_slice),
        Format::Parquet => {
            let slices = slice_parquet(path, max_rows)?;
            let end = std::fs::metadata(path)
                .map_err(|e| SourceError::io(path, e))?
                .len();
            let rows = slices.iter().map(|s| s.row_count).sum();
            Ok(Cut {
                slices,
                end,
                rows,
                checksum: None,
            })
        }
    }
}

/// Hex BLAKE3 of bytes `[0, len)` of a file, read in a stream (never the whole file in
/// memory): what a source keeps of the bytes it took in, to tell later whether a changed file
/// only grew. `None` when the file is shorter than `len`.
pub fn checksum(path: &str, len: u64) -> Result<Option<String>, SourceError> {
    let file = File::open(path).map_err(|e| SourceError::io(path, e))?;
    let mut hasher = blake3::Hasher::new();
    let hashed = std::io::copy(
        &mut BufReader::with_capacity(1 << 20, file).take(len),
        &mut hasher,
    )
    .map_err(|e| SourceError::io(path, e))?;
    Ok((hashed == len).then(|| hasher.finalize().to_hex().to_string()))
}

/// Finds record boundaries in a text file. For CSV the first record is the header and a newline
/// inside double quotes does not end a record (RFC 4180: `""` toggles twice, staying inside).
fn slice_text(
    path: &str,
    max_rows: u64,
    csv: bool,
    from: &CutFrom,
    on_slice: &mut dyn FnMut(&BatchSlice) -> bool,
) -> Result<Cut, SourceError> {
    let mut file = File::open(path).map_err(|e| SourceError::io(path, e))?;
    file.seek(SeekFrom::Start(from.byte))
        .map_err(|e| SourceError::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buf = vec![0u8; 1 << 20];
    let mut offset: u64 = from.byte;
    let mut in_quotes = false;
    let mut record_start: u64 = from.byte;
    let mut record_blank = true;
    let mut header_pending = csv && from.byte == 0;
    let mut slices = Vec::new();
    let mut slice_start: u64 = from.byte;
    let mut rows_in_slice: u64 = 0;
    let mut row_index: u64 = from.row;
    // Slices handed to `on_slice` so far.
    let mut handed = 0usize;
    // A cut from the start to the end reads every byte it takes in: hash them on the way.
    let mut hasher = (from.byte == 0 && !from.complete_lines).then(blake3::Hasher::new);

    let mut end_record = |end: u64,
                          start: u64,
                          blank: bool,
                          header_pending: &mut bool,
                          slice_start: &mut u64,
                          rows_in_slice: &mut u64,
                          slices: &mut Vec<BatchSlice>| {
        if *header_pending {
            *header_pending = false;
            *slice_start = end;
            return;
        }
        if blank {
            if *rows_in_slice == 0 {
                *slice_start = end;
            }
            return;
        }
        if *rows_in_slice == 0 {
            *slice_start = start;
        }
        *rows_in_slice += 1;
        if *rows_in_slice == max_rows {
            slices.push(BatchSlice {
                path: path.to_string(),
                index: from.index + slices.len() as u32,
                byte_start: *slice_start,
                byte_end: end,
                row_start: row_index,
                row_count: max_rows,
            });
            row_index += max_rows;
            *rows_in_slice = 0;
            *slice_start = end;
        }
    };

    loop {
        // Full slices are handed on between reads (at most a read's worth late).
        for s in &slices[handed..] {
            if !on_slice(s) {
                return Err(SourceError::io(
                    path,
                    std::io::Error::new(std::io::ErrorKind::Interrupted, "the cut was stopped"),
                ));
            }
        }
        handed = slices.len();
        let n = reader
            .read(&mut buf)
            .map_err(|e| SourceError::io(path, e))?;
        if n == 0 {
            break;
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
        // Jump from quote to newline with memchr; between them only whether the record is
        // blank so far matters (whitespace only).
        let chunk = &buf[..n];
        let mut i = 0;
        while i < n {
            let next = if csv {
                memchr::memchr2(b'"', b'\n', &chunk[i..])
            } else {
                memchr::memchr(b'\n', &chunk[i..])
            };
            let stop = next.map_or(n, |k| i + k);
            if record_blank
                && chunk[i..stop]
                    .iter()
                    .any(|c| !matches!(c, b'\r' | b' ' | b'\t'))
            {
                record_blank = false;
            }
            if next.is_none() {
                break;
            }
            let pos = offset + stop as u64;
            if chunk[stop] == b'"' {
                in_quotes = !in_quotes;
                record_blank = false;
            } else if !in_quotes {
                end_record(
                    pos + 1,
                    record_start,
                    record_blank,
                    &mut header_pending,
                    &mut slice_start,
                    &mut rows_in_slice,
                    &mut slices,
                );
                record_start = pos + 1;
                record_blank = true;
            }
            i = stop + 1;
        }
        offset += n as u64;
    }
    let end = if from.complete_lines {
        record_start
    } else {
        if record_start < offset {
            end_record(
                offset,
                record_start,
                record_blank,
                &mut header_pending,
                &mut slice_start,
                &mut rows_in_slice,
                &mut slices,
            );
        }
        offset
    };
    let full: u64 = slices.iter().map(|s| s.row_count).sum();
    if rows_in_slice > 0 {
        slices.push(BatchSlice {
            path: path.to_string(),
            index: from.index + slices.len() as u32,
            byte_start: slice_start,
            byte_end: end,
            row_start: from.row + full,
            row_count: rows_in_slice,
        });
    }
    let rows = full + rows_in_slice;
    let checksum = hasher.map(|h| h.finalize().to_hex().to_string());
    Ok(Cut {
        slices,
        end,
        rows,
        checksum,
    })
}

fn slice_parquet(path: &str, max_rows: u64) -> Result<Vec<BatchSlice>, SourceError> {
    let file = File::open(path).map_err(|e| SourceError::io(path, e))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let builder = match ParquetRecordBatchReaderBuilder::try_new(file) {
        Ok(b) => b,
        // An unreadable file still becomes one batch, so it shows up in quarantine with its
        // reason instead of being skipped silently.
        Err(_) => {
            return Ok(vec![BatchSlice {
                path: path.to_string(),
                index: 0,
                byte_start: 0,
                byte_end: size,
                row_start: 0,
                row_count: 0,
            }]);
        }
    };
    let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let mut slices = Vec::new();
    let mut start = 0;
    while start < total {
        let count = max_rows.min(total - start);
        slices.push(BatchSlice {
            path: path.to_string(),
            index: slices.len() as u32,
            byte_start: 0,
            byte_end: size,
            row_start: start,
            row_count: count,
        });
        start += count;
    }
    Ok(slices)
}

/// The column that keeps what a file has beyond the declared columns, as JSON.
pub const RESCUED: &str = "_rescued";

/// What to do with columns a landed file has and the input does not declare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownColumns {
    /// Keep them, as a JSON object per row, in the `_rescued` column: nothing is lost.
    #[default]
    Rescue,
    /// Quarantine the batch, naming the columns.
    Fail,
    /// Drop them.
    Ignore,
    /// Hold the batch and propose a new version of the source dataset with the columns added
    /// (nullable); the registry accepts it if it passes the dataset's compatibility mode. The
    /// pipeline picks the new version up when it is started again (as Auto Loader's
    /// `addNewColumns` stops the stream), and `sluice retry` replays the held batches. Needs
    /// `source.dataset`.
    Evolve,
}

/// What to do with a file whose size or modification time changed after it was taken in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnChange {
    /// Say so, once per change, in the logs and `sluice status`; the new content is not read.
    #[default]
    Warn,
    /// The pipeline reports the error and queues nothing more until the file is restored or
    /// the policy changed.
    Fail,
    /// Take the new content in. A file that only grew (the checksum of the bytes taken in
    /// still matches) has its new complete lines queued; a replaced one has all its content
    /// queued again and its earlier rows removed in the commit that publishes the new ones.
    Reprocess,
}

impl OnChange {
    pub fn is_default(&self) -> bool {
        *self == OnChange::Warn
    }

    /// The store's name for what discovery did about a change under this policy.
    pub fn action(self) -> &'static str {
        match self {
            OnChange::Warn => "warned",
            OnChange::Fail => "failed",
            OnChange::Reprocess => "reprocessed",
        }
    }
}

/// The columns a source promises: name, Arrow type, whether nulls are allowed.
#[derive(Debug, Clone)]
pub struct InputSchema {
    /// What the transform sees as `input`: the declared columns, then `_rescued` when rescuing.
    pub schema: SchemaRef,
    /// The declared columns only: what is read from files.
    pub declared: SchemaRef,
    pub unknown: UnknownColumns,
}

impl InputSchema {
    /// Builds the input schema from declared `name -> type` columns.
    pub fn from_columns(
        columns: &indexmap::IndexMap<String, String>,
        required: &[String],
    ) -> Result<InputSchema, String> {
        InputSchema::with_policy(columns, required, UnknownColumns::Ignore)
    }

    /// Builds the input schema from declared columns and the unknown-columns policy.
    pub fn with_policy(
        columns: &indexmap::IndexMap<String, String>,
        required: &[String],
        unknown: UnknownColumns,
    ) -> Result<InputSchema, String> {
        if columns.contains_key(RESCUED) {
            return Err(format!(
                "{RESCUED:?} is sluice's column for unknown columns: rename yours"
            ));
        }
        let mut fields = Vec::with_capacity(columns.len());
        for (name, ty) in columns {
            let t: sluice_schema::FieldType =
                ty.parse().map_err(|e| format!("column {name:?}: {e}"))?;
            fields.push(Field::new(
                name,
                t.to_arrow(),
                !required.iter().any(|r| r == name),
            ));
        }
        let declared = Arc::new(Schema::new(fields.clone()));
        if unknown == UnknownColumns::Rescue {
            fields.push(Field::new(RESCUED, DataType::Utf8, true));
        }
        Ok(InputSchema {
            schema: Arc::new(Schema::new(fields)),
            declared,
            unknown,
        })
    }

    /// Infers the columns from a sample of a file (first 1000 records).
    pub fn infer(
        path: &str,
        format: Format,
        compression: crate::spec::Compression,
        delimiter: u8,
    ) -> Result<indexmap::IndexMap<String, String>, SourceError> {
        let file = File::open(path).map_err(|e| SourceError::io(path, e))?;
        let schema = match format {
            Format::Jsonl if compression != crate::spec::Compression::None => {
                let text = crate::spool::open_text(path, compression)?;
                arrow_json::reader::infer_json_schema(BufReader::new(text), Some(1000))
                    .map_err(|e| {
                        SourceError::bad(path, None, format!("cannot infer columns: {e}"))
                    })?
                    .0
            }
            Format::Csv if compression != crate::spec::Compression::None => {
                arrow_csv::reader::Format::default()
                    .with_header(true)
                    .with_delimiter(delimiter)
                    .infer_schema(crate::spool::open_text(path, compression)?, Some(1000))
                    .map_err(|e| {
                        SourceError::bad(path, None, format!("cannot infer columns: {e}"))
                    })?
                    .0
            }
            Format::Csv => {
                csv_header(path, delimiter)?; // refuses a header naming a column twice
                arrow_csv::reader::Format::default()
                    .with_header(true)
                    .with_delimiter(delimiter)
                    .infer_schema(BufReader::new(file), Some(1000))
                    .map_err(|e| {
                        SourceError::bad(path, None, format!("cannot infer columns: {e}"))
                    })?
                    .0
            }
            Format::Jsonl => {
                arrow_json::reader::infer_json_schema_from_seekable(
                    BufReader::new(file),
                    Some(1000),
                )
                .map_err(|e| SourceError::bad(path, None, format!("cannot infer columns: {e}")))?
                .0
            }
            Format::Parquet => ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| {
                    SourceError::bad(path, None, format!("not a readable Parquet file: {e}"))
                })?
                .schema()
                .as_ref()
                .clone(),
        };
        let mut out = indexmap::IndexMap::new();
        for f in schema.fields() {
            let t = sluice_schema::FieldType::from_arrow(f.data_type())
                .map_err(|e| SourceError::bad(path, None, format!("column {:?}: {e}", f.name())))?;
            out.insert(f.name().clone(), t.to_string());
        }
        Ok(out)
    }
}

/// A row left out of its batch under `source.bad_rows: drop`: where it was, why, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// 1-based line in the file (in the decompressed text of a compressed file).
    pub line: u64,
    /// The column whose value does not parse or fit, when one is to blame.
    pub column: Option<String>,
    pub reason: String,
    /// The record as it was in the file, without its line ending.
    pub raw: String,
}

/// A slice as read: the batch, and what was left out of it.
#[derive(Debug, Clone)]
pub struct SliceRead {
    /// The file the rows came from (a compressed file, not its spool).
    pub file: String,
    pub batch: RecordBatch,
    /// Records in the slice, good and bad.
    pub records: u64,
    /// Rows left out under `bad_rows: drop`, in file order.
    pub dropped: Vec<BadRow>,
    /// The CSV header's column names, kept with dropped rows so they can be replayed.
    pub header: Option<Vec<String>>,
}

/// Records of CSV or JSON Lines text to decode: a slice of a landed file, or dropped rows
/// being replayed.
#[derive(Debug, Clone)]
pub struct TextRecords {
    /// The file the records came from, for errors.
    pub file: String,
    /// CSV: the column names of the file's header.
    pub header: Option<Vec<String>>,
    bytes: Vec<u8>,
    lines: Lines,
}

#[derive(Debug, Clone)]
enum Lines {
    /// The bytes start at this offset of this file: lines are counted from the file.
    Offset { path: String, byte_start: u64 },
    /// The file line of each record, in order (replayed rows).
    Listed(Vec<u64>),
}

impl TextRecords {
    /// A slice of a plain CSV or JSON Lines file.
    pub fn of_slice(
        slice: &BatchSlice,
        format: Format,
        delimiter: u8,
    ) -> Result<TextRecords, SourceError> {
        let header = match format {
            Format::Csv => Some(csv_header(&slice.path, delimiter)?),
            _ => None,
        };
        Ok(TextRecords {
            file: slice.path.clone(),
            header,
            bytes: read_range(slice)?,
            lines: Lines::Offset {
                path: slice.path.clone(),
                byte_start: slice.byte_start,
            },
        })
    }

    /// Rows stored earlier (their file line and raw text), to be read again.
    pub fn replay(file: &str, header: Option<Vec<String>>, rows: &[(u64, String)]) -> TextRecords {
        let mut bytes = Vec::new();
        for (_, raw) in rows {
            bytes.extend_from_slice(raw.as_bytes());
            bytes.push(b'\n');
        }
        TextRecords {
            file: file.to_string(),
            header,
            bytes,
            lines: Lines::Listed(rows.iter().map(|(l, _)| *l).collect()),
        }
    }

    /// The file line of each of `which` (ascending indexes into `records`). Error and drop
    /// paths only: for a slice it reads the file up to the slice once.
    fn lines_of(&self, records: &[(usize, usize)], which: &[usize]) -> Vec<u64> {
        match &self.lines {
            Lines::Listed(lines) => which
                .iter()
                .map(|&i| lines.get(i).copied().unwrap_or(0))
                .collect(),
            Lines::Offset { path, byte_start } => {
                let mut line = line_of(path, *byte_start);
                let mut at = 0usize;
                which
                    .iter()
                    .map(|&i| {
                        let start = records.get(i).map(|r| r.0).unwrap_or(at).max(at);
                        line += memchr::memchr_iter(b'\n', &self.bytes[at..start]).count() as u64;
                        at = start;
                        line
                    })
                    .collect()
            }
        }
    }

    fn raw(&self, record: (usize, usize)) -> String {
        String::from_utf8_lossy(&self.bytes[record.0..record.1])
            .trim_end_matches(['\n', '\r'])
            .to_string()
    }
}

/// Reads one slice with the input schema. Bad data gives [`SourceError::BadData`] naming the
/// first offending line and column; nothing of the slice is returned in that case.
pub fn read_slice(
    slice: &BatchSlice,
    format: Format,
    input: &InputSchema,
    delimiter: u8,
) -> Result<RecordBatch, SourceError> {
    read_slice_with(slice, format, input, delimiter, false).map(|r| r.batch)
}

/// [`read_slice`], leaving out the rows that do not parse or fit when `drop` is set (CSV and
/// JSON Lines; a Parquet file's values are typed, and one that does not fit holds the batch).
pub fn read_slice_with(
    slice: &BatchSlice,
    format: Format,
    input: &InputSchema,
    delimiter: u8,
    drop: bool,
) -> Result<SliceRead, SourceError> {
    match format {
        Format::Parquet => read_parquet(slice, input).map(|batch| SliceRead {
            file: slice.path.clone(),
            records: batch.num_rows() as u64,
            batch,
            dropped: Vec::new(),
            header: None,
        }),
        Format::Csv | Format::Jsonl => read_records(
            &TextRecords::of_slice(slice, format, delimiter)?,
            format,
            input,
            delimiter,
            drop,
            decode_batch_rows(slice),
        ),
    }
}

/// Reads CSV or JSON Lines records with the input schema (see [`read_slice_with`]).
pub fn read_records(
    rec: &TextRecords,
    format: Format,
    input: &InputSchema,
    delimiter: u8,
    drop: bool,
    rows_hint: usize,
) -> Result<SliceRead, SourceError> {
    match format {
        Format::Csv => read_csv(rec, input, delimiter, drop, rows_hint),
        _ => read_jsonl(rec, input, drop, rows_hint),
    }
}

/// The column names a slice's file carries: the CSV header, the keys of the slice's first JSON
/// record, or the Parquet file's columns. Used to tell which schema version wrote a file.
pub fn slice_columns(
    slice: &BatchSlice,
    format: Format,
    delimiter: u8,
) -> Result<Vec<String>, SourceError> {
    let path = &slice.path;
    match format {
        Format::Csv => csv_header(path, delimiter),
        Format::Jsonl => {
            use std::io::BufRead;
            let mut file = File::open(path).map_err(|e| SourceError::io(path, e))?;
            file.seek(SeekFrom::Start(slice.byte_start))
                .map_err(|e| SourceError::io(path, e))?;
            let mut line = String::new();
            BufReader::new(file.take(slice.byte_end - slice.byte_start))
                .read_line(&mut line)
                .map_err(|e| SourceError::io(path, e))?;
            let record: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line.trim()).map_err(|e| {
                    SourceError::bad(
                        path,
                        Some(line_of(path, slice.byte_start)),
                        format!("not a JSON object: {e}"),
                    )
                })?;
            Ok(record.keys().cloned().collect())
        }
        Format::Parquet => {
            let file = File::open(path).map_err(|e| SourceError::io(path, e))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
                SourceError::bad(path, None, format!("not a readable Parquet file: {e}"))
            })?;
            Ok(builder
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect())
        }
    }
}

/// Rows per decoded batch: the whole slice at once, so the slice needs no concatenation (a
/// copy of every column); capped so a huge `max_rows` does not pre-allocate wildly.
fn decode_batch_rows(slice: &BatchSlice) -> usize {
    (slice.row_count as usize).clamp(1, 1 << 20)
}

/// The decoded batches as one: the only batch as is, several concatenated.
fn one_batch(
    schema: &SchemaRef,
    mut batches: Vec<RecordBatch>,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if batches.len() == 1 {
        return Ok(batches.remove(0));
    }
    concat_batches(schema, &batches)
}

fn read_range(slice: &BatchSlice) -> Result<Vec<u8>, SourceError> {
    let path = &slice.path;
    let mut file = File::open(path).map_err(|e| SourceError::io(path, e))?;
    file.seek(SeekFrom::Start(slice.byte_start))
        .map_err(|e| SourceError::io(path, e))?;
    let len = slice.byte_end.saturating_sub(slice.byte_start);
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| SourceError::io(path, e))?;
    if (bytes.len() as u64) < len {
        return Err(SourceError::bad(
            path,
            None,
            format!(
                "file is shorter than when it was taken in ({} bytes missing): it was changed or truncated after landing",
                len - bytes.len() as u64
            ),
        ));
    }
    Ok(bytes)
}

/// 1-based line number of byte `offset` in the file (error path only: reads the prefix).
fn line_of(path: &str, offset: u64) -> u64 {
    let Ok(file) = File::open(path) else { return 0 };
    let mut reader = BufReader::new(file).take(offset);
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 1u64;
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
    }
    lines
}

/// Record start offsets within a slice's bytes (same rules as the slicer).
fn record_starts(bytes: &[u8], csv: bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' if csv => in_quotes = !in_quotes,
            b'\n' if !in_quotes => {
                if !bytes[start..i].iter().all(|c| c.is_ascii_whitespace()) {
                    out.push((start, i + 1));
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < bytes.len() && !bytes[start..].iter().all(|c| c.is_ascii_whitespace()) {
        out.push((start, bytes.len()));
    }
    out
}

fn csv_header(path: &str, delimiter: u8) -> Result<Vec<String>, SourceError> {
    let file = File::open(path).map_err(|e| SourceError::io(path, e))?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .from_reader(file);
    let headers = rdr
        .headers()
        .map_err(|e| SourceError::bad(path, Some(1), format!("cannot read the CSV header: {e}")))?;
    let names: Vec<String> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = if i == 0 {
                h.trim_start_matches('\u{feff}')
            } else {
                h
            };
            h.trim().to_string()
        })
        .collect();
    // Two columns of one name: which value is meant cannot be told, so neither is taken.
    for (i, name) in names.iter().enumerate() {
        if let Some(j) = names[i + 1..].iter().position(|n| n == name) {
            return Err(SourceError::bad(
                path,
                Some(1),
                format!(
                    "the header names column {name:?} twice (fields {} and {}): rename one",
                    i + 1,
                    i + j + 2
                ),
            ));
        }
    }
    Ok(names)
}

/// A decoded slice: the rows that decoded, which records they are, and the ones left out.
struct Decoded {
    parsed: RecordBatch,
    /// Record indexes of `parsed`'s rows; `None` when every record decoded.
    kept: Option<Vec<usize>>,
    dropped: Vec<BadRow>,
}

impl Decoded {
    fn record_of(&self, row: usize) -> usize {
        self.kept.as_ref().map(|k| k[row]).unwrap_or(row)
    }

    /// Under `drop`, leaves out rows with no value in a required column.
    fn drop_missing_required(
        &mut self,
        rec: &TextRecords,
        csv: bool,
        required: &[(usize, String)],
    ) -> Result<(), SourceError> {
        let rows = self.parsed.num_rows();
        let mut missing: Vec<(usize, &str)> = Vec::new();
        for row in 0..rows {
            if let Some((_, name)) = required
                .iter()
                .find(|(i, _)| self.parsed.column(*i).is_null(row))
            {
                missing.push((row, name));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let records = record_starts(&rec.bytes, csv);
        let which: Vec<usize> = missing.iter().map(|(r, _)| self.record_of(*r)).collect();
        let lines = rec.lines_of(&records, &which);
        for (((_, name), idx), line) in missing.iter().zip(&which).zip(lines) {
            self.dropped.push(BadRow {
                line,
                column: Some(name.to_string()),
                reason: format!("column {name:?} is required but has no value"),
                raw: records.get(*idx).map(|r| rec.raw(*r)).unwrap_or_default(),
            });
        }
        self.dropped.sort_by_key(|b| b.line);
        let mut keep = vec![true; rows];
        for (r, _) in &missing {
            keep[*r] = false;
        }
        let mask = arrow::array::BooleanArray::from(keep.clone());
        self.parsed = arrow::compute::filter_record_batch(&self.parsed, &mask)
            .map_err(|e| SourceError::bad(&rec.file, None, e.to_string()))?;
        let kept: Vec<usize> = (0..rows)
            .filter(|r| keep[*r])
            .map(|r| self.record_of(r))
            .collect();
        self.kept = Some(kept);
        Ok(())
    }

    fn records(&self) -> u64 {
        (self.parsed.num_rows() + self.dropped.len()) as u64
    }
}

/// Decodes all records at once (the fast path); when that fails, finds the bad records: the
/// first one (hold), or all of them by bisection (drop), decoding only the failing halves.
fn decode_records(
    rec: &TextRecords,
    csv: bool,
    schema: &SchemaRef,
    drop: bool,
    rows_hint: usize,
    decode: impl Fn(&[u8], usize) -> Result<RecordBatch, arrow::error::ArrowError>,
) -> Result<Decoded, SourceError> {
    let first = match decode(&rec.bytes, rows_hint) {
        Ok(parsed) => {
            return Ok(Decoded {
                parsed,
                kept: None,
                dropped: Vec::new(),
            });
        }
        Err(e) => e,
    };
    let records = record_starts(&rec.bytes, csv);
    if !drop {
        return Err(pinpoint(rec, &records, schema, first, |r| {
            decode(r, 1).map(|_| ())
        }));
    }
    let mut good: Vec<(usize, RecordBatch)> = Vec::new();
    let mut bad: Vec<(usize, String)> = Vec::new();
    bisect(
        &rec.bytes,
        &records,
        0,
        records.len(),
        &decode,
        &mut good,
        &mut bad,
    );
    let kept: Vec<usize> = good
        .iter()
        .flat_map(|(start, b)| *start..*start + b.num_rows())
        .collect();
    let parsed = concat_batches(schema, good.iter().map(|(_, b)| b))
        .map_err(|e| SourceError::bad(&rec.file, None, e.to_string()))?;
    let which: Vec<usize> = bad.iter().map(|(i, _)| *i).collect();
    let lines = rec.lines_of(&records, &which);
    let dropped = bad
        .into_iter()
        .zip(lines)
        .map(|((i, msg), line)| BadRow {
            line,
            column: error_column(&msg, schema),
            reason: clean_arrow_message(&msg, schema),
            raw: rec.raw(records[i]),
        })
        .collect();
    Ok(Decoded {
        parsed,
        kept: Some(kept),
        dropped,
    })
}

/// Decodes records `lo..hi`; a failing range is split in two until the bad records stand
/// alone. With k bad records of n this decodes about 2n·(log2 k + 2) records.
fn bisect(
    bytes: &[u8],
    records: &[(usize, usize)],
    lo: usize,
    hi: usize,
    decode: &impl Fn(&[u8], usize) -> Result<RecordBatch, arrow::error::ArrowError>,
    good: &mut Vec<(usize, RecordBatch)>,
    bad: &mut Vec<(usize, String)>,
) {
    if lo >= hi {
        return;
    }
    let data = &bytes[records[lo].0..records[hi - 1].1];
    let failure = match decode(data, hi - lo) {
        Ok(b) if b.num_rows() == hi - lo => {
            good.push((lo, b));
            return;
        }
        Ok(b) => format!("the record decodes to {} rows", b.num_rows()),
        Err(e) => e.to_string(),
    };
    if hi - lo == 1 {
        bad.push((lo, failure));
        return;
    }
    let mid = lo + (hi - lo) / 2;
    bisect(bytes, records, lo, mid, decode, good, bad);
    bisect(bytes, records, mid, hi, decode, good, bad);
}

fn read_csv(
    rec: &TextRecords,
    input: &InputSchema,
    delimiter: u8,
    drop: bool,
    rows_hint: usize,
) -> Result<SliceRead, SourceError> {
    let header = rec.header.clone().unwrap_or_default();
    // Parse every header column: declared ones with their type, others as text (ignored).
    let declared: HashMap<&str, &Field> = input
        .declared
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.as_ref()))
        .collect();
    let reader_schema = Arc::new(Schema::new(
        header
            .iter()
            .map(|h| match declared.get(h.as_str()) {
                Some(f) => Field::new(h, f.data_type().clone(), true),
                None => Field::new(h, DataType::Utf8, true),
            })
            .collect::<Vec<_>>(),
    ));
    for field in input.declared.fields() {
        if !field.is_nullable() && reader_schema.index_of(field.name()).is_err() {
            return Err(SourceError::bad(
                &rec.file,
                Some(1),
                format!(
                    "required column {:?} is missing from the header (header has: {})",
                    field.name(),
                    header.join(", ")
                ),
            ));
        }
    }
    let decode = |data: &[u8], rows: usize| -> Result<RecordBatch, arrow::error::ArrowError> {
        let reader = arrow_csv::ReaderBuilder::new(reader_schema.clone())
            .with_header(false)
            .with_delimiter(delimiter)
            .with_batch_size(rows)
            .build_buffered(std::io::Cursor::new(data))?;
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        one_batch(&reader_schema, batches)
    };
    let mut decoded = decode_records(rec, true, &reader_schema, drop, rows_hint, decode)?;
    if drop {
        decoded.drop_missing_required(rec, true, &required_columns(input, &reader_schema))?;
    }
    let parsed = &decoded.parsed;
    let mut columns = Vec::with_capacity(input.declared.fields().len());
    for field in input.declared.fields() {
        match reader_schema.index_of(field.name()) {
            Ok(i) => columns.push(parsed.column(i).clone()),
            Err(_) => columns.push(new_null_array(field.data_type(), parsed.num_rows())),
        }
    }
    let extras = Extras::undeclared(parsed, input);
    let batch = finish(&rec.file, input, columns, extras, |row| {
        let records = record_starts(&rec.bytes, true);
        rec.lines_of(&records, &[decoded.record_of(row)])
            .first()
            .copied()
    })?;
    Ok(SliceRead {
        file: rec.file.clone(),
        batch,
        records: decoded.records(),
        dropped: decoded.dropped,
        header: Some(header),
    })
}

/// Indexes (in `schema`) and names of the declared columns that must have a value.
fn required_columns(input: &InputSchema, schema: &Schema) -> Vec<(usize, String)> {
    input
        .declared
        .fields()
        .iter()
        .filter(|f| !f.is_nullable())
        .filter_map(|f| {
            schema
                .index_of(f.name())
                .ok()
                .map(|i| (i, f.name().clone()))
        })
        .collect()
}

fn read_jsonl(
    rec: &TextRecords,
    input: &InputSchema,
    drop: bool,
    rows_hint: usize,
) -> Result<SliceRead, SourceError> {
    let reader_schema = Arc::new(Schema::new(
        input
            .declared
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let decode = |data: &[u8], rows: usize| -> Result<RecordBatch, arrow::error::ArrowError> {
        let reader = arrow_json::ReaderBuilder::new(reader_schema.clone())
            .with_batch_size(rows)
            .build(std::io::Cursor::new(data))?;
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        one_batch(&reader_schema, batches)
    };
    let mut decoded = decode_records(rec, false, &reader_schema, drop, rows_hint, decode)?;
    if drop {
        decoded.drop_missing_required(rec, false, &required_columns(input, &reader_schema))?;
    }
    let columns = decoded.parsed.columns().to_vec();
    // Error path only: where a row is in the file.
    let line_of_row = |row: usize| {
        let records = record_starts(&rec.bytes, false);
        rec.lines_of(&records, &[decoded.record_of(row)])
            .first()
            .copied()
    };
    // arrow-json skips keys it was not asked for: find them with a second, plain parse.
    let extras = if input.unknown == UnknownColumns::Ignore {
        Extras::None
    } else {
        let records = record_starts(&rec.bytes, false);
        let mut rows = Vec::with_capacity(decoded.parsed.num_rows());
        let mut names = std::collections::BTreeSet::new();
        for row in 0..decoded.parsed.num_rows() {
            let Some(&(start, end)) = records.get(decoded.record_of(row)) else {
                rows.push(None);
                continue;
            };
            let value: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&rec.bytes[start..end]).unwrap_or_default();
            let extra: serde_json::Map<String, serde_json::Value> = value
                .into_iter()
                .filter(|(k, v)| input.declared.index_of(k).is_err() && !v.is_null())
                .collect();
            names.extend(extra.keys().cloned());
            rows.push((!extra.is_empty()).then(|| serde_json::Value::Object(extra).to_string()));
        }
        Extras::Json {
            names: names.into_iter().collect(),
            rows,
        }
    };
    let batch = finish(&rec.file, input, columns, extras, line_of_row)?;
    Ok(SliceRead {
        file: rec.file.clone(),
        batch,
        records: decoded.records(),
        dropped: decoded.dropped,
        header: None,
    })
}

fn read_parquet(slice: &BatchSlice, input: &InputSchema) -> Result<RecordBatch, SourceError> {
    let path = &slice.path;
    let file = File::open(path).map_err(|e| SourceError::io(path, e))?;
    let not_parquet = |e: &dyn std::fmt::Display| {
        SourceError::bad(path, None, format!("not a readable Parquet file: {e}"))
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| not_parquet(&e))?;
    let file_schema = builder.schema().clone();
    let reader = builder
        .with_offset(slice.row_start as usize)
        .with_limit(slice.row_count as usize)
        .with_batch_size(decode_batch_rows(slice))
        .build()
        .map_err(|e| not_parquet(&e))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| not_parquet(&e))?;
    let parsed = one_batch(&file_schema, batches).map_err(|e| not_parquet(&e))?;
    let mut columns = Vec::with_capacity(input.declared.fields().len());
    for field in input.declared.fields() {
        match file_schema.index_of(field.name()) {
            Ok(i) => {
                let col = parsed.column(i);
                if col.data_type() == field.data_type() {
                    columns.push(col.clone());
                    continue;
                }
                let strict = CastOptions {
                    safe: false,
                    ..Default::default()
                };
                match cast_with_options(col, field.data_type(), &strict) {
                    Ok(c) => columns.push(c),
                    Err(e) => {
                        let row = first_cast_failure(col, field.data_type()).unwrap_or(0);
                        return Err(SourceError::bad(
                            path,
                            Some(slice.row_start + row as u64 + 1),
                            format!(
                                "column {:?}: value {} does not fit {}: {e}",
                                field.name(),
                                value_at(col, row),
                                field.data_type()
                            ),
                        ));
                    }
                }
            }
            Err(_) if field.is_nullable() => {
                columns.push(new_null_array(field.data_type(), parsed.num_rows()))
            }
            Err(_) => {
                return Err(SourceError::bad(
                    path,
                    None,
                    format!(
                        "required column {:?} is missing from the file",
                        field.name()
                    ),
                ));
            }
        }
    }
    let extras = Extras::undeclared(&parsed, input);
    finish(&slice.path, input, columns, extras, |row| {
        Some(slice.row_start + row as u64 + 1)
    })
}

/// What a file holds beyond the declared columns.
enum Extras {
    None,
    /// Extra columns as read (CSV, Parquet).
    Columns(Vec<(String, ArrayRef)>),
    /// One JSON object (or nothing) per row, and the names seen (JSON Lines).
    Json {
        names: Vec<String>,
        rows: Vec<Option<String>>,
    },
}

impl Extras {
    /// The columns of `parsed` (a file's columns, as read) that the input does not declare.
    fn undeclared(parsed: &RecordBatch, input: &InputSchema) -> Extras {
        let cols: Vec<(String, ArrayRef)> = parsed
            .schema()
            .fields()
            .iter()
            .zip(parsed.columns())
            .filter(|(f, _)| input.declared.index_of(f.name()).is_err())
            .map(|(f, c)| (f.name().clone(), c.clone()))
            .collect();
        if cols.is_empty() {
            Extras::None
        } else {
            Extras::Columns(cols)
        }
    }

    /// Each extra column with a sluice type: as read for CSV (text) and Parquet; from the
    /// JSON values for JSON Lines (integer, float, bool, else string).
    fn typed(&self) -> Vec<(String, String)> {
        match self {
            Extras::None => vec![],
            Extras::Columns(c) => c
                .iter()
                .map(|(n, a)| {
                    let t = sluice_schema::FieldType::from_arrow(a.data_type())
                        .map(|t| t.to_string())
                        .unwrap_or_else(|_| "string".into());
                    (n.clone(), t)
                })
                .collect(),
            Extras::Json { names, rows } => names
                .iter()
                .map(|name| {
                    let mut kind: Option<&str> = None;
                    for row in rows.iter().flatten() {
                        let value = serde_json::from_str::<serde_json::Value>(row)
                            .ok()
                            .and_then(|v| v.get(name).cloned());
                        let k = match value {
                            Some(serde_json::Value::Bool(_)) => "bool",
                            Some(serde_json::Value::Number(n)) if n.is_i64() => "int64",
                            Some(serde_json::Value::Number(_)) => "float64",
                            Some(serde_json::Value::Null) | None => continue,
                            Some(_) => "string",
                        };
                        kind = Some(match (kind, k) {
                            (None, k) => k,
                            (Some(a), b) if a == b => a,
                            (Some("int64"), "float64") | (Some("float64"), "int64") => "float64",
                            _ => "string",
                        });
                    }
                    (name.clone(), kind.unwrap_or("string").to_string())
                })
                .collect(),
        }
    }

    fn names(&self) -> Vec<String> {
        match self {
            Extras::None => vec![],
            Extras::Columns(c) => c.iter().map(|(n, _)| n.clone()).collect(),
            Extras::Json { names, .. } => names.clone(),
        }
    }

    /// The `_rescued` column: a JSON object of a row's non-null extra values, or null.
    fn rescued(self, rows: usize) -> Result<ArrayRef, String> {
        let values: Vec<Option<String>> = match self {
            Extras::None => vec![None; rows],
            Extras::Json { rows: r, .. } => r,
            Extras::Columns(cols) => {
                let fields: Vec<Field> = cols
                    .iter()
                    .map(|(n, a)| Field::new(n, a.data_type().clone(), true))
                    .collect();
                let batch = RecordBatch::try_new(
                    Arc::new(Schema::new(fields)),
                    cols.into_iter().map(|(_, a)| a).collect(),
                )
                .map_err(|e| e.to_string())?;
                let mut writer = arrow_json::LineDelimitedWriter::new(Vec::new());
                writer.write(&batch).map_err(|e| e.to_string())?;
                writer.finish().map_err(|e| e.to_string())?;
                let text = String::from_utf8(writer.into_inner()).map_err(|e| e.to_string())?;
                text.lines()
                    .map(|l| (l != "{}").then(|| l.to_string()))
                    .collect()
            }
        };
        Ok(Arc::new(arrow::array::StringArray::from(values)))
    }
}

/// Checks required columns, applies the unknown-columns policy and assembles the batch in the
/// input schema's order.
fn finish(
    file: &str,
    input: &InputSchema,
    mut columns: Vec<ArrayRef>,
    extras: Extras,
    line_of_row: impl Fn(usize) -> Option<u64>,
) -> Result<RecordBatch, SourceError> {
    for (field, col) in input.declared.fields().iter().zip(&columns) {
        if !field.is_nullable() && col.null_count() > 0 {
            let row = (0..col.len()).find(|&r| col.is_null(r)).unwrap_or(0);
            return Err(SourceError::bad(
                file,
                line_of_row(row),
                format!("column {:?} is required but has no value", field.name()),
            ));
        }
    }
    let rows = columns.first().map(|c| c.len()).unwrap_or(0);
    match input.unknown {
        UnknownColumns::Ignore => {}
        UnknownColumns::Fail => {
            let names = extras.names();
            if !names.is_empty() {
                return Err(SourceError::bad(
                    file,
                    None,
                    format!(
                        "the file has columns the input does not declare: {}; declare them, or set source.unknown_columns to rescue or ignore",
                        names.join(", ")
                    ),
                ));
            }
        }
        UnknownColumns::Evolve => {
            let found = extras.typed();
            if !found.is_empty() {
                return Err(SourceError::NewColumns {
                    file: file.to_string(),
                    columns: found,
                });
            }
        }
        UnknownColumns::Rescue => columns.push(
            extras
                .rescued(rows)
                .map_err(|e| SourceError::bad(file, None, e))?,
        ),
    }
    RecordBatch::try_new(input.schema.clone(), columns)
        .map_err(|e| SourceError::bad(file, None, e.to_string()))
}

/// Decoding a slice failed: decode record by record to name the first bad one. Error path only.
fn pinpoint(
    rec: &TextRecords,
    records: &[(usize, usize)],
    columns: &Schema,
    whole: arrow::error::ArrowError,
    decode_one: impl Fn(&[u8]) -> Result<(), arrow::error::ArrowError>,
) -> SourceError {
    for (i, &(start, end)) in records.iter().enumerate() {
        if let Err(e) = decode_one(&rec.bytes[start..end]) {
            let line = rec.lines_of(records, &[i]).first().copied();
            return SourceError::bad(
                &rec.file,
                line,
                clean_arrow_message(&e.to_string(), columns),
            );
        }
    }
    SourceError::bad(
        &rec.file,
        None,
        format!(
            "the slice does not decode, but no single record fails alone: {}",
            clean_arrow_message(&whole.to_string(), columns)
        ),
    )
}

/// The column an Arrow decoding error blames: CSV's "for column 3", JSON's "field 'amount'".
fn error_column(msg: &str, columns: &Schema) -> Option<String> {
    if let Some(i) = msg.rfind("for column ") {
        let digits: String = msg[i + 11..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if let Some(f) = digits
            .parse::<usize>()
            .ok()
            .and_then(|n| columns.fields().get(n))
        {
            return Some(f.name().clone());
        }
    }
    for marker in ["field '", "field \""] {
        if let Some(i) = msg.find(marker) {
            let rest = &msg[i + marker.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| *c != '\'' && *c != '"')
                .collect();
            if columns.index_of(&name).is_ok() {
                return Some(name);
            }
        }
    }
    None
}

/// Arrow's messages carry a line relative to the decoder, a column index and the whole row; we
/// give the file's line and the column's name instead.
fn clean_arrow_message(msg: &str, columns: &Schema) -> String {
    let mut msg = msg.to_string();
    for prefix in ["Parser error: ", "Json error: ", "Csv error: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            msg = rest.to_string();
        }
    }
    for cut in [" at line ", ". Row data:"] {
        if let Some(i) = msg.find(cut) {
            msg.truncate(i);
        }
    }
    msg = msg.replace(
        "incorrect number of fields for line 1, ",
        "incorrect number of fields: ",
    );
    // "... for column 3" -> "... for column \"amount\"".
    if let Some(i) = msg.rfind("for column ")
        && let Ok(n) = msg[i + 11..].trim().parse::<usize>()
        && let Some(f) = columns.fields().get(n)
    {
        msg = format!("{}for column {:?}", &msg[..i], f.name());
    }
    msg
}

fn first_cast_failure(col: &ArrayRef, to: &DataType) -> Option<usize> {
    let lenient = cast_with_options(col, to, &CastOptions::default()).ok()?;
    (0..col.len()).find(|&r| col.is_valid(r) && lenient.is_null(r))
}

fn value_at(col: &ArrayRef, row: usize) -> String {
    let opts = FormatOptions::default();
    match ArrayFormatter::try_new(col.as_ref(), &opts) {
        Ok(f) if row < col.len() => format!("{:?}", f.value(row).to_string()),
        _ => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, text: &str) -> String {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        p.display().to_string()
    }

    fn schema(cols: &[(&str, &str)], required: &[&str]) -> InputSchema {
        let map = cols
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let req: Vec<String> = required.iter().map(|s| s.to_string()).collect();
        InputSchema::from_columns(&map, &req).unwrap()
    }

    #[test]
    fn appended_parts_are_cut_from_where_the_take_ended_complete_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "a.csv", "id,note\n1,\"x\ny\"\n2,b\n3,c");
        let whole = CutFrom {
            complete_lines: true,
            ..CutFrom::default()
        };
        // The last line has no newline yet: it waits.
        let first = slice_file_from(&path, Format::Csv, 10, &whole).unwrap();
        assert_eq!((first.end, first.rows), (20, 2));
        assert_eq!(first.slices[0].byte_end, 20);
        // The writer finishes the line and appends two more: only they are cut, numbered on.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"\n4,d\n5,\"e\n")
            .unwrap();
        let from = CutFrom {
            byte: first.end,
            row: first.rows,
            complete_lines: true,
            index: 0,
        };
        let next = slice_file_from(&path, Format::Csv, 1, &from).unwrap();
        assert_eq!(next.rows, 2, "3 and 4; 5 has an open quote");
        let starts: Vec<_> = next
            .slices
            .iter()
            .map(|s| (s.byte_start, s.row_start))
            .collect();
        assert_eq!(starts, [(20, 2), (24, 3)]);
        assert_eq!(next.end, 28);
        // Without complete_lines a last line is read as it is (what warn and fail do).
        let all = slice_file_from(&path, Format::Csv, 10, &CutFrom::default()).unwrap();
        assert_eq!(all.rows, 5);
    }

    #[test]
    fn a_streamed_cut_hands_on_the_slices_of_a_whole_cut_and_goes_on_from_any_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("id,note\n");
        for i in 0..3000 {
            match i % 5 {
                0 => text.push_str(&format!("{i},\"multi\nline, \"\"q\"\"\"\n")),
                1 => text.push('\n'),
                _ => text.push_str(&format!("{i},plain\n")),
            }
        }
        text.push_str("3000,last without newline");
        let csv = write(dir.path(), "s.csv", &text);
        let jsonl = write(
            dir.path(),
            "s.jsonl",
            &(0..2500)
                .map(|i| format!("{{\"id\": {i}}}\n"))
                .collect::<String>(),
        );
        for (path, format) in [(csv, Format::Csv), (jsonl, Format::Jsonl)] {
            let whole = slice_file_from(&path, format, 97, &CutFrom::default()).unwrap();
            let mut handed = Vec::new();
            let streamed = slice_file_streaming(&path, format, 97, &CutFrom::default(), &mut |s| {
                handed.push(s.clone());
                true
            })
            .unwrap();
            assert_eq!(streamed, whole);
            // Every full slice is handed on, in order; the last, partial one comes in the cut.
            assert_eq!(handed[..], whole.slices[..handed.len()]);
            assert!(handed.len() + 1 >= whole.slices.len(), "{path}");
            assert!(handed.iter().all(|s| s.row_count == 97));
            // Going on from the end of any slice cuts the rest as the whole cut did.
            for (i, s) in whole.slices.iter().enumerate().step_by(7) {
                let from = CutFrom {
                    byte: s.byte_end,
                    row: s.row_start + s.row_count,
                    complete_lines: false,
                    index: i as u32 + 1,
                };
                let rest = slice_file_from(&path, format, 97, &from).unwrap();
                assert_eq!(
                    rest.slices[..],
                    whole.slices[i + 1..],
                    "{path} after slice {i}"
                );
                assert_eq!((rest.end, from.row + rest.rows), (whole.end, whole.rows));
            }
            // A stopped scan says so.
            let stopped =
                slice_file_streaming(&path, format, 97, &CutFrom::default(), &mut |_| false);
            assert!(matches!(stopped, Err(SourceError::Io { .. })));
        }
    }

    #[test]
    fn checksums_cover_exactly_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "a.jsonl", "{\"a\":1}\n{\"a\":2}\n");
        let prefix = checksum(&path, 8).unwrap().unwrap();
        assert_eq!(prefix, blake3::hash(b"{\"a\":1}\n").to_hex().to_string());
        assert_ne!(checksum(&path, 16).unwrap().unwrap(), prefix);
        assert_eq!(checksum(&path, 17).unwrap(), None, "the file is shorter");
    }

    /// The scan jumps between quotes and newlines; the reader finds records a byte at a
    /// time (`record_starts`). On random text of quotes, newlines, blanks and commas, larger
    /// than one read of the scan, both must find the same records, and the checksum the scan
    /// computes on the way must be the file's.
    #[test]
    fn the_scan_finds_the_records_the_reader_finds_and_hashes_what_it_takes() {
        let dir = tempfile::tempdir().unwrap();
        let alphabet = b"ab,\"\n \r\t\n";
        let mut seed: u64 = 0x5eed;
        for (k, len) in [300usize, 2_500_000].into_iter().enumerate() {
            for csv in [true, false] {
                // A real header first: a blank first line is the header to the scan, and
                // skipped by `record_starts`.
                let text: Vec<u8> = b"h\n"
                    .iter()
                    .copied()
                    .chain((0..len).map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        alphabet[(seed >> 33) as usize % alphabet.len()]
                    }))
                    .collect();
                let name = format!("r{k}.{}", if csv { "csv" } else { "jsonl" });
                let path = dir.path().join(&name).display().to_string();
                std::fs::write(&path, &text).unwrap();
                let format = if csv { Format::Csv } else { Format::Jsonl };
                let cut = slice_file_from(&path, format, 7, &CutFrom::default()).unwrap();
                let mut records = record_starts(&text, csv);
                if csv && !records.is_empty() {
                    records.remove(0); // the header
                }
                assert_eq!(cut.rows, records.len() as u64, "{name}");
                for (i, s) in cut.slices.iter().enumerate() {
                    let first = records[(s.row_start) as usize];
                    let last = records[(s.row_start + s.row_count - 1) as usize];
                    // The last slice reaches the end of the cut (blanks after its last record
                    // included).
                    let end = if i + 1 == cut.slices.len() {
                        cut.end
                    } else {
                        last.1 as u64
                    };
                    assert_eq!((s.byte_start, s.byte_end), (first.0 as u64, end), "{name}");
                }
                assert_eq!(cut.end, text.len() as u64);
                assert_eq!(cut.checksum, checksum(&path, cut.end).unwrap(), "{name}");
                assert!(cut.checksum.is_some());
                // A cut that keeps a last line back, or starts part-way, leaves it to checksum().
                let from = CutFrom {
                    complete_lines: true,
                    ..CutFrom::default()
                };
                assert_eq!(
                    slice_file_from(&path, format, 7, &from).unwrap().checksum,
                    None
                );
            }
        }
    }

    #[test]
    fn csv_slices_respect_quotes_headers_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.csv",
            "id,note\n1,plain\n2,\"multi\nline\"\n\n3,x\n4,\"q\"\"uote\"\n5,last",
        );
        let slices = slice_file(&p, Format::Csv, 2).unwrap();
        assert_eq!(
            slices.iter().map(|s| s.row_count).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        assert_eq!(slices[1].row_start, 2);
        let input = schema(&[("id", "int64"), ("note", "string")], &["id"]);
        let mut ids = Vec::new();
        let mut notes = Vec::new();
        for s in &slices {
            let b = read_slice(s, Format::Csv, &input, b',').unwrap();
            let col = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            ids.extend(col.values().iter().copied());
            let n = b
                .column(1)
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            notes.extend(n.iter().map(|v| v.unwrap_or("").to_string()));
        }
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        assert_eq!(notes[1], "multi\nline");
        assert_eq!(notes[3], "q\"uote");
    }

    #[test]
    fn csv_bad_value_names_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "b.csv", "id,amount\n1,2.5\n2,oops\n3,4\n");
        let input = schema(&[("id", "int64"), ("amount", "float64")], &[]);
        let slices = slice_file(&p, Format::Csv, 10).unwrap();
        let err = read_slice(&slices[0], Format::Csv, &input, b',').unwrap_err();
        let SourceError::BadData { line, reason, file } = &err else {
            panic!("{err}")
        };
        assert_eq!(*line, Some(3), "{err}");
        assert!(file.ends_with("b.csv"));
        assert!(
            reason.contains("oops") && reason.contains("\"amount\""),
            "{reason}"
        );
    }

    #[test]
    fn csv_columns_are_found_by_name_and_required_ones_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "c.csv", "extra,amount,id\nx,1.5,7\ny,2.5,\n");
        let input = schema(&[("id", "int64"), ("amount", "float64")], &["id"]);
        let s = &slice_file(&p, Format::Csv, 10).unwrap()[0];
        let err = read_slice(s, Format::Csv, &input, b',').unwrap_err();
        assert!(err.to_string().contains("c.csv:3"), "{err}");
        assert!(err.to_string().contains("\"id\" is required"), "{err}");
    }

    #[test]
    fn jsonl_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "d.jsonl",
            "{\"id\": 1}\n{\"id\": 2}\n{\"id\": \n{\"id\": 4}\n",
        );
        let input = schema(&[("id", "int64")], &[]);
        let slices = slice_file(&p, Format::Jsonl, 2).unwrap();
        assert_eq!(slices.len(), 2);
        assert!(read_slice(&slices[0], Format::Jsonl, &input, b',').is_ok());
        let err = read_slice(&slices[1], Format::Jsonl, &input, b',').unwrap_err();
        assert!(err.to_string().contains("d.jsonl:3"), "{err}");
    }

    fn with_policy(cols: &[(&str, &str)], unknown: UnknownColumns) -> InputSchema {
        let map = cols
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        InputSchema::with_policy(&map, &[], unknown).unwrap()
    }

    fn rescued(b: &RecordBatch) -> Vec<Option<String>> {
        let col = b.column_by_name(RESCUED).expect("a _rescued column");
        let s = col
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        s.iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn unknown_csv_columns_are_rescued_failed_or_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "u.csv", "id,coupon,note\n1,SAVE5,hi\n2,,\n");
        let s = &slice_file(&p, Format::Csv, 10).unwrap()[0];
        let cols = [("id", "int64")];
        let b = read_slice(
            s,
            Format::Csv,
            &with_policy(&cols, UnknownColumns::Rescue),
            b',',
        )
        .unwrap();
        assert_eq!(b.num_columns(), 2);
        assert_eq!(
            rescued(&b),
            vec![Some(r#"{"coupon":"SAVE5","note":"hi"}"#.to_string()), None]
        );
        let err = read_slice(
            s,
            Format::Csv,
            &with_policy(&cols, UnknownColumns::Fail),
            b',',
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("coupon, note"), "{err}");
        let b = read_slice(
            s,
            Format::Csv,
            &with_policy(&cols, UnknownColumns::Ignore),
            b',',
        )
        .unwrap();
        assert_eq!(b.num_columns(), 1);
        // A file with only declared columns rescues nothing.
        let q = write(dir.path(), "k.csv", "id\n1\n");
        let s = &slice_file(&q, Format::Csv, 10).unwrap()[0];
        let b = read_slice(
            s,
            Format::Csv,
            &with_policy(&cols, UnknownColumns::Rescue),
            b',',
        )
        .unwrap();
        assert_eq!(rescued(&b), vec![None]);
        assert!(
            read_slice(
                s,
                Format::Csv,
                &with_policy(&cols, UnknownColumns::Fail),
                b','
            )
            .is_ok()
        );
    }

    #[test]
    fn unknown_json_keys_are_rescued_or_failed() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "u.jsonl",
            "{\"id\": 1, \"tags\": [\"a\"]}\n{\"id\": 2}\n{\"id\": 3, \"x\": null}\n",
        );
        let s = &slice_file(&p, Format::Jsonl, 10).unwrap()[0];
        let cols = [("id", "int64")];
        let b = read_slice(
            s,
            Format::Jsonl,
            &with_policy(&cols, UnknownColumns::Rescue),
            b',',
        )
        .unwrap();
        assert_eq!(
            rescued(&b),
            vec![Some(r#"{"tags":["a"]}"#.to_string()), None, None]
        );
        let err = read_slice(
            s,
            Format::Jsonl,
            &with_policy(&cols, UnknownColumns::Fail),
            b',',
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tags"), "{err}");
    }

    #[test]
    fn a_declared_rescued_column_is_refused() {
        let map = [("_rescued".to_string(), "string".to_string())]
            .into_iter()
            .collect();
        assert!(InputSchema::with_policy(&map, &[], UnknownColumns::Rescue).is_err());
    }

    #[test]
    fn bad_rows_are_dropped_with_line_column_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "r.csv",
            "id,name\n1,a\n2,b\nsix,c\n4,d\n5\n6,\"multi\nline\"\n,g\n8,h\n",
        );
        let input = schema(&[("id", "int64"), ("name", "string")], &["id"]);
        let s = &slice_file(&p, Format::Csv, 100).unwrap()[0];
        // Holding is the default: the first bad line is named.
        let err = read_slice(s, Format::Csv, &input, b',').unwrap_err();
        assert!(err.to_string().contains("r.csv:4"), "{err}");
        let r = read_slice_with(s, Format::Csv, &input, b',', true).unwrap();
        let ids = r
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(ids.values().to_vec(), vec![1, 2, 4, 6, 8]);
        assert_eq!(r.records, 8);
        let lines: Vec<_> = r.dropped.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![4, 6, 9], "{:?}", r.dropped);
        assert_eq!(r.dropped[0].column.as_deref(), Some("id"));
        assert_eq!(r.dropped[0].raw, "six,c");
        assert!(r.dropped[1].reason.contains("fields"), "{:?}", r.dropped[1]);
        assert_eq!(r.dropped[2].column.as_deref(), Some("id"));
        assert!(
            r.dropped[2].reason.contains("required"),
            "{:?}",
            r.dropped[2]
        );
        assert_eq!(r.header, Some(vec!["id".to_string(), "name".to_string()]));
        // Replayed, the stored rows keep their lines; still bad, they are dropped again.
        let rows: Vec<(u64, String)> = r.dropped.iter().map(|b| (b.line, b.raw.clone())).collect();
        let rec = TextRecords::replay("r.csv", r.header.clone(), &rows);
        let again = read_records(&rec, Format::Csv, &input, b',', true, 3).unwrap();
        assert_eq!(again.batch.num_rows(), 0);
        assert_eq!(
            again.dropped.iter().map(|b| b.line).collect::<Vec<_>>(),
            vec![4, 6, 9]
        );
        // Read as text, the same rows pass.
        let text = schema(&[("id", "string"), ("name", "string")], &[]);
        let fixed = read_records(&rec, Format::Csv, &text, b',', true, 3).unwrap();
        assert_eq!(
            fixed.batch.num_rows(),
            2,
            "the short row still has too few fields"
        );
    }

    #[test]
    fn bad_json_lines_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "r.jsonl",
            "{\"id\": 1}\n{\"id\": \"x\"}\n{\"id\": \n{\"id\": 4, \"extra\": 1}\n",
        );
        let input = with_policy(&[("id", "int64")], UnknownColumns::Rescue);
        let s = &slice_file(&p, Format::Jsonl, 100).unwrap()[0];
        let r = read_slice_with(s, Format::Jsonl, &input, b',', true).unwrap();
        assert_eq!(r.batch.num_rows(), 2);
        assert_eq!(
            rescued(&r.batch),
            vec![None, Some(r#"{"extra":1}"#.to_string())]
        );
        assert_eq!(
            r.dropped.iter().map(|b| b.line).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(r.dropped[0].raw, "{\"id\": \"x\"}");
    }

    #[test]
    fn temporary_and_unsettled_files_are_not_discovered() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok.csv", "a\n1\n");
        write(dir.path(), ".hidden.csv", "a\n1\n");
        write(dir.path(), "x.csv.tmp", "a\n1\n");
        let pattern = format!("{}/*.csv*", dir.path().display());
        let now = discover(&pattern, std::time::Duration::from_secs(3600)).unwrap();
        assert!(now.is_empty(), "a fresh file is not settled yet: {now:?}");
        let settled = discover(&pattern, std::time::Duration::ZERO).unwrap();
        assert_eq!(settled.len(), 1);
        assert!(settled[0].path.ends_with("ok.csv"));
    }
}
