//! Large bodies of the PostgreSQL store, kept in the database in chunks.
//!
//! Every server sharing the database must be able to read every body, so a body too large for
//! its row ([`INLINE_MAX`](crate::store::INLINE_MAX)) is not a file on one server's disk: it is
//! a `body` row and its `body_chunk` rows of [`CHUNK_SIZE`] bytes each.
//!
//! Constant memory both ways. An upload holds at most one chunk being filled, one queued and
//! one being sent; a download one being read, one queued and one being fetched.
//!
//! The store's callers write and read bodies through the blocking `std::io` traits (from the
//! blocking pool, or briefly from async code, as with SQLite's files). To serve those without
//! needing, or blocking, the caller's runtime, each body stream runs on a thread of its own
//! with a small runtime and a connection of its own; at most [`MAX_BODY_STREAMS`] run at once.
//!
//! Upload atomicity: the `body` row and all its chunks commit in one transaction at
//! [`ChunkUpload::finish`], so a body is either complete or absent; an abandoned upload rolls
//! back. A committed body that no row ends up naming (a refused duplicate, a crash between the
//! two commits) is deleted when its [`StagedBody`] is dropped, or by the sweep of unreferenced
//! bodies older than [`ORPHAN_AGE`](super::ORPHAN_AGE) when a store connects.

use std::future::Future;
use std::io::{self, Cursor, Read};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::store::error::StoreError;

/// Bytes per `body_chunk` row: large enough that per-row overhead is small next to the bytes,
/// small enough that three in flight cost under a mebibyte. Equal to the delivery frame size,
/// so a delivery reads one chunk per frame.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Body uploads and downloads running at once, each on its own connection: bounded so a burst
/// of large messages cannot exhaust the server's `max_connections`; further streams wait.
pub const MAX_BODY_STREAMS: usize = 8;

/// Chunks queued between the caller and a stream's thread (beside the one each side holds).
const STREAM_QUEUE: usize = 1;

/// What a PostgreSQL [`BlobWriter`](crate::store::BlobWriter) needs to stage bodies, shared by
/// the store, its writers and its staged bodies.
pub struct BodyHome {
    /// How to open a stream's own connection.
    pub(super) config: tokio_postgres::Config,
    /// The database's identity (cluster system identifier and database name): a body staged
    /// through one store may only be named by a store on the same database.
    pub(super) database_id: String,
    /// The database as shown in messages (no password).
    pub(super) target: String,
    /// Permits for [`MAX_BODY_STREAMS`].
    pub(super) streams: Arc<Semaphore>,
    /// Ids of staged bodies dropped without a committed row, for the store's cleaner task.
    pub(super) discard: tokio::sync::mpsc::UnboundedSender<i64>,
}

impl std::fmt::Debug for BodyHome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyHome")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// A body committed in the `body` table and not yet named by a committed row: deleted again
/// (by the store's cleaner) when dropped unless [`keep`](Self::keep) was called.
pub struct StagedBody {
    id: i64,
    home: Arc<BodyHome>,
    keep: bool,
}

impl std::fmt::Debug for StagedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedBody")
            .field("id", &self.id)
            .field("keep", &self.keep)
            .finish()
    }
}

impl StagedBody {
    /// The `body` row's id.
    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    /// The identity of the database it was staged in.
    pub(crate) fn database_id(&self) -> &str {
        &self.home.database_id
    }

    /// A committed row names the body now: dropping this no longer deletes it.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for StagedBody {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // The cleaner deletes it only if no row names it (a commit whose answer was lost may
        // have named it after all); if the cleaner is gone, the sweep at the next connect does.
        if self.home.discard.send(self.id).is_err() {
            debug!(
                body = self.id,
                "store closed; the body is swept at the next connect"
            );
        }
    }
}

/// Runs `work` on a thread of its own with a small runtime and its own connection, once a
/// stream permit is free.
fn on_own_connection<T, F, Fut>(
    home: Arc<BodyHome>,
    name: &str,
    work: F,
) -> io::Result<JoinHandle<Result<T, StoreError>>>
where
    T: Send + 'static,
    F: FnOnce(tokio_postgres::Client) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, StoreError>>,
{
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StoreError::Task(format!("could not start a body stream: {e}")))?;
            runtime.block_on(async move {
                let _permit = home
                    .streams
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))?;
                let (client, connection) = home
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| super::connect_failed(&home.target, e))?;
                let driver = tokio::spawn(connection);
                let result = work(client).await;
                // The client is gone with `work`: the connection ends.
                if let Ok(Err(err)) = driver.await {
                    debug!(%err, "body stream connection ended with an error");
                }
                result
            })
        })
}

/// Shorthand for a failed statement of a body stream.
fn db(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    super::db(action)
}

/// A message from the caller of an upload to its thread.
enum Up {
    Chunk(Vec<u8>),
    /// Every chunk was sent: record the size and hash, commit.
    End {
        len: u64,
        /// `None` for a body written without it (the server's inbox).
        sha256: Option<[u8; 32]>,
    },
}

/// A body being streamed into the database (the spilled state of a `BlobWriter`).
pub struct ChunkUpload {
    /// The chunk being filled.
    buffer: Vec<u8>,
    chunks: Option<SyncSender<Up>>,
    thread: Option<JoinHandle<Result<i64, StoreError>>>,
    home: Arc<BodyHome>,
}

impl ChunkUpload {
    /// Starts the upload thread (it waits for a stream permit and connects meanwhile).
    pub(crate) fn start(home: Arc<BodyHome>) -> io::Result<Self> {
        let (chunks, incoming) = mpsc::sync_channel(STREAM_QUEUE);
        let thread = on_own_connection(home.clone(), "letterlock-body-upload", move |client| {
            upload(client, incoming)
        })?;
        Ok(Self {
            buffer: Vec::with_capacity(CHUNK_SIZE),
            chunks: Some(chunks),
            thread: Some(thread),
            home,
        })
    }

    fn send(&mut self, message: Up) -> Result<(), StoreError> {
        let sent = self.chunks.as_ref().map(|c| c.send(message));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped: its result says why.
            _ => Err(self.outcome().err().unwrap_or_else(|| {
                StoreError::Task("the body upload ended before its last chunk".to_owned())
            })),
        }
    }

    /// Waits for the thread and returns its result (the body's id).
    fn outcome(&mut self) -> Result<i64, StoreError> {
        self.chunks = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(StoreError::Task(
                "the body upload thread panicked".to_owned(),
            )),
            None => Err(StoreError::Task("the body upload already ended".to_owned())),
        }
    }

    /// Sends the last chunk, commits the body, and hands it over as staged.
    pub(crate) fn finish(
        mut self,
        len: u64,
        sha256: Option<[u8; 32]>,
    ) -> Result<StagedBody, StoreError> {
        if !self.buffer.is_empty() {
            let last = std::mem::take(&mut self.buffer);
            self.send(Up::Chunk(last))?;
        }
        self.send(Up::End { len, sha256 })?;
        let id = self.outcome()?;
        debug!(body = id, len, "body staged in the database");
        Ok(StagedBody {
            id,
            home: self.home.clone(),
            keep: false,
        })
    }
}

impl io::Write for ChunkUpload {
    /// Takes bytes into the current chunk; a full chunk goes to the thread, waiting while the
    /// queue is full (the constant-memory bound).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let take = (CHUNK_SIZE - self.buffer.len()).min(buf.len());
        self.buffer
            .extend_from_slice(buf.get(..take).unwrap_or_default());
        if self.buffer.len() >= CHUNK_SIZE {
            let full = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_SIZE));
            self.send(Up::Chunk(full)).map_err(io::Error::other)?;
        }
        Ok(take)
    }

    /// Nothing to do: a body is durable at [`finish`](Self::finish), not before.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The upload thread's work: one transaction with the body row and every chunk.
async fn upload(
    mut client: tokio_postgres::Client,
    incoming: Receiver<Up>,
) -> Result<i64, StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting a body upload"))?;
    let id: i64 = tx
        .query_one("INSERT INTO body DEFAULT VALUES RETURNING id", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(db("creating a body row"))?;
    let insert = tx
        .prepare("INSERT INTO body_chunk (body, seq, bytes) VALUES ($1, $2, $3)")
        .await
        .map_err(db("preparing a chunk insert"))?;
    let mut seq: i32 = 0;
    loop {
        // Blocking this thread's own runtime is fine: no statement is in flight meanwhile.
        match incoming.recv() {
            Ok(Up::Chunk(bytes)) => {
                tx.execute(&insert, &[&id, &seq, &bytes])
                    .await
                    .map_err(db("storing a body chunk"))?;
                seq = seq.checked_add(1).ok_or(StoreError::OutOfRange {
                    field: "body chunk count",
                    value: u64::from(u32::MAX),
                })?;
            }
            Ok(Up::End { len, sha256 }) => {
                let size = super::to_i64("body size", len)?;
                let hash: Option<&[u8]> = sha256.as_ref().map(|h| &h[..]);
                tx.execute(
                    "UPDATE body SET size = $2, chunks = $3, sha256 = $4, staged = clock_timestamp()
                     WHERE id = $1",
                    &[&id, &size, &seq, &hash],
                )
                .await
                .map_err(db("finishing a body row"))?;
                tx.commit().await.map_err(db("committing a body"))?;
                return Ok(id);
            }
            // The writer was dropped: the transaction rolls back with the connection.
            Err(_) => {
                return Err(StoreError::Task("the body upload was abandoned".to_owned()));
            }
        }
    }
}

/// A message from a download thread to its reader.
enum Down {
    Chunk(Vec<u8>),
    /// Every chunk was sent and the total matched the body's size.
    End,
    Failed(StoreError),
}

/// Streams a chunked body out of the database, chunk by chunk.
pub struct ChunkReader {
    current: Cursor<Vec<u8>>,
    incoming: Receiver<Down>,
    ended: bool,
}

impl std::fmt::Debug for ChunkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl ChunkReader {
    /// Starts reading body `id`, which should be `size` bytes long.
    pub(crate) fn open(home: Arc<BodyHome>, id: i64, size: u64) -> Result<Self, StoreError> {
        let (chunks, incoming) = mpsc::sync_channel(STREAM_QUEUE);
        let thread = on_own_connection(home, "letterlock-body-download", move |client| {
            download(client, id, size, chunks)
        })
        .map_err(|e| StoreError::Task(format!("could not start a body download: {e}")))?;
        // Detached: it ends at the last chunk, or when this reader is dropped.
        drop(thread);
        Ok(Self {
            current: Cursor::new(Vec::new()),
            incoming,
            ended: false,
        })
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 || buf.is_empty() || self.ended {
                return Ok(n);
            }
            match self.incoming.recv() {
                Ok(Down::Chunk(bytes)) => self.current = Cursor::new(bytes),
                Ok(Down::End) => self.ended = true,
                Ok(Down::Failed(err)) => return Err(io::Error::other(err)),
                Err(_) => {
                    return Err(io::Error::other(StoreError::Task(
                        "the body download stopped before the end of the body".to_owned(),
                    )));
                }
            }
        }
    }
}

/// The download thread's work: every chunk in order, from one snapshot.
async fn download(
    mut client: tokio_postgres::Client,
    id: i64,
    size: u64,
    out: SyncSender<Down>,
) -> Result<(), StoreError> {
    let result = send_chunks(&mut client, id, size, &out).await;
    let last = match result {
        Ok(()) => Down::End,
        Err(err) => {
            warn!(body = id, %err, "could not read a stored body");
            Down::Failed(err)
        }
    };
    // The reader may be gone already; nothing more to do then.
    let _ = out.send(last);
    Ok(())
}

async fn send_chunks(
    client: &mut tokio_postgres::Client,
    id: i64,
    size: u64,
    out: &SyncSender<Down>,
) -> Result<(), StoreError> {
    // One snapshot: a concurrent delete cannot cut the body in half.
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db("starting a body download"))?;
    let row = tx
        .query_opt("SELECT size, chunks FROM body WHERE id = $1", &[&id])
        .await
        .map_err(db("looking up a body"))?;
    let Some(row) = row else {
        return Err(StoreError::Corrupt {
            what: "message body reference (the body is gone)",
        });
    };
    let (stored_size, chunks): (i64, i32) = (
        row.try_get(0).map_err(db("reading a body row"))?,
        row.try_get(1).map_err(db("reading a body row"))?,
    );
    if u64::try_from(stored_size).ok() != Some(size) {
        return Err(StoreError::Corrupt {
            what: "body size (the row and the body disagree)",
        });
    }
    let select = tx
        .prepare("SELECT bytes FROM body_chunk WHERE body = $1 AND seq = $2")
        .await
        .map_err(db("preparing a chunk read"))?;
    let mut total: u64 = 0;
    for seq in 0..chunks {
        let row = tx
            .query_opt(&select, &[&id, &seq])
            .await
            .map_err(db("reading a body chunk"))?
            .ok_or(StoreError::Corrupt {
                what: "body (a chunk is missing)",
            })?;
        let bytes: Vec<u8> = row.try_get(0).map_err(db("reading a body chunk"))?;
        total = total.saturating_add(bytes.len() as u64);
        if out.send(Down::Chunk(bytes)).is_err() {
            // The reader was dropped: stop quietly.
            return Ok(());
        }
    }
    if total != size {
        return Err(StoreError::Corrupt {
            what: "body (its chunks do not add up to its size)",
        });
    }
    Ok(())
}
