//! Waiting out a state store that is away.
//!
//! Every loop of a long-running process (discovery, each worker, heartbeats, the rescuer)
//! reports the store's failures and successes to one [`StoreWatch`]. The watch says so once
//! when an outage starts and once when the store is back, however many loops and retries see
//! it, and gives up once the store has been away longer than its limit: then
//! [`StoreWatch::gave_up`] is cancelled and the process stops with
//! [`StoreWatch::give_up_message`]. Each loop waits between its own tries with a [`Backoff`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_store::StoreError;
use tokio_util::sync::CancellationToken;

/// The first wait after a failed store call.
const FIRST_WAIT: Duration = Duration::from_millis(500);
/// The longest wait between tries: a store that comes back is seen within this.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// One loop's wait between tries: 0.5 s, doubling, at most 5 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST_WAIT }
    }
}

impl Backoff {
    /// The wait before the next try (each call waits twice as long, up to the cap).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_WAIT);
        wait
    }

    pub fn reset(&mut self) {
        self.next = FIRST_WAIT;
    }
}

#[derive(Debug)]
struct Outage {
    since: Instant,
    cause: String,
}

/// The state store's health as a process's loops see it.
#[derive(Debug)]
pub struct StoreWatch {
    limit: Duration,
    outage: Mutex<Option<Outage>>,
    gave_up: CancellationToken,
    message: Mutex<Option<String>>,
}

impl StoreWatch {
    /// A watch that gives up once the store has been away for `limit`.
    pub fn new(limit: Duration) -> StoreWatch {
        StoreWatch {
            limit,
            outage: Mutex::new(None),
            gave_up: CancellationToken::new(),
            message: Mutex::new(None),
        }
    }

    /// A store call (`what`) failed. An outage is logged when it starts and counted against
    /// the limit; `false` for an error that is not an outage, which the caller reports itself.
    pub fn failed(&self, what: &str, e: &StoreError) -> bool {
        if !e.is_outage() {
            return false;
        }
        let cause = e.to_string();
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        let Some(current) = outage.as_mut() else {
            tracing::warn!(
                "waiting: the state store is unreachable ({what}: {cause}); retrying, giving up after {}",
                humantime::format_duration(self.limit)
            );
            *outage = Some(Outage {
                since: Instant::now(),
                cause,
            });
            return true;
        };
        current.cause = cause;
        let away = current.since.elapsed();
        if away >= self.limit && !self.gave_up.is_cancelled() {
            let message = format!(
                "the state store has been unreachable for {} (the limit, --store-outage-limit): {}; stopping. \
                 Batches still leased go back to the queue when their leases expire; start again once the store is back",
                humantime::format_duration(Duration::from_secs(away.as_secs())),
                current.cause
            );
            *self.message.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
            self.gave_up.cancel();
        }
        true
    }

    /// A store call went through: ends an outage, if one was going on (logged once).
    pub fn succeeded(&self) {
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ended) = outage.take() {
            tracing::warn!(
                "the state store is back after {}; resuming",
                humantime::format_duration(Duration::from_millis(
                    ended.since.elapsed().as_millis() as u64
                ))
            );
        }
    }

    /// What the process is waiting for, while the store is away: for status lines.
    pub fn waiting(&self) -> Option<String> {
        let outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        outage.as_ref().map(|o| {
            format!(
                "waiting: state store unreachable for {}",
                humantime::format_duration(Duration::from_secs(o.since.elapsed().as_secs()))
            )
        })
    }

    /// Cancelled once the store has been away longer than the limit.
    pub fn gave_up(&self) -> &CancellationToken {
        &self.gave_up
    }

    /// Why the watch gave up, once it has.
    pub fn give_up_message(&self) -> Option<String> {
        self.message
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset() -> StoreError {
        sluice_store::testing::io_error(std::io::ErrorKind::ConnectionReset)
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let mut b = Backoff::default();
        let waits: Vec<_> = (0..6).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_wait(), FIRST_WAIT);
    }

    #[test]
    fn gives_up_only_after_the_limit_and_not_for_other_errors() {
        let watch = StoreWatch::new(Duration::from_millis(50));
        assert!(!watch.failed("leasing", &StoreError::Corrupt("x".into())));
        assert!(watch.waiting().is_none());
        assert!(watch.failed("leasing", &reset()));
        assert!(watch.waiting().is_some());
        assert!(!watch.gave_up().is_cancelled());
        watch.succeeded();
        assert!(watch.waiting().is_none(), "a success ends the outage");
        assert!(watch.failed("leasing", &reset()));
        std::thread::sleep(Duration::from_millis(60));
        assert!(watch.failed("leasing", &reset()));
        assert!(watch.gave_up().is_cancelled());
        let message = watch.give_up_message().unwrap_or_default();
        assert!(message.contains("--store-outage-limit"), "{message}");
    }
}
