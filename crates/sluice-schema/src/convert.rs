//! Record conversion between schema versions.
//!
//! Upgrading (old data, new schema) fills fields the old data lacks with their default
//! or null, follows renames by id or alias, and widens types. Downgrading (new data, old
//! schema) drops fields the old version does not know and reverses renames. Either way a
//! value that would change or disappear (a narrowing out of range, rounding, a required
//! field with no value) stops the conversion with the row, field, value and reason:
//! conversion never loses data silently, and never panics.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, ListArray, RecordBatch, RecordBatchOptions, StructArray};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_cast::{CastOptions, cast_with_options};
use arrow_schema::{Field as ArrowField, Fields};
use serde_json::Value;

use crate::schema::{Field, Schema, find_match};
use crate::types::FieldType;
use crate::value::{self, ValueError, describe_value};

/// Why a record could not be converted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConversionError {
    /// One value cannot be carried over.
    #[error("row {row}, field `{field}`: value {value}: {reason}")]
    Value {
        row: usize,
        field: String,
        value: String,
        reason: String,
    },
    /// The input does not have the shape its schema promises.
    #[error("field `{field}`: {reason}")]
    Input { field: String, reason: String },
}

impl ConversionError {
    fn value(row: usize, field: &str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        ConversionError::Value {
            row,
            field: field.to_string(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    fn input(field: &str, reason: impl Into<String>) -> Self {
        ConversionError::Input {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// The row of a value error, if it is one.
    pub fn row(&self) -> Option<usize> {
        match self {
            ConversionError::Value { row, .. } => Some(*row),
            ConversionError::Input { .. } => None,
        }
    }

    fn with_row(self, map: impl Fn(usize) -> usize) -> Self {
        match self {
            ConversionError::Value {
                row,
                field,
                value,
                reason,
            } => ConversionError::Value {
                row: map(row),
                field,
                value,
                reason,
            },
            other => other,
        }
    }
}

fn from_value_error(field: &str, e: ValueError) -> ConversionError {
    ConversionError::Value {
        row: e.row,
        field: format!("{field}{}", e.path),
        value: e.value,
        reason: e.reason,
    }
}

/// Converts `batch`, whose columns follow `from` (matched by name; extra columns are
/// ignored), into a batch following `to`, with `to`'s Arrow schema and field ids.
pub fn convert_batch(
    batch: &RecordBatch,
    from: &Schema,
    to: &Schema,
) -> Result<RecordBatch, ConversionError> {
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(to.fields.len());
    for target in &to.fields {
        let column = match find_match(target, from, to) {
            None => fill_missing(target, rows)?,
            Some(source) => {
                let input = match batch.column_by_name(&source.name) {
                    Some(c) => c.clone(),
                    None if source.nullable => value::null_array(&source.field_type, rows),
                    None => {
                        return Err(ConversionError::input(
                            &source.name,
                            format!(
                                "the batch has no column `{}`, which the source schema requires",
                                source.name
                            ),
                        ));
                    }
                };
                let converted = convert_array(&input, &target.field_type, &target.name)?;
                if !target.nullable
                    && converted.null_count() > 0
                    && let Some(row) = (0..converted.len()).find(|&r| converted.is_null(r))
                {
                    return Err(ConversionError::value(
                        row,
                        &target.name,
                        "null",
                        format!(
                            "`{}` is required in the target schema but the source value is null",
                            target.name
                        ),
                    ));
                }
                converted
            }
        };
        columns.push(column);
    }
    let schema = Arc::new(to.to_arrow());
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    RecordBatch::try_new_with_options(schema, columns, &options).map_err(|e| {
        ConversionError::input(
            &to.dataset,
            format!("cannot assemble the converted batch: {e}"),
        )
    })
}

/// The column for a target field the source does not have: its default, else nulls.
fn fill_missing(target: &Field, rows: usize) -> Result<ArrayRef, ConversionError> {
    if let Some(default) = &target.default {
        // One value, repeated by index: no per-row JSON.
        let one = value::json_to_array(std::slice::from_ref(default), &target.field_type)
            .map_err(|e| from_value_error(&target.name, e))?;
        let indices = arrow_array::UInt32Array::from(vec![0u32; rows]);
        return arrow_select::take::take(one.as_ref(), &indices, None)
            .map_err(|e| ConversionError::input(&target.name, e.to_string()));
    }
    if target.nullable || rows == 0 {
        return Ok(value::null_array(&target.field_type, rows));
    }
    Err(ConversionError::value(
        0,
        &target.name,
        "missing",
        format!(
            "`{}` is required with no default and the source schema has no such field (nor an alias of it)",
            target.name
        ),
    ))
}

fn cast_options() -> CastOptions<'static> {
    CastOptions {
        safe: true,
        ..CastOptions::default()
    }
}

/// Converts one column to the canonical Arrow type of `to`, recursing through structs
/// and lists so members are matched by name and elements converted one by one.
pub fn convert_array(
    array: &ArrayRef,
    to: &FieldType,
    path: &str,
) -> Result<ArrayRef, ConversionError> {
    let from = FieldType::from_arrow(array.data_type())
        .map_err(|e| ConversionError::input(path, e.to_string()))?;
    match (&from, to) {
        (FieldType::Struct(_), FieldType::Struct(members)) => {
            let canonical = physical(array, &from, path)?;
            let Some(st) = canonical.as_struct_opt() else {
                return Err(ConversionError::input(path, "expected a struct column"));
            };
            let mut children = Vec::with_capacity(members.len());
            for member in members {
                let member_path = format!("{path}.{}", member.name);
                let child = match st.column_by_name(&member.name) {
                    Some(c) => convert_array(c, &member.field_type, &member_path)?,
                    None => value::null_array(&member.field_type, st.len()),
                };
                if !member.nullable
                    && let Some(row) = (0..st.len()).find(|&r| st.is_valid(r) && child.is_null(r))
                {
                    return Err(ConversionError::value(
                        row,
                        &member_path,
                        "null",
                        "member is required in the target type but has no value in the source",
                    ));
                }
                children.push(child);
            }
            let fields: Fields = members.iter().map(|m| m.to_arrow()).collect();
            let out =
                StructArray::try_new_with_length(fields, children, st.nulls().cloned(), st.len())
                    .map_err(|e| ConversionError::input(path, e.to_string()))?;
            Ok(Arc::new(out))
        }
        (FieldType::List(_), FieldType::List(element)) => {
            let canonical = physical(array, &from, path)?;
            let Some(list) = canonical.as_list_opt::<i32>() else {
                return Err(ConversionError::input(path, "expected a list column"));
            };
            // Convert only the referenced slice of values so rows sliced away cannot fail.
            let offsets = list.value_offsets();
            let first = offsets.first().copied().unwrap_or(0);
            let last = offsets.last().copied().unwrap_or(0);
            let (Ok(start), Ok(len)) = (usize::try_from(first), usize::try_from(last - first))
            else {
                return Err(ConversionError::input(path, "list offsets are invalid"));
            };
            let values = list.values().slice(start, len);
            let rebased: Vec<i32> = offsets.iter().map(|o| o - first).collect();
            let child = convert_array(&values, element, &format!("{path}[]")).map_err(|e| {
                e.with_row(|r| {
                    // The list row whose range holds element r.
                    rebased
                        .partition_point(|&o| usize::try_from(o).is_ok_and(|o| o <= r))
                        .saturating_sub(1)
                })
            })?;
            let field = Arc::new(ArrowField::new_list_field(element.to_arrow(), true));
            let out = ListArray::try_new(
                field,
                OffsetBuffer::new(ScalarBuffer::from(rebased)),
                child,
                list.nulls().cloned(),
            )
            .map_err(|e| ConversionError::input(path, e.to_string()))?;
            Ok(Arc::new(out))
        }
        _ if from == *to => physical(array, to, path),
        _ => lossless_cast(array, &from, to, path),
    }
}

/// `array` in the canonical physical type of its logical type `t` (Utf8 for LargeUtf8,
/// List for LargeList, ...), failing on any value that does not survive.
fn physical(array: &ArrayRef, t: &FieldType, path: &str) -> Result<ArrayRef, ConversionError> {
    let target = t.to_arrow();
    if array.data_type() == &target {
        return Ok(array.clone());
    }
    let out = cast_with_options(array, &target, &cast_options()).map_err(|e| {
        ConversionError::input(
            path,
            format!("cannot read {} as {t}: {e}", array.data_type()),
        )
    })?;
    first_lost(array, &out, t, path)?;
    Ok(out)
}

/// Fails at the first row that was a value in `before` and is null in `after`.
fn first_lost(
    before: &ArrayRef,
    after: &ArrayRef,
    to: &FieldType,
    path: &str,
) -> Result<(), ConversionError> {
    if after.null_count() == before.null_count() {
        return Ok(());
    }
    match (0..before.len()).find(|&r| before.is_valid(r) && after.is_null(r)) {
        Some(row) => Err(ConversionError::value(
            row,
            path,
            describe_value(before.as_ref(), row),
            format!("does not fit {to}"),
        )),
        None => Ok(()),
    }
}

/// Promotions that keep every value of every input: integer widening, small integers to
/// float64, float32 to float64, decimal precision widening at equal scale, string to binary.
fn always_exact(from: &FieldType, to: &FieldType) -> bool {
    use FieldType::*;
    let rank = |t: &FieldType| match t {
        Int8 => Some(1),
        Int16 => Some(2),
        Int32 => Some(3),
        Int64 => Some(4),
        _ => None,
    };
    match (from, to) {
        (a, b) if rank(a).is_some() && rank(b).is_some() => rank(a) <= rank(b),
        (Int8 | Int16 | Int32, Float64) | (Float32, Float64) | (String, Binary) => true,
        (
            Decimal {
                precision: p1,
                scale: s1,
            },
            Decimal {
                precision: p2,
                scale: s2,
            },
        ) => s1 == s2 && p2 >= p1,
        _ => false,
    }
}

/// Casts a leaf column and proves nothing was lost by casting back: a value that comes
/// back different was rounded, truncated or wrapped.
fn lossless_cast(
    array: &ArrayRef,
    from: &FieldType,
    to: &FieldType,
    path: &str,
) -> Result<ArrayRef, ConversionError> {
    let target = to.to_arrow();
    let out = cast_with_options(array, &target, &cast_options())
        .map_err(|e| ConversionError::input(path, format!("cannot convert {from} to {to}: {e}")))?;
    if always_exact(from, to) {
        // A widening keeps every value by construction: no need to cast back and compare.
        return Ok(out);
    }
    first_lost(array, &out, to, path)?;
    let back = match cast_with_options(&out, array.data_type(), &cast_options()) {
        Ok(back) => back,
        // No way back means no way to prove the cast exact; refuse rather than guess.
        Err(e) => {
            return Err(ConversionError::input(
                path,
                format!("cannot verify that converting {from} to {to} keeps every value: {e}"),
            ));
        }
    };
    if back.to_data() == array.to_data() {
        return Ok(out);
    }
    for row in 0..array.len() {
        if array.is_null(row) {
            continue;
        }
        if back.is_null(row) || back.slice(row, 1).to_data() != array.slice(row, 1).to_data() {
            return Err(ConversionError::value(
                row,
                path,
                describe_value(array.as_ref(), row),
                format!(
                    "converting {from} to {to} would change it to {}",
                    describe_value(out.as_ref(), row)
                ),
            ));
        }
    }
    Ok(out)
}

/// Converts JSON records (objects) written with `from` into records following `to`,
/// with the same rules as [`convert_batch`]. Record `i` is row `i` in errors.
pub fn convert_json_records(
    records: &[Value],
    from: &Schema,
    to: &Schema,
) -> Result<Vec<Value>, ConversionError> {
    if let Some(row) = records.iter().position(|r| !r.is_object()) {
        return Err(ConversionError::value(
            row,
            "",
            value::short_json(&records[row]),
            "a record must be a JSON object",
        ));
    }
    let batch = json_to_batch(records, from)?;
    let converted = convert_batch(&batch, from, to)?;
    batch_to_json(&converted)
}

/// Converts one JSON record; see [`convert_json_records`].
pub fn convert_json(record: &Value, from: &Schema, to: &Schema) -> Result<Value, ConversionError> {
    let mut out = convert_json_records(std::slice::from_ref(record), from, to)?;
    Ok(out.pop().unwrap_or(Value::Null))
}

/// Builds a batch following `schema` from JSON objects; absent keys are null. Fails on
/// a value that does not fit its field or a null in a required field.
pub fn json_to_batch(records: &[Value], schema: &Schema) -> Result<RecordBatch, ConversionError> {
    let mut columns = Vec::with_capacity(schema.fields.len());
    for field in &schema.fields {
        let values: Vec<Value> = records
            .iter()
            .map(|r| r.get(&field.name).cloned().unwrap_or(Value::Null))
            .collect();
        if !field.nullable
            && let Some(row) = values.iter().position(Value::is_null)
        {
            return Err(ConversionError::value(
                row,
                &field.name,
                "null",
                format!(
                    "`{}` is required but the record has no value for it",
                    field.name
                ),
            ));
        }
        columns.push(
            value::json_to_array(&values, &field.field_type)
                .map_err(|e| from_value_error(&field.name, e))?,
        );
    }
    let options = RecordBatchOptions::new().with_row_count(Some(records.len()));
    RecordBatch::try_new_with_options(Arc::new(schema.to_arrow()), columns, &options)
        .map_err(|e| ConversionError::input(&schema.dataset, e.to_string()))
}

/// JSON objects, one per row, keyed by column name.
pub fn batch_to_json(batch: &RecordBatch) -> Result<Vec<Value>, ConversionError> {
    let schema = batch.schema();
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| value::array_to_json(c.as_ref()).map_err(|e| from_value_error(f.name(), e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((0..batch.num_rows())
        .map(|row| {
            let mut object = serde_json::Map::new();
            for (field, column) in schema.fields().iter().zip(&columns) {
                object.insert(
                    field.name().clone(),
                    column.get(row).cloned().unwrap_or(Value::Null),
                );
            }
            Value::Object(object)
        })
        .collect())
}
