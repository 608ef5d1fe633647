//! A bounded cursor over bytes, for every hand-written binary parser in the crate (the message
//! header, the network frames, the handshake), in the style of rustls's `codec::Reader`.
//!
//! Each read takes exactly the bytes it needs or fails with [`CodecError::Short`]; nothing pads
//! short input with zeros and nothing indexes past the end, so a parser built on it cannot panic
//! on hostile input. A parser that must consume all its input ends with
//! [`Reader::expect_empty`], which refuses trailing bytes: one value has one encoding.
//!
//! Integers are big-endian, as everywhere in letterlock's formats.

/// Why a [`Reader`] refused to go on. Callers usually map it to their own "malformed X" error;
/// the counts are for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A read wanted more bytes than were left.
    #[error("{} wanted, only {left} left", crate::text::ByteCount::from(*.wanted))]
    Short { wanted: usize, left: usize },
    /// The value ended before the input did.
    #[error("{} of unexpected trailing data", crate::text::ByteCount::from(*.0))]
    Trailing(usize),
}

/// A cursor over a byte slice that only ever moves forward, and only by bytes that exist.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    /// Everything given to [`Reader::new`].
    buf: &'a [u8],
    /// Bytes of `buf` already taken; never more than `buf.len()`.
    used: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, used: 0 }
    }

    /// The next `n` bytes, or `Short` (and nothing taken) if fewer are left.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let left = self.left();
        let short = CodecError::Short { wanted: n, left };
        if n > left {
            return Err(short);
        }
        // `used + n <= buf.len()`: no overflow, and `get` cannot miss; it is `get` anyway.
        let end = self.used + n;
        let taken = self.buf.get(self.used..end).ok_or(short)?;
        self.used = end;
        Ok(taken)
    }

    /// The next `N` bytes as an array (key ids, message ids, tags, challenges).
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let bytes = self.take(N)?;
        // `take` returned exactly N bytes, so the conversion cannot fail; map it anyway rather
        // than unwrap on an input path.
        bytes.try_into().map_err(|_| CodecError::Short {
            wanted: N,
            left: bytes.len(),
        })
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Everything left (possibly nothing): for a variable-length field that ends the value.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.used..).unwrap_or_default();
        self.used = self.buf.len();
        rest
    }

    /// Bytes not yet taken.
    pub fn left(&self) -> usize {
        self.buf.len() - self.used
    }

    /// Bytes taken so far.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Succeeds only if every byte was taken: a value followed by anything else is malformed.
    pub fn expect_empty(&self) -> Result<(), CodecError> {
        match self.left() {
            0 => Ok(()),
            n => Err(CodecError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_integers_in_order() {
        let bytes = [1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 9, 9];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(2));
        assert_eq!(r.u32(), Ok(3));
        assert_eq!(r.u64(), Ok(4));
        assert_eq!(r.used(), 15);
        assert_eq!(r.array::<2>(), Ok([9, 9]));
        assert_eq!(r.expect_empty(), Ok(()));
    }

    #[test]
    fn short_input_fails_and_takes_nothing() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u32(), Err(CodecError::Short { wanted: 4, left: 3 }));
        assert_eq!(r.left(), 3, "a failed read must not move the cursor");
        assert_eq!(r.take(3), Ok(&[1, 2, 3][..]));
        assert_eq!(r.u8(), Err(CodecError::Short { wanted: 1, left: 0 }));
        assert_eq!(
            r.array::<16>(),
            Err(CodecError::Short {
                wanted: 16,
                left: 0
            })
        );
        assert_eq!(
            r.take(usize::MAX),
            Err(CodecError::Short {
                wanted: usize::MAX,
                left: 0
            })
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut r = Reader::new(&[0, 7, 1, 2]);
        assert_eq!(r.u16(), Ok(7));
        assert_eq!(r.expect_empty(), Err(CodecError::Trailing(2)));
        assert_eq!(r.rest(), &[1, 2]);
        assert_eq!(r.expect_empty(), Ok(()));
        assert_eq!(r.rest(), &[] as &[u8]);
    }
}
