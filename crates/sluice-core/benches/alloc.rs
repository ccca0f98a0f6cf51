//! What the counting allocator costs: nanoseconds per allocation-and-free through
//! `Counting<MiMalloc>` (the binary's global allocator, `sluice_core::usage`) against
//! `MiMalloc` alone, with no batch current on the thread (the allocator only reads a
//! thread-local) and with one current (it also updates the batch's atomics), on one thread and
//! on two threads charging one batch at once (a batch's poll and its `spawn_blocking` decode).
//!
//! `cargo bench -p sluice-core --bench alloc` (a plain `main`, figures printed, nothing
//! asserted). `SLUICE_BENCH_OPS` sets the operations per thread and round (default 4,000,000);
//! the best of 5 rounds is reported.
//!
//! The workload is a batch's shape: a window of 1,024 live allocations, each operation freeing
//! the oldest and allocating a new one, sizes drawn from 16 B to 256 KiB (70% under 256 B, 25%
//! under 8 KiB, 5% larger), the same sequence for every allocator.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use mimalloc::MiMalloc;
use sluice_core::usage::{Counting, Metered, Usage};

static PLAIN: MiMalloc = MiMalloc;
static COUNTED: Counting<MiMalloc> = Counting(MiMalloc);

const WINDOW: usize = 1024;

/// The sizes, from a fixed linear congruential sequence.
fn sizes(n: usize) -> Vec<usize> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let r = (x >> 33) as usize;
            match r % 100 {
                0..70 => 16 + r % 240,
                70..95 => 256 + r % (8 << 10),
                _ => (8 << 10) + r % (248 << 10),
            }
        })
        .collect()
}

/// Runs the workload through `a`; returns nanoseconds per operation (one free, one alloc).
fn churn(a: &(dyn GlobalAlloc + Sync), sizes: &[usize]) -> f64 {
    let mut live: Vec<(*mut u8, Layout)> = Vec::with_capacity(WINDOW);
    let started = Instant::now();
    for (i, &size) in sizes.iter().enumerate() {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: a non-zero size; every pointer is freed once, with the layout it was made
        // with, by the allocator that made it.
        unsafe {
            if live.len() == WINDOW {
                let (p, l) = live[i % WINDOW];
                a.dealloc(p, l);
                let q = a.alloc(layout);
                *q = i as u8; // touch it, as a real allocation would be
                live[i % WINDOW] = (black_box(q), layout);
            } else {
                let q = a.alloc(layout);
                *q = i as u8;
                live.push((black_box(q), layout));
            }
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / sizes.len() as f64;
    for (p, l) in live {
        // SAFETY: as above.
        unsafe { a.dealloc(p, l) };
    }
    ns
}

/// Polls a ready future to completion on this thread.
fn run<F: std::future::Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// `threads` threads each run the workload through `a` at once, with `usage` current on each
/// (one shared batch) or none; the mean of their nanoseconds per operation.
fn measure(
    a: &'static (dyn GlobalAlloc + Sync),
    threads: usize,
    usage: Option<&Arc<Usage>>,
    sizes: &Arc<Vec<usize>>,
) -> f64 {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (sizes, usage) = (sizes.clone(), usage.cloned());
            std::thread::spawn(move || match usage {
                Some(u) => run(Metered::new(u, async { churn(a, &sizes) })),
                None => churn(a, &sizes),
            })
        })
        .collect();
    let ns: f64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    ns / threads as f64
}

fn main() {
    let ops: usize = std::env::var("SLUICE_BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000_000);
    let sizes = Arc::new(sizes(ops));
    let usage = Arc::new(Usage::new());
    println!(
        "counting allocator: ns per free + alloc, best of 5 rounds of {ops} operations per thread"
    );
    println!(
        "{:>8}  {:>10}  {:>16}  {:>14}  {:>10}  {:>10}",
        "threads", "mimalloc", "counting, idle", "counting, batch", "idle/base", "batch/base"
    );
    for threads in [1, 2] {
        let best = |a: &'static (dyn GlobalAlloc + Sync), u: Option<&Arc<Usage>>| {
            (0..5)
                .map(|_| measure(a, threads, u, &sizes))
                .fold(f64::INFINITY, f64::min)
        };
        let base = best(&PLAIN, None);
        let idle = best(&COUNTED, None);
        let batch = best(&COUNTED, Some(&usage));
        println!(
            "{threads:>8}  {base:>10.1}  {idle:>16.1}  {batch:>14.1}  {:>10.2}  {:>10.2}",
            idle / base,
            batch / base
        );
    }
    // The batch's figures are real: the counted allocations made it hold something.
    println!(
        "peak charged to the batch: {} bytes",
        usage.peak_memory_bytes().unwrap_or(0)
    );
}
