//! `sluice schema ...`: the dataset schema registry.

use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct SchemaArgs {
    #[command(subcommand)]
    pub command: SchemaCommand,
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {}

pub async fn schema(args: SchemaArgs) -> anyhow::Result<ExitCode> {
    match args.command {}
}
