//! `sluice schema ...` end to end: the real binary against a SQLite store and a fresh PostgreSQL
//! database, and every PostgreSQL statement of generated migration plans executed for real.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use sluice_schema::{Dialect, FieldType, Schema};
use sluice_store::testing;
use sqlx::{Connection, Executor, PgConnection, Row};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A folder for schema files and a store to run commands against.
struct Registry {
    dir: tempfile::TempDir,
    store: String,
}

impl Registry {
    fn sqlite() -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().join("state.db").display().to_string();
        Registry { dir, store }
    }

    fn with_store(store: String) -> Registry {
        Registry {
            dir: tempfile::tempdir().expect("temp dir"),
            store,
        }
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("writing a schema file");
        path.display().to_string()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--store", &self.store])
            .current_dir(self.dir.path())
            .output()
            .expect("running sluice")
    }

    /// Runs with `--json`, checks the exit code, returns the parsed output.
    fn json(&self, args: &[&str], code: i32) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all);
        assert_eq!(
            out.status.code(),
            Some(code),
            "sluice {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "sluice {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn register(&self, name: &str, yaml: &str, code: i32) -> Value {
        let file = self.write(name, yaml);
        self.json(&["schema", "register", &file], code)
    }

    fn schema(&self, reference: &str) -> Schema {
        let shown = self.json(&["schema", "show", reference], 0);
        serde_json::from_value(shown["schema"].clone()).expect("show prints the schema")
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const V1: &str = "dataset: orders
fields:
  - {name: id, type: int64, nullable: false}
  - {name: name, type: string}
  - {name: amount, type: \"decimal(10,2)\"}
  - {name: qty, type: int32}
";

/// Compatible with v1: a nullable field added, a rename through an alias, two widenings.
const V2: &str = "dataset: orders
fields:
  - {name: id, type: int64, nullable: false}
  - {name: customer_name, type: string, aliases: [name]}
  - {name: amount, type: \"decimal(12,2)\"}
  - {name: qty, type: int64}
  - {name: email, type: string}
";

/// Three violations of BACKWARD against v2.
const V3: &str = "dataset: orders
fields:
  - {name: id, type: int64, nullable: false}
  - {name: customer_name, type: string, aliases: [name]}
  - {name: amount, type: string}
  - {name: qty, type: int64}
  - {name: email, type: string, nullable: false}
  - {name: code, type: string, nullable: false}
";

/// Compatible with v3 (one nullable field more), not with v1 or v2.
const V4: &str = "dataset: orders
fields:
  - {name: id, type: int64, nullable: false}
  - {name: customer_name, type: string, aliases: [name]}
  - {name: amount, type: string}
  - {name: qty, type: int64}
  - {name: email, type: string, nullable: false}
  - {name: code, type: string, nullable: false}
  - {name: note, type: string}
";

fn violations(v: &Value) -> Vec<(String, String, u64, u64)> {
    let mut out: Vec<(String, String, u64, u64)> = v["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|x| {
            (
                x["field"].as_str().unwrap_or_default().to_string(),
                x["rule"].as_str().unwrap_or_default().to_string(),
                x["reader_version"].as_u64().unwrap_or_default(),
                x["writer_version"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The whole registry story, on whichever store `r` uses. Returns the v1 -> v2 plan's JSON.
fn registry_story(r: &Registry) -> Value {
    // v1, then the same file again: the same version.
    let v1 = r.register("v1.yaml", V1, 0);
    assert_eq!(
        (v1["outcome"].as_str(), v1["version"].as_u64()),
        (Some("registered"), Some(1))
    );
    assert_eq!(v1["mode"], "BACKWARD");
    let again = r.register("v1-again.yaml", &V1.replace("qty, type", "qty,  type"), 0);
    assert_eq!(
        (again["outcome"].as_str(), again["version"].as_u64()),
        (Some("unchanged"), Some(1))
    );
    assert_eq!(again["fingerprint"], v1["fingerprint"]);

    // v2 is compatible: registered, and the rename kept the field id.
    let check = r.json(&["schema", "check", &r.write("v2.yaml", V2)], 0);
    assert_eq!(
        (check["outcome"].as_str(), check["version"].as_u64()),
        (Some("would_register"), Some(2))
    );
    let v2 = r.register("v2.yaml", V2, 0);
    assert_eq!(
        (v2["outcome"].as_str(), v2["version"].as_u64()),
        (Some("registered"), Some(2))
    );
    let s1 = r.schema("orders@1");
    let s2 = r.schema("orders@v2");
    let id = |s: &Schema, name: &str| s.field(name).and_then(|f| f.id);
    assert_eq!(id(&s2, "customer_name"), id(&s1, "name"));
    assert_eq!(id(&s2, "customer_name"), Some(2));
    assert_eq!(id(&s2, "email"), Some(5), "a new field gets the next id");
    assert_eq!(r.schema("orders"), s2, "no version means the latest");

    // v3 is refused under BACKWARD with each violation, exit 1, and nothing is written.
    let refused = r.register("v3.yaml", V3, 1);
    assert_eq!(refused["outcome"], "refused");
    assert_eq!(
        violations(&refused),
        [
            ("amount".into(), "incompatible_type".into(), 3, 2),
            ("code".into(), "missing_field_without_default".into(), 3, 2),
            ("email".into(), "nullable_to_required".into(), 3, 2),
        ]
    );
    let out = r.run(&["schema", "check", &r.write("v3.yaml", V3)]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for needle in [
        "amount",
        "code",
        "email",
        "incompatible_type",
        "v3 reads v2",
        "3 violation(s)",
        "sluice schema mode orders NONE",
    ] {
        assert!(
            stdout.contains(needle),
            "`{needle}` missing from:\n{stdout}"
        );
    }
    let listed = r.json(&["schema", "list"], 0);
    assert_eq!(listed["datasets"][0]["latest_version"], 2);

    // Mode NONE lets it in.
    let mode = r.json(&["schema", "mode", "orders", "none"], 0);
    assert_eq!(
        (mode["mode"].as_str(), mode["mode_is_default"].as_bool()),
        (Some("NONE"), Some(false))
    );
    let v3 = r.register("v3.yaml", V3, 0);
    assert_eq!(v3["version"], 3);

    // BACKWARD_TRANSITIVE refuses v4: fine against v3, not against v1 and v2.
    r.json(&["schema", "mode", "orders", "BACKWARD_TRANSITIVE"], 0);
    let refused = r.register("v4.yaml", V4, 1);
    let found = violations(&refused);
    assert!(!found.is_empty());
    assert!(found.iter().all(|v| v.2 == 4 && v.3 < 3), "{found:?}");
    assert!(
        found.iter().any(|v| v.3 == 1) && found.iter().any(|v| v.3 == 2),
        "{found:?}"
    );
    // ... while plain BACKWARD accepts it.
    r.json(&["schema", "mode", "orders", "BACKWARD"], 0);
    let ok = r.json(&["schema", "check", &r.write("v4.yaml", V4)], 0);
    assert_eq!(ok["version"], 4);

    // The default mode, and a dataset that follows it.
    let shown = r.json(&["schema", "mode"], 0);
    assert_eq!(
        (shown["mode"].as_str(), shown["dataset"].as_str()),
        (Some("BACKWARD"), None)
    );
    r.json(&["schema", "mode", "FULL"], 0);
    let listed = r.json(&["schema", "list"], 0);
    assert_eq!(listed["default_mode"], "FULL");
    assert_eq!(listed["datasets"][0]["mode"], "BACKWARD");

    // diff: classified changes.
    let diff = r.json(&["schema", "diff", "orders@1", "orders@2"], 0);
    let changes: Vec<(String, String, String)> = diff["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["code"].as_str().unwrap_or_default().to_string(),
                c["severity"].as_str().unwrap_or_default().to_string(),
                c["field"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("SL202".into(), "warning".into(), "customer_name".into()),
            ("SL301".into(), "safe".into(), "amount".into()),
            ("SL301".into(), "safe".into(), "qty".into()),
            ("SL101".into(), "safe".into(), "email".into()),
        ]
    );
    assert_eq!(diff["changes"][0]["old_field"], "name");
    assert!(
        diff["changes"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("renamed from `name`"))
    );
    assert_eq!(diff["max_severity"], "warning");
    let out = r.run(&["schema", "diff", "orders@1", "orders@2"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("SL202") && stdout.contains("customer_name (was name)"),
        "{stdout}"
    );

    // plan: expand/contract steps with PostgreSQL DDL only.
    let plan = r.json(
        &[
            "schema",
            "plan",
            "orders@1",
            "orders@2",
            "--dialect",
            "postgres",
        ],
        0,
    );
    assert_eq!(plan["risk"], "MEDIUM");
    assert_eq!(
        (plan["from_version"].as_u64(), plan["to_version"].as_u64()),
        (Some(1), Some(2))
    );
    let steps = plan["steps"].as_array().expect("steps");
    let actions: Vec<(&str, &str, &str)> = steps
        .iter()
        .map(|s| {
            (
                s["phase"].as_str().unwrap_or_default(),
                s["action"].as_str().unwrap_or_default(),
                s["field"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        actions.first(),
        Some(&("expand", "add_column", "customer_name"))
    );
    assert!(actions.contains(&("expand", "alter_type", "amount")));
    assert!(actions.contains(&("expand", "add_column", "email")));
    assert_eq!(actions.last(), Some(&("contract", "drop_column", "name")));
    assert!(steps.iter().all(|s| {
        s["ddl"]
            .as_object()
            .is_some_and(|d| d.len() == 1 && d.contains_key("postgres"))
    }));
    assert_eq!(
        steps[0]["ddl"]["postgres"][0],
        "ALTER TABLE \"orders\" ADD COLUMN \"customer_name\" TEXT"
    );
    let out = r.run(&["schema", "plan", "orders@1", "orders@2"]);
    let (stdout, _) = text(&out);
    for needle in [
        "risk MEDIUM",
        "Delta Lake (Spark SQL):",
        "Apache Iceberg (Spark SQL):",
        "PostgreSQL:",
    ] {
        assert!(
            stdout.contains(needle),
            "`{needle}` missing from:\n{stdout}"
        );
    }
    plan
}

/// Input errors: exit 2, saying what, where and what exists.
fn input_errors(r: &Registry) {
    let bad = r.write(
        "bad.yaml",
        "dataset: orders\nfields:\n  - {name: id, type: int64\n  - oops\n",
    );
    let out = r.run(&["schema", "register", &bad]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // the flow mapping opened on line 3 swallows line 4: its value is where YAML fails
    assert!(
        stderr.contains("bad.yaml:3:22:"),
        "file:line:col missing: {stderr}"
    );
    let broken = r.write(
        "broken.yaml",
        "dataset: orders\nfields:\n  - name: id\n   type: [int64\n",
    );
    let out = r.run(&["schema", "register", &broken]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("broken.yaml:3:5: fields[0]: missing field `type`"),
        "file:line missing: {stderr}"
    );
    let unknown_field = r.write(
        "typo.yaml",
        "dataset: orders\nfields:\n  - {name: id, type: int64, nullabel: false}\n",
    );
    let out = r.run(&["schema", "check", &unknown_field]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("typo.yaml:3:") && stderr.contains("nullabel"),
        "{stderr}"
    );

    let out = r.run(&["schema", "show", "nope@1"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no dataset `nope`") && stderr.contains("orders"),
        "{stderr}"
    );
    let out = r.run(&["schema", "diff", "orders@1", "orders@9"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("orders has no version 9: it has versions 1..3"),
        "{stderr}"
    );
    let out = r.run(&["schema", "mode", "orders", "SIDEWAYS"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("BACKWARD_TRANSITIVE"),
        "says which modes exist: {stderr}"
    );
    let out = r.run(&["schema", "register", "missing.yaml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn registry_on_sqlite() {
    let r = Registry::sqlite();
    registry_story(&r);
    input_errors(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_on_postgres() -> TestResult {
    let Some(url) = testing::fresh_postgres_url().await? else {
        eprintln!("SLUICE_TEST_POSTGRES=skip: not testing PostgreSQL");
        return Ok(());
    };
    let r = Registry::with_store(url.clone());
    let plan = tokio::task::spawn_blocking(move || {
        let plan = registry_story(&r);
        input_errors(&r);
        (plan, r)
    })
    .await?;
    // The plan's DDL runs on the store's own database, on a table made from v1.
    let (plan, r) = plan;
    let mut conn = PgConnection::connect(&url).await?;
    apply_plan(
        &mut conn,
        "orders",
        &r.schema("orders@1"),
        &r.schema("orders@2"),
        &plan,
    )
    .await?;
    drop(conn);
    let _ = testing::drop_postgres_database(&url).await;
    Ok(())
}

// ---- every PostgreSQL statement of generated plans, executed ----

/// A value of type `t` as a PostgreSQL literal the column's type accepts. Text values are
/// digits so a text -> number migration has something that converts.
fn sample(t: &FieldType) -> String {
    match t {
        FieldType::Bool => "true".into(),
        FieldType::Int8 | FieldType::Int16 | FieldType::Int32 | FieldType::Int64 => "'7'".into(),
        FieldType::Float32 | FieldType::Float64 => "'1.5'".into(),
        FieldType::Decimal { .. } => "'12.34'".into(),
        FieldType::String => "'42'".into(),
        FieldType::Binary => "'\\x3432'".into(),
        FieldType::Date => "'2024-01-02'".into(),
        FieldType::Timestamp { .. } => "'2024-01-02 03:04:05'".into(),
        FieldType::List(_) | FieldType::Struct(_) => "NULL".into(),
    }
}

fn create_table(table: &str, schema: &Schema) -> String {
    let d = Dialect::Postgres;
    let columns: Vec<String> = schema
        .fields
        .iter()
        .map(|f| {
            format!(
                "{} {}{}",
                d.quote_ident(&f.name),
                d.type_name(&f.field_type),
                if f.nullable { "" } else { " NOT NULL" }
            )
        })
        .collect();
    format!(
        "CREATE TABLE {} ({})",
        d.quote_table(table),
        columns.join(", ")
    )
}

/// (column, type as PostgreSQL prints it, NOT NULL), sorted: the shape to compare.
async fn columns_of(
    conn: &mut PgConnection,
    table: &str,
) -> Result<Vec<(String, String, bool)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null \
         FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(Dialect::Postgres.quote_table(table))
    .fetch_all(&mut *conn)
    .await?;
    let mut out: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get("name"), r.get("type"), r.get("not_null")))
        .collect();
    out.sort();
    Ok(out)
}

/// Creates `table` from `from` with one full row, runs every PostgreSQL statement of every
/// step of `plan` in order (validation queries must find nothing wrong), and checks the table
/// ends up shaped exactly like `to`.
async fn apply_plan(
    conn: &mut PgConnection,
    table: &str,
    from: &Schema,
    to: &Schema,
    plan: &Value,
) -> TestResult {
    let d = Dialect::Postgres;
    conn.execute(create_table(table, from).as_str()).await?;
    let names: Vec<String> = from.fields.iter().map(|f| d.quote_ident(&f.name)).collect();
    let values: Vec<String> = from.fields.iter().map(|f| sample(&f.field_type)).collect();
    conn.execute(
        format!(
            "INSERT INTO {} ({}) VALUES ({})",
            d.quote_table(table),
            names.join(", "),
            values.join(", ")
        )
        .as_str(),
    )
    .await?;

    let mut executed = 0;
    for step in plan["steps"].as_array().ok_or("plan has no steps")? {
        let action = step["action"].as_str().unwrap_or_default();
        let field = step["field"].as_str().unwrap_or_default();
        let statements = step["ddl"]["postgres"]
            .as_array()
            .ok_or("step without postgres DDL")?;
        if action == "backfill" && statements.is_empty() {
            // The plan leaves the value to the operator (no default): be that operator.
            let t = &to
                .field(field)
                .ok_or("backfilled field not in the new schema")?
                .field_type;
            conn.execute(
                format!(
                    "UPDATE {} SET {} = {}",
                    d.quote_table(table),
                    d.quote_ident(field),
                    sample(t)
                )
                .as_str(),
            )
            .await?;
        }
        for statement in statements {
            let sql = statement.as_str().ok_or("statement is not text")?;
            if sql.starts_with("SELECT COUNT(*)") {
                let found: i64 = sqlx::query_scalar(sql)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| {
                        format!("step {} ({action} {field}): {sql}: {e}", step["number"])
                    })?;
                assert_eq!(
                    found, 0,
                    "step {} found {found} bad rows: {sql}",
                    step["number"]
                );
            } else {
                conn.execute(sql).await.map_err(|e| {
                    format!("step {} ({action} {field}): {sql}: {e}", step["number"])
                })?;
            }
            executed += 1;
        }
    }
    assert!(
        executed > 0,
        "the plan for {table} had no PostgreSQL statement to run"
    );
    eprintln!("{table}: {executed} PostgreSQL statement(s) executed");

    // The migrated table has the new version's columns, types and NOT NULLs.
    let reference = format!("{table}__expected");
    conn.execute(create_table(&reference, to).as_str()).await?;
    assert_eq!(
        columns_of(conn, table).await?,
        columns_of(conn, &reference).await?,
        "{table} after its plan is not shaped like the new version"
    );
    let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", d.quote_table(table)))
        .fetch_one(&mut *conn)
        .await?;
    assert_eq!(rows, 1, "the row survived the migration");
    Ok(())
}

/// (dataset/table, v1 fields, v2 fields): every change kind a plan turns into DDL.
const CASES: &[(&str, &str, &str)] = &[
    (
        "ddl_add",
        "[{name: id, type: int64, nullable: false}]",
        "[{name: id, type: int64, nullable: false},
          {name: note, type: string, doc: \"it's a \\\"note\\\"\"},
          {name: status, type: string, nullable: false, default: \"it's new\"},
          {name: placed, type: date, default: \"2024-05-01\"},
          {name: score, type: \"decimal(6,2)\", default: \"1.50\"},
          {name: region, type: string, nullable: false}]",
    ),
    (
        "ddl_rename",
        "[{name: id, type: int64, nullable: false}, {name: name, type: string, nullable: false},
          {name: qty, type: int32}, {name: code, type: int64}]",
        "[{name: id, type: int64, nullable: false},
          {name: customer_name, type: string, nullable: false, aliases: [name]},
          {name: quantity, type: int64, aliases: [qty]},
          {name: code_text, type: string, aliases: [code]}]",
    ),
    (
        "ddl_drop",
        "[{name: id, type: int64, nullable: false}, {name: legacy, type: string, nullable: false}, {name: old, type: date}]",
        "[{name: id, type: int64, nullable: false}]",
    ),
    (
        "ddl_widen",
        "[{name: a, type: int32, nullable: false}, {name: b, type: float32}, {name: c, type: \"decimal(10,2)\"},
          {name: d, type: int32}, {name: e, type: date, nullable: false}, {name: f, type: string}, {name: g, type: int8},
          {name: h, type: binary}]",
        "[{name: a, type: int64, nullable: false}, {name: b, type: float64}, {name: c, type: \"decimal(12,2)\"},
          {name: d, type: float64}, {name: e, type: timestamp, nullable: false}, {name: f, type: binary}, {name: g, type: int32},
          {name: h, type: string}]",
    ),
    (
        "ddl_narrow",
        "[{name: a, type: int64, nullable: false}, {name: b, type: float64}, {name: c, type: \"decimal(12,2)\"},
          {name: d, type: string}, {name: e, type: int64}, {name: f, type: timestamp}]",
        "[{name: a, type: int32, nullable: false}, {name: b, type: float32}, {name: c, type: \"decimal(10,2)\"},
          {name: d, type: int64}, {name: e, type: string}, {name: f, type: date}]",
    ),
    (
        "ddl_nullability",
        "[{name: a, type: int64}, {name: b, type: string, nullable: false}, {name: c, type: int32, default: 1},
          {name: d, type: string, doc: old doc}, {name: e, type: bool}]",
        "[{name: a, type: int64, nullable: false}, {name: b, type: string}, {name: c, type: int32, default: 2},
          {name: d, type: string, doc: \"new 'doc'\", deprecated: true}, {name: e, type: bool, nullable: false, default: false}]",
    ),
    (
        "select",
        "[{name: order id, type: int32, nullable: false}, {name: '\"weird\"', type: int64},
          {name: select, type: string}, {name: from, type: int32}, {name: \"it's\", type: string}]",
        "[{name: order id, type: int64, nullable: false}, {name: 'we\"ird 2', type: int64, aliases: ['\"weird\"']},
          {name: from, type: string}, {name: \"it's\", type: string, nullable: false},
          {name: group, type: string, default: \"o'clock\", doc: \"a \\\"quoted\\\" doc\"}]",
    ),
];

/// The acceptance point: every PostgreSQL statement the plans generate runs for real, in order,
/// on a real table, and leaves it shaped like the new version. Plans come from the binary
/// (`schema plan --dialect postgres --json`) over a registry that holds both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ddl_of_every_plan_runs_for_real() -> TestResult {
    let Some(url) = testing::fresh_postgres_url().await? else {
        eprintln!("SLUICE_TEST_POSTGRES=skip: not testing PostgreSQL");
        return Ok(());
    };
    let r = Registry::sqlite();
    let mut conn = PgConnection::connect(&url).await?;
    // The registry may refuse some of these as incompatible: the plan is what is tested here.
    r.json(&["schema", "mode", "NONE"], 0);
    for (dataset, v1, v2) in CASES {
        let yaml = |fields: &str| format!("dataset: {dataset}\nfields: {fields}\n");
        r.register(&format!("{dataset}.v1.yaml"), &yaml(v1), 0);
        let v2_out = r.register(&format!("{dataset}.v2.yaml"), &yaml(v2), 0);
        assert_eq!(v2_out["version"], 2, "{dataset}: {v2_out}");
        let plan = r.json(
            &[
                "schema",
                "plan",
                &format!("{dataset}@1"),
                &format!("{dataset}@2"),
                "--dialect",
                "postgres",
            ],
            0,
        );
        let from = r.schema(&format!("{dataset}@1"));
        let to = r.schema(&format!("{dataset}@2"));
        apply_plan(&mut conn, dataset, &from, &to, &plan)
            .await
            .map_err(|e| format!("{dataset}: {e}\nplan: {plan:#}"))?;
    }
    drop(conn);
    let _ = testing::drop_postgres_database(&url).await;
    Ok(())
}

#[test]
fn help_lists_the_subcommands() {
    let out = Command::new(BIN)
        .args(["schema", "--help"])
        .output()
        .expect("sluice");
    let (stdout, _) = text(&out);
    for sub in ["register", "check", "list", "show", "diff", "plan", "mode"] {
        assert!(stdout.contains(sub), "{sub} missing from:\n{stdout}");
    }
    assert!(Path::new(BIN).exists());
}

// ---- every Delta statement of generated plans, applied through delta-rs ----

/// A JSON value of type `t` for a v1 row (text digits, so conversions have work to do).
fn json_sample(t: &FieldType) -> Value {
    match t {
        FieldType::Bool => Value::Bool(true),
        FieldType::Int8 | FieldType::Int16 | FieldType::Int32 | FieldType::Int64 => 7.into(),
        FieldType::Float32 | FieldType::Float64 => 1.5.into(),
        FieldType::Decimal { .. } => "12.34".into(),
        FieldType::String => "42".into(),
        FieldType::Binary => "42".into(),
        FieldType::Date => "2024-01-02".into(),
        // Midnight, so a timestamp -> date narrowing has a value that fits.
        FieldType::Timestamp { .. } => "2024-01-02T00:00:00Z".into(),
        FieldType::List(_) | FieldType::Struct(_) => Value::Null,
    }
}

/// A Spark SQL literal of type `t`, for backfills the plan leaves to the operator.
fn spark_sample(t: &FieldType) -> String {
    match t {
        FieldType::Bool => "true".into(),
        FieldType::String => "'42'".into(),
        FieldType::Date => "CAST('2024-01-02' AS DATE)".into(),
        other => format!("CAST(7 AS {})", Dialect::Delta.type_name(other)),
    }
}

/// The acceptance point for Delta: a real Delta table is made from v1 (one full row), every
/// Delta statement of the plan is applied through delta-rs in order (validation queries run
/// by DataFusion must find nothing wrong), the changes delta-rs cannot make in place are done
/// by `schema migrate`'s rewrite, and the table ends with v2's columns and its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_ddl_of_every_plan_is_applied_through_delta_rs() -> TestResult {
    use sluice_engine::ddl::{Applied, apply_delta_statement};
    let r = Registry::sqlite();
    r.json(&["schema", "mode", "NONE"], 0);
    let mut in_place = 0;
    let mut unsupported = 0;
    for (dataset, v1, v2) in CASES {
        let yaml = |fields: &str| format!("dataset: {dataset}\nfields: {fields}\n");
        r.register(&format!("{dataset}.v1.yaml"), &yaml(v1), 0);
        r.register(&format!("{dataset}.v2.yaml"), &yaml(v2), 0);
        let plan = r.json(
            &[
                "schema",
                "plan",
                &format!("{dataset}@1"),
                &format!("{dataset}@2"),
                "--dialect",
                "delta",
            ],
            0,
        );
        let from = r.schema(&format!("{dataset}@1"));
        let to = r.schema(&format!("{dataset}@2"));
        let row: serde_json::Map<String, Value> = from
            .fields
            .iter()
            .map(|f| (f.name.clone(), json_sample(&f.field_type)))
            .collect();
        let batch = sluice_schema::convert::json_to_batch(&[Value::Object(row)], &from)?;
        let url = sluice_engine::sink::table_url(dataset, r.dir.path())?;
        // Created by delta-rs from the v1 batch: its types and NOT NULLs (no field metadata).
        let plain = std::sync::Arc::new(sluice_engine::arrow::datatypes::Schema::new(
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_metadata(Default::default()))
                .collect::<Vec<_>>(),
        ));
        let batch =
            sluice_engine::arrow::array::RecordBatch::try_new(plain, batch.columns().to_vec())?;
        sluice_engine::deltalake::DeltaTable::try_from_url(url.clone())
            .await?
            .write(vec![batch])
            .await?;

        let mut rewrite = Vec::new();
        for step in plan["steps"].as_array().ok_or("plan has no steps")? {
            let action = step["action"].as_str().unwrap_or_default();
            let field = step["field"].as_str().unwrap_or_default();
            let statements = step["ddl"]["delta"].as_array().ok_or("no delta DDL")?;
            let mut sqls: Vec<String> = statements
                .iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect();
            if action == "backfill" && sqls.is_empty() {
                let t = &to
                    .field(field)
                    .ok_or("backfilled field not in v2")?
                    .field_type;
                sqls.push(format!(
                    "UPDATE {} SET {} = {}",
                    Dialect::Delta.quote_table(dataset),
                    Dialect::Delta.quote_ident(field),
                    spark_sample(t)
                ));
            }
            if step["requires_rewrite"] == true {
                rewrite.push(format!("step {}", step["number"]));
            }
            for sql in sqls {
                let applied = apply_delta_statement(&url, &sql).await.map_err(|e| {
                    format!("{dataset} step {} ({action} {field}): {e}", step["number"])
                })?;
                match applied {
                    Applied::Query(found) => {
                        assert_eq!(found.unwrap_or(0), 0, "{dataset}: {sql} found bad rows")
                    }
                    Applied::InPlace(_) => in_place += 1,
                    Applied::NeedsRewrite(why) => rewrite.push(why),
                    Applied::Unsupported(why) => {
                        assert!(
                            sql.contains("allowColumnDefaults")
                                || sql.contains("enableTypeWidening")
                                || sql.contains("DEFAULT"),
                            "{dataset}: only column defaults and type widening are beyond delta-rs, not {sql}: {why}"
                        );
                        unsupported += 1;
                    }
                }
            }
        }
        if !rewrite.is_empty() {
            let report = sluice_engine::migrate::migrate_table(
                &url,
                (1, &from),
                (2, &to),
                Default::default(),
                |_| {},
            )
            .await
            .map_err(|e| format!("{dataset}: the rewrite for {rewrite:?}: {e}"))?;
            assert_eq!(report.rows, 1, "{dataset}");
        }
        let info = sluice_engine::sink::DeltaSink::new(url.clone())
            .describe()
            .await?
            .ok_or("table vanished")?;
        let mut got: Vec<String> = info
            .schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut want: Vec<String> = to.fields.iter().map(|f| f.name.clone()).collect();
        got.sort();
        want.sort();
        assert_eq!(
            got, want,
            "{dataset}: columns after the plan; rewrites: {rewrite:?}"
        );
        let rows = sluice_engine::sink::DeltaSink::new(url).read_all().await?;
        assert_eq!(
            rows.iter().map(|b| b.num_rows()).sum::<usize>(),
            1,
            "{dataset}"
        );
        eprintln!("{dataset}: applied; rewritten for {rewrite:?}");
    }
    eprintln!("{in_place} statement(s) applied in place, {unsupported} beyond delta-rs");
    assert!(
        in_place >= 10,
        "only {in_place} statements applied in place"
    );
    Ok(())
}
