//! Record conversion between versions, on Arrow batches and JSON records.

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Int32Array, Int64Array, LargeStringArray, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field as ArrowField, Schema as ArrowSchema};
use serde_json::{Value, json};
use sluice_schema::convert::{
    ConversionError, batch_to_json, convert_batch, convert_json, convert_json_records,
    json_to_batch,
};
use sluice_schema::schema::{Schema, assign_ids};

fn v(fields: &str) -> Schema {
    Schema::from_yaml("case", &format!("dataset: d\nfields: {fields}\n")).unwrap()
}

fn value_error(e: ConversionError) -> (usize, String, String, String) {
    match e {
        ConversionError::Value {
            row,
            field,
            value,
            reason,
        } => (row, field, value, reason),
        other => panic!("expected a value error, got {other}"),
    }
}

#[test]
fn upgrade_fills_defaults_follows_renames_and_widens() {
    let v1 = v(
        "[{name: id, type: int32, nullable: false}, {name: mail, type: string}, {name: price, type: \"decimal(6,2)\"}]",
    );
    let v2 = v(
        "[{name: id, type: int64, nullable: false}, {name: email, type: string, aliases: [mail]}, {name: price, type: \"decimal(10,2)\"}, {name: qty, type: int32, nullable: false, default: 1}, {name: note, type: string}]",
    );
    let records = vec![
        json!({"id": 1, "mail": "a@x", "price": "12.50"}),
        json!({"id": 2, "mail": null, "price": 3}),
    ];
    let out = convert_json_records(&records, &v1, &v2).unwrap();
    assert_eq!(
        out,
        vec![
            json!({"id": 1, "email": "a@x", "price": "12.50", "qty": 1, "note": null}),
            json!({"id": 2, "email": null, "price": "3.00", "qty": 1, "note": null}),
        ]
    );
    // Downgrade back: qty and note dropped, email renamed back to mail, types narrowed.
    let back = convert_json_records(&out, &v2, &v1).unwrap();
    assert_eq!(back[0], json!({"id": 1, "mail": "a@x", "price": "12.50"}));
    assert_eq!(back[1], json!({"id": 2, "mail": null, "price": "3.00"}));
}

#[test]
fn output_batch_carries_field_ids() {
    let mut v1 = v("[{name: a, type: int32}]");
    let mut v2 = v("[{name: b, type: int64, aliases: [a]}]");
    let mut last = 0;
    assign_ids(None, &mut v1, &mut last);
    assign_ids(Some(&v1), &mut v2, &mut last);
    let batch = RecordBatch::try_new(
        Arc::new(ArrowSchema::new(vec![ArrowField::new(
            "a",
            DataType::Int32,
            true,
        )])),
        vec![Arc::new(Int32Array::from(vec![Some(5), None])) as ArrayRef],
    )
    .unwrap();
    let out = convert_batch(&batch, &v1, &v2).unwrap();
    assert_eq!(out.schema().field(0).name(), "b");
    assert_eq!(
        out.schema()
            .field(0)
            .metadata()
            .get("sluice.field_id")
            .map(String::as_str),
        Some("1")
    );
    let col = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(col.value(0), 5);
    assert!(col.is_null(1));
}

#[test]
fn narrowing_out_of_range_names_row_field_value() {
    let v1 = v("[{name: n, type: int64}]");
    let v2 = v("[{name: n, type: int16}]");
    let records = vec![json!({"n": 1}), json!({"n": -32768}), json!({"n": 40000})];
    let (row, field, value, reason) =
        value_error(convert_json_records(&records, &v1, &v2).unwrap_err());
    assert_eq!((row, field.as_str(), value.as_str()), (2, "n", "40000"));
    assert!(reason.contains("does not fit int16"), "{reason}");
}

#[test]
fn rounding_is_data_loss() {
    let cases = [
        ("decimal(10,3)", "decimal(10,2)", json!("1.235"), "1.235"),
        ("float64", "float32", json!(0.1), "0.1"),
        ("float64", "int64", json!(2.5), "2.5"),
        (
            "timestamp",
            "date",
            json!("2024-01-01T10:00:00"),
            "2024-01-01T10:00:00",
        ),
        (
            "int64",
            "float64",
            json!(9007199254740993_i64),
            "9007199254740993",
        ),
    ];
    for (from, to, value, shown) in cases {
        let v1 = v(&format!("[{{name: x, type: \"{from}\"}}]"));
        let v2 = v(&format!("[{{name: x, type: \"{to}\"}}]"));
        let err = convert_json(&json!({ "x": value }), &v1, &v2).unwrap_err();
        let (row, field, got, reason) = value_error(err);
        assert_eq!((row, field.as_str()), (0, "x"), "{from} -> {to}");
        assert_eq!(got, shown, "{from} -> {to}");
        assert!(
            reason.contains("would change it") || reason.contains("does not fit"),
            "{from} -> {to}: {reason}"
        );
    }
    // The same values that fit exactly go through.
    let ok = [
        (
            "decimal(10,3)",
            "decimal(10,2)",
            json!("1.230"),
            json!("1.23"),
        ),
        ("float64", "float32", json!(0.5), json!(0.5)),
        ("float64", "int64", json!(3.0), json!(3)),
        (
            "timestamp",
            "date",
            json!("2024-01-01T00:00:00"),
            json!("2024-01-01"),
        ),
        (
            "date",
            "timestamp",
            json!("2024-01-01"),
            json!("2024-01-01T00:00:00"),
        ),
        ("string", "binary", json!("héllo"), json!("héllo")),
    ];
    for (from, to, value, expected) in ok {
        let v1 = v(&format!("[{{name: x, type: \"{from}\"}}]"));
        let v2 = v(&format!("[{{name: x, type: \"{to}\"}}]"));
        let out = convert_json(&json!({ "x": value }), &v1, &v2).unwrap();
        assert_eq!(out["x"], expected, "{from} -> {to}");
    }
}

#[test]
fn required_field_without_value_fails() {
    let v1 = v("[{name: a, type: int32}]");
    let v2 = v("[{name: a, type: int32}, {name: b, type: string, nullable: false}]");
    let (row, field, value, reason) =
        value_error(convert_json(&json!({"a": 1}), &v1, &v2).unwrap_err());
    assert_eq!((row, field.as_str(), value.as_str()), (0, "b", "missing"));
    assert!(reason.contains("no default"), "{reason}");

    let v3 = v("[{name: a, type: int32, nullable: false}]");
    let records = vec![json!({"a": 1}), json!({"a": null})];
    let (row, field, value, _) = value_error(convert_json_records(&records, &v1, &v3).unwrap_err());
    assert_eq!((row, field.as_str(), value.as_str()), (1, "a", "null"));

    // No rows, nothing to lose.
    let out = convert_json_records(&[], &v1, &v2).unwrap();
    assert!(out.is_empty());
}

#[test]
fn nested_structs_and_lists_convert_member_by_member() {
    let v1 = v(
        "[{name: s, type: \"struct<a: int32, gone: string>\"}, {name: l, type: \"list<struct<x: int16>>\"}]",
    );
    let v2 = v(
        "[{name: s, type: \"struct<a: int64, new: string>\"}, {name: l, type: \"list<struct<x: int64, y: bool>>\"}]",
    );
    let record = json!({"s": {"a": 7, "gone": "bye"}, "l": [{"x": 1}, {"x": 2}]});
    let out = convert_json(&record, &v1, &v2).unwrap();
    assert_eq!(
        out,
        json!({"s": {"a": 7, "new": null}, "l": [{"x": 1, "y": null}, {"x": 2, "y": null}]})
    );

    // An element that does not fit is reported at its list's row.
    let v3 = v("[{name: l, type: \"list<int64>\"}]");
    let v4 = v("[{name: l, type: \"list<int8>\"}]");
    let records = vec![
        json!({"l": [1, 2]}),
        json!({"l": []}),
        json!({"l": [3, 300]}),
    ];
    let (row, field, value, _) = value_error(convert_json_records(&records, &v3, &v4).unwrap_err());
    assert_eq!((row, field.as_str(), value.as_str()), (2, "l[]", "300"));

    // A required member the source lacks.
    let v5 = v("[{name: s, type: \"struct<a: int32>\"}]");
    let v6 = v("[{name: s, type: \"struct<a: int32, b: int32 not null>\"}]");
    let records = vec![json!({"s": null}), json!({"s": {"a": 1}})];
    let (row, field, _, _) = value_error(convert_json_records(&records, &v5, &v6).unwrap_err());
    assert_eq!((row, field.as_str()), (1, "s.b"));
}

#[test]
fn physical_variants_and_sliced_batches_are_handled() {
    let v1 = v("[{name: s, type: string}]");
    let batch = RecordBatch::try_new(
        Arc::new(ArrowSchema::new(vec![ArrowField::new(
            "s",
            DataType::LargeUtf8,
            true,
        )])),
        vec![Arc::new(LargeStringArray::from(vec!["a", "b", "c"])) as ArrayRef],
    )
    .unwrap();
    let out = convert_batch(&batch.slice(1, 2), &v1, &v1).unwrap();
    assert_eq!(out.column(0).data_type(), &DataType::Utf8);
    let col = out
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!((col.value(0), col.value(1)), ("b", "c"));
    assert_eq!(
        batch_to_json(&out).unwrap(),
        vec![json!({"s": "b"}), json!({"s": "c"})]
    );
}

#[test]
fn missing_required_source_column_is_an_input_error() {
    let v1 = v("[{name: a, type: int32, nullable: false}]");
    let batch = RecordBatch::try_new_with_options(
        Arc::new(ArrowSchema::empty()),
        vec![],
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(2)),
    )
    .unwrap();
    let err = convert_batch(&batch, &v1, &v1).unwrap_err();
    assert!(matches!(err, ConversionError::Input { .. }), "{err}");
    assert!(err.to_string().contains("no column `a`"), "{err}");
}

#[test]
fn json_values_that_do_not_fit_are_reported() {
    let s = v(
        "[{name: a, type: int32}, {name: t, type: timestamp}, {name: d, type: \"decimal(5,2)\"}]",
    );
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"a": "12"}), "a", "expected an integer"),
        (json!({"a": 1.5}), "a", "not a whole number"),
        (json!({"t": "yesterday"}), "t", "expected a timestamp"),
        (json!({"d": "1234.5"}), "d", "does not fit decimal(5,2)"),
        (json!({"d": "1.999"}), "d", "digits after the point"),
    ];
    for (record, field, reason) in cases {
        let err = json_to_batch(std::slice::from_ref(&record), &s).unwrap_err();
        let (_, f, _, r) = value_error(err);
        assert_eq!(f, field, "{record}");
        assert!(r.contains(reason), "{record}: {r}");
    }
    let err = convert_json_records(&[json!([1])], &s, &s)
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be a JSON object"), "{err}");
}
