//! The agent's side of the socket: the socket itself ([`AgentSocket`]: one agent per keys
//! folder, private from its first moment), commands of its own user only, their requests read
//! side by side, and their messages sealed, sent on the kept connection and answered one at a
//! time, each only once its delivery is proven.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::{MAX_REQUEST, Reply, Request, SendRequest, check_len, framed};
use crate::client::{
    Backoff, Client, ClientConfig, ClientError, Delivery, Retry, Sealing, Transport,
};
use crate::envelope::{self, MessageId, SealOptions};
use crate::keys::{Identity, PublicKey};
use crate::tls::TlsOptions;

/// How long a kept connection is used again after its last message. Below the server's default
/// idle timeout (two minutes), so that a connection the server is about to close is replaced
/// before a message is written to it; one the server closed sooner is found out by the send,
/// which then goes again, byte for byte, on a new connection.
const REUSE_FOR: Duration = Duration::from_secs(90);

/// The longest path a Unix socket can have, plus one (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 108;

/// How long a command may take to write its request, and to take its answer.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests read at once: a stuck process of the agent's user holds one of these for at most
/// [`SOCKET_TIMEOUT`]; a connection beyond them is declined as busy, unread, and its command
/// sends by itself.
const MAX_READERS: usize = 32;

/// Tells, before each message, whether the keys an agent holds are still the ones its user
/// keeps (the pinned server key, the client's key): `Err(why)` when they are not, or cannot be
/// told to be. The agent then declines that message and every later one
/// ([`DECLINED_KEYS_CHANGED`](super::DECLINED_KEYS_CHANGED)), so that their commands send them
/// under the keys kept now, and stops ([`AgentError::KeysChanged`]). Called on the agent's
/// sending task: it must be cheap when nothing changed (compare file metadata, say).
pub type KeyCheck = Box<dyn FnMut() -> Result<(), String> + Send + Sync>;

/// What the user can do about a send that failed, if anything: sent after the failure in the
/// reply's text ([`with_hint`](super::with_hint)), so that a command whose message the agent
/// sent shows the hint it would have shown for its own failure. The library says what failed;
/// only a command line knows its commands and flags.
pub type HintFor = Box<dyn Fn(&ClientError) -> Option<String> + Send + Sync>;

/// What an agent holds and how it behaves.
pub struct AgentConfig {
    /// The server's address (HOST:PORT) as commands name it: requests naming another are
    /// declined, and the command sends the message itself.
    pub server_addr: String,
    /// The client's key, loaded (and unlocked) once.
    pub identity: Arc<dyn Identity>,
    /// The pinned server key.
    pub server: PublicKey,
    /// For each connection the agent makes (keep its handshake key cache, as the commands do).
    pub client: ClientConfig,
    pub tls: TlsOptions,
    /// Retries of a busy or unavailable server, for each message.
    pub backoff: Backoff,
    /// Stop after this long without a message; `None`: only when stopped.
    pub persist: Option<Duration>,
    /// Whether `identity` and `server` are still the keys the user keeps, asked before each
    /// message; `None`: they are taken to be for as long as the agent runs.
    pub keys_current: Option<KeyCheck>,
    /// The hint for a failed send; `None`: the failure alone.
    pub hint: Option<HintFor>,
}

/// Why an agent could not start, or stopped other than being asked to.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "an agent is already running for {0} (or starting: asking for its passphrase, or connecting; or stopping)"
    )]
    AlreadyRunning(String),
    #[error("{0} exists and is not a socket; move it away to start an agent")]
    NotASocket(String),
    #[error(
        "cannot listen on {0}: its path is {1} bytes, and a Unix socket's is at most 107: use a \
         shorter --keys folder"
    )]
    PathTooLong(String, usize),
    #[error("{0}: {1}")]
    Io(String, #[source] io::Error),
    #[error("cannot accept on the agent's socket: {0}")]
    Accept(#[source] io::Error),
    /// The task that sends the messages panicked: the commands it had not answered were
    /// declined or told there was no answer.
    #[error("the agent's sending task failed: {0}")]
    Sender(#[source] tokio::task::JoinError),
    /// The keys it holds are no longer the ones kept ([`KeyCheck`]): it declined the message
    /// that found it out, and stopped.
    #[error("the agent stopped, as the keys it holds are no longer the ones kept: {0}")]
    KeysChanged(String),
}

/// The agent's socket, `path`, for as long as this value lives: made in a private folder, mode
/// 0600, then renamed into place, so that it is never reachable with another mode; the file
/// beside it with the extension `.lock` stays locked (`flock`) meanwhile, so that two agents
/// never share a keys folder; removed when dropped, if what is at `path` is still this socket.
pub struct AgentSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file.
    made: (u64, u64),
    /// `client_agent.lock` beside the socket, locked.
    _lock: crate::files::FileLock,
}

/// The lock of an agent's keys folder ([`AgentSocket::lock`]), before its socket is made: a
/// second agent is refused before it connects to its server, not after.
pub struct AgentLock {
    path: PathBuf,
    lock: crate::files::FileLock,
}

impl AgentSocket {
    /// Takes `path` (in its folder, the keys folder) for an agent: [`AgentSocket::lock`], then
    /// [`AgentLock::bind`]. Within a Tokio runtime.
    pub fn bind(path: &Path) -> Result<AgentSocket, AgentError> {
        Self::lock(path)?.bind()
    }

    /// Locks the keys folder of `path` for an agent: refused if another agent holds it, if the
    /// path is too long for a socket, or if something other than a socket is there.
    pub fn lock(path: &Path) -> Result<AgentLock, AgentError> {
        let shown = path.display().to_string();
        let io_err = |e: io::Error| AgentError::Io(shown.clone(), e);
        if path.as_os_str().len() >= MAX_SOCKET_PATH {
            return Err(AgentError::PathTooLong(shown, path.as_os_str().len()));
        }
        // A regular file, not the folder (`flock` on NFS needs a file open for writing).
        let lock = crate::files::FileLock::try_acquire(&path.with_extension("lock"))
            .map_err(io_err)?
            .ok_or_else(|| AgentError::AlreadyRunning(shown.clone()))?;
        // With the lock held no agent is running for this folder: a socket there is a dead one's.
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {}
            Ok(_) => return Err(AgentError::NotASocket(shown)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        Ok(AgentLock {
            path: path.to_owned(),
            lock,
        })
    }

    /// Removes the socket file if it is still this one: no command finds the agent from now on.
    fn unlink(&self) {
        if std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.made)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        self.unlink();
    }
}

impl AgentLock {
    /// Makes the socket, replacing a dead agent's. Within a Tokio runtime.
    pub fn bind(self) -> Result<AgentSocket, AgentError> {
        let path = self.path.as_path();
        let shown = path.display().to_string();
        let io_err = |e: io::Error| AgentError::Io(shown.clone(), e);
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let private = tempfile::Builder::new()
            .prefix(".agent")
            .tempdir_in(folder)
            .map_err(io_err)?;
        let first = private.path().join("s");
        let listener = UnixListener::bind(&first).map_err(io_err)?;
        std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        std::fs::rename(&first, path).map_err(io_err)?;
        let m = std::fs::symlink_metadata(path).map_err(io_err)?;
        Ok(AgentSocket {
            listener,
            path: self.path,
            made: (m.dev(), m.ino()),
            _lock: self.lock,
        })
    }
}

/// A request read and waiting for its turn, with the command still on the line.
struct Pending {
    request: SendRequest,
    stream: UnixStream,
    /// When the command stops waiting (from its `wait_s`, counted from when we read it).
    deadline: Instant,
}

/// Serves commands on `socket` until `stop` completes, a [`Request::Stop`] comes, or
/// `config.persist` passes without a message. `client`: a connection already made (the command
/// line makes one first, so that a wrong address or key fails at once); otherwise the first
/// message connects. Every command that reached the agent gets an answer, also when it stops:
/// requests not sent yet are declined, and their commands send by themselves.
pub async fn serve(
    socket: AgentSocket,
    config: AgentConfig,
    client: Option<Client>,
    stop: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    // Only processes of the agent's own user are served: the user it runs as.
    let uid = nix::unistd::getuid().as_raw();
    let persist = config.persist;
    let (queue_tx, queue) = mpsc::channel::<Pending>(MAX_READERS);
    let (asked_to_stop, mut stop_asked) = watch::channel(false);
    let asked_to_stop = Arc::new(asked_to_stop);
    let (stopping, stopping_rx) = watch::channel(false);
    let (used_tx, mut used) = watch::channel(Instant::now());
    let (stepped_aside, mut keys_changed) = watch::channel(None);
    // The messages go one at a time on a task of their own, so that this loop keeps accepting,
    // reading requests and hearing stop while one is being sent.
    let agent = Agent {
        config,
        client,
        last_used: Instant::now(),
        stepped_aside,
    };
    let sender = tokio::spawn(agent.run(queue, stopping_rx, used_tx));
    let mut readers = JoinSet::new();
    tokio::pin!(stop);
    let ended = loop {
        while readers.try_join_next().is_some() {}
        let last = *used.borrow_and_update();
        let idle = async move {
            match persist.and_then(|p| last.checked_add(p)) {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut stop => break Ok(()),
            _ = stop_asked.changed() => {
                info!("asked to stop");
                break Ok(());
            }
            changed = keys_changed.changed() => {
                let why = keys_changed.borrow_and_update().clone();
                match (changed, why) {
                    (Ok(()), Some(why)) => {
                        warn!(why = %why, "the keys the agent holds are no longer the ones kept: stopping");
                        break Err(AgentError::KeysChanged(why));
                    }
                    (Ok(()), None) => {}
                    // The sending task ended.
                    (Err(_), _) => break Ok(()),
                }
            }
            // A message started or ended: the idle time counts from now.
            changed = used.changed() => if changed.is_err() { break Ok(()) },
            () = idle => {
                info!("no message for the agent's persist time: stopping");
                break Ok(());
            }
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) if readers.len() >= MAX_READERS => {
                    warn!("too many commands at once; one declined unread");
                    // Written before the close, so the command reads it and sends by itself.
                    let reply = Reply::Declined("the agent is busy".to_owned());
                    let _ = stream.try_write(&framed(&reply.encode()));
                }
                Ok((stream, _)) => {
                    readers.spawn(read_one(stream, uid, queue_tx.clone(), asked_to_stop.clone()));
                }
                // Out of descriptors, say: the command that was turned away sends by itself.
                Err(e) if is_transient(&e) => {
                    warn!(error = %e, "cannot accept a command's connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => break Err(AgentError::Accept(e)),
            },
        }
    };
    // No new command finds the socket; those already connected, or in the listen queue, are
    // read, and what is not sent yet is declined; the message being sent, if any, finishes
    // within its command's time.
    socket.unlink();
    while let Ok(Ok((stream, _))) =
        tokio::time::timeout(Duration::ZERO, socket.listener.accept()).await
    {
        readers.spawn(read_one(
            stream,
            uid,
            queue_tx.clone(),
            asked_to_stop.clone(),
        ));
    }
    let _ = stopping.send(true);
    drop(queue_tx);
    while readers.join_next().await.is_some() {}
    sender.await.map_err(AgentError::Sender)?;
    ended
}

fn is_transient(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::NotConnected
    )
}

/// One command's connection: its user checked, its request read within [`SOCKET_TIMEOUT`],
/// then queued (a send), answered at once (stop, or a request that cannot be read), or dropped.
async fn read_one(
    mut stream: UnixStream,
    uid: u32,
    queue: mpsc::Sender<Pending>,
    asked_to_stop: Arc<watch::Sender<bool>>,
) {
    match stream.peer_cred() {
        Ok(peer) if peer.uid() == uid => {}
        Ok(peer) => {
            warn!(uid = peer.uid(), "refused a process of another user");
            return;
        }
        Err(e) => {
            warn!(error = %e, "cannot tell which user a process is; refused");
            return;
        }
    }
    let body = match tokio::time::timeout(SOCKET_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return debug!(error = %e, "no request from the command"),
        Err(_) => return debug!("no request from the command in time"),
    };
    let reply = match Request::decode(&body) {
        Ok(Request::Send(request)) => {
            let wait = Duration::from_secs(u64::from(request.wait_s));
            let deadline = Instant::now() + wait.saturating_sub(Duration::from_secs(1));
            let pending = Pending {
                request,
                stream,
                deadline,
            };
            if let Err(mpsc::error::SendError(pending)) = queue.send(pending).await {
                decline_stopping(pending.stream).await;
            }
            return;
        }
        Ok(Request::Stop) => {
            let _ = asked_to_stop.send(true);
            Reply::Stopping
        }
        // Another version of letterlock, say: the command sends the message itself.
        Err(e) => Reply::Declined(format!("the agent cannot read the request: {e}")),
    };
    answer_with(&mut stream, &reply).await;
}

async fn decline_stopping(mut stream: UnixStream) {
    let reply = Reply::Declined("the agent is stopping".to_owned());
    answer_with(&mut stream, &reply).await;
}

/// The reply for a send that failed, with the hint `hint` gives for it: with the message's id
/// when it may or may not have been stored ([`ClientError::unproven_id`]), so that the command
/// can give it (`send_msg --json`), as it does for a message it sent itself.
fn failed(e: &ClientError, hint: Option<&HintFor>) -> Reply {
    let text = super::with_hint(&e.to_string(), hint.and_then(|h| h(e)).as_deref());
    match e.unproven_id() {
        Some(id) => Reply::NotProven { id, text },
        None => Reply::NotDelivered(text),
    }
}

async fn answer_with(stream: &mut UnixStream, reply: &Reply) {
    let bytes = framed(&reply.encode());
    let written = tokio::time::timeout(SOCKET_TIMEOUT, stream.write_all(&bytes)).await;
    if !matches!(written, Ok(Ok(()))) {
        debug!("the command left before its answer");
    }
}

/// True when the command closed its end: it stopped waiting, and its message must not go.
/// Asks the kernel (a peek that does not wait), not Tokio's cached readiness.
fn command_gone(stream: &UnixStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let mut byte = [0; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    match recv(stream.as_raw_fd(), &mut byte, flags) {
        Ok(0) => true,
        // A byte after the request: the command is still there (and broke the protocol).
        Ok(_) => false,
        Err(e) => e != nix::errno::Errno::EAGAIN,
    }
}

struct Agent {
    config: AgentConfig,
    /// The kept connection; `None` until the next message makes one.
    client: Option<Client>,
    /// When the last message was sent (the kept connection's last use).
    last_used: Instant,
    /// Why the keys it holds are no longer the ones kept, once [`AgentConfig::keys_current`]
    /// said so: every message from then on is declined, and [`serve`] stops.
    stepped_aside: watch::Sender<Option<String>>,
}

impl Agent {
    /// Sends the queued messages one at a time until `stopping`, then declines what is left;
    /// `used` hears when each starts and ends (the idle time counts from then).
    async fn run(
        mut self,
        mut queue: mpsc::Receiver<Pending>,
        mut stopping: watch::Receiver<bool>,
        used: watch::Sender<Instant>,
    ) {
        loop {
            let pending = tokio::select! {
                biased;
                _ = stopping.wait_for(|s| *s) => break,
                pending = queue.recv() => match pending {
                    Some(pending) => pending,
                    None => break,
                },
            };
            let _ = used.send(Instant::now());
            self.answer(pending).await;
            let _ = used.send(Instant::now());
        }
        // Readers that queue from now on find the queue closed and decline by themselves.
        queue.close();
        while let Some(pending) = queue.recv().await {
            decline_stopping(pending.stream).await;
        }
    }

    /// A queued request: sent, unless its command already left or its time ran out, within the
    /// time its command waits; then answered.
    async fn answer(&mut self, pending: Pending) {
        let Pending {
            request,
            mut stream,
            deadline,
        } = pending;
        if command_gone(&stream) {
            debug!("the command stopped waiting before its turn; its message is not sent");
            return;
        }
        if Instant::now() >= deadline {
            let reply = Reply::NotDelivered(
                "not sent: the time the command waits ran out before its turn".to_owned(),
            );
            return answer_with(&mut stream, &reply).await;
        }
        let wait_s = request.wait_s;
        let sealed = Arc::new(OnceLock::new());
        let reply = match tokio::time::timeout_at(deadline, self.send(request, &sealed)).await {
            Ok(reply) => reply,
            // The connection, in the middle of a message, went with the cancelled send.
            // Said as a missing answer is said, so the command does not print "NOT delivered";
            // with the id once the message was sealed whole, as for a missing ack.
            Err(_) => {
                let text = format!(
                    "delivery NOT proven within the {} the command waits; the message may or \
                     may not have been stored",
                    crate::text::TimeSpan(Duration::from_secs(wait_s.into()))
                );
                match sealed.get() {
                    Some(id) => Reply::NotProven { id: *id, text },
                    None => Reply::NotDelivered(text),
                }
            }
        };
        if !matches!(reply, Reply::Declined(_)) {
            self.last_used = Instant::now();
        }
        answer_with(&mut stream, &reply).await;
    }

    /// Seals `request` with the kept key and sends it: the answer is "delivered" only once the
    /// server's ack tag matched. As a one-shot `send_msg` does, the header and the wrapped
    /// content key go first, so that the server decrypts the content key while the signature is
    /// still being made.
    /// `sealed` gets the message's id once it is sealed, for an answer made without this
    /// future (the command's time ran out).
    async fn send(&mut self, request: SendRequest, sealed: &Arc<OnceLock<MessageId>>) -> Reply {
        if let Some(why) = self.keys_changed() {
            return Reply::Declined(format!("{}{why}", super::DECLINED_KEYS_CHANGED));
        }
        if request.server != self.config.server_addr {
            return Reply::Declined(format!(
                "{}{}, not {}",
                super::DECLINED_OTHER_SERVER,
                self.config.server_addr,
                request.server
            ));
        }
        let command_retries = request.retries();
        let sealing = self.seal(request, sealed.clone());
        if self.last_used.elapsed() > REUSE_FOR {
            self.client = None;
        }
        // Connecting, and sending again on a new connection after a kept one the server
        // closed meanwhile (its idle timeout, a restart: `send_sealing` does it), are tried
        // for no longer than the command's own --timeout: it waits that long plus the time of
        // one answer (`SendRequest::retries`).
        let backoff = Backoff {
            deadline: self.config.backoff.deadline.min(command_retries),
            ..self.config.backoff
        };
        let mut client = match self.client.take() {
            Some(client) => client,
            None => match connect(&self.config, backoff).await {
                Ok(client) => client,
                Err(e) => return failed(&e, self.config.hint.as_ref()),
            },
        };
        let result = client.send_sealing(sealing, backoff, on_retry).await;
        match result {
            Ok(Delivery {
                id,
                header,
                plaintext_len,
            }) => {
                self.client = Some(client);
                Reply::Delivered {
                    id,
                    plaintext_len,
                    mode: header.mode,
                }
            }
            // After a failure the connection's state is unknown: the next message makes a new
            // one.
            Err(e) => failed(&e, self.config.hint.as_ref()),
        }
    }

    /// Why the keys held are no longer the ones kept, if they are not: asked of
    /// [`AgentConfig::keys_current`] until it first says so, then that answer for good (the
    /// kept connection, made with the old keys, is closed).
    fn keys_changed(&mut self) -> Option<String> {
        if self.stepped_aside.borrow().is_none()
            && let Some(check) = self.config.keys_current.as_mut()
            && let Err(why) = check()
        {
            warn!(why = %why, "declining messages from now on");
            self.client = None;
            self.stepped_aside.send_replace(Some(why));
        }
        self.stepped_aside.borrow().clone()
    }

    /// Starts sealing `request` on the blocking pool (the signature is an RSA private
    /// operation), its head handed over as soon as it exists, and its id put in `sealed` once
    /// it is sealed whole.
    fn seal(&self, request: SendRequest, sealed: Arc<OnceLock<MessageId>>) -> Sealing {
        let identity = self.config.identity.clone();
        let server = self.config.server.clone();
        let opts = SealOptions {
            asymmetric_limit: request.max_asymmetric,
            ..SealOptions::mode(request.mode)
        };
        let message = request.message;
        Sealing::start(&self.config.server, request.mode, move |out| {
            let done = envelope::seal_slice(identity.as_ref(), &server, &opts, &message, out)?;
            let _ = sealed.set(done.header.message_id);
            Ok(done)
        })
    }
}

/// A new connection to the agent's server, as a command would make it, busy answers and cut
/// handshakes retried within `backoff`.
async fn connect(c: &AgentConfig, backoff: Backoff) -> Result<Client, ClientError> {
    debug!(server = %c.server_addr, "connecting");
    Client::connect_retrying(
        &c.server_addr,
        c.identity.clone(),
        c.server.clone(),
        c.client.clone(),
        Transport::Tls(c.tls),
        backoff,
        on_retry,
    )
    .await
}

/// Says in the log why a message waits before it is sent again.
fn on_retry(r: &Retry) {
    info!(
        attempt = r.attempt,
        wait_ms = r.wait.as_millis(),
        cause = ?r.cause,
        "trying again"
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel is asked, whatever Tokio last saw: a command that is still connected, even
    /// one that wrote a stray byte, is not gone; one that closed its end is.
    #[tokio::test]
    async fn a_command_is_gone_only_once_it_closed_its_end() {
        let (agent_end, command_end) = UnixStream::pair().unwrap();
        assert!(!command_gone(&agent_end));
        drop(command_end);
        assert!(command_gone(&agent_end));

        let (agent_end, mut command_end) = UnixStream::pair().unwrap();
        command_end.write_all(b"x").await.unwrap();
        assert!(!command_gone(&agent_end));

        // After a request was read in full (Tokio's readiness then cleared), the same.
        let (mut agent_end, mut command_end) = UnixStream::pair().unwrap();
        command_end.write_all(&framed(b"LLA1\x02")).await.unwrap();
        let body = read_request(&mut agent_end).await.unwrap();
        assert_eq!(&body[..], b"LLA1\x02");
        assert!(!command_gone(&agent_end));
        drop(command_end);
        assert!(command_gone(&agent_end));
    }
}
