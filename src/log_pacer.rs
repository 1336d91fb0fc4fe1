//! Paces log lines about events that peers can cause at will (refused messages, dropped
//! datagrams, closed connections): the first line at once, then at most one per interval,
//! each saying how many were held back since the last. A peer sending garbage at line rate
//! must not turn the log into its amplifier.
//!
//! [`LogPacer`] is clock-free: callers pass the time in milliseconds, so the node core
//! (which takes time as an input) uses it; the runtime's tasks use [`ClockedLogPacer`],
//! which reads the monotonic clock.

use std::time::{Duration, Instant};

/// Lets a log line through at most once per interval.
#[derive(Debug, Clone)]
pub(crate) struct LogPacer {
    interval_ms: u64,
    last_ms: Option<u64>,
    held_back: u64,
}

impl LogPacer {
    /// A pacer letting one line through per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        LogPacer {
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            last_ms: None,
            held_back: 0,
        }
    }

    /// An event at `now_ms` (any monotonic origin): `Some(n)` when its line may be written,
    /// with the `n` lines held back since the last one; `None` (counted) otherwise.
    pub(crate) fn admit(&mut self, now_ms: u64) -> Option<u64> {
        let due = self
            .last_ms
            .is_none_or(|last| now_ms.saturating_sub(last) >= self.interval_ms);
        if !due {
            self.held_back += 1;
            return None;
        }
        self.last_ms = Some(now_ms);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// A [`LogPacer`] on the monotonic clock, for the runtime's tasks and threads.
#[derive(Debug, Clone)]
pub(crate) struct ClockedLogPacer {
    epoch: Instant,
    pacer: LogPacer,
}

impl ClockedLogPacer {
    /// A pacer letting one line through per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        ClockedLogPacer {
            epoch: Instant::now(),
            pacer: LogPacer::new(interval),
        }
    }

    /// An event now: see [`LogPacer::admit`].
    pub(crate) fn admit(&mut self) -> Option<u64> {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.pacer.admit(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let mut pacer = LogPacer::new(Duration::from_secs(1));
        assert_eq!(pacer.admit(5_000), Some(0));
        assert_eq!(pacer.admit(5_001), None);
        assert_eq!(pacer.admit(5_999), None);
        assert_eq!(pacer.admit(6_000), Some(2));
        let mut every = LogPacer::new(Duration::ZERO);
        assert_eq!((every.admit(1), every.admit(1)), (Some(0), Some(0)));
    }
}
