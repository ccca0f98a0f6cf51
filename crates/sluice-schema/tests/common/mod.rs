//! Strategies shared by the property tests.
#![allow(dead_code)]

use proptest::prelude::*;
use sluice_schema::types::{FieldType, StructField, TimeUnit};

pub fn time_unit() -> impl Strategy<Value = TimeUnit> {
    prop_oneof![
        Just(TimeUnit::Second),
        Just(TimeUnit::Millisecond),
        Just(TimeUnit::Microsecond),
        Just(TimeUnit::Nanosecond),
    ]
}

pub fn leaf_type() -> impl Strategy<Value = FieldType> {
    prop_oneof![
        Just(FieldType::Bool),
        Just(FieldType::Int8),
        Just(FieldType::Int16),
        Just(FieldType::Int32),
        Just(FieldType::Int64),
        Just(FieldType::Float32),
        Just(FieldType::Float64),
        (1u8..=76)
            .prop_flat_map(|p| (Just(p), 0..=p as i8))
            .prop_map(|(precision, scale)| FieldType::Decimal { precision, scale }),
        Just(FieldType::String),
        Just(FieldType::Binary),
        Just(FieldType::Date),
        (
            time_unit(),
            prop::option::of(prop_oneof![
                Just("UTC".to_string()),
                Just("+02:00".to_string()),
                Just("America/New_York".to_string()),
                "[ -~]{1,12}",
            ])
        )
            .prop_map(|(unit, tz)| FieldType::Timestamp { unit, tz }),
    ]
}

/// Member names: plain identifiers, and names that need quoting (spaces, backticks, unicode).
pub fn member_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z_][a-z0-9_]{0,8}",
        1 => "[ -~]{1,8}",
        1 => "\\PC{1,6}",
    ]
}

pub fn field_type() -> impl Strategy<Value = FieldType> {
    leaf_type().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(FieldType::list),
            prop::collection::vec((member_name(), inner, any::<bool>()), 0..4).prop_map(
                |members| {
                    let mut fields: Vec<StructField> = Vec::new();
                    for (name, t, nullable) in members {
                        if fields.iter().all(|f| f.name != name) {
                            fields.push(StructField::new(name, t, nullable));
                        }
                    }
                    FieldType::Struct(fields)
                }
            ),
        ]
    })
}

use serde_json::{Value, json};

/// JSON values that fit `t` (see `sluice_schema::value` for the shapes), limited to
/// ranges every timestamp unit can hold.
pub fn value_for(t: &FieldType) -> BoxedStrategy<Value> {
    match t {
        FieldType::Bool => any::<bool>().prop_map(Value::from).boxed(),
        FieldType::Int8 => any::<i8>().prop_map(Value::from).boxed(),
        FieldType::Int16 => any::<i16>().prop_map(Value::from).boxed(),
        FieldType::Int32 => any::<i32>().prop_map(Value::from).boxed(),
        // Within 2^53 so a widening to float64 is exact (wider values are refused, see
        // convert_records.rs).
        FieldType::Int64 => (-(1i64 << 53)..(1i64 << 53)).prop_map(Value::from).boxed(),
        FieldType::Float32 => any::<f32>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f64::from(f)))
            .boxed(),
        FieldType::Float64 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f))
            .boxed(),
        FieldType::Decimal { precision, scale } => {
            let digits = u32::from((*precision).min(18));
            let limit = 10i64.pow(digits) - 1;
            let scale = *scale as usize;
            (-limit..=limit)
                .prop_map(move |m| {
                    let negative = m < 0;
                    let text = m.unsigned_abs().to_string();
                    let text = if scale == 0 {
                        text
                    } else {
                        let padded = format!("{text:0>width$}", width = scale + 1);
                        let (int, frac) = padded.split_at(padded.len() - scale);
                        format!("{int}.{frac}")
                    };
                    Value::from(if negative { format!("-{text}") } else { text })
                })
                .boxed()
        }
        FieldType::String => "\\PC{0,8}".prop_map(Value::from).boxed(),
        FieldType::Binary => prop_oneof![
            "[a-z]{0,6}".prop_map(Value::from),
            prop::collection::vec(any::<u8>(), 0..6).prop_map(Value::from),
        ]
        .boxed(),
        // About ±190 years around 1970: inside the nanosecond range.
        FieldType::Date => (-70_000i64..70_000).prop_map(Value::from).boxed(),
        FieldType::Timestamp { unit, .. } => {
            let per_second: i64 = match unit {
                TimeUnit::Second => 1,
                TimeUnit::Millisecond => 1_000,
                TimeUnit::Microsecond => 1_000_000,
                TimeUnit::Nanosecond => 1_000_000_000,
            };
            let limit = 6_000_000_000i64 * per_second;
            (-limit..limit).prop_map(Value::from).boxed()
        }
        FieldType::List(element) => prop::collection::vec(nullable_value_for(element, true), 0..3)
            .prop_map(Value::from)
            .boxed(),
        FieldType::Struct(members) => {
            let parts: Vec<BoxedStrategy<(String, Value)>> = members
                .iter()
                .map(|m| {
                    let name = m.name.clone();
                    nullable_value_for(&m.field_type, m.nullable)
                        .prop_map(move |v| (name.clone(), v))
                        .boxed()
                })
                .collect();
            parts
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect()))
                .boxed()
        }
    }
}

pub fn nullable_value_for(t: &FieldType, nullable: bool) -> BoxedStrategy<Value> {
    if nullable {
        prop_oneof![1 => Just(Value::Null), 4 => value_for(t)].boxed()
    } else {
        value_for(t)
    }
}

/// Arbitrary JSON, mostly scalars, for feeding values of the wrong shape.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,10}".prop_map(Value::from),
        Just(Value::from("2024-01-01")),
        Just(Value::from("2024-01-01T10:00:00Z")),
        Just(Value::from("12.5")),
        Just(Value::from("NaN")),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::vec(("[a-c]", inner), 0..3)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}
