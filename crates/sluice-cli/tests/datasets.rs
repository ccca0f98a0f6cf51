//! Pipelines that name registered datasets: the source's columns come from the registry, the
//! output is held to the sink dataset's compatibility mode, and both are pinned per version.

mod common;

use common::*;

const RAW: &str = "dataset: orders_raw\nfields:\n  - {name: id, type: int64, nullable: false}\n  - {name: customer, type: int64}\n  - {name: amount, type: float64}\n";
const OUT: &str = "dataset: orders_out\nfields:\n  - {name: id, type: int64, nullable: false}\n  - {name: customer, type: int64}\n  - {name: doubled, type: float64}\n";

fn with_datasets(p: &Project, transform: &str) -> String {
    let spec = format!(
        "pipeline: crash\nsource:\n  files: landing/*.csv\n  dataset: orders_raw\n  settle: 0s\nbatch:\n  max_rows: 100\ntransform: {transform}\nsink:\n  delta: out\n  dataset: orders_out\n"
    );
    p.write("ds.yaml", &spec);
    p.dir.path().join("ds.yaml").display().to_string()
}

fn register_schemas(p: &Project) {
    p.write("raw.yaml", RAW);
    p.write("out.yaml", OUT);
    for f in ["raw.yaml", "out.yaml"] {
        let out = p.run(&["schema", "register", f, "--store", &p.sqlite()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

#[test]
fn columns_come_from_the_source_dataset_and_versions_are_pinned() {
    let p = Project::csv(2, 150, 100, "30s");
    register_schemas(&p);
    let spec = with_datasets(&p, "SELECT id, customer, amount * 2 AS doubled FROM input");
    let out = p.run(&["run", &spec, "--store", &p.sqlite(), "--until-drained"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stored = rt.block_on(async {
        let store = sluice_store::open(&p.sqlite()).await.unwrap();
        store
            .pipeline_version("crash", 1)
            .await
            .unwrap()
            .unwrap()
            .spec
    });
    assert!(stored.contains("orders_raw@1"), "{stored}");
    assert!(stored.contains("orders_out@1"), "{stored}");
    assert!(
        stored.contains("amount: float64"),
        "columns are written out: {stored}"
    );
}

#[test]
fn output_that_breaks_the_sink_dataset_is_refused_before_it_runs() {
    let p = Project::csv(1, 10, 100, "30s");
    register_schemas(&p);
    let spec = with_datasets(
        &p,
        "SELECT id, customer, CAST(amount * 2 AS VARCHAR) AS doubled FROM input",
    );
    for cmd in ["validate", "run"] {
        let mut args = vec![cmd, spec.as_str(), "--store"];
        let store = p.sqlite();
        args.push(&store);
        if cmd == "run" {
            args.push("--until-drained");
        }
        let out = p.run(&args);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("ds.yaml:11:3"), "{err}");
        assert!(
            err.contains("breaks dataset orders_out@1 under BACKWARD"),
            "{err}"
        );
        assert!(err.contains("doubled"), "{err}");
    }
    assert!(!p.dir.path().join("out/_delta_log").exists(), "nothing ran");
}

#[test]
fn unknown_datasets_and_double_declarations_are_input_errors() {
    let p = Project::csv(1, 10, 100, "30s");
    let spec = with_datasets(&p, "SELECT id FROM input");
    let out = p.run(&["validate", &spec, "--store", &p.sqlite()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("dataset orders_raw is not registered"),
        "{}",
        stderr(&out)
    );
    register_schemas(&p);
    let text = std::fs::read_to_string(p.dir.path().join("ds.yaml")).unwrap();
    p.write(
        "ds.yaml",
        &text.replace("  dataset: orders_raw\n", "  dataset: orders_raw@7\n"),
    );
    let out = p.run(&["validate", &spec, "--store", &p.sqlite()]);
    assert!(
        stderr(&out).contains("registered: orders_raw@1"),
        "{}",
        stderr(&out)
    );
    p.write(
        "ds.yaml",
        &text.replace(
            "  dataset: orders_raw\n",
            "  dataset: orders_raw\n  columns: {id: int64}\n",
        ),
    );
    let out = p.run(&["validate", &spec, "--store", &p.sqlite()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("either `columns` or `dataset`"),
        "{}",
        stderr(&out)
    );
}
