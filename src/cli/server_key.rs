//! Which server key signed the messages the server queued for its clients (`server send_msg`),
//! and what replacing that key leaves behind.
//!
//! A message the server queues is sealed to the client's key and signed with the server's key of
//! that moment; the server cannot open it again, so it cannot sign it anew. Once the server's
//! key is replaced (`server generate_key_pair --force`, `keygen --name server --force`), every
//! client that trusts only the new key sets such a message aside as signed by an unknown key,
//! and it waits in the outbox for good: only sending it again helps. Clients never accept the
//! replaced key on their own (a key replaced after a compromise must not be), so the operator
//! is told, by the replacement and by `server outbox`.
//!
//! The store keeps no signer for the server's own messages (its `sender_key_id` column names
//! the client of a relayed one only): the signer is the sender key id of the sealed header
//! (docs/PROTOCOL.md section 3), read from the body's first bytes.

use std::path::Path;

use anyhow::{Context, Result};

use letterlock::envelope::{HEADER_LEN, Header};
use letterlock::keys::{self, KeyId};
use letterlock::store::{OutboxEntry, Store};

use super::store_admin::postgres_url;

/// How a waiting message stands with the server keys its folder knows ([`Known`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Signature {
    /// Signed by the server's current key, or relayed (signed by the client that sent it, which
    /// the server's key does not touch).
    Current,
    /// The server's own, signed by a server key this folder replaced (`--force` kept it aside):
    /// clients that trust the current key set it aside.
    Replaced(KeyId),
    /// The server's own, signed by a server key this folder neither holds nor replaced: most
    /// likely `--keys` is not the folder of the server that queued it (another server over the
    /// same PostgreSQL store, a typo), so nothing says that clients refuse it.
    Unknown(KeyId),
    /// The server's own, with a sealed header that does not parse: nobody can open it.
    Damaged,
    /// The server's own, but the current key could not be read to compare with.
    Unchecked,
}

/// The server keys a folder knows: the one it signs with now, and those it replaced.
pub(super) struct Known {
    /// The key the server signs with now: the public half of `KEYS/server_private.pem` when it
    /// reads without a passphrase (what the server itself uses), else `KEYS/server_public.pem`;
    /// `None` if neither reads. Never asks for a passphrase: listing the outbox needs none.
    current: Option<KeyId>,
    /// The keys `server generate_key_pair --force` (or `keygen --name server --force`) replaced
    /// and kept in the folder: only a message signed by one of these is known to be refused by
    /// every client, so only such a one is removed without `--force`.
    replaced: Vec<KeyId>,
}

impl Known {
    /// The server keys `keys_dir` knows.
    pub(super) fn read(keys_dir: &Path) -> Self {
        let (private, public) = keys::pair_paths(keys_dir, "server");
        let current = keys::load_any_public(&private)
            .or_else(|_| keys::load_public(&public))
            .ok()
            .map(|k| k.id());
        Known {
            current,
            replaced: super::replaced::kept_ids(keys_dir, "server"),
        }
    }

    /// Whether `id` is this server's key, now or before a replacement.
    pub(super) fn is_servers(&self, id: &KeyId) -> bool {
        self.current.as_ref() == Some(id) || self.replaced.contains(id)
    }

    /// Known keys whose current one is `new` (just written) and replaced ones are `keys_dir`'s.
    fn with_current(keys_dir: &Path, new: &KeyId) -> Self {
        Known {
            current: Some(*new),
            replaced: super::replaced::kept_ids(keys_dir, "server"),
        }
    }
}

/// How the waiting message `m` stands with the server keys `known`. Reads the first
/// [`HEADER_LEN`] bytes of its body for a message the server sealed itself.
pub(super) async fn signature(
    store: &impl Store,
    m: &OutboxEntry,
    known: &Known,
) -> Result<Signature> {
    if m.sender.is_some() {
        return Ok(Signature::Current);
    }
    let body = store
        .open_outbox_body(&m.recipient_key_id, &m.message_id)
        .await?;
    // The body reader may block (a file, PostgreSQL chunks): off the runtime's threads.
    let head = tokio::task::spawn_blocking(move || {
        let mut body = body;
        let mut head = vec![0u8; HEADER_LEN];
        let n = letterlock::envelope::read_full(&mut body, &mut head)?;
        head.truncate(n);
        Ok::<_, std::io::Error>(head)
    })
    .await
    .context("reading a queued message's header stopped")?
    .with_context(|| {
        format!(
            "cannot read the header of outbox message {}",
            hex::encode(m.message_id)
        )
    })?;
    let Ok(header) = Header::parse(&head) else {
        return Ok(Signature::Damaged);
    };
    Ok(match &known.current {
        None => Signature::Unchecked,
        Some(key) if header.sender == *key => Signature::Current,
        Some(_) if known.replaced.contains(&header.sender) => Signature::Replaced(header.sender),
        Some(_) => Signature::Unknown(header.sender),
    })
}

/// After the server's key pair in `keys_dir` was replaced by `new` (`old`: the replaced key, if
/// its public file could be read), says on stderr how many messages queued in the server's
/// mailbox were signed by another key, for whom, and what to do. The mailbox is `store` (the
/// server's `--store`), else the one beside the keys; none there is nothing to say. A mailbox
/// that cannot be read is a warning, not a failure: the key is replaced already.
pub(super) async fn report_replaced(
    keys_dir: &Path,
    store: Option<&Path>,
    new: &KeyId,
    old: Option<&KeyId>,
) {
    let path = match store {
        Some(store) => store.to_path_buf(),
        None => super::server::default_store(keys_dir),
    };
    if postgres_url(&path).is_none() && !path.is_file() {
        return;
    }
    match signed_by_others(keys_dir, &path, new).await {
        Ok((described, others)) => say_replaced(keys_dir, store, &described, &others, old),
        Err(e) => eprintln!(
            "letterlock: could not check the mailbox {} for messages queued with the replaced \
             key ({e:#}): `letterlock server outbox{}` marks those signed by a replaced server \
             key",
            path.display(),
            command_args(keys_dir, store)
        ),
    }
}

/// The mailbox at `path` as shown to the operator, and its waiting messages the server signed
/// with a key `keys_dir` replaced (its current one is `new`), with that key.
async fn signed_by_others(
    keys_dir: &Path,
    path: &Path,
    new: &KeyId,
) -> Result<(String, Vec<(OutboxEntry, KeyId)>)> {
    let store = super::server::open_store(path).await?;
    let known = Known::with_current(keys_dir, new);
    let mut others = Vec::new();
    for (m, _) in super::server::waiting(&store).await? {
        if let Signature::Replaced(signer) = signature(&store, &m, &known).await? {
            others.push((m, signer));
        }
    }
    let described = store.describe(path);
    store.close().await?;
    Ok((described, others))
}

/// Says what [`report_replaced`] found: nothing when no message is concerned.
fn say_replaced(
    keys_dir: &Path,
    store: Option<&Path>,
    described: &str,
    others: &[(OutboxEntry, KeyId)],
    old: Option<&KeyId>,
) {
    if others.is_empty() {
        return;
    }
    let mut names: Vec<String> = others
        .iter()
        .map(|(m, _)| letterlock::text::line(&m.recipient_name).to_string())
        .collect();
    names.sort_unstable();
    names.dedup();
    // The key just replaced, when it signed them all; else (several rotations) no one key.
    let which = match old {
        Some(old) if others.iter().all(|(_, signer)| signer == old) => {
            format!("the replaced server key {old}")
        }
        _ => "a replaced server key".to_owned(),
    };
    let args = command_args(keys_dir, store);
    eprintln!(
        "letterlock: {} message(s) queued for clients in the mailbox {described} (for {}) were \
         signed by {which}: they will not verify at clients that trust only the new key, which \
         set them aside, and this server cannot sign them again (they are sealed to the \
         clients). Send them again with `letterlock server send_msg --to NAME{args}` and remove \
         the old ones with `letterlock server outbox --remove ID{args}` (`letterlock server \
         outbox{args}` marks them)",
        others.len(),
        names.join(", ")
    );
}

/// ` --keys DIR` and ` --store …` as the commands of a hint need them to find this mailbox
/// again: the folder unless it is the working one, and a store only if one was named (a
/// PostgreSQL URL as `URL`, so that no password is printed), each quoted for a shell.
pub(super) fn command_args(keys_dir: &Path, store: Option<&Path>) -> String {
    let quote = |p: &Path| crate::shell::quote(p.as_os_str());
    let mut args = String::new();
    if keys_dir != Path::new(".") {
        args.push_str(&format!(" --keys {}", quote(keys_dir)));
    }
    match store {
        Some(store) if postgres_url(store).is_some() => args.push_str(" --store URL"),
        Some(store) => args.push_str(&format!(" --store {}", quote(store))),
        None => {}
    }
    args
}

/// [`command_args`] with the paths made absolute: for a line read later, from another folder
/// (the server's journal; found by a review: a relative `--keys` there named another folder).
pub(super) fn absolute_command_args(keys_dir: &Path, store: Option<&Path>) -> String {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let store = store.map(|s| match postgres_url(s) {
        Some(_) => s.to_owned(),
        None => absolute(s),
    });
    command_args(&absolute(keys_dir), store.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hint's arguments paste into a shell as they are: a path a shell would split is quoted,
    /// a PostgreSQL URL is never printed, and the working folder is left out.
    #[test]
    fn a_hints_arguments_are_quoted_for_a_shell() {
        assert_eq!(
            command_args(Path::new("my keys"), Some(Path::new("it's.db"))),
            r" --keys 'my keys' --store 'it'\''s.db'"
        );
        assert_eq!(
            command_args(Path::new("."), Some(Path::new("postgres://u:secret@h/db"))),
            " --store URL"
        );
        let absolute = absolute_command_args(Path::new("k"), None);
        assert!(absolute.starts_with(" --keys /"), "{absolute}");
        assert!(absolute.ends_with("/k"), "{absolute}");
    }
}
