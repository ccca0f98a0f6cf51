//! The registry's decisions: ids across versions, fingerprints, compatibility refusals.

use sluice_schema::compat::Rule;
use sluice_schema::registry::{Candidate, Decision, RegisteredVersion, decide, prepare};
use sluice_schema::{CompatibilityMode, Schema};

fn yaml(fields: &str) -> Schema {
    Schema::from_yaml("test.yaml", &format!("dataset: orders\nfields: {fields}\n")).unwrap()
}

/// Stores `candidate` as the next version of `history`, the way the CLI does through the store.
fn store(history: &mut Vec<RegisteredVersion>, candidate: &Candidate) {
    let version = history.len() as i64 + 1;
    history.push(
        RegisteredVersion::from_stored(
            "orders",
            version,
            &candidate.json,
            &candidate.fingerprint,
            i64::from(candidate.last_field_id),
        )
        .unwrap(),
    );
}

fn register(
    history: &mut Vec<RegisteredVersion>,
    schema: Schema,
    mode: CompatibilityMode,
) -> Decision {
    let candidate = prepare(schema, history.last()).unwrap();
    let decision = decide(&candidate, history, mode);
    if matches!(decision, Decision::Register { .. }) {
        store(history, &candidate);
    }
    decision
}

fn ids(v: &RegisteredVersion) -> Vec<(String, Option<u32>)> {
    v.schema
        .fields
        .iter()
        .map(|f| (f.name.clone(), f.id))
        .collect()
}

#[test]
fn renames_keep_ids_and_returning_names_get_new_ones() {
    let mut h = Vec::new();
    let backward = CompatibilityMode::Backward;
    register(
        &mut h,
        yaml("[{name: a, type: int64}, {name: b, type: string}]"),
        backward,
    );
    assert_eq!(ids(&h[0]), [("a".into(), Some(1)), ("b".into(), Some(2))]);
    // b renamed to c (alias) keeps id 2; a dropped; d is new
    register(
        &mut h,
        yaml("[{name: c, type: string, aliases: [b]}, {name: d, type: int32}]"),
        backward,
    );
    assert_eq!(ids(&h[1]), [("c".into(), Some(2)), ("d".into(), Some(3))]);
    assert_eq!(h[1].last_field_id, 3);
    // a comes back: a new field with a new id, never 1 again
    register(
        &mut h,
        yaml(
            "[{name: c, type: string, aliases: [b]}, {name: d, type: int32}, {name: a, type: int64}]",
        ),
        backward,
    );
    assert_eq!(h[2].schema.field("a").and_then(|f| f.id), Some(4));
    assert_eq!(h[2].last_field_id, 4);
}

#[test]
fn the_same_schema_is_the_same_version() {
    let mut h = Vec::new();
    let mode = CompatibilityMode::Backward;
    let v1 = "[{name: a, type: int64, aliases: [y, x]}]";
    assert_eq!(
        register(&mut h, yaml(v1), mode),
        Decision::Register { version: 1 }
    );
    // aliases are a set: their order is not a new schema; ids written in the file are ignored
    let respelled = "[{name: a, type: int64, aliases: [x, y], id: 42}]";
    assert_eq!(
        register(&mut h, yaml(respelled), mode),
        Decision::Existing { version: 1 }
    );
    assert_eq!(
        register(
            &mut h,
            yaml("[{name: a, type: int64}, {name: n, type: string}]"),
            mode
        ),
        Decision::Register { version: 2 }
    );
    // an older schema found again, even under a mode that would refuse it as new
    let again = prepare(yaml(v1), h.last()).unwrap();
    // ids are assigned from v2, where `a` has the same id: same fingerprint as v1
    assert_eq!(
        decide(&again, &h, CompatibilityMode::FullTransitive),
        Decision::Existing { version: 1 }
    );
}

#[test]
fn refusals_list_every_violation_with_versions() {
    let mut h = Vec::new();
    let backward = CompatibilityMode::Backward;
    register(
        &mut h,
        yaml(
            "[{name: id, type: int64, nullable: false}, {name: amount, type: \"decimal(10,2)\"}, {name: email, type: string}]",
        ),
        backward,
    );
    let bad = yaml(
        "[{name: id, type: int64, nullable: false}, {name: amount, type: string}, {name: email, type: string, nullable: false}, {name: code, type: string, nullable: false}]",
    );
    let Decision::Incompatible { mode, violations } = register(&mut h, bad.clone(), backward)
    else {
        panic!("must be refused");
    };
    assert_eq!(mode, backward);
    let mut found: Vec<(String, Rule, u32, u32)> = violations
        .iter()
        .map(|v| (v.field.clone(), v.rule, v.reader_version, v.writer_version))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        found,
        [
            ("amount".into(), Rule::IncompatibleType, 2, 1),
            ("code".into(), Rule::MissingFieldWithoutDefault, 2, 1),
            ("email".into(), Rule::NullableToRequired, 2, 1),
        ]
    );
    assert_eq!(h.len(), 1, "nothing registered");

    // NONE lets it in; BACKWARD_TRANSITIVE then checks the next one against v1 as well.
    assert_eq!(
        register(&mut h, bad, CompatibilityMode::None),
        Decision::Register { version: 2 }
    );
    let next = yaml(
        "[{name: id, type: int64, nullable: false}, {name: amount, type: string}, {name: email, type: string, nullable: false}, {name: code, type: string, nullable: false}, {name: note, type: string}]",
    );
    assert_eq!(
        decide(&prepare(next.clone(), h.last()).unwrap(), &h, backward),
        Decision::Register { version: 3 }
    );
    let Decision::Incompatible { violations, .. } =
        register(&mut h, next, CompatibilityMode::BackwardTransitive)
    else {
        panic!("v1 data cannot be read by the new schema");
    };
    assert!(
        violations
            .iter()
            .all(|v| v.writer_version == 1 && v.reader_version == 3)
    );
    assert_eq!(violations.len(), 3, "{violations:?}");
}

#[test]
fn unreadable_stored_schemas_are_reported_with_their_version() {
    let err = RegisteredVersion::from_stored("orders", 4, "{not json", "f", 1).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("orders@4: the registered schema cannot be read"),
        "{err}"
    );
    let err = RegisteredVersion::from_stored(
        "orders",
        2,
        "{\"dataset\":\"orders\",\"fields\":[{\"name\":\"a\",\"type\":\"int64\"}]}",
        "f",
        1,
    )
    .unwrap_err();
    assert!(err.to_string().contains("has no id"), "{err}");
}

/// Fields match by stable id, as in Iceberg, not by name as in Avro and Confluent's registry:
/// a field dropped and later re-added under the same name is a new field (a new id), so
/// BACKWARD_TRANSITIVE accepts `{id, x: string}`, `{id}`, `{id, x: int32}`: no reader of any
/// version reads the old `x` as the new one. A registry matching by name refuses the third
/// (reading v1's string `x` as int32). Changing `x` in place is refused.
#[test]
fn backward_transitive_matches_fields_by_id_so_a_re_added_name_is_a_new_field() {
    let mut h = Vec::new();
    let mode = CompatibilityMode::BackwardTransitive;
    let id = "{name: id, type: int64, nullable: false}";
    for fields in [
        format!("[{id}, {{name: x, type: string}}]"),
        format!("[{id}]"),
        format!("[{id}, {{name: x, type: int32}}]"),
    ] {
        let d = register(&mut h, yaml(&fields), mode);
        assert!(matches!(d, Decision::Register { .. }), "{fields}: {d:?}");
    }
    assert_eq!(h.len(), 3);
    assert_eq!(h[0].schema.field("x").and_then(|f| f.id), Some(2));
    assert_eq!(h[2].schema.field("x").and_then(|f| f.id), Some(3));

    // The same field (same id) changing type is a violation under the same mode.
    let mut h = Vec::new();
    register(
        &mut h,
        yaml(&format!("[{id}, {{name: x, type: string}}]")),
        mode,
    );
    let d = register(
        &mut h,
        yaml(&format!("[{id}, {{name: x, type: int32}}]")),
        mode,
    );
    assert!(!matches!(d, Decision::Register { .. }), "{d:?}");
}
