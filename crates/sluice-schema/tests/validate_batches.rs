//! Batch validation: types, nullability and constraints, each error naming row, field,
//! value and rule.

use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field as ArrowField, Schema as ArrowSchema};
use serde_json::json;
use sluice_schema::convert::json_to_batch;
use sluice_schema::schema::Schema;
use sluice_schema::validate::{ValidationRule, validate_batch, validate_batch_limited};

fn v(fields: &str) -> Schema {
    Schema::from_yaml("case", &format!("dataset: d\nfields: {fields}\n")).unwrap()
}

/// (row, field, value, rule) of each error.
fn errors(
    batch: &RecordBatch,
    schema: &Schema,
) -> Vec<(Option<usize>, String, Option<String>, ValidationRule)> {
    validate_batch(batch, schema)
        .into_iter()
        .map(|e| (e.row, e.field, e.value, e.rule))
        .collect()
}

#[test]
fn constraints_are_checked_row_by_row() {
    // Build with a lax schema, validate against the strict one.
    let lax = v(
        "[{name: amount, type: \"decimal(8,2)\"}, {name: email, type: string}, {name: status, type: string}, {name: day, type: date}]",
    );
    let strict = v(
        r#"[{name: amount, type: "decimal(8,2)", nullable: false, min: 0, max: "1000.00"},
        {name: email, type: string, pattern: "^[^@]+@[^@]+$"},
        {name: status, type: string, allowed: [new, paid]},
        {name: day, type: date, min: "2024-01-01"}]"#,
    );
    let batch = json_to_batch(
        &[
            json!({"amount": "10.00", "email": "a@x", "status": "new", "day": "2024-05-01"}),
            json!({"amount": "-0.01", "email": "nope", "status": "lost", "day": "2023-12-31"}),
            json!({"amount": null, "email": null, "status": null, "day": null}),
            json!({"amount": "1000.01", "email": "b@y", "status": "paid", "day": "2024-01-01"}),
        ],
        &lax,
    )
    .unwrap();
    let got = errors(&batch, &strict);
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        got,
        vec![
            (Some(2), "amount".into(), s("null"), ValidationRule::NotNull),
            (Some(1), "amount".into(), s("-0.01"), ValidationRule::Min),
            (Some(3), "amount".into(), s("1000.01"), ValidationRule::Max),
            (Some(1), "email".into(), s("nope"), ValidationRule::Pattern),
            (Some(1), "status".into(), s("lost"), ValidationRule::Allowed),
            (Some(1), "day".into(), s("2023-12-31"), ValidationRule::Min),
        ]
    );
    let first = &validate_batch(&batch, &strict)[1];
    assert_eq!(
        first.to_string(),
        "row 1, field `amount`, value -0.01: below the minimum 0 (min)"
    );
    assert!(validate_batch(&batch.slice(0, 1), &strict).is_empty());
}

#[test]
fn column_level_problems() {
    let schema = v("[{name: a, type: int32}, {name: b, type: string}]");
    let batch = RecordBatch::try_new(
        Arc::new(ArrowSchema::new(vec![
            ArrowField::new("a", DataType::Int64, true),
            ArrowField::new("extra", DataType::Int64, true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
            Arc::new(Int64Array::from(vec![2])) as ArrayRef,
        ],
    )
    .unwrap();
    let got = errors(&batch, &schema);
    assert_eq!(
        got,
        vec![
            (None, "extra".into(), None, ValidationRule::UnknownColumn),
            (None, "a".into(), None, ValidationRule::Type),
            (None, "b".into(), None, ValidationRule::MissingColumn),
        ]
    );
    let message = &validate_batch(&batch, &schema)[1].message;
    assert!(
        message.contains("expected int32 but the column is int64"),
        "{message}"
    );
}

#[test]
fn required_struct_members_are_checked_in_lists() {
    let lax = v("[{name: items, type: \"list<struct<sku: string, qty: int32>>\"}]");
    let strict = v("[{name: items, type: \"list<struct<sku: string not null, qty: int32>>\"}]");
    let batch = json_to_batch(
        &[
            json!({"items": [{"sku": "a", "qty": 1}]}),
            json!({"items": null}),
            json!({"items": [{"sku": "b"}, {"qty": 2}]}),
        ],
        &lax,
    )
    .unwrap();
    let got = errors(&batch, &strict);
    assert_eq!(
        got,
        vec![(
            Some(2),
            "items[].sku".into(),
            Some("null".into()),
            ValidationRule::NotNull
        )]
    );
}

#[test]
fn limit_stops_early() {
    let schema = v("[{name: n, type: int64, max: 0}]");
    let batch = json_to_batch(
        &(1..=100).map(|i| json!({ "n": i })).collect::<Vec<_>>(),
        &schema,
    )
    .unwrap();
    assert_eq!(validate_batch(&batch, &schema).len(), 100);
    assert_eq!(validate_batch_limited(&batch, &schema, 5).len(), 5);
}
