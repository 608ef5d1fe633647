//! Panics of the code under test, counted wherever they happen: the server turns a panicking
//! task into an "internal" answer (or a closed connection) for its peer, which a test would
//! otherwise read as a refusal.
//!
//! Only panics raised outside the tests' own files count. The integration tests run as one
//! binary (tests/suite), many at once: a test's own failed assertion, even on a runtime thread,
//! must fail that test alone, not every test that checks this counter beside it. A panic in
//! letterlock (or in a library it calls) is a bug whichever test met it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// Panics counted since [`count`] installed the hook.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Where the first counted panic was raised, and on which thread: every later check names it,
/// so a test that fails for another test's panic says whose it is.
static FIRST: OnceLock<String> = OnceLock::new();

/// Installs the counting hook (once per process; the previous hook still prints the panic).
pub fn count() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        // Cargo names the files of the package it builds relative to its root, so a test's own
        // files start with "tests/" (a --remap-path-prefix would change that).
        std::panic::set_hook(Box::new(move |info| {
            let ours = info
                .location()
                .is_some_and(|at| at.file().starts_with("tests/"));
            if !ours {
                PANICS.fetch_add(1, Ordering::SeqCst);
                let thread = std::thread::current();
                let _ = FIRST.set(format!(
                    "{} on thread {}",
                    info.location()
                        .map_or("an unknown place".to_owned(), ToString::to_string),
                    thread.name().unwrap_or("unnamed")
                ));
            }
            previous(info);
        }));
    });
}

/// Panics of the code under test since [`count`] was first called.
pub fn so_far() -> usize {
    PANICS.load(Ordering::SeqCst)
}

/// Fails if the code under test panicked anywhere in this process since [`count`].
pub fn assert_none() {
    assert_eq!(
        so_far(),
        0,
        "letterlock panicked (a server task, most likely), first at {}: see its message above",
        FIRST.get().map_or("?", String::as_str)
    );
}
