//! A time limit on writes to the server. Reads wait at most [`ClientConfig::timeout`] for a
//! frame; a write waits for the server to take the bytes, and a server that stops reading (a
//! stopped or wedged process, a peer that lets the window fill) would otherwise hold a send
//! forever, whatever `--timeout` said (found by a trial run: a `kill -STOP`ped server hung a
//! large `send_msg` for as long as anyone waited).
//!
//! [`ClientConfig::timeout`]: super::ClientConfig::timeout

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::Sleep;

/// A writer that fails with [`io::ErrorKind::TimedOut`] (carrying [`Stalled`]) once a write,
/// flush or shutdown has waited `limit` without the stream taking a byte. Progress of any size
/// starts the wait again, so a slow but moving transfer is never cut.
pub(super) struct WriteDeadline<W> {
    inner: W,
    stalled: Stalled,
    /// Armed when a call first has to wait; disarmed when one completes.
    timer: Option<Pin<Box<Sleep>>>,
}

/// The server at `addr` took no data for `after`: the cause inside the [`io::Error`] a
/// [`WriteDeadline`] returns, which [`super::ClientError`] turns into its `Timeout`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the server at {addr} took no data for {}", crate::text::TimeSpan(*.after))]
pub(super) struct Stalled {
    pub(super) addr: String,
    pub(super) after: Duration,
}

impl<W> WriteDeadline<W> {
    pub(super) fn new(inner: W, addr: &str, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            stalled: Stalled {
                addr: addr.to_owned(),
                after: limit,
            },
            timer: None,
        }
    }

    /// What a call that `polled` the stream returns: its result if it has one, an error once
    /// the wait since it first had to wait reaches the limit, else pending (the timer wakes us).
    fn limit<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.timer = None;
            return polled;
        }
        let after = self.stalled.after;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.timer = None;
                let e = io::Error::new(io::ErrorKind::TimedOut, self.stalled.clone());
                Poll::Ready(Err(e))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.limit(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.limit(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.limit(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A peer that never reads: the write fails after the limit with `Stalled`; one that reads
    /// slowly, a little at a time, is never cut.
    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_takes_fails_after_the_limit_and_a_slow_one_does_not() {
        let limit = Duration::from_secs(5);
        let (ours, _theirs) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(ours, "127.0.0.1:9", limit);
        let started = tokio::time::Instant::now();
        let e = w.write_all(&[0; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let stalled = e
            .get_ref()
            .and_then(|e| e.downcast_ref::<Stalled>())
            .unwrap();
        assert_eq!(stalled.addr, "127.0.0.1:9");
        assert_eq!(started.elapsed(), limit);

        let (ours, mut theirs) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0; 512];
            let mut total = 0;
            while total < 64 * 1024 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                total += theirs.read(&mut buf).await.unwrap();
            }
        });
        let mut w = WriteDeadline::new(ours, "127.0.0.1:9", limit);
        w.write_all(&[0; 64 * 1024]).await.unwrap();
        reader.await.unwrap();
    }
}
