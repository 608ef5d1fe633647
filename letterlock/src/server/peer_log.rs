//! Log lines that any peer able to reach the port can cause (a failed TLS handshake, a
//! connection closed on an error), within a budget. They are logged at info so that an
//! operator sees an attack; unbounded, a flood of them from many sources would fill the
//! journal, which then drops every line of the service, real warnings included. At most
//! [`LINES_PER_WINDOW`] are written per [`WINDOW`]; the next one written says how many were
//! not.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::info;

/// The budget's period.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);
/// Lines written per period.
pub(crate) const LINES_PER_WINDOW: u32 = 20;

/// The one budget of this process: the journal's limits are per service.
static PEER_LINES: Budget = Budget::new();

/// Runs `log` (a `tracing` call) if the budget allows it, first saying how many such lines
/// were left out since the last one written.
pub(crate) fn within_budget(log: impl FnOnce()) {
    match PEER_LINES.admit(Instant::now()) {
        Some(0) => log(),
        Some(left_out) => {
            info!(
                left_out,
                "{left_out} more lines about failed handshakes and connections were not logged \
                 (at most {LINES_PER_WINDOW} per {} s)",
                WINDOW.as_secs()
            );
            log();
        }
        None => {}
    }
}

/// Lines written in the current period, and left out since the last one written.
struct Budget(Mutex<State>);

struct State {
    started: Option<Instant>,
    written: u32,
    left_out: u64,
}

impl Budget {
    const fn new() -> Self {
        Budget(Mutex::new(State {
            started: None,
            written: 0,
            left_out: 0,
        }))
    }

    /// `Some(n)`: write the line at `now`, after saying `n` were left out; `None`: leave it out.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if s.started
            .is_none_or(|started| now.saturating_duration_since(started) >= WINDOW)
        {
            s.started = Some(now);
            s.written = 0;
        }
        if s.written < LINES_PER_WINDOW {
            s.written += 1;
            Some(std::mem::take(&mut s.left_out))
        } else {
            s.left_out = s.left_out.saturating_add(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_budget_and_counted() {
        let budget = Budget::new();
        let t0 = Instant::now();
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(budget.admit(t0), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(budget.admit(t0 + Duration::from_secs(1)), None);
        }
        // Still the same period.
        assert_eq!(budget.admit(t0 + WINDOW - Duration::from_millis(1)), None);
        // A new period: written again, saying how many were left out.
        assert_eq!(budget.admit(t0 + WINDOW), Some(6));
        assert_eq!(budget.admit(t0 + WINDOW), Some(0));
    }
}
