//! The agent's side of the socket: one command at a time, from its user only; each message
//! sealed here, sent on the kept connection, and answered only once its delivery is proven.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::{MAX_REQUEST, Reply, Request, SendRequest, check_len, framed};
use crate::envelope::{self, SealOptions};
use crate::keys::{Identity, PublicKey};
use crate::tls::TlsOptions;

use crate::client::{
    Backoff, Client, ClientConfig, ClientError, Delivery, Retry, Sealing, Transport,
};

/// How long a kept connection is used again after its last message. Below the server's default
/// idle timeout (two minutes), so that a connection the server is about to close is replaced
/// before a message is written to it; one the server closed sooner is found out by the send,
/// which then goes again, byte for byte, on a new connection.
const REUSE_FOR: Duration = Duration::from_secs(90);

/// What an agent holds and how it behaves.
pub struct AgentConfig {
    /// The server's address (HOST:PORT) as commands name it: requests naming another are
    /// declined, and the command sends the message itself.
    pub server_addr: String,
    /// The client's key, loaded (and unlocked) once.
    pub identity: Arc<dyn Identity>,
    /// The pinned server key.
    pub server: PublicKey,
    pub client: ClientConfig,
    pub tls: TlsOptions,
    /// Retries of a busy or unavailable server, for each message.
    pub backoff: Backoff,
    /// The only user id whose processes are served; a process of any other user is closed on
    /// before a byte is read.
    pub uid: u32,
    /// Stop after this long without a request; `None`: only when stopped.
    pub persist: Option<Duration>,
    /// How long a command may take to hand its request over, and to take the answer.
    pub socket_timeout: Duration,
}

/// Why an agent stopped other than being asked to.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot accept on the agent's socket: {0}")]
    Accept(#[source] io::Error),
}

/// Serves commands on `listener` until `stop` completes, a [`Request::Stop`] comes, or
/// `config.persist` passes without a request. `client`: a connection already made (the command
/// line makes one first, so that a wrong address or key fails at once); otherwise the first
/// message connects.
pub async fn serve(
    listener: UnixListener,
    config: AgentConfig,
    client: Option<Client>,
    stop: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut agent = Agent {
        config,
        client,
        last_used: Instant::now(),
    };
    tokio::pin!(stop);
    loop {
        let idle = async {
            match agent.config.persist {
                Some(persist) => tokio::time::sleep_until(agent.last_used + persist).await,
                None => std::future::pending().await,
            }
        };
        let stream = tokio::select! {
            () = &mut stop => return Ok(()),
            () = idle => {
                info!("no message for the agent's persist time: stopping");
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors, say: the command that was turned away sends by itself.
                Err(e) if is_transient(&e) => {
                    warn!(error = %e, "cannot accept a command's connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(AgentError::Accept(e)),
            },
        };
        if agent.serve_one(stream).await == Flow::Stop {
            info!("asked to stop");
            return Ok(());
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::NotConnected
    )
}

#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

struct Agent {
    config: AgentConfig,
    /// The kept connection; `None` until the next message makes one.
    client: Option<Client>,
    /// When the last command was answered.
    last_used: Instant,
}

impl Agent {
    /// One command's connection: its user checked, one request read, answered.
    async fn serve_one(&mut self, mut stream: UnixStream) -> Flow {
        match stream.peer_cred() {
            Ok(peer) if peer.uid() == self.config.uid => {}
            Ok(peer) => {
                warn!(uid = peer.uid(), "refused a process of another user");
                return Flow::Go;
            }
            Err(e) => {
                warn!(error = %e, "cannot tell which user a process is; refused");
                return Flow::Go;
            }
        }
        let timeout = self.config.socket_timeout;
        let body = match tokio::time::timeout(timeout, read_request(&mut stream)).await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => {
                debug!(error = %e, "no request from the command");
                return Flow::Go;
            }
            Err(_) => {
                debug!("no request from the command in time");
                return Flow::Go;
            }
        };
        let (reply, flow) = match Request::decode(&body) {
            Ok(Request::Send(request)) => (self.send(request).await, Flow::Go),
            Ok(Request::Stop) => (Reply::Stopping, Flow::Stop),
            // Another version of letterlock, say: the command sends the message itself.
            Err(e) => (
                Reply::Declined(format!("the agent cannot read the request: {e}")),
                Flow::Go,
            ),
        };
        let answered =
            tokio::time::timeout(timeout, stream.write_all(&framed(&reply.encode()))).await;
        if !matches!(answered, Ok(Ok(()))) {
            debug!("the command left before its answer");
        }
        self.last_used = Instant::now();
        flow
    }

    /// Seals `request` with the kept key and sends it: the answer is "delivered" only once the
    /// server's ack tag matched. As a one-shot `send_msg` does, the header and the wrapped
    /// content key go first, so that the server decrypts the content key while the signature is
    /// still being made.
    async fn send(&mut self, request: SendRequest) -> Reply {
        if request.server != self.config.server_addr {
            return Reply::Declined(format!(
                "this agent sends to {}, not {}",
                self.config.server_addr, request.server
            ));
        }
        let sealing = self.seal(request);
        if self.last_used.elapsed() > REUSE_FOR {
            self.client = None;
        }
        let kept = self.client.take();
        let was_kept = kept.is_some();
        let mut client = match kept {
            Some(client) => client,
            None => match self.connect().await {
                Ok(client) => client,
                Err(e) => return Reply::NotDelivered(e.to_string()),
            },
        };
        let backoff = self.config.backoff;
        let (mut result, sealed) = client.send_sealing_kept(sealing, backoff, on_retry).await;
        if let (true, Err(e), Some((bytes, sealed))) = (was_kept, &result, &sealed)
            && connection_lost(e)
        {
            // The same bytes carry the same message id: a server that stored the first copy
            // acks this one instead of storing it twice.
            debug!(error = %e, "the kept connection is gone; sending again on a new one");
            result = match self.connect().await {
                Ok(fresh) => {
                    client = fresh;
                    client
                        .send_sealed_retrying(bytes, sealed, backoff, on_retry)
                        .await
                }
                Err(e) => Err(e),
            };
        }
        match result {
            Ok(Delivery {
                id,
                header,
                plaintext_len,
            }) => {
                // After a failure the connection's state is unknown: the next message makes a
                // new one.
                self.client = Some(client);
                Reply::Delivered {
                    id,
                    plaintext_len,
                    mode: header.mode,
                }
            }
            Err(e) => Reply::NotDelivered(e.to_string()),
        }
    }

    /// Starts sealing `request` on the blocking pool (the signature is an RSA private
    /// operation), its head handed over as soon as it exists.
    fn seal(&self, request: SendRequest) -> Sealing {
        let identity = self.config.identity.clone();
        let server = self.config.server.clone();
        let opts = SealOptions {
            asymmetric_limit: request.max_asymmetric,
            ..SealOptions::mode(request.mode)
        };
        let message: Zeroizing<Vec<u8>> = request.message;
        Sealing::start(&self.config.server, request.mode, move |out| {
            envelope::seal_slice(identity.as_ref(), &server, &opts, &message, out)
        })
    }

    async fn connect(&self) -> Result<Client, ClientError> {
        let c = &self.config;
        debug!(server = %c.server_addr, "connecting");
        Client::connect_retrying(
            &c.server_addr,
            c.identity.clone(),
            c.server.clone(),
            c.client.clone(),
            Transport::Tls(c.tls),
            c.backoff,
            on_retry,
        )
        .await
    }
}

/// A failure after which the same message may well go through on a new connection: the kept
/// one was closed under it (the server's idle timeout, a restart).
fn connection_lost(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Closed | ClientError::Io(_) | ClientError::NotProven(_)
    )
}

/// Says in the log why a message waits before it is sent again.
fn on_retry(r: &Retry) {
    debug!(
        attempt = r.attempt,
        wait_ms = r.wait.as_millis(),
        "the server is busy or unavailable; waiting"
    );
}

/// One request body from a command, its length checked before anything is allocated.
async fn read_request(stream: &mut UnixStream) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut len = [0; 4];
    stream.read_exact(&mut len).await?;
    let mut body = Zeroizing::new(vec![0; check_len(len, MAX_REQUEST)?]);
    stream.read_exact(&mut body).await?;
    Ok(body)
}
