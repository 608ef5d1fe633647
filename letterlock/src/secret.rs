//! Buffers that hold plaintext or key material, and how they grow.
//!
//! [`Zeroizing`] wipes a buffer when it is dropped, but a `Vec` that grows moves its bytes to a
//! new allocation and frees the old one unwiped: a growing plaintext sink would leave copies of
//! earlier plaintext in freed memory. Every plaintext sink here grows through
//! [`extend_wiping`] instead, which moves the bytes itself and wipes the old allocation.

use std::io;

use zeroize::{Zeroize, Zeroizing};

/// Appends `data` to `buf`; if `buf` must grow, its bytes move to a new allocation (at least
/// twice as large, so appends stay amortised O(1)) and the old allocation is wiped, whole
/// capacity included, before it is freed.
pub(crate) fn extend_wiping(buf: &mut Vec<u8>, data: &[u8]) {
    reserve_wiping(buf, data.len());
    buf.extend_from_slice(data);
}

/// Makes room for `additional` more bytes in `buf` the way [`extend_wiping`] grows it: moved
/// to an allocation at least twice as large, the old one wiped.
pub(crate) fn reserve_wiping(buf: &mut Vec<u8>, additional: usize) {
    let needed = buf.len().saturating_add(additional);
    if needed > buf.capacity() {
        let mut grown = Vec::with_capacity(needed.max(buf.capacity().saturating_mul(2)));
        grown.extend_from_slice(buf);
        let mut old = std::mem::replace(buf, grown);
        old.zeroize();
    }
}

/// A [`io::Write`] into a wiped-on-drop buffer that never leaves a copy behind when it grows.
pub(crate) struct SecretWriter<'a>(pub(crate) &'a mut Zeroizing<Vec<u8>>);

impl io::Write for SecretWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        extend_wiping(self.0, data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_moving_and_keeps_every_byte() {
        let mut buf = Vec::with_capacity(4);
        let mut expected = Vec::new();
        for i in 0..100u8 {
            let piece = vec![i; usize::from(i % 7) + 1];
            extend_wiping(&mut buf, &piece);
            expected.extend_from_slice(&piece);
        }
        assert_eq!(buf, expected);
        // Growth at least doubles: no quadratic copying.
        let cap = buf.capacity();
        let more = vec![0; cap - buf.len() + 1];
        extend_wiping(&mut buf, &more);
        assert!(buf.capacity() >= 2 * cap);
    }

    #[test]
    fn writer_appends() {
        use std::io::Write;
        let mut z = Zeroizing::new(Vec::new());
        SecretWriter(&mut z).write_all(b"abc").unwrap();
        SecretWriter(&mut z).write_all(b"def").unwrap();
        assert_eq!(&z[..], b"abcdef");
    }
}
