//! A connection that reads and writes whole frames: the only code that touches socket bytes.
//!
//! The reader keeps at most one frame plus one read in its buffer, and the length prefix is
//! checked against the connection's limit before room is made for the frame, so a peer cannot
//! make us allocate more than the limit.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{Frame, LENGTH_PREFIX, WireError, decode, frame_len};

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

/// The reading half of a connection: a byte stream and a buffer, turned into frames. With
/// [`FrameWriter`], the only place that touches socket bytes.
pub struct FrameReader<R> {
    stream: R,
    /// Bytes read but not yet decoded; at most one frame plus one read.
    buf: BytesMut,
    /// Largest frame accepted from the peer.
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(stream: R, max_frame: usize) -> Self {
        FrameReader {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            max_frame,
        }
    }

    /// Changes the largest frame accepted from now on (the server raises it once the peer is
    /// authenticated).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Reads the next frame. `Err(Closed)` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Frame, ConnError> {
        loop {
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

/// The writing half of a connection.
pub struct FrameWriter<W> {
    stream: W,
    /// Reused encoding buffer.
    out: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(stream: W) -> Self {
        FrameWriter {
            stream,
            out: Vec::new(),
        }
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

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
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
}
