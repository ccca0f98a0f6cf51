//! `sluice diff TABLE_A TABLE_B --key COLS`: compare two Delta tables by key.

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// First table (path or URL).
    pub table_a: String,
    /// Second table (path or URL).
    pub table_b: String,
    /// Key columns, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub key: Vec<String>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    Err(super::InputError("sluice diff is not built yet".into()).into())
}
