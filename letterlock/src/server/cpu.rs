//! The pool that opens received messages: one thread per core, jobs in the order they came.
//!
//! Opening a message sealed to the server costs an RSA private operation (about 2 ms of a
//! core for a 3072-bit key) besides its bulk decryption and hashing. Tokio's blocking pool,
//! where this work ran before, starts a new thread for every job that finds none idle (up to
//! 512): under load dozens of threads each held a decryption and the cores time-sliced among
//! them. The server then kept the two cores of its machine 95 % busy, and the rest of the time
//! went to switching between those threads. A fixed pool runs each job to its end on one of as
//! many threads as there are cores, and queues the rest, so the cores stay busy while messages
//! wait their turn (docs/PERFORMANCE.md, "The server's CPU pool").
//!
//! Only the work that grows with the messages received runs here. A handshake's check, a
//! relayed message's bytes (hashed and written, never opened) and the store's reads stay on
//! Tokio's blocking pool: they are short, and should not wait behind a queue of decryptions.

use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use tracing::warn;

use super::Fail;

/// A job of the pool: its result goes back on a channel the job holds.
type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of threads taking jobs from one queue. Its threads end once the pool is
/// dropped and the jobs already queued are done.
#[derive(Debug)]
pub(super) struct CpuPool {
    jobs: mpsc::Sender<Job>,
}

impl CpuPool {
    /// A pool of `threads` threads, named `letterlock-cpu`. A thread the system will not start
    /// is logged; with none at all, every job fails (the server refuses each message with an
    /// internal error) rather than the server failing to start.
    pub(super) fn new(threads: NonZeroUsize) -> CpuPool {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..threads.get() {
            let queue = queue.clone();
            let started = std::thread::Builder::new()
                .name("letterlock-cpu".into())
                .spawn(move || work(&queue));
            if let Err(e) = started {
                warn!(error = %e, "could not start a thread of the server's CPU pool");
            }
        }
        CpuPool { jobs }
    }

    /// Queues `f` and returns what waits for its result. If that is dropped before `f` starts
    /// (the connection went), `f` is dropped without running: nobody would read its result.
    pub(super) fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> CpuTask<T> {
        let (result, waiting) = oneshot::channel();
        let job: Job = Box::new(move || {
            if result.is_closed() {
                return;
            }
            // A panic is the job's failure, reported to its waiter, and the thread goes on.
            let _ = result.send(catch_unwind(AssertUnwindSafe(f)).ok());
        });
        // The threads hold the queue for as long as the pool lives: a send fails only if
        // every thread has gone, and the waiter then sees its job dropped.
        let _ = self.jobs.send(job);
        CpuTask { waiting }
    }

    /// Runs `f` on the pool and waits for it.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Fail> {
        self.spawn(f).finish().await
    }
}

/// A worker's loop: the next job, until the pool is dropped and the queue is empty.
fn work(queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for a job, never while running one.
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match next {
            Ok(job) => job(),
            Err(mpsc::RecvError) => return,
        }
    }
}

/// A job on the pool, waited for with [`CpuTask::finish`].
#[derive(Debug)]
pub(super) struct CpuTask<T> {
    waiting: oneshot::Receiver<Option<T>>,
}

impl<T> CpuTask<T> {
    /// The job's result; a job that panicked, or never ran, is the server's own failure.
    pub(super) async fn finish(self) -> Result<T, Fail> {
        match self.waiting.await {
            Ok(Some(done)) => Ok(done),
            Ok(None) | Err(_) => {
                warn!("a job on the server's CPU pool failed");
                Err(Fail::internal())
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn pool(threads: usize) -> CpuPool {
        CpuPool::new(NonZeroUsize::new(threads).unwrap())
    }

    /// A job that holds one of `pool`'s threads until the returned sender is dropped or sent to.
    pub(in crate::server) fn hold(pool: &CpuPool) -> (std::sync::mpsc::Sender<()>, CpuTask<()>) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let task = pool.spawn(move || {
            let _ = held.recv();
        });
        (release, task)
    }

    /// Every job's result comes back to its own waiter, and no more jobs run at once than the
    /// pool has threads, however many are queued.
    #[tokio::test]
    async fn runs_jobs_on_as_many_threads_as_it_has() {
        let pool = pool(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (running, most) = (running.clone(), most.clone());
                pool.spawn(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                    i * 10
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.finish().await.unwrap(), i * 10);
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    /// A job that panics fails for its waiter only; the thread it ran on takes the next job.
    #[tokio::test]
    async fn a_panicking_job_fails_alone() {
        let pool = pool(1);
        let failed = pool.run(|| -> u8 { panic!("a job's bug") }).await;
        assert_eq!(failed.unwrap_err().code, crate::wire::ErrorCode::Internal);
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }

    /// A job whose waiter has gone (its connection closed) is dropped unrun when its turn
    /// comes: a client that leaves does not leave decryptions behind for the server.
    #[tokio::test]
    async fn a_job_nobody_waits_for_is_not_run() {
        let pool = pool(1);
        let (release, held) = hold(&pool);
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        drop(pool.spawn(move || flag.store(true, Ordering::SeqCst)));
        release.send(()).unwrap();
        held.finish().await.unwrap();
        // Jobs are taken in order: this one comes after the dropped one.
        pool.run(|| ()).await.unwrap();
        assert!(!ran.load(Ordering::SeqCst));
    }
}
