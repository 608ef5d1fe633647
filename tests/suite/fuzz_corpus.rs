//! Replays every file of the committed fuzz corpora (`fuzz/corpus/<target>/`) through the same
//! functions the fuzz targets call (`letterlock::fuzzing`), so a regression a fuzzer once
//! exercised shows up in `cargo test`. docs/FUZZING.md says how the corpora were made.
//!
//! `cargo test --test suite -- --ignored fuzz_corpus::write_seed_corpora` rewrites the hand-made seeds
//! (valid messages and headers for the fixed keys) that fuzzing starts from.

use crate::common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::{private, public};
use letterlock::envelope::{HEADER_LEN, Mode, SealOptions, armor::ArmorWriter, header_hash};
use letterlock::fuzzing::{self, Fixture};

/// Bob receives, Alice is trusted: the keys the open targets embed.
fn fixture() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(|| Fixture::new(private("bob2048"), public("alice2048")))
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Every file of one target's corpus; fails if the corpus is missing or empty.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

/// Runs `f` on every corpus file, naming the file if it panics.
fn replay(target: &str, f: impl Fn(&[u8])) {
    for (path, data) in corpus(target) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&data)));
        assert!(result.is_ok(), "{target}: {} panicked", path.display());
    }
}

/// Replays an open target's corpus; the corpus must keep at least one input each entry point
/// accepts, so the replay covers the success path as well as the refusals.
fn replay_open(target: &str, mode: Mode) {
    let accepted = std::sync::Mutex::new((0, 0));
    replay(target, |d| {
        let after = fuzzing::open_after_header(fixture(), mode, d);
        let whole = fuzzing::open_whole(fixture(), d);
        let mut a = accepted.lock().unwrap();
        a.0 += usize::from(after);
        a.1 += usize::from(whole);
    });
    let (after, whole) = *accepted.lock().unwrap();
    assert!(
        after > 0 && whole > 0,
        "{target}: accepted {after} after a header, {whole} whole"
    );
}

#[test]
fn replay_header_corpus() {
    replay("header", fuzzing::header);
}

#[test]
fn replay_open_hybrid_corpus() {
    replay_open("open_hybrid", Mode::Hybrid);
}

#[test]
fn replay_open_asymmetric_corpus() {
    replay_open("open_asymmetric", Mode::Asymmetric);
}

#[test]
fn replay_armor_corpus() {
    replay("armor", fuzzing::armor);
}

/// The directory entry corpus keeps at least one entry that parses (the committed seed for
/// Bob's key), so the replay covers the re-encoding check as well as the refusals.
#[test]
fn replay_directory_entry_corpus() {
    replay("directory_entry", fuzzing::directory_entry);
    let parsed = corpus("directory_entry")
        .iter()
        .filter(|(_, d)| letterlock::directory::parse_entry(d).is_ok())
        .count();
    assert!(parsed > 0, "no directory entry in the corpus parses");
}

/// The agent corpus keeps a valid request and reply of each kind (the frames of
/// `tests/vectors/agent/frames.json`, without their length), so the re-encoding check runs.
#[test]
fn replay_agent_frames_corpus() {
    use letterlock::client::agent::{Reply, Request};
    replay("agent_frames", fuzzing::agent_frames);
    let corpus = corpus("agent_frames");
    let requests = corpus
        .iter()
        .filter(|(_, d)| Request::decode(d).is_ok())
        .count();
    let replies = corpus
        .iter()
        .filter(|(_, d)| Reply::decode(d).is_ok())
        .count();
    assert!(
        requests >= 3 && replies >= 4,
        "{requests} requests, {replies} replies"
    );
}

#[test]
fn replay_text_corpus() {
    replay("text", fuzzing::text);
}

/// The server (Bob) and the client it trusts (Alice) of the network targets.
fn net() -> &'static fuzzing::NetFixture {
    static FX: OnceLock<fuzzing::NetFixture> = OnceLock::new();
    FX.get_or_init(|| fuzzing::NetFixture::new(private("bob2048"), private("alice2048")))
}

#[test]
fn replay_frames_corpus() {
    replay("frames", fuzzing::frames);
}

#[test]
fn replay_handshake_corpus() {
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    replay("handshake", |d| {
        if fuzzing::handshake(net(), d) {
            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    assert!(
        accepted.into_inner() > 0,
        "no corpus file passes the handshake"
    );
}

#[test]
fn replay_server_connection_corpus() {
    common::panics::count();
    let fx = fuzzing::ServerFixture::new(fuzzing::NetFixture::new(
        private("bob2048"),
        private("alice2048"),
    ));
    let acks = std::sync::atomic::AtomicUsize::new(0);
    replay("server_connection", |d| {
        acks.fetch_add(
            fuzzing::server_connection(&fx, d),
            std::sync::atomic::Ordering::Relaxed,
        );
    });
    common::panics::assert_none();
    assert!(
        acks.into_inner() > 0,
        "no corpus file gets a message acknowledged"
    );
}

// ---------------------------------------------------------------------------------------------
// Seeds

/// A valid body for `fuzzing::open_after_header`: plaintext || Alice's signature over the
/// fixture's header, encrypted as the sealer would (hybrid: after the fixture's wrapped key).
fn body_after_fixed_header(mode: Mode, plain: &[u8]) -> Vec<u8> {
    let fx = fixture();
    let header: [u8; HEADER_LEN] = fx.header(mode);
    let hh = header_hash(&header);
    let block = common::signed_block(private("alice2048").as_ref(), &header, plain);
    // Steering byte: hybrid, bit 0 = the fixture's wrapped key comes first and 0x07 = 3-byte
    // pieces; asymmetric, none of that.
    let steering = match mode {
        Mode::Hybrid => 0x07,
        Mode::Asymmetric => 0x00,
    };
    let body = common::seal_data_block(
        mode,
        hh,
        &public("bob2048"),
        &Fixture::CONTENT_KEY,
        &[0x11; 16],
        1024,
        &block,
    );
    [&[steering][..], &body].concat()
}

fn sealed(mode: Mode, plain: &[u8]) -> Vec<u8> {
    let opts = SealOptions {
        mode,
        chunk_size: 1024,
        ..SealOptions::default()
    };
    common::seal(
        private("alice2048").as_ref(),
        &public("bob2048"),
        &opts,
        plain,
    )
}

/// The seeds must themselves be accepted by the targets' functions, so fuzzing starts from
/// inputs that reach the end of every path.
#[test]
fn seeds_open() {
    for mode in [Mode::Hybrid, Mode::Asymmetric] {
        let plain = common::data(1500);
        let body = body_after_fixed_header(mode, &plain);
        assert!(fuzzing::open_after_header(fixture(), mode, &body), "{mode}");
        assert!(
            fuzzing::open_whole(fixture(), &sealed(mode, &plain)),
            "{mode}"
        );
        // One flipped bit and neither accepts.
        let mut bad = body.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(!fuzzing::open_after_header(fixture(), mode, &bad), "{mode}");
        let fx = fixture();
        let header = fx.header(mode);
        let mut whole = header.to_vec();
        if mode == Mode::Hybrid {
            whole.extend_from_slice(fx.wrapped_key());
        }
        whole.extend_from_slice(&body[1..]);
        assert_eq!(
            common::open(private("bob2048"), &public("alice2048"), &whole).unwrap(),
            plain,
            "{mode}"
        );
    }
}

#[test]
#[ignore = "writes the seed corpora; run by hand"]
fn write_seed_corpora() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    };
    for (target, mode) in [
        ("open_hybrid", Mode::Hybrid),
        ("open_asymmetric", Mode::Asymmetric),
    ] {
        for len in [0, 100, 1500] {
            let plain = common::data(len);
            write(target, &format!("sealed-{len}"), &sealed(mode, &plain));
            write(
                target,
                &format!("body-{len}"),
                &body_after_fixed_header(mode, &plain),
            );
        }
        let header = fixture().header(mode);
        write("header", &format!("{mode}"), &header);
        write("header", &format!("{mode}-long"), &sealed(mode, b"hi"));
    }
    write("header", "short", &fixture().header(Mode::Hybrid)[..50]);
    for len in [0, 100] {
        let mut w = ArmorWriter::new(Vec::new());
        std::io::Write::write_all(&mut w, &sealed(Mode::Hybrid, &common::data(len))).unwrap();
        write("armor", &format!("sealed-{len}"), &w.finish().unwrap());
    }
    write_network_seeds(&write);
    write(
        "armor",
        "crlf",
        b"\r\n-----BEGIN LETTERLOCK MESSAGE-----\r\nTEVUUkxPQ0s=\r\n-----END LETTERLOCK MESSAGE-----\r\n",
    );
}

/// Seeds of the network targets: every frame type, valid and invalid handshakes, and whole
/// authenticated sessions that send, fetch and acknowledge.
fn write_network_seeds(write: &dyn Fn(&str, &str, &[u8])) {
    use letterlock::envelope::MessageId;
    use letterlock::wire::{ErrorCode, Frame};
    let enc = |frames: &[Frame]| {
        let mut out = Vec::new();
        for f in frames {
            f.encode(&mut out);
        }
        out
    };
    let all = [
        Frame::Hello {
            version: 1,
            server: public("bob2048").id(),
            challenge: [1; 32],
        },
        net().valid_auth(),
        Frame::Ready,
        Frame::Send(vec![0x4c; 40]),
        Frame::SendEnd,
        Frame::Ack {
            id: MessageId([2; 16]),
            tag: [3; 32],
        },
        Frame::Fetch,
        Frame::Deliver(vec![5; 20]),
        Frame::DeliverEnd,
        Frame::FetchDone { count: 1 },
        Frame::DeliveryAck {
            id: MessageId([6; 16]),
            tag: [7; 32],
        },
        Frame::Removed {
            id: MessageId([8; 16]),
        },
        Frame::Relay {
            commitment: [9; 32],
        },
        Frame::Stored {
            id: MessageId([10; 16]),
        },
        Frame::Directory,
        Frame::DirectoryPart {
            last: true,
            entries: vec![letterlock::directory::SignedEntry {
                entry: std::fs::read(corpus_dir("directory_entry").join("seed-bob"))
                    .unwrap_or_else(|_| letterlock::directory::CONTEXT.to_vec()),
                signature: vec![11; 256],
            }],
        },
        Frame::Receipts {
            ids: vec![MessageId([12; 16])],
        },
        Frame::ReceiptList {
            receipts: vec![letterlock::wire::ReceiptInfo {
                id: MessageId([13; 16]),
                recipient: public("bob2048").id(),
                tag: [14; 32],
                delivered: 1_800_000_000,
            }],
        },
        Frame::error(ErrorCode::Refused, "no"),
    ];
    for f in &all {
        write("frames", f.name(), &enc(std::slice::from_ref(f)));
    }
    write("frames", "all", &enc(&all));
    write("handshake", "valid", &enc(&[net().valid_auth()]));
    let mallory = fuzzing::NetFixture::new(private("bob2048"), private("mallory"));
    write("handshake", "untrusted", &enc(&[mallory.valid_auth()]));
    let frames_of = |sealed: &[u8]| {
        let mut frames: Vec<Frame> = sealed
            .chunks(700)
            .map(|c| Frame::Send(c.to_vec()))
            .collect();
        frames.push(Frame::SendEnd);
        frames
    };
    for mode in [Mode::Hybrid, Mode::Asymmetric] {
        let msg = common::seal(
            private("alice2048").as_ref(),
            &public("bob2048"),
            &SealOptions::mode(mode),
            &common::data(300)[..],
        );
        let mut session = vec![0x01];
        let mut frames = frames_of(&msg);
        frames.push(Frame::Fetch);
        session.extend_from_slice(&enc(&frames));
        write("server_connection", &format!("send-{mode}"), &session);
    }
    let mut unauth = vec![0x00];
    unauth.extend_from_slice(&enc(&[net().valid_auth(), Frame::Fetch]));
    write("server_connection", "stale-auth", &unauth);
    let mut ack = vec![0x01];
    ack.extend_from_slice(&enc(&[
        Frame::Fetch,
        Frame::DeliveryAck {
            id: MessageId([9; 16]),
            tag: [9; 32],
        },
    ]));
    write("server_connection", "bad-ack", &ack);
}
