//! `sluice`: run data pipelines that scale out and upgrade while they run.

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc keeps freed Arrow buffers for reuse instead of handing them back to the kernel and
/// faulting fresh pages in for the next batch (the system allocator spent ~28% of a batch in
/// page faults in the end-to-end benchmark). `Counting` charges each allocation to the batch
/// whose code made it, for the `peak_memory_bytes` measure (`sluice_core::usage`).
#[global_allocator]
static GLOBAL: sluice_core::usage::Counting<mimalloc::MiMalloc> =
    sluice_core::usage::Counting(mimalloc::MiMalloc);

/// mimalloc options (their enum values in mimalloc 3's `mimalloc.h`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

fn main() -> ExitCode {
    // Batches are short-lived buffers of a few MiB. With transparent huge pages every fresh
    // region is faulted in and zeroed 2 MiB at a time (a third of a batch's CPU went to the
    // kernel's clear_page in the benchmark); and freed pages are kept a second (mimalloc's
    // default is 10 ms) so the next batch reuses them. Idle workers still give memory back.
    // SAFETY: sets process-wide allocator options; called before any thread is started.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000);
    }
    // The allocator reserved its first arena (asking for huge pages) before `main`: turn THP
    // off for the whole process, which the kernel checks at each fault.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    // A reader that stops early (`sluice status | head`) closes the pipe: end quietly, as Unix
    // tools do, instead of panicking in `println!` on EPIPE.
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = cli::Cli::parse();
    // The demo prints its own summary of everything worth a warning.
    let quiet = matches!(args.command, cli::Command::Demo(_));
    cli::init_tracing(args.verbose, quiet);
    log_panics();
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
            eprintln!("error: {}", cmd::render_error(&e));
            ExitCode::from(cmd::exit_code_of(&e))
        }
    }
}

/// Replaces the default panic message (and backtrace) with one log line. A panic inside a
/// dependency is caught where it runs (a batch is retried, a task's error reported); its stack
/// trace on the terminal would only bury what sluice says about it. `-vv` logs the backtrace.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_else(|| "an unknown place".into());
        let payload = info.payload();
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        // delta-rs aborts a Parquet upload whose completion failed (a full disk) and catches
        // the panic object_store's BufWriter raises for that by design; it then returns the
        // write error, which sluice reports. Only a trace of it belongs in the log.
        if at.contains("object_store") && what == "Already shut down" {
            tracing::debug!(
                "object_store panicked at {at} aborting a failed upload (caught by delta-rs)"
            );
        } else {
            tracing::error!("internal error at {at}: {what}");
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!("backtrace:\n{}", std::backtrace::Backtrace::force_capture());
        }
    }));
}
