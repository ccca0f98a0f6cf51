//! Validation of Arrow batches against a schema: columns, types, nullability and the
//! declared constraints (`min`, `max`, `pattern`, `allowed`).
//!
//! Every problem is reported, each naming row, field, value and rule, so a quarantine can
//! keep exactly the failing rows with their reasons.

use std::collections::HashSet;
use std::fmt;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use serde::{Deserialize, Serialize};

use crate::schema::{Field, Schema};
use crate::types::FieldType;
use crate::value::{self, describe_value, format_value, order_key};

/// The rule a [`ValidationError`] broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationRule {
    MissingColumn,
    UnknownColumn,
    Type,
    NotNull,
    Min,
    Max,
    Pattern,
    Allowed,
}

impl ValidationRule {
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationRule::MissingColumn => "missing_column",
            ValidationRule::UnknownColumn => "unknown_column",
            ValidationRule::Type => "type",
            ValidationRule::NotNull => "not_null",
            ValidationRule::Min => "min",
            ValidationRule::Max => "max",
            ValidationRule::Pattern => "pattern",
            ValidationRule::Allowed => "allowed",
        }
    }
}

impl fmt::Display for ValidationRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed check. `row` and `value` are absent for column-level problems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<usize>,
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub rule: ValidationRule,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(row) = self.row {
            write!(f, "row {row}, ")?;
        }
        write!(f, "field `{}`", self.field)?;
        if let Some(value) = &self.value {
            write!(f, ", value {value}")?;
        }
        write!(f, ": {} ({})", self.message, self.rule)
    }
}

/// Validates every row of `batch` against `schema`. Columns are matched by name.
pub fn validate_batch(batch: &RecordBatch, schema: &Schema) -> Vec<ValidationError> {
    validate_batch_limited(batch, schema, usize::MAX)
}

/// Like [`validate_batch`], stopping after `limit` errors so a wholly bad batch does not
/// build millions of messages.
pub fn validate_batch_limited(
    batch: &RecordBatch,
    schema: &Schema,
    limit: usize,
) -> Vec<ValidationError> {
    let mut report = Report {
        errors: Vec::new(),
        limit,
    };
    let arrow_schema = batch.schema();
    for arrow_field in arrow_schema.fields() {
        if schema.field(arrow_field.name()).is_none() {
            report.push(ValidationError {
                row: None,
                field: arrow_field.name().clone(),
                value: None,
                rule: ValidationRule::UnknownColumn,
                message: format!("the schema of `{}` has no such field", schema.dataset),
            });
        }
    }
    for field in &schema.fields {
        if report.full() {
            break;
        }
        match batch.column_by_name(&field.name) {
            None => report.push(ValidationError {
                row: None,
                field: field.name.clone(),
                value: None,
                rule: ValidationRule::MissingColumn,
                message: "the batch has no such column".into(),
            }),
            Some(column) => validate_column(column, field, &mut report),
        }
    }
    report.errors
}

struct Report {
    errors: Vec<ValidationError>,
    limit: usize,
}

impl Report {
    fn full(&self) -> bool {
        self.errors.len() >= self.limit
    }

    fn push(&mut self, error: ValidationError) {
        if !self.full() {
            self.errors.push(error);
        }
    }

    fn row(
        &mut self,
        row: usize,
        field: &str,
        value: String,
        rule: ValidationRule,
        message: String,
    ) {
        self.push(ValidationError {
            row: Some(row),
            field: field.to_string(),
            value: Some(value),
            rule,
            message,
        });
    }
}

/// Same logical type, ignoring struct member nullability (checked on the data instead,
/// since engines often mark every member nullable).
fn same_shape(a: &FieldType, b: &FieldType) -> bool {
    match (a, b) {
        (FieldType::List(x), FieldType::List(y)) => same_shape(x, y),
        (FieldType::Struct(x), FieldType::Struct(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(m, n)| m.name == n.name && same_shape(&m.field_type, &n.field_type))
        }
        _ => a == b,
    }
}

fn validate_column(column: &ArrayRef, field: &Field, report: &mut Report) {
    let name = field.name.as_str();
    let actual = match FieldType::from_arrow(column.data_type()) {
        Ok(t) => t,
        Err(e) => {
            report.push(ValidationError {
                row: None,
                field: name.to_string(),
                value: None,
                rule: ValidationRule::Type,
                message: e.to_string(),
            });
            return;
        }
    };
    if !same_shape(&actual, &field.field_type) {
        report.push(ValidationError {
            row: None,
            field: name.to_string(),
            value: None,
            rule: ValidationRule::Type,
            message: format!("expected {} but the column is {actual}", field.field_type),
        });
        return;
    }
    // Constraints are checked on the canonical physical type, so LargeUtf8 and
    // dictionary columns validate like plain ones.
    // The actual type's canonical form keeps the column's own member nullability, which
    // is checked on the data below rather than by the cast.
    let canonical_type = actual.to_arrow();
    let canonical = if column.data_type() == &canonical_type {
        column.clone()
    } else {
        match arrow_cast::cast(column, &canonical_type) {
            Ok(c) => c,
            Err(e) => {
                report.push(ValidationError {
                    row: None,
                    field: name.to_string(),
                    value: None,
                    rule: ValidationRule::Type,
                    message: format!("cannot read {} as {actual}: {e}", column.data_type()),
                });
                return;
            }
        }
    };
    if !field.nullable {
        for row in 0..canonical.len() {
            if canonical.is_null(row) {
                if report.full() {
                    return;
                }
                report.row(
                    row,
                    name,
                    "null".into(),
                    ValidationRule::NotNull,
                    "a value is required".into(),
                );
            }
        }
    }
    nested_nulls(&canonical, &field.field_type, name, None, report);
    for (bound, rule) in [
        (&field.min, ValidationRule::Min),
        (&field.max, ValidationRule::Max),
    ] {
        if let Some(bound) = bound {
            check_bound(&canonical, field, bound, rule, report);
        }
    }
    if let Some(pattern) = &field.pattern {
        check_pattern(&canonical, name, pattern, report);
    }
    if let Some(allowed) = &field.allowed {
        check_allowed(&canonical, field, allowed, report);
    }
}

/// Required struct members must have a value wherever their struct does. `rows` maps
/// element positions of list values back to top-level rows.
fn nested_nulls(
    array: &ArrayRef,
    t: &FieldType,
    path: &str,
    rows: Option<&[usize]>,
    report: &mut Report,
) {
    let top_row = |i: usize| rows.and_then(|r| r.get(i).copied()).unwrap_or(i);
    match t {
        FieldType::Struct(members) => {
            let Some(st) = array.as_struct_opt() else {
                return;
            };
            for member in members {
                let Some(child) = st.column_by_name(&member.name) else {
                    continue;
                };
                let member_path = format!("{path}.{}", member.name);
                if !member.nullable {
                    for i in 0..st.len() {
                        if st.is_valid(i) && child.is_null(i) {
                            if report.full() {
                                return;
                            }
                            report.row(
                                top_row(i),
                                &member_path,
                                "null".into(),
                                ValidationRule::NotNull,
                                "a value is required".into(),
                            );
                        }
                    }
                }
                nested_nulls(child, &member.field_type, &member_path, rows, report);
            }
        }
        FieldType::List(element) => {
            if !matches!(element.as_ref(), FieldType::Struct(_) | FieldType::List(_)) {
                return;
            }
            let Some(list) = array.as_list_opt::<i32>() else {
                return;
            };
            let offsets = list.value_offsets();
            let mut owners = vec![0usize; list.values().len()];
            for i in 0..list.len() {
                let (Ok(s), Ok(e)) = (usize::try_from(offsets[i]), usize::try_from(offsets[i + 1]))
                else {
                    continue;
                };
                for owner in owners.iter_mut().take(e).skip(s) {
                    *owner = top_row(i);
                }
            }
            nested_nulls(
                list.values(),
                element,
                &format!("{path}[]"),
                Some(&owners),
                report,
            );
        }
        _ => {}
    }
}

fn check_bound(
    column: &ArrayRef,
    field: &Field,
    bound: &serde_json::Value,
    rule: ValidationRule,
    report: &mut Report,
) {
    let name = field.name.as_str();
    let key = value::json_to_array(std::slice::from_ref(bound), &field.field_type)
        .ok()
        .and_then(|a| order_key(a.as_ref(), 0));
    let Some(key) = key else {
        report.push(ValidationError {
            row: None,
            field: name.to_string(),
            value: None,
            rule,
            message: format!(
                "{rule} {bound} cannot be compared with {} values",
                field.field_type
            ),
        });
        return;
    };
    let wanted = match rule {
        ValidationRule::Min => std::cmp::Ordering::Less,
        _ => std::cmp::Ordering::Greater,
    };
    for row in 0..column.len() {
        let Some(v) = order_key(column.as_ref(), row) else {
            continue;
        };
        if v.cmp(&key) == Some(wanted) {
            if report.full() {
                return;
            }
            let relation = if rule == ValidationRule::Min {
                "below the minimum"
            } else {
                "above the maximum"
            };
            report.row(
                row,
                name,
                describe_value(column.as_ref(), row),
                rule,
                format!("{relation} {bound}"),
            );
        }
    }
}

fn check_pattern(column: &ArrayRef, name: &str, pattern: &str, report: &mut Report) {
    let regex = match regex::Regex::new(pattern) {
        Ok(r) => r,
        Err(e) => {
            report.push(ValidationError {
                row: None,
                field: name.to_string(),
                value: None,
                rule: ValidationRule::Pattern,
                message: format!("pattern does not compile: {e}"),
            });
            return;
        }
    };
    let Some(strings) = column.as_string_opt::<i32>() else {
        return;
    };
    for (row, text) in strings.iter().enumerate() {
        if let Some(text) = text
            && !regex.is_match(text)
        {
            if report.full() {
                return;
            }
            report.row(
                row,
                name,
                describe_value(column.as_ref(), row),
                ValidationRule::Pattern,
                format!("does not match /{pattern}/"),
            );
        }
    }
}

fn check_allowed(
    column: &ArrayRef,
    field: &Field,
    allowed: &[serde_json::Value],
    report: &mut Report,
) {
    let name = field.name.as_str();
    // Formatting both sides through Arrow compares values of one type exactly.
    let allowed_set: HashSet<String> = match value::json_to_array(allowed, &field.field_type) {
        Ok(a) => (0..a.len())
            .filter_map(|i| format_value(a.as_ref(), i))
            .collect(),
        Err(e) => {
            report.push(ValidationError {
                row: None,
                field: name.to_string(),
                value: None,
                rule: ValidationRule::Allowed,
                message: format!("allowed values do not fit {}: {e}", field.field_type),
            });
            return;
        }
    };
    for row in 0..column.len() {
        if column.is_null(row) {
            continue;
        }
        let Some(text) = format_value(column.as_ref(), row) else {
            continue;
        };
        if !allowed_set.contains(&text) {
            if report.full() {
                return;
            }
            report.row(
                row,
                name,
                text,
                ValidationRule::Allowed,
                format!(
                    "not one of {}",
                    value::short_json(&serde_json::Value::from(allowed.to_vec()))
                ),
            );
        }
    }
}
