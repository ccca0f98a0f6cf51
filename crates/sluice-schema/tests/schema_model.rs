//! Schema files: parsing, line-accurate errors, checks, stable ids, Arrow mapping.

use serde_json::json;
use sluice_schema::schema::{FIELD_ID_KEY, Field, Schema, SchemaError, assign_ids};
use sluice_schema::types::FieldType;

const ORDERS: &str = r#"dataset: orders
doc: one row per order
fields:
  - {name: order_id, type: int64, nullable: false, doc: primary key}
  - {name: email, type: string, aliases: [mail], pattern: "^[^@]+@[^@]+$"}
  - {name: amount, type: "decimal(12,2)", default: 0, min: 0, max: "99999.99"}
  - {name: status, type: string, allowed: [new, paid, shipped]}
  - {name: legacy, type: int32, deprecated: true}
  - {name: tags, type: "list<string>"}
  - {name: shipped_at, type: "timestamp(us, UTC)"}
"#;

fn orders() -> Schema {
    Schema::from_yaml("orders.yaml", ORDERS).unwrap()
}

#[test]
fn parses_every_documented_key() {
    let s = orders();
    assert_eq!(s.dataset, "orders");
    assert_eq!(s.doc.as_deref(), Some("one row per order"));
    assert_eq!(s.fields.len(), 7);
    let amount = s.field("amount").unwrap();
    assert_eq!(
        amount.field_type,
        FieldType::Decimal {
            precision: 12,
            scale: 2
        }
    );
    assert_eq!(amount.default, Some(json!(0)));
    assert_eq!(amount.min, Some(json!(0)));
    assert!(amount.nullable);
    assert_eq!(s.field("email").unwrap().aliases, vec!["mail"]);
    assert!(s.field("legacy").unwrap().deprecated);
    assert!(!s.field("order_id").unwrap().nullable);
}

#[test]
fn regex_is_an_alias_of_pattern() {
    let s = Schema::from_yaml(
        "x.yaml",
        "dataset: d\nfields:\n  - {name: a, type: string, regex: \"^a\"}\n",
    )
    .unwrap();
    assert_eq!(s.fields[0].pattern.as_deref(), Some("^a"));
}

fn yaml_error(text: &str) -> (usize, usize, String) {
    match Schema::from_yaml("bad.yaml", text) {
        Err(SchemaError::Yaml {
            line,
            column,
            message,
            source_name,
        }) => {
            assert_eq!(source_name, "bad.yaml");
            (line, column, message)
        }
        other => panic!("expected a YAML error, got {other:?}"),
    }
}

#[test]
fn unknown_keys_are_refused_with_line_and_column() {
    let (line, _, message) =
        yaml_error("dataset: d\nfields:\n  - name: a\n    type: int64\n    nulable: false\n");
    assert_eq!(line, 5);
    assert!(message.contains("unknown field `nulable`"), "{message}");
    let (line, _, message) = yaml_error("dataset: d\nowner: me\nfields: []\n");
    assert_eq!(line, 2);
    assert!(message.contains("owner"), "{message}");
}

#[test]
fn bad_types_point_at_their_line() {
    let (line, column, message) = yaml_error(
        "dataset: d\nfields:\n  - {name: a, type: int64}\n  - {name: b, type: \"decimal(10,x)\"}\n",
    );
    assert_eq!(line, 4);
    assert!(column > 1);
    assert!(message.contains("decimal scale"), "{message}");
    assert!(message.contains("Accepted types"), "{message}");
}

#[test]
fn semantic_checks_name_the_field() {
    let bad = [
        (
            "- {name: a, type: int64}\n  - {name: a, type: string}",
            "declared twice",
        ),
        (
            "- {name: a, type: int64, default: abc}",
            "default \"abc\" does not fit type int64",
        ),
        ("- {name: a, type: int8, default: 300}", "out of range"),
        (
            "- {name: a, type: string, min: 1}",
            "`min` applies to numbers",
        ),
        (
            "- {name: a, type: int32, min: 10, max: 1}",
            "greater than max",
        ),
        (
            "- {name: a, type: string, pattern: \"([\"}",
            "does not compile",
        ),
        (
            "- {name: a, type: int32, pattern: \"x\"}",
            "`pattern` applies to strings",
        ),
        (
            "- {name: a, type: int32, allowed: [1, x]}",
            "allowed value \"x\"",
        ),
        (
            "- {name: a, type: int32, allowed: []}",
            "`allowed` is empty",
        ),
        (
            "- {name: a, type: string, aliases: [b]}\n  - {name: b, type: string}",
            "name of another field",
        ),
        ("- {name: a, type: string, aliases: [a]}", "own name"),
        (
            "- {id: 1, name: a, type: string}\n  - {id: 1, name: b, type: string}",
            "id 1 is used by two fields",
        ),
        (
            "- {name: a, type: \"decimal(4,2)\", default: \"1.234\"}",
            "digits after the point",
        ),
        (
            "- {name: a, type: date, default: \"2024-13-01\"}",
            "expected a date",
        ),
    ];
    for (fields, expected) in bad {
        let text = format!("dataset: d\nfields:\n  {fields}\n");
        match Schema::from_yaml("f.yaml", &text) {
            Ok(_) => panic!("accepted: {fields}"),
            Err(e) => {
                let message = e.to_string();
                assert!(message.contains(expected), "{fields}: {message}");
                assert!(message.contains("dataset `d`"), "{message}");
                assert!(message.starts_with("f.yaml"), "{message}");
            }
        }
    }
}

#[test]
fn semantic_errors_point_at_the_field_line() {
    let text = "dataset: d\nfields:\n  - {name: ab, type: int64}\n  - name: a\n    type: int8\n    default: 1000\n";
    let err = Schema::from_yaml("f.yaml", text).unwrap_err();
    match &err {
        SchemaError::InFile { line, .. } => assert_eq!(*line, Some(4)),
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("f.yaml:4: schema of dataset `d`, field `a`"),
        "{err}"
    );
}

#[test]
fn good_defaults_of_every_kind_are_accepted() {
    let text = r#"dataset: d
fields:
  - {name: a, type: bool, default: true}
  - {name: b, type: float32, default: 1.5}
  - {name: c, type: "decimal(5,2)", default: "123.40"}
  - {name: d, type: date, default: "2024-02-29"}
  - {name: e, type: timestamp, default: "2024-02-29T10:00:00Z"}
  - {name: f, type: "list<int32>", default: [1, 2]}
  - {name: g, type: "struct<x: int32, y: string>", default: {x: 1}}
  - {name: h, type: binary, default: "raw"}
"#;
    let s = Schema::from_yaml("d.yaml", text).unwrap();
    assert_eq!(s.fields.len(), 8);
}

fn ids(s: &Schema) -> Vec<(String, u32)> {
    s.fields
        .iter()
        .map(|f| (f.name.clone(), f.id.unwrap_or(0)))
        .collect()
}

#[test]
fn ids_follow_renames_and_never_recycle() {
    let mut last = 0;
    let mut v1 = Schema::new(
        "d",
        vec![
            Field::new("a", FieldType::Int64),
            Field::new("b", FieldType::String),
        ],
    );
    assign_ids(None, &mut v1, &mut last);
    assert_eq!(ids(&v1), vec![("a".into(), 1), ("b".into(), 2)]);

    // b renamed to c (alias), a kept, d new.
    let mut v2 = Schema::new(
        "d",
        vec![
            Field::new("a", FieldType::Int64),
            Field::new("c", FieldType::String).with_aliases(["b"]),
            Field::new("d", FieldType::Bool),
        ],
    );
    assign_ids(Some(&v1), &mut v2, &mut last);
    assert_eq!(
        ids(&v2),
        vec![("a".into(), 1), ("c".into(), 2), ("d".into(), 3)]
    );

    // a dropped.
    let mut v3 = Schema::new(
        "d",
        vec![
            Field::new("c", FieldType::String),
            Field::new("d", FieldType::Bool),
        ],
    );
    assign_ids(Some(&v2), &mut v3, &mut last);
    assert_eq!(ids(&v3), vec![("c".into(), 2), ("d".into(), 3)]);

    // a re-added: a new field with a new id, not id 1.
    let mut v4 = Schema::new(
        "d",
        vec![
            Field::new("a", FieldType::Int64),
            Field::new("c", FieldType::String),
        ],
    );
    assign_ids(Some(&v3), &mut v4, &mut last);
    assert_eq!(ids(&v4), vec![("a".into(), 4), ("c".into(), 2)]);
    assert_eq!(last, 4);
}

#[test]
fn exact_name_wins_over_an_alias_claim() {
    let mut last = 0;
    let mut v1 = Schema::new("d", vec![Field::new("a", FieldType::Int64)]);
    assign_ids(None, &mut v1, &mut last);
    let mut v2 = Schema::new(
        "d",
        vec![
            Field::new("b", FieldType::Int64).with_aliases(["a"]),
            Field::new("a", FieldType::Int64),
        ],
    );
    assign_ids(Some(&v1), &mut v2, &mut last);
    assert_eq!(ids(&v2), vec![("b".into(), 2), ("a".into(), 1)]);
}

#[test]
fn a_stale_counter_cannot_reuse_ids() {
    let v1 = Schema::new("d", vec![Field::new("a", FieldType::Int64).with_id(10)]);
    let mut v2 = Schema::new(
        "d",
        vec![
            Field::new("a", FieldType::Int64),
            Field::new("b", FieldType::Int64),
        ],
    );
    let mut last = 0;
    assign_ids(Some(&v1), &mut v2, &mut last);
    assert_eq!(ids(&v2), vec![("a".into(), 10), ("b".into(), 11)]);
}

#[test]
fn arrow_schema_round_trips_with_metadata() {
    let mut s = orders();
    let mut last = 0;
    assign_ids(None, &mut s, &mut last);
    let arrow = s.to_arrow();
    assert_eq!(
        arrow
            .field(0)
            .metadata()
            .get(FIELD_ID_KEY)
            .map(String::as_str),
        Some("1")
    );
    assert!(!arrow.field(0).is_nullable());
    let back = Schema::from_arrow("ignored", &arrow).unwrap();
    assert_eq!(back, s);
}

#[test]
fn plain_arrow_schemas_and_parquet_ids_are_read() {
    use arrow_schema::{DataType, Field as ArrowField, Schema as ArrowSchema};
    use std::collections::HashMap;
    let arrow = ArrowSchema::new(vec![
        ArrowField::new("a", DataType::LargeUtf8, true).with_metadata(HashMap::from([(
            "PARQUET:field_id".to_string(),
            "7".to_string(),
        )])),
        ArrowField::new("b", DataType::Date64, false),
    ]);
    let s = Schema::from_arrow("events", &arrow).unwrap();
    assert_eq!(s.dataset, "events");
    assert_eq!(s.fields[0].id, Some(7));
    assert_eq!(s.fields[0].field_type, FieldType::String);
    assert_eq!(s.fields[1].field_type, FieldType::Date);
    assert!(!s.fields[1].nullable);

    let bad = ArrowSchema::new(vec![
        ArrowField::new("a", DataType::Int32, true)
            .with_metadata(HashMap::from([(FIELD_ID_KEY.to_string(), "x".to_string())])),
    ]);
    let err = Schema::from_arrow("e", &bad).unwrap_err().to_string();
    assert!(
        err.contains("sluice.field_id") && err.contains("`x`"),
        "{err}"
    );
    let unsupported = ArrowSchema::new(vec![ArrowField::new(
        "t",
        DataType::Time32(arrow_schema::TimeUnit::Second),
        true,
    )]);
    let err = Schema::from_arrow("e", &unsupported)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`t`") && err.contains("time of day"), "{err}");
}

#[test]
fn yaml_round_trips() {
    let s = orders();
    let text = s.to_yaml().unwrap();
    let back = Schema::from_yaml("again.yaml", &text).unwrap();
    assert_eq!(back, s);
}
