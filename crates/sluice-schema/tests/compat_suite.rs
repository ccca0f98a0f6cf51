//! Table-driven compatibility suite: schema histories, a new version, a mode, and the
//! exact violations expected (field path, rule, reader version, writer version).

use sluice_schema::compat::{CompatibilityMode, Rule, check_compatibility};
use sluice_schema::schema::Schema;

use CompatibilityMode::*;
use Rule::*;

/// A schema from a YAML flow list of fields.
fn v(fields: &str) -> Schema {
    match Schema::from_yaml("case", &format!("dataset: t\nfields: {fields}\n")) {
        Ok(s) => s,
        Err(e) => panic!("bad test schema {fields}: {e}"),
    }
}

/// One field, as YAML: `f("a", "int64")` is nullable, `req("a", "int64")` is required.
fn one(name: &str, ty: &str, extra: &str) -> String {
    format!("[{{name: {name}, type: \"{ty}\"{extra}}}]")
}
fn nul(ty: &str) -> Schema {
    v(&one("x", ty, ""))
}
fn req(ty: &str) -> Schema {
    v(&one("x", ty, ", nullable: false"))
}

type Expected = &'static [(&'static str, Rule, u32, u32)];
const OK: Expected = &[];

struct Case {
    name: &'static str,
    mode: CompatibilityMode,
    history: Vec<Schema>,
    new: Schema,
    expected: Expected,
}

fn case(
    name: &'static str,
    mode: CompatibilityMode,
    history: Vec<Schema>,
    new: Schema,
    expected: Expected,
) -> Case {
    Case {
        name,
        mode,
        history,
        new,
        expected,
    }
}

/// Backward check of one promotion (writer v1 type -> reader v2 type), both required so
/// only the type rule is exercised.
fn promotion(name: &'static str, writer: &str, reader: &str, ok: bool) -> Case {
    case(
        name,
        Backward,
        vec![req(writer)],
        req(reader),
        if ok {
            OK
        } else {
            &[("x", IncompatibleType, 2, 1)]
        },
    )
}

fn cases() -> Vec<Case> {
    let base = "{name: id, type: int64, nullable: false}";
    let with = |extra: &str| v(&format!("[{base}, {extra}]"));
    let only_base = v(&format!("[{base}]"));
    vec![
        // --- adding and dropping, every mode ---
        case(
            "backward: add nullable field",
            Backward,
            vec![only_base.clone()],
            with("{name: note, type: string}"),
            OK,
        ),
        case(
            "backward: add defaulted required field",
            Backward,
            vec![only_base.clone()],
            with("{name: n, type: int32, nullable: false, default: 0}"),
            OK,
        ),
        case(
            "backward: add required field without default",
            Backward,
            vec![only_base.clone()],
            with("{name: n, type: int32, nullable: false}"),
            &[("n", MissingFieldWithoutDefault, 2, 1)],
        ),
        case(
            "backward: drop required field is fine (writer-only ignored)",
            Backward,
            vec![with("{name: n, type: int32, nullable: false}")],
            only_base.clone(),
            OK,
        ),
        case(
            "forward: drop required field",
            Forward,
            vec![with("{name: n, type: int32, nullable: false}")],
            only_base.clone(),
            &[("n", MissingFieldWithoutDefault, 1, 2)],
        ),
        case(
            "forward: drop nullable field",
            Forward,
            vec![with("{name: n, type: int32}")],
            only_base.clone(),
            OK,
        ),
        case(
            "forward: drop defaulted field",
            Forward,
            vec![with("{name: n, type: int32, nullable: false, default: 5}")],
            only_base.clone(),
            OK,
        ),
        case(
            "forward: add required field (old reader ignores it)",
            Forward,
            vec![only_base.clone()],
            with("{name: n, type: int32, nullable: false}"),
            OK,
        ),
        case(
            "full: add nullable field",
            Full,
            vec![only_base.clone()],
            with("{name: n, type: int32}"),
            OK,
        ),
        case(
            "full: add required field without default",
            Full,
            vec![only_base.clone()],
            with("{name: n, type: int32, nullable: false}"),
            &[("n", MissingFieldWithoutDefault, 2, 1)],
        ),
        case(
            "full: drop required field",
            Full,
            vec![with("{name: n, type: int32, nullable: false}")],
            only_base.clone(),
            &[("n", MissingFieldWithoutDefault, 1, 2)],
        ),
        case(
            "none: anything goes",
            None,
            vec![req("int64")],
            req("string"),
            OK,
        ),
        case(
            "none: required field added",
            None,
            vec![only_base.clone()],
            with("{name: n, type: int32, nullable: false}"),
            OK,
        ),
        // --- every promotion (backward: v1 writes, v2 reads) ---
        promotion("int8 -> int16", "int8", "int16", true),
        promotion("int8 -> int32", "int8", "int32", true),
        promotion("int8 -> int64", "int8", "int64", true),
        promotion("int16 -> int32", "int16", "int32", true),
        promotion("int16 -> int64", "int16", "int64", true),
        promotion("int32 -> int64", "int32", "int64", true),
        promotion("int8 -> float32", "int8", "float32", true),
        promotion("int16 -> float32", "int16", "float32", true),
        promotion(
            "int32 -> float32 is not a promotion",
            "int32",
            "float32",
            false,
        ),
        promotion(
            "int64 -> float32 is not a promotion",
            "int64",
            "float32",
            false,
        ),
        promotion("int8 -> float64", "int8", "float64", true),
        promotion("int16 -> float64", "int16", "float64", true),
        promotion("int32 -> float64", "int32", "float64", true),
        promotion("int64 -> float64", "int64", "float64", true),
        promotion("float32 -> float64", "float32", "float64", true),
        promotion(
            "decimal precision widening at equal scale",
            "decimal(10,2)",
            "decimal(12,2)",
            true,
        ),
        promotion(
            "decimal widening into Decimal256",
            "decimal(30,4)",
            "decimal(50,4)",
            true,
        ),
        promotion(
            "decimal scale change is not a promotion",
            "decimal(10,2)",
            "decimal(12,3)",
            false,
        ),
        promotion(
            "decimal precision narrowing",
            "decimal(12,2)",
            "decimal(10,2)",
            false,
        ),
        promotion("date -> timestamp", "date", "timestamp", true),
        promotion(
            "date -> timestamp(ms, UTC)",
            "date",
            "timestamp(ms, UTC)",
            true,
        ),
        promotion("timestamp -> date is narrowing", "timestamp", "date", false),
        promotion("string -> binary", "string", "binary", true),
        promotion("binary -> string", "binary", "string", true),
        promotion("int64 -> int32 narrowing", "int64", "int32", false),
        promotion("int16 -> int8 narrowing", "int16", "int8", false),
        promotion("float64 -> float32 narrowing", "float64", "float32", false),
        promotion(
            "float64 -> int64 is not a promotion",
            "float64",
            "int64",
            false,
        ),
        promotion(
            "int32 -> string is not a promotion",
            "int32",
            "string",
            false,
        ),
        promotion("bool -> int32 is not a promotion", "bool", "int32", false),
        promotion(
            "timestamp unit change is not a promotion",
            "timestamp(ms)",
            "timestamp(us)",
            false,
        ),
        case(
            "forward: widening breaks old readers",
            Forward,
            vec![req("int32")],
            req("int64"),
            &[("x", IncompatibleType, 1, 2)],
        ),
        case(
            "forward: narrowing is readable by old readers",
            Forward,
            vec![req("int64")],
            req("int32"),
            OK,
        ),
        case(
            "full: widening fails the forward half",
            Full,
            vec![req("float32")],
            req("float64"),
            &[("x", IncompatibleType, 1, 2)],
        ),
        case(
            "full: string <-> binary both ways",
            Full,
            vec![req("string")],
            req("binary"),
            OK,
        ),
        // --- nullability ---
        case(
            "backward: nullable -> required",
            Backward,
            vec![nul("int64")],
            req("int64"),
            &[("x", NullableToRequired, 2, 1)],
        ),
        case(
            "backward: required -> nullable",
            Backward,
            vec![req("int64")],
            nul("int64"),
            OK,
        ),
        case(
            "forward: required -> nullable",
            Forward,
            vec![req("int64")],
            nul("int64"),
            &[("x", NullableToRequired, 1, 2)],
        ),
        case(
            "backward: nullable -> required with a widening",
            Backward,
            vec![nul("int32")],
            req("int64"),
            &[("x", NullableToRequired, 2, 1)],
        ),
        // --- renames: aliases and ids ---
        case(
            "backward: rename with alias",
            Backward,
            vec![v("[{name: mail, type: string, nullable: false}]")],
            v("[{name: email, type: string, nullable: false, aliases: [mail]}]"),
            OK,
        ),
        case(
            "backward: rename without alias loses the required field",
            Backward,
            vec![v("[{name: mail, type: string, nullable: false}]")],
            v("[{name: email, type: string, nullable: false}]"),
            &[("email", MissingFieldWithoutDefault, 2, 1)],
        ),
        case(
            "backward: rename without alias of a nullable field reads null",
            Backward,
            vec![v("[{name: mail, type: string}]")],
            v("[{name: email, type: string}]"),
            OK,
        ),
        case(
            "forward: old reader follows the new field's alias",
            Forward,
            vec![v("[{name: mail, type: string, nullable: false}]")],
            v("[{name: email, type: string, nullable: false, aliases: [mail]}]"),
            OK,
        ),
        case(
            "backward: rename with alias and widening",
            Backward,
            vec![v("[{name: qty, type: int32, nullable: false}]")],
            v("[{name: quantity, type: int64, nullable: false, aliases: [qty]}]"),
            OK,
        ),
        case(
            "backward: rename with alias and narrowing",
            Backward,
            vec![v("[{name: qty, type: int64, nullable: false}]")],
            v("[{name: quantity, type: int32, nullable: false, aliases: [qty]}]"),
            &[("quantity", IncompatibleType, 2, 1)],
        ),
        case(
            "backward: rename followed by field id, no alias",
            Backward,
            vec![v("[{id: 1, name: mail, type: string, nullable: false}]")],
            v("[{id: 1, name: email, type: string, nullable: false}]"),
            OK,
        ),
        case(
            "backward: re-added name has a new id and does not match",
            Backward,
            vec![v(
                "[{id: 1, name: k, type: int64, nullable: false}, {id: 2, name: a, type: int64, nullable: false}]",
            )],
            v(
                "[{id: 1, name: k, type: int64, nullable: false}, {id: 3, name: a, type: int64, nullable: false}]",
            ),
            &[("a", MissingFieldWithoutDefault, 2, 1)],
        ),
        case(
            "forward: ids match across a rename",
            Forward,
            vec![v("[{id: 4, name: a, type: int32, nullable: false}]")],
            v("[{id: 4, name: b, type: int32, nullable: false}]"),
            OK,
        ),
        // --- transitive vs non-transitive ---
        case(
            "backward: v3 drops a default; v2 had the field",
            Backward,
            vec![
                only_base.clone(),
                with("{name: n, type: int32, nullable: false, default: 1}"),
            ],
            with("{name: n, type: int32, nullable: false}"),
            OK,
        ),
        case(
            "backward_transitive: v3 drops a default; v1 lacks the field",
            BackwardTransitive,
            vec![
                only_base.clone(),
                with("{name: n, type: int32, nullable: false, default: 1}"),
            ],
            with("{name: n, type: int32, nullable: false}"),
            &[("n", MissingFieldWithoutDefault, 3, 1)],
        ),
        case(
            "forward: v3 drops a field v2 can default",
            Forward,
            vec![
                with("{name: f, type: int32, nullable: false}"),
                with("{name: f, type: int32, nullable: false, default: 0}"),
            ],
            only_base.clone(),
            OK,
        ),
        case(
            "forward_transitive: v1 cannot default the dropped field",
            ForwardTransitive,
            vec![
                with("{name: f, type: int32, nullable: false}"),
                with("{name: f, type: int32, nullable: false, default: 0}"),
            ],
            only_base.clone(),
            &[("f", MissingFieldWithoutDefault, 1, 3)],
        ),
        case(
            "full: v3 equals v2",
            Full,
            vec![req("int32"), req("int64")],
            req("int64"),
            OK,
        ),
        case(
            "full_transitive: v1 cannot read v3's wider type",
            FullTransitive,
            vec![req("int32"), req("int64")],
            req("int64"),
            &[("x", IncompatibleType, 1, 3)],
        ),
        case(
            "backward_transitive: promotion chain int8 -> int16 -> int32",
            BackwardTransitive,
            vec![req("int8"), req("int16")],
            req("int32"),
            OK,
        ),
        case(
            "backward_transitive: v3 narrows below v1 but not v2",
            BackwardTransitive,
            vec![req("int64"), req("int16")],
            req("int32"),
            &[("x", IncompatibleType, 3, 1)],
        ),
        case(
            "backward: same narrowing against v2 only is fine",
            Backward,
            vec![req("int64"), req("int16")],
            req("int32"),
            OK,
        ),
        case(
            "forward_transitive: every old reader checked",
            ForwardTransitive,
            vec![req("int64"), req("int32")],
            req("int16"),
            OK,
        ),
        case(
            "forward_transitive: v1 reader of int8 cannot read int16",
            ForwardTransitive,
            vec![req("int8"), req("int16")],
            req("int16"),
            &[("x", IncompatibleType, 1, 3)],
        ),
        // --- nested structs and lists ---
        case(
            "backward: struct member added nullable",
            Backward,
            vec![req("struct<city: string>")],
            req("struct<city: string, zip: string>"),
            OK,
        ),
        case(
            "backward: struct member added required",
            Backward,
            vec![req("struct<city: string>")],
            req("struct<city: string, zip: string not null>"),
            &[("x.zip", MissingFieldWithoutDefault, 2, 1)],
        ),
        case(
            "backward: struct member widened",
            Backward,
            vec![req("struct<n: int32>")],
            req("struct<n: int64>"),
            OK,
        ),
        case(
            "backward: struct member narrowed",
            Backward,
            vec![req("struct<n: int64>")],
            req("struct<n: int32>"),
            &[("x.n", IncompatibleType, 2, 1)],
        ),
        case(
            "forward: required struct member dropped",
            Forward,
            vec![req("struct<a: int32 not null, b: string>")],
            req("struct<b: string>"),
            &[("x.a", MissingFieldWithoutDefault, 1, 2)],
        ),
        case(
            "backward: deep struct change reported at the deepest path",
            Backward,
            vec![req("struct<a: struct<b: struct<c: int64>>>")],
            req("struct<a: struct<b: struct<c: string>>>"),
            &[("x.a.b.c", IncompatibleType, 2, 1)],
        ),
        case(
            "backward: struct member nullable -> required",
            Backward,
            vec![req("struct<a: int32>")],
            req("struct<a: int32 not null>"),
            &[("x.a", NullableToRequired, 2, 1)],
        ),
        case(
            "backward: list element widened",
            Backward,
            vec![req("list<int32>")],
            req("list<int64>"),
            OK,
        ),
        case(
            "backward: list element narrowed",
            Backward,
            vec![v("[{name: tags, type: \"list<int64>\"}]")],
            v("[{name: tags, type: \"list<int32>\"}]"),
            &[("tags[]", IncompatibleType, 2, 1)],
        ),
        case(
            "backward: required member added inside list of structs",
            Backward,
            vec![req("list<struct<x: int32>>")],
            req("list<struct<x: int32, y: string not null>>"),
            &[("x[].y", MissingFieldWithoutDefault, 2, 1)],
        ),
        case(
            "backward: list to scalar",
            Backward,
            vec![req("list<string>")],
            req("string"),
            &[("x", IncompatibleType, 2, 1)],
        ),
        case(
            "full: nested list of struct widening fails forward only",
            Full,
            vec![req("list<struct<v: float32>>")],
            req("list<struct<v: float64>>"),
            &[("x[].v", IncompatibleType, 1, 2)],
        ),
        // --- several violations at once ---
        case(
            "full_transitive: several fields and versions",
            FullTransitive,
            vec![
                v("[{name: a, type: int32, nullable: false}, {name: b, type: string}]"),
                v("[{name: a, type: int64, nullable: false}, {name: b, type: string}]"),
            ],
            v(
                "[{name: a, type: int64, nullable: false}, {name: b, type: string, nullable: false}, {name: c, type: date, nullable: false}]",
            ),
            &[
                ("a", IncompatibleType, 1, 3),
                ("b", NullableToRequired, 3, 1),
                ("b", NullableToRequired, 3, 2),
                ("c", MissingFieldWithoutDefault, 3, 1),
                ("c", MissingFieldWithoutDefault, 3, 2),
            ],
        ),
    ]
}

#[test]
fn compatibility_table() {
    let cases = cases();
    assert!(
        cases.len() >= 60,
        "the suite must keep at least 60 cases, has {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for c in &cases {
        let mut got: Vec<(String, Rule, u32, u32)> =
            check_compatibility(c.mode, &c.new, &c.history)
                .into_iter()
                .map(|v| (v.field, v.rule, v.reader_version, v.writer_version))
                .collect();
        let mut want: Vec<(String, Rule, u32, u32)> = c
            .expected
            .iter()
            .map(|(f, r, rv, wv)| (f.to_string(), *r, *rv, *wv))
            .collect();
        got.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        want.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        if got != want {
            failures.push(format!(
                "{} [{}]\n  want {want:?}\n  got  {got:?}",
                c.name, c.mode
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_mode_is_covered() {
    let cases = cases();
    for mode in CompatibilityMode::ALL {
        assert!(cases.iter().any(|c| c.mode == mode), "no case for {mode}");
    }
}

#[test]
fn empty_history_is_compatible_in_every_mode() {
    for mode in CompatibilityMode::ALL {
        assert!(
            check_compatibility(mode, &req("int64"), &[]).is_empty(),
            "{mode}"
        );
    }
}

#[test]
fn violations_explain_themselves() {
    let violations = check_compatibility(Backward, &req("int32"), &[req("int64")]);
    assert_eq!(violations.len(), 1);
    let text = violations[0].to_string();
    assert!(text.contains("v2 cannot read data written by v1"), "{text}");
    assert!(text.contains("int64 cannot be read as int32"), "{text}");
    let json = serde_json::to_value(&violations[0]).unwrap();
    assert_eq!(json["rule"], "incompatible_type");
    assert_eq!(json["reader_version"], 2);
}

#[test]
fn modes_parse_like_confluent_names() {
    assert_eq!(
        "backward_transitive".parse::<CompatibilityMode>(),
        Ok(BackwardTransitive)
    );
    assert_eq!(
        "FULL-TRANSITIVE".parse::<CompatibilityMode>(),
        Ok(FullTransitive)
    );
    assert_eq!(" none ".parse::<CompatibilityMode>(), Ok(None));
    let err = "sideways"
        .parse::<CompatibilityMode>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("BACKWARD_TRANSITIVE"), "{err}");
    let mode: CompatibilityMode = yaml_serde::from_str("FORWARD_TRANSITIVE").unwrap();
    assert_eq!(mode, ForwardTransitive);
    assert_eq!(serde_json::to_string(&Full).unwrap(), "\"FULL\"");
}
