//! What one batch cost: CPU time and peak memory, measured where the batch's own code runs.
//!
//! Several batches run at once in one process, on threads they share (tokio's workers and its
//! blocking pool), so neither the process's nor a thread's totals say what one batch cost. A
//! [`Usage`] is charged only while the batch's code is on a thread:
//!
//! - [`Metered`] wraps the batch's future: each poll reads the thread's CPU clock
//!   (`CLOCK_THREAD_CPUTIME_ID`) before and after and charges the difference. A tokio worker
//!   thread runs one task's poll at a time, so the difference is this batch's work and no
//!   other's.
//! - [`carried`] wraps a closure sent to another thread (`spawn_blocking`: file decoding) so
//!   that it is charged to the batch that sent it.
//! - [`Counting`] is a global allocator wrapper: while a usage is current on a thread, bytes
//!   allocated there are added to its live bytes and bytes freed there taken off; its peak is
//!   the most the batch held at once. Without it (a library test, a binary that does not
//!   install it) peak memory is unknown ([`Usage::peak_memory_bytes`] is `None`), never 0.
//!
//! Not counted: tasks the batch's code spawns onto the runtime (they run as tasks of their
//! own), and memory allocated outside the batch's code that it only reads (a cached spec).
//!
//! ```
//! use std::sync::Arc;
//! use sluice_core::usage::{Metered, Usage};
//! let usage = Arc::new(Usage::new());
//! let spin = async { (0..1_000_000u64).map(|i| i.wrapping_mul(i)).fold(0u64, |a, b| a ^ b) };
//! let fut = Metered::new(usage.clone(), spin);
//! // ... fut is awaited on any runtime; afterwards:
//! # drop(fut);
//! let _cpu = usage.cpu_us();
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

/// The CPU time and memory charged to one batch so far.
#[derive(Debug, Default)]
pub struct Usage {
    cpu_ns: AtomicU64,
    /// Bytes allocated minus bytes freed while current, never below 0.
    live: AtomicI64,
    peak: AtomicI64,
    allocations: AtomicU64,
}

impl Usage {
    pub fn new() -> Usage {
        Usage::default()
    }

    /// CPU time charged, in microseconds; `None` where the platform has no thread CPU clock.
    pub fn cpu_us(&self) -> Option<i64> {
        thread_cpu_ns()?;
        Some(i64::try_from(self.cpu_ns.load(Relaxed) / 1_000).unwrap_or(i64::MAX))
    }

    /// The most bytes the batch's code held at once (above what it held when it started);
    /// `None` when no allocation was counted (the [`Counting`] allocator is not installed).
    pub fn peak_memory_bytes(&self) -> Option<i64> {
        (self.allocations.load(Relaxed) > 0).then(|| self.peak.load(Relaxed).max(0))
    }

    fn charge_cpu(&self, ns: u64) {
        self.cpu_ns.fetch_add(ns, Relaxed);
    }

    fn charge_bytes(&self, delta: i64) {
        if delta > 0 {
            self.allocations.fetch_add(1, Relaxed);
            let now = self.live.fetch_add(delta, Relaxed) + delta;
            self.peak.fetch_max(now, Relaxed);
        } else {
            // Floored at 0: freeing what someone else allocated (a shared table snapshot the
            // batch replaced) must not hide what the batch allocates after it.
            let _ = self
                .live
                .fetch_update(Relaxed, Relaxed, |v| Some((v + delta).max(0)));
        }
    }
}

thread_local! {
    // Const-initialised and without a destructor: the allocator reads it, so it must never
    // allocate or register anything.
    static CURRENT: Cell<*const Usage> = const { Cell::new(std::ptr::null()) };
    static STARTED_NS: Cell<u64> = const { Cell::new(0) };
}

/// The usage current on this thread, if any (to hand to work sent elsewhere).
pub fn current() -> Option<Arc<Usage>> {
    let p = CURRENT.with(Cell::get);
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` came from `Arc::as_ptr` of an `Arc` that the active `Scope`'s owner holds
    // for as long as it is current, so the count is at least 1 here.
    unsafe {
        Arc::increment_strong_count(p);
        Some(Arc::from_raw(p))
    }
}

/// `f`, charged to the usage current where `carried` is called (none: `f` as it is). For
/// closures run on another thread, such as `tokio::task::spawn_blocking`'s.
pub fn carried<R>(f: impl FnOnce() -> R) -> impl FnOnce() -> R {
    let usage = current();
    move || match usage {
        Some(u) => {
            let _scope = Scope::enter(&u);
            f()
        }
        None => f(),
    }
}

/// Makes a usage current on this thread until dropped; the CPU time in between is charged to
/// it (an outer scope is paused meanwhile, so nothing is charged twice).
struct Scope {
    previous: *const Usage,
}

impl Scope {
    fn enter(usage: &Arc<Usage>) -> Scope {
        let now = thread_cpu_ns().unwrap_or(0);
        let previous = CURRENT.with(Cell::get);
        if !previous.is_null() {
            // SAFETY: the previous scope's owner is further up this thread's stack.
            unsafe { &*previous }.charge_cpu(now.saturating_sub(STARTED_NS.with(Cell::get)));
        }
        CURRENT.with(|c| c.set(Arc::as_ptr(usage)));
        STARTED_NS.with(|c| c.set(now));
        Scope { previous }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let now = thread_cpu_ns().unwrap_or(0);
        let current = CURRENT.with(Cell::get);
        if !current.is_null() {
            // SAFETY: set by `enter` from an `Arc` its caller still holds.
            unsafe { &*current }.charge_cpu(now.saturating_sub(STARTED_NS.with(Cell::get)));
        }
        CURRENT.with(|c| c.set(self.previous));
        STARTED_NS.with(|c| c.set(now));
    }
}

/// A future whose polls are charged to a [`Usage`].
pub struct Metered<F> {
    usage: Arc<Usage>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Metered<F> {
    pub fn new(usage: Arc<Usage>, inner: F) -> Metered<F> {
        Metered {
            usage,
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let _scope = Scope::enter(&this.usage);
        this.inner.as_mut().poll(cx)
    }
}

/// This thread's CPU time in nanoseconds.
#[cfg(unix)]
fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec we own; allocates nothing.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (r == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

#[cfg(not(unix))]
fn thread_cpu_ns() -> Option<u64> {
    None
}

/// A global allocator that charges allocations to the usage current on the allocating
/// thread, around any other allocator: `#[global_allocator] static A: Counting<MiMalloc> =
/// Counting(MiMalloc);`. The cost is one thread-local read per allocation, and two relaxed
/// atomics when a batch is current.
pub struct Counting<A>(pub A);

fn charge(delta: i64) {
    let _ = CURRENT.try_with(|c| {
        let p = c.get();
        if !p.is_null() {
            // SAFETY: set by a live `Scope` on this thread.
            unsafe { &*p }.charge_bytes(delta);
        }
    });
}

// SAFETY: every call is passed to the inner allocator unchanged; counting only reads a
// thread-local and updates atomics, which neither allocates nor unwinds.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            charge(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            charge(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.0.dealloc(ptr, layout) };
        charge(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            charge(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(n: u64) -> u64 {
        (0..n).fold(0u64, |a, i| std::hint::black_box(a ^ i.wrapping_mul(i)))
    }

    /// Polls a future to completion on this thread (no runtime needed for a ready one).
    fn run<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn more_work_is_charged_more_cpu_and_only_inside_the_scope() {
        let small = Arc::new(Usage::new());
        let big = Arc::new(Usage::new());
        run(Metered::new(small.clone(), async { spin(200_000) }));
        spin(20_000_000); // outside any scope: charged to nobody
        run(Metered::new(big.clone(), async { spin(20_000_000) }));
        let (s, b) = (small.cpu_us().unwrap(), big.cpu_us().unwrap());
        assert!(b > 10 * s.max(1), "small {s} us, big {b} us");
        assert!(current().is_none());
    }

    #[test]
    fn carried_work_is_charged_to_the_sender_and_nested_scopes_are_not_counted_twice() {
        let usage = Arc::new(Usage::new());
        let inner = Arc::new(Usage::new());
        run(Metered::new(usage.clone(), async {
            let work = carried(|| spin(5_000_000));
            std::thread::spawn(work).join().unwrap();
            run(Metered::new(inner.clone(), async { spin(5_000_000) }));
        }));
        let (outer, nested) = (usage.cpu_us().unwrap(), inner.cpu_us().unwrap());
        assert!(outer > 0 && nested > 0);
        // the nested scope's work is the inner usage's, not also the outer's
        assert!(outer < 3 * nested, "outer {outer} us, nested {nested} us");
    }

    #[global_allocator]
    static COUNTED: Counting<std::alloc::System> = Counting(std::alloc::System);

    #[test]
    fn peak_memory_is_the_most_held_at_once_by_the_scope() {
        let usage = Arc::new(Usage::new());
        let before = vec![0u8; 64 << 20]; // allocated outside: not the batch's
        run(Metered::new(usage.clone(), async {
            for _ in 0..4 {
                // 8 MiB held at once, four times over: the peak is 8 MiB, not 32
                std::hint::black_box(vec![1u8; 8 << 20]);
            }
            drop(before); // freed inside: must not hide the 16 MiB after it
            std::hint::black_box(vec![1u8; 16 << 20]);
        }));
        let peak = usage.peak_memory_bytes().unwrap();
        assert!(((16 << 20)..(20 << 20)).contains(&peak), "peak {peak}");
        let idle = Arc::new(Usage::new());
        run(Metered::new(idle.clone(), async { 1 }));
        assert!(idle.peak_memory_bytes().unwrap_or(0) < 1 << 20);
    }
}
