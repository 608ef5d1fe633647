//! What the interceptor can still see of a protocol version 2 (TLS 1.3) connection: the TLS
//! records (content type, size) and the facts a TLS 1.3 handshake leaves in the clear (ALPN,
//! offered and chosen key exchange groups, versions). Everything else, certificates included,
//! is encrypted in TLS 1.3, so the interceptor says so rather than guessing.
//!
//! A direction is TLS when its first bytes are a TLS record header (content type 20–23, major
//! version 3). A letterlock v1 frame can never start that way: its first four bytes are a length
//! that would be over 335 MB, far past any frame limit. Record lengths are checked against
//! [`MAX_RECORD`] before anything is buffered for them; a larger one ends the walk, as the frame
//! walker does, so the proxy never holds more than one record.

use std::fmt;

use super::Direction;

/// Record header: content type, legacy version, length (RFC 8446 §5.1).
pub const RECORD_HEADER: usize = 5;
/// Largest record payload a TLS 1.3 peer may send: 2^14 plus 256 of expansion (RFC 8446 §5.2).
pub const MAX_RECORD: usize = (1 << 14) + 256;
/// AEAD tag length of every TLS 1.3 cipher suite.
pub const TAG_LEN: usize = 16;
/// Content types (RFC 8446 §5.1).
pub const CHANGE_CIPHER_SPEC: u8 = 20;
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

/// Whether `first` (at least three bytes) starts a TLS record; `None` while fewer are there.
pub fn looks_like_tls(first: &[u8]) -> Option<bool> {
    let head = first.get(..3)?;
    Some((CHANGE_CIPHER_SPEC..=APPLICATION_DATA).contains(&head[0]) && head[1] == 3 && head[2] <= 4)
}

/// One whole TLS record as it was on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsRecord(Vec<u8>);

impl TlsRecord {
    pub fn content_type(&self) -> u8 {
        self.0.first().copied().unwrap_or(0)
    }

    /// The record body (for application data: the ciphertext and its tag).
    pub fn payload(&self) -> &[u8] {
        self.0.get(RECORD_HEADER..).unwrap_or(&[])
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// A record of `content_type` around `payload` (the caller keeps it under [`MAX_RECORD`]).
    pub fn rebuild(content_type: u8, version: [u8; 2], payload: &[u8]) -> TlsRecord {
        let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
        let mut b = Vec::with_capacity(RECORD_HEADER + payload.len());
        b.push(content_type);
        b.extend_from_slice(&version);
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload.get(..usize::from(len)).unwrap_or(payload));
        TlsRecord(b)
    }

    /// The legacy version bytes of the header.
    pub fn version(&self) -> [u8; 2] {
        [
            self.0.get(1).copied().unwrap_or(3),
            self.0.get(2).copied().unwrap_or(3),
        ]
    }
}

/// What the TLS walker found next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsWalked {
    Record(TlsRecord),
    /// Bytes that are not TLS records (a length over [`MAX_RECORD`], an unknown type): from
    /// there on, everything comes back as it is.
    NotRecords(Vec<u8>),
}

/// Cuts one direction into TLS records, from bytes pushed as they arrive.
#[derive(Debug, Default)]
pub struct TlsWalker {
    buf: Vec<u8>,
    ended: bool,
}

impl TlsWalker {
    pub fn new() -> Self {
        TlsWalker::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The bytes not handed back: the start of a record not yet whole.
    pub fn into_rest(self) -> Vec<u8> {
        self.buf
    }
}

impl Iterator for TlsWalker {
    type Item = TlsWalked;

    fn next(&mut self) -> Option<TlsWalked> {
        if self.buf.is_empty() {
            return None;
        }
        if !self.ended {
            let header = match self.buf.get(..RECORD_HEADER) {
                Some(h) => h,
                None => {
                    // Not whole yet; but a wrong first byte is already known.
                    if looks_like_tls(&self.buf) == Some(false) {
                        self.ended = true;
                        return Some(TlsWalked::NotRecords(std::mem::take(&mut self.buf)));
                    }
                    return None;
                }
            };
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if looks_like_tls(header) == Some(true) && len <= MAX_RECORD {
                if self.buf.len() < RECORD_HEADER + len {
                    return None;
                }
                let rest = self.buf.split_off(RECORD_HEADER + len);
                let record = std::mem::replace(&mut self.buf, rest);
                return Some(TlsWalked::Record(TlsRecord(record)));
            }
            self.ended = true;
        }
        Some(TlsWalked::NotRecords(std::mem::take(&mut self.buf)))
    }
}

/// One TLS record line.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    pub conn: u32,
    pub dir: Direction,
    pub content_type: u8,
    /// Whole record, header included.
    pub size: usize,
    /// What the cleartext handshake shows, for a ClientHello or ServerHello.
    pub visible: Option<String>,
}

impl TlsInfo {
    pub fn kind(&self) -> &'static str {
        content_name(self.content_type)
    }
}

impl fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[conn {}] {} TLS {:<16} {:>6} B",
            self.conn,
            self.dir,
            self.kind(),
            self.size
        )?;
        if let Some(v) = &self.visible {
            write!(f, "  {v}")?;
        }
        Ok(())
    }
}

pub fn content_name(t: u8) -> &'static str {
    match t {
        CHANGE_CIPHER_SPEC => "change_cipher_spec",
        ALERT => "alert",
        HANDSHAKE => "handshake",
        APPLICATION_DATA => "application_data",
        _ => "unknown",
    }
}

/// The line for one record.
pub fn tls_info(conn: u32, dir: Direction, record: &TlsRecord) -> TlsInfo {
    let visible = match record.content_type() {
        HANDSHAKE => Some(hello_facts(record.payload())),
        ALERT => Some(match record.payload() {
            [level, desc] => format!("plaintext alert: level {level}, description {desc}"),
            _ => "alert".into(),
        }),
        APPLICATION_DATA => Some(format!(
            "encrypted: content, frame types and inner type hidden ({} bytes of ciphertext and tag)",
            record.payload().len()
        )),
        _ => None,
    };
    TlsInfo {
        conn,
        dir,
        content_type: record.content_type(),
        size: record.as_bytes().len(),
        visible,
    }
}

/// A bounded cursor over handshake bytes: every read is checked, nothing panics.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

pub fn group_name(g: u16) -> String {
    match g {
        0x001d => "X25519".into(),
        0x0017 => "secp256r1".into(),
        0x0018 => "secp384r1".into(),
        0x0019 => "secp521r1".into(),
        0x11ec => "X25519MLKEM768".into(),
        0x11eb => "SecP256r1MLKEM768".into(),
        0x0200..=0x0202 => format!("MLKEM(0x{g:04x})"),
        _ => format!("0x{g:04x}"),
    }
}

fn version_name(v: u16) -> String {
    match v {
        0x0304 => "TLS 1.3".into(),
        0x0303 => "TLS 1.2".into(),
        _ => format!("0x{v:04x}"),
    }
}

fn u16s(b: &[u8]) -> impl Iterator<Item = u16> + '_ {
    b.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]))
}

/// The cleartext facts of a ClientHello or ServerHello at the start of `payload`.
fn hello_facts(payload: &[u8]) -> String {
    let mut c = Cursor(payload);
    let (Some(kind), Some(_len)) = (c.u8(), c.u24()) else {
        return "handshake fragment".into();
    };
    let facts = match kind {
        1 => client_hello(&mut c).map(|f| format!("ClientHello: {f}")),
        2 => server_hello(&mut c).map(|f| format!("ServerHello: {f}")),
        _ => None,
    };
    facts.unwrap_or_else(|| format!("handshake message type {kind}"))
}

fn client_hello(c: &mut Cursor<'_>) -> Option<String> {
    c.take(2 + 32)?; // legacy version, random
    c.vec8()?; // session id
    c.vec16()?; // cipher suites
    c.vec8()?; // compression methods
    let mut ext = Cursor(c.vec16()?);
    let mut facts = Vec::new();
    while let (Some(t), Some(body)) = (ext.u16(), ext.vec16()) {
        let mut b = Cursor(body);
        match t {
            16 => {
                let mut list = Cursor(b.vec16()?);
                let mut names = Vec::new();
                while let Some(p) = list.vec8() {
                    names.push(p.escape_ascii().to_string());
                }
                facts.push(format!("ALPN offered [{}]", names.join(", ")));
            }
            10 => {
                let groups: Vec<_> = u16s(b.vec16()?).map(group_name).collect();
                facts.push(format!("groups offered [{}]", groups.join(", ")));
            }
            51 => {
                let mut shares = Cursor(b.vec16()?);
                let mut names = Vec::new();
                while let (Some(g), Some(key)) = (shares.u16(), shares.vec16()) {
                    names.push(format!("{} ({} B)", group_name(g), key.len()));
                }
                facts.push(format!("key shares [{}]", names.join(", ")));
            }
            43 => {
                let versions: Vec<_> = u16s(b.vec8()?).map(version_name).collect();
                facts.push(format!("versions [{}]", versions.join(", ")));
            }
            _ => {}
        }
    }
    Some(facts.join("; "))
}

fn server_hello(c: &mut Cursor<'_>) -> Option<String> {
    c.take(2 + 32)?;
    c.vec8()?;
    let suite = c.u16()?;
    c.u8()?;
    let mut ext = Cursor(c.vec16()?);
    let mut facts = vec![format!("cipher suite 0x{suite:04x}")];
    while let (Some(t), Some(body)) = (ext.u16(), ext.vec16()) {
        let mut b = Cursor(body);
        match t {
            43 => facts.push(format!("version {}", version_name(b.u16()?))),
            51 => {
                let g = b.u16()?;
                let key = b.vec16().map_or(0, <[u8]>::len);
                facts.push(format!("group chosen {} ({key} B share)", group_name(g)));
            }
            _ => {}
        }
    }
    facts.push("certificates, ALPN answer and everything after: encrypted".into());
    Some(facts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_frames_are_not_taken_for_tls_and_short_input_waits() {
        // A v1 Hello frame starts with a small length.
        assert_eq!(looks_like_tls(&[0, 0, 0, 40, 1]), Some(false));
        assert_eq!(looks_like_tls(&[22, 3]), None);
        assert_eq!(looks_like_tls(&[22, 3, 1]), Some(true));
    }

    #[test]
    fn records_are_cut_whole_and_an_oversized_length_ends_the_walk() {
        let mut w = TlsWalker::new();
        let r = TlsRecord::rebuild(APPLICATION_DATA, [3, 3], &[7; 20]);
        let bytes = r.as_bytes().to_vec();
        w.push(&bytes[..10]);
        assert_eq!(w.next(), None);
        w.push(&bytes[10..]);
        assert_eq!(w.next(), Some(TlsWalked::Record(r)));
        assert_eq!(w.next(), None);
        w.push(&[23, 3, 3, 0xff, 0xff, 1]);
        assert!(matches!(w.next(), Some(TlsWalked::NotRecords(b)) if b.len() == 6));
    }

    #[test]
    fn truncated_hellos_are_described_without_panicking() {
        let hello = [1u8, 0, 0, 50, 3, 3, 9, 9];
        for n in 0..hello.len() {
            let _ = hello_facts(&hello[..n]);
        }
        assert_eq!(hello_facts(&hello), "handshake message type 1");
    }
}
