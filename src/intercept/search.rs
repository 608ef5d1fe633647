//! Searching captured bytes for a plaintext, in the encodings a careless protocol would send it
//! in (raw, UTF-16, base64 at each alignment, hex).
//!
//! The search is incremental: a [`StreamSearch`] follows one direction of one connection and
//! keeps only the last few bytes of what it saw (one needle's length less one), so a text cut
//! across two reads or two capture records is still found, and memory does not grow with the
//! traffic. The proxy feeds it as it reads; a capture file is searched record by record.

use std::collections::HashMap;
use std::fmt;

use base64::Engine;

use super::capture::Record;
use super::{Direction, InterceptError};

/// Findings kept in a [`Search`]; further ones are only counted.
pub const MAX_FINDINGS: usize = 256;

/// How a plaintext may appear on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Raw,
    Utf16Le,
    Utf16Be,
    /// Standard base64, the text starting at this byte offset modulo 3.
    Base64(u8),
    HexLower,
    HexUpper,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encoding::Raw => f.write_str("raw bytes"),
            Encoding::Utf16Le => f.write_str("UTF-16LE"),
            Encoding::Utf16Be => f.write_str("UTF-16BE"),
            Encoding::Base64(a) => write!(f, "base64 (alignment {a})"),
            Encoding::HexLower => f.write_str("hex (lower)"),
            Encoding::HexUpper => f.write_str("hex (upper)"),
        }
    }
}

/// Where a plaintext was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub encoding: Encoding,
    pub conn: u32,
    pub dir: Direction,
    /// Offset in that direction's byte stream.
    pub offset: usize,
}

/// The result of searching captured bytes for a plaintext: the first hit of each encoding in
/// each direction of each connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Search {
    pub text: String,
    /// Captured bytes searched.
    pub scanned: usize,
    /// The encodings searched (some are skipped for very short texts).
    pub encodings: Vec<Encoding>,
    /// The first [`MAX_FINDINGS`] hits, by connection, direction and encoding.
    pub found: Vec<Finding>,
    /// Hits past the first [`MAX_FINDINGS`]: counted, not kept.
    pub more: usize,
}

impl Search {
    pub fn is_found(&self) -> bool {
        !self.found.is_empty()
    }

    /// Whether it was found in this encoding.
    pub fn found_as(&self, e: Encoding) -> bool {
        self.found.iter().any(|f| f.encoding == e)
    }
}

impl fmt::Display for Search {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.found.is_empty() {
            let names: Vec<String> = self.encodings.iter().map(ToString::to_string).collect();
            return write!(
                f,
                "expect {:?}: plaintext not found in {} captured bytes (searched {} encodings: \
                 {})",
                self.text,
                self.scanned,
                self.encodings.len(),
                names.join(", ")
            );
        }
        write!(
            f,
            "!!! FOUND !!! expect {:?}: the plaintext IS on the wire ({} hits in {} captured bytes)",
            self.text,
            self.found.len() + self.more,
            self.scanned
        )?;
        for hit in &self.found {
            write!(
                f,
                "\n!!!   as {} in conn {} {} at offset {}",
                hit.encoding, hit.conn, hit.dir, hit.offset
            )?;
        }
        if self.more > 0 {
            write!(f, "\n!!!   and {} more", self.more)?;
        }
        Ok(())
    }
}

/// Every form of `text` searched for, with its encoding.
pub fn needles(text: &str) -> Vec<(Encoding, Vec<u8>)> {
    let raw = text.as_bytes();
    let mut out = vec![(Encoding::Raw, raw.to_vec())];
    out.push((
        Encoding::Utf16Le,
        text.encode_utf16().flat_map(u16::to_le_bytes).collect(),
    ));
    out.push((
        Encoding::Utf16Be,
        text.encode_utf16().flat_map(u16::to_be_bytes).collect(),
    ));
    // In base64 the text's characters depend on where it starts modulo 3: encode it after 0, 1
    // or 2 filler bytes and keep only the characters that depend on the text alone.
    for align in 0..3usize {
        let mut padded = vec![0u8; align];
        padded.extend_from_slice(raw);
        let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&padded);
        let skip = (align * 8).div_ceil(6);
        let end = padded.len() * 8 / 6;
        if end > skip + 3 {
            out.push((
                Encoding::Base64(align as u8),
                encoded.as_bytes()[skip..end].to_vec(),
            ));
        }
    }
    out.push((Encoding::HexLower, hex::encode(raw).into_bytes()));
    out.push((Encoding::HexUpper, hex::encode_upper(raw).into_bytes()));
    out
}

/// The forms of one text, ready to search many streams.
#[derive(Debug)]
pub struct Needles {
    text: String,
    /// Non-empty needles, at most 16 (each has a bit in `by_first`).
    list: Vec<(Encoding, Vec<u8>)>,
    /// For each byte value, the needles that start with it (bit i: `list[i]`): one table
    /// look-up per byte scanned, and a comparison only where a needle could start.
    by_first: [u16; 256],
    /// The longest needle's length.
    longest: usize,
}

impl Needles {
    pub fn new(text: &str) -> Needles {
        let list: Vec<_> = needles(text)
            .into_iter()
            .filter(|(_, n)| !n.is_empty())
            .take(16)
            .collect();
        let mut by_first = [0u16; 256];
        for (i, (_, n)) in list.iter().enumerate() {
            if let Some(&b) = n.first() {
                by_first[b as usize] |= 1 << i;
            }
        }
        Needles {
            text: text.to_owned(),
            longest: list.iter().map(|(_, n)| n.len()).max().unwrap_or(0),
            list,
            by_first,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// An empty result for this text.
    pub fn empty_search(&self) -> Search {
        Search {
            text: self.text.clone(),
            scanned: 0,
            encodings: needles(&self.text).iter().map(|(e, _)| *e).collect(),
            found: Vec::new(),
            more: 0,
        }
    }
}

/// The search of one direction of one connection, fed as its bytes arrive.
#[derive(Debug)]
pub struct StreamSearch {
    conn: u32,
    dir: Direction,
    /// The last bytes seen (fewer than the longest needle): a needle may start among them.
    tail: Vec<u8>,
    /// Stream offset of `tail[0]`.
    tail_offset: usize,
    /// Needles already found in this stream (bit i: `Needles::list[i]`): first hits only.
    found: u16,
}

impl StreamSearch {
    pub fn new(conn: u32, dir: Direction) -> StreamSearch {
        StreamSearch {
            conn,
            dir,
            tail: Vec::new(),
            tail_offset: 0,
            found: 0,
        }
    }

    /// Searches the next `bytes` of the stream; returns the needles found for the first time.
    pub fn feed(&mut self, needles: &Needles, bytes: &[u8]) -> Vec<Finding> {
        let mut hits = Vec::new();
        let all: u16 = if needles.list.len() >= 16 {
            u16::MAX
        } else {
            (1u16 << needles.list.len()) - 1
        };
        if self.found != all && !bytes.is_empty() {
            // The tail is short (under one needle), so this copy is one read's size.
            let mut window = std::mem::take(&mut self.tail);
            window.extend_from_slice(bytes);
            for (at, b) in window.iter().enumerate() {
                let mut candidates = needles.by_first[*b as usize] & !self.found;
                while candidates != 0 {
                    let i = candidates.trailing_zeros() as usize;
                    candidates &= candidates - 1;
                    let Some((encoding, needle)) = needles.list.get(i) else {
                        continue;
                    };
                    if window.get(at..at + needle.len()) == Some(needle.as_slice()) {
                        self.found |= 1 << i;
                        hits.push(Finding {
                            encoding: *encoding,
                            conn: self.conn,
                            dir: self.dir,
                            offset: self.tail_offset + at,
                        });
                    }
                }
            }
            self.tail = window;
        } else {
            self.tail.extend_from_slice(bytes);
        }
        let keep = needles.longest.saturating_sub(1).min(self.tail.len());
        let drop = self.tail.len() - keep;
        self.tail.drain(..drop);
        self.tail_offset += drop;
        hits
    }
}

/// Adds `hits` to `search`, keeping at most [`MAX_FINDINGS`], in a stable order (connection,
/// direction, encoding) so that a live search and a search of its capture file agree.
pub fn add_findings(search: &mut Search, hits: Vec<Finding>) {
    let order = |f: &Finding| {
        let e = search.encodings.iter().position(|e| *e == f.encoding);
        (f.conn, f.dir == Direction::ToClient, e)
    };
    for hit in hits {
        if search.found.len() < MAX_FINDINGS {
            search.found.push(hit);
        } else {
            search.more += 1;
        }
    }
    let mut found = std::mem::take(&mut search.found);
    found.sort_by_key(|f| order(f));
    search.found = found;
}

/// Searches records (each direction's stream is its records joined in order) for `text`.
pub fn search<'a>(records: impl IntoIterator<Item = &'a Record>, text: &str) -> Search {
    let mut searcher = RecordSearch::new(text);
    for r in records {
        searcher.feed(r);
    }
    searcher.finish()
}

/// Searches records one at a time: memory holds one [`StreamSearch`] per stream, not the bytes.
pub(super) struct RecordSearch {
    needles: Needles,
    /// One search per direction of each connection seen.
    streams: HashMap<(u32, Direction), StreamSearch>,
    result: Search,
}

impl RecordSearch {
    pub(super) fn new(text: &str) -> RecordSearch {
        let needles = Needles::new(text);
        RecordSearch {
            result: needles.empty_search(),
            needles,
            streams: HashMap::new(),
        }
    }

    pub(super) fn feed(&mut self, r: &Record) {
        let hits = self
            .streams
            .entry((r.conn, r.dir))
            .or_insert_with(|| StreamSearch::new(r.conn, r.dir))
            .feed(&self.needles, &r.bytes);
        self.result.scanned += r.bytes.len();
        add_findings(&mut self.result, hits);
    }

    pub(super) fn finish(self) -> Search {
        self.result
    }
}

/// Searches a capture file for `text`, record by record.
pub(super) fn search_records(
    records: impl Iterator<Item = Result<Record, InterceptError>>,
    text: &str,
) -> Result<Search, InterceptError> {
    let mut searcher = RecordSearch::new(text);
    for r in records {
        searcher.feed(&r?);
    }
    Ok(searcher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(bytes: &[u8]) -> Record {
        Record {
            conn: 1,
            dir: Direction::ToServer,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn base64_needles_match_every_alignment() {
        let text = "attack at dawn";
        for prefix in ["", "x", "xy", "xyz"] {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{text}!"));
            let s = search(&[record(encoded.as_bytes())], text);
            assert!(
                s.found
                    .iter()
                    .any(|f| matches!(f.encoding, Encoding::Base64(_))),
                "prefix {prefix:?}: {s}"
            );
            assert!(!s.found_as(Encoding::Raw));
        }
    }

    #[test]
    fn a_text_cut_across_records_is_found_at_its_stream_offset() {
        let text = "the vault code is 4-8-15-16-23-42";
        let stream = format!("{}{text}{}", "x".repeat(1000), "y".repeat(1000)).into_bytes();
        // Cut at every place inside the text, and one byte at a time.
        for cut in 1000..1000 + text.len() {
            let records = [record(&stream[..cut]), record(&stream[cut..])];
            let s = search(&records, text);
            assert_eq!(s.scanned, stream.len());
            assert_eq!(s.found.len(), 1, "cut at {cut}: {s}");
            assert_eq!(s.found[0].offset, 1000);
        }
        let bytes: Vec<Record> = stream.iter().map(|b| record(&[*b])).collect();
        let s = search(&bytes, text);
        assert_eq!(s.found.len(), 1, "{s}");
        assert_eq!(s.found[0].offset, 1000);
    }

    #[test]
    fn only_the_first_hit_per_stream_and_encoding_is_reported() {
        let text = "secret!";
        let s = search(
            &[record(b"secret! and secret! again"), record(b"secret!")],
            text,
        );
        assert_eq!(s.found.len(), 1, "{s}");
        assert_eq!(s.found[0].offset, 0);
        assert!(!search(&[record(b"secre"), record(b"t")], text).is_found());
    }

    #[test]
    fn findings_past_the_limit_are_counted_not_kept() {
        let records: Vec<Record> = (1..=MAX_FINDINGS as u32 + 44)
            .map(|conn| Record {
                conn,
                dir: Direction::ToClient,
                bytes: b"xx secret! xx".to_vec(),
            })
            .collect();
        let s = search(&records, "secret!");
        assert_eq!((s.found.len(), s.more), (MAX_FINDINGS, 44));
        assert!(
            s.to_string()
                .contains(&format!("({} hits", MAX_FINDINGS + 44))
        );
        assert!(s.to_string().ends_with("and 44 more"), "{s}");
    }
}
