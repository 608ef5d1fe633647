//! What this machine allows: RSA, AES-256-GCM and SHA-256 through aws-lc-rs directly, timed
//! the way every figure of the bench is (the best of [`BATCHES`] batches), and the bound of one
//! message built from them.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::digest;

use letterlock::envelope::Mode;
use letterlock::keys::{Identity, PrivateKey};

use super::{BOUND_BUF, BenchError, Bounds, MB, crypt};

/// Timed batches each figure is the best of. This machine is shared: other work steals the CPU
/// in bursts, and the best batch is the one least disturbed, for a figure and its bound alike.
const BATCHES: u32 = 5;

/// How a measurement went.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timing {
    /// Operations in all batches.
    pub(super) iterations: u64,
    /// Time inside the operation, all batches.
    pub(super) seconds: f64,
    /// Operations per second of the best batch.
    pub(super) best_per_s: f64,
}

/// Runs `op` in [`BATCHES`] batches of at least `min / BATCHES` (and one operation) each;
/// times only `op`, which gets the index of its call.
pub(super) fn repeat(
    min: Duration,
    mut op: impl FnMut(u64) -> Result<(), BenchError>,
) -> Result<Timing, BenchError> {
    let slice = min / BATCHES;
    let mut iterations = 0;
    let mut total = Duration::ZERO;
    let mut best_per_s = 0f64;
    for _ in 0..BATCHES {
        let (mut n, mut spent) = (0u64, Duration::ZERO);
        while n == 0 || spent < slice {
            let t = Instant::now();
            op(iterations)?;
            spent += t.elapsed();
            n += 1;
            iterations += 1;
        }
        total += spent;
        best_per_s = best_per_s.max(n as f64 / spent.as_secs_f64());
    }
    Ok(Timing {
        iterations,
        seconds: total.as_secs_f64(),
        best_per_s,
    })
}

/// Runs `op` on `threads` threads at once, in [`BATCHES`] batches the threads start together;
/// returns the operations per second of all threads in the best batch.
///
/// When `op` fails (or panics) on one thread, the others stop at the next batch instead of
/// waiting for it forever, and the first failure is returned.
fn rate_on(
    threads: usize,
    min: Duration,
    op: impl Fn() -> Result<(), BenchError> + Sync,
) -> Result<f64, BenchError> {
    let slice = min / BATCHES;
    let gate = Gate::new(threads);
    // `Err(None)`: this thread stopped because another one failed.
    let one_thread = || -> Result<Vec<f64>, Option<BenchError>> {
        let mut leaving = BreakOnDrop {
            gate: &gate,
            finished: false,
        };
        let mut rates = Vec::with_capacity(BATCHES as usize);
        for _ in 0..BATCHES {
            gate.wait().map_err(|Broken| None)?;
            let t = Instant::now();
            let mut n = 0u64;
            while n == 0 || t.elapsed() < slice {
                op().map_err(Some)?;
                n += 1;
            }
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
        leaving.finished = true;
        Ok(rates)
    };
    let results: Vec<Result<Vec<f64>, Option<BenchError>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(one_thread)).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(Some(BenchError::Crypto))))
            .collect()
    });
    let mut per_batch = vec![0f64; BATCHES as usize];
    let mut stopped = false;
    for r in results {
        match r {
            Ok(rates) => {
                for (sum, rate) in per_batch.iter_mut().zip(rates) {
                    *sum += rate;
                }
            }
            Err(Some(e)) => return Err(e),
            Err(None) => stopped = true,
        }
    }
    if stopped {
        // Only a failing thread breaks the gate, and it returns its error above.
        return Err(BenchError::Wrong("a measuring thread stopped early".into()));
    }
    Ok(per_batch.into_iter().fold(0.0, f64::max))
}

/// The gate was broken: a thread left without finishing its batches.
struct Broken;

/// A barrier that a leaving thread can break. `std::sync::Barrier` waits for every thread
/// forever, so one thread that fails (its `?` returns) would leave the others blocked in
/// `wait`; here they get [`Broken`] instead.
struct Gate {
    parties: usize,
    state: Mutex<GateState>,
    turned: Condvar,
}

struct GateState {
    /// Threads waiting at the current batch.
    arrived: usize,
    /// Batches the gate has opened for; a waiter is released when it moves.
    generation: u64,
    /// A thread left early: nobody waits any more.
    broken: bool,
}

impl Gate {
    fn new(parties: usize) -> Self {
        Gate {
            parties,
            state: Mutex::new(GateState {
                arrived: 0,
                generation: 0,
                broken: false,
            }),
            turned: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until every party arrived, or until the gate is broken.
    fn wait(&self) -> Result<(), Broken> {
        let mut s = self.lock();
        if s.broken {
            return Err(Broken);
        }
        let generation = s.generation;
        s.arrived += 1;
        if s.arrived == self.parties {
            s.arrived = 0;
            s.generation += 1;
            self.turned.notify_all();
            return Ok(());
        }
        while s.generation == generation && !s.broken {
            s = self.turned.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.generation == generation {
            Err(Broken)
        } else {
            Ok(())
        }
    }

    fn break_open(&self) {
        self.lock().broken = true;
        self.turned.notify_all();
    }
}

/// Held by a measuring thread while it runs: when the thread leaves before it finished every
/// batch (an error return, a panic), dropping this breaks the gate and releases the others.
struct BreakOnDrop<'a> {
    gate: &'a Gate,
    /// Set after the last batch: leaving then is the normal end, and breaks nothing.
    finished: bool,
}

impl Drop for BreakOnDrop<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.gate.break_open();
        }
    }
}

/// Measures every bound; the all-core ones only with `threads` (else they are 0).
pub(super) fn measure_bounds(
    min: Duration,
    key: &PrivateKey,
    threads: Option<usize>,
) -> Result<Bounds, BenchError> {
    let public = key.public().clone();
    let label = [7u8; 32];
    let ciphertext = public.encrypt_oaep(&[1u8; 32], &label)?;
    // About the size of a signature transcript.
    let message = [3u8; 119];
    let signature = key.sign(&message)?;
    let decrypt = || {
        key.decrypt_oaep(&ciphertext, &label)?;
        Ok(())
    };
    let sign = || {
        key.sign(&message)?;
        Ok(())
    };
    let rsa_decrypt_1core = rate_on(1, min, decrypt)?;
    let rsa_decrypt_all = match threads {
        Some(n) => rate_on(n, min, decrypt)?,
        None => 0.0,
    };
    let rsa_sign_1core = rate_on(1, min, sign)?;
    let rsa_sign_all = match threads {
        Some(n) => rate_on(n, min, sign)?,
        None => 0.0,
    };
    let rsa_encrypt_1core = rate_on(1, min, || {
        public.encrypt_oaep(&[1u8; 32], &label)?;
        Ok(())
    })?;
    let rsa_verify_1core = rate_on(1, min, || {
        if public.verify_pss(&message, &signature) {
            Ok(())
        } else {
            Err(BenchError::Wrong("a PSS signature did not verify".into()))
        }
    })?;

    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[9u8; 32]).map_err(|_| crypt())?);
    let mut buf = vec![5u8; BOUND_BUF];
    let mut counter = 0u64;
    let mut aes = |buf: &mut [u8]| -> Result<(), BenchError> {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&counter.to_be_bytes());
        counter += 1;
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::from([0u8; 32]), buf)
            .map_err(|_| crypt())?;
        let _ = std::hint::black_box(tag);
        Ok(())
    };
    let mb_s = |t: Timing| t.best_per_s * BOUND_BUF as f64 / MB;
    let aes_gcm_mb_s = mb_s(repeat(min, |_| aes(&mut buf))?);
    let sha256_mb_s = mb_s(repeat(min, |_| {
        std::hint::black_box(digest::digest(&digest::SHA256, &buf));
        Ok(())
    })?);
    let mut hasher = digest::Context::new(&digest::SHA256);
    let seal_pass_mb_s = mb_s(repeat(min, |_| {
        hasher.update(&buf);
        aes(&mut buf)
    })?);
    std::hint::black_box(hasher.finish());
    Ok(Bounds {
        rsa_decrypt_1core,
        rsa_decrypt_all,
        rsa_sign_1core,
        rsa_sign_all,
        rsa_encrypt_1core,
        rsa_verify_1core,
        aes_gcm_mb_s,
        sha256_mb_s,
        seal_pass_mb_s,
    })
}

/// RSA-OAEP decryptions per second on `threads` threads.
pub(super) fn decrypt_rate(
    key: &PrivateKey,
    threads: usize,
    min: Duration,
) -> Result<f64, BenchError> {
    let label = [7u8; 32];
    let ciphertext = key.public().encrypt_oaep(&[1u8; 32], &label)?;
    rate_on(threads, min, || {
        key.decrypt_oaep(&ciphertext, &label)?;
        Ok(())
    })
}

/// RSA-PSS signatures per second on `threads` threads: a full TLS handshake costs the server
/// one (its CertificateVerify), so this bounds its handshake rate.
pub(super) fn sign_rate(
    key: &PrivateKey,
    threads: usize,
    min: Duration,
) -> Result<f64, BenchError> {
    let message = [5u8; 64];
    rate_on(threads, min, || {
        key.sign(&message)?;
        Ok(())
    })
}

/// The fastest one core could seal or open a message of `size` bytes: the RSA operations it
/// needs at their measured rates, plus its bytes at the measured symmetric rates.
pub(super) fn envelope_bound(b: &Bounds, mode: Mode, seal: bool, size: u64, modulus: u64) -> f64 {
    let sig = modulus;
    let seconds = match mode {
        Mode::Hybrid => {
            let rsa = if seal {
                1.0 / b.rsa_encrypt_1core + 1.0 / b.rsa_sign_1core
            } else {
                1.0 / b.rsa_decrypt_1core + 1.0 / b.rsa_verify_1core
            };
            rsa + (size + sig) as f64 / (b.seal_pass_mb_s * MB)
        }
        Mode::Asymmetric => {
            let chunks =
                (size + sig).div_ceil(modulus - letterlock::keys::OAEP_OVERHEAD as u64) as f64;
            let rsa = if seal {
                chunks / b.rsa_encrypt_1core + 1.0 / b.rsa_sign_1core
            } else {
                chunks / b.rsa_decrypt_1core + 1.0 / b.rsa_verify_1core
            };
            rsa + size as f64 / (b.sha256_mb_s * MB)
        }
    };
    1.0 / seconds
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::mpsc;

    use super::*;

    /// Runs `rate_on` on its own thread and waits for its answer: a deadlock shows as no answer
    /// (a hang, not a slow run: the operations here take nanoseconds).
    fn rate_on_answers(
        threads: usize,
        op: impl Fn() -> Result<(), BenchError> + Send + Sync + 'static,
    ) -> Result<f64, BenchError> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(rate_on(threads, Duration::from_millis(10), op));
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("rate_on did not return: its threads are stuck at the barrier")
    }

    #[test]
    fn rate_on_returns_the_error_of_a_failing_thread_instead_of_hanging() {
        // The first call fails: its thread leaves during batch 0, while the others finish that
        // batch and come to the barrier of batch 1.
        let failed = AtomicBool::new(false);
        let result = rate_on_answers(3, move || {
            if failed.swap(true, Ordering::Relaxed) {
                Ok(())
            } else {
                Err(BenchError::Wrong("injected failure".into()))
            }
        });
        assert!(
            matches!(&result, Err(BenchError::Wrong(why)) if why == "injected failure"),
            "{result:?}"
        );
    }

    #[test]
    fn rate_on_returns_an_error_when_a_thread_fails_in_a_later_batch() {
        // One thread's 5th call fails: the others are somewhere in the same or the next batch.
        let calls = AtomicU64::new(0);
        let result = rate_on_answers(2, move || {
            if calls.fetch_add(1, Ordering::Relaxed) == 4 {
                Err(BenchError::Crypto)
            } else {
                std::thread::sleep(Duration::from_millis(1));
                Ok(())
            }
        });
        assert!(matches!(result, Err(BenchError::Crypto)), "{result:?}");
    }

    #[test]
    fn rate_on_counts_every_thread_when_nothing_fails() {
        let result = rate_on_answers(2, || Ok(()));
        assert!(matches!(result, Ok(rate) if rate > 0.0), "{result:?}");
    }
}
