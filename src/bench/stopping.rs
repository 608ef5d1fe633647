//! What a bench stopped by Ctrl-C or SIGTERM undoes before it exits: its temporary files (the
//! mailboxes of section 7 among them), the programs it started, the throwaway PostgreSQL
//! cluster.
//!
//! The command runs the bench on a thread of its own and waits for it or for a signal
//! (`crate::cli`); on a signal the run is not unwound (its measuring loops do not look for a
//! stop), so what it makes is recorded here as it is made, and [`undo_run`] removes it from the
//! waiting side. Every temporary folder of a run is made inside one folder, [`RunFolder`], so
//! one removal takes them all.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::BenchError;

/// What the running bench has made that outlives it unless removed.
struct Made {
    /// The run's temporary folder ([`RunFolder`]).
    folder: Option<PathBuf>,
    /// Background programs (the one-shot section's server and agent), by process id.
    children: Vec<u32>,
    /// The throwaway cluster while section 7 uses it ([`ClusterHeld`]).
    #[cfg(feature = "postgres")]
    cluster: Option<crate::pgcluster::Cluster>,
}

static MADE: Mutex<Made> = Mutex::new(Made {
    folder: None,
    children: Vec::new(),
    #[cfg(feature = "postgres")]
    cluster: None,
});

/// The record, whatever a thread that panicked while holding it left (each field stays valid).
fn made() -> MutexGuard<'static, Made> {
    MADE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stops the programs the run started, the throwaway cluster, and removes the run's temporary
/// folder. Called once the command has decided to exit: the run's own thread may still be
/// writing, so a folder that refills while it is removed is removed again, a few times.
pub fn undo_run() {
    let (folder, children) = {
        let mut made = made();
        (made.folder.take(), std::mem::take(&mut made.children))
    };
    for pid in children {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    // Dropped outside the lock: it runs `pg_ctl stop` and removes the cluster's folder.
    #[cfg(feature = "postgres")]
    {
        let cluster = made().cluster.take();
        drop(cluster);
    }
    if let Some(folder) = folder {
        for _ in 0..10 {
            match std::fs::remove_dir_all(&folder) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => break,
            }
        }
    }
}

/// The run's temporary folder, in $TMPDIR: every other temporary folder of the run is made in
/// it ([`tempdir`]). Removed when dropped, and by [`undo_run`].
pub(super) struct RunFolder {
    /// Removes the folder when the run ends.
    _dir: tempfile::TempDir,
}

impl RunFolder {
    pub(super) fn new() -> Result<RunFolder, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix(".letterlock-bench-")
            .tempdir()?;
        made().folder = Some(dir.path().to_owned());
        Ok(RunFolder { _dir: dir })
    }

    #[cfg(test)]
    fn path(&self) -> &std::path::Path {
        self._dir.path()
    }
}

impl Drop for RunFolder {
    fn drop(&mut self) {
        made().folder = None;
    }
}

/// A new temporary folder for a section: inside the run's folder while a run is on, else in
/// $TMPDIR.
pub(super) fn tempdir() -> Result<tempfile::TempDir, BenchError> {
    let inside = made().folder.clone();
    Ok(match inside {
        Some(folder) => tempfile::tempdir_in(folder)?,
        None => tempfile::tempdir()?,
    })
}

/// Records a background program the run started, until [`child_ended`].
pub(super) fn child_started(pid: u32) {
    made().children.push(pid);
}

/// The program `pid` was stopped and waited for by the run itself.
pub(super) fn child_ended(pid: u32) {
    made().children.retain(|&p| p != pid);
}

/// The throwaway cluster, held where [`undo_run`] can stop it; stopped when dropped.
#[cfg(feature = "postgres")]
pub(super) struct ClusterHeld;

#[cfg(feature = "postgres")]
impl ClusterHeld {
    pub(super) fn new(cluster: crate::pgcluster::Cluster) -> ClusterHeld {
        made().cluster = Some(cluster);
        ClusterHeld
    }
}

#[cfg(feature = "postgres")]
impl Drop for ClusterHeld {
    fn drop(&mut self) {
        let cluster = made().cluster.take();
        drop(cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a run made in its folder, sections' folders and files included, is gone
    /// after `undo_run`, and a program it started is killed.
    #[test]
    fn undo_run_removes_the_run_folder_and_kills_its_children() {
        let run = RunFolder::new().unwrap();
        let section = tempdir().unwrap();
        assert!(section.path().starts_with(run.path()));
        std::fs::write(section.path().join("store-bench.db-wal"), b"x").unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        child_started(child.id());

        undo_run();
        assert!(!run.path().exists(), "{}", run.path().display());
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        // Nothing is left recorded for a second call.
        assert!(made().folder.is_none() && made().children.is_empty());
    }
}
