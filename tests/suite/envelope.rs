//! Round trips of the sealed-message format in both modes, every key size.

use crate::common;

use common::{data, open, private, public, seal};
use letterlock::envelope::{Mode, SealError, SealOptions};
use letterlock::keys::Identity;

fn round_trip(mode: Mode, sender: &str, recipient: &str, len: usize) {
    let s = private(sender);
    let r = private(recipient);
    let plain = data(len);
    let sealed = seal(s.as_ref(), r.public(), &SealOptions::mode(mode), &plain);
    let back = open(r, s.public(), &sealed).unwrap_or_else(|e| {
        panic!("{mode} {sender}->{recipient} len {len}: {e}");
    });
    assert_eq!(back, plain, "{mode} {sender}->{recipient} len {len}");
}

#[test]
fn hybrid_sizes_around_chunk_boundaries() {
    for len in [
        0,
        1,
        318,
        64 * 1024 - 1,
        64 * 1024,
        64 * 1024 + 1,
        1024 * 1024 + 17,
    ] {
        round_trip(Mode::Hybrid, "alice3072", "bob3072", len);
    }
}

#[test]
fn asymmetric_sizes_around_oaep_limit() {
    // k - 66 for a 3072-bit key is 318; the data block adds a 384-byte signature.
    let k_minus_66 = public("bob3072").max_oaep_plaintext();
    assert_eq!(k_minus_66, 318);
    for len in [
        0,
        1,
        k_minus_66 - 1,
        k_minus_66,
        k_minus_66 + 1,
        2 * k_minus_66 - 384,
        5000,
    ] {
        round_trip(Mode::Asymmetric, "alice3072", "bob3072", len);
    }
}

#[test]
fn asymmetric_large_message() {
    round_trip(Mode::Asymmetric, "alice2048", "bob2048", 64 * 1024 + 1);
}

#[test]
fn every_key_size_and_mixed_sizes() {
    for (s, r) in [
        ("alice2048", "bob2048"),
        ("alice4096", "bob4096"),
        ("alice2048", "bob4096"),
        ("alice4096", "bob2048"),
        ("alice3072", "bob2048"),
    ] {
        for mode in [Mode::Hybrid, Mode::Asymmetric] {
            for len in [0, 1, 100, 3000] {
                round_trip(mode, s, r, len);
            }
        }
    }
}

#[test]
fn asymmetric_limit_is_a_typed_error() {
    let s = private("alice2048");
    let opts = SealOptions {
        asymmetric_limit: 1000,
        ..SealOptions::mode(Mode::Asymmetric)
    };
    let mut out = Vec::new();
    let err = letterlock::envelope::seal(
        s.as_ref(),
        &public("bob2048"),
        &opts,
        &data(1001)[..],
        &mut out,
    )
    .unwrap_err();
    // The library says what failed; the command line adds "--mode hybrid" (tests/suite/refusals.rs).
    assert!(
        matches!(err, SealError::TooLargeForAsymmetric { limit: 1000 }),
        "{err}"
    );
    assert!(
        !err.to_string().contains("--"),
        "no CLI flag in a library error: {err}"
    );
}

/// The one-call API: `letterlock::seal` and `letterlock::open` round-trip in both modes, agree
/// with the streaming API, accept a `TrustList` or a closure as the trust, and refuse every
/// prefix of a message (never panic on a short one).
#[test]
fn one_call_seal_and_open() {
    use letterlock::{OpenError, OpenOptions, TrustList};
    let alice = private("alice2048");
    let bob = private("bob2048");
    let plain = data(5000);
    let mut list = TrustList::new();
    list.add("alice", public("alice2048")).unwrap();
    list.add("mallory", public("mallory")).unwrap();
    let alice_id = public("alice2048").id();
    let by_closure = |id: &letterlock::KeyId| (*id == alice_id).then(|| public("alice2048"));
    for mode in [Mode::Hybrid, Mode::Asymmetric] {
        let sealed = letterlock::seal(
            &plain,
            alice.as_ref(),
            bob.public(),
            &SealOptions::mode(mode),
        )
        .unwrap();
        let opts = OpenOptions::default();
        for trust in [
            &public("alice2048") as &dyn letterlock::Trust,
            &list,
            &by_closure,
        ] {
            let (back, opened) = letterlock::open(&sealed, bob.as_ref(), trust, &opts).unwrap();
            assert_eq!(&back[..], &plain[..], "{mode}");
            assert_eq!(opened.plaintext_len, plain.len() as u64);
            assert_eq!(opened.header.mode, mode);
        }
        // The streaming opener reads the same bytes.
        assert_eq!(open(bob.clone(), alice.public(), &sealed).unwrap(), plain);
        // Not trusted: Bob expects Mallory.
        assert!(matches!(
            letterlock::open(&sealed, bob.as_ref(), &public("mallory"), &opts),
            Err(OpenError::UntrustedSender { .. })
        ));
        // Every prefix is refused with an error, from empty to one byte short.
        for len in (0..sealed.len()).step_by(97).chain([sealed.len() - 1]) {
            let result =
                letterlock::open(&sealed[..len], bob.as_ref(), &public("alice2048"), &opts);
            assert!(result.is_err(), "{mode}: a {len}-byte prefix opened");
        }
    }
}

/// `seal_slice` (a message already in memory, sealed in one call without the streaming read
/// buffer) makes the same message as the streaming `seal`: same length, same header fields,
/// opens to the same plaintext, at sizes around a chunk, a 256 KiB piece and the chunk size
/// of a non-default choice, in both modes.
#[test]
fn seal_slice_matches_the_streaming_seal() {
    use letterlock::envelope;
    let alice = private("alice2048");
    let bob = private("bob2048");
    let cases: &[(Mode, u32, &[usize])] = &[
        (
            Mode::Hybrid,
            64 * 1024,
            &[
                0, 1, 100, 65535, 65536, 65537, 262_143, 262_144, 262_145, 600_000,
            ],
        ),
        (Mode::Hybrid, 1024, &[0, 1023, 1024, 1025, 5000]),
        (Mode::Asymmetric, 0, &[0, 1, 190, 191, 3000]),
    ];
    for &(mode, chunk, sizes) in cases {
        let opts = SealOptions {
            chunk_size: if chunk == 0 {
                SealOptions::mode(mode).chunk_size
            } else {
                chunk
            },
            ..SealOptions::mode(mode)
        };
        for &len in sizes {
            let plain = data(len);
            let mut whole = Vec::new();
            let a = envelope::seal_slice(alice.as_ref(), bob.public(), &opts, &plain, &mut whole)
                .unwrap();
            let mut streamed = Vec::new();
            let b = envelope::seal(
                alice.as_ref(),
                bob.public(),
                &opts,
                &plain[..],
                &mut streamed,
            )
            .unwrap();
            assert_eq!(
                whole.len(),
                streamed.len(),
                "{mode} chunk {chunk} len {len}"
            );
            assert_eq!(a.plaintext_len, b.plaintext_len);
            assert_eq!(a.header.chunk_size, b.header.chunk_size);
            assert_eq!(open(bob.clone(), alice.public(), &whole).unwrap(), plain);
        }
    }
}

/// An asymmetric message over the receiver's limit is refused after one RSA decryption, its
/// last chunk's, which gives the plaintext's length; not after decrypting every chunk up to the
/// limit (a 1 MiB + 1 byte message took seconds to be refused). One at the limit opens.
#[test]
fn an_asymmetric_message_over_the_limit_is_refused_after_one_decryption() {
    use letterlock::envelope::{OpenError, OpenOptions};
    let limit = 4000;
    let sender = private("alice3072");
    let seal_len = |len: usize| {
        let opts = SealOptions {
            asymmetric_limit: len as u64,
            ..SealOptions::mode(Mode::Asymmetric)
        };
        seal(sender.as_ref(), &public("bob3072"), &opts, &data(len))
    };
    let open_counting = |sealed: &[u8]| {
        let bob = std::sync::Arc::new(common::v2::Counting::new("bob3072"));
        let opts = OpenOptions {
            asymmetric_limit: limit,
            ..OpenOptions::default()
        };
        let result = letterlock::envelope::open_to_vec(bob.clone(), sender.public(), &opts, sealed);
        let decryptions = bob.decryptions.load(std::sync::atomic::Ordering::SeqCst);
        (result.map(|(plain, _)| plain.len()), decryptions)
    };
    // 4001 bytes and a 384-byte signature: 14 chunks of 318 bytes, as 4000 bytes make.
    let over = seal_len(limit as usize + 1);
    let at = seal_len(limit as usize);
    assert_eq!(over.len(), at.len(), "the body's size alone cannot tell");
    let (result, decryptions) = open_counting(&over);
    assert!(
        matches!(result, Err(OpenError::TooLarge { limit: 4000 })),
        "{result:?}"
    );
    assert_eq!(decryptions, 1);
    let (result, decryptions) = open_counting(&at);
    assert_eq!(result.unwrap(), limit as usize);
    assert_eq!(
        decryptions,
        (at.len() - letterlock::envelope::HEADER_LEN) / 384
    );
}
