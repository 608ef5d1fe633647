//! Bodies of the fuzz targets in `fuzz/`, as plain functions, so that the fuzz targets and the
//! corpus replay test (`tests/fuzz_corpus.rs`) run exactly the same code. Not an API: each
//! function panics when the property it checks is broken, which is what a fuzzer looks for.
//! docs/FUZZING.md says how to run the targets.

use std::io::{BufReader, Read, Write};
use std::sync::Arc;

use crate::envelope::armor::{ArmorReader, ArmorWriter, is_armored};
use crate::envelope::{
    self, HEADER_LEN, Header, HeaderError, MessageId, Mode, OpenError, OpenOptions, Opener,
    header_hash,
};
use crate::keys::{Identity, PrivateKey, PublicKey};

/// `Header::parse` on arbitrary bytes: never panics; short input is `Truncated(len)`; whatever
/// parses re-encodes to exactly the bytes it was parsed from.
pub fn header(data: &[u8]) {
    match Header::parse(data) {
        Ok(h) => assert_eq!(
            h.encode()[..],
            data[..HEADER_LEN],
            "a parsed header re-encodes differently"
        ),
        Err(HeaderError::Truncated(n)) => {
            assert!(
                data.len() < HEADER_LEN && n == data.len(),
                "bad Truncated({n})"
            )
        }
        Err(_) => assert!(
            data.len() >= HEADER_LEN,
            "a short header gave a field error"
        ),
    }
}

/// The fixed keys the open targets use: who receives, who is trusted as the sender.
pub struct Fixture {
    recipient: Arc<PrivateKey>,
    sender: PublicKey,
    /// A valid content key wrapped to the recipient under the fixed hybrid header, so inputs
    /// can start past the RSA step.
    wrapped_key: Vec<u8>,
}

impl Fixture {
    /// `recipient` opens; `sender` is the only trusted sender.
    pub fn new(recipient: Arc<PrivateKey>, sender: PublicKey) -> Fixture {
        let header = fixed_header(&recipient, &sender, Mode::Hybrid);
        let wrapped_key = recipient
            .public()
            .encrypt_oaep(&Fixture::CONTENT_KEY, &header_hash(&header))
            .expect("wrapping a content key");
        Fixture {
            recipient,
            sender,
            wrapped_key,
        }
    }

    /// From PEM text: the recipient's private key and the sender's public key.
    pub fn from_pem(recipient_private: &str, sender_public: &str) -> Fixture {
        Fixture::new(
            Arc::new(PrivateKey::from_pem(recipient_private).expect("recipient key")),
            PublicKey::from_pem(sender_public).expect("sender key"),
        )
    }

    /// The valid header [`open_after_header`] puts before its input in `mode`.
    pub fn header(&self, mode: Mode) -> [u8; HEADER_LEN] {
        fixed_header(&self.recipient, &self.sender, mode)
    }

    /// The content key inside [`Fixture::wrapped_key`].
    pub const CONTENT_KEY: [u8; 32] = [0x42; 32];

    /// The content key wrapped to the recipient under the hybrid [`Fixture::header`].
    pub fn wrapped_key(&self) -> &[u8] {
        &self.wrapped_key
    }

    fn trust(&self) -> impl FnOnce(&crate::keys::KeyId) -> Option<PublicKey> + '_ {
        move |id| (*id == self.sender.id()).then(|| self.sender.clone())
    }
}

/// The valid header the open targets put before the fuzz input.
fn fixed_header(recipient: &PrivateKey, sender: &PublicKey, mode: Mode) -> [u8; HEADER_LEN] {
    Header {
        mode,
        sender: sender.id(),
        recipient: recipient.public().id(),
        message_id: MessageId([0x11; 16]),
        created: 1_800_000_000,
        chunk_size: if mode == Mode::Hybrid { 1024 } else { 0 },
    }
    .encode()
}

/// Arbitrary bytes fed to an [`Opener`] after a valid header for the fixture's keys.
///
/// The first input byte steers: bit 0 set (hybrid) puts the fixture's valid wrapped content key
/// first, so the rest reaches the STREAM decoder; bits 1..8 pick the size of the pieces fed to
/// `update` (1 to 127 bytes, 0 = all at once), exercising every split of the streaming state.
/// Checks: no panic; the only errors possible after a valid header are `Verification` and
/// `TooLarge`; an accepted message released exactly `plaintext_len` bytes. Returns whether
/// the message was accepted (only valid seeds are).
pub fn open_after_header(fx: &Fixture, mode: Mode, data: &[u8]) -> bool {
    let Some((&steer, rest)) = data.split_first() else {
        return false;
    };
    let header = fx.header(mode);
    let identity: Arc<dyn Identity> = fx.recipient.clone();
    let mut opener = Opener::new(&header, identity, fx.trust(), &OpenOptions::default())
        .expect("the fixed header is valid");
    let mut body = Vec::with_capacity(fx.wrapped_key.len() + rest.len());
    if mode == Mode::Hybrid && steer & 1 == 1 {
        body.extend_from_slice(&fx.wrapped_key);
    }
    body.extend_from_slice(rest);
    let piece = usize::from(steer >> 1);
    let piece = if piece == 0 { body.len().max(1) } else { piece };
    let mut out = Vec::new();
    let result = body
        .chunks(piece)
        .try_for_each(|p| opener.update(p, &mut out))
        .and_then(|()| opener.finish(&mut out));
    check_open(result.map(|o| o.plaintext_len), out.len())
}

/// Arbitrary bytes as a whole sealed message through [`envelope::open`]: no panic, and an
/// accepted message released exactly `plaintext_len` bytes. Returns whether it was accepted.
pub fn open_whole(fx: &Fixture, data: &[u8]) -> bool {
    let mut out = Vec::new();
    let identity: Arc<dyn Identity> = fx.recipient.clone();
    match envelope::open(
        identity,
        fx.trust(),
        &OpenOptions::default(),
        data,
        &mut out,
    ) {
        Ok(opened) => {
            assert_eq!(opened.plaintext_len, out.len() as u64);
            true
        }
        Err(OpenError::Io(e)) => panic!("reading from memory cannot fail: {e}"),
        Err(_) => false,
    }
}

fn check_open(result: Result<u64, OpenError>, released: usize) -> bool {
    match result {
        Ok(len) => {
            assert_eq!(
                len, released as u64,
                "released bytes differ from plaintext_len"
            );
            true
        }
        Err(OpenError::Verification | OpenError::TooLarge { .. }) => false,
        Err(e) => panic!("unexpected error after a valid header: {e:?}"),
    }
}

/// [`ArmorReader`] on arbitrary text: no panic; whatever decodes re-armors and decodes to the
/// same bytes.
pub fn armor(data: &[u8]) {
    let _ = is_armored(data);
    let mut decoded = Vec::new();
    // A small buffer so lines straddle buffer refills.
    let reader = BufReader::with_capacity(16, data);
    if ArmorReader::new(reader).read_to_end(&mut decoded).is_err() {
        return;
    }
    let mut w = ArmorWriter::new(Vec::new());
    w.write_all(&decoded).expect("armoring to memory");
    let text = w.finish().expect("armoring to memory");
    assert!(is_armored(&text));
    let mut back = Vec::new();
    ArmorReader::new(&text[..])
        .read_to_end(&mut back)
        .expect("our own armor reads back");
    assert_eq!(back, decoded, "re-armored bytes differ");
}
