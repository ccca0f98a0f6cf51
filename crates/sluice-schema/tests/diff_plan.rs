//! Change classification and migration plans.

use sluice_schema::diff::{Change, ChangeKind, Severity, diff, max_severity};
use sluice_schema::plan::{Dialect, Phase, Plan, Risk, plan};
use sluice_schema::schema::Schema;
use sluice_schema::types::FieldType;

fn v(fields: &str) -> Schema {
    Schema::from_yaml(
        "case",
        &format!("dataset: sales.orders\nfields: {fields}\n"),
    )
    .unwrap()
}

fn kinds(changes: &[Change]) -> Vec<(String, ChangeKind)> {
    changes.iter().map(|c| (c.field.clone(), c.kind)).collect()
}

/// Old fields, new fields, expected (path, kind) changes.
type DiffCase = (&'static str, &'static str, Vec<(&'static str, ChangeKind)>);

#[test]
fn every_change_kind_is_classified() {
    let cases: Vec<DiffCase> = vec![
        (
            "[{name: a, type: int64}]",
            "[{name: a, type: int64}, {name: b, type: string}]",
            vec![("b", ChangeKind::AddNullableField)],
        ),
        (
            "[{name: a, type: int64}]",
            "[{name: a, type: int64}, {name: b, type: int32, nullable: false, default: 1}]",
            vec![("b", ChangeKind::AddDefaultedField)],
        ),
        (
            "[{name: a, type: int64}]",
            "[{name: a, type: int64}, {name: b, type: int32, nullable: false}]",
            vec![("b", ChangeKind::AddRequiredField)],
        ),
        (
            "[{name: a, type: int64}, {name: b, type: string}]",
            "[{name: a, type: int64}]",
            vec![("b", ChangeKind::DropField)],
        ),
        (
            "[{name: mail, type: string}]",
            "[{name: email, type: string, aliases: [mail]}]",
            vec![("email", ChangeKind::RenameField)],
        ),
        (
            "[{name: a, type: int32}]",
            "[{name: a, type: int64}]",
            vec![("a", ChangeKind::WidenType)],
        ),
        (
            "[{name: a, type: int64}]",
            "[{name: a, type: int32}]",
            vec![("a", ChangeKind::NarrowType)],
        ),
        (
            "[{name: a, type: int64}]",
            "[{name: a, type: string}]",
            vec![("a", ChangeKind::ChangeType)],
        ),
        (
            "[{name: a, type: int64}]",
            "[{name: a, type: int64, nullable: false}]",
            vec![("a", ChangeKind::MakeRequired)],
        ),
        (
            "[{name: a, type: int64, nullable: false}]",
            "[{name: a, type: int64}]",
            vec![("a", ChangeKind::MakeNullable)],
        ),
        (
            "[{name: a, type: int64, default: 1}]",
            "[{name: a, type: int64, default: 2}]",
            vec![("a", ChangeKind::ChangeDefault)],
        ),
        (
            "[{name: a, type: int64}]",
            "[{name: a, type: int64, deprecated: true}]",
            vec![("a", ChangeKind::DeprecateField)],
        ),
        (
            "[{name: a, type: int64, deprecated: true}]",
            "[{name: a, type: int64}]",
            vec![("a", ChangeKind::UndeprecateField)],
        ),
        (
            "[{name: a, type: int64, doc: x}]",
            "[{name: a, type: int64, doc: y}]",
            vec![("a", ChangeKind::ChangeDoc)],
        ),
        (
            "[{name: a, type: int64}]",
            "[{name: a, type: int64, min: 0}]",
            vec![("a", ChangeKind::ChangeConstraints)],
        ),
        (
            "[{name: a, type: int64}]",
            "[{name: a, type: int64, aliases: [z]}]",
            vec![("a", ChangeKind::ChangeAliases)],
        ),
        (
            "[{name: s, type: \"struct<x: int32>\"}]",
            "[{name: s, type: \"struct<x: int64, y: string>\"}]",
            vec![
                ("s.x", ChangeKind::WidenType),
                ("s.y", ChangeKind::AddNullableField),
            ],
        ),
        (
            "[{name: s, type: \"struct<x: int32, y: string>\"}]",
            "[{name: s, type: \"struct<x: int32 not null>\"}]",
            vec![
                ("s.x", ChangeKind::MakeRequired),
                ("s.y", ChangeKind::DropField),
            ],
        ),
        (
            "[{name: t, type: \"list<float64>\"}]",
            "[{name: t, type: \"list<float32>\"}]",
            vec![("t[]", ChangeKind::NarrowType)],
        ),
        (
            "[{name: a, type: int64}]",
            "[{name: a, type: int64}]",
            vec![],
        ),
    ];
    for (old, new, expected) in cases {
        let got = kinds(&diff(&v(old), &v(new)));
        let want: Vec<(String, ChangeKind)> = expected
            .into_iter()
            .map(|(f, k)| (f.to_string(), k))
            .collect();
        assert_eq!(got, want, "{old} -> {new}");
    }
}

#[test]
fn codes_and_severities_are_stable() {
    let table = [
        (ChangeKind::AddNullableField, "SL101", Severity::Safe),
        (ChangeKind::AddDefaultedField, "SL102", Severity::Safe),
        (ChangeKind::AddRequiredField, "SL103", Severity::Breaking),
        (ChangeKind::DropField, "SL201", Severity::Destructive),
        (ChangeKind::RenameField, "SL202", Severity::Warning),
        (ChangeKind::WidenType, "SL301", Severity::Safe),
        (ChangeKind::NarrowType, "SL302", Severity::Breaking),
        (ChangeKind::ChangeType, "SL303", Severity::Breaking),
        (ChangeKind::MakeRequired, "SL401", Severity::Warning),
        (ChangeKind::MakeNullable, "SL402", Severity::Warning),
        (ChangeKind::ChangeDefault, "SL501", Severity::Warning),
        (ChangeKind::DeprecateField, "SL502", Severity::Info),
        (ChangeKind::ChangeDoc, "SL504", Severity::Info),
    ];
    for (kind, code, severity) in table {
        assert_eq!(kind.code(), code);
        assert_eq!(kind.severity(), severity, "{kind:?}");
    }
    let mut codes: Vec<&str> = ChangeKind::ALL.iter().map(|k| k.code()).collect();
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), ChangeKind::ALL.len(), "codes must be unique");
}

#[test]
fn rename_by_id_is_one_change_and_serializes() {
    let old = v("[{id: 1, name: mail, type: string}]");
    let new = v("[{id: 1, name: email, type: string}]");
    let changes = diff(&old, &new);
    assert_eq!(changes.len(), 1);
    let c = &changes[0];
    assert_eq!(c.old_field.as_deref(), Some("mail"));
    assert!(c.reason.contains("name"), "{}", c.reason);
    let json = serde_json::to_value(c).unwrap();
    assert_eq!(json["code"], "SL202");
    assert_eq!(json["kind"], "rename_field");
    assert_eq!(json["severity"], "warning");
    assert!(
        c.to_string()
            .starts_with("SL202 rename_field [warning] email")
    );
    assert_eq!(max_severity(&changes), Severity::Warning);
    assert_eq!(max_severity(&[]), Severity::Info);
}

fn steps(p: &Plan) -> Vec<(Phase, String, String)> {
    p.steps
        .iter()
        .map(|s| (s.phase, s.action.clone(), s.field.clone()))
        .collect()
}

fn step_list(items: &[(Phase, &str, &str)]) -> Vec<(Phase, String, String)> {
    items
        .iter()
        .map(|(p, a, f)| (*p, a.to_string(), f.to_string()))
        .collect()
}

#[test]
fn rename_plan_expands_then_contracts() {
    let old = v("[{name: mail, type: string}]");
    let new = v("[{name: email, type: string, aliases: [mail]}]");
    let p = plan("sales.orders", &old, 1, &new, 2);
    assert_eq!(p.risk, Risk::Medium);
    assert_eq!(
        steps(&p),
        step_list(&[
            (Phase::Expand, "add_column", "email"),
            (Phase::Expand, "backfill", "email"),
            (Phase::Expand, "dual_write", "email"),
            (Phase::Expand, "move_readers", "email"),
            (Phase::Contract, "drop_column", "mail"),
        ])
    );
    assert_eq!(
        p.steps.iter().map(|s| s.number).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        p.steps[0].ddl.delta,
        vec!["ALTER TABLE `sales`.`orders` ADD COLUMNS (`email` STRING)"]
    );
    assert_eq!(
        p.steps[0].ddl.iceberg,
        vec!["ALTER TABLE `sales`.`orders` ADD COLUMN `email` STRING"]
    );
    assert_eq!(
        p.steps[0].ddl.postgres,
        vec!["ALTER TABLE \"sales\".\"orders\" ADD COLUMN \"email\" TEXT"]
    );
    assert_eq!(
        p.steps[1].ddl.postgres,
        vec!["UPDATE \"sales\".\"orders\" SET \"email\" = \"mail\" WHERE \"email\" IS NULL"]
    );
    assert!(p.steps[2].ddl.is_empty());
    assert_eq!(
        p.steps[4].ddl.delta,
        vec!["ALTER TABLE `sales`.`orders` DROP COLUMN `mail`"]
    );
}

#[test]
fn drop_plan_deprecates_waits_then_drops() {
    let p = plan(
        "t",
        &v("[{name: a, type: int64}, {name: b, type: int64}]"),
        3,
        &v("[{name: a, type: int64}]"),
        4,
    );
    assert_eq!(p.risk, Risk::High);
    assert_eq!(
        steps(&p),
        step_list(&[
            (Phase::Expand, "deprecate", "b"),
            (Phase::Expand, "stop_reading", "b"),
            (Phase::Contract, "grace_period", "b"),
            (Phase::Contract, "drop_column", "b"),
        ])
    );
    assert_eq!(
        p.steps[0].ddl.postgres,
        vec!["COMMENT ON COLUMN \"t\".\"b\" IS 'DEPRECATED: will be dropped'"]
    );
    assert_eq!(p.expand_steps().count(), 2);
    assert_eq!(p.contract_steps().count(), 2);
}

#[test]
fn narrowing_plan_validates_every_value_before_the_swap() {
    let p = plan(
        "t",
        &v("[{name: n, type: int64}]"),
        1,
        &v("[{name: n, type: int32}]"),
        2,
    );
    assert_eq!(p.risk, Risk::High);
    assert_eq!(
        steps(&p),
        step_list(&[
            (Phase::Expand, "add_column", "n__new"),
            (Phase::Expand, "validate", "n"),
            (Phase::Expand, "backfill", "n__new"),
            (Phase::Contract, "swap", "n"),
        ])
    );
    assert_eq!(
        p.steps[1].ddl.delta,
        vec![
            "SELECT COUNT(*) AS misfits FROM `t` WHERE `n` IS NOT NULL AND try_cast(`n` AS INT) IS NULL"
        ]
    );
    // PostgreSQL before 16 has no way to try a cast in plain SQL: a session function runs it.
    assert_eq!(p.steps[1].ddl.postgres.len(), 2);
    assert!(
        p.steps[1].ddl.postgres[0].starts_with("CREATE OR REPLACE FUNCTION pg_temp.sluice_fits(")
    );
    assert_eq!(
        p.steps[1].ddl.postgres[1],
        "SELECT COUNT(*) AS misfits FROM \"t\" WHERE \"n\" IS NOT NULL AND NOT pg_temp.sluice_fits(\"n\", 'INTEGER')"
    );
    // The backfill rewrites files; the swap itself is metadata with column mapping.
    assert!(p.steps[2].requires_rewrite);
    assert!(!p.steps[3].requires_rewrite);
    assert!(
        p.steps[3]
            .notes
            .iter()
            .any(|n| n.contains("column mapping"))
    );
    assert_eq!(
        p.steps[3].ddl.postgres,
        vec![
            "ALTER TABLE \"t\" DROP COLUMN \"n\"",
            "ALTER TABLE \"t\" RENAME COLUMN \"n__new\" TO \"n\""
        ]
    );
}

#[test]
fn widening_is_one_in_place_step_but_a_delta_rs_rewrite() {
    let p = plan(
        "t",
        &v("[{name: n, type: int32}]"),
        1,
        &v("[{name: n, type: int64}]"),
        2,
    );
    assert_eq!(p.risk, Risk::Low);
    assert_eq!(steps(&p), step_list(&[(Phase::Expand, "alter_type", "n")]));
    let step = &p.steps[0];
    assert!(step.requires_rewrite);
    assert!(
        step.notes
            .iter()
            .any(|n| n.contains("delta-rs cannot change a column type in place"))
    );
    assert_eq!(
        step.ddl.iceberg,
        vec!["ALTER TABLE `t` ALTER COLUMN `n` TYPE BIGINT"]
    );
    assert_eq!(
        step.ddl.postgres,
        vec!["ALTER TABLE \"t\" ALTER COLUMN \"n\" TYPE BIGINT USING \"n\"::BIGINT"]
    );
    assert!(step.ddl.delta[0].contains("delta.enableTypeWidening"));

    // Iceberg cannot turn a date into a timestamp in place: new column and swap.
    let p = plan(
        "t",
        &v("[{name: d, type: date}]"),
        1,
        &v("[{name: d, type: timestamp}]"),
        2,
    );
    assert_eq!(
        p.steps.first().map(|s| s.action.as_str()),
        Some("add_column")
    );
    assert!(
        p.steps.iter().all(|s| s.action != "validate"),
        "a widening needs no fit check"
    );
}

#[test]
fn required_field_and_make_required_plans() {
    let p = plan(
        "t",
        &v("[{name: a, type: int64}]"),
        1,
        &v("[{name: a, type: int64}, {name: r, type: date, nullable: false}]"),
        2,
    );
    assert_eq!(p.risk, Risk::Medium);
    let actions: Vec<&str> = p.steps.iter().map(|s| s.action.as_str()).collect();
    assert_eq!(
        actions,
        vec![
            "add_column",
            "backfill",
            "dual_write",
            "validate",
            "set_not_null"
        ]
    );
    assert_eq!(
        p.steps[4].ddl.iceberg,
        vec!["ALTER TABLE `t` ALTER COLUMN `r` SET NOT NULL"]
    );

    let p = plan(
        "t",
        &v("[{name: a, type: int64}]"),
        1,
        &v("[{name: a, type: int64, nullable: false}]"),
        2,
    );
    let actions: Vec<(Phase, &str)> = p
        .steps
        .iter()
        .map(|s| (s.phase, s.action.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            (Phase::Expand, "validate"),
            (Phase::Contract, "set_not_null")
        ]
    );
    assert_eq!(
        p.steps[0].ddl.delta,
        vec!["SELECT COUNT(*) AS nulls FROM `t` WHERE `a` IS NULL"]
    );
}

#[test]
fn defaulted_field_gets_dialect_defaults() {
    let p = plan(
        "t",
        &v("[{name: a, type: int64}]"),
        1,
        &v("[{name: a, type: int64}, {name: c, type: string, default: \"it's\"}]"),
        2,
    );
    assert_eq!(p.risk, Risk::Low);
    let ddl = &p.steps[0].ddl;
    assert_eq!(
        ddl.postgres,
        // one statement, so existing rows get the default too
        vec!["ALTER TABLE \"t\" ADD COLUMN \"c\" TEXT DEFAULT 'it''s'"]
    );
    assert_eq!(
        ddl.delta.last().map(String::as_str),
        Some("ALTER TABLE `t` ALTER COLUMN `c` SET DEFAULT 'it\\'s'")
    );
    assert_eq!(ddl.iceberg, vec!["ALTER TABLE `t` ADD COLUMN `c` STRING"]);
}

#[test]
fn identifiers_are_quoted_per_dialect() {
    assert_eq!(Dialect::Delta.quote_ident("we`ird"), "`we``ird`");
    assert_eq!(Dialect::Iceberg.quote_ident("a b"), "`a b`");
    assert_eq!(
        Dialect::Postgres.quote_ident("say \"hi\""),
        "\"say \"\"hi\"\"\""
    );
    let old = v("[{name: \"we`ird\", type: int64}, {name: \"q\\\"x\", type: int64}]");
    let new = v("[{name: \"we`ird\", type: int64}]");
    let p = plan("t", &old, 1, &new, 2);
    let drop = p.steps.iter().find(|s| s.action == "drop_column").unwrap();
    assert_eq!(
        drop.ddl.postgres,
        vec!["ALTER TABLE \"t\" DROP COLUMN \"q\"\"x\""]
    );
    assert_eq!(drop.ddl.delta, vec!["ALTER TABLE `t` DROP COLUMN `q\"x`"]);
}

#[test]
fn types_map_per_dialect() {
    let t = |s: &str| s.parse::<FieldType>().unwrap();
    let table = [
        ("int8", "TINYINT", "INT", "SMALLINT"),
        ("int64", "BIGINT", "BIGINT", "BIGINT"),
        ("float32", "FLOAT", "FLOAT", "REAL"),
        ("float64", "DOUBLE", "DOUBLE", "DOUBLE PRECISION"),
        (
            "decimal(12,2)",
            "DECIMAL(12,2)",
            "DECIMAL(12,2)",
            "NUMERIC(12,2)",
        ),
        ("string", "STRING", "STRING", "TEXT"),
        ("binary", "BINARY", "BINARY", "BYTEA"),
        ("timestamp", "TIMESTAMP_NTZ", "TIMESTAMP_NTZ", "TIMESTAMP"),
        ("timestamptz", "TIMESTAMP", "TIMESTAMP", "TIMESTAMPTZ"),
        ("list<int32>", "ARRAY<INT>", "ARRAY<INT>", "INTEGER[]"),
        (
            "struct<a: int32 not null>",
            "STRUCT<`a`: INT NOT NULL>",
            "STRUCT<`a`: INT NOT NULL>",
            "JSONB",
        ),
    ];
    for (ty, delta, iceberg, pg) in table {
        assert_eq!(Dialect::Delta.type_name(&t(ty)), delta, "{ty}");
        assert_eq!(Dialect::Iceberg.type_name(&t(ty)), iceberg, "{ty}");
        assert_eq!(Dialect::Postgres.type_name(&t(ty)), pg, "{ty}");
    }
}

#[test]
fn plans_serialize_and_render() {
    let old = v("[{name: mail, type: string}, {name: n, type: int64}]");
    let new = v("[{name: email, type: string, aliases: [mail]}, {name: n, type: int32}]");
    let p = plan("sales.orders", &old, 1, &new, 2);
    let json = p.to_json().unwrap();
    let back: Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["risk"], "HIGH");
    assert_eq!(value["steps"][0]["phase"], "expand");

    let text = p.render_text(Dialect::Postgres);
    assert!(
        text.starts_with("migration plan for sales.orders v1 -> v2: risk HIGH"),
        "{text}"
    );
    assert!(text.contains("#  phase"), "{text}");
    assert!(text.contains("PostgreSQL:"), "{text}");
    assert!(
        text.contains("ALTER TABLE \"sales\".\"orders\" ADD COLUMN \"email\" TEXT;"),
        "{text}"
    );
    // Contract steps come after every expand step.
    let phases: Vec<Phase> = p.steps.iter().map(|s| s.phase).collect();
    let mut sorted = phases.clone();
    sorted.sort();
    assert_eq!(phases, sorted);

    let same = plan("t", &old, 1, &old, 2);
    assert_eq!(same.risk, Risk::Low);
    assert!(same.steps.is_empty());
    assert!(same.render_text(Dialect::Delta).contains("nothing to do"));
}

#[test]
fn rename_with_narrowing_casts_and_validates_in_the_rename() {
    let old = v("[{name: qty, type: int64}]");
    let new = v("[{name: quantity, type: int32, aliases: [qty]}]");
    let p = plan("t", &old, 1, &new, 2);
    assert_eq!(p.risk, Risk::High);
    let actions: Vec<(&str, &str)> = p
        .steps
        .iter()
        .map(|s| (s.action.as_str(), s.field.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("add_column", "quantity"),
            ("validate", "qty"),
            ("backfill", "quantity"),
            ("dual_write", "quantity"),
            ("move_readers", "quantity"),
            ("drop_column", "qty"),
        ]
    );
    assert_eq!(
        p.steps[2].ddl.delta,
        vec!["UPDATE `t` SET `quantity` = CAST(`qty` AS INT) WHERE `quantity` IS NULL"]
    );
}
