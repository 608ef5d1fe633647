//! Criterion benchmarks of the envelope hot paths: seal and open at 1 KiB and 1 MiB, both modes,
//! with the fixed 3072-bit keys in tests/keys, so runs before and after a change compare.
//!
//! `cargo bench --bench envelope`; `letterlock bench` gives the figures beside their bounds.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use letterlock::envelope::{self, Mode, OpenOptions, SealOptions};
use letterlock::keys::{Identity, PrivateKey, PublicKey};

fn key(name: &str) -> PrivateKey {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/keys/{name}_private.pem"));
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

criterion_group!(benches, envelope);
criterion_main!(benches);
