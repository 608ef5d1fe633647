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
const WINDOW: Duration = Duration::from_secs(10);
/// Lines written per period.
const LINES_PER_WINDOW: u32 = 20;

/// The one budget of this process: the journal's limits are per service.
static PEER_LINES: Budget = Budget::new();

/// Runs `log` (a `tracing` call) if the budget allows it, first saying how many such lines
/// were left out since the last one written.
pub(crate) fn within_budget(log: impl FnOnce()) {
    match PEER_LINES.admit(Instant::now()) {
        Admit::Write { left_out: 0 } => log(),
        Admit::Write { left_out } => {
            info!(
                left_out,
                "{left_out} more lines about failed handshakes and connections were left out \
                 (at most {LINES_PER_WINDOW} per {})",
                crate::text::TimeSpan(WINDOW)
            );
            log();
        }
        // Said at once, so that a flood that stops is not followed by a silence that looks
        // like its end: the count comes with the next line written.
        Admit::FirstLeftOut => info!(
            "more lines about failed handshakes and connections than {LINES_PER_WINDOW} in {}: \
             the next ones are counted, not logged, until the period ends",
            crate::text::TimeSpan(WINDOW)
        ),
        Admit::LeftOut => {}
    }
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Write it, after saying how many were left out since the last one written.
    Write {
        left_out: u64,
    },
    /// Leave it out, the first in this period: say that lines are being left out.
    FirstLeftOut,
    LeftOut,
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

    /// What to do with a line at `now`.
    fn admit(&self, now: Instant) -> Admit {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if s.started
            .is_none_or(|started| now.saturating_duration_since(started) >= WINDOW)
        {
            s.started = Some(now);
            s.written = 0;
        }
        if s.written < LINES_PER_WINDOW {
            s.written += 1;
            Admit::Write {
                left_out: std::mem::take(&mut s.left_out),
            }
        } else {
            s.left_out = s.left_out.saturating_add(1);
            if s.written == LINES_PER_WINDOW {
                // Once per period.
                s.written += 1;
                Admit::FirstLeftOut
            } else {
                Admit::LeftOut
            }
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
            assert_eq!(budget.admit(t0), Admit::Write { left_out: 0 });
        }
        // The first one over says so; the rest are only counted.
        assert_eq!(budget.admit(t0), Admit::FirstLeftOut);
        for _ in 0..4 {
            assert_eq!(budget.admit(t0 + Duration::from_secs(1)), Admit::LeftOut);
        }
        // Still the same period.
        assert_eq!(
            budget.admit(t0 + WINDOW - Duration::from_millis(1)),
            Admit::LeftOut
        );
        // A new period: written again, saying how many were left out.
        assert_eq!(budget.admit(t0 + WINDOW), Admit::Write { left_out: 6 });
        assert_eq!(budget.admit(t0 + WINDOW), Admit::Write { left_out: 0 });
    }
}
