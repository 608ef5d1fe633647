//! Sealing and opening file to file on three threads (`envelope::seal_pipelined`,
//! `open_pipelined`, `seal_to_file`, `open_to_file`): the same bytes as one thread, round trips
//! across chunk and buffer boundaries, and failures that stop every thread and leave no file.

use crate::common;

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use common::{data, private, public};
use letterlock::envelope::{
    self, FixedRandomness, HEADER_LEN, Mode, OpenError, OpenOptions, PIECE, SealError, SealOptions,
    Sealer,
};
use letterlock::files::WriteOptions;
use letterlock::keys::Identity;

const KIB: usize = 1024;

/// Sizes around the chunk (64 KiB) and the reader's pieces ([`PIECE`], whole chunks).
const SIZES: &[usize] = &[
    0,
    1,
    64 * KIB - 1,
    64 * KIB,
    64 * KIB + 1,
    PIECE - 1,
    PIECE,
    PIECE + 1,
    3 * PIECE + 5,
];

fn fixed() -> FixedRandomness {
    FixedRandomness {
        message_id: [3; 16],
        created: 1_700_000_000,
        content_key: [9; 32],
    }
}

/// Seals on three threads with the fixed randomness.
fn seal_pipelined_fixed(opts: &SealOptions, plain: &[u8]) -> Vec<u8> {
    let (sealer, prefix) =
        Sealer::with_randomness(private("alice2048"), &public("bob2048"), opts, &fixed()).unwrap();
    let (sealed, out) = envelope::seal_pipelined(sealer, &prefix, plain, Vec::new()).unwrap();
    assert_eq!(sealed.plaintext_len, plain.len() as u64);
    out
}

/// The same sealer state on one thread and on three gives the same message: the same header
/// and, in hybrid mode, the same chunks byte for byte.
#[test]
fn three_threads_write_the_bytes_one_thread_writes() {
    for (mode, chunk) in [
        (Mode::Hybrid, 64 * KIB as u32),
        (Mode::Hybrid, 1024),
        (Mode::Asymmetric, 64 * KIB as u32),
    ] {
        let opts = SealOptions {
            mode,
            chunk_size: chunk,
            ..SealOptions::default()
        };
        for &len in SIZES {
            if mode == Mode::Asymmetric && len > 64 * KIB + 1 {
                continue; // RSA per 190 bytes: slow in a debug build, and nothing new.
            }
            let plain = data(len);
            let (one, _) = common::seal_fixed(
                private("alice2048"),
                &public("bob2048"),
                &opts,
                &fixed(),
                &plain,
            );
            let three = seal_pipelined_fixed(&opts, &plain);
            let what = format!("{mode} chunk {chunk} len {len}");
            assert_eq!(one.len(), three.len(), "{what}");
            assert_eq!(one[..HEADER_LEN], three[..HEADER_LEN], "{what}: header");
            if mode == Mode::Hybrid {
                // RSA-OAEP (the wrapped key) and RSA-PSS (the signature, in the last one or
                // two chunks) draw their own randomness inside aws-lc; every chunk of
                // plaintext only is determined by the fixed content key and must be the same.
                let start = HEADER_LEN + public("bob2048").modulus_len();
                let plain_chunks = len / chunk as usize * (chunk as usize + 16);
                let body = start..start + plain_chunks;
                assert!(one[body.clone()] == three[body], "{what}: chunks differ");
            }
            let back = common::open(private("bob2048"), &public("alice2048"), &three).unwrap();
            assert!(back == plain, "{what}: round trip");
        }
    }
}

#[test]
fn files_round_trip_across_chunks_and_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let alice = private("alice2048");
    let bob = private("bob2048");
    for &len in SIZES {
        let plain = data(len);
        let sealed_path = dir.path().join(format!("{len}.sealed"));
        let opened_path = dir.path().join(format!("{len}.opened"));
        let sealed = envelope::seal_to_file(
            alice.clone(),
            bob.public(),
            &SealOptions::default(),
            &plain[..],
            &sealed_path,
            &WriteOptions::default(),
        )
        .unwrap();
        assert_eq!(sealed.plaintext_len, len as u64);
        // The one-thread opener reads it too: the same format.
        let bytes = fs::read(&sealed_path).unwrap();
        assert_eq!(
            common::open(bob.clone(), alice.public(), &bytes).unwrap(),
            plain
        );
        let opened = envelope::open_to_file(
            bob.clone(),
            alice.public(),
            &OpenOptions::default(),
            fs::File::open(&sealed_path).unwrap(),
            &opened_path,
            &WriteOptions::default(),
        )
        .unwrap();
        assert_eq!(opened.plaintext_len, len as u64);
        assert!(fs::read(&opened_path).unwrap() == plain, "len {len}");
    }
}

/// A message of at most `OPEN_WHOLE_LIMIT` sealed bytes is opened in memory, a longer one on
/// three threads: at the limit and one byte over, each opens to its plaintext, and an altered
/// one leaves no file.
#[test]
fn messages_at_the_whole_open_limit_open_either_way_and_altered_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let alice = private("alice2048");
    let bob = private("bob2048");
    let sealed_len = |len: usize| {
        common::seal(
            alice.as_ref(),
            bob.public(),
            &SealOptions::default(),
            &data(len),
        )
        .len()
    };
    // Below one chunk the sealed size grows byte for byte with the plaintext.
    let len = 60 * KIB;
    let at_limit = len + (envelope::OPEN_WHOLE_LIMIT - sealed_len(len));
    for (len, over) in [(at_limit, 0), (at_limit + 1, 1)] {
        let plain = data(len);
        let mut bytes = common::seal(
            alice.as_ref(),
            bob.public(),
            &SealOptions::default(),
            &plain,
        );
        assert_eq!(bytes.len(), envelope::OPEN_WHOLE_LIMIT + over);
        let target = dir.path().join("out");
        let open = |bytes: &[u8]| {
            envelope::open_to_file(
                bob.clone(),
                alice.public(),
                &OpenOptions::default(),
                bytes,
                &target,
                &WriteOptions::default(),
            )
        };
        let opened = open(&bytes).unwrap();
        assert_eq!(opened.plaintext_len, len as u64);
        assert!(fs::read(&target).unwrap() == plain, "{len}");
        fs::remove_file(&target).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        assert!(matches!(open(&bytes), Err(OpenError::Verification)));
        assert_only(dir.path(), &[]);
    }
}

/// Only the files named are in `dir`: no temporary file stayed behind.
fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(found, want);
}

#[test]
fn a_message_altered_midway_leaves_no_plaintext_file() {
    let dir = tempfile::tempdir().unwrap();
    let alice = private("alice2048");
    let bob = private("bob2048");
    // Eight pieces, so the writer has written plaintext of the early chunks to the temporary
    // file by the time the altered chunk fails.
    let plain = data(8 * PIECE);
    let good = common::seal(
        alice.as_ref(),
        bob.public(),
        &SealOptions::default(),
        &plain,
    );
    let middle = good.len() / 2;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("flipped", {
            let mut b = good.clone();
            b[middle] ^= 1;
            b
        }),
        ("truncated", good[..middle].to_vec()),
        ("signature", {
            let mut b = good.clone();
            let last = b.len() - 1;
            b[last] ^= 0x80;
            b
        }),
    ];
    fs::write(dir.path().join("message"), b"").unwrap();
    for (what, bytes) in cases {
        let target = dir.path().join("out");
        let err = envelope::open_to_file(
            bob.clone(),
            alice.public(),
            &OpenOptions::default(),
            &bytes[..],
            &target,
            &WriteOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, OpenError::Verification), "{what}: {err}");
        assert_only(dir.path(), &["message"]);
    }
}

/// A reader that yields `good` bytes of `data`, then fails.
struct FailingReader {
    data: Vec<u8>,
    at: usize,
    good: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at >= self.good {
            return Err(io::Error::other("the disk went away"));
        }
        let n = buf.len().min(self.good - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn a_read_error_midway_stops_sealing_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.sealed");
    let input = FailingReader {
        data: data(2048 * KIB),
        at: 0,
        good: 1024 * KIB + 7,
    };
    let err = envelope::seal_to_file(
        private("alice2048"),
        &public("bob2048"),
        &SealOptions::default(),
        input,
        &target,
        &WriteOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, SealError::Io(e) if e.to_string().contains("disk went away")),
        "{err}"
    );
    assert_only(dir.path(), &[]);
}

/// A writer that takes `room` bytes, then fails.
struct FullDisk {
    room: usize,
}

impl Write for FullDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_write_error_midway_is_the_error_of_both_directions() {
    let alice = private("alice2048");
    let bob: Arc<dyn Identity> = private("bob2048");
    let plain = data(2048 * KIB);
    let (sealer, prefix) =
        Sealer::new(alice.clone(), bob.public(), &SealOptions::default()).unwrap();
    let err = envelope::seal_pipelined(sealer, &prefix, &plain[..], FullDisk { room: 300_000 })
        .err()
        .expect("sealing into a full disk fails");
    assert!(
        matches!(&err, SealError::Io(e) if e.kind() == io::ErrorKind::StorageFull),
        "{err}"
    );

    let sealed = common::seal(
        alice.as_ref(),
        bob.public(),
        &SealOptions::default(),
        &plain,
    );
    let err = envelope::open_pipelined(
        bob,
        alice.public(),
        &OpenOptions::default(),
        &sealed[..],
        FullDisk { room: 300_000 },
    )
    .err()
    .expect("opening into a full disk fails");
    assert!(
        matches!(&err, OpenError::Io(e) if e.kind() == io::ErrorKind::StorageFull),
        "{err}"
    );
}

#[test]
fn every_chunk_altered_is_refused_by_the_pipelined_opener() {
    // 1 KiB chunks: many chunks per piece, and pieces that end on a chunk boundary.
    let opts = SealOptions {
        chunk_size: 1024,
        ..SealOptions::default()
    };
    let alice = private("alice2048");
    let bob = private("bob2048");
    let plain = data(20 * KIB + 3);
    let good = common::seal(alice.as_ref(), bob.public(), &opts, &plain);
    let (_, out) = envelope::open_pipelined(
        bob.clone(),
        alice.public(),
        &OpenOptions::default(),
        &good[..],
        Vec::new(),
    )
    .unwrap();
    assert!(out == plain);
    let body = HEADER_LEN + bob.public().modulus_len();
    for at in (body..good.len()).step_by(1024 + 16) {
        let mut bad = good.clone();
        bad[at] ^= 4;
        let err = envelope::open_pipelined(
            bob.clone(),
            alice.public(),
            &OpenOptions::default(),
            &bad[..],
            Vec::new(),
        )
        .expect_err("an altered chunk is refused");
        assert!(matches!(err, OpenError::Verification), "at {at}: {err}");
    }
}

/// The command line reads an input file of a megabyte or more through a memory map
/// (`letterlock::mapped`): sealed and opened by the binary, files across the map's pages and
/// the pipeline's pieces come back byte for byte.
#[test]
fn the_binary_seals_and_opens_mapped_files_byte_for_byte() {
    use common::cli::{ok, put_private, put_public};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put_private(d, "alice2048", "alice.pem");
    put_public(d, "alice2048", "alice_public.pem");
    put_private(d, "bob2048", "bob.pem");
    put_public(d, "bob2048", "bob_public.pem");
    for len in [
        letterlock::mapped::MIN_MAPPED as usize,
        2 * PIECE + 4097,
        5 * 1024 * KIB + 3,
    ] {
        let plain = data(len);
        fs::write(d.join("plain"), &plain).unwrap();
        for f in ["sealed", "opened"] {
            let _ = fs::remove_file(d.join(f));
        }
        let seal = [
            "seal",
            "-q",
            "--from",
            "alice.pem",
            "--to",
            "bob_public.pem",
        ];
        ok(d, &[&seal[..], &["-o", "sealed", "plain"]].concat());
        let open = [
            "open",
            "-q",
            "--key",
            "bob.pem",
            "--from",
            "alice_public.pem",
        ];
        ok(d, &[&open[..], &["-o", "opened", "sealed"]].concat());
        assert!(fs::read(d.join("opened")).unwrap() == plain, "{len} bytes");
    }
}
