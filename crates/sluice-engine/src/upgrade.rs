//! Landed files written under older versions of the source dataset.
//!
//! A pipeline whose source names a registered dataset (`source.dataset: orders_raw@3`) reads
//! files written under any earlier version too. For each slice sluice decides which version
//! wrote it:
//!
//! 1. the file has a `schema_version` column: its value (the same on every row of the slice)
//!    names the version;
//! 2. otherwise, by the file's columns: the version sharing the most field names with them,
//!    the newest on a tie (a file with exactly a version's columns is that version).
//!
//! The slice is read with that version's columns and types, then upgraded to the pipeline's
//! version with the registry's record conversion: renamed fields follow their ids, new fields
//! take their default (or NULL), types widen. A value that cannot be carried over quarantines
//! the batch with the row and reason; nothing is published. Columns neither version knows
//! follow the source's `unknown_columns` policy as usual. The `schema_version` column itself
//! is bookkeeping: it reaches the transform only if the dataset declares it.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use sluice_core::BatchSlice;
use sluice_schema::Schema;

use crate::source::{self, InputSchema, RESCUED, SourceError, UnknownColumns};
use crate::spec::{Format, SourceVersion};

/// The column naming the schema version a record was written under.
pub const VERSION_COLUMN: &str = "schema_version";

/// Reads slices of any registered version as the pipeline's version.
#[derive(Debug, Clone)]
pub struct SourceVersions {
    dataset: String,
    /// Oldest first; the last is the pipeline's version.
    versions: Vec<VersionReader>,
    /// The pipeline's input (the current version's columns, `_rescued` when rescuing).
    target: InputSchema,
}

#[derive(Debug, Clone)]
struct VersionReader {
    version: i64,
    schema: Schema,
    /// The version's columns, plus `schema_version` when the dataset does not declare it.
    input: InputSchema,
}

impl SourceVersions {
    /// `versions` as resolved into the spec (oldest first, the pipeline's version last);
    /// `target` the pipeline's input schema.
    pub fn new(
        versions: &[SourceVersion],
        target: &InputSchema,
        unknown: UnknownColumns,
    ) -> Result<SourceVersions, String> {
        let Some(current) = versions.last() else {
            return Err("no dataset versions".into());
        };
        let mut readers = Vec::with_capacity(versions.len());
        for v in versions {
            let mut columns = indexmap::IndexMap::new();
            for f in &v.schema.fields {
                columns.insert(f.name.clone(), f.field_type.to_string());
            }
            columns
                .entry(VERSION_COLUMN.to_string())
                .or_insert_with(|| "int64".to_string());
            let required: Vec<String> = v
                .schema
                .fields
                .iter()
                .filter(|f| !f.nullable)
                .map(|f| f.name.clone())
                .collect();
            let input = InputSchema::with_policy(&columns, &required, unknown)
                .map_err(|e| format!("{}@{}: {e}", v.schema.dataset, v.version))?;
            readers.push(VersionReader {
                version: v.version,
                schema: v.schema.clone(),
                input,
            });
        }
        Ok(SourceVersions {
            dataset: current.schema.dataset.clone(),
            versions: readers,
            target: target.clone(),
        })
    }

    fn current(&self) -> &VersionReader {
        self.versions.last().expect("at least one version")
    }

    /// Which version wrote the slice (see the module docs).
    pub fn version_of(
        &self,
        slice: &BatchSlice,
        format: Format,
        delimiter: u8,
        drop: bool,
    ) -> Result<i64, SourceError> {
        let columns = source::slice_columns(slice, format, delimiter)?;
        if columns.iter().any(|c| c == VERSION_COLUMN) {
            let mut only = indexmap::IndexMap::new();
            only.insert(VERSION_COLUMN.to_string(), "int64".to_string());
            let probe = InputSchema::with_policy(&only, &[], UnknownColumns::Ignore)
                .map_err(|e| SourceError::bad(&slice.path, None, e))?;
            let batch = source::read_slice_with(slice, format, &probe, delimiter, drop)?.batch;
            let values = batch.column(0).as_primitive::<Int64Type>();
            let seen: Vec<i64> = values
                .iter()
                .flatten()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            match seen.as_slice() {
                [] => {}
                [v] => {
                    return if self.versions.iter().any(|r| r.version == *v) {
                        Ok(*v)
                    } else {
                        Err(SourceError::bad(
                            &slice.path,
                            None,
                            format!(
                                "{VERSION_COLUMN} {v} is not a version of {} this pipeline reads (registered up to its version: {}); register it, or fix the file",
                                self.dataset,
                                self.known()
                            ),
                        ))
                    };
                }
                many => {
                    return Err(SourceError::bad(
                        &slice.path,
                        None,
                        format!(
                            "rows {}..{} mix {VERSION_COLUMN} values {many:?}: land one schema version per file",
                            slice.row_start + 1,
                            slice.row_start + slice.row_count
                        ),
                    ));
                }
            }
        }
        let names: HashSet<&str> = columns
            .iter()
            .map(String::as_str)
            .filter(|c| *c != VERSION_COLUMN && *c != RESCUED)
            .collect();
        let mut best = self.current();
        let mut best_overlap = overlap(best, &names);
        for r in self.versions.iter().rev() {
            let o = overlap(r, &names);
            if o > best_overlap {
                best = r;
                best_overlap = o;
            }
        }
        Ok(best.version)
    }

    fn known(&self) -> String {
        self.versions
            .iter()
            .map(|r| r.version.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Reads a slice, whichever version wrote it, as the pipeline's input (leaving out bad rows
    /// when `drop`). Returns what was read and the version it was written under.
    pub fn read(
        &self,
        slice: &BatchSlice,
        format: Format,
        delimiter: u8,
        drop: bool,
    ) -> Result<(source::SliceRead, i64), SourceError> {
        let version = self.version_of(slice, format, delimiter, drop)?;
        let reader = self
            .versions
            .iter()
            .find(|r| r.version == version)
            .unwrap_or_else(|| self.current());
        let slice_read = source::read_slice_with(slice, format, &reader.input, delimiter, drop)?;
        let read = &slice_read.batch;
        let batch = if reader.version == self.current().version {
            self.assemble(read, |name| read.column_by_name(name).cloned())
        } else {
            let converted =
                sluice_schema::convert::convert_batch(read, &reader.schema, &self.current().schema)
                    .map_err(|e| {
                        let at = e
                            .row()
                            .map(|r| format!(" (data row {})", slice.row_start + r as u64 + 1))
                            .unwrap_or_default();
                        SourceError::bad(
                            &slice.path,
                            None,
                            format!(
                                "upgrading from {ds}@{from} to {ds}@{to}{at}: {e}",
                                ds = self.dataset,
                                from = reader.version,
                                to = self.current().version
                            ),
                        )
                    })?;
            self.assemble(read, |name| {
                if name == RESCUED {
                    read.column_by_name(name).cloned()
                } else {
                    converted.column_by_name(name).cloned()
                }
            })
        };
        let batch = batch.map_err(|e| SourceError::bad(&slice.path, None, e))?;
        Ok((
            source::SliceRead {
                batch,
                ..slice_read
            },
            version,
        ))
    }

    /// The batch in the pipeline's input shape, taking each column from `column`.
    fn assemble(
        &self,
        read: &RecordBatch,
        column: impl Fn(&str) -> Option<ArrayRef>,
    ) -> Result<RecordBatch, String> {
        let schema = self.target.schema.clone();
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                column(f.name())
                    .ok_or_else(|| format!("column {:?} is missing after reading", f.name()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let columns = columns
            .into_iter()
            .zip(schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    arrow::compute::cast(&c, f.data_type()).map_err(|e| e.to_string())
                }
            })
            .collect::<Result<Vec<_>, String>>()?;
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(read.num_rows()));
        RecordBatch::try_new_with_options(Arc::new(schema.as_ref().clone()), columns, &options)
            .map_err(|e| e.to_string())
    }
}

fn overlap(r: &VersionReader, names: &HashSet<&str>) -> usize {
    r.schema
        .fields
        .iter()
        .filter(|f| names.contains(f.name.as_str()))
        .count()
}
