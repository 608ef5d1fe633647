//! Hints: what the user can do about a library error, in this command line's terms. The
//! library says what failed; only the command line knows its flags and commands (as rage does).

use std::path::Path;

use letterlock::client::ClientError;
use letterlock::envelope::{OpenError, SealError};
use letterlock::keys::{self, KeyError, KeyId};

/// The hint for an inbox message id that names nothing (`server read`, `server rm`).
pub(super) const INBOX_IDS: &str = "`letterlock server inbox` lists the message ids";
/// The hint for an outbox message id that names nothing (`server outbox --remove`).
pub(super) const OUTBOX_IDS: &str = "`letterlock server outbox` lists the message ids";

/// An error the command line makes itself, with what the user can do about it: shown as a
/// library error with a hint is, the hint on a `hint:` line of its own, so that commands which
/// fail the same way read the same whichever layer found the failure.
#[derive(Debug)]
pub(super) struct Hinted {
    message: String,
    hint: String,
    /// The failure `message` explains, if any: shown after it, as a cause, while `hint` takes
    /// the place of the hint it would have had.
    source: Option<anyhow::Error>,
}

impl std::fmt::Display for Hinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Hinted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| {
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            e
        })
    }
}

/// The error `message`, with `hint` to print after it.
pub(super) fn hinted(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Hinted {
        message: message.into(),
        hint: hint.into(),
        source: None,
    })
}

/// `source` explained by `message`, said before it, with `hint` in place of its own: for a
/// failure whose cause lies in what the command line did before it (the client agent it did
/// not use, say), which the library error cannot know.
pub(super) fn hinted_over(
    message: impl Into<String>,
    hint: impl Into<String>,
    source: anyhow::Error,
) -> anyhow::Error {
    anyhow::Error::new(Hinted {
        message: message.into(),
        hint: hint.into(),
        source: Some(source),
    })
}

/// Prints the hint for the first error in `chain` (an error and its causes) that has one, and
/// logs at debug level (`-v`) the low-level causes library errors keep out of their text.
pub(super) fn print_hint<'a>(chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>) {
    let mut first = None;
    for e in chain {
        log_detail(e);
        if first.is_none() {
            first = hint(e);
        }
    }
    if let Some(hint) = first {
        say_hint(&hint);
    }
}

/// `e` and its causes.
pub(super) fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// The hint for a `send_msg` that failed, sent by the command or by its client agent: the
/// first error in `e`'s chain (it and its causes) that has one, as [`print_hint`] finds it, but
/// a broken connection explained in a sender's terms ([`SEND_CONNECTION_LOST_HINT`]).
pub(super) fn send_hint(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    chain(e).find_map(|e| match e.downcast_ref::<ClientError>() {
        Some(c @ (ClientError::Io(_) | ClientError::Closed)) if c.is_connection_lost() => {
            Some(SEND_CONNECTION_LOST_HINT.into())
        }
        _ => hint(e),
    })
}

/// Prints [`send_hint`] for `e`, and logs its low-level causes as [`print_hint`] does.
pub(super) fn print_send_hint(e: &(dyn std::error::Error + 'static)) {
    chain(e).for_each(log_detail);
    if let Some(hint) = send_hint(e) {
        say_hint(&hint);
    }
}

/// Prints `hint` on stderr, as every hint is printed.
pub(super) fn say_hint(hint: &str) {
    eprintln!("letterlock: hint: {hint}");
}

/// The hint for a message over the asymmetric-mode limit, whoever sealed it.
pub(super) const ASYMMETRIC_TOO_LARGE: &str =
    "use --mode hybrid for large messages (or raise --max-asymmetric)";

/// Logs what a library error knows beyond its text: aws-lc's word for a damaged key
/// (`InvalidEncoding`...) says nothing a user can act on, but tells a developer or a bug
/// report which check refused the key.
fn log_detail(e: &(dyn std::error::Error + 'static)) {
    if let Some(KeyError::Damaged { reason, .. }) = e.downcast_ref::<KeyError>().map(|k| k.cause())
    {
        tracing::debug!(%reason, "the key's encoding was refused by aws-lc");
    }
}

/// What the user can do about a library error, in terms of this command line. The library says
/// what failed; only the command line knows its flags and commands (as rage does).
pub(super) fn hint(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(e) = e.downcast_ref::<Hinted>() {
        return Some(e.hint.clone());
    }
    if let Some(e) = e.downcast_ref::<std::io::Error>()
        && e.kind() == std::io::ErrorKind::StorageFull
    {
        return Some(
            "free space on that disk (`df -h` shows how full each one is), or write elsewhere, \
             then run the command again"
                .into(),
        );
    }
    if let Some(e) = e.downcast_ref::<KeyError>() {
        return key_hint(e.cause(), e);
    }
    if let Some(e) = e.downcast_ref::<SealError>() {
        return seal_hint(e);
    }
    // `server send_msg`, which has no --max-asymmetric. Transparent: the seal error is not in
    // the chain of causes on its own.
    if let Some(letterlock::server::QueueError::Seal(e)) =
        e.downcast_ref::<letterlock::server::QueueError>()
    {
        return match e {
            SealError::TooLargeForAsymmetric { .. } => {
                Some("use --mode hybrid for large messages".into())
            }
            e => seal_hint(e),
        };
    }
    if let Some(e) = e.downcast_ref::<letterlock::store::StoreError>() {
        use letterlock::store::StoreError;
        return match e {
            StoreError::BadIdPrefix { .. } | StoreError::NotFound { .. } => Some(INBOX_IDS.into()),
            StoreError::IsFolder { path } => Some(format!(
                "give the database file, e.g. --store {}",
                path.join(super::server::STORE_FILE).display()
            )),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<ClientError>() {
        return match e {
            ClientError::Connect { .. } => {
                Some("is `letterlock server` running there? Check --server (HOST:PORT)".into())
            }
            ClientError::Timeout { .. } => Some(TIMEOUT_HINT.into()),
            ClientError::NoAck { .. } | ClientError::NotProven { id: Some(_), .. } => {
                Some(NO_ACK_HINT.into())
            }
            ClientError::Io(_) | ClientError::Closed if e.is_connection_lost() => {
                Some(CONNECTION_LOST_HINT.into())
            }
            // Transparent: the TLS error is not in the chain of causes on its own.
            ClientError::Tls(e) => tls_hint(e),
            // Transparent too.
            ClientError::Seal(e) => seal_hint(e),
            ClientError::Refused {
                code: letterlock::wire::ErrorCode::TooLarge,
                ..
            } => Some(
                "the server refuses messages this large: send an asymmetric one with --mode \
                 hybrid, which it takes larger; a larger hybrid one needs its operator to raise \
                 the server's limit"
                    .into(),
            ),
            ClientError::Refused {
                code: letterlock::wire::ErrorCode::ModeNotAccepted,
                ..
            } => Some(
                "this server does not accept that mode: send with the other one (--mode hybrid \
                 or --mode asymmetric)"
                    .into(),
            ),
            ClientError::AckedElsewhere { .. } => Some(
                "every message shown above is kept in this folder's mailbox (`letterlock client \
                 inbox`); run recv_msg again for the rest. If no other machine or copy of these \
                 keys fetches for this client, tell the server's operator"
                    .into(),
            ),
            ClientError::WrongServer { .. } => Some(
                "check server_public.pem: it must be the public key of the server you meant; if \
                 its operator confirms the key changed, `letterlock client trust-server \
                 HOST:PORT --replace` fetches the new one"
                    .into(),
            ),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<letterlock::tls::TlsError>() {
        return tls_hint(e);
    }
    if let Some(e) = e.downcast_ref::<OpenError>() {
        return match e {
            OpenError::UntrustedSender { .. } => Some(
                "check the sender's public key you gave (`--from` of `letterlock open`; the \
                 keys a mailbox trusts: `letterlock server clients`, `letterlock client \
                 contacts`); if it is right, the message was damaged or forged on the way"
                    .into(),
            ),
            OpenError::NotForUs { .. } => Some(
                "it was sealed for another key: if that key is yours (one you replaced, say), \
                 open it with its private key; if the two ids are almost the same, the message \
                 was damaged on the way"
                    .into(),
            ),
            OpenError::TooLarge { .. } => {
                Some("raise --max-asymmetric if you expect a message this large".into())
            }
            OpenError::Header(h) => header_hint(h),
            _ => None,
        };
    }
    None
}

/// The hint for a message that could not be sealed.
fn seal_hint(e: &SealError) -> Option<String> {
    match e {
        SealError::TooLargeForAsymmetric { .. } => Some(ASYMMETRIC_TOO_LARGE.into()),
        SealError::Key(k) => key_hint(k.cause(), k),
        _ => None,
    }
}

/// What a header that starts as a letterlock message but does not parse can mean: a newer
/// format, or bytes damaged on the way (found by a trial run: a flipped version byte read as if
/// only an upgrade would help).
fn header_hint(e: &letterlock::envelope::HeaderError) -> Option<String> {
    use letterlock::envelope::HeaderError;
    let damaged = "or it was damaged on the way: ask for it again";
    match e {
        HeaderError::Version(v) if *v > letterlock::envelope::VERSION => Some(format!(
            "it may come from a newer letterlock (then upgrade to read it), {damaged}"
        )),
        HeaderError::Version(_)
        | HeaderError::Mode(_)
        | HeaderError::Reserved
        | HeaderError::ChunkSize(..) => Some(format!(
            "it starts as a letterlock message but its header is not one this letterlock \
             writes: it may come from a newer one, {damaged}"
        )),
        HeaderError::Truncated(_) => Some(
            "it is cut short (copied or downloaded only in part, or damaged on the way): ask \
             for it again"
                .to_owned(),
        ),
        // Not a letterlock message at all (`Magic`): the error says so.
        _ => None,
    }
}

/// The hint for a server that did not answer in time, wherever it stalled.
const TIMEOUT_HINT: &str = "check that a `letterlock server` runs at that address and is not \
     stopped or overloaded, and that no firewall or proxy on the way holds the traffic; a server \
     only slow to accept connections can be given longer with --timeout SECONDS";

/// The hint for a message whose answer never came after all of it went out (found by a
/// review: "run the command again" there seals a new message id, a second copy if the first
/// was stored).
pub(super) const NO_ACK_HINT: &str = "the server may hold it under that id: sending it again as a new \
     message could deliver it twice. The server's operator can tell (`letterlock server inbox` \
     lists what arrived); a message to another client shows in `letterlock client receipts` \
     once it is read";

/// The hint for a connection that broke in the middle of an exchange (found by a trial run: a
/// server killed during a send or a fetch left only "Broken pipe" or "unexpected end of file").
/// A send has its own, [`SEND_CONNECTION_LOST_HINT`].
const CONNECTION_LOST_HINT: &str = "the connection to the server broke (it stopped or \
     restarted, or the network failed): the server deletes a message it delivers only once it \
     is acknowledged, and messages already shown are kept in this folder's mailbox. Run the \
     command again once the server is back";

/// The hint for a send whose connection broke before all of the message went out, and broke
/// again when it was sent again (a trial run found the hint for every command speaking of
/// received messages after a send). A new connection refused until the deadline ends in
/// "cannot connect", which has the hint of its own.
const SEND_CONNECTION_LOST_HINT: &str = "the connection to the server broke (it stopped or \
     restarted, or the network failed) before all of the message went out, and the server \
     stores a message only once all of it has arrived: nothing of it was stored. Send it again \
     once the server is back (a message given on stdin must be given again)";

/// The hint for a failed TLS handshake.
fn tls_hint(e: &letterlock::tls::TlsError) -> Option<String> {
    if e.is_not_tls() {
        return Some(
            "what answers at --server does not speak TLS: is it a letterlock server? (one older \
             than protocol version 2 needs --plain-v1)"
                .into(),
        );
    }
    if e.is_about_dates() {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        return Some(format!(
            "a TLS handshake key was out of date by one side's clock (this machine reads {now}): \
             the client's and the server's clocks must agree within a day; check both"
        ));
    }
    None
}

/// What to do about a message set aside because `key` signed it, neither `server` (the server
/// key this client trusts) nor a contact's key. A delivery does not say who signed it: the
/// server's messages queued before its key was replaced look like this, and so does what a
/// client sent before its key changed, or a client never met. `kept` is where `client
/// trust-server --replace` kept `key` as the server's earlier key, if it did: then it is the
/// server's. Either way no key is to be trusted on the message's word: a server key replaced
/// after a compromise, pinned as a contact, would let whoever holds it write to this client.
pub(super) fn unknown_key(key: &KeyId, server: &KeyId, kept: Option<&Path>) -> String {
    match kept {
        Some(kept) => format!(
            "{key} is the server key this client trusted before `letterlock client trust-server \
             --replace` (kept as {}), not the server's current key {server}: a server whose key \
             was replaced leaves the messages it queued before the change signed by the old \
             one, and they are set aside for good. Ask the server's operator to send it again \
             (`letterlock server send_msg`). Do not pin the old key to read it: a key replaced \
             after a compromise is not to be trusted again",
            kept.display()
        ),
        None => format!(
            "it is signed by a key that is not the server's current trusted key ({server}, in \
             server_public.pem) nor a contact's. A server whose key was replaced leaves the \
             messages it queued before the change signed so (as a client whose key changed \
             leaves what it sent before, and a client the server no longer trusts what it sent \
             while it was): ask the server's operator, or the sender if you know who, to send it \
             again if they can. It stays on the server, set aside at each recv_msg, until the \
             operator deletes it (`letterlock server outbox --remove ID --force`). Pin a key \
             (`letterlock client trust FILE --name NAME`) only once you have checked its \
             fingerprint with its owner over another channel, never on the message's word"
        ),
    }
}

/// What to do about the damaged private key file `key`: its backup, or a new pair.
fn get_a_key_back(key: &str) -> String {
    format!(
        "restore {key} from a backup; or, if it is lost, make a new pair with `{}` and have \
         whoever trusted the old public key trust the new one",
        new_pair_command(Path::new(key))
    )
}

/// The command that makes a new key pair in place of the private key file `key`:
/// `client`/`server generate_key_pair` for the walk-through's files, `keygen` for others.
fn new_pair_command(key: &Path) -> String {
    let dir = match key.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.display().to_string(),
        _ => ".".to_owned(),
    };
    let file = key.file_name().map(|f| f.to_string_lossy().into_owned());
    let name = file
        .as_deref()
        .and_then(|f| f.strip_suffix("_private.pem"))
        .filter(|n| !n.is_empty());
    match name {
        Some(side @ ("client" | "server")) => {
            format!("letterlock {side} generate_key_pair --keys {dir} --force")
        }
        Some(name) => format!("letterlock keygen --name {name} --keys {dir} --force"),
        None => format!("letterlock keygen --name NAME --keys {dir}"),
    }
}

/// What to do about a key of a size letterlock refuses, in the file `key` if known: a new pair
/// in place of one of the walk-through's private keys (`*_private.pem`); for any other file,
/// which may be someone else's public key, both ways.
fn refused_size(key: Option<&str>) -> String {
    match key {
        Some(key) if key.ends_with("_private.pem") => format!(
            "make a new pair of {} to {} bits in its place with `{}` (3072 bits by default), \
             and have whoever trusted the old public key trust the new one",
            keys::MIN_BITS,
            keys::MAX_BITS,
            new_pair_command(Path::new(key))
        ),
        _ => format!(
            "letterlock accepts RSA keys of {} to {} bits: if it is your key, make a new pair \
             with `letterlock keygen` (3072 bits by default); if it is someone else's, ask them \
             for a new public key",
            keys::MIN_BITS,
            keys::MAX_BITS
        ),
    }
}

/// The hint for a key error; `outer` is the error with the file it came from, if any.
pub(super) fn key_hint(e: &KeyError, outer: &KeyError) -> Option<String> {
    let path = match outer {
        KeyError::InFile { path, .. } => Some(path.display().to_string()),
        _ => None,
    };
    Some(match e {
        KeyError::Exists { .. } => {
            "pass --force to make a new pair in its place (the old pair is kept beside it, as \
             *.replaced-TIME)"
                .into()
        }
        KeyError::Permissions { path, .. } => {
            format!("run `chmod 600 {}` and try again", path.display())
        }
        KeyError::WritableByOthers { path, .. } => format!(
            "run `chmod o-w {}`, then check that the keys are still the ones you trusted \
             (`letterlock fingerprint FILE`, compared with their owners); a file system \
             without Unix modes (a Windows or FAT drive) shows every file writable: keep keys \
             elsewhere",
            path.display()
        ),
        KeyError::OwnedByOther { path, .. } => format!(
            "if the key is right (check its fingerprint with its owner), copy it to a file of \
             your own (`cp {} NEW.pem`) and use that; otherwise remove it",
            path.display()
        ),
        KeyError::TooSmall | KeyError::Size { .. } => refused_size(path.as_deref()),
        KeyError::GenerateSize { .. } => "choose --bits 2048, 3072 or 4096".into(),
        KeyError::Encrypted | KeyError::PassphraseUnavailable { .. } => format!(
            "give the passphrase with --passphrase-file FILE (its first line) or the {} \
             environment variable, or run on a terminal to be asked",
            super::passphrase::ENV
        ),
        KeyError::WrongPassphrase => {
            let key = path.unwrap_or_else(|| "KEY".into());
            format!(
                "check the passphrase (--passphrase-file, {}); `openssl pkey -in {key} -noout` \
                 tells a wrong passphrase from a damaged file",
                super::passphrase::ENV
            )
        }
        KeyError::LegacyEncrypted | KeyError::UnsupportedEncryption { .. } => {
            let key = path.unwrap_or_else(|| "KEY".into());
            format!(
                "convert it to encrypted PKCS#8 with `openssl pkey -in {key} -aes256 -out \
                 {key}.new` and use {key}.new"
            )
        }
        // Its encrypted structure does not parse: no conversion helps a damaged file (found
        // by a trial run: a truncated key was told to be converted).
        KeyError::BadEncryptedKey { .. } => {
            let key = path.unwrap_or_else(|| "KEY".into());
            format!(
                "the file looks damaged or cut short (`openssl pkey -in {key} -noout` fails on \
                 it too): {}",
                get_a_key_back(&key)
            )
        }
        KeyError::WrongPemBlock {
            expected: keys::KeyKind::Public,
            ..
        } => "use the *_public.pem file".into(),
        KeyError::WrongPemBlock { found, .. } if found == "OPENSSH PRIVATE KEY" => {
            let key = path.unwrap_or_else(|| "KEY".into());
            format!(
                "this is an OpenSSH private key; letterlock reads PKCS#8 PEM: convert a copy with \
                 `cp {key} {key}.pem && ssh-keygen -p -m PKCS8 -f {key}.pem` (and chmod 600 it)"
            )
        }
        KeyError::WrongPemBlock {
            expected: keys::KeyKind::Private,
            ..
        } => "use the *_private.pem file".into(),
        KeyError::SeveralBlocks { .. } => "give each key in a file of its own (one BEGIN … END \
             block); a message for several people is sealed once for each"
            .into(),
        KeyError::Damaged {
            kind: keys::KeyKind::Private,
            ..
        } => get_a_key_back(&path.unwrap_or_else(|| "KEY".into())),
        KeyError::Damaged {
            kind: keys::KeyKind::Public,
            ..
        } => "copy the public key file again from its owner (or from a backup)".into(),
        KeyError::NotRegularFile { .. } => {
            "key files are regular files; choose another path".into()
        }
        KeyError::FileTooLarge { .. } => "key files are a few KiB; is this the right file?".into(),
        KeyError::NotThePair { private, public } => format!(
            "if {} is the right key, write its public half again with `openssl pkey -in {} \
             -pubout -out {}` (the server must trust that public key)",
            private.display(),
            private.display(),
            public.display()
        ),
        KeyError::TrustedTwice { .. } => "remove one of the files".into(),
        KeyError::NameTaken { .. } => "rename one of the files".into(),
        KeyError::BadName { .. } => {
            "name client keys NAME.pem with letters, digits, '-', '_' or '.'".into()
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that broke mid-exchange gets a hint that says so and what to do; a local
    /// I/O error does not get it.
    #[test]
    fn a_broken_connection_is_explained() {
        for kind in [
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            let e = ClientError::Io(kind.into());
            let said = hint(&e).unwrap_or_default();
            assert!(
                said.contains("connection to the server broke"),
                "{kind:?}: {said}"
            );
            assert!(said.contains("Run the command again"), "{kind:?}: {said}");
        }
        let local = ClientError::Io(std::io::ErrorKind::PermissionDenied.into());
        assert_eq!(hint(&local), None);
    }

    /// A send whose connection broke before all of it went out is explained as a send: nothing
    /// stored, send it again; not in terms of received messages. Other failures of a send get
    /// the hint any command gets.
    #[test]
    fn a_send_cut_short_is_explained_as_a_send() {
        for e in [
            ClientError::Io(std::io::ErrorKind::BrokenPipe.into()),
            ClientError::Closed,
        ] {
            let said = send_hint(&e).unwrap_or_default();
            assert!(said.contains("nothing of it was stored"), "{e:?}: {said}");
            assert!(!said.contains("mailbox"), "{e:?}: {said}");
            let fetch = hint(&e).unwrap_or_default();
            assert!(fetch.contains("mailbox"), "{e:?}: {fetch}");
        }
        let no_ack = ClientError::NoAck {
            id: letterlock::envelope::MessageId([1; 16]),
            why: Box::new(ClientError::Closed),
        };
        assert_eq!(send_hint(&no_ack).as_deref(), Some(NO_ACK_HINT));
        let local = ClientError::Io(std::io::ErrorKind::PermissionDenied.into());
        assert_eq!(send_hint(&local), None);
        // A hint the command line gave above the failure (why the agent did not send it, say)
        // comes first, as print_hint takes it.
        let explained = hinted_over(
            "not sent through the client agent",
            "the command's own hint",
            anyhow::Error::new(ClientError::Closed),
        );
        assert_eq!(
            send_hint(explained.as_ref()).as_deref(),
            Some("the command's own hint")
        );
    }

    /// A message whose answer never came is not to be sent again as a new one: the hint says
    /// so instead of "run the command again", whatever broke the connection.
    #[test]
    fn a_missing_answer_is_not_explained_as_nothing_lost() {
        let e = ClientError::NoAck {
            id: letterlock::envelope::MessageId([1; 16]),
            why: Box::new(ClientError::Closed),
        };
        let said = hint(&e).unwrap_or_default();
        assert!(said.contains("could deliver it twice"), "{said}");
        assert!(!said.contains("Run the command again"), "{said}");
    }

    /// A full disk, wherever it was met, says what to do about it.
    #[test]
    fn a_full_disk_is_explained() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let said = hint(&full).unwrap_or_default();
        assert!(said.contains("free space on that disk"), "{said}");
    }
}
