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

use super::attacks::{self, Attacker, TlsState};
use super::capture::{CaptureReader, CaptureWriter, MAX_RECORD, Record};
use super::frames::{FrameWalker, Walked, frame_info};
use super::search::{self, Needles, Search, StreamSearch};
use super::tls::{self, TlsWalked, TlsWalker, tls_info};
use super::{Config, Direction, Event, InterceptError, Tamper};

/// Events kept for [`Proxy::events`]; older ones are dropped, so a proxy that runs for days
/// does not keep every frame line it ever printed.
pub const MAX_EVENTS: usize = 4096;
/// Socket read size: one capture record at most.
const READ_BUF: usize = MAX_RECORD;
/// How long a TLS `reorder` holds a record for a second one to swap it with; then it goes on
/// unchanged (and the attack is reported as not done).
const REORDER_WAIT: Duration = Duration::from_millis(500);

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
        // Checked before the listener (a refused capture file leaves nothing listening), made
        // after it: a port in use leaves an old capture that `--force` would replace as it was
        // (found by a trial run: it was removed, then the proxy could not listen).
        if let Some(path) = config.capture.as_deref() {
            super::capture::check_target(path, config.replace_capture)?;
        }
        let listener =
            TcpListener::bind(listen)
                .await
                .map_err(|source| InterceptError::Listen {
                    addr: listen.to_owned(),
                    source,
                })?;
        let capture = CaptureWriter::create(config.capture.as_deref(), config.replace_capture)?;
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
    let state = Arc::new(TlsState::default());
    let to_server = Pump::new(shared.clone(), conn, Direction::ToServer, state.clone());
    let to_client = Pump::new(shared.clone(), conn, Direction::ToClient, state);
    let (to_server, _) = tokio::join!(to_server.run(cr, uw), to_client.run(ur, cw));
    shared.emit(Event::Closed { conn });
    if shared.config.tamper == Some(Tamper::Replay)
        && !shared.replayed.swap(true, Ordering::Relaxed)
    {
        match to_server.into_replay() {
            Some((log, false)) => attacks::replay(&shared, conn, &log).await,
            Some((log, true)) => attacks::replay_tls(&shared, conn, &log).await,
            None => shared.replayed.store(false, Ordering::Relaxed),
        }
    }
    if let Some((_, live)) = &shared.expect {
        let s = lock(live).clone();
        shared.emit(Event::Expect(s));
    }
}

/// How one direction is cut: decided on its first bytes.
enum Walk {
    /// Fewer than three bytes seen: not known yet.
    Undecided(Vec<u8>),
    Frames(FrameWalker),
    Tls(TlsWalker),
}

/// One direction of one connection.
struct Pump {
    shared: Arc<Shared>,
    recording: Recording,
    attacker: Attacker,
}

impl Pump {
    fn new(shared: Arc<Shared>, conn: u32, dir: Direction, state: Arc<TlsState>) -> Self {
        Pump {
            recording: shared.recording(conn, dir),
            attacker: Attacker::new(shared.clone(), conn, dir, state),
            shared,
        }
    }

    async fn run(mut self, mut src: OwnedReadHalf, mut dst: OwnedWriteHalf) -> Attacker {
        let mut walk = Walk::Undecided(Vec::new());
        let mut chunk = vec![0u8; READ_BUF];
        let mut out = Vec::new();
        loop {
            let read = if self.attacker.waiting_for_record() {
                match tokio::time::timeout(REORDER_WAIT, src.read(&mut chunk)).await {
                    Ok(read) => read,
                    Err(_) => {
                        out.clear();
                        self.attacker.give_up_waiting(&mut out);
                        if dst.write_all(&out).await.is_err() {
                            break;
                        }
                        continue;
                    }
                }
            } else {
                src.read(&mut chunk).await
            };
            let n = match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let data = chunk.get(..n).unwrap_or(&[]);
            self.shared.record(&mut self.recording, data);
            out.clear();
            self.attacker.log_tls_bytes(data);
            self.walk(&mut walk, data, &mut out);
            if !out.is_empty() && dst.write_all(&out).await.is_err() {
                break;
            }
            // A tampered message can make `out` large once; do not keep that much for good.
            out.shrink_to(READ_BUF);
        }
        // Whatever is left (a message held without its end, a partial frame) goes on as it is.
        let mut rest = Vec::new();
        self.attacker.release(&mut rest);
        rest.extend_from_slice(&match walk {
            Walk::Undecided(b) => b,
            Walk::Frames(w) => w.into_rest(),
            Walk::Tls(w) => w.into_rest(),
        });
        if !rest.is_empty() {
            let _ = dst.write_all(&rest).await;
        }
        let _ = dst.shutdown().await;
        self.attacker
    }

    /// Cuts `data` (frames or TLS records, decided on the first bytes) and appends what to
    /// forward to `out`.
    fn walk(&mut self, walk: &mut Walk, data: &[u8], out: &mut Vec<u8>) {
        let (conn, dir) = (self.recording.conn, self.recording.dir);
        if let Walk::Undecided(first) = walk {
            first.extend_from_slice(data);
            let decided = match tls::looks_like_tls(first) {
                None => return,
                Some(true) => Walk::Tls(TlsWalker::new()),
                Some(false) => Walk::Frames(FrameWalker::new(self.shared.config.max_frame)),
            };
            let first = std::mem::take(first);
            *walk = decided;
            return self.walk(walk, &first, out);
        }
        match walk {
            Walk::Undecided(_) => {}
            Walk::Frames(walker) => {
                walker.push(data);
                for walked in walker.by_ref() {
                    match walked {
                        Walked::Frame(frame) => {
                            self.shared
                                .emit(Event::Frame(frame_info(conn, dir, frame.as_bytes())));
                            self.attacker.frame(frame, out);
                        }
                        Walked::NotFrames(bytes) => self.not_parsed(bytes, out),
                    }
                }
            }
            Walk::Tls(walker) => {
                walker.push(data);
                for walked in walker.by_ref() {
                    match walked {
                        TlsWalked::Record(record) => {
                            self.shared.emit(Event::Tls(tls_info(conn, dir, &record)));
                            self.attacker.tls_record(record, out);
                        }
                        TlsWalked::NotRecords(bytes) => self.not_parsed(bytes, out),
                    }
                }
            }
        }
    }

    fn not_parsed(&self, bytes: Vec<u8>, out: &mut Vec<u8>) {
        self.shared.emit(Event::Raw {
            conn: self.recording.conn,
            dir: self.recording.dir,
            len: bytes.len(),
        });
        out.extend_from_slice(&bytes);
    }
}
