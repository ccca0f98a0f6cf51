use std::path::Path;
use std::process::ExitCode;

/// `sluice validate FILE`: parse, resolve columns, plan the SQL. Prints the output schema and
/// whether the sink table can be opened from here (a warning, not a failure: a spec may be
/// validated where the store's credentials are not; `run` refuses to start without them).
pub async fn validate(file: &Path, json: bool, store_url: &str) -> anyhow::Result<ExitCode> {
    let result = match super::compile(file, 0, store_url).await {
        Ok(p) => {
            let table = p.sink().describe().await;
            Ok((p, table))
        }
        Err(e) => Err(e),
    };
    match (result, json) {
        (Ok((p, table)), false) => {
            println!("{}: valid pipeline {:?}", file.display(), p.name());
            println!("  input columns:  {}", fields(&p.input_schema()));
            println!("  output columns: {}", fields(&p.output_schema()));
            let state = match table {
                Ok(Some(t)) => format!("table at version {}", t.version),
                Ok(None) => "no table yet; the first batch creates it".into(),
                Err(e) => {
                    format!("warning: cannot open it from here ({e}); `run` will refuse to start")
                }
            };
            println!("  sink: {} ({state})", p.sink().url());
            Ok(ExitCode::SUCCESS)
        }
        (Ok((p, table)), true) => {
            let sink_state = match table {
                Ok(Some(t)) => serde_json::json!({"table_version": t.version}),
                Ok(None) => serde_json::json!({"table_version": null}),
                Err(e) => serde_json::json!({"error": e.to_string()}),
            };
            let out = serde_json::json!({
                "valid": true,
                "file": file.display().to_string(),
                "pipeline": p.name(),
                "input": schema_json(&p.input_schema()),
                "output": schema_json(&p.output_schema()),
                "sink": p.sink().url().to_string(),
                "sink_state": sink_state,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::SUCCESS)
        }
        (Err(e), true) => {
            let out = serde_json::json!({
                "valid": false,
                "file": file.display().to_string(),
                "error": e.to_string(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::from(2))
        }
        (Err(e), false) => Err(e),
    }
}

fn fields(schema: &sluice_engine::arrow::datatypes::SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn schema_json(schema: &sluice_engine::arrow::datatypes::SchemaRef) -> serde_json::Value {
    schema
        .fields()
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name(),
                "type": f.data_type().to_string(),
                "nullable": f.is_nullable(),
            })
        })
        .collect()
}
