//! A connection that reads and writes whole frames: the only code that touches socket bytes.
//!
//! The reader keeps at most one frame plus one read in its buffer, and the length prefix is
//! checked against the connection's limit before room is made for the frame, so a peer cannot
//! make us allocate more than the limit.
//!
//! On version 2 connections both halves also pad (docs/PROTOCOL.md, "Frame padding"): every
//! flush ends with one padding frame that brings the bytes written to a bucket size
//! ([`padded_len`]), so the TLS records on the wire show only the bucket, and the reader drops
//! padding frames after checking them. Version 1 connections never pad: there a padding frame
//! is an unknown frame type, as it always was.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{Frame, LENGTH_PREFIX, WireError, decode, frame_len};

/// Type byte of a padding frame (version 2 only). Not a [`Frame`]: padding belongs to the
/// connection, and nothing above it ever sees one.
pub const PADDING_TYPE: u8 = 0x7e;
/// Smallest bucket: every flush of a padded connection is at least this many bytes, enough for
/// any control frame and a small sealed message, so "yes" and "no" look alike.
pub const PAD_MIN_BUCKET: usize = 512;
/// Up to this many bytes buckets are powers of two; above, multiples of it (a TLS record's
/// largest plaintext, so large transfers cost at most one record of padding per flush).
pub const PAD_STEP: usize = 16 * 1024;
/// Bytes a padding frame needs besides its zeros: length prefix and type.
const PAD_OVERHEAD: usize = LENGTH_PREFIX + 1;
/// Largest padding frame body (type + zeros) the bucket rule ever needs; a longer one is
/// malformed.
pub const MAX_PADDING_BODY: usize = PAD_STEP;

/// The size a flush of `n` bytes of frames is padded to: the bucket holding `n` plus a padding
/// frame's 5 bytes of overhead. The smallest power of two ≥ `n + 5` and ≥ 512 while that is at
/// most 16 KiB, else the next multiple of 16 KiB ≥ `n + 5`.
pub fn padded_len(n: usize) -> usize {
    let need = n.saturating_add(PAD_OVERHEAD);
    if need <= PAD_STEP {
        need.next_power_of_two().max(PAD_MIN_BUCKET)
    } else {
        need.div_ceil(PAD_STEP).saturating_mul(PAD_STEP)
    }
}

/// Appends the padding frame that brings `out` (whole frames) to [`padded_len`] bytes.
pub fn push_padding(out: &mut Vec<u8>) {
    let target = padded_len(out.len());
    let body = target - out.len() - LENGTH_PREFIX;
    // body <= MAX_PADDING_BODY (see padded_len), so it fits the u32 prefix.
    out.extend_from_slice(&(body as u32).to_be_bytes());
    out.push(PADDING_TYPE);
    out.resize(target, 0);
}

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection closed by the peer")]
    Closed,
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
}

/// Whether an I/O error of `kind` means the connection itself broke: the peer closed or reset
/// it, or it ended part-way (a peer that stopped or restarted, a network that failed), as
/// opposed to a refusal, a silence or a local failure. The one list for the client's resends
/// ([`ClientError::is_connection_lost`](crate::client::ClientError::is_connection_lost)), its
/// test for a busy server, and a TLS handshake whose peer went
/// ([`TlsError::is_peer_gone`](crate::tls::TlsError::is_peer_gone)).
pub fn is_broken_connection(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind;
    matches!(
        kind,
        ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof
    )
}

/// The reading half of a connection: a byte stream and a buffer, turned into frames. With
/// [`FrameWriter`], the only place that touches socket bytes.
pub struct FrameReader<R> {
    stream: R,
    /// Bytes read but not yet decoded; at most one frame plus one read.
    buf: BytesMut,
    /// Largest frame accepted from the peer.
    max_frame: usize,
    /// Version 2: padding frames are accepted (checked, then dropped).
    padded: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(stream: R, max_frame: usize) -> Self {
        FrameReader {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            max_frame,
            padded: false,
        }
    }

    /// Accepts padding frames (protocol version 2): each is checked (zeros only, no longer than
    /// the bucket rule needs) and dropped.
    pub fn with_padding(mut self) -> Self {
        self.padded = true;
        self
    }

    /// Changes the largest frame accepted from now on (the server raises it once the peer is
    /// authenticated).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Reads the next frame. `Err(Closed)` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Frame, ConnError> {
        loop {
            if self.padded && self.skip_padding()? {
                continue;
            }
            if let Some((frame, used)) = decode(&self.buf, self.max_frame)? {
                self.buf.advance(used);
                return Ok(frame);
            }
            // Room for the rest of this frame (its length is already bounded) or a read.
            if let Some(len) = frame_len(&self.buf, self.max_frame)? {
                self.buf
                    .reserve((LENGTH_PREFIX + len).saturating_sub(self.buf.len()));
            } else {
                self.buf.reserve(4096);
            }
            let n = match self.stream.read_buf(&mut self.buf).await {
                Ok(n) => n,
                // A TLS peer that closes without close_notify (rustls reports it so): the same
                // as a TCP close. Frames are whole or refused, so nothing can be cut silently.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    ConnError::Closed
                } else {
                    ConnError::Io(std::io::ErrorKind::UnexpectedEof.into())
                });
            }
        }
    }
}

impl<R> FrameReader<R> {
    /// Drops a whole padding frame at the start of the buffer: `Ok(true)` if one was dropped,
    /// `Ok(false)` if the buffer starts with anything else or with an incomplete frame, an error
    /// if the padding is malformed.
    fn skip_padding(&mut self) -> Result<bool, ConnError> {
        if self.buf.get(LENGTH_PREFIX) != Some(&PADDING_TYPE) {
            return Ok(false);
        }
        let Some(len) = frame_len(&self.buf, self.max_frame)? else {
            return Ok(false);
        };
        if len > MAX_PADDING_BODY {
            return Err(WireError::Malformed("Padding").into());
        }
        let Some(body) = self.buf.get(LENGTH_PREFIX..LENGTH_PREFIX + len) else {
            return Ok(false);
        };
        if body.iter().skip(1).any(|&b| b != 0) {
            return Err(WireError::Malformed("Padding").into());
        }
        self.buf.advance(LENGTH_PREFIX + len);
        Ok(true)
    }
}

/// The writing half of a connection.
pub struct FrameWriter<W> {
    stream: W,
    /// Reused encoding buffer.
    out: Vec<u8>,
    /// Version 2: every flush is padded to its bucket.
    padded: bool,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(stream: W) -> Self {
        FrameWriter {
            stream,
            out: Vec::new(),
            padded: false,
        }
    }

    /// Pads every flush to its bucket ([`padded_len`]; protocol version 2).
    pub fn with_padding(mut self) -> Self {
        self.padded = true;
        self
    }

    /// Writes one frame and flushes it.
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<(), ConnError> {
        self.queue_frame(frame);
        self.flush().await
    }

    /// Encodes a frame into the outgoing buffer without writing it yet.
    pub fn queue_frame(&mut self, frame: &Frame) {
        frame.encode(&mut self.out);
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Writes everything queued (padded to its bucket on a padded connection) in one write, so
    /// the TLS layer sees one run of bytes of the bucket's size.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if self.padded && !self.out.is_empty() {
            push_padding(&mut self.out);
        }
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        self.out.clear();
        Ok(())
    }

    /// Writes bytes as they are (tests and the interceptor use this for hostile input).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Closes the writing direction (TCP FIN).
    pub async fn shutdown(&mut self) -> Result<(), ConnError> {
        self.stream.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// Yields `data`, then fails with `UnexpectedEof`, as a TLS stream does when the peer closes
    /// without close_notify.
    struct Truncated(Vec<u8>);

    impl AsyncRead for Truncated {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.0.is_empty() {
                return Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let n = self.0.len().min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_unannounced_close_between_frames_is_a_close_and_inside_one_an_error() {
        let mut ready = Vec::new();
        Frame::Ready.encode(&mut ready);
        let mut r = FrameReader::new(Truncated(ready.clone()), 1024);
        assert_eq!(r.read_frame().await.unwrap(), Frame::Ready);
        assert!(matches!(r.read_frame().await, Err(ConnError::Closed)));

        let mut r = FrameReader::new(Truncated(ready[..3].to_vec()), 1024);
        match r.read_frame().await {
            Err(ConnError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn buckets_are_powers_of_two_from_512_then_steps_of_16_kib() {
        let cases = [
            (0, 512),
            (1, 512),
            (507, 512),
            (508, 1024),
            (1019, 1024),
            (1020, 2048),
            (16_379, 16_384),
            (16_380, 32_768),
            (32_763, 32_768),
            (32_764, 49_152),
            (262_149, 278_528),
        ];
        for (n, bucket) in cases {
            assert_eq!(padded_len(n), bucket, "{n} bytes");
            let mut out = vec![1; n];
            push_padding(&mut out);
            assert_eq!(out.len(), bucket);
            let body = u32::from_be_bytes(out[n..n + 4].try_into().unwrap()) as usize;
            assert_eq!(n + LENGTH_PREFIX + body, bucket);
            assert!(body <= MAX_PADDING_BODY);
            assert_eq!(out[n + 4], PADDING_TYPE);
            assert!(out[n + 5..].iter().all(|&b| b == 0));
        }
    }

    /// What a padded writer puts on the wire for `frames`, one flush.
    async fn padded_bytes(frames: &[Frame]) -> Vec<u8> {
        let mut w = FrameWriter::new(Vec::new()).with_padding();
        for f in frames {
            w.queue_frame(f);
        }
        w.flush().await.unwrap();
        w.stream
    }

    #[tokio::test]
    async fn a_padded_flush_is_its_bucket_and_a_padded_reader_sees_only_the_frames() {
        let frames = [Frame::Send(b"yes".to_vec()), Frame::SendEnd];
        let wire = padded_bytes(&frames).await;
        assert_eq!(wire.len(), 512);
        assert_eq!(
            padded_bytes(&[Frame::Send(b"no".to_vec()), Frame::SendEnd])
                .await
                .len(),
            512
        );
        let mut r = FrameReader::new(&wire[..], 1 << 20).with_padding();
        assert_eq!(r.read_frame().await.unwrap(), frames[0]);
        assert_eq!(r.read_frame().await.unwrap(), frames[1]);
        assert!(matches!(r.read_frame().await, Err(ConnError::Closed)));
    }

    #[tokio::test]
    async fn padding_is_refused_on_version_1_and_where_malformed() {
        let wire = padded_bytes(&[Frame::Ready]).await;
        // Version 1 reader: an unknown frame type, as before padding existed.
        let mut r = FrameReader::new(&wire[..], 1 << 20);
        assert_eq!(r.read_frame().await.unwrap(), Frame::Ready);
        assert!(matches!(
            r.read_frame().await,
            Err(ConnError::Wire(WireError::UnknownType(PADDING_TYPE)))
        ));
        // A non-zero padding byte.
        let mut bad = wire.clone();
        *bad.last_mut().unwrap() = 1;
        let mut r = FrameReader::new(&bad[..], 1 << 20).with_padding();
        assert_eq!(r.read_frame().await.unwrap(), Frame::Ready);
        assert!(matches!(
            r.read_frame().await,
            Err(ConnError::Wire(WireError::Malformed("Padding")))
        ));
        // Longer than the bucket rule ever needs.
        let mut long = Vec::new();
        long.extend_from_slice(&(MAX_PADDING_BODY as u32 + 1).to_be_bytes());
        long.push(PADDING_TYPE);
        long.resize(LENGTH_PREFIX + MAX_PADDING_BODY + 1, 0);
        let mut r = FrameReader::new(&long[..], 1 << 20).with_padding();
        assert!(matches!(
            r.read_frame().await,
            Err(ConnError::Wire(WireError::Malformed("Padding")))
        ));
        // Cut short: an unexpected end, not a frame.
        let mut r = FrameReader::new(&wire[..wire.len() - 1], 1 << 20).with_padding();
        assert_eq!(r.read_frame().await.unwrap(), Frame::Ready);
        assert!(matches!(r.read_frame().await, Err(ConnError::Io(_))));
    }
}
