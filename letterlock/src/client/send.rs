//! Sending: seal, send, and report "delivered" only once the server's ack tag matches the one
//! computed while sealing.

use std::collections::HashMap;
use std::io::{self, Read, Write};

use tokio::sync::mpsc;

use crate::envelope::{self, Header, MessageId, SealError, SealOptions, Sealed};
use crate::wire::{ConnError, DATA_FRAME, Frame};

use super::{Client, ClientError, unexpected};

/// A message the server proved it received.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: MessageId,
    pub header: Header,
    pub plaintext_len: u64,
}

impl Client {
    /// Seals everything `input` yields (on the blocking pool, streaming) and sends it; returns
    /// once the server's proof of delivery checked out.
    pub async fn send<R: Read + Send + 'static>(
        &mut self,
        input: R,
        opts: SealOptions,
    ) -> Result<Delivery, ClientError> {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let identity = self.identity.clone();
        let server = self.server.clone();
        let sealing = tokio::task::spawn_blocking(move || {
            let mut sink = FrameSink {
                tx,
                buf: Vec::with_capacity(DATA_FRAME),
            };
            let sealed = envelope::seal(identity.as_ref(), &server, &opts, input, &mut sink)?;
            sink.flush()?;
            Ok::<_, SealError>(sealed)
        });
        let mut write_failed = None;
        while let Some(data) = rx.recv().await {
            if let Err(e) = self.writer.write_frame(&Frame::Send(data)).await {
                write_failed = Some(e);
                break;
            }
        }
        drop(rx);
        let sealed = sealing.await.map_err(|source| ClientError::Task {
            task: "sealing",
            source,
        })?;
        if let Some(e) = write_failed {
            // The server may have said why before closing.
            return Err(self.reason_for(e).await);
        }
        let sealed = sealed?;
        if let Err(e) = self.writer.write_frame(&Frame::SendEnd).await {
            return Err(self.reason_for(e).await);
        }
        self.await_ack(&sealed).await
    }

    /// After a failed write, the server's Error frame (if any) says more than "broken pipe".
    async fn reason_for(&mut self, e: ConnError) -> ClientError {
        match self.read().await {
            Err(refused @ ClientError::Refused { .. }) => refused,
            _ => e.into(),
        }
    }

    /// Sends one pre-sealed message and waits for its proven ack.
    pub async fn send_sealed(
        &mut self,
        sealed_bytes: &[u8],
        sealed: &Sealed,
    ) -> Result<Delivery, ClientError> {
        self.queue_sealed(sealed_bytes);
        self.writer.flush().await?;
        self.await_ack(sealed).await
    }

    /// Sends many pre-sealed messages back to back, then collects their acks (in any order):
    /// the server works on them while the rest arrive.
    pub async fn send_sealed_many(
        &mut self,
        messages: &[(Vec<u8>, Sealed)],
    ) -> Result<Vec<Delivery>, ClientError> {
        let mut expected: HashMap<MessageId, &Sealed> = HashMap::new();
        for (bytes, sealed) in messages {
            self.queue_sealed(bytes);
            expected.insert(sealed.header.message_id, sealed);
        }
        self.writer.flush().await?;
        let mut out = Vec::with_capacity(messages.len());
        while !expected.is_empty() {
            let (id, tag) = match self.read().await? {
                Frame::Ack { id, tag } => (id, tag),
                other => return Err(unexpected(other)),
            };
            let sealed = expected
                .remove(&id)
                .ok_or_else(|| ClientError::NotProven(format!("ack for unknown message {id}")))?;
            out.push(check_ack(sealed, &id, &tag)?);
        }
        Ok(out)
    }

    fn queue_sealed(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(DATA_FRAME) {
            self.writer.queue_frame(&Frame::Send(chunk.to_vec()));
        }
        self.writer.queue_frame(&Frame::SendEnd);
    }

    async fn await_ack(&mut self, sealed: &Sealed) -> Result<Delivery, ClientError> {
        match self.read().await {
            Ok(Frame::Ack { id, tag }) => check_ack(sealed, &id, &tag),
            Ok(other) => Err(unexpected(other)),
            Err(ClientError::Refused { code, message }) => {
                Err(ClientError::Refused { code, message })
            }
            Err(e) => Err(ClientError::NotProven(format!(
                "no acknowledgement from the server ({e})"
            ))),
        }
    }
}

fn check_ack(sealed: &Sealed, id: &MessageId, tag: &[u8; 32]) -> Result<Delivery, ClientError> {
    if *id != sealed.header.message_id {
        return Err(ClientError::NotProven(format!(
            "the server acknowledged message {id}, not {}",
            sealed.header.message_id
        )));
    }
    if !envelope::ack_tags_match(tag, &sealed.ack_tag) {
        return Err(ClientError::NotProven(
            "the server's acknowledgement does not prove it decrypted the message \
             (wrong ack tag: a forged or altered ack)"
                .into(),
        ));
    }
    Ok(Delivery {
        id: *id,
        header: sealed.header,
        plaintext_len: sealed.plaintext_len,
    })
}

/// A `Write` that cuts sealed output into `Send` frames for the async side.
struct FrameSink {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for FrameSink {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let take = (DATA_FRAME - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == DATA_FRAME {
                self.flush()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(DATA_FRAME));
            self.tx
                .blocking_send(full)
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        }
        Ok(())
    }
}
