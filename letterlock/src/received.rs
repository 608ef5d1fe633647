//! The client's durable record of the messages it received: (sender key id, message id) pairs,
//! so a delivery replayed later, by a fake server or by at-least-once delivery, is recognised
//! and not saved or shown again, whatever the output mode.
//!
//! Invariants:
//! - An entry is appended and fsynced before the delivery ack for its message is sent; the
//!   message's copy in the client's mailbox (when fetched with one) and its output (file
//!   renamed into place, or text printed) come before the entry, so a crash in between repeats
//!   a delivery but never loses one.
//! - Entries are kept [`RETENTION`] after their message's creation time, longer than the
//!   [`MAX_AGE`] the client accepts for a server message ([`check_time`]): a replay older than
//!   what the record still holds is refused as stale. So the record stays small: at most
//!   [`MAX_ENTRIES`] entries; pruned entries are dropped when the file is next opened.
//! - One process uses a record at a time, from before [`ReceivedRecord::open`] until its last
//!   append: the entries are read once, at open, and "new or repeat" is decided from them, so
//!   two fetches with the record open at once would both find a message new (found by a trial
//!   run: concurrent `recv_msg` on one keys folder), and a rewrite at open could drop another
//!   process's appends. The file takes no lock itself: its caller holds one for the whole
//!   fetch (`recv_msg` locks the keys folder, [`crate::files::FileLock`]), because the
//!   server's outbox and the mailbox are part of the same exchange: with the lock, a second
//!   fetch starts after the first one's acknowledgements removed its messages from the server.
//!
//! Format (docs/PROTOCOL.md, "The client's record of received messages"): the 8 bytes
//! [`MAGIC`], then entries of [`ENTRY_LEN`] bytes each: kind (1 byte: 1 received, 2 set aside)
//! ‖ sender key id (32) ‖ message id (16) ‖ message creation time (u64 BE, unix seconds) ‖
//! time recorded (u64 BE). A shorter tail than one entry is a torn append (its ack was never
//! sent) and is ignored. For one (sender, id) the last entry wins.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::codec::{CodecError, Reader};
use crate::files::{self, WriteOptions};
use crate::text::TimeSpan;

/// First bytes of the file: names the format and its version.
pub const MAGIC: [u8; 8] = *b"LLRECV1\n";
/// Bytes of one entry.
pub const ENTRY_LEN: usize = 1 + 32 + 16 + 8 + 8;
/// The oldest server message the client accepts, by its signed creation time: 30 days. Longer
/// than the server's ±10 minute window for clients because a message waits in the server's
/// outbox until the client fetches it.
pub const MAX_AGE: u64 = 30 * 24 * 3600;
/// How far in the future a server message's creation time may be (clock skew): 10 minutes, the
/// server's own window for clients.
pub const MAX_AHEAD: u64 = 600;
/// How long an entry is kept after its message's creation time: one day longer than
/// [`MAX_AGE`] (and [`MAX_AHEAD`]), so every message the window still lets in is remembered.
pub const RETENTION: u64 = MAX_AGE + MAX_AHEAD + 24 * 3600;
/// Most entries the record holds (about 6.5 MB); beyond, new messages are set aside rather than
/// received unrecorded.
pub const MAX_ENTRIES: usize = 100_000;
/// Largest file accepted: every entry, one torn tail and the magic.
const MAX_FILE_LEN: u64 = (MAGIC.len() + (MAX_ENTRIES + 1) * ENTRY_LEN) as u64;

/// What an entry says of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Delivered (saved or shown) and acknowledged: a later delivery is a repeat.
    Received = 1,
    /// Could not be opened (or was stale): reported, not acknowledged, left on the server.
    SetAside = 2,
}

/// One entry of the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub sender: [u8; 32],
    pub message_id: [u8; 16],
    /// The message's creation time, from its signed header.
    pub created: u64,
    /// When this client recorded it.
    pub recorded: u64,
}

impl Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.extend_from_slice(&self.sender);
        out.extend_from_slice(&self.message_id);
        out.extend_from_slice(&self.created.to_be_bytes());
        out.extend_from_slice(&self.recorded.to_be_bytes());
    }
}

/// Why the record cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("{path}: not a letterlock record of received messages")]
    NotARecord { path: PathBuf },
    #[error("{path}: malformed entry {index}: {reason}")]
    Malformed {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("{path}: larger than {MAX_FILE_LEN} bytes; not a record this client wrote")]
    TooLarge { path: PathBuf },
    #[error(
        "the record of received messages is full ({MAX_ENTRIES} entries in {})",
        TimeSpan(Duration::from_secs(RETENTION))
    )]
    Full,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Parses a whole record file: its entries in file order, and whether a torn tail was left.
/// Every length is checked by the cursor; nothing here panics on any input (fuzzed).
pub fn parse(bytes: &[u8]) -> Result<(Vec<Entry>, bool), (usize, String)> {
    let mut r = Reader::new(bytes);
    let magic: [u8; 8] = r.array().map_err(|e| (0, e.to_string()))?;
    if magic != MAGIC {
        return Err((0, "bad magic".into()));
    }
    let mut entries = Vec::with_capacity((r.left() / ENTRY_LEN).min(MAX_ENTRIES + 1));
    while r.left() >= ENTRY_LEN {
        let index = entries.len();
        let entry = parse_entry(&mut r).map_err(|e| (index, e))?;
        entries.push(entry);
    }
    Ok((entries, r.left() > 0))
}

fn parse_entry(r: &mut Reader<'_>) -> Result<Entry, String> {
    let short = |e: CodecError| e.to_string();
    let kind = match r.u8().map_err(short)? {
        1 => Kind::Received,
        2 => Kind::SetAside,
        other => return Err(format!("unknown kind {other}")),
    };
    Ok(Entry {
        kind,
        sender: r.array().map_err(short)?,
        message_id: r.array().map_err(short)?,
        created: r.u64().map_err(short)?,
        recorded: r.u64().map_err(short)?,
    })
}

/// Refuses a server message whose signed creation time is more than [`MAX_AGE`] before `now`
/// or more than [`MAX_AHEAD`] after it. Returns the refusal's words.
pub fn check_time(created: u64, now: u64) -> Result<(), String> {
    if created.saturating_add(MAX_AGE) < now {
        return Err(format!(
            "message time {created} is more than {} before our clock ({now}): too old to be \
             told from a replay",
            TimeSpan(Duration::from_secs(MAX_AGE))
        ));
    }
    if created > now.saturating_add(MAX_AHEAD) {
        return Err(format!(
            "message time {created} is more than {} after our clock ({now})",
            TimeSpan(Duration::from_secs(MAX_AHEAD))
        ));
    }
    Ok(())
}

/// The record, open: its live entries in memory, its file for appends.
#[derive(Debug)]
pub struct ReceivedRecord {
    path: PathBuf,
    entries: HashMap<([u8; 32], [u8; 16]), Entry>,
}

impl ReceivedRecord {
    /// Opens the record at `path` (created on the first entry), drops entries older than
    /// [`RETENTION`] and a torn tail, rewriting the file atomically if it dropped anything.
    pub fn open(path: &Path, now: u64) -> Result<Self, RecordError> {
        let io_err = |source| RecordError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = Vec::new();
        match fs::File::open(path) {
            Ok(f) => {
                f.take(MAX_FILE_LEN + 1)
                    .read_to_end(&mut bytes)
                    .map_err(io_err)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(ReceivedRecord {
                    path: path.to_path_buf(),
                    entries: HashMap::new(),
                });
            }
            Err(e) => return Err(io_err(e)),
        }
        if bytes.len() as u64 > MAX_FILE_LEN {
            return Err(RecordError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let (list, torn) = parse(&bytes).map_err(|(index, reason)| {
            if index == 0 && reason == "bad magic" {
                RecordError::NotARecord {
                    path: path.to_path_buf(),
                }
            } else {
                RecordError::Malformed {
                    path: path.to_path_buf(),
                    index,
                    reason,
                }
            }
        })?;
        let on_disk = list.len();
        let mut entries = HashMap::with_capacity(on_disk);
        for e in list {
            if e.created.saturating_add(RETENTION) >= now {
                entries.insert((e.sender, e.message_id), e);
            }
        }
        let record = ReceivedRecord {
            path: path.to_path_buf(),
            entries,
        };
        if torn || record.entries.len() < on_disk {
            record.rewrite()?;
        }
        Ok(record)
    }

    /// Like [`ReceivedRecord::open`], but first converts the list an older client kept at the
    /// same path (one hex message id per line, written only when printing to stdout) into
    /// entries from `sender` (the one server that client talked to), dated `now` since their
    /// creation times were not kept: they are remembered for [`RETENTION`] from now.
    pub fn open_or_migrate(path: &Path, now: u64, sender: [u8; 32]) -> Result<Self, RecordError> {
        let mut head = [0u8; MAGIC.len()];
        let legacy = match fs::File::open(path) {
            Ok(mut f) => {
                let n = f.read(&mut head).map_err(|source| RecordError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                head.get(..n) != Some(&MAGIC[..]) && n > 0
            }
            Err(_) => false,
        };
        if legacy {
            let mut text = String::new();
            fs::File::open(path)
                .and_then(|f| f.take(MAX_FILE_LEN + 1).read_to_string(&mut text))
                .map_err(|_| RecordError::NotARecord {
                    path: path.to_path_buf(),
                })?;
            let mut entries = HashMap::new();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let mut id = [0u8; 16];
                hex::decode_to_slice(line.trim(), &mut id).map_err(|_| {
                    RecordError::NotARecord {
                        path: path.to_path_buf(),
                    }
                })?;
                if entries.len() >= MAX_ENTRIES {
                    return Err(RecordError::Full);
                }
                let entry = Entry {
                    kind: Kind::Received,
                    sender,
                    message_id: id,
                    created: now,
                    recorded: now,
                };
                entries.insert((sender, id), entry);
            }
            let record = ReceivedRecord {
                path: path.to_path_buf(),
                entries,
            };
            record.rewrite()?;
            return Ok(record);
        }
        Self::open(path, now)
    }

    /// Where the record lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `message_id` from `sender`, if any.
    pub fn get(&self, sender: &[u8; 32], message_id: &[u8; 16]) -> Option<&Entry> {
        self.entries.get(&(*sender, *message_id))
    }

    /// Appends `entry` and fsyncs it; returns once it is durable.
    pub fn add(&mut self, entry: Entry) -> Result<(), RecordError> {
        let key = (entry.sender, entry.message_id);
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_ENTRIES {
            return Err(RecordError::Full);
        }
        let io_err = |source| RecordError::Io {
            path: self.path.clone(),
            source,
        };
        if !self.path.exists() {
            // Created whole (magic and first entry) by the atomic writer, folder fsynced.
            let mut bytes = MAGIC.to_vec();
            entry.encode(&mut bytes);
            files::write_atomic(&self.path, &bytes, &WriteOptions::default()).map_err(io_err)?;
        } else {
            let mut bytes = Vec::with_capacity(ENTRY_LEN);
            entry.encode(&mut bytes);
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&self.path)
                .map_err(io_err)?;
            f.write_all(&bytes).map_err(io_err)?;
            f.sync_data().map_err(io_err)?;
        }
        self.entries.insert(key, entry);
        Ok(())
    }

    /// Writes the live entries to a new file and renames it over the old one.
    fn rewrite(&self) -> Result<(), RecordError> {
        let mut bytes = Vec::with_capacity(MAGIC.len() + self.entries.len() * ENTRY_LEN);
        bytes.extend_from_slice(&MAGIC);
        let mut live: Vec<&Entry> = self.entries.values().collect();
        live.sort_by_key(|e| (e.recorded, e.created));
        for e in live {
            e.encode(&mut bytes);
        }
        let opts = WriteOptions {
            replace: true,
            ..WriteOptions::default()
        };
        files::write_atomic(&self.path, &bytes, &opts).map_err(|source| RecordError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, id: u8, created: u64) -> Entry {
        Entry {
            kind,
            sender: [1; 32],
            message_id: [id; 16],
            created,
            recorded: created,
        }
    }

    #[test]
    fn entries_survive_a_reopen_and_the_last_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec");
        let now = 2_000_000_000;
        let mut r = ReceivedRecord::open(&path, now).unwrap();
        r.add(entry(Kind::SetAside, 1, now)).unwrap();
        r.add(entry(Kind::Received, 2, now)).unwrap();
        r.add(entry(Kind::Received, 1, now)).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), MAGIC.len() + 3 * ENTRY_LEN);
        let r = ReceivedRecord::open(&path, now).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.get(&[1; 32], &[1; 16]).unwrap().kind, Kind::Received);
        assert!(r.get(&[2; 32], &[1; 16]).is_none());
    }

    #[test]
    fn old_entries_and_a_torn_tail_are_pruned_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec");
        let now = 2_000_000_000;
        let mut r = ReceivedRecord::open(&path, now).unwrap();
        r.add(entry(Kind::Received, 1, now - RETENTION - 1))
            .unwrap();
        r.add(entry(Kind::Received, 2, now - MAX_AGE)).unwrap();
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        drop(f);
        let r = ReceivedRecord::open(&path, now).unwrap();
        assert_eq!(r.len(), 1);
        assert!(r.get(&[1; 32], &[2; 16]).is_some());
        assert_eq!(
            fs::read(&path).unwrap().len(),
            MAGIC.len() + ENTRY_LEN,
            "the file was rewritten without the old entry and the tail"
        );
    }

    #[test]
    fn hostile_files_are_refused_without_panicking() {
        assert!(parse(b"").is_err());
        assert!(parse(b"LLRECV2\n").is_err());
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&[9; ENTRY_LEN]);
        assert_eq!(parse(&bad).unwrap_err().0, 0);
        let mut torn = MAGIC.to_vec();
        torn.extend_from_slice(&[1; ENTRY_LEN - 1]);
        assert_eq!(parse(&torn).unwrap(), (vec![], true));
    }

    #[test]
    fn the_older_clients_list_of_ids_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec");
        fs::write(&path, format!("{}\n{}\n", "ab".repeat(16), "01".repeat(16))).unwrap();
        let now = 2_000_000_000;
        let r = ReceivedRecord::open_or_migrate(&path, now, [7; 32]).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.get(&[7; 32], &[0xab; 16]).unwrap().kind, Kind::Received);
        let r = ReceivedRecord::open(&path, now).unwrap();
        assert!(r.get(&[7; 32], &[1; 16]).is_some());
        // Anything else that is not a record is refused, not overwritten.
        fs::write(&path, "hello\n").unwrap();
        assert!(ReceivedRecord::open_or_migrate(&path, now, [7; 32]).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"hello\n");
    }

    #[test]
    fn random_bytes_never_panic_the_parser() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2_000usize {
            let mut bytes = MAGIC.to_vec();
            for _ in 0..len % 300 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push((x % 4) as u8);
            }
            let _ = parse(&bytes);
            let _ = parse(&bytes[len % 9..]);
        }
    }

    #[test]
    fn the_window_refuses_2001_and_the_far_future() {
        let now = 1_800_000_000;
        assert!(check_time(now, now).is_ok());
        assert!(check_time(now - MAX_AGE, now).is_ok());
        assert!(check_time(978_307_200, now).is_err(), "2001-01-01");
        assert!(check_time(now + MAX_AHEAD + 1, now).is_err());
    }
}
