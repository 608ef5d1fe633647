//! Test vectors for the sealed-message format, version 1 (docs/PROTOCOL.md, "Test vectors").
//!
//! Each `tests/vectors/CASE.json` holds fixed inputs (key names from `tests/keys`, mode, chunk
//! size, message id, time, content key, plaintext) and what they must give. RSA-OAEP and PSS are
//! randomized, so a vector pins what is deterministic and checks the rest by opening:
//! - byte for byte: the header, its SHA-256, the HKDF payload key (hybrid), the AES-GCM
//!   ciphertext at every plaintext position and the tag of every chunk that holds plaintext only
//!   (hybrid), and the sealed length;
//! - one stored run (`expected.sealed`): it opens with the fixed keys to the plaintext and gives
//!   `expected.ack_tag`, through the library and through an independent decoder written here
//!   from the specification.
//!
//! Regenerate (only for a deliberate format change, which also needs a new format version):
//! `cargo test --test suite -- --ignored vectors::regenerate_vectors`

use crate::common;

use std::path::PathBuf;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use common::{private, seal_fixed, sha256};
use letterlock::envelope::stream::payload_key;
use letterlock::envelope::{
    FixedRandomness, HEADER_LEN, Mode, OpenOptions, SealOptions, Sealer, header_hash, open_to_vec,
};
use letterlock::keys::{Identity, PrivateKey};
use serde::{Deserialize, Serialize};

/// GCM tag length.
const TAG: usize = 16;

/// One vector file.
#[derive(Serialize, Deserialize, Debug)]
struct Vector {
    description: String,
    input: Input,
    expected: Expected,
}

#[derive(Serialize, Deserialize, Debug)]
struct Input {
    /// Key pair names in `tests/keys` (`NAME_private.pem` / `NAME_public.pem`).
    sender: String,
    recipient: String,
    /// `hybrid` or `asymmetric`.
    mode: String,
    /// Hybrid plaintext bytes per chunk; 0 in asymmetric mode.
    chunk_size: u32,
    /// Hex, 16 bytes.
    message_id: String,
    /// Unix seconds.
    created: u64,
    /// Hex, 32 bytes (unused in asymmetric mode).
    content_key: String,
    /// Hex.
    plaintext: String,
}

#[derive(Serialize, Deserialize, Debug)]
struct Expected {
    /// Hex, the 104-byte header.
    header: String,
    /// Hex, SHA-256(header): the hybrid AD and the start of every OAEP label.
    header_sha256: String,
    /// Hex, HKDF-SHA-256(content key, salt = message id, info "letterlock v1 payload"); hybrid.
    payload_key: Option<String>,
    /// Hex, hybrid: the STREAM ciphertext bytes at the plaintext positions, tags removed
    /// (as long as the plaintext).
    plaintext_ciphertext: Option<String>,
    /// Hex, hybrid: the GCM tag of every chunk made only of plaintext, in order.
    plaintext_chunk_tags: Vec<String>,
    /// Length of every sealed message of these inputs.
    sealed_len: usize,
    /// Hex, the sealed bytes of one run.
    sealed: String,
    /// Hex, the ack tag of that run (it depends on the signature, so on the run).
    ack_tag: String,
}

/// The inputs of every vector: (file name, description, sender, recipient, mode, chunk size,
/// plaintext).
struct Case {
    name: &'static str,
    description: &'static str,
    sender: &'static str,
    recipient: &'static str,
    mode: Mode,
    chunk_size: u32,
    plaintext: fn() -> Vec<u8>,
}

const CREATED: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn text(len: usize) -> Vec<u8> {
    b"letterlock test vector. "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

const CASES: [Case; 5] = [
    Case {
        name: "hybrid_empty",
        description: "hybrid, empty message: one final chunk holding only the signature",
        sender: "alice2048",
        recipient: "bob2048",
        mode: Mode::Hybrid,
        chunk_size: 65536,
        plaintext: Vec::new,
    },
    Case {
        name: "hybrid_hello",
        description: "hybrid, \"hello\", 3072-bit keys, default chunk size",
        sender: "alice3072",
        recipient: "bob3072",
        mode: Mode::Hybrid,
        chunk_size: 65536,
        plaintext: || b"hello".to_vec(),
    },
    Case {
        name: "hybrid_two_chunks",
        description: "hybrid, 1500 bytes in 1024-byte chunks: chunk 0 is all plaintext, \
                      the final chunk holds the rest and the 256-byte signature",
        sender: "alice2048",
        recipient: "bob2048",
        mode: Mode::Hybrid,
        chunk_size: 1024,
        plaintext: || text(1500),
    },
    Case {
        name: "asymmetric_hello",
        description: "asymmetric, \"hello\": 5 + 256 bytes of data block in two OAEP chunks",
        sender: "alice2048",
        recipient: "bob2048",
        mode: Mode::Asymmetric,
        chunk_size: 0,
        plaintext: || b"hello".to_vec(),
    },
    Case {
        name: "asymmetric_three_chunks",
        description: "asymmetric, 500 bytes, 3072-bit keys: 500 + 384 bytes of data block \
                      in three OAEP chunks of at most 318 bytes",
        sender: "alice3072",
        recipient: "bob3072",
        mode: Mode::Asymmetric,
        chunk_size: 0,
        plaintext: || text(500),
    },
];

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn mode_of(name: &str) -> Mode {
    match name {
        "hybrid" => Mode::Hybrid,
        "asymmetric" => Mode::Asymmetric,
        other => panic!("unknown mode {other:?} in a vector"),
    }
}

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s)
        .unwrap()
        .try_into()
        .unwrap_or_else(|v: Vec<u8>| panic!("expected {N} bytes, got {}", v.len()))
}

/// The deterministic part of a hybrid body: ciphertext at the plaintext positions, and the tags
/// of chunks made only of plaintext. `body` is what follows header and wrapped key.
fn hybrid_deterministic(
    body: &[u8],
    chunk_size: usize,
    plain_len: usize,
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut ciphertext = Vec::new();
    let mut tags = Vec::new();
    for (i, sealed_chunk) in body.chunks(chunk_size + TAG).enumerate() {
        assert!(sealed_chunk.len() > TAG, "chunk {i} has no data");
        let (ct, tag) = sealed_chunk.split_at(sealed_chunk.len() - TAG);
        ciphertext.extend_from_slice(ct);
        if (i + 1) * chunk_size <= plain_len {
            tags.push(tag.to_vec());
        }
    }
    ciphertext.truncate(plain_len);
    (ciphertext, tags)
}

/// Decodes a sealed message from its specification alone (docs/PROTOCOL.md), not through the
/// library's opener: returns the data block (plaintext || signature).
fn reference_decrypt(
    sealed: &[u8],
    recipient: &PrivateKey,
    mode: Mode,
    chunk_size: usize,
    content_key: &[u8; 32],
) -> Vec<u8> {
    let header = &sealed[..HEADER_LEN];
    let hh = sha256(header);
    let k = recipient.public().modulus_len();
    let mut data = Vec::new();
    match mode {
        Mode::Hybrid => {
            let wrapped = &sealed[HEADER_LEN..HEADER_LEN + k];
            let key = recipient.decrypt_oaep(wrapped, &hh).unwrap();
            assert_eq!(&key[..], content_key, "wrapped content key");
            let message_id = &header[76..92];
            let prk =
                aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, message_id).extract(&key);
            let mut payload = [0u8; 32];
            prk.expand(&[b"letterlock v1 payload"], aws_lc_rs::hkdf::HKDF_SHA256)
                .unwrap()
                .fill(&mut payload)
                .unwrap();
            let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &payload).unwrap());
            let body = &sealed[HEADER_LEN + k..];
            let count = body.len().div_ceil(chunk_size + TAG);
            for (i, sealed_chunk) in body.chunks(chunk_size + TAG).enumerate() {
                let last = i + 1 == count;
                assert!(last || sealed_chunk.len() == chunk_size + TAG);
                let mut nonce = [0u8; 12];
                nonce[..11].copy_from_slice(&(i as u128).to_be_bytes()[5..]);
                nonce[11] = u8::from(last);
                let mut buf = sealed_chunk.to_vec();
                let plain = aead
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(hh), &mut buf)
                    .unwrap_or_else(|_| panic!("hybrid chunk {i} did not authenticate"));
                assert!(!plain.is_empty() && plain.len() <= chunk_size);
                data.extend_from_slice(plain);
            }
        }
        Mode::Asymmetric => {
            let body = &sealed[HEADER_LEN..];
            assert_eq!(body.len() % k, 0);
            let count = (body.len() / k) as u32;
            for (index, block) in (0u32..).zip(body.chunks(k)) {
                let mut label = hh.to_vec();
                label.extend_from_slice(&index.to_be_bytes());
                label.extend_from_slice(&count.to_be_bytes());
                let plain = recipient
                    .decrypt_oaep(block, &label)
                    .unwrap_or_else(|e| panic!("OAEP chunk {index}: {e}"));
                let max = k - 66;
                if index + 1 == count {
                    assert!((1..=max).contains(&plain.len()), "final chunk length");
                } else {
                    assert_eq!(plain.len(), max, "chunk {index} length");
                }
                data.extend_from_slice(&plain);
            }
        }
    }
    data
}

/// Checks the header bytes field by field against the documented layout.
fn check_header_layout(header: &[u8], input: &Input, sender: &PrivateKey, recipient: &PrivateKey) {
    assert_eq!(header.len(), HEADER_LEN);
    assert_eq!(&header[0..8], b"LETRLOCK", "magic");
    assert_eq!(header[8], 1, "version");
    let mode_byte = match mode_of(&input.mode) {
        Mode::Asymmetric => 1,
        Mode::Hybrid => 2,
    };
    assert_eq!(header[9], mode_byte, "mode");
    assert_eq!(&header[10..12], [0, 0], "reserved");
    assert_eq!(&header[12..44], sender.public().id().0, "sender key id");
    assert_eq!(
        &header[44..76],
        recipient.public().id().0,
        "recipient key id"
    );
    assert_eq!(hex::encode(&header[76..92]), input.message_id, "message id");
    assert_eq!(&header[92..100], input.created.to_be_bytes(), "created");
    let chunk = match mode_of(&input.mode) {
        Mode::Hybrid => input.chunk_size,
        Mode::Asymmetric => 0,
    };
    assert_eq!(&header[100..104], chunk.to_be_bytes(), "chunk size");
}

fn check(name: &str) {
    let path = vectors_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (see regenerate_vectors)", path.display()));
    let v: Vector = serde_json::from_str(&text).unwrap();
    let input = &v.input;
    let exp = &v.expected;
    let sender = private(&input.sender);
    let recipient = private(&input.recipient);
    let mode = mode_of(&input.mode);
    let opts = SealOptions {
        chunk_size: input.chunk_size,
        ..SealOptions::mode(mode)
    };
    let fixed = FixedRandomness {
        message_id: unhex(&input.message_id),
        created: input.created,
        content_key: unhex(&input.content_key),
    };
    let plain = hex::decode(&input.plaintext).unwrap();

    // The header: from the sealer, from the vector, and from the documented layout.
    let (sealer, prefix) =
        Sealer::with_randomness(sender.clone(), recipient.public(), &opts, &fixed).unwrap();
    drop(sealer);
    let header: [u8; HEADER_LEN] = prefix[..HEADER_LEN].try_into().unwrap();
    assert_eq!(hex::encode(header), exp.header, "{name}: header");
    check_header_layout(&header, input, &sender, &recipient);
    assert_eq!(
        hex::encode(header_hash(&header)),
        exp.header_sha256,
        "{name}"
    );
    assert_eq!(hex::encode(sha256(&header)), exp.header_sha256, "{name}");

    // The payload key.
    let pk = match mode {
        Mode::Hybrid => Some(hex::encode(
            *payload_key(&fixed.content_key, &fixed.message_id).unwrap(),
        )),
        Mode::Asymmetric => None,
    };
    assert_eq!(pk, exp.payload_key, "{name}: payload key");

    // A fresh run matches the vector wherever the format is deterministic.
    let stored = hex::decode(&exp.sealed).unwrap();
    let (fresh, _) = seal_fixed(sender.clone(), recipient.public(), &opts, &fixed, &plain);
    assert_eq!(fresh.len(), exp.sealed_len, "{name}: sealed length");
    assert_eq!(stored.len(), exp.sealed_len, "{name}: stored sealed length");
    assert_eq!(&fresh[..HEADER_LEN], &stored[..HEADER_LEN], "{name}");
    if mode == Mode::Hybrid {
        let k = recipient.public().modulus_len();
        let chunk = input.chunk_size as usize;
        for (which, bytes) in [("fresh", &fresh), ("stored", &stored)] {
            let (ct, tags) = hybrid_deterministic(&bytes[HEADER_LEN + k..], chunk, plain.len());
            assert_eq!(
                Some(hex::encode(ct)),
                exp.plaintext_ciphertext,
                "{name}: {which} ciphertext of the plaintext"
            );
            let tags: Vec<String> = tags.iter().map(hex::encode).collect();
            assert_eq!(tags, exp.plaintext_chunk_tags, "{name}: {which} chunk tags");
        }
    } else {
        assert_eq!(exp.plaintext_ciphertext, None);
        assert!(exp.plaintext_chunk_tags.is_empty());
    }
    // The fresh run opens too, and differs from the stored one only by RSA randomness.
    let opts_open = OpenOptions::default();
    let (back, _) =
        open_to_vec(recipient.clone(), sender.public(), &opts_open, &fresh[..]).unwrap();
    assert_eq!(back[..], plain[..], "{name}: fresh run");

    // The stored run opens with the fixed keys to the plaintext and the expected ack tag.
    let (back, opened) = open_to_vec(recipient.clone(), sender.public(), &opts_open, &stored[..])
        .unwrap_or_else(|e| panic!("{name}: stored sealed bytes: {e}"));
    assert_eq!(back[..], plain[..], "{name}: plaintext");
    assert_eq!(hex::encode(opened.ack_tag), exp.ack_tag, "{name}: ack tag");
    assert_eq!(opened.header_bytes, header, "{name}");

    // The same, decoded from the specification alone.
    let data = reference_decrypt(
        &stored,
        &recipient,
        mode,
        input.chunk_size as usize,
        &fixed.content_key,
    );
    let sig_len = sender.public().modulus_len();
    assert_eq!(
        data.len(),
        plain.len() + sig_len,
        "{name}: data block length"
    );
    let (p, signature) = data.split_at(plain.len());
    assert_eq!(p, &plain[..], "{name}: reference plaintext");
    let mut t = b"letterlock v1 signature".to_vec();
    t.extend_from_slice(&header);
    t.extend_from_slice(&(plain.len() as u64).to_be_bytes());
    t.extend_from_slice(&sha256(&plain));
    assert!(
        sender.public().verify_pss(&t, signature),
        "{name}: signature"
    );
    let mut ack_key = b"letterlock v1 ack".to_vec();
    ack_key.extend_from_slice(signature);
    let ack = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &sha256(&ack_key)),
        &header,
    );
    assert_eq!(
        hex::encode(ack.as_ref()),
        exp.ack_tag,
        "{name}: reference ack tag"
    );

    // And one flipped bit anywhere in the stored run is refused.
    let mut bad = stored.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(open_to_vec(recipient.clone(), sender.public(), &opts_open, &bad[..]).is_err());
}

#[test]
fn hybrid_empty() {
    check("hybrid_empty");
}

#[test]
fn hybrid_hello() {
    check("hybrid_hello");
}

#[test]
fn hybrid_two_chunks() {
    check("hybrid_two_chunks");
}

#[test]
fn asymmetric_hello() {
    check("asymmetric_hello");
}

#[test]
fn asymmetric_three_chunks() {
    check("asymmetric_three_chunks");
}

/// Every file in tests/vectors is one of the cases above, and every case has its file: a
/// vector nobody checks, or a case whose file went missing, fails here.
#[test]
fn every_vector_file_is_checked() {
    let mut files: Vec<String> = std::fs::read_dir(vectors_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".json"))
        .collect();
    files.sort();
    let mut cases: Vec<String> = CASES.iter().map(|c| format!("{}.json", c.name)).collect();
    cases.sort();
    assert_eq!(files, cases);
}

/// The generator: writes `tests/vectors/CASE.json` for every case from the current library.
/// Run only for a deliberate format change:
/// `cargo test --test suite -- --ignored vectors::regenerate_vectors`
#[test]
#[ignore = "writes tests/vectors; run by hand for a deliberate format change"]
fn regenerate_vectors() {
    std::fs::create_dir_all(vectors_dir()).unwrap();
    for (n, case) in (0u8..).zip(CASES.iter()) {
        let sender = private(case.sender);
        let recipient = private(case.recipient);
        let opts = SealOptions {
            chunk_size: case.chunk_size,
            ..SealOptions::mode(case.mode)
        };
        let mut message_id: [u8; 16] = std::array::from_fn(|i| i as u8);
        message_id[15] = 0xf0 | n;
        let content_key: [u8; 32] = std::array::from_fn(|i| 0x20 + i as u8 + 0x40 * (n & 1));
        let fixed = FixedRandomness {
            message_id,
            created: CREATED,
            content_key,
        };
        let plain = (case.plaintext)();
        let (sealed, info) = seal_fixed(sender.clone(), recipient.public(), &opts, &fixed, &plain);
        let header: [u8; HEADER_LEN] = sealed[..HEADER_LEN].try_into().unwrap();
        let (plaintext_ciphertext, tags, payload) = match case.mode {
            Mode::Hybrid => {
                let k = recipient.public().modulus_len();
                let (ct, tags) = hybrid_deterministic(
                    &sealed[HEADER_LEN + k..],
                    case.chunk_size as usize,
                    plain.len(),
                );
                let key = payload_key(&content_key, &message_id).unwrap();
                (
                    Some(hex::encode(ct)),
                    tags.iter().map(hex::encode).collect(),
                    Some(hex::encode(*key)),
                )
            }
            Mode::Asymmetric => (None, Vec::new(), None),
        };
        let v = Vector {
            description: case.description.to_owned(),
            input: Input {
                sender: case.sender.to_owned(),
                recipient: case.recipient.to_owned(),
                mode: case.mode.name().to_owned(),
                chunk_size: case.chunk_size,
                message_id: hex::encode(message_id),
                created: CREATED,
                content_key: hex::encode(content_key),
                plaintext: hex::encode(&plain),
            },
            expected: Expected {
                header: hex::encode(header),
                header_sha256: hex::encode(header_hash(&header)),
                payload_key: payload,
                plaintext_ciphertext,
                plaintext_chunk_tags: tags,
                sealed_len: sealed.len(),
                sealed: hex::encode(&sealed),
                ack_tag: hex::encode(info.ack_tag),
            },
        };
        let mut json = serde_json::to_string_pretty(&v).unwrap();
        json.push('\n');
        std::fs::write(vectors_dir().join(format!("{}.json", case.name)), json).unwrap();
    }
}

/// One file of `tests/vectors/armor/`: its `key: value` lines, and the input after them.
struct ArmorCase {
    name: String,
    fields: std::collections::HashMap<String, String>,
    input: Vec<u8>,
}

fn armor_cases() -> Vec<ArmorCase> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/armor");
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "txt") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let split = bytes
            .windows(2)
            .position(|w| w == b"\n\n")
            .unwrap_or_else(|| panic!("{}: no blank line after the fields", path.display()));
        let head = std::str::from_utf8(&bytes[..split]).unwrap();
        let fields = head
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect();
        cases.push(ArmorCase {
            name: path.file_stem().unwrap().to_string_lossy().into_owned(),
            fields,
            input: bytes[split + 2..].to_vec(),
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

/// Every armor vector gives the result it states, however the input is split into reads: the
/// decoded bytes for `ok` (and, for canonical cases, `ArmorWriter` writes the input back
/// exactly), or the named `ArmorError`.
#[test]
fn armor_vectors_give_their_stated_result() {
    use letterlock::envelope::armor::{ArmorError, ArmorReader, ArmorWriter};
    use std::io::{BufReader, Read, Write};
    let cases = armor_cases();
    assert!(cases.len() >= 30, "only {} armor vectors", cases.len());
    let (mut oks, mut errors) = (0, 0);
    for case in &cases {
        let expect = &case.fields["expect"];
        for capacity in [1, 7, 64, 8192] {
            let mut out = Vec::new();
            let result = ArmorReader::new(BufReader::with_capacity(capacity, &case.input[..]))
                .read_to_end(&mut out);
            let what = format!("{} (buffer {capacity})", case.name);
            if expect == "ok" {
                result.unwrap_or_else(|e| panic!("{what}: refused: {e}"));
                assert_eq!(hex::encode(&out), case.fields["decoded"], "{what}");
            } else {
                let variant = expect.strip_prefix("error ").expect("ok or error VARIANT");
                let err = result.expect_err(&format!("{what}: accepted"));
                let got = ArmorError::of(&err).unwrap_or_else(|| panic!("{what}: {err}"));
                assert_eq!(format!("{got:?}"), variant, "{what}: {err}");
            }
        }
        if expect == "ok" {
            oks += 1;
            if case.fields.get("canonical").is_some_and(|v| v == "yes") {
                let mut w = ArmorWriter::new(Vec::new());
                w.write_all(&hex::decode(&case.fields["decoded"]).unwrap())
                    .unwrap();
                assert_eq!(
                    w.finish().unwrap(),
                    case.input,
                    "{}: not canonical",
                    case.name
                );
            }
        } else {
            errors += 1;
        }
    }
    assert!(oks > 0 && errors > 0);
}

/// The line limit of docs/PROTOCOL.md, both sides: a 64-character line is read, a 65-character
/// one refused (with either line ending), wherever it is.
#[test]
fn armor_line_limit_is_64_characters() {
    use letterlock::envelope::armor::{ArmorError, ArmorReader, BEGIN, END, MAX_LINE};
    use std::io::Read;
    assert_eq!(MAX_LINE, 64);
    let line = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 48]);
    assert_eq!(line.len(), 64);
    for nl in ["\n", "\r\n"] {
        let ok = format!("{BEGIN}{nl}{line}{nl}{END}{nl}");
        let mut out = Vec::new();
        ArmorReader::new(ok.as_bytes())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, [7u8; 48]);
        let long = format!("{BEGIN}{nl}{line}A{nl}{END}{nl}");
        let err = ArmorReader::new(long.as_bytes())
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(
            ArmorError::of(&err),
            Some(ArmorError::LineTooLong),
            "{nl:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Client to client (docs/PROTOCOL.md section 15): a directory entry and a receipt commitment.

/// `tests/vectors/client_to_client/directory_entry.json`.
#[derive(Serialize, Deserialize)]
struct DirectoryVector {
    description: String,
    input: DirectoryInput,
    expected: DirectoryExpected,
}

#[derive(Serialize, Deserialize)]
struct DirectoryInput {
    /// The key that signs the directory (a server's), by name in tests/keys.
    server: String,
    /// The client the entry publishes, by name in tests/keys.
    client: String,
    serial: u64,
    since: u64,
    name: String,
    /// An ack tag, for the receipt commitment.
    ack_tag: String,
}

#[derive(Serialize, Deserialize)]
struct DirectoryExpected {
    entry: String,
    entry_sha256: String,
    /// The client's key id (SHA-256 of its SPKI): computed by the reader, not carried.
    client_key_id: String,
    /// One run's RSA-PSS signature by the server key (PSS is randomized: verify it).
    signature: String,
    receipt_commitment: String,
}

fn directory_vector_path() -> PathBuf {
    vectors_dir().join("client_to_client/directory_entry.json")
}

fn directory_input() -> DirectoryInput {
    DirectoryInput {
        server: "alice4096".to_owned(),
        client: "bob3072".to_owned(),
        serial: 7,
        since: 1_800_000_000,
        name: "bob".to_owned(),
        ack_tag: hex::encode([0x11u8; 32]),
    }
}

/// Reads an entry as docs/PROTOCOL.md section 15 lays it out, with nothing from the library:
/// (serial, since, name, SPKI).
fn parse_entry_by_hand(entry: &[u8]) -> (u64, u64, String, Vec<u8>) {
    let context = b"letterlock v1 directory";
    assert_eq!(&entry[..context.len()], context);
    let mut at = context.len();
    let mut take = |n: usize| {
        let piece = &entry[at..at + n];
        at += n;
        piece.to_vec()
    };
    let serial = u64::from_be_bytes(take(8).try_into().unwrap());
    let since = u64::from_be_bytes(take(8).try_into().unwrap());
    let name_len = take(1)[0] as usize;
    let name = String::from_utf8(take(name_len)).unwrap();
    let spki_len = u16::from_be_bytes(take(2).try_into().unwrap()) as usize;
    let spki = take(spki_len);
    assert_eq!(at, entry.len(), "nothing after the key");
    (serial, since, name, spki)
}

#[test]
fn directory_entry_vector() {
    let v: DirectoryVector =
        serde_json::from_str(&std::fs::read_to_string(directory_vector_path()).unwrap()).unwrap();
    let server = private(&v.input.server);
    let client = private(&v.input.client);
    let entry = hex::decode(&v.expected.entry).unwrap();
    // The library encodes the inputs to exactly these bytes.
    let ours = letterlock::directory::Entry {
        serial: v.input.serial,
        since: v.input.since,
        name: v.input.name.clone(),
        key: client.public().clone(),
    }
    .encode()
    .unwrap();
    assert_eq!(hex::encode(&ours), v.expected.entry);
    assert_eq!(hex::encode(sha256(&entry)), v.expected.entry_sha256);
    // Read by hand from the document's layout: the inputs, and the client's key as its SPKI DER.
    let (serial, since, name, spki) = parse_entry_by_hand(&entry);
    assert_eq!((serial, since, name.as_str()), (7, 1_800_000_000, "bob"));
    assert_eq!(spki, client.public().spki_der());
    assert_eq!(hex::encode(sha256(&spki)), v.expected.client_key_id);
    // The stored signature verifies under the server key (PSS, SHA-256, MGF1-SHA-256, salt 32;
    // tests/suite/openssl.rs checks the library's PSS against OpenSSL), not under the client's key.
    let signature = hex::decode(&v.expected.signature).unwrap();
    let signed = letterlock::directory::SignedEntry {
        entry: entry.clone(),
        signature: signature.clone(),
    };
    assert_eq!(signed.verify(server.public()).unwrap().name, "bob");
    assert!(signed.verify(client.public()).is_err());
    // The receipt commitment: SHA-256("letterlock v1 receipt" || ack tag).
    let tag: [u8; 32] = unhex(&v.input.ack_tag);
    let mut input = b"letterlock v1 receipt".to_vec();
    input.extend_from_slice(&tag);
    assert_eq!(hex::encode(sha256(&input)), v.expected.receipt_commitment);
    assert_eq!(
        hex::encode(letterlock::wire::receipt_commitment(&tag)),
        v.expected.receipt_commitment
    );
}

/// Writes `tests/vectors/client_to_client/directory_entry.json`:
/// `cargo test --test suite -- --ignored vectors::regenerate_vectors_client_to_client`
#[test]
#[ignore = "writes tests/vectors; run by hand for a deliberate format change"]
fn regenerate_vectors_client_to_client() {
    let input = directory_input();
    let server = private(&input.server);
    let client = private(&input.client);
    let entry = letterlock::directory::Entry {
        serial: input.serial,
        since: input.since,
        name: input.name.clone(),
        key: client.public().clone(),
    };
    let signed = entry.sign(&*server).unwrap();
    let tag: [u8; 32] = unhex(&input.ack_tag);
    let v = DirectoryVector {
        description: "a directory entry for bob3072 named bob, serial 7, signed by the server \
                      key alice4096; and the receipt commitment of the ack tag 0x11 * 32"
            .to_owned(),
        expected: DirectoryExpected {
            entry: hex::encode(&signed.entry),
            entry_sha256: hex::encode(sha256(&signed.entry)),
            client_key_id: hex::encode(sha256(client.public().spki_der())),
            signature: hex::encode(&signed.signature),
            receipt_commitment: hex::encode(letterlock::wire::receipt_commitment(&tag)),
        },
        input,
    };
    let path = directory_vector_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut json = serde_json::to_string_pretty(&v).unwrap();
    json.push('\n');
    std::fs::write(path, json).unwrap();
}

/// A delegated handshake key's certificate (docs/PROTOCOL.md section 13, "Delegated handshake
/// keys"): its exact TBSCertificate, and a whole certificate that verifies.
#[derive(Serialize, Deserialize)]
struct DelegatedVector {
    description: String,
    input: DelegatedInput,
    expected: DelegatedExpected,
}

#[derive(Serialize, Deserialize)]
struct DelegatedInput {
    /// The letterlock key that certifies the handshake key, by name in tests/keys.
    issuer: String,
    /// The handshake key's SubjectPublicKeyInfo (EC P-256), DER in hex.
    handshake_key_spki: String,
    /// The 16 serial bytes before the top bit is cleared and the lowest set on the first.
    serial: String,
    not_before: u64,
    not_after: u64,
}

#[derive(Serialize, Deserialize)]
struct DelegatedExpected {
    /// SHA-256 of the issuer's SPKI: the authorityKeyIdentifier.
    issuer_key_id: String,
    /// The TBSCertificate, byte for byte.
    tbs_certificate: String,
    /// One run's whole certificate (RSA-PSS is randomized: verify it).
    certificate: String,
}

fn delegated_vector_path() -> PathBuf {
    vectors_dir().join("tls/delegated_handshake_key.json")
}

fn delegated_input() -> DelegatedInput {
    DelegatedInput {
        issuer: "bob3072".to_owned(),
        handshake_key_spki: "3059301306072a8648ce3d020106082a8648ce3d0301070342000480cac7fe9c0d04\
                             ee07e99891cf4f6450d264ad6ef1c1eee7cb80c26b2c519437f099037d7edb4ec9d0\
                             5d1e4b89325e057468c24022a6ad830c6598e367a788c9"
            .to_owned(),
        serial: hex::encode([0xc2u8; 16]),
        not_before: 1_800_000_000,
        not_after: 1_800_000_000 + 7 * 24 * 3600,
    }
}

/// The TBSCertificate of a DER certificate: the first element of its outer SEQUENCE, found by
/// reading the two DER headers by hand.
fn tbs_of(cert: &[u8]) -> &[u8] {
    // A header: tag, then a length in short form or 0x81/0x82 long form.
    fn header(b: &[u8]) -> (usize, usize) {
        match b[1] {
            n if n < 0x80 => (2, n as usize),
            0x81 => (3, b[2] as usize),
            0x82 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
            other => panic!("length form {other:#x}"),
        }
    }
    assert_eq!(cert[0], 0x30);
    let (outer, _) = header(cert);
    let inner = &cert[outer..];
    assert_eq!(inner[0], 0x30);
    let (h, len) = header(inner);
    &inner[..h + len]
}

#[test]
fn delegated_handshake_key_vector() {
    use letterlock::tls::{CertificateDer, UnixTime, delegated};
    use std::time::Duration;

    let v: DelegatedVector =
        serde_json::from_str(&std::fs::read_to_string(delegated_vector_path()).unwrap()).unwrap();
    let issuer = private(&v.input.issuer);
    let spki = hex::decode(&v.input.handshake_key_spki).unwrap();
    let serial: [u8; 16] = unhex(&v.input.serial);
    let (from, until) = (v.input.not_before, v.input.not_after);
    assert_eq!(
        hex::encode(sha256(issuer.public().spki_der())),
        v.expected.issuer_key_id
    );
    // The library makes exactly this TBSCertificate from the inputs.
    let ours = delegated::certificate(
        &*issuer,
        &spki,
        &serial,
        Duration::from_secs(from),
        Duration::from_secs(until),
    )
    .unwrap();
    assert_eq!(hex::encode(tbs_of(&ours)), v.expected.tbs_certificate);
    // The stored certificate's TBS is the same, its signature verifies under the issuer's key,
    // and it carries the key id and the handshake key where the document puts them.
    let cert = hex::decode(&v.expected.certificate).unwrap();
    let tbs = tbs_of(&cert);
    assert_eq!(hex::encode(tbs), v.expected.tbs_certificate);
    let signature = &cert[cert.len() - issuer.public().modulus_len()..];
    assert!(issuer.public().verify_pss(tbs, signature));
    let key_id = hex::decode(&v.expected.issuer_key_id).unwrap();
    assert!(tbs.windows(key_id.len()).any(|w| w == key_id));
    assert!(tbs.windows(spki.len()).any(|w| w == spki));
    // Accepted inside its validity (naming the issuer), refused outside, and only under the
    // issuer's key.
    let der = CertificateDer::from(cert.as_slice());
    let at = |t: u64| UnixTime::since_unix_epoch(Duration::from_secs(t));
    let issuer_key = issuer.public().clone();
    let lookup = |id| {
        assert_eq!(id, issuer_key.id());
        Ok(&issuer_key)
    };
    assert_eq!(
        delegated::verify(&der, at(from + 3600), lookup).unwrap(),
        issuer_key.id()
    );
    for outside in [from - 1, until + 1] {
        assert!(delegated::verify(&der, at(outside), lookup).is_err());
    }
    let other = private("alice3072").public().clone();
    assert!(delegated::verify(&der, at(from + 3600), |_| Ok(&other)).is_err());
}

/// Writes `tests/vectors/tls/delegated_handshake_key.json`:
/// `cargo test --test suite -- --ignored vectors::regenerate_vectors_delegated_handshake_key`
#[test]
#[ignore = "writes tests/vectors; run by hand for a deliberate format change"]
fn regenerate_vectors_delegated_handshake_key() {
    use std::time::Duration;
    let input = delegated_input();
    let issuer = private(&input.issuer);
    let cert = letterlock::tls::delegated::certificate(
        &*issuer,
        &hex::decode(&input.handshake_key_spki).unwrap(),
        &unhex(&input.serial),
        Duration::from_secs(input.not_before),
        Duration::from_secs(input.not_after),
    )
    .unwrap();
    let v = DelegatedVector {
        description: "the certificate of a delegated handshake key (EC P-256) by the letterlock \
                      key bob3072, valid 7 days from 2027-01-15T08:00:00Z"
            .to_owned(),
        expected: DelegatedExpected {
            issuer_key_id: hex::encode(sha256(issuer.public().spki_der())),
            tbs_certificate: hex::encode(tbs_of(&cert)),
            certificate: hex::encode(&cert),
        },
        input,
    };
    let path = delegated_vector_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut json = serde_json::to_string_pretty(&v).unwrap();
    json.push('\n');
    std::fs::write(path, json).unwrap();
}

/// review-dk: PROTOCOL.md section 13, "Checking one": the certificate is strict DER and its
/// signature is checked over the TBSCertificate as received. The vector's certificate with the
/// authorityKeyIdentifier's `critical` written out as an explicit FALSE (DER forbids encoding a
/// DEFAULT; no RSA key is needed to make this change) is another certificate whose TBS was
/// never signed. `delegated::verify` accepts it today, because it checks the signature over its
/// own re-encoding of the TBS (x509-cert drops the default, and rewrites a GeneralizedTime
/// before 2050 as UTCTime, so a certificate so written fails as `BadSignature`).
#[test]
fn a_delegated_certificate_altered_without_the_key_is_refused() {
    use letterlock::tls::{CertificateDer, UnixTime, delegated};
    use std::time::Duration;

    let v: DelegatedVector =
        serde_json::from_str(&std::fs::read_to_string(delegated_vector_path()).unwrap()).unwrap();
    let issuer = private(&v.input.issuer).public().clone();
    let cert = hex::decode(&v.expected.certificate).unwrap();
    let at = UnixTime::since_unix_epoch(Duration::from_secs(v.input.not_before + 3600));
    let lookup = |_| Ok(&issuer);
    assert!(delegated::verify(&CertificateDer::from(cert.as_slice()), at, lookup).is_ok());

    // Each edit adds 3 bytes: the AKI extension, its [3] EXPLICIT and SEQUENCE wrappers, the
    // TBS and the certificate grow by 3.
    let edits: [(&str, &str); 4] = [
        ("30820364", "30820367"),
        ("30820198", "3082019b"),
        ("a34d304b", "a350304e"),
        (
            "302b0603551d230424",
            "302e0603551d230101000424", /* critical FALSE */
        ),
    ];
    let mut altered = hex::encode(&cert);
    for (from, to) in edits {
        assert_eq!(altered.matches(from).count(), 1, "{from}");
        altered = altered.replacen(from, to, 1);
    }
    let altered = hex::decode(altered).unwrap();
    assert_eq!(altered.len(), cert.len() + 3);
    let result = delegated::verify(&CertificateDer::from(altered.as_slice()), at, lookup);
    assert!(result.is_err(), "accepted: {result:?}");
}

/// `tests/vectors/agent/frames.json`: each frame of the client agent's socket, written down
/// from PROTOCOL.md's section 16 (not by the library), decodes to the value it describes, and
/// that value encodes to exactly those bytes.
#[test]
fn agent_frames_vector() {
    use letterlock::client::agent::{Reply, Request, SendRequest};
    use letterlock::envelope::MessageId;
    let path = vectors_dir().join("agent").join("frames.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    let mode = |c: &serde_json::Value| mode_of(c["mode"].as_str().unwrap());
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let framed = hex::decode(c["framed"].as_str().unwrap()).unwrap();
        let (len, body) = framed.split_at(4);
        assert_eq!(
            u32::from_be_bytes(len.try_into().unwrap()) as usize,
            body.len(),
            "{name}: the length prefix"
        );
        let text = || c["text"].as_str().unwrap().to_owned();
        match c["direction"].as_str().unwrap() {
            "request" => {
                let expected = match c["kind"].as_str().unwrap() {
                    "send" => Request::Send(SendRequest {
                        server: c["server"].as_str().unwrap().to_owned(),
                        mode: mode(c),
                        max_asymmetric: c["max_asymmetric"].as_u64().unwrap(),
                        wait_s: c["wait_s"].as_u64().unwrap().try_into().unwrap(),
                        message: hex::decode(c["message_hex"].as_str().unwrap())
                            .unwrap()
                            .into(),
                    }),
                    "stop" => Request::Stop,
                    other => panic!("{name}: kind {other}"),
                };
                assert_eq!(Request::decode(body).unwrap(), expected, "{name}");
                assert_eq!(&expected.encode().unwrap()[..], body, "{name}");
            }
            "reply" => {
                let expected = match c["status"].as_str().unwrap() {
                    "delivered" => Reply::Delivered {
                        id: MessageId(unhex(c["id"].as_str().unwrap())),
                        plaintext_len: c["plaintext_len"].as_u64().unwrap(),
                        mode: mode(c),
                    },
                    "not_delivered" => Reply::NotDelivered(text()),
                    "not_proven" => Reply::NotProven {
                        id: MessageId(unhex(c["id"].as_str().unwrap())),
                        text: text(),
                    },
                    "declined" => Reply::Declined(text()),
                    "stopping" => Reply::Stopping,
                    other => panic!("{name}: status {other}"),
                };
                assert_eq!(Reply::decode(body).unwrap(), expected, "{name}");
                assert_eq!(expected.encode(), body, "{name}");
                // A text with a hint: what failed, then the hint after the first line feed.
                if let Some(failed) = c["failed"].as_str() {
                    let hint = c["hint"].as_str();
                    assert_eq!(
                        letterlock::client::agent::split_hint(&text()),
                        (failed, hint)
                    );
                    assert_eq!(letterlock::client::agent::with_hint(failed, hint), text());
                }
            }
            other => panic!("{name}: direction {other}"),
        }
    }
}
