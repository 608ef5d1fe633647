//! Criterion benchmarks of the envelope hot paths: seal and open at 1 KiB and 1 MiB, both modes,
//! with the fixed 3072-bit keys in tests/keys, so runs before and after a change compare.
//!
//! `cargo bench --bench envelope`; `letterlock bench` gives the figures beside their bounds.
//!
//! `cargo bench --bench envelope -- large`: a 64 MiB hybrid open (`LL_BENCH_MIB=1024` for the
//! bench's 1 GiB) beside its bound and its parts: from a reader over memory, from a slice
//! (`open_slice`), from a file in `$TMPDIR` (what the bench's 1 GiB row times), and the file's
//! reads alone. Run it with `TMPDIR=/dev/shm` to match the full bench.

use std::hint::black_box;
use std::io::{self, Seek, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::digest;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use letterlock::envelope::{self, Mode, OpenOptions, SealOptions};
use letterlock::keys::{Identity, PrivateKey, PublicKey};

fn key(name: &str) -> PrivateKey {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/keys/{name}_private.pem"));
    let pem = std::fs::read_to_string(&path).expect("the test keys are in tests/keys");
    PrivateKey::from_pem(&pem).expect("a valid test key")
}

fn envelope(c: &mut Criterion) {
    let alice = key("alice3072");
    let bob: Arc<dyn Identity> = Arc::new(key("bob3072"));
    let sender: PublicKey = alice.public().clone();
    for size in [1024usize, 1024 * 1024] {
        let input: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let mut group = c.benchmark_group(format!("envelope {} KiB", size / 1024));
        group.throughput(Throughput::Bytes(size as u64));
        if size > 1024 {
            // An asymmetric 1 MiB message is thousands of RSA operations: seconds each.
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(20));
        }
        for mode in [Mode::Hybrid, Mode::Asymmetric] {
            let opts = SealOptions::mode(mode);
            let name = format!("{mode:?}").to_lowercase();
            let mut sealed = Vec::new();
            envelope::seal(&alice, bob.public(), &opts, &input[..], &mut sealed).unwrap();
            group.bench_function(BenchmarkId::new("seal", &name), |b| {
                let mut out = Vec::with_capacity(sealed.len());
                b.iter(|| {
                    out.clear();
                    envelope::seal(&alice, bob.public(), &opts, black_box(&input[..]), &mut out)
                        .unwrap()
                })
            });
            group.bench_function(BenchmarkId::new("open", &name), |b| {
                let mut out = Vec::with_capacity(size);
                b.iter(|| {
                    out.clear();
                    envelope::open(
                        bob.clone(),
                        &sender,
                        &OpenOptions::default(),
                        black_box(&sealed[..]),
                        &mut out,
                    )
                    .unwrap()
                })
            });
        }
        group.finish();
    }
}

/// Hybrid open of a large message against the bound `letterlock bench` sets it (SHA-256 and
/// AES-256-GCM over the same bytes, one pass each, 64 KiB at a time, as `bench/bounds.rs`
/// measures it): what each way of reading the sealed bytes costs beyond the cryptography.
fn large(c: &mut Criterion) {
    let mib: usize = std::env::var("LL_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let size = mib * 1024 * 1024;
    let alice = key("alice3072");
    let bob: Arc<dyn Identity> = Arc::new(key("bob3072"));
    let sender: PublicKey = alice.public().clone();
    let input: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let mut sealed = Vec::new();
    envelope::seal(
        &alice,
        bob.public(),
        &SealOptions::default(),
        &input[..],
        &mut sealed,
    )
    .unwrap();
    drop(input);
    let mut group = c.benchmark_group("large");
    group.throughput(Throughput::Bytes(size as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("bound", |b| {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[9u8; 32]).unwrap());
        let mut buf = vec![5u8; 64 * 1024];
        let mut counter = 0u64;
        b.iter(|| {
            let mut hasher = digest::Context::new(&digest::SHA256);
            for _ in 0..size / buf.len() {
                hasher.update(&buf);
                let mut n = [0u8; 12];
                n[..8].copy_from_slice(&counter.to_be_bytes());
                counter += 1;
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(n),
                        Aad::from([0u8; 32]),
                        &mut buf,
                    )
                    .unwrap();
                let _ = black_box(tag);
            }
            black_box(hasher.finish())
        })
    });
    group.bench_function("open reader", |b| {
        b.iter(|| {
            envelope::open(
                bob.clone(),
                &sender,
                &OpenOptions::default(),
                black_box(&sealed[..]),
                io::sink(),
            )
            .unwrap()
        })
    });
    group.bench_function("open slice", |b| {
        b.iter(|| {
            envelope::open_slice(
                bob.clone(),
                &sender,
                &OpenOptions::default(),
                black_box(&sealed[..]),
                io::sink(),
            )
            .unwrap()
        })
    });
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&sealed).unwrap();
    group.bench_function("open file", |b| {
        b.iter(|| {
            file.rewind().unwrap();
            envelope::open(
                bob.clone(),
                &sender,
                &OpenOptions::default(),
                &file,
                io::sink(),
            )
            .unwrap()
        })
    });
    group.bench_function("read file", |b| {
        let mut buf = vec![0u8; 196_656];
        b.iter(|| {
            file.rewind().unwrap();
            while envelope::read_full(&mut file, &mut buf).unwrap() > 0 {}
        })
    });
    group.finish();
}

criterion_group!(benches, envelope, large);
criterion_main!(benches);
