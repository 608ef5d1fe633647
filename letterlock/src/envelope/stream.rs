//! AES-256-GCM as a STREAM (Hoang, Reyhanitabar, Rogaway, Vizár 2015), as the age format uses it.
//!
//! The data block is cut into chunks of the header's chunk size; each is sealed with the
//! nonce `counter (11 bytes, big-endian) || last flag (1 byte)` and associated data
//! `SHA-256(header)`. The counter makes reordering, dropping and duplicating chunks fail; the
//! flag marks exactly one final chunk, so truncating or extending the stream fails too.
//!
//! Invariant: a key is only ever used with strictly increasing counters, and once a chunk was
//! sealed or opened as final the stream refuses any further chunk.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

/// Bytes of the GCM authentication tag at the end of every sealed chunk.
pub const TAG_LEN: usize = 16;
/// HKDF `info` for the payload key: names its use so the content key can never be confused with
/// a key for anything else.
pub const PAYLOAD_INFO: &[u8] = b"letterlock v1 payload";
/// Size of the content key (AES-256).
pub const KEY_LEN: usize = 32;

/// Errors are opaque on purpose: a tag that fails is a tag that fails, whatever the cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamError;

/// Derives the AES-256-GCM payload key: HKDF-SHA-256(ikm = content key, salt = message id,
/// info = `letterlock v1 payload`). The salt makes a reused content key still give a fresh
/// payload key per message.
pub fn payload_key(
    content_key: &[u8; KEY_LEN],
    message_id: &[u8; 16],
) -> Result<Zeroizing<[u8; KEY_LEN]>, StreamError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, message_id).extract(content_key);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    prk.expand(&[PAYLOAD_INFO], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out[..]))
        .map_err(|_| StreamError)?;
    Ok(out)
}

/// One direction of a STREAM: the key, the associated data and the position in the stream.
pub struct Stream {
    key: LessSafeKey,
    /// SHA-256 of the header: binds every chunk to this message.
    aad: [u8; 32],
    /// Index of the next chunk.
    counter: u64,
    /// Set once the final chunk went through; nothing may follow it.
    finished: bool,
}

impl Stream {
    pub fn new(payload_key: &[u8; KEY_LEN], header_hash: [u8; 32]) -> Result<Self, StreamError> {
        let key = UnboundKey::new(&AES_256_GCM, payload_key).map_err(|_| StreamError)?;
        Ok(Stream {
            key: LessSafeKey::new(key),
            aad: header_hash,
            counter: 0,
            finished: false,
        })
    }

    /// The nonce of the next chunk, or an error when the stream is over or the counter would
    /// wrap (2^64 chunks: far beyond any message, but a wrap must be an error, never a reuse).
    fn next_nonce(&mut self, last: bool) -> Result<Nonce, StreamError> {
        if self.finished || self.counter == u64::MAX {
            return Err(StreamError);
        }
        let mut n = [0u8; 12];
        n[3..11].copy_from_slice(&self.counter.to_be_bytes());
        n[11] = u8::from(last);
        self.counter += 1;
        self.finished = last;
        Ok(Nonce::assume_unique_for_key(n))
    }

    /// Encrypts `chunk` in place and returns its tag, which goes right after it.
    pub fn seal_chunk(&mut self, chunk: &mut [u8], last: bool) -> Result<Tag, StreamError> {
        let nonce = self.next_nonce(last)?;
        self.key
            .seal_in_place_separate_tag(nonce, Aad::from(self.aad), chunk)
            .map_err(|_| StreamError)
    }

    /// Encrypts `chunk` from where it lies into `sealed` (ciphertext || tag: the chunk's length
    /// plus [`TAG_LEN`] bytes), with no copy of the plaintext first.
    pub fn seal_chunk_into(
        &mut self,
        chunk: &[u8],
        sealed: &mut [u8],
        last: bool,
    ) -> Result<(), StreamError> {
        if sealed.len() != chunk.len() + TAG_LEN {
            return Err(StreamError);
        }
        let nonce = self.next_nonce(last)?;
        let (ciphertext, tag) = sealed.split_at_mut(chunk.len());
        self.key
            .seal_out_of_place_scatter(nonce, Aad::from(self.aad), chunk, ciphertext, &[], tag)
            .map_err(|_| StreamError)
    }

    /// Decrypts a sealed chunk (ciphertext || tag) in place; returns the plaintext part.
    pub fn open_chunk<'a>(
        &mut self,
        sealed: &'a mut [u8],
        last: bool,
    ) -> Result<&'a mut [u8], StreamError> {
        let nonce = self.next_nonce(last)?;
        self.key
            .open_in_place(nonce, Aad::from(self.aad), sealed)
            .map_err(|_| StreamError)
    }

    /// Decrypts the sealed chunk `ciphertext || tag` from where it lies into `plain` (of the
    /// ciphertext's length), with no copy of its own. On failure `plain` may hold unauthenticated
    /// bytes: the caller wipes or discards them.
    pub fn open_chunk_into(
        &mut self,
        ciphertext: &[u8],
        tag: &[u8],
        plain: &mut [u8],
        last: bool,
    ) -> Result<(), StreamError> {
        let nonce = self.next_nonce(last)?;
        self.key
            .open_separate_gather(nonce, Aad::from(self.aad), ciphertext, tag, plain)
            .map_err(|_| StreamError)
    }

    /// Chunks processed so far.
    pub fn chunks(&self) -> u64 {
        self.counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Stream, Stream) {
        let key = payload_key(&[7; 32], &[9; 16]).unwrap();
        (
            Stream::new(&key, [1; 32]).unwrap(),
            Stream::new(&key, [1; 32]).unwrap(),
        )
    }

    /// Sealing into another buffer gives the bytes sealing in place gives, chunk after chunk,
    /// and refuses an output buffer of the wrong size without using up a nonce.
    #[test]
    fn sealing_into_another_buffer_gives_the_same_bytes() {
        let (mut a, mut b) = pair();
        for (text, last) in [(&b"first"[..], false), (b"", false), (b"third", true)] {
            let mut in_place = text.to_vec();
            let tag = a.seal_chunk(&mut in_place, last).unwrap();
            in_place.extend_from_slice(tag.as_ref());
            let mut short = vec![0u8; text.len() + TAG_LEN - 1];
            assert!(b.seal_chunk_into(text, &mut short, last).is_err());
            let mut into = vec![0u8; text.len() + TAG_LEN];
            b.seal_chunk_into(text, &mut into, last).unwrap();
            assert_eq!(into, in_place);
        }
    }

    #[test]
    fn chunks_open_in_order_only() {
        let (mut s, mut o) = pair();
        let seal = |s: &mut Stream, text: &[u8], last| {
            let mut v = text.to_vec();
            let tag = s.seal_chunk(&mut v, last).unwrap();
            v.extend_from_slice(tag.as_ref());
            v
        };
        let a = seal(&mut s, b"first", false);
        let b = seal(&mut s, b"second", true);
        // Swapped: the counter differs.
        assert!(o.open_chunk(&mut b.clone(), false).is_err());
        let (_, mut o) = pair();
        assert_eq!(o.open_chunk(&mut a.clone(), false).unwrap(), b"first");
        // Final flag in the wrong place.
        assert!(pair().1.open_chunk(&mut a.clone(), true).is_err());
        assert_eq!(o.open_chunk(&mut b.clone(), true).unwrap(), b"second");
        // Nothing after the final chunk.
        assert!(o.open_chunk(&mut b.clone(), true).is_err());
    }

    #[test]
    fn opening_into_another_buffer_checks_the_same() {
        let (mut s, _) = pair();
        let mut v = b"chunk".to_vec();
        let tag = s.seal_chunk(&mut v, true).unwrap();
        let mut plain = [0u8; 5];
        pair()
            .1
            .open_chunk_into(&v, tag.as_ref(), &mut plain, true)
            .unwrap();
        assert_eq!(&plain, b"chunk");
        // Not final where it was sealed as final, or one bit off: refused.
        assert!(
            pair()
                .1
                .open_chunk_into(&v, tag.as_ref(), &mut plain, false)
                .is_err()
        );
        v[0] ^= 1;
        assert!(
            pair()
                .1
                .open_chunk_into(&v, tag.as_ref(), &mut plain, true)
                .is_err()
        );
    }

    #[test]
    fn a_sealed_stream_refuses_more() {
        let (mut s, _) = pair();
        let _ = s.seal_chunk(&mut [1], true).unwrap();
        assert!(s.seal_chunk(&mut [2], false).is_err());
    }

    #[test]
    fn counter_overflow_is_an_error() {
        let (mut s, _) = pair();
        s.counter = u64::MAX;
        assert!(s.seal_chunk(&mut [1], false).is_err());
    }
}
