//! Property tests for conversion: safe change sequences round-trip exactly, and nothing
//! panics on arbitrary schemas and values.

mod common;

use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_schema::compat::{CompatibilityMode, check_compatibility};
use sluice_schema::convert::{batch_to_json, convert_batch, convert_json_records, json_to_batch};
use sluice_schema::diff::{Severity, diff, max_severity};
use sluice_schema::plan::plan;
use sluice_schema::schema::{Field, Schema, assign_ids};
use sluice_schema::types::{FieldType, StructField, TimeUnit};
use sluice_schema::validate::validate_batch;

/// Leaf types whose values the round trip can carry exactly (time zones kept to UTC).
fn base_leaf() -> impl Strategy<Value = FieldType> {
    prop_oneof![
        Just(FieldType::Bool),
        Just(FieldType::Int8),
        Just(FieldType::Int16),
        Just(FieldType::Int32),
        Just(FieldType::Int64),
        Just(FieldType::Float32),
        Just(FieldType::Float64),
        (1u8..=18)
            .prop_flat_map(|p| (Just(p), 0..=p as i8))
            .prop_map(|(precision, scale)| FieldType::Decimal { precision, scale }),
        Just(FieldType::String),
        Just(FieldType::Binary),
        Just(FieldType::Date),
        (
            common::time_unit(),
            prop::option::of(Just("UTC".to_string()))
        )
            .prop_map(|(unit, tz)| FieldType::Timestamp { unit, tz }),
    ]
}

fn base_type() -> impl Strategy<Value = FieldType> {
    prop_oneof![
        4 => base_leaf(),
        1 => base_leaf().prop_map(FieldType::list),
        1 => (base_leaf(), any::<bool>(), base_leaf(), any::<bool>()).prop_map(|(a, an, b, bn)| {
            FieldType::Struct(vec![StructField::new("a", a, an), StructField::new("b", b, bn)])
        }),
    ]
}

/// The one widening step each type has here (None if it has none worth testing).
fn widen(t: &FieldType) -> Option<FieldType> {
    Some(match t {
        FieldType::Int8 => FieldType::Int16,
        FieldType::Int16 => FieldType::Int32,
        FieldType::Int32 => FieldType::Int64,
        FieldType::Int64 => FieldType::Float64,
        FieldType::Float32 => FieldType::Float64,
        FieldType::Decimal { precision, scale } if *precision < 76 => FieldType::Decimal {
            precision: precision + 1,
            scale: *scale,
        },
        FieldType::Date => FieldType::Timestamp {
            unit: TimeUnit::Microsecond,
            tz: None,
        },
        FieldType::String => FieldType::Binary,
        FieldType::List(element) => FieldType::list(widen(element)?),
        FieldType::Struct(members) => {
            let mut members = members.clone();
            let first = members.first_mut()?;
            first.field_type = widen(&first.field_type)?;
            FieldType::Struct(members)
        }
        _ => return None,
    })
}

#[derive(Debug, Clone)]
enum SafeChange {
    AddNullable(FieldType),
    AddDefaulted(i64, bool),
    Rename(usize),
    Widen(usize),
    MakeNullable(usize),
    Deprecate(usize),
}

fn safe_change() -> impl Strategy<Value = SafeChange> {
    prop_oneof![
        1 => base_type().prop_map(SafeChange::AddNullable),
        // Defaults within 2^53 so a later widening to float64 stays exact.
        1 => (-(1i64 << 53)..(1i64 << 53), any::<bool>()).prop_map(|(d, n)| SafeChange::AddDefaulted(d, n)),
        1 => any::<usize>().prop_map(SafeChange::Rename),
        2 => any::<usize>().prop_map(SafeChange::Widen),
        1 => any::<usize>().prop_map(SafeChange::MakeNullable),
        1 => any::<usize>().prop_map(SafeChange::Deprecate),
    ]
}

/// Applies one change to a copy of `schema`; `step` keeps new names unique.
fn apply(schema: &Schema, change: &SafeChange, step: usize) -> Schema {
    let mut next = schema.clone();
    let n = next.fields.len();
    match change {
        SafeChange::AddNullable(t) => next.fields.push(Field::new(format!("n{step}"), t.clone())),
        SafeChange::AddDefaulted(d, nullable) => {
            let mut f = Field::new(format!("d{step}"), FieldType::Int64).with_default(json!(d));
            f.nullable = *nullable;
            next.fields.push(f);
        }
        SafeChange::Rename(i) => {
            let f = &mut next.fields[i % n];
            let old = std::mem::replace(&mut f.name, format!("r{step}"));
            f.aliases.push(old);
        }
        SafeChange::Widen(i) => {
            let f = &mut next.fields[i % n];
            if let Some(t) = widen(&f.field_type) {
                f.field_type = t;
            }
        }
        SafeChange::MakeNullable(i) => next.fields[i % n].nullable = true,
        SafeChange::Deprecate(i) => next.fields[i % n].deprecated = true,
    }
    next
}

/// A first version with 1..5 fields, and 1..8 records that fit it.
fn base_schema_and_records() -> impl Strategy<Value = (Schema, Vec<Value>)> {
    prop::collection::vec((base_type(), any::<bool>()), 1..5)
        .prop_map(|fields| {
            Schema::new(
                "d",
                fields
                    .into_iter()
                    .enumerate()
                    .map(|(i, (t, nullable))| {
                        let mut f = Field::new(format!("f{i}"), t);
                        f.nullable = nullable;
                        f
                    })
                    .collect(),
            )
        })
        .prop_flat_map(|schema| {
            let row: Vec<BoxedStrategy<(String, Value)>> = schema
                .fields
                .iter()
                .map(|f| {
                    let name = f.name.clone();
                    common::nullable_value_for(&f.field_type, f.nullable)
                        .prop_map(move |v| (name.clone(), v))
                        .boxed()
                })
                .collect();
            let rows = prop::collection::vec(
                row.prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
                1..8,
            );
            (Just(schema), rows)
        })
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn upgrade_then_downgrade_returns_the_original(
        (base, records) in base_schema_and_records(),
        changes in prop::collection::vec(safe_change(), 1..5),
    ) {
        let mut last_id = 0;
        let mut versions = vec![base];
        assign_ids(None, &mut versions[0], &mut last_id);
        for (step, change) in changes.iter().enumerate() {
            let prev = versions[versions.len() - 1].clone();
            let mut next = apply(&prev, change, step);
            assign_ids(Some(&prev), &mut next, &mut last_id);
            versions.push(next);
        }
        let first = &versions[0];
        let last = &versions[versions.len() - 1];

        // Safe changes are what the registry would accept and classify as at most warnings.
        let violations = check_compatibility(CompatibilityMode::BackwardTransitive, last, &versions[..versions.len() - 1]);
        prop_assert!(violations.is_empty(), "{:?}", violations);
        for pair in versions.windows(2) {
            prop_assert!(max_severity(&diff(&pair[0], &pair[1])) <= Severity::Warning);
        }

        let batch = json_to_batch(&records, first).map_err(fail)?;
        let up = convert_batch(&batch, first, last).map_err(fail)?;
        prop_assert_eq!(up.num_rows(), batch.num_rows());
        let down = convert_batch(&up, last, first).map_err(fail)?;
        prop_assert_eq!(&down, &batch);

        // One version at a time gives the same result as one jump.
        let mut stepwise = batch.clone();
        for pair in versions.windows(2) {
            stepwise = convert_batch(&stepwise, &pair[0], &pair[1]).map_err(fail)?;
        }
        prop_assert_eq!(&stepwise, &up);

        // JSON records take the same path and come back the same.
        let json_up = convert_json_records(&records, first, last).map_err(fail)?;
        let json_down = convert_json_records(&json_up, last, first).map_err(fail)?;
        prop_assert_eq!(json_down, batch_to_json(&batch).map_err(fail)?);
    }

    #[test]
    fn json_batch_json_is_stable((schema, records) in base_schema_and_records()) {
        let batch = json_to_batch(&records, &schema).map_err(fail)?;
        let once = batch_to_json(&batch).map_err(fail)?;
        let again = json_to_batch(&once, &schema).map_err(fail)?;
        prop_assert_eq!(&again, &batch);
        prop_assert!(validate_batch(&batch, &schema).is_empty());
    }
}

fn arbitrary_schema() -> impl Strategy<Value = Schema> {
    let field = (
        prop::sample::select(vec!["a", "b", "c", "d"]),
        common::field_type(),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["a", "b", "c", "d", "e"])),
    );
    prop::collection::vec(field, 0..5).prop_map(|fields| {
        let mut out: Vec<Field> = Vec::new();
        for (name, t, nullable, alias) in fields {
            if out.iter().any(|f| f.name == name) {
                continue;
            }
            let mut f = Field::new(name, t);
            f.nullable = nullable;
            if let Some(alias) = alias.filter(|a| *a != name) {
                f.aliases.push(alias.to_string());
            }
            out.push(f);
        }
        Schema::new("d", out)
    })
}

fn schema_and_values() -> impl Strategy<Value = (Schema, Vec<Value>)> {
    arbitrary_schema().prop_flat_map(|schema| {
        let row: Vec<BoxedStrategy<(String, Value)>> = schema
            .fields
            .iter()
            .map(|f| {
                let name = f.name.clone();
                prop_oneof![
                    3 => common::nullable_value_for(&f.field_type, true),
                    1 => common::any_json(),
                ]
                .prop_map(move |v| (name.clone(), v))
                .boxed()
            })
            .collect();
        let rows = prop::collection::vec(
            row.prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
            0..5,
        );
        (Just(schema), rows)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn conversion_never_panics((from, records) in schema_and_values(), to in arbitrary_schema()) {
        if let Ok(batch) = json_to_batch(&records, &from) {
            prop_assert!(validate_batch(&batch, &from).iter().all(|e| e.rule != sluice_schema::validate::ValidationRule::Type));
            let _ = validate_batch(&batch, &to);
            match convert_batch(&batch, &from, &to) {
                Ok(out) => {
                    prop_assert_eq!(out.num_rows(), batch.num_rows());
                    let out_schema = out.schema();
                    prop_assert_eq!(out_schema.as_ref(), &to.to_arrow());
                    let _ = batch_to_json(&out);
                }
                Err(e) => {
                    // Every error names a field and reads as a sentence.
                    prop_assert!(!e.to_string().is_empty());
                }
            }
            let _ = convert_batch(&batch, &to, &from);
        }
        let _ = convert_json_records(&records, &from, &to);
        for mode in CompatibilityMode::ALL {
            let _ = check_compatibility(mode, &to, std::slice::from_ref(&from));
        }
        let _ = diff(&from, &to);
        let p = plan("x.y", &from, 1, &to, 2);
        let _ = p.to_json();
        let _ = p.render_text(sluice_schema::plan::Dialect::Postgres);
    }
}
