//! `letterlock client inbox` and `client read`: the client's mailbox, where `recv_msg` keeps
//! every message it receives (sealed, as delivered) before acknowledging it, so a message the
//! server has deleted can still be listed, read again, or saved to a file.
//!
//! The mailbox is `KEYS/letterlock-client.db` (SQLite, mode 0600) with its blob folder
//! `KEYS/letterlock-client.db.blobs/` (0700), beside the keys it belongs to: the messages in it
//! open only with `client_private.pem`, and verify only with `server_public.pem`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;

use letterlock::client::Mailbox;
use letterlock::client::contacts::ContactsError;
use letterlock::envelope::{self, Mode, OpenOptions};
use letterlock::files::WriteOptions;
use letterlock::keys::{self, Identity};
use letterlock::store::{InboxSummary, Store};
use letterlock::text::ByteCount;

use super::offline::{Output, time_text, too_large_to_hold, write_verified};
use super::{STDOUT_LIMIT, own_key, peer_key};

/// File name of the client's mailbox database, in the key folder.
pub(super) const MAILBOX_FILE: &str = "letterlock-client.db";

/// The client's mailbox database for the key folder `keys`.
pub(super) fn mailbox_path(keys: &Path) -> PathBuf {
    keys.join(MAILBOX_FILE)
}

/// Opens the client's mailbox in `keys`, creating it owner-only if needed; the messages kept
/// from now on are stored as from `sender_name`.
pub(super) async fn open_mailbox(keys: &Path, sender_name: &str) -> Result<Mailbox> {
    let path = mailbox_path(keys);
    let name = sender_name.to_owned();
    tokio::task::spawn_blocking(move || {
        Mailbox::open(&path, &name)
            .with_context(|| format!("the client's mailbox {}", path.display()))
    })
    .await?
}

/// Opens an existing mailbox only: reading commands never create one.
async fn existing_mailbox(keys: &Path) -> Result<Option<Mailbox>> {
    if !keys.is_dir() {
        bail!(
            "--keys {}: no such folder; pass the folder that holds client_private.pem",
            keys.display()
        );
    }
    if !mailbox_path(keys).exists() {
        return Ok(None);
    }
    open_mailbox(keys, "server").await.map(Some)
}

#[derive(Args, Debug)]
pub(super) struct InboxArgs {
    /// Folder with the client's keys and its mailbox (letterlock-client.db).
    #[arg(long, env = "LETTERLOCK_KEYS", default_value = ".", value_parser = super::home_path())]
    pub(super) keys: PathBuf,
    /// Print the list as JSON: an array of {id, sender (a contact's name, or "server"),
    /// sender_source ("pinned", "directory", "server", "reserved": a contact stored under the
    /// name `server` before it was reserved, which `client contacts` says how to fix, or
    /// "unknown": a key no longer known; for these two, sender is the name it was kept
    /// under), server_address (only for a message from the
    /// server: the --server it was fetched from), sender_key, created, received, mode, bytes,
    /// sealed_bytes}, times in Unix seconds; as `client recv_msg --json` says them.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub(super) struct ReadArgs {
    /// The message id, or enough of its first hexadecimal digits to tell it apart.
    pub(super) id: String,
    /// Folder with the client's keys and its mailbox (letterlock-client.db).
    #[arg(long, env = "LETTERLOCK_KEYS", default_value = ".", value_parser = super::home_path())]
    pub(super) keys: PathBuf,
    /// Write the message to FILE (it appears only once verified; an existing file is not
    /// replaced without --force) instead of printing it; `-` is stdout, where binary content
    /// is shown escaped on a terminal instead of refused, and a device or a named pipe
    /// (`/dev/stdout`, a FIFO) gets it as stdout does.
    #[arg(short, long, value_name = "FILE")]
    pub(super) output: Option<PathBuf>,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub(super) force: bool,
}

/// The name of a stored mode byte, for listings.
pub(super) fn mode_name(m: u8) -> &'static str {
    Mode::from_byte(m).map_or("unknown", Mode::name)
}

/// A list of stored messages as `--json` prints it, for `client inbox` and `server inbox`
/// alike: an array of {id, sender, sender_key, created, received, mode, bytes, sealed_bytes},
/// times in Unix seconds, ASCII only ([`ascii_json`]).
pub(super) fn inbox_json(list: &[InboxSummary]) -> Result<String> {
    Ok(ascii_json(&serde_json::to_string_pretty(&inbox_rows(
        list,
    ))?))
}

/// The rows of [`inbox_json`], as JSON values.
fn inbox_rows(list: &[InboxSummary]) -> Vec<serde_json::Value> {
    list.iter()
        .map(|m| {
            serde_json::json!({
                "id": hex::encode(m.message_id),
                "sender": m.sender_name,
                "sender_key": keys::KeyId(m.sender_key_id).to_string(),
                "created": m.created,
                "received": m.received,
                "mode": mode_name(m.mode),
                "bytes": m.plaintext_len,
                "sealed_bytes": m.body_size,
            })
        })
        .collect()
}

/// `client inbox`: the messages kept, oldest received first.
pub(super) async fn client_inbox(a: InboxArgs) -> Result<ExitCode> {
    let mut list = match existing_mailbox(&a.keys).await? {
        Some(mailbox) => {
            let list = mailbox.store().list_inbox().await?;
            mailbox.close().await?;
            list
        }
        None => Vec::new(),
    };
    // A message from another client is shown under its contact's current name and how its
    // key is known (pinned, or from the directory; a key the contact had before a change too):
    // in text "NAME (SOURCE)", in JSON the bare name and "sender_source", as recv_msg --json.
    let mut sources = Vec::with_capacity(list.len());
    if !list.is_empty() {
        let contacts = super::contacts::open_contacts(&a.keys)?;
        let server = peer_key(&a.keys, "server").ok().map(|k| k.id());
        for m in &mut list {
            let key = keys::KeyId(m.sender_key_id);
            // The server's own messages first: a contact pinned to the server's key (stored
            // under the name `server` before that name was reserved, say) does not make them
            // another client's.
            if server == Some(key) {
                sources.push("server");
                continue;
            }
            let known = match contacts.by_key(&key) {
                Ok(Some(c)) => Some((c.name, c.source)),
                // Listed, not used: one unusable contact does not hide the whole mailbox (found
                // by a review); `client contacts` says how to fix it.
                Err(ContactsError::ReservedStored { .. }) => {
                    sources.push("reserved");
                    continue;
                }
                Err(e) => return Err(e.into()),
                Ok(None) => contacts.earlier_key(&key)?.map(|e| (e.name, e.source)),
            };
            sources.push(match known {
                Some((name, source)) => {
                    m.sender_name = name;
                    source.as_str()
                }
                None => "unknown",
            });
        }
    }
    if a.json {
        let rows: Vec<_> = inbox_rows(&list)
            .into_iter()
            .zip(&sources)
            .map(|(mut row, source)| {
                row["sender_source"] = (*source).into();
                // As recv_msg --json: the sender is "server", a name no contact can have; the
                // address it was fetched from (kept as the sender's name) beside it.
                if *source == "server" {
                    row["server_address"] = row["sender"].take();
                    row["sender"] = "server".into();
                }
                row
            })
            .collect();
        println!("{}", ascii_json(&serde_json::to_string_pretty(&rows)?));
    } else if list.is_empty() {
        status!(
            "no messages received yet (the mailbox is {}; `letterlock client recv_msg` fills it)",
            mailbox_path(&a.keys).display()
        );
    } else {
        println!(
            "{:<32}  {:<20}  {:<10} {:>10}  from",
            "id", "received (UTC)", "mode", "bytes"
        );
        for (m, source) in list.iter().zip(&sources) {
            let from = match *source {
                "pinned" | "directory" => format!("{} ({source})", m.sender_name),
                _ => m.sender_name.clone(),
            };
            println!(
                "{:<32}  {:<20}  {:<10} {:>10}  {}",
                hex::encode(m.message_id),
                time_text(m.received),
                mode_name(m.mode),
                m.plaintext_len,
                letterlock::text::line(&from),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The server key that signed a kept message: server_public.pem, or for a message from before
/// a `trust-server --replace`, the replaced key it kept beside it.
fn signing_key(
    keys_dir: &Path,
    current: keys::PublicKey,
    signer: &keys::KeyId,
    id: &str,
) -> Result<keys::PublicKey> {
    if current.id() == *signer {
        return Ok(current);
    }
    let kept = super::trust_server::replaced_key_path(keys_dir, signer);
    if kept.exists() {
        let key = keys::load_public(&kept)?;
        if key.id() == *signer {
            status!(
                "message {id} was signed by the earlier server key kept in {}",
                kept.display()
            );
            return Ok(key);
        }
    }
    bail!(
        "message {id} was signed by the key {signer}, which is not a contact's key (`letterlock \
         client contacts --offline` lists them; a contact untrusted since needs its key pinned \
         again to read it), and server_public.pem is now {} with no earlier key \
         {signer} kept ({}): if the server signed it, put that server's public key there",
        current.id(),
        kept.display()
    )
}

/// `client read ID`: opens and verifies a kept message again, and prints or saves it.
pub(super) async fn client_read(a: ReadArgs) -> Result<ExitCode> {
    let Some(mailbox) = existing_mailbox(&a.keys).await? else {
        bail!(
            "no mailbox at {}: nothing received yet with these keys (`letterlock client \
             recv_msg` creates it; check --keys)",
            mailbox_path(&a.keys).display()
        );
    };
    let result = read_kept(&mailbox, &a).await;
    mailbox.close().await?;
    result
}

async fn read_kept(mailbox: &Mailbox, a: &ReadArgs) -> Result<ExitCode> {
    let mut output = Output::of(a.output.as_deref(), a.force, "client read")?;
    let identity: Arc<dyn Identity> = Arc::new(own_key(&a.keys, "client")?);
    let current = peer_key(&a.keys, "server")?;
    let msg = find(mailbox, &a.id).await?;
    let id = hex::encode(msg.summary.message_id);
    let signer = keys::KeyId(msg.summary.sender_key_id);
    // A message from another client verifies with that contact's key (pinned or accepted
    // from the directory); one from the server, with the server's.
    let mut from = letterlock::text::line(&msg.summary.sender_name).to_string();
    let contact = if signer == current.id() {
        None
    } else {
        super::contacts::contact_by_key(&a.keys, &signer)?
    };
    let server = match contact {
        Some((key, who)) => {
            from = who;
            key
        }
        None => signing_key(&a.keys, current, &signer, &id)?,
    };
    let body = msg.body;
    let saved = match &output {
        Output::File(path) => format!(", saved to {}", path.display()),
        Output::Stream(path, _) => format!(", written to {}", path.display()),
        Output::Stdout | Output::StdoutAsked => String::new(),
    };
    let opened = tokio::task::spawn_blocking({
        let replace = a.force;
        let id = id.clone();
        move || -> Result<_> {
            let opts = OpenOptions::default();
            match &mut output {
                Output::File(path) => Ok(envelope::open_to_file(
                    identity,
                    &server,
                    &opts,
                    body,
                    path,
                    &WriteOptions {
                        replace,
                        ..WriteOptions::default()
                    },
                )
                .with_context(|| format!("message {id} to {}", path.display()))?),
                // Stdout, or a device or a pipe in its place: held until verified.
                to => {
                    let opts = OpenOptions {
                        max_plaintext: STDOUT_LIMIT,
                        ..opts
                    };
                    let (plain, opened) = envelope::open_to_vec(identity, &server, &opts, body)
                        .map_err(|e| too_large_to_hold(e, to, &format!("client read {id}")))?;
                    write_verified(to, &plain)?;
                    Ok(opened)
                }
            }
        }
    })
    .await?
    .map_err(|e| {
        let (key, _) = keys::pair_paths(&a.keys, "client");
        super::replaced::name_kept_key(e, &key, |_| {
            format!(
                "read it from a copy of the keys folder ({}) holding that key as \
                 client_private.pem: `letterlock client read {id} --keys COPY`",
                a.keys.display()
            )
        })
    })?;
    status!(
        "verified: message {id}, {} from {} ({}), {} mode, received {}{saved}",
        ByteCount(opened.plaintext_len),
        from,
        opened.header.sender,
        opened.header.mode,
        time_text(msg.summary.received),
    );
    Ok(ExitCode::SUCCESS)
}

/// The one kept message whose id starts with `prefix`; an ambiguous prefix lists the
/// candidates.
async fn find(mailbox: &Mailbox, prefix: &str) -> Result<letterlock::store::InboxMessage> {
    use letterlock::store::StoreError;
    match mailbox.store().find_inbox(prefix).await {
        Ok(m) => Ok(m),
        Err(StoreError::Ambiguous { .. }) => {
            let wanted = prefix.to_ascii_lowercase();
            let candidates: Vec<InboxSummary> = mailbox
                .store()
                .list_inbox()
                .await?
                .into_iter()
                .filter(|m| hex::encode(m.message_id).starts_with(&wanted))
                .collect();
            let lines: Vec<String> = candidates
                .iter()
                .map(|m| {
                    format!(
                        "  {}  received {}, {}",
                        hex::encode(m.message_id),
                        time_text(m.received),
                        ByteCount(m.plaintext_len)
                    )
                })
                .collect();
            bail!(
                "{} messages have an id starting with {prefix}; give more digits:\n{}",
                candidates.len(),
                lines.join("\n")
            )
        }
        Err(StoreError::BadIdPrefix { .. }) => bail!(
            "{prefix:?} is not a message id: give the id, or its first hexadecimal digits, as \
             `letterlock client inbox` lists them"
        ),
        Err(StoreError::NotFound { .. }) => bail!(
            "no message in the mailbox has an id starting with {prefix}; `letterlock client \
             inbox` lists them"
        ),
        Err(e) => Err(e.into()),
    }
}

/// JSON text with every character outside printable ASCII written as a `\u` escape: still the
/// same JSON, but nothing in it (an escape sequence, a bidi override, a C1 control) can act on
/// a terminal.
pub(super) fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c == '\n' || (' '..='~').contains(&c) {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::ascii_json;

    #[test]
    fn ascii_json_escapes_what_a_terminal_acts_on_and_stays_the_same_json() {
        let value = serde_json::json!({ "text": "a\u{1b}[2K\u{9b}\u{202e}é😀\u{7f}" });
        let text = ascii_json(&serde_json::to_string(&value).unwrap());
        assert!(text.bytes().all(|b| (b' '..=b'~').contains(&b)), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }
}
