//! `sluice`: run data pipelines that scale out and upgrade while they run.

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc keeps freed Arrow buffers for reuse instead of handing them back to the kernel and
/// faulting fresh pages in for the next batch (the system allocator spent ~28% of a batch in
/// page faults in the end-to-end benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // The demo prints its own summary of everything worth a warning.
    let quiet = matches!(args.command, cli::Command::Demo(_));
    cli::init_tracing(args.verbose, quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cmd::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cmd::exit_code_of(&e))
        }
    }
}
