//! Values as JSON and as Arrow arrays, and the bridge between the two.
//!
//! Defaults, constraint bounds and JSON records are JSON-shaped; batches are Arrow. One
//! set of rules converts between them so a default means the same thing in a YAML file,
//! a JSON record and a Delta table. JSON shapes: integers and floats as numbers (and
//! `"NaN"`, `"Infinity"`, `"-Infinity"`), decimals as text (numbers accepted on input),
//! dates as `YYYY-MM-DD`, timestamps as RFC 3339 text (integers accepted as epoch values
//! in the column's unit), binary as text when it is UTF-8 and as a list of bytes
//! otherwise, lists as arrays, structs as objects.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Decimal256Type, DecimalType, Float32Type, Float64Type, Int8Type,
    Int16Type, Int32Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Decimal256Array,
    Float32Array, Float64Array, Int8Array, Int16Array, Int32Array, Int64Array, ListArray,
    StringArray, StructArray, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray, new_null_array,
};
use arrow_buffer::{NullBuffer, OffsetBuffer, i256};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_cast::parse::{Parser, parse_decimal, string_to_datetime};
use arrow_schema::{DataType, Field as ArrowField, Fields};
use serde_json::{Number, Value};

use crate::types::{FieldType, TimeUnit};

/// A value that does not fit its type. `row` indexes the slice given to
/// [`json_to_array`] or the array given to [`array_to_json`]; `path` locates the value
/// inside a nested one (`[2].city`), empty at the top.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("row {row}{path}: value {value}: {reason}")]
pub struct ValueError {
    pub row: usize,
    pub path: String,
    pub value: String,
    pub reason: String,
}

fn value_error(row: usize, value: &Value, reason: impl Into<String>) -> ValueError {
    ValueError {
        row,
        path: String::new(),
        value: short_json(value),
        reason: reason.into(),
    }
}

/// JSON text of a value, cut so one huge value does not flood an error message.
pub fn short_json(value: &Value) -> String {
    truncate(value.to_string())
}

fn truncate(mut text: String) -> String {
    const LIMIT: usize = 120;
    if text.len() > LIMIT {
        let mut cut = LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Builds an Arrow array of `field_type`'s canonical Arrow type from JSON values; JSON
/// `null` becomes a null slot whatever the type (nullability is the caller's rule).
pub fn json_to_array(values: &[Value], field_type: &FieldType) -> Result<ArrayRef, ValueError> {
    let refs: Vec<&Value> = values.iter().collect();
    build(&refs, field_type)
}

fn build(values: &[&Value], t: &FieldType) -> Result<ArrayRef, ValueError> {
    Ok(match t {
        FieldType::Bool => Arc::new(
            values
                .iter()
                .enumerate()
                .map(|(row, v)| match v {
                    Value::Null => Ok(None),
                    Value::Bool(b) => Ok(Some(*b)),
                    Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
                    Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
                    other => Err(value_error(row, other, "expected true or false")),
                })
                .collect::<Result<BooleanArray, _>>()?,
        ),
        FieldType::Int8 => Arc::new(ints::<i8>(values, t)?.into_iter().collect::<Int8Array>()),
        FieldType::Int16 => Arc::new(ints::<i16>(values, t)?.into_iter().collect::<Int16Array>()),
        FieldType::Int32 => Arc::new(ints::<i32>(values, t)?.into_iter().collect::<Int32Array>()),
        FieldType::Int64 => Arc::new(ints::<i64>(values, t)?.into_iter().collect::<Int64Array>()),
        FieldType::Float32 => {
            let floats = floats(values, t)?;
            let mut out = Vec::with_capacity(floats.len());
            for (row, f) in floats.into_iter().enumerate() {
                out.push(match f {
                    Some(v) if v.is_finite() && !(v as f32).is_finite() => {
                        return Err(value_error(row, values[row], "out of range for float32"));
                    }
                    other => other.map(|v| v as f32),
                });
            }
            Arc::new(out.into_iter().collect::<Float32Array>())
        }
        FieldType::Float64 => Arc::new(floats(values, t)?.into_iter().collect::<Float64Array>()),
        FieldType::Decimal { precision, scale } => decimals(values, *precision, *scale)?,
        FieldType::String => Arc::new(
            values
                .iter()
                .enumerate()
                .map(|(row, v)| match v {
                    Value::Null => Ok(None),
                    Value::String(s) => Ok(Some(s.as_str())),
                    other => Err(value_error(row, other, "expected a string")),
                })
                .collect::<Result<StringArray, _>>()?,
        ),
        FieldType::Binary => {
            let bytes = values
                .iter()
                .enumerate()
                .map(|(row, v)| match v {
                    Value::Null => Ok(None),
                    Value::String(s) => Ok(Some(s.as_bytes().to_vec())),
                    Value::Array(items) => items
                        .iter()
                        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                        .collect::<Option<Vec<u8>>>()
                        .map(Some)
                        .ok_or_else(|| value_error(row, v, "expected a list of bytes 0..=255")),
                    other => Err(value_error(row, other, "expected text or a list of bytes")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Arc::new(BinaryArray::from_iter(bytes))
        }
        FieldType::Date => Arc::new(
            values
                .iter()
                .enumerate()
                .map(|(row, v)| match v {
                    Value::Null => Ok(None),
                    Value::String(s) => Date32Type::parse(s.trim())
                        .map(Some)
                        .ok_or_else(|| value_error(row, v, "expected a date like 2024-01-31")),
                    Value::Number(n) => n
                        .as_i64()
                        .and_then(|d| i32::try_from(d).ok())
                        .map(Some)
                        .ok_or_else(|| value_error(row, v, "expected days since 1970-01-01")),
                    other => Err(value_error(row, other, "expected a date like 2024-01-31")),
                })
                .collect::<Result<Date32Array, _>>()?,
        ),
        FieldType::Timestamp { unit, tz } => timestamps(values, *unit, tz.as_deref())?,
        FieldType::List(element) => {
            let mut offsets = Vec::with_capacity(values.len() + 1);
            let mut owners = Vec::new();
            let mut items: Vec<&Value> = Vec::new();
            let mut valid = Vec::with_capacity(values.len());
            offsets.push(0usize);
            for (row, v) in values.iter().enumerate() {
                match v {
                    Value::Null => valid.push(false),
                    Value::Array(list) => {
                        valid.push(true);
                        for item in list {
                            owners.push((row, items.len() - offsets[row]));
                            items.push(item);
                        }
                    }
                    other => return Err(value_error(row, other, "expected a list")),
                }
                offsets.push(items.len());
            }
            let child = build(&items, element).map_err(|e| {
                let (row, index) = owners.get(e.row).copied().unwrap_or((e.row, 0));
                ValueError {
                    row,
                    path: format!("[{index}]{}", e.path),
                    ..e
                }
            })?;
            let field = Arc::new(ArrowField::new_list_field(element.to_arrow(), true));
            let list = ListArray::try_new(
                field,
                OffsetBuffer::from_lengths(offsets.windows(2).map(|w| w[1] - w[0])),
                child,
                nulls_from(&valid),
            )
            .map_err(|e| ValueError {
                row: 0,
                path: String::new(),
                value: String::new(),
                reason: e.to_string(),
            })?;
            Arc::new(list)
        }
        FieldType::Struct(members) => {
            let mut valid = Vec::with_capacity(values.len());
            for (row, v) in values.iter().enumerate() {
                match v {
                    Value::Null => valid.push(false),
                    Value::Object(_) => valid.push(true),
                    other => return Err(value_error(row, other, "expected an object")),
                }
            }
            let mut children = Vec::with_capacity(members.len());
            for member in members {
                let member_values: Vec<&Value> = values
                    .iter()
                    .map(|v| v.get(&member.name).unwrap_or(&Value::Null))
                    .collect();
                if !member.nullable
                    && let Some(row) =
                        (0..values.len()).find(|&r| valid[r] && member_values[r].is_null())
                {
                    return Err(ValueError {
                        row,
                        path: format!(".{}", member.name),
                        value: "null".into(),
                        reason: "member is required (not null)".into(),
                    });
                }
                let child = build(&member_values, &member.field_type).map_err(|e| ValueError {
                    path: format!(".{}{}", member.name, e.path),
                    ..e
                })?;
                children.push(child);
            }
            let fields: Fields = members.iter().map(|m| m.to_arrow()).collect();
            let array = StructArray::try_new_with_length(
                fields,
                children,
                nulls_from(&valid),
                values.len(),
            )
            .map_err(|e| ValueError {
                row: 0,
                path: String::new(),
                value: String::new(),
                reason: e.to_string(),
            })?;
            Arc::new(array)
        }
    })
}

fn nulls_from(valid: &[bool]) -> Option<NullBuffer> {
    if valid.iter().all(|v| *v) {
        None
    } else {
        Some(NullBuffer::from(valid.to_vec()))
    }
}

fn ints<T: TryFrom<i64>>(values: &[&Value], t: &FieldType) -> Result<Vec<Option<T>>, ValueError> {
    values
        .iter()
        .enumerate()
        .map(|(row, v)| match v {
            Value::Null => Ok(None),
            Value::Number(n) => {
                let whole = n.as_i64().or_else(|| {
                    // 3.0 is an integer written as a float; 3.5 is not.
                    n.as_f64()
                        .filter(|f| {
                            f.fract() == 0.0 && *f >= i64::MIN as f64 && *f < i64::MAX as f64
                        })
                        .map(|f| f as i64)
                });
                match whole {
                    Some(i) => T::try_from(i)
                        .map(Some)
                        .map_err(|_| value_error(row, v, format!("out of range for {t}"))),
                    None if n.as_u64().is_some() => {
                        Err(value_error(row, v, format!("out of range for {t}")))
                    }
                    None => Err(value_error(
                        row,
                        v,
                        format!("not a whole number, so it does not fit {t}"),
                    )),
                }
            }
            other => Err(value_error(
                row,
                other,
                format!("expected an integer ({t})"),
            )),
        })
        .collect()
}

fn floats(values: &[&Value], t: &FieldType) -> Result<Vec<Option<f64>>, ValueError> {
    values
        .iter()
        .enumerate()
        .map(|(row, v)| match v {
            Value::Null => Ok(None),
            Value::Number(n) => n
                .as_f64()
                .map(Some)
                .ok_or_else(|| value_error(row, v, format!("not a {t}"))),
            Value::String(s) => match s.as_str() {
                "NaN" => Ok(Some(f64::NAN)),
                "Infinity" => Ok(Some(f64::INFINITY)),
                "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
                _ => Err(value_error(row, v, format!("expected a number ({t})"))),
            },
            other => Err(value_error(row, other, format!("expected a number ({t})"))),
        })
        .collect()
}

/// Whether `text` has nonzero digits beyond `scale` after the point, which
/// `parse_decimal` would silently drop.
fn drops_fraction_digits(text: &str, scale: i8) -> bool {
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let Some((_, fraction)) = mantissa.split_once('.') else {
        return false;
    };
    // An exponent moves the point; be strict and let the re-parse check decide.
    if mantissa.len() != text.len() {
        return false;
    }
    fraction
        .chars()
        .skip(scale.max(0) as usize)
        .any(|c| c != '0')
}

fn decimals(values: &[&Value], precision: u8, scale: i8) -> Result<ArrayRef, ValueError> {
    let t = FieldType::Decimal { precision, scale };
    let texts = values
        .iter()
        .enumerate()
        .map(|(row, v)| match v {
            Value::Null => Ok(None),
            Value::Number(n) => Ok(Some(n.to_string())),
            Value::String(s) => Ok(Some(s.trim().to_string())),
            other => Err(value_error(
                row,
                other,
                format!("expected a decimal number ({t})"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if precision <= arrow_schema::DECIMAL128_MAX_PRECISION {
        let parsed = parse_decimals::<Decimal128Type>(values, &texts, precision, scale)?;
        Ok(Arc::new(
            Decimal128Array::from(parsed)
                .with_precision_and_scale(precision, scale)
                .map_err(|e| value_error(0, &Value::Null, e.to_string()))?,
        ))
    } else {
        let parsed = parse_decimals::<Decimal256Type>(values, &texts, precision, scale)?;
        Ok(Arc::new(
            Decimal256Array::from(parsed)
                .with_precision_and_scale(precision, scale)
                .map_err(|e| value_error(0, &Value::Null, e.to_string()))?,
        ))
    }
}

fn parse_decimals<T: DecimalType>(
    values: &[&Value],
    texts: &[Option<String>],
    precision: u8,
    scale: i8,
) -> Result<Vec<Option<T::Native>>, ValueError> {
    let t = FieldType::Decimal { precision, scale };
    texts
        .iter()
        .enumerate()
        .map(|(row, text)| {
            let Some(text) = text else { return Ok(None) };
            if drops_fraction_digits(text, scale) {
                return Err(value_error(
                    row,
                    values[row],
                    format!("has more than {scale} digits after the point, so it does not fit {t}"),
                ));
            }
            let v = parse_decimal::<T>(text, precision, scale)
                .map_err(|e| value_error(row, values[row], format!("does not fit {t}: {e}")))?;
            // parse_decimal can accept more digits than the precision allows.
            if !T::is_valid_decimal_precision(v, precision) {
                return Err(value_error(
                    row,
                    values[row],
                    format!("too many digits for {t}"),
                ));
            }
            Ok(Some(v))
        })
        .collect()
}

fn utc() -> Option<arrow_array::timezone::Tz> {
    "+00:00".parse().ok()
}

fn timestamps(values: &[&Value], unit: TimeUnit, tz: Option<&str>) -> Result<ArrayRef, ValueError> {
    let zone = utc();
    let epochs = values
        .iter()
        .enumerate()
        .map(|(row, v)| match v {
            Value::Null => Ok(None),
            Value::Number(n) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| value_error(row, v, format!("expected an integer epoch in {unit}"))),
            Value::String(s) => {
                let parsed = zone
                    .as_ref()
                    .and_then(|zone| string_to_datetime(zone, s.trim()).ok())
                    .ok_or_else(|| {
                        value_error(row, v, "expected a timestamp like 2024-01-31T12:00:00Z")
                    })?;
                let epoch = match unit {
                    TimeUnit::Second => Some(parsed.timestamp()),
                    TimeUnit::Millisecond => Some(parsed.timestamp_millis()),
                    TimeUnit::Microsecond => Some(parsed.timestamp_micros()),
                    TimeUnit::Nanosecond => parsed.timestamp_nanos_opt(),
                };
                epoch.map(Some).ok_or_else(|| {
                    value_error(row, v, format!("out of range for timestamp({unit})"))
                })
            }
            other => Err(value_error(
                row,
                other,
                "expected a timestamp like 2024-01-31T12:00:00Z",
            )),
        })
        .collect::<Result<Vec<Option<i64>>, _>>()?;
    let tz: Option<Arc<str>> = tz.map(Arc::from);
    Ok(match unit {
        TimeUnit::Second => Arc::new(TimestampSecondArray::from(epochs).with_timezone_opt(tz)),
        TimeUnit::Millisecond => {
            Arc::new(TimestampMillisecondArray::from(epochs).with_timezone_opt(tz))
        }
        TimeUnit::Microsecond => {
            Arc::new(TimestampMicrosecondArray::from(epochs).with_timezone_opt(tz))
        }
        TimeUnit::Nanosecond => {
            Arc::new(TimestampNanosecondArray::from(epochs).with_timezone_opt(tz))
        }
    })
}

/// The JSON value of every slot of `array` (see the module docs for the shapes).
pub fn array_to_json(array: &dyn Array) -> Result<Vec<Value>, ValueError> {
    let logical = FieldType::from_arrow(array.data_type()).map_err(|e| ValueError {
        row: 0,
        path: String::new(),
        value: String::new(),
        reason: e.to_string(),
    })?;
    let canonical = logical.to_arrow();
    let owned;
    let array: &dyn Array = if array.data_type() == &canonical {
        array
    } else {
        owned = arrow_cast::cast(&arrow_array::make_array(array.to_data()), &canonical).map_err(
            |e| ValueError {
                row: 0,
                path: String::new(),
                value: String::new(),
                reason: format!("cannot read {} as {logical}: {e}", array.data_type()),
            },
        )?;
        owned.as_ref()
    };
    let mut out = Vec::with_capacity(array.len());
    match array.data_type() {
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            let offsets = list.value_offsets();
            let first = offsets.first().copied().unwrap_or(0).max(0) as usize;
            let last = offsets.last().copied().unwrap_or(0).max(0) as usize;
            let values = list.values().slice(first, last.saturating_sub(first));
            let items = array_to_json(values.as_ref())?;
            for row in 0..list.len() {
                if list.is_null(row) {
                    out.push(Value::Null);
                    continue;
                }
                let start = (offsets[row].max(0) as usize).saturating_sub(first);
                let end = (offsets[row + 1].max(0) as usize).saturating_sub(first);
                out.push(Value::Array(
                    items.get(start..end).unwrap_or_default().to_vec(),
                ));
            }
        }
        DataType::Struct(fields) => {
            let st = array.as_struct();
            let columns = st
                .columns()
                .iter()
                .map(|c| array_to_json(c.as_ref()))
                .collect::<Result<Vec<_>, _>>()?;
            for row in 0..st.len() {
                if st.is_null(row) {
                    out.push(Value::Null);
                    continue;
                }
                let mut object = serde_json::Map::new();
                for (field, column) in fields.iter().zip(&columns) {
                    object.insert(
                        field.name().clone(),
                        column.get(row).cloned().unwrap_or(Value::Null),
                    );
                }
                out.push(Value::Object(object));
            }
        }
        _ => {
            for row in 0..array.len() {
                out.push(leaf_to_json(array, row));
            }
        }
    }
    Ok(out)
}

fn float_json(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::from("NaN"),
        None if f > 0.0 => Value::from("Infinity"),
        None => Value::from("-Infinity"),
    }
}

fn leaf_to_json(array: &dyn Array, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => Value::from(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => Value::from(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => Value::from(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(row)),
        DataType::Float32 => {
            // Through the shortest decimal text, so 0.1f32 reads back as 0.1, not 0.10000000149.
            let f = array.as_primitive::<Float32Type>().value(row);
            if f.is_finite() {
                f.to_string()
                    .parse::<f64>()
                    .map(float_json)
                    .unwrap_or_else(|_| float_json(f64::from(f)))
            } else {
                float_json(f64::from(f))
            }
        }
        DataType::Float64 => float_json(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Value::from(array.as_string::<i32>().value(row)),
        DataType::Binary => {
            let bytes = array.as_binary::<i32>().value(row);
            match std::str::from_utf8(bytes) {
                Ok(text) => Value::from(text),
                Err(_) => Value::from(bytes.to_vec()),
            }
        }
        DataType::Timestamp(unit, _) => {
            // Text when the zone is known to Arrow; else the raw epoch, which reads back the same.
            match format_value(array, row) {
                Some(text) => Value::from(text),
                None => Value::from(match unit {
                    arrow_schema::TimeUnit::Second => {
                        array.as_primitive::<TimestampSecondType>().value(row)
                    }
                    arrow_schema::TimeUnit::Millisecond => {
                        array.as_primitive::<TimestampMillisecondType>().value(row)
                    }
                    arrow_schema::TimeUnit::Microsecond => {
                        array.as_primitive::<TimestampMicrosecondType>().value(row)
                    }
                    arrow_schema::TimeUnit::Nanosecond => {
                        array.as_primitive::<TimestampNanosecondType>().value(row)
                    }
                }),
            }
        }
        _ => format_value(array, row)
            .map(Value::from)
            .unwrap_or(Value::Null),
    }
}

/// Arrow's display text of one slot (`None` if Arrow cannot format it).
pub fn format_value(array: &dyn Array, row: usize) -> Option<String> {
    let options = FormatOptions::default().with_null("null");
    let formatter = ArrayFormatter::try_new(array, &options).ok()?;
    let mut text = String::new();
    use std::fmt::Write;
    write!(text, "{}", formatter.value(row)).ok()?;
    Some(truncate(text))
}

/// Display text for error messages; never fails.
pub fn describe_value(array: &dyn Array, row: usize) -> String {
    format_value(array, row).unwrap_or_else(|| format!("<{} value>", array.data_type()))
}

/// A totally ordered key for ordered types (integers, decimals, floats, dates,
/// timestamps) at one slot of a canonical array. Keys of one column compare correctly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum OrderKey {
    Int(i128),
    Big(i256),
    Float(f64),
}

impl OrderKey {
    pub(crate) fn cmp(&self, other: &OrderKey) -> Option<Ordering> {
        match (self, other) {
            (OrderKey::Int(a), OrderKey::Int(b)) => Some(a.cmp(b)),
            (OrderKey::Big(a), OrderKey::Big(b)) => Some(a.cmp(b)),
            (OrderKey::Float(a), OrderKey::Float(b)) => Some(a.total_cmp(b)),
            _ => None,
        }
    }
}

pub(crate) fn order_key(array: &dyn Array, row: usize) -> Option<OrderKey> {
    if array.is_null(row) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Int8 => OrderKey::Int(array.as_primitive::<Int8Type>().value(row).into()),
        DataType::Int16 => OrderKey::Int(array.as_primitive::<Int16Type>().value(row).into()),
        DataType::Int32 => OrderKey::Int(array.as_primitive::<Int32Type>().value(row).into()),
        DataType::Int64 => OrderKey::Int(array.as_primitive::<Int64Type>().value(row).into()),
        DataType::Float32 => OrderKey::Float(array.as_primitive::<Float32Type>().value(row).into()),
        DataType::Float64 => OrderKey::Float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(_, _) => {
            OrderKey::Int(array.as_primitive::<Decimal128Type>().value(row))
        }
        DataType::Decimal256(_, _) => {
            OrderKey::Big(array.as_primitive::<Decimal256Type>().value(row))
        }
        DataType::Date32 => OrderKey::Int(array.as_primitive::<Date32Type>().value(row).into()),
        DataType::Timestamp(arrow_schema::TimeUnit::Second, _) => OrderKey::Int(
            array
                .as_primitive::<TimestampSecondType>()
                .value(row)
                .into(),
        ),
        DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, _) => OrderKey::Int(
            array
                .as_primitive::<TimestampMillisecondType>()
                .value(row)
                .into(),
        ),
        DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, _) => OrderKey::Int(
            array
                .as_primitive::<TimestampMicrosecondType>()
                .value(row)
                .into(),
        ),
        DataType::Timestamp(arrow_schema::TimeUnit::Nanosecond, _) => OrderKey::Int(
            array
                .as_primitive::<TimestampNanosecondType>()
                .value(row)
                .into(),
        ),
        _ => return None,
    })
}

/// Compares two JSON values as values of an ordered type (`min` against `max`).
pub fn compare_json(a: &Value, b: &Value, t: &FieldType) -> Result<Ordering, ValueError> {
    let array = json_to_array(&[a.clone(), b.clone()], t)?;
    match (order_key(array.as_ref(), 0), order_key(array.as_ref(), 1)) {
        (Some(x), Some(y)) => x
            .cmp(&y)
            .ok_or_else(|| value_error(0, a, format!("cannot order {t}"))),
        _ => Err(value_error(0, a, format!("{t} values have no order"))),
    }
}

/// An all-null array of the canonical Arrow type of `t`.
pub fn null_array(t: &FieldType, len: usize) -> ArrayRef {
    new_null_array(&t.to_arrow(), len)
}
