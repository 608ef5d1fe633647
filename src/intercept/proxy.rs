//! The proxy: a listener, one task per relayed connection, and a pump per direction that reads,
//! records, walks the frames, lets the attacker change them, and writes on.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::debug;

use super::attacks::{self, Attacker};
use super::capture::{CaptureReader, CaptureWriter, MAX_RECORD, Record};
use super::frames::{FrameWalker, Walked, frame_info};
use super::search::{self, Needles, Search, StreamSearch};
use super::{Config, Direction, Event, InterceptError, Tamper};

/// Events kept for [`Proxy::events`]; older ones are dropped, so a proxy that runs for days
/// does not keep every frame line it ever printed.
pub const MAX_EVENTS: usize = 4096;
/// Socket read size: one capture record at most.
const READ_BUF: usize = MAX_RECORD;

/// What every connection of one proxy shares.
pub(super) struct Shared {
    pub(super) config: Config,
    pub(super) upstream: String,
    /// The latest [`MAX_EVENTS`] events, in order.
    events: Mutex<VecDeque<Event>>,
    /// Where every byte read goes, as it is read.
    capture: Mutex<CaptureWriter>,
    /// Bytes read so far, all connections.
    captured: AtomicUsize,
    /// The `--expect` text's forms, and the search of everything read so far.
    expect: Option<(Needles, Mutex<Search>)>,
    /// Connection numbers, from 1.
    next_conn: AtomicU32,
    /// A replay happens once per proxy.
    pub(super) replayed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One direction of one connection, as it is recorded.
pub(super) struct Recording {
    conn: u32,
    dir: Direction,
    /// The `--expect` search of this stream.
    search: Option<StreamSearch>,
}

impl Shared {
    pub(super) fn emit(&self, event: Event) {
        debug!(%event, "intercept");
        if self.config.print {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{event}");
            let _ = out.flush();
        }
        let mut events = lock(&self.events);
        if events.len() >= MAX_EVENTS {
            events.pop_front();
        }
        events.push_back(event);
    }

    pub(super) fn recording(&self, conn: u32, dir: Direction) -> Recording {
        Recording {
            conn,
            dir,
            search: self.expect.as_ref().map(|_| StreamSearch::new(conn, dir)),
        }
    }

    /// Writes `bytes` to the capture and searches them for the `--expect` text.
    pub(super) fn record(&self, r: &mut Recording, bytes: &[u8]) {
        // A small blocking write (at most one read) to the page cache, under a short lock.
        if let Err(e) = lock(&self.capture).append(r.conn, r.dir, bytes) {
            tracing::warn!(error = %e, "writing the capture file failed; it ends here");
        }
        self.captured.fetch_add(bytes.len(), Ordering::Relaxed);
        if let (Some((needles, live)), Some(stream)) = (&self.expect, r.search.as_mut()) {
            let hits = stream.feed(needles, bytes);
            let mut live = lock(live);
            live.scanned += bytes.len();
            search::add_findings(&mut live, hits);
        }
    }

    pub(super) fn conn_id(&self) -> u32 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The capture as written so far: whole records only.
    fn capture_so_far(&self) -> Result<CaptureReader, InterceptError> {
        let (path, committed) = {
            let capture = lock(&self.capture);
            (capture.path().to_owned(), capture.committed())
        };
        CaptureReader::open_prefix(&path, committed)
    }
}

/// A running proxy. Dropping it stops accepting.
pub struct Proxy {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `listen` (port 0 picks one: see [`Proxy::local_addr`]) and relays each
    /// connection to `upstream`.
    pub async fn start(
        listen: &str,
        upstream: &str,
        config: Config,
    ) -> Result<Proxy, InterceptError> {
        let capture = CaptureWriter::create(config.capture.as_deref())?;
        let listener =
            TcpListener::bind(listen)
                .await
                .map_err(|source| InterceptError::Listen {
                    addr: listen.to_owned(),
                    source,
                })?;
        let local_addr = listener.local_addr()?;
        let expect = config.expect.as_deref().map(|text| {
            let needles = Needles::new(text);
            let empty = needles.empty_search();
            (needles, Mutex::new(empty))
        });
        let shared = Arc::new(Shared {
            config,
            upstream: upstream.to_owned(),
            events: Mutex::new(VecDeque::new()),
            capture: Mutex::new(capture),
            captured: AtomicUsize::new(0),
            expect,
            next_conn: AtomicU32::new(0),
            replayed: AtomicBool::new(false),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        Ok(Proxy {
            local_addr,
            shared,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The latest [`MAX_EVENTS`] events.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.shared.events).iter().cloned().collect()
    }

    /// The capture file (a temporary one unless [`Config::capture`] named it).
    pub fn capture_path(&self) -> PathBuf {
        lock(&self.shared.capture).path().to_owned()
    }

    /// Every byte read so far, read back from the capture file into memory.
    pub fn records(&self) -> Result<Vec<Record>, InterceptError> {
        self.shared.capture_so_far()?.collect()
    }

    /// Number of bytes captured so far.
    pub fn captured_len(&self) -> usize {
        self.shared.captured.load(Ordering::Relaxed)
    }

    /// Searches everything captured so far for `text`: for the [`Config::expect`] text, the
    /// search made as the bytes arrived; for another, the capture file, a record at a time.
    pub fn search(&self, text: &str) -> Result<Search, InterceptError> {
        if let Some((needles, live)) = &self.shared.expect
            && needles.text() == text
        {
            return Ok(lock(live).clone());
        }
        search::search_records(self.shared.capture_so_far()?, text)
    }

    /// Waits until an event matching `pred` happened (already, or within `timeout`).
    pub async fn wait_for(
        &self,
        pred: impl Fn(&Event) -> bool,
        timeout: Duration,
    ) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = lock(&self.shared.events).iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops accepting and closes every relayed connection.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    tasks.spawn(connection(shared.clone(), socket, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

/// One relayed connection: both directions, then (in replay mode) the replay.
async fn connection(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr) {
    let conn = shared.conn_id();
    shared.emit(Event::Opened { conn, peer });
    let upstream = match TcpStream::connect(&shared.upstream).await {
        Ok(s) => s,
        Err(e) => {
            shared.emit(Event::Failed {
                conn,
                error: format!("cannot connect to {}: {e}", shared.upstream),
            });
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let to_server = Pump::new(shared.clone(), conn, Direction::ToServer);
    let to_client = Pump::new(shared.clone(), conn, Direction::ToClient);
    let (to_server, _) = tokio::join!(to_server.run(cr, uw), to_client.run(ur, cw));
    shared.emit(Event::Closed { conn });
    if shared.config.tamper == Some(Tamper::Replay)
        && let Some(log) = to_server.into_replay()
        && !shared.replayed.swap(true, Ordering::Relaxed)
    {
        attacks::replay(&shared, conn, &log).await;
    }
    if let Some((_, live)) = &shared.expect {
        let s = lock(live).clone();
        shared.emit(Event::Expect(s));
    }
}

/// One direction of one connection.
struct Pump {
    shared: Arc<Shared>,
    recording: Recording,
    attacker: Attacker,
}

impl Pump {
    fn new(shared: Arc<Shared>, conn: u32, dir: Direction) -> Self {
        Pump {
            recording: shared.recording(conn, dir),
            attacker: Attacker::new(shared.clone(), conn, dir),
            shared,
        }
    }

    async fn run(mut self, mut src: OwnedReadHalf, mut dst: OwnedWriteHalf) -> Attacker {
        let (conn, dir) = (self.recording.conn, self.recording.dir);
        let mut walker = FrameWalker::new(self.shared.config.max_frame);
        let mut chunk = vec![0u8; READ_BUF];
        let mut out = Vec::new();
        loop {
            let n = match src.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let data = chunk.get(..n).unwrap_or(&[]);
            self.shared.record(&mut self.recording, data);
            walker.push(data);
            out.clear();
            for walked in walker.by_ref() {
                match walked {
                    Walked::Frame(frame) => {
                        self.shared
                            .emit(Event::Frame(frame_info(conn, dir, frame.as_bytes())));
                        self.attacker.frame(frame, &mut out);
                    }
                    Walked::NotFrames(bytes) => {
                        self.shared.emit(Event::Raw {
                            conn,
                            dir,
                            len: bytes.len(),
                        });
                        out.extend_from_slice(&bytes);
                    }
                }
            }
            if !out.is_empty() && dst.write_all(&out).await.is_err() {
                break;
            }
            // A tampered message can make `out` large once; do not keep that much for good.
            out.shrink_to(READ_BUF);
        }
        // Whatever is left (a message held without its end, a partial frame) goes on as it is.
        let mut rest = Vec::new();
        self.attacker.release(&mut rest);
        rest.extend_from_slice(&walker.into_rest());
        if !rest.is_empty() {
            let _ = dst.write_all(&rest).await;
        }
        let _ = dst.shutdown().await;
        self.attacker
    }
}
