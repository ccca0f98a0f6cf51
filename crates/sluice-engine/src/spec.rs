//! The pipeline spec: a YAML file naming the pipeline, its source, its transform, its sink and
//! how it is cut into batches.
//!
//! ```yaml
//! pipeline: orders_clean
//! source:
//!   files: landing/orders/*.csv     # glob, relative to this file; csv | jsonl | parquet
//!   columns:                        # optional; inferred from the first file if absent
//!     order_id: int64
//!     amount: float64
//!   settle: 2s                      # a file is read once unchanged for this long
//! batch:
//!   max_rows: 500000
//! transform: |
//!   SELECT order_id, amount FROM input WHERE amount > 0
//! sink:
//!   delta: tables/orders_clean      # local path or object-store URL
//!   key: [order_id]
//! ```
//!
//! Unknown fields are refused and every error names the file, line and column.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use sluice_core::Located;
use sluice_quality::analysis::PathPart;

/// A parsed pipeline spec, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Name of the pipeline: letters, digits, `_` and `-`.
    pub pipeline: String,
    pub source: SourceSpec,
    #[serde(default)]
    pub batch: BatchSpec,
    /// One SQL query over the table `input` (the batch), run by DataFusion.
    pub transform: String,
    pub sink: SinkSpec,
    /// Data quality checks run on every batch before it is published (see `checks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::checks::CheckSpec>,
    /// How releases of this pipeline are judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeploySpec>,
}

/// Release settings (`deploy:`): the rules turning a verify suite into PROCEED / INVESTIGATE /
/// ROLLBACK, and the deployment policy (strategy, canary steps, analysis, rolling limits).
/// Defined with the analysis in `sluice_quality::policy`, which validates it; a spec without
/// the policy fields writes `deploy:` as before, so its version's hash is unchanged.
pub use sluice_quality::policy::{DeploySpec, Pause, Slots, Step, Strategy};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Glob of the landing files, relative to the spec's folder unless absolute.
    pub files: String,
    /// `csv`, `jsonl` or `parquet`; taken from the file extension when absent.
    #[serde(default)]
    pub format: Option<Format>,
    /// Column name -> type (`int64`, `float64`, `string`, `decimal(10,2)`, `timestamp`, ...).
    /// Declared columns are the input contract: a value that does not fit quarantines its batch.
    #[serde(default, deserialize_with = "unique_columns")]
    pub columns: Option<IndexMap<String, String>>,
    /// The registered dataset the files follow (`orders_raw` or `orders_raw@2`): its schema
    /// gives the columns. Resolved against the store, and pinned to a version, when the
    /// pipeline version is registered. Use either this or `columns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Columns that may be null. Declared columns are nullable unless listed in `required`.
    #[serde(default)]
    pub required: Vec<String>,
    /// A file is read only after its size and modification time have not changed for this long,
    /// so a file still being written is never read half-way.
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub settle: Duration,
    #[serde(default)]
    pub csv: CsvOptions,
    /// Columns a file has and the input does not declare: `rescue` (default: kept as a JSON
    /// object per row in the `_rescued` column), `fail` (the batch is quarantined, naming
    /// them), `ignore`, or `evolve` (with `dataset`: the batch is held and the dataset's next
    /// version, with the columns added, is proposed to the registry; see
    /// [`crate::source::UnknownColumns::Evolve`]).
    #[serde(default)]
    pub unknown_columns: crate::source::UnknownColumns,
    /// How the files are compressed: `gzip`, `zstd` or `none`; by default from each file's
    /// last extension (`.gz`, `.zst`). A compressed file is decompressed once, when it is
    /// sliced, into the spool (see `spool`); its batches are read from there and its errors
    /// name the compressed file and the line in the decompressed text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Folder for the decompressed copies of compressed files (relative to the spec's folder
    /// unless absolute; default: a `_sluice_spool` folder beside each compressed file). Every
    /// machine running workers must see it, as it sees the landing files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<String>,
    /// What a row that does not parse or fit its column does: `hold` (default) holds its whole
    /// batch; `drop` publishes the batch without it and stores it in the quarantine table.
    #[serde(default, skip_serializing_if = "BadRows::is_default")]
    pub bad_rows: BadRows,
    /// A file whose size or modification time changed after it was taken in: `warn` (default:
    /// say so in the logs and `sluice status`; the new content is not read), `fail` (the
    /// pipeline stops queueing and reports the error) or `reprocess` (take the new content in;
    /// see [`crate::source::OnChange`]).
    #[serde(default, skip_serializing_if = "crate::source::OnChange::is_default")]
    pub on_change: crate::source::OnChange,
    /// Filled in by sluice when it resolves `dataset`: the dataset's registered versions up to
    /// the pinned one, oldest first. A landed file written under an older version (named by a
    /// `schema_version` column, or recognised by its columns) is read with that version's
    /// columns and upgraded to the pinned one before the transform runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<SourceVersion>,
}

/// A registered version of the source dataset, carried in the resolved spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceVersion {
    pub version: i64,
    pub schema: sluice_schema::Schema,
}

/// `source.bad_rows`: what a row that does not parse or fit does to its batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadRows {
    #[serde(default)]
    pub action: BadRowAction,
    /// Under `drop`: more bad rows than this (`"> 10"` rows or `"> 1%"` of the batch's rows)
    /// hold the batch as `hold` does. Default `"> 10%"`: a file that mostly fails is more likely
    /// the wrong format or delimiter than a few bad rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_if: Option<crate::checks::Threshold>,
}

impl BadRows {
    fn is_default(&self) -> bool {
        *self == BadRows::default()
    }

    /// The share of bad rows above which a `drop` batch is held.
    pub fn limit(&self) -> crate::checks::Threshold {
        self.error_if.unwrap_or(crate::checks::Threshold {
            value: 10.0,
            percent: true,
        })
    }

    pub fn drops(&self) -> bool {
        self.action == BadRowAction::Drop
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadRowAction {
    /// The batch is quarantined whole, naming the first bad row.
    #[default]
    Hold,
    /// Bad rows are left out and stored, with file, line, column, reason and raw text, in the
    /// quarantine table; `sluice retry --dropped` replays them.
    Drop,
}

/// How landing files are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[serde(alias = "gz")]
    Gzip,
    #[serde(alias = "zst")]
    Zstd,
    None,
}

impl Compression {
    /// The compression a file's last extension names (`.gz`, `.gzip`, `.zst`, `.zstd`).
    pub fn from_path(path: &str) -> Option<Compression> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".gz") || lower.ends_with(".gzip") {
            Some(Compression::Gzip)
        } else if lower.ends_with(".zst") || lower.ends_with(".zstd") {
            Some(Compression::Zstd)
        } else {
            None
        }
    }

    /// `path` without its compression extension.
    pub fn strip(path: &str) -> &str {
        match Compression::from_path(path) {
            Some(_) => path.rsplit_once('.').map(|(a, _)| a).unwrap_or(path),
            None => path,
        }
    }

    /// The compression of one file under the spec's setting (`None`: by its extension).
    pub fn of_file(setting: Option<Compression>, path: &str) -> Compression {
        setting
            .or_else(|| Compression::from_path(path))
            .unwrap_or(Compression::None)
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// Field delimiter, one ASCII character.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: default_delimiter(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    #[serde(alias = "json", alias = "ndjson")]
    Jsonl,
    Parquet,
}

impl Format {
    /// The format a path's extension names, under any compression extension
    /// (`orders.csv.gz` is CSV).
    pub fn from_path(path: &str) -> Option<Format> {
        let lower = Compression::strip(path).to_ascii_lowercase();
        if lower.ends_with(".csv") {
            Some(Format::Csv)
        } else if lower.ends_with(".jsonl")
            || lower.ends_with(".ndjson")
            || lower.ends_with(".json")
        {
            Some(Format::Jsonl)
        } else if lower.ends_with(".parquet") {
            Some(Format::Parquet)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// At most this many rows per batch.
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// At most this many files per batch: small files are grouped into one batch up to
    /// `max_rows`, `max_files` and `max_bytes` (as Auto Loader's `maxFilesPerTrigger`). 1 gives
    /// every file batches of its own. Not written out at its default, so spec hashes stay.
    #[serde(
        default = "default_max_files",
        skip_serializing_if = "is_default_max_files"
    )]
    pub max_files: u64,
    /// At most this many bytes of files per grouped batch.
    #[serde(
        default = "default_max_bytes",
        skip_serializing_if = "is_default_max_bytes"
    )]
    pub max_bytes: u64,
    /// A batch failing this many times (errors other than bad input) is quarantined.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: i32,
    /// How long a worker holds a batch without a heartbeat before another may take it.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            max_rows: default_max_rows(),
            max_files: default_max_files(),
            max_bytes: default_max_bytes(),
            max_attempts: default_max_attempts(),
            lease: default_lease(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// Delta table location: a path (relative to the spec's folder) or a URL (`file://`, `az://`, `abfss://`, `gs://`, `s3://` with the `s3` feature).
    pub delta: String,
    /// Columns that identify a row; used by checks, diffs and the demo's exactly-once proof.
    #[serde(default)]
    pub key: Vec<String>,
    /// The registered dataset the output must satisfy (`orders` or `orders@3`): a version whose
    /// output breaks the dataset's compatibility mode is refused before it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Delta table for rows held back by checks (default: the sink's location + `_quarantine`).
    #[serde(default)]
    pub quarantine: Option<String>,
}

/// `columns` as written, refusing a name given twice (a map alone keeps the last silently).
fn unique_columns<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<IndexMap<String, String>>, D::Error> {
    struct Unique(IndexMap<String, String>);
    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
            d.deserialize_map(Unique(IndexMap::new()))
        }
    }
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = Unique;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a mapping of column name to type")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            mut self,
            mut map: A,
        ) -> Result<Unique, A::Error> {
            while let Some((name, ty)) = map.next_entry::<String, String>()? {
                if self.0.contains_key(&name) {
                    return Err(serde::de::Error::custom(format!(
                        "duplicate field `{name}`"
                    )));
                }
                self.0.insert(name, ty);
            }
            Ok(self)
        }
    }
    Ok(Option::<Unique>::deserialize(d)?.map(|u| u.0))
}

fn default_settle() -> Duration {
    Duration::from_secs(2)
}
fn default_delimiter() -> char {
    ','
}
fn default_max_rows() -> u64 {
    // Each batch pays a fixed ~25 ms (its Delta commit and log refresh, planning, the queue)
    // on top of ~0.27 µs a row: at 100,000 rows that is a third of the batch, at 500,000 under
    // a tenth (bench/RESULTS.md). A 500,000-row batch of typical order rows is ~50 MB in
    // memory per worker.
    500_000
}
fn default_max_files() -> u64 {
    // Auto Loader's default maxFilesPerTrigger.
    1000
}
fn is_default_max_files(n: &u64) -> bool {
    *n == default_max_files()
}
fn default_max_bytes() -> u64 {
    // A bound on what one batch of many files reads, near max_rows of typical rows.
    256 << 20
}
fn is_default_max_bytes(n: &u64) -> bool {
    *n == default_max_bytes()
}
fn default_max_attempts() -> i32 {
    3
}
fn default_lease() -> Duration {
    Duration::from_secs(30)
}

/// A spec error that points at the spot in the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{at}: {message}")]
pub struct SpecError {
    pub at: Located,
    pub message: String,
}

/// A spec read from a file, with what is needed to point errors at its lines.
#[derive(Debug, Clone)]
pub struct SpecFile {
    pub path: PathBuf,
    pub text: String,
    pub spec: PipelineSpec,
}

impl PipelineSpec {
    /// The spec as YAML: what the store keeps for a pipeline version, and what its hash is
    /// taken of.
    pub fn to_yaml(&self) -> String {
        yaml_serde::to_string(self).unwrap_or_default()
    }
}

impl SpecFile {
    /// Reads and parses a spec file. Syntax, unknown fields and wrong types are refused here
    /// with the line and column; [`SpecFile::check`] does the semantic checks.
    pub fn load(path: &Path) -> Result<SpecFile, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            at: Located {
                file: path.display().to_string(),
                line: 0,
                column: 0,
            },
            message: format!("cannot read the pipeline spec: {e}"),
        })?;
        SpecFile::parse(path, text)
    }

    pub fn parse(path: &Path, text: String) -> Result<SpecFile, SpecError> {
        let spec: PipelineSpec = yaml_serde::from_str(&text).map_err(|e| {
            let (mut line, mut column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            // A duplicate key is reported where its mapping starts: point at the duplicate.
            if let Some(at) = duplicate_key(&e.to_string())
                .and_then(|key| locate_duplicate(&text, line, column, key))
            {
                (line, column) = at;
            }
            SpecError {
                at: Located {
                    file: path.display().to_string(),
                    line,
                    column,
                },
                message: format!(
                    "{}; see the spec reference in README.md",
                    strip_yaml_location(&e.to_string())
                ),
            }
        })?;
        let file = SpecFile {
            path: path.to_path_buf(),
            text,
            spec,
        };
        file.check()?;
        Ok(file)
    }

    /// Semantic checks that need no data: names, sizes, formats, column types.
    fn check(&self) -> Result<(), SpecError> {
        let s = &self.spec;
        if !sluice_core::is_name(&s.pipeline) {
            return Err(self.error_at(
                &["pipeline"],
                format!(
                    "pipeline name {:?} is not valid: use letters, digits, '_' and '-' (at most {} of them)",
                    s.pipeline,
                    sluice_core::MAX_NAME_LEN
                ),
            ));
        }
        if s.batch.max_rows == 0 {
            return Err(self.error_at(&["batch", "max_rows"], "max_rows must be at least 1".into()));
        }
        if s.batch.max_files == 0 {
            return Err(self.error_at(
                &["batch", "max_files"],
                "max_files must be at least 1 (1: every file is cut into batches of its own)"
                    .into(),
            ));
        }
        if s.batch.max_bytes == 0 {
            return Err(self.error_at(
                &["batch", "max_bytes"],
                "max_bytes must be at least 1".into(),
            ));
        }
        if s.batch.max_attempts < 1 {
            return Err(self.error_at(
                &["batch", "max_attempts"],
                "max_attempts must be at least 1".into(),
            ));
        }
        if s.batch.lease < Duration::from_secs(1) {
            return Err(self.error_at(&["batch", "lease"], "lease must be at least 1s".into()));
        }
        if s.source.format.is_none() && Format::from_path(&s.source.files).is_none() {
            return Err(self.error_at(
                &["source", "files"],
                format!(
                    "cannot tell the format of {:?} from its extension: add `format: csv | jsonl | parquet`",
                    s.source.files
                ),
            ));
        }
        let compressed = s.source.compression.unwrap_or(Compression::None) != Compression::None
            || Compression::from_path(&s.source.files).is_some();
        if self.format() == Format::Parquet && compressed {
            return Err(self.error_at(
                &["source", "files"],
                "Parquet files are compressed inside already and are read as they are: land `.parquet` files, without `.gz`/`.zst` or `compression`".into(),
            ));
        }
        if !s.source.csv.delimiter.is_ascii() {
            return Err(self.error_at(
                &["source", "csv", "delimiter"],
                "the CSV delimiter must be one ASCII character".into(),
            ));
        }
        if let Some(columns) = &s.source.columns {
            for (name, ty) in columns {
                if let Err(e) = ty.parse::<sluice_schema::FieldType>() {
                    return Err(self.error_at(
                        &["source", "columns", name],
                        format!("column {name:?}: {e}"),
                    ));
                }
            }
            for name in &s.source.required {
                if !columns.contains_key(name) {
                    return Err(self.error_at(
                        &["source", "required"],
                        format!("required column {name:?} is not among the declared columns"),
                    ));
                }
            }
        } else if !s.source.required.is_empty() {
            return Err(self.error_at(
                &["source", "required"],
                "`required` needs declared `columns`".into(),
            ));
        }
        if s.transform.trim().is_empty() {
            return Err(self.error_at(
                &["transform"],
                "transform is empty: write one SQL query over `input`".into(),
            ));
        }
        if s.sink.delta.trim().is_empty() {
            return Err(self.error_at(
                &["sink", "delta"],
                "sink.delta is empty: give a table path or URL".into(),
            ));
        }
        if let Some(deploy) = &s.deploy {
            self.check_deploy(deploy)?;
        }
        Ok(())
    }

    /// `deploy:`: the policy's own rules (sluice_quality validates them), conditions naming
    /// only this pipeline's checks, and a `route_key` among the declared columns.
    fn check_deploy(&self, deploy: &DeploySpec) -> Result<(), SpecError> {
        let mut checks: Vec<String> = self.spec.checks.iter().map(|c| c.name()).collect();
        checks.push(crate::checks::BAD_ROWS.to_string());
        deploy.validate(Some(&checks)).map_err(|e| {
            let mut path = vec![PathPart::Key("deploy".into())];
            path.extend(e.path.iter().cloned());
            let message = if e.path.is_empty() {
                format!("deploy: {}", e.message)
            } else {
                format!("deploy.{e}")
            };
            self.error_at_path(&path, message)
        })?;
        if let (Some(key), Some(columns)) = (&deploy.route_key, &self.spec.source.columns)
            && !columns.contains_key(key)
        {
            return Err(self.error_at(
                &["deploy", "route_key"],
                format!(
                    "deploy.route_key {key:?} is not among the declared columns ({}): name one of them",
                    columns.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The format of the source files.
    pub fn format(&self) -> Format {
        self.spec
            .source
            .format
            .or_else(|| Format::from_path(&self.spec.source.files))
            .unwrap_or(Format::Csv)
    }

    /// An error located at a key path (e.g. `["sink", "delta"]`), or at the file if not found.
    pub fn error_at(&self, key_path: &[&str], message: String) -> SpecError {
        let (line, column) = locate_key(&self.text, key_path).unwrap_or((0, 0));
        SpecError {
            at: Located {
                file: self.path.display().to_string(),
                line,
                column,
            },
            message,
        }
    }

    /// An error located at a path of keys and list items (e.g. `deploy.steps[2].set_weight`),
    /// or at the deepest part of it that is found.
    pub fn error_at_path(&self, path: &[PathPart], message: String) -> SpecError {
        let (line, column) = locate_path(&self.text, path).unwrap_or((0, 0));
        SpecError {
            at: Located {
                file: self.path.display().to_string(),
                line,
                column,
            },
            message,
        }
    }

    /// The folder relative paths are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        let parent = self.path.parent().unwrap_or(Path::new("."));
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf())
    }
}

/// Finds the 1-based (line, column) of the `index`-th item of a top-level block list (`key:`
/// followed by `- ...` lines).
pub fn locate_list_item(text: &str, key: &str, index: usize) -> Option<(usize, usize)> {
    let (start, _) = locate_key(text, &[key])?;
    let mut item_indent = None;
    let mut seen = 0;
    for (n, line) in text.lines().enumerate().skip(start) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if indent == 0 && !trimmed.starts_with('-') {
            break;
        }
        if trimmed.starts_with("- ") && item_indent.is_none_or(|i| i == indent) {
            item_indent = Some(indent);
            if seen == index {
                return Some((n + 1, indent + 1));
            }
            seen += 1;
        }
    }
    None
}

/// Finds the 1-based (line, column) of the value at `path`: keys of block mappings and items
/// of block lists, at any depth (`deploy`, `steps`, `2`, `analysis`, `metrics`, `0`, `name`).
/// A list item is found at its `-`. Where the path goes into a flow collection (`{...}`,
/// `[...]`) or is not there, the deepest part found is returned (`None`: not even the first).
pub fn locate_path(text: &str, path: &[PathPart]) -> Option<(usize, usize)> {
    /// A content line: its number (0-based), indent and text after the indent.
    struct Line<'a> {
        n: usize,
        indent: usize,
        text: &'a str,
    }
    /// Part of a line in the scope being searched: a whole line, or what follows a `- `.
    struct Entry<'a> {
        /// Index into `lines`.
        line: usize,
        col: usize,
        text: &'a str,
    }
    let lines: Vec<Line> = text
        .lines()
        .enumerate()
        .filter_map(|(n, l)| {
            let t = l.trim_start();
            (!t.is_empty() && !t.starts_with('#')).then(|| Line {
                n,
                indent: l.len() - t.len(),
                text: t,
            })
        })
        .collect();
    let is_item = |t: &str| t == "-" || t.starts_with("- ");
    // The lines after `lines[at]` while `inside` holds for them.
    let following = |at: usize, inside: &dyn Fn(&Line) -> bool| -> Vec<Entry> {
        lines[at + 1..]
            .iter()
            .enumerate()
            .take_while(|(_, l)| inside(l))
            .map(|(i, l)| Entry {
                line: at + 1 + i,
                col: l.indent,
                text: l.text,
            })
            .collect()
    };
    let mut scope: Vec<Entry> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| Entry {
            line: i,
            col: l.indent,
            text: l.text,
        })
        .collect();
    let mut found = None;
    for part in path {
        let Some(child_col) = scope.first().map(|e| e.col) else {
            break;
        };
        match part {
            PathPart::Key(key) => {
                let Some((e, rest)) = scope.iter().filter(|e| e.col == child_col).find_map(|e| {
                    let unquoted = e.text.trim_start_matches(['"', '\'']);
                    let rest = unquoted
                        .strip_prefix(key.as_str())?
                        .trim_start_matches(['"', '\''])
                        .trim_start()
                        .strip_prefix(':')?;
                    (rest.is_empty() || rest.starts_with(' ')).then_some((e, rest.trim()))
                }) else {
                    break;
                };
                found = Some((lines[e.line].n, e.col));
                let (at, col) = (e.line, e.col);
                scope = if rest.is_empty() || rest.starts_with('#') {
                    // A block value: deeper lines, or a list at the key's own indent.
                    following(at, &|l: &Line| {
                        l.indent > col || (l.indent == col && is_item(l.text))
                    })
                } else {
                    Vec::new() // a value on the key's line
                };
            }
            PathPart::Index(index) => {
                let Some(e) = scope
                    .iter()
                    .filter(|e| e.col == child_col && is_item(e.text))
                    .nth(*index)
                else {
                    break;
                };
                found = Some((lines[e.line].n, e.col));
                let (at, col) = (e.line, e.col);
                let inner = &e.text[1..];
                let content = inner.trim_start();
                let mut next = Vec::new();
                if !content.is_empty() && !content.starts_with('#') {
                    next.push(Entry {
                        line: at,
                        col: col + 1 + (inner.len() - content.len()),
                        text: content,
                    });
                }
                next.extend(following(at, &|l: &Line| l.indent > col));
                scope = next;
            }
        }
    }
    found.map(|(n, c)| (n + 1, c + 1))
}

/// The key a "duplicate field `key`" error names.
fn duplicate_key(message: &str) -> Option<&str> {
    let rest = &message[message.find("duplicate field `")? + "duplicate field `".len()..];
    Some(&rest[..rest.find('`')?])
}

/// The 1-based (line, column) of the second `key` of the mapping that starts at
/// (`line`, `column`): a block mapping's keys sit at its first key's column; a flow mapping
/// (`{a: 1, a: 2}`) is searched on its line.
fn locate_duplicate(text: &str, line: usize, column: usize, key: &str) -> Option<(usize, usize)> {
    let is_key = |s: &str| {
        let s = s.trim_start_matches(['"', '\'']);
        s.strip_prefix(key).is_some_and(|r| {
            r.trim_start_matches(['"', '\''])
                .trim_start()
                .starts_with(':')
        })
    };
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.get(line.checked_sub(1)?)?;
    if first.get(column.checked_sub(1)?..)?.starts_with('{') {
        let mut seen = 0;
        for (i, _) in first.char_indices().skip(column) {
            let before = first[..i].trim_end();
            if (before.ends_with('{') || before.ends_with(',')) && is_key(&first[i..]) {
                seen += 1;
                if seen == 2 {
                    return Some((line, i + 1));
                }
            }
        }
        return None;
    }
    let mut seen = 0;
    for (n, l) in lines.iter().enumerate().skip(line - 1) {
        let content = l.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        // The key's column, after any "- " of list items.
        let mut at = l.len() - content.len();
        let mut rest = content;
        while let Some(r) = rest.strip_prefix("- ") {
            let r2 = r.trim_start();
            at += rest.len() - r2.len();
            rest = r2;
        }
        if n + 1 > line && l.len() - content.len() < column - 1 {
            break; // the mapping ended
        }
        if at + 1 == column && is_key(rest) {
            seen += 1;
            if seen == 2 {
                return Some((n + 1, column));
            }
        }
    }
    None
}

/// yaml_serde appends " at line L column C" to its messages; we print the location first.
fn strip_yaml_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Finds the 1-based (line, column) of a nested mapping key by indentation. Good enough for
/// block-style YAML, which is what people write in pipeline specs.
pub fn locate_key(text: &str, key_path: &[&str]) -> Option<(usize, usize)> {
    let mut min_indent: isize = -1;
    let mut found = None;
    let mut lines = text.lines().enumerate();
    'outer: for key in key_path {
        for (n, line) in lines.by_ref() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = (line.len() - trimmed.len()) as isize;
            if found.is_some() && indent <= min_indent {
                return found;
            }
            let trimmed = trimmed.trim_start_matches("- ");
            let unquoted = trimmed.trim_start_matches(['"', '\'']);
            if unquoted.starts_with(key)
                && unquoted[key.len()..]
                    .trim_start_matches(['"', '\''])
                    .starts_with(':')
            {
                min_indent = indent;
                found = Some((n + 1, indent as usize + 1));
                continue 'outer;
            }
        }
        break;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec touching every kind of value the resolved spec holds: text blocks, quoting,
    /// nested maps and lists, durations, thresholds, JSON values, dataset versions.
    const RICH: &str = r#"pipeline: orders_clean
source:
  files: landing/*.csv
  columns: {order_id: int64, email: string, amount: "decimal(12,2)", at: "timestamp(ms, UTC)"}
  required: [order_id]
  settle: 1500ms
  csv: {delimiter: ";"}
  unknown_columns: fail
  versions:
    - version: 1
      schema:
        dataset: orders_raw
        fields:
          - {id: 1, name: order_id, type: int64, nullable: false, doc: "the key: never null"}
          - {id: 2, name: note, type: string, default: "n/a", aliases: [comment]}
batch: {max_rows: 1000, max_attempts: 2, lease: 45s}
transform: |
  SELECT order_id, lower(email) AS email, amount, at
  FROM input WHERE amount > 0 -- 'quoted' "too"
sink:
  delta: tables/orders_clean
  key: [order_id]
  quarantine: tables/held
checks:
  - not_null: {columns: [order_id, email]}
  - unique: {columns: [order_id], scope: batch}
  - accepted_values: {column: email, values: ["a@b", 3, 1.5, true, null]}
  - range: {column: amount, min: 0, max: 1e6, inclusive: false, severity: warn, warn_if: "> 5%"}
  - regex: {column: email, pattern: '^[^@]+@[^@]+$', action: drop}
  - expression: {name: sane, expr: "amount < 1e6", error_if: "> 10", where: "email <> ''"}
  - sql: {name: no_future, query: "SELECT * FROM output WHERE at > now()"}
  - row_count: {min: 1, within_pct_of_median: 50, last: 5}
  - schema: {required: {order_id: int64}, forbidden: [ssn]}
  - freshness: {column: at, max_age: 30d}
  - relationships: {column: order_id, to: {delta: tables/orders, column: id}}
deploy: {max_warnings: 1}
"#;

    /// The resolved spec's text is the identity of a pipeline version (its SHA-256 is the
    /// version's hash): a YAML library that wrote it differently would register a new version
    /// of every unchanged pipeline in an existing store. The expected text was written by
    /// serde_yaml 0.9.34, the library sluice used before.
    #[test]
    fn the_resolved_spec_is_written_as_before() {
        use sha2::{Digest, Sha256};
        let f = SpecFile::parse(Path::new("p.yaml"), RICH.into()).unwrap();
        let text = f.spec.to_yaml();
        assert_eq!(text, include_str!("../testdata/resolved-spec.yaml"));
        assert_eq!(
            hex::encode(Sha256::digest(text.as_bytes())),
            "16e960d65e7a60082d86fee455a6af1f3f95a9d75a4d5920f8249371e3f99102"
        );
        // And it reads back as the same spec.
        let back = SpecFile::parse(Path::new("p.yaml"), text).unwrap();
        assert_eq!(back.spec, f.spec);
    }

    const GOOD: &str = "pipeline: orders\nsource:\n  files: landing/*.csv\n  columns:\n    id: int64\n    amount: float64\ntransform: SELECT id FROM input\nsink:\n  delta: out\n";

    #[test]
    fn parses_a_minimal_spec_with_defaults() {
        let f = SpecFile::parse(Path::new("p.yaml"), GOOD.into()).unwrap();
        assert_eq!(f.spec.batch.max_rows, 500_000);
        assert_eq!(f.spec.source.settle, Duration::from_secs(2));
        assert_eq!(f.format(), Format::Csv);
    }

    #[test]
    fn unknown_field_is_refused_with_its_line() {
        let text = GOOD.replace("sink:\n", "sink:\n  dleta: x\n");
        let e = SpecFile::parse(Path::new("p.yaml"), text).unwrap_err();
        assert_eq!(e.at.line, 9, "{e}");
        assert!(e.message.contains("unknown field `dleta`"), "{e}");
        assert!(e.to_string().starts_with("p.yaml:9:"), "{e}");
    }

    #[test]
    fn a_duplicate_key_is_reported_at_its_line() {
        let text = GOOD.replace(
            "transform: SELECT id FROM input\n",
            "transform: SELECT id FROM input\npipeline: again\n",
        );
        let e = SpecFile::parse(Path::new("p.yaml"), text).unwrap_err();
        assert!(e.message.contains("duplicate field `pipeline`"), "{e}");
        assert_eq!((e.at.line, e.at.column), (8, 1), "{e}");
        // nested, in a block mapping
        let text = GOOD.replace(
            "  delta: out\n",
            "  delta: out\n  key: [id]\n  delta: again\n",
        );
        let e = SpecFile::parse(Path::new("p.yaml"), text).unwrap_err();
        assert_eq!((e.at.line, e.at.column), (11, 3), "{e}");
        // a column declared twice (a map would keep the last one silently)
        let text = GOOD.replace(
            "    amount: float64\n",
            "    amount: float64\n    id: string\n",
        );
        let e = SpecFile::parse(Path::new("p.yaml"), text).unwrap_err();
        assert!(e.message.contains("duplicate field `id`"), "{e}");
        assert_eq!((e.at.line, e.at.column), (7, 5), "{e}");
        // in a flow mapping
        let text = GOOD.replace(
            "sink:\n  delta: out\n",
            "sink: {delta: out, key: [id], delta: x}\n",
        );
        let e = SpecFile::parse(Path::new("p.yaml"), text).unwrap_err();
        assert_eq!((e.at.line, e.at.column), (8, 31), "{e}");
        // a check's fields, under a list item
        let text = format!(
            "{GOOD}checks:\n  - not_null:\n      columns: [id]\n      name: a\n      name: b\n"
        );
        let e = SpecFile::parse(Path::new("p.yaml"), text).unwrap_err();
        assert_eq!((e.at.line, e.at.column), (14, 7), "{e}");
    }

    #[test]
    fn bad_column_type_points_at_the_column() {
        let text = GOOD.replace("amount: float64", "amount: money");
        let e = SpecFile::parse(Path::new("p.yaml"), text).unwrap_err();
        assert_eq!((e.at.line, e.at.column), (6, 5), "{e}");
        assert!(e.message.contains("amount"), "{e}");
    }

    #[test]
    fn zero_batch_size_is_refused() {
        let text = format!("{GOOD}batch:\n  max_rows: 0\n");
        let e = SpecFile::parse(Path::new("p.yaml"), text).unwrap_err();
        assert_eq!(e.at.line, 11, "{e}");
    }

    #[test]
    fn unknown_extension_needs_a_format() {
        let text = GOOD.replace("*.csv", "*.dat");
        let e = SpecFile::parse(Path::new("p.yaml"), text).unwrap_err();
        assert!(e.message.contains("format"), "{e}");
        assert_eq!(e.at.line, 3);
    }

    #[test]
    fn locate_list_item_counts_items() {
        let text = "pipeline: x\nchecks:\n  - not_null: {columns: [a]}\n  - range:\n      column: b\n  - unique: {columns: [c]}\nsink: {}\n";
        assert_eq!(locate_list_item(text, "checks", 0), Some((3, 3)));
        assert_eq!(locate_list_item(text, "checks", 2), Some((6, 3)));
        assert_eq!(locate_list_item(text, "checks", 3), None);
    }

    const NESTED: &str = "pipeline: x\ndeploy:\n  strategy: canary\n  steps:\n    - set_weight: 10\n    # a comment\n    - analysis:\n        metrics:\n          - name: a\n            success_condition: batches > 0\n\n          - name: b\n            success_condition: candidate.p95_msx < 100\n    -\n      pause: {}\n  analysis: {templates: [{name: t}]}\nlist:\n- a\n- - b\n  - c\n";

    #[test]
    fn locate_path_walks_nested_list_items() {
        let at = |path: &[PathPart]| locate_path(NESTED, path);
        let k = |s: &str| PathPart::Key(s.into());
        let i = PathPart::Index;
        assert_eq!(at(&[k("deploy"), k("steps"), i(0)]), Some((5, 5)));
        assert_eq!(
            at(&[k("deploy"), k("steps"), i(0), k("set_weight")]),
            Some((5, 7))
        );
        assert_eq!(
            at(&[
                k("deploy"),
                k("steps"),
                i(1),
                k("analysis"),
                k("metrics"),
                i(1),
                k("success_condition")
            ]),
            Some((13, 13))
        );
        assert_eq!(
            at(&[
                k("deploy"),
                k("steps"),
                i(1),
                k("analysis"),
                k("metrics"),
                i(1)
            ]),
            Some((12, 11))
        );
        // An item whose content starts on the next line.
        assert_eq!(
            at(&[k("deploy"), k("steps"), i(2), k("pause")]),
            Some((15, 7))
        );
        // Into a flow mapping: the deepest key found.
        assert_eq!(
            at(&[k("deploy"), k("analysis"), k("templates"), i(0), k("name")]),
            Some((16, 3))
        );
        // Not there: the deepest part that is.
        assert_eq!(at(&[k("deploy"), k("steps"), i(7)]), Some((4, 3)));
        assert_eq!(at(&[k("deploy"), k("strategyx")]), Some((2, 1)));
        assert_eq!(at(&[k("nope")]), None);
        // A list at its key's indent, and a list in a list.
        assert_eq!(at(&[k("list"), i(1), i(1)]), Some((20, 3)));
        assert_eq!(at(&[k("list"), i(0)]), Some((18, 1)));
        // `steps` is not taken for a key that starts with it.
        assert_eq!(
            locate_path("stepsx: 1\nsteps: 2\n", &[k("steps")]),
            Some((2, 1))
        );
    }

    fn deploy_spec(deploy: &str) -> Result<SpecFile, SpecError> {
        let text = format!(
            "{}checks:\n  - not_null: {{columns: [id]}}\ndeploy:\n{deploy}",
            GOOD
        );
        SpecFile::parse(Path::new("p.yaml"), text)
    }

    /// GOOD is 9 lines, the checks 2 and `deploy:` 1: the deploy section starts at line 13.
    const CANARY: &str = "  strategy: canary\n  route_key: id\n  steps:\n    - set_weight: 10\n    - pause: {duration: 30s}\n    - analysis:\n        metrics:\n          - name: latency\n            count: 3\n            success_condition: candidate.p95_ms < 1.2 * stable.p95_ms\n          - name: held\n            failure_condition: candidate.check_failures.\"not_null(id)\" > 0\n    - set_weight: 50\n    - pause: {}\n  analysis:\n    templates:\n      - name: error-rate\n        args: {max: 0.01}\n    metrics:\n      - name: errors\n        interval: 1m\n        failure_condition: error_rate > stable.error_rate + 0.01\n  progress_deadline: 30m\n";

    #[test]
    fn a_canary_with_steps_background_analysis_and_a_template_parses() {
        let f = deploy_spec(CANARY).unwrap();
        let d = f.spec.deploy.as_ref().unwrap();
        assert_eq!(d.strategy, Strategy::Canary);
        assert_eq!(d.route_key.as_deref(), Some("id"));
        assert_eq!(d.steps.len(), 5);
        assert_eq!(d.steps[0], Step::SetWeight(10));
        assert_eq!(d.steps[4], Step::Pause(Pause { duration: None }));
        let bg = d.analysis.as_ref().unwrap();
        assert_eq!(bg.templates[0].name, "error-rate");
        assert_eq!(bg.metrics[0].interval, Duration::from_secs(60));
        assert_eq!(d.progress_deadline, Duration::from_secs(1800));
        assert_eq!(d.max_warnings, 2);
        // What the store keeps reads back as the same spec.
        let back = SpecFile::parse(Path::new("p.yaml"), f.spec.to_yaml()).unwrap();
        assert_eq!(back.spec, f.spec);
    }

    #[test]
    fn a_typo_in_a_condition_is_refused_at_its_line() {
        let text = CANARY.replace("candidate.p95_ms < 1.2", "candidate.p95_msx < 1.2");
        let e = deploy_spec(&text).unwrap_err();
        assert_eq!((e.at.line, e.at.column), (22, 13), "{e}");
        assert!(
            e.message.contains("unknown metric `candidate.p95_msx`"),
            "{e}"
        );
        assert!(
            e.message
                .starts_with("deploy.steps[2].analysis.metrics[0].success_condition: "),
            "{e}"
        );
        assert!(e.to_string().starts_with("p.yaml:22:13: "), "{e}");
        // In the background analysis too.
        let text = CANARY.replace("error_rate > stable", "eror_rate > stable");
        let e = deploy_spec(&text).unwrap_err();
        assert_eq!(e.at.line, 34, "{e}");
        // A check the pipeline does not have.
        let text = CANARY.replace("\"not_null(id)\"", "not_null_id");
        let e = deploy_spec(&text).unwrap_err();
        assert_eq!(e.at.line, 24, "{e}");
        assert!(e.message.contains("not_null(id)"), "names the checks: {e}");
    }

    #[test]
    fn deploy_policy_errors_point_at_the_offending_item() {
        let e = deploy_spec("  strategy: rolling\n  steps:\n    - set_weight: 10\n").unwrap_err();
        assert_eq!(e.at.line, 14, "{e}");
        assert!(e.message.contains("strategy: canary"), "{e}");
        let e = deploy_spec("  route_key: id\n").unwrap_err();
        assert_eq!(e.at.line, 13, "{e}");
        let e = deploy_spec(
            "  strategy: canary\n  steps:\n    - set_weight: 10\n    - set_weight: 150\n",
        )
        .unwrap_err();
        assert_eq!((e.at.line, e.at.column), (16, 7), "{e}");
        assert!(e.message.contains("0 to 100"), "{e}");
        let e =
            deploy_spec("  strategy: canary\n  steps:\n    - pause: {duration: 0s}\n").unwrap_err();
        assert_eq!(e.at.line, 15, "{e}");
        let e = deploy_spec(
            "  analysis:\n    metrics:\n      - name: a\n        interval: 100ms\n        success_condition: batches > 0\n",
        )
        .unwrap_err();
        assert_eq!((e.at.line, e.at.column), (16, 9), "{e}");
        let e = deploy_spec("  strategy: canary\n  route_key: customer\n").unwrap_err();
        assert_eq!(e.at.line, 14, "{e}");
        assert!(e.message.contains("(id, amount)"), "{e}");
        let e = deploy_spec("  strategy: blue_green\n").unwrap_err();
        assert_eq!(e.at.line, 13, "{e}");
        // Unknown fields keep being refused with their line.
        let e = deploy_spec("  strategy: canary\n  stpes: []\n").unwrap_err();
        assert!(e.message.contains("unknown field `stpes`"), "{e}");
        assert_eq!(e.at.line, 14, "{e}");
    }

    #[test]
    fn an_old_deploy_section_is_still_valid_and_means_the_same() {
        let f = deploy_spec("  max_warnings: 1\n").unwrap();
        let d = f.spec.deploy.as_ref().unwrap();
        assert_eq!(d.rules().max_warnings, 1);
        assert_eq!(d.strategy, Strategy::Recreate);
        assert!(d.steps.is_empty() && d.analysis.is_none() && d.route_key.is_none());
        assert!(f.spec.to_yaml().ends_with("deploy:\n  max_warnings: 1\n"));
    }

    #[test]
    fn locate_key_walks_nesting() {
        assert_eq!(locate_key(GOOD, &["sink", "delta"]), Some((9, 3)));
        assert_eq!(locate_key(GOOD, &["transform"]), Some((7, 1)));
        assert_eq!(locate_key(GOOD, &["source", "nope"]), Some((2, 1)));
    }
}
