//! `sluice diff TABLE_A TABLE_B --key COLS`: compare two Delta tables by key.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_engine::diff::{DiffOptions, DiffProgress, DiffReport, KeyValues, diff_tables};

#[derive(Debug, Args)]
#[command(after_help = "\
Compares checksums of key buckets first and reads rows again only in buckets that differ, so \
similar tables compare about as fast as they can be scanned twice.

Exit codes (as diff(1)): 0 the tables are identical, 1 they differ (rows, columns or repeated \
keys), 2 usage or input error (missing table, unknown key column) or any other trouble.")]
pub struct DiffArgs {
    /// First table (path relative to the working directory, or URL).
    pub table_a: String,
    /// Second table (path relative to the working directory, or URL).
    pub table_b: String,
    /// Key columns, comma-separated: what identifies a row in both tables.
    #[arg(long, value_delimiter = ',', required = true)]
    pub key: Vec<String>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    /// Buckets the key space is cut into (default: about one per 2,000 rows).
    #[arg(long)]
    pub buckets: Option<u64>,
    /// Sample rows shown per kind of difference and per changed column.
    #[arg(long, default_value_t = 5)]
    pub samples: usize,
    /// Look for repeated keys only where the tables differ (faster on big tables; keys repeated
    /// identically in both tables then go unreported).
    #[arg(long)]
    pub no_unique_check: bool,
}

pub async fn diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let key: Vec<String> = args
        .key
        .iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    if args.buckets == Some(0) {
        return Err(super::InputError("--buckets must be at least 1".into()).into());
    }
    let opts = DiffOptions {
        buckets: args.buckets,
        samples: args.samples,
        check_unique_keys: !args.no_unique_check,
    };
    let bar = progress_bar();
    let report = diff_tables(&args.table_a, &args.table_b, &key, opts, |p| {
        if let Some(bar) = &bar {
            show(bar, &p);
        }
    })
    .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    // Any failure is exit 2, as diff(1) does: 1 must mean "the tables differ" and nothing else.
    let report = report.map_err(|e| super::InputError(format!("sluice diff: {e}")))?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert(
                "identical".into(),
                serde_json::Value::Bool(!report.has_differences()),
            );
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.has_differences() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A bar on stderr when it is a terminal; nothing when piped (scripts read stdout).
fn progress_bar() -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} {msg:<34} [{bar:30}] {human_pos}/{human_len} rows ({eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(120));
    Some(bar)
}

fn show(bar: &ProgressBar, p: &DiffProgress) {
    match p {
        DiffProgress::Checksums {
            rows_done,
            rows_total,
        } => {
            bar.set_message("checksumming key buckets");
            bar.set_length(*rows_total);
            bar.set_position(*rows_done);
        }
        DiffProgress::DrillDown {
            buckets,
            rows_done,
            rows_total,
        } => {
            bar.set_message(format!("reading {buckets} differing buckets"));
            bar.set_length(*rows_total);
            bar.set_position(*rows_done);
        }
        DiffProgress::Classifying => bar.set_message("comparing rows"),
    }
}

fn render(r: &DiffReport) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "A: {}   B: {}   key: {}",
        r.table_a,
        r.table_b,
        r.key.join(", ")
    ));
    line(format!(
        "rows: A {}, B {}; {} columns compared",
        thousands(r.rows_a),
        thousands(r.rows_b),
        r.compared_columns.len()
    ));
    line(String::new());
    if !r.schema.is_empty() {
        line("schema".into());
        for c in &r.schema.only_in_a {
            line(format!("  only in A   {} {}", c.name, c.data_type));
        }
        for c in &r.schema.only_in_b {
            line(format!("  only in B   {} {}", c.name, c.data_type));
        }
        for c in &r.schema.type_changes {
            line(format!(
                "  type        {}: {} in A, {} in B (not compared)",
                c.name, c.a, c.b
            ));
        }
        line(String::new());
    }
    let rows = [
        (
            "only in A".to_string(),
            r.only_in_a.count,
            keys(&r.only_in_a.samples),
        ),
        (
            "only in B".to_string(),
            r.only_in_b.count,
            keys(&r.only_in_b.samples),
        ),
        ("changed".to_string(), r.changed.count, String::new()),
    ];
    let mut table: Vec<(String, u64, String)> = rows.into_iter().collect();
    for c in &r.changed.columns {
        let samples = c
            .samples
            .iter()
            .map(|s| {
                format!(
                    "{}: {} -> {}",
                    key(&s.key),
                    value(s.a.as_deref()),
                    value(s.b.as_deref())
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        table.push((format!("  {}", c.column), c.count, samples));
    }
    let width = table
        .iter()
        .map(|(n, _, _)| n.len())
        .max()
        .unwrap_or(0)
        .max(10);
    line(format!("{:<width$}  {:>12}  samples", "difference", "rows"));
    for (name, count, samples) in table {
        line(
            format!("{name:<width$}  {:>12}  {samples}", thousands(count))
                .trim_end()
                .to_string(),
        );
    }
    for d in &r.duplicates {
        let samples = d
            .samples
            .iter()
            .map(|s| format!("{} ({} rows)", key(&s.key), s.rows))
            .collect::<Vec<_>>()
            .join(", ");
        line(format!(
            "repeated keys in {}: {} keys on {} rows, e.g. {samples}",
            if d.table == sluice_engine::diff::Side::A {
                "A"
            } else {
                "B"
            },
            thousands(d.keys),
            thousands(d.rows)
        ));
    }
    line(String::new());
    line(format!(
        "{} ({} of {} key buckets differed, {} rows compared one by one; {:.1} s)",
        if r.has_differences() {
            "the tables differ"
        } else {
            "the tables are identical"
        },
        thousands(r.buckets.drilled),
        thousands(r.buckets.total),
        thousands(r.buckets.rows_drilled),
        r.elapsed_ms as f64 / 1000.0
    ));
    out
}

fn key(k: &KeyValues) -> String {
    k.iter()
        .map(|(c, v)| format!("{c}={}", value(v.as_deref())))
        .collect::<Vec<_>>()
        .join(",")
}

fn keys(samples: &[KeyValues]) -> String {
    samples.iter().map(key).collect::<Vec<_>>().join(", ")
}

/// A value for a terminal: NULL spelled out, long values cut.
fn value(v: Option<&str>) -> String {
    match v {
        None => "NULL".into(),
        Some(s) if s.chars().count() > 40 => {
            format!("{}...", s.chars().take(37).collect::<String>())
        }
        Some(s) => s.to_string(),
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{thousands, value};

    #[test]
    fn numbers_and_values_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(10_000_000), "10,000,000");
        assert_eq!(value(None), "NULL");
        assert_eq!(value(Some(&"x".repeat(50))).len(), 40);
    }
}
