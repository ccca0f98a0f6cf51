//! `sluice schema ...`: the dataset schema registry.
//!
//! The decisions (ids, fingerprints, compatibility) are `sluice_schema::registry`'s; the history
//! and the modes live in the store. This module reads one, asks the other, and reports.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use sluice_app::registry::{self, ModeOf, RegistrationReport};
use sluice_schema::compat::Violation;
use sluice_schema::diff::{Change, max_severity};
use sluice_schema::{CompatibilityMode, Dialect, Schema};

use super::InputError;
use crate::cli::StoreArg;

#[derive(Debug, Args)]
pub struct SchemaArgs {
    #[command(subcommand)]
    pub command: SchemaCommand,
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Register a schema file (YAML) as the next version of its dataset. The same schema again
    /// is its existing version; an incompatible one is refused with every violation (exit 1).
    Register {
        /// The schema file: `dataset:` and `fields:`.
        file: PathBuf,
        #[command(flatten)]
        store: StoreArg,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What `register` would do with a schema file, without writing anything (exit 1 if it
    /// would be refused).
    Check {
        file: PathBuf,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        json: bool,
    },
    /// Every dataset with its latest version and compatibility mode.
    List {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        json: bool,
    },
    /// The fields of one version: DATASET (the latest) or DATASET@VERSION.
    Show {
        version: String,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        json: bool,
    },
    /// The classified changes from one version to another (DATASET@A DATASET@B).
    Diff {
        from: String,
        to: String,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        json: bool,
    },
    /// The expand/contract migration plan from one version to another, with DDL and risk.
    Plan {
        from: String,
        to: String,
        /// Which DDL to show.
        #[arg(long, value_enum, default_value_t = DialectChoice::All)]
        dialect: DialectChoice,
        /// The table the DDL names (default: the dataset name; dots separate a namespace).
        #[arg(long)]
        table: Option<String>,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        json: bool,
    },
    /// Rewrite a Delta table written under DATASET@A into DATASET@B: the data steps of a plan
    /// that Delta cannot apply in place (type changes, renames, drops). Converts file by file
    /// with a progress bar, commits the whole rewrite atomically, resumes after a crash.
    Migrate {
        from: String,
        to: String,
        /// The Delta table to rewrite (a path or file:// URL).
        #[arg(long)]
        table: String,
        /// Convert every row (finding values that cannot be carried over) but write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Convert at most N files in this run, then stop without committing (run again to
        /// continue): migrates a big table in pieces.
        #[arg(long, value_name = "N")]
        max_files: Option<usize>,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        json: bool,
    },
    /// Show or set compatibility modes. `mode` shows the default, `mode MODE` sets it,
    /// `mode DATASET` shows a dataset's, `mode DATASET MODE` sets it. Modes: NONE, BACKWARD,
    /// BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE.
    Mode {
        /// `[DATASET] [MODE]`
        #[arg(num_args = 0..=2, value_name = "DATASET|MODE")]
        args: Vec<String>,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DialectChoice {
    Delta,
    Iceberg,
    Postgres,
    All,
}

impl DialectChoice {
    fn dialects(self) -> Vec<Dialect> {
        match self {
            DialectChoice::Delta => vec![Dialect::Delta],
            DialectChoice::Iceberg => vec![Dialect::Iceberg],
            DialectChoice::Postgres => vec![Dialect::Postgres],
            DialectChoice::All => Dialect::ALL.to_vec(),
        }
    }
}

pub async fn schema(args: SchemaArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SchemaCommand::Register { file, store, json } => {
            register(&file, &store.store, json, false).await
        }
        SchemaCommand::Check { file, store, json } => {
            register(&file, &store.store, json, true).await
        }
        SchemaCommand::List { store, json } => list(&store.store, json).await,
        SchemaCommand::Show {
            version,
            store,
            json,
        } => show(&version, &store.store, json).await,
        SchemaCommand::Diff {
            from,
            to,
            store,
            json,
        } => diff(&from, &to, &store.store, json).await,
        SchemaCommand::Plan {
            from,
            to,
            dialect,
            table,
            store,
            json,
        } => plan(&from, &to, dialect, table.as_deref(), &store.store, json).await,
        SchemaCommand::Mode { args, store, json } => mode(&args, &store.store, json).await,
        SchemaCommand::Migrate {
            from,
            to,
            table,
            dry_run,
            max_files,
            store,
            json,
        } => migrate(&from, &to, &table, dry_run, max_files, &store.store, json).await,
    }
}

async fn register(
    file: &Path,
    store_url: &str,
    json: bool,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    use sluice_app::registry::{Outcome, RegisterError, register_schema};
    let schema = load_schema_file(file)?;
    let store = super::open_store(store_url).await?;
    let r = register_schema(&store, &schema, dry_run)
        .await
        .map_err(|e| match e {
            RegisterError::Invalid(m) => InputError(format!("{}: {m}", file.display())).into(),
            other => anyhow::Error::new(other).context(format!(
                "registering {} from {}",
                schema.dataset,
                file.display()
            )),
        })?;
    let report = r.report();
    if json {
        let mut out = serde_json::to_value(&report)?;
        out["file"] = json!(file.display().to_string());
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::from(u8::from(report.outcome == "refused")));
    }
    match &r.outcome {
        Outcome::Refused(violations) => {
            print_refused(file, &report, violations, dry_run);
            Ok(ExitCode::from(1))
        }
        _ => {
            print_accepted(file, &report, r.mode);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_accepted(file: &Path, report: &RegistrationReport, mode: CompatibilityMode) {
    let version = report.version.unwrap_or_default();
    let checked = match report.latest_version {
        None => "its first version".to_string(),
        Some(_) if mode == CompatibilityMode::None => {
            "mode NONE: compatibility not checked".to_string()
        }
        Some(latest) if mode.as_str().ends_with("_TRANSITIVE") && latest > 1 => {
            format!("{mode}-compatible with v1..v{latest}")
        }
        Some(latest) => format!("{mode}-compatible with v{latest}"),
    };
    let dataset = &report.dataset;
    match report.outcome {
        "unchanged" => println!(
            "{dataset}@{version}: unchanged, {} is already registered as version {version}",
            file.display()
        ),
        "would_register" => println!(
            "{dataset}: {} would be registered as version {version} ({checked}); nothing written",
            file.display()
        ),
        _ => println!(
            "{dataset}@{version}: registered from {} ({checked})",
            file.display()
        ),
    }
    if report.outcome != "unchanged" && !report.changes.is_empty() {
        println!("\nchanges from v{}:", report.latest_version.unwrap_or(0));
        print!("{}", changes_table(&report.changes));
    }
}

fn print_refused(
    file: &Path,
    report: &RegistrationReport,
    violations: &[Violation],
    dry_run: bool,
) {
    let verb = if dry_run {
        "would be refused"
    } else {
        "refused"
    };
    println!(
        "{}: {} {verb}: not {}-compatible with the registered versions; {} violation(s):",
        report.dataset,
        file.display(),
        report.mode,
        violations.len()
    );
    let rows: Vec<Vec<String>> = violations
        .iter()
        .map(|v| {
            vec![
                v.field.clone(),
                v.rule.to_string(),
                format!("v{} reads v{}", v.reader_version, v.writer_version),
                v.message.clone(),
            ]
        })
        .collect();
    print!("{}", table(&["FIELD", "RULE", "VERSIONS", "WHY"], &rows));
    println!(
        "\nnext: make the change compatible (give new required fields a default, keep types \
         promotable, add the old name to `aliases` for a rename), or, if every reader and \
         writer moves together, relax the mode: `sluice schema mode {} NONE`",
        report.dataset
    );
}

async fn list(store_url: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = super::open_store(store_url).await?;
    let listing = registry::list(&store).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(ExitCode::SUCCESS);
    }
    let default = &listing.default_mode;
    if listing.datasets.is_empty() {
        println!(
            "no datasets in {} yet (default mode {default}): register one with `sluice schema register SCHEMA.yaml`",
            super::redact(store_url)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = listing
        .datasets
        .iter()
        .map(|d| {
            vec![
                d.dataset.clone(),
                d.latest_version.map_or("-".into(), |v| format!("v{v}")),
                d.versions.to_string(),
                if d.mode_is_default {
                    format!("{} (default)", d.mode)
                } else {
                    d.mode.clone()
                },
                when(d.updated_at),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["DATASET", "LATEST", "VERSIONS", "MODE", "UPDATED"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}

async fn show(reference: &str, store_url: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = super::open_store(store_url).await?;
    let shown = registry::show(&store, reference).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}@{} ({} field(s), registered {}, {})",
        shown.dataset,
        shown.version,
        shown.schema.fields.len(),
        when(shown.created_at),
        shown.fingerprint
    );
    if let Some(doc) = &shown.schema.doc {
        println!("{doc}");
    }
    let rows: Vec<Vec<String>> = shown
        .schema
        .fields
        .iter()
        .map(|f| {
            vec![
                f.id.map_or("-".into(), |id| id.to_string()),
                f.name.clone(),
                f.field_type.to_string(),
                if f.nullable { "yes" } else { "no" }.into(),
                f.default.as_ref().map_or(String::new(), Value::to_string),
                f.aliases.join(", "),
                [
                    f.deprecated.then(|| "DEPRECATED".to_string()),
                    f.doc.clone(),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" "),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID", "FIELD", "TYPE", "NULLABLE", "DEFAULT", "ALIASES", "DOC"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

async fn diff(from: &str, to: &str, store_url: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = super::open_store(store_url).await?;
    let (a_record, a) = registry::resolve(&store, from).await?;
    let (b_record, b) = registry::resolve(&store, to).await?;
    let changes = sluice_schema::diff(&a.schema, &b.schema);
    let severity = max_severity(&changes);
    if json {
        let out = json!({
            "from": {"dataset": a_record.dataset, "version": a_record.version},
            "to": {"dataset": b_record.dataset, "version": b_record.version},
            "max_severity": severity,
            "changes": changes,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let header = format!(
        "{}@{} -> {}@{}",
        a_record.dataset, a_record.version, b_record.dataset, b_record.version
    );
    if changes.is_empty() {
        println!("{header}: no changes");
    } else {
        println!("{header}: {} change(s), worst {severity}", changes.len());
        print!("{}", changes_table(&changes));
    }
    Ok(ExitCode::SUCCESS)
}

async fn plan(
    from: &str,
    to: &str,
    dialect: DialectChoice,
    table_name: Option<&str>,
    store_url: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = super::open_store(store_url).await?;
    let (a_record, a) = registry::resolve(&store, from).await?;
    let (_, b) = registry::resolve(&store, to).await?;
    let table_name = table_name.unwrap_or(&a_record.dataset);
    let plan = sluice_schema::plan(table_name, &a.schema, a.version, &b.schema, b.version);
    let dialects = dialect.dialects();
    if json {
        let mut out = serde_json::to_value(&plan)?;
        // Scripts asking for one dialect get only its DDL.
        if let Some(steps) = out.get_mut("steps").and_then(Value::as_array_mut) {
            for step in steps {
                if let Some(ddl) = step.get_mut("ddl").and_then(Value::as_object_mut) {
                    ddl.retain(|name, _| dialects.iter().any(|d| dialect_key(*d) == name));
                }
            }
        }
        out["dialects"] = json!(dialects.iter().map(|d| dialect_key(*d)).collect::<Vec<_>>());
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = String::new();
    for (i, d) in dialects.iter().enumerate() {
        let rendered = plan.render_text(*d);
        if i == 0 {
            text.push_str(&rendered);
            continue;
        }
        // The step table is the same for every dialect; print it once, then each dialect's DDL.
        let marker = format!("\n{}:\n", d.label());
        if let Some(at) = rendered.find(&marker) {
            text.push_str(&rendered[at..]);
        }
    }
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

async fn migrate(
    from: &str,
    to: &str,
    table: &str,
    dry_run: bool,
    max_files: Option<usize>,
    store_url: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = super::open_store(store_url).await?;
    let bar = (!json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "migrating [{bar:30}] {pos}/{len} files, {msg} ({elapsed}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let migration = registry::migrate(
        &store,
        (from, to),
        table,
        &std::env::current_dir()?,
        sluice_engine::migrate::MigrateOptions { dry_run, max_files },
        |p| {
            if let Some(bar) = &bar {
                bar.set_length(p.files_total as u64);
                bar.set_position(p.files_done as u64);
                bar.set_message(format!("{} rows", p.rows_done));
            }
        },
    )
    .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let registry::Migration { label, url, report } = migration?;
    if json {
        let mut out = serde_json::to_value(&report)?;
        out["migration"] = json!(label);
        out["table"] = json!(url.to_string());
        out["dry_run"] = json!(dry_run);
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if report.already_done {
        println!("{label}: {url} was already migrated (nothing to do)");
    } else if report.files_remaining > 0 {
        println!(
            "{label}: converted {} file(s) ({} rows so far); {} file(s) remain: run again to continue (nothing is committed until every file is converted)",
            report.files_read, report.rows, report.files_remaining
        );
    } else if dry_run {
        println!(
            "{label}: dry run: {} rows in {} file(s) convert cleanly; nothing written",
            report.rows, report.files_read
        );
    } else {
        println!(
            "{label}: rewrote {} rows from {} file(s) of version {} into {} file(s); committed as version {}{}",
            report.rows,
            report.files_read,
            report.source_version,
            report.files_written,
            report.committed_version.unwrap_or_default(),
            if report.files_resumed > 0 {
                format!(
                    " ({} file(s) reused from an interrupted run)",
                    report.files_resumed
                )
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn dialect_key(d: Dialect) -> &'static str {
    match d {
        Dialect::Delta => "delta",
        Dialect::Iceberg => "iceberg",
        Dialect::Postgres => "postgres",
    }
}

async fn mode(args: &[String], store_url: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = super::open_store(store_url).await?;
    let parse = |text: &str| -> anyhow::Result<CompatibilityMode> {
        text.parse::<CompatibilityMode>()
            .map_err(|e| InputError(e.to_string()).into())
    };
    let (dataset, set): (Option<&str>, Option<CompatibilityMode>) = match args {
        [] => (None, None),
        // One word: a mode name sets the default, anything else is a dataset to show.
        [word] => match word.parse::<CompatibilityMode>() {
            Ok(m) => (None, Some(m)),
            Err(_) => (Some(word.as_str()), None),
        },
        [dataset, m] => (Some(dataset.as_str()), Some(parse(m)?)),
        _ => {
            return Err(InputError("usage: sluice schema mode [DATASET] [MODE]".into()).into());
        }
    };
    let ModeOf {
        mode: shown,
        is_default,
    } = registry::set_mode(&store, dataset, set).await?;
    if json {
        let out = json!({
            "dataset": dataset,
            "mode": shown,
            "mode_is_default": is_default,
            "changed": set.is_some(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if set.is_some() { "is now" } else { "is" };
    match dataset {
        Some(d) if is_default => println!("{d}: mode {verb} {shown} (the default)"),
        Some(d) => println!("{d}: mode {verb} {shown}"),
        None => println!("the default mode {verb} {shown} (datasets without their own follow it)"),
    }
    Ok(ExitCode::SUCCESS)
}

// ---- helpers ----

fn load_schema_file(file: &Path) -> anyhow::Result<Schema> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        InputError(format!(
            "reading schema file {}: {e}; check the path",
            file.display()
        ))
    })?;
    Ok(registry::parse_schema(&file.display().to_string(), &text)?)
}

fn changes_table(changes: &[Change]) -> String {
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            let field = match &c.old_field {
                Some(old) => format!("{} (was {old})", c.field),
                None => c.field.clone(),
            };
            vec![
                c.code.clone(),
                c.severity.to_string(),
                field,
                c.reason.clone(),
            ]
        })
        .collect();
    table(&["CODE", "SEVERITY", "FIELD", "REASON"], &rows)
}

/// Left-aligned columns; the last one is not padded, so long reasons do not push the rest.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                // Writing to a String cannot fail.
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn when(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis).map_or_else(
        || millis.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    BB\nxyz  1\nq    22\n");
    }
}
