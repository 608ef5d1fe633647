//! `letterlock client trust`, `untrust`, `contacts` and `receipts`: the people this client
//! writes to through the server, and the receipts of what it sent them.
//!
//! Contacts live in the client's mailbox database (`KEYS/letterlock-client.db`, tables
//! `client_contacts` and `client_sent`, docs/PROTOCOL.md "The client's mailbox"): a pinned key
//! (given out of band, always wins) or a key from the server's signed directory (trusted on the
//! server's word the first time, a later change held back until accepted, as ssh does with a
//! changed host key).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use letterlock::client::contacts::{
    Applied, Contact, Contacts, ContactsError, ReceiptCheck, Source,
};
use letterlock::client::{Client, ClientError};
use letterlock::envelope::{self, MessageId};
use letterlock::keys::{self, KeyId, PublicKey};

use super::client::{ClientConn, connect};
use super::mailbox::{ascii_json, mailbox_path, mode_name};
use super::offline::time_text;

/// Exit status of `client contacts` when the directory conflicts with a pinned key, or a
/// changed key waits for `--accept`; of `client receipts` when a receipt did not check out.
pub(super) const EXIT_ATTENTION: u8 = 6;

#[derive(Args, Debug)]
pub(super) struct TrustArgs {
    /// The peer's public key (PEM), as they gave it to you. A private key is refused: ask
    /// for their public key (a private key that reached you needs replacing by its owner).
    pub(super) file: PathBuf,
    /// The name to know the peer by (as in `send_msg --to NAME`); the trust list's name rules:
    /// 1 to 64 letters, digits, '.', '_', '-'.
    #[arg(long)]
    pub(super) name: String,
    /// Pin this key under NAME even if NAME already has another key (the old one is forgotten).
    #[arg(long)]
    pub(super) replace: bool,
    /// Folder with the client's keys and its mailbox (letterlock-client.db).
    #[arg(long, env = "LETTERLOCK_KEYS", default_value = ".", value_parser = super::home_path())]
    pub(super) keys: PathBuf,
}

#[derive(Args, Debug)]
pub(super) struct UntrustArgs {
    /// The contact to forget (pinned or from the directory).
    pub(super) name: String,
    /// Forget NAME even while the directory offers it a changed key, not accepted (the next
    /// directory read then records that key as a new contact, with no change warning).
    #[arg(long)]
    pub(super) force: bool,
    /// Folder with the client's keys and its mailbox (letterlock-client.db).
    #[arg(long, env = "LETTERLOCK_KEYS", default_value = ".", value_parser = super::home_path())]
    pub(super) keys: PathBuf,
}

#[derive(Args, Debug)]
pub(super) struct ContactsArgs {
    /// Print the contacts as JSON: an array of {name, key_id, openssh, source ("pinned" or
    /// "directory"), since, state ("usable", "changed", "unlisted": a directory contact the
    /// directory no longer lists, or "reserved": stored under the name `server` before that
    /// name was refused, never used), and for a change offered_key_id and offered_openssh};
    /// times in Unix seconds.
    #[arg(long)]
    pub(super) json: bool,
    /// Accept the changed key the directory offers for NAME (after checking its fingerprint
    /// with NAME out of band): it becomes the key used for NAME. Give the key you checked
    /// with --key; without it, the offer an earlier directory read recorded (shown by `client
    /// contacts` or a `send_msg --to`) is accepted. If the directory now offers another,
    /// nothing is, and the new one is shown.
    #[arg(long, value_name = "NAME")]
    pub(super) accept: Option<String>,
    /// With --accept: the key you checked with NAME, as its key id (SPKI-SHA256:…) or its
    /// OpenSSH fingerprint (SHA256:…, what `letterlock fingerprint` prints): only that key is
    /// accepted. Without it, the key the last directory read recorded before this command.
    #[arg(long, value_name = "KEY", requires = "accept")]
    pub(super) key: Option<String>,
    /// Do not ask the server: list what this client knows.
    #[arg(long)]
    pub(super) offline: bool,
    #[command(flatten)]
    pub(super) conn: ClientConn,
}

#[derive(Args, Debug)]
pub(super) struct ReceiptsArgs {
    /// Print the sent messages as JSON: an array of {id, to, to_key, mode, bytes, sent, stored,
    /// read (bool), delivered (the recipient's acknowledgement time, when read)}.
    #[arg(long)]
    pub(super) json: bool,
    /// Do not ask the server: list the receipts already verified.
    #[arg(long)]
    pub(super) offline: bool,
    #[command(flatten)]
    pub(super) conn: ClientConn,
}

/// Opens the contacts of the key folder `keys` (creating the mailbox database owner-only if
/// needed).
pub(super) fn open_contacts(keys: &Path) -> Result<Contacts> {
    if !keys.is_dir() {
        bail!(
            "--keys {}: no such folder; pass the folder that holds client_private.pem",
            keys.display()
        );
    }
    let path = mailbox_path(keys);
    Contacts::open(&path).with_context(|| format!("the client's contacts in {}", path.display()))
}

/// Runs blocking contacts work off the runtime's threads.
pub(super) async fn on_contacts<T: Send + 'static>(
    contacts: &Contacts,
    f: impl FnOnce(&Contacts) -> std::result::Result<T, ContactsError> + Send + 'static,
) -> Result<T> {
    let c = contacts.clone();
    Ok(tokio::task::spawn_blocking(move || f(&c)).await??)
}

/// `client trust FILE --name NAME`.
pub(super) fn trust(a: &TrustArgs) -> Result<ExitCode> {
    let key = super::peer_public_key_file(&a.file, &a.name)?;
    // The server's own key is no person's: a message "from" it is the server's, and one
    // sealed to it is read by the server.
    let (_, server_file) = keys::pair_paths(&a.keys, "server");
    if server_file.exists()
        && let Ok(server) = keys::load_public(&server_file)
        && server.id() == key.id()
    {
        bail!(
            "that is the server's key ({}, as in {}), not a person's: it cannot be a contact \
             (`letterlock client send_msg` without --to writes to the server)",
            key.id(),
            server_file.display()
        );
    }
    let contacts = open_contacts(&a.keys)?;
    let before = contacts.pin(&a.name, &key, a.replace, envelope::unix_now())?;
    if let Some(before) = before {
        eprintln!("letterlock: {} was {before}; replaced.", a.name);
    }
    println!("pinned {}: {}", a.name, key.id());
    println!(
        "  {} (OpenSSH fingerprint: compare it with {} out of band, e.g. `letterlock \
         fingerprint` on their side)",
        key.ssh_fingerprint(),
        a.name
    );
    println!(
        "messages from this key now show as from {} (pinned), and `send_msg --to {}` seals to it; \
         the server's directory can never override it",
        a.name, a.name
    );
    Ok(ExitCode::SUCCESS)
}

/// `client untrust NAME`.
pub(super) fn untrust(a: &UntrustArgs) -> Result<ExitCode> {
    let contacts = open_contacts(&a.keys)?;
    let removed = contacts.remove(&a.name, a.force)?;
    println!(
        "removed {} ({}, {})",
        removed.name,
        removed.key.id(),
        removed.source.as_str()
    );
    if removed.source == Source::Directory {
        status!(
            "the server's directory still lists {}: the next `client contacts` adds it again as \
             new",
            removed.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a directory fetch found that the user must see.
#[derive(Default)]
pub(super) struct DirectoryOutcome {
    /// The directory names whose entry conflicted with a pin (and was ignored).
    pub(super) conflicts: Vec<String>,
    pub(super) changes: usize,
    /// Every name the directory listed (but ours), when it was read.
    pub(super) listed: Option<Vec<String>>,
}

impl DirectoryOutcome {
    /// A contact taken from the directory that the directory no longer lists: the server no
    /// longer takes messages for it (its operator removed or renamed it). Unknown offline.
    fn unlisted(&self, c: &Contact) -> bool {
        c.source == Source::Directory
            && self
                .listed
                .as_ref()
                .is_some_and(|names| !names.contains(&c.name))
    }
}

/// Whose news from the directory `refresh_directory` prints in full. A command about one
/// contact shows that contact's change or conflict as a full warning and the others' in one
/// line each, so that the user's eye lands on what stopped this command.
#[derive(Clone, Copy)]
pub(super) enum Focus<'a> {
    /// `client contacts`: every change and conflict, in full.
    Everyone,
    /// `send_msg --to NAME`: NAME in full, the others in one line.
    On(&'a str),
    /// `client contacts --accept NAME`: the accept says what happened to NAME; the others
    /// in full.
    AllBut(&'a str),
}

impl Focus<'_> {
    /// NAME is not what this command is about: its news takes one line.
    fn is_aside(self, name: &str) -> bool {
        matches!(self, Focus::On(n) if n != name)
    }

    /// This command accepts NAME's change and says so itself.
    fn is_accepting(self, name: &str) -> bool {
        matches!(self, Focus::AllBut(n) if n == name)
    }
}

/// Asks the server's directory over `client`, applies it to `contacts`, and prints each new
/// name, change (ssh-style) and conflict with a pin on stderr, as `focus` says.
pub(super) async fn refresh_directory(
    client: &mut Client,
    contacts: &Contacts,
    focus: Focus<'_>,
) -> Result<DirectoryOutcome> {
    let mut entries = match client.directory().await {
        Ok(entries) => entries,
        Err(e @ ClientError::BadDirectory(_)) => {
            bail!("REFUSED: {e}. Someone may be tampering with the server or the connection")
        }
        Err(e) => return Err(anyhow::Error::new(e).context("the server's directory")),
    };
    // The directory lists us too: our own key is neither a contact nor a key to trust.
    let own = client.own_key_id();
    entries.retain(|e| e.key.id() != own);
    // The offered keys' OpenSSH fingerprints, the form `letterlock fingerprint` leads with,
    // for the warnings: the user compares what the contact reads out to them.
    let openssh: Vec<(String, String)> = entries
        .iter()
        .map(|e| (e.name.clone(), e.key.ssh_fingerprint().to_string()))
        .collect();
    let applied = on_contacts(contacts, move |c| c.apply_directory(&entries)).await?;
    let mut outcome = DirectoryOutcome {
        listed: Some(openssh.iter().map(|(name, _)| name.clone()).collect()),
        ..DirectoryOutcome::default()
    };
    for a in &applied {
        match a {
            Applied::Changed { name, before, now } => {
                outcome.changes += 1;
                if focus.is_accepting(name) {
                    continue;
                }
                if focus.is_aside(name) {
                    eprintln!(
                        "letterlock: WARNING: the server's directory offers another key for \
                         {name}, not used until you accept it: `letterlock client contacts` \
                         shows it"
                    );
                } else {
                    let ssh = openssh
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or("", |(_, f)| f.as_str());
                    print_change(name, before, now, ssh);
                }
            }
            Applied::ConflictsWithPin { name, detail } => {
                outcome.conflicts.push(name.clone());
                if focus.is_aside(name) {
                    eprintln!(
                        "letterlock: REFUSED: the server's directory disagrees with the key you \
                         pinned for {name} (ignored, your pin stays): `letterlock client \
                         contacts` shows it"
                    );
                } else {
                    eprintln!(
                        "letterlock: REFUSED: {detail}. The server's directory disagrees with the \
                         key you pinned for {name}: the entry is ignored, your pinned key stays \
                         in use. Someone may be doing something nasty (a server substituting a \
                         key); check {name}'s fingerprint out of band."
                    );
                }
            }
            Applied::New { .. } => {
                if let Some(note) = a.note() {
                    status!("letterlock: {note}");
                }
            }
            Applied::Reserved { .. } => {
                if let Some(note) = a.note() {
                    eprintln!(
                        "letterlock: {note}: a client trusted under it could pass its messages \
                         off as the server's. Tell the server's operator."
                    );
                }
            }
            Applied::Pinned { .. } | Applied::Seen { .. } => {}
        }
    }
    Ok(outcome)
}

/// The change warning, as ssh shows a changed host key; `openssh` is the offered key's
/// OpenSSH fingerprint.
fn print_change(name: &str, before: &keys::KeyId, now: &keys::KeyId, openssh: &str) {
    eprintln!(
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
         @    WARNING: THE KEY OF {name} IN THE DIRECTORY CHANGED!\n\
         @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
         IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
         The server now offers this key for {name}:\n  \
         {openssh} (OpenSSH fingerprint, as `letterlock fingerprint` prints it)\n  \
         {now} (letterlock key id)\n\
         The key you accepted before is {before}.\n\
         {name} may have a new key, or the server (or whoever controls it) may be substituting\n\
         one to read what you send {name}. Nothing is sent to or accepted from the new key until\n\
         you accept it: ask {name} to read you the fingerprint of their key (`letterlock\n\
         fingerprint` on their public key) out of band, then\n  \
         letterlock client contacts --accept {name} --key {openssh}"
    );
}

fn state(c: &Contact, outcome: &DirectoryOutcome) -> &'static str {
    if keys::reserved_name(&c.name) {
        "reserved"
    } else if outcome.unlisted(c) {
        "unlisted"
    } else if c.offered.is_some() {
        "changed"
    } else {
        "usable"
    }
}

/// The changed key the contacts hold as offered for `name`, if any.
async fn offered_key(contacts: &Contacts, name: &str) -> Result<Option<KeyId>> {
    let name = name.to_owned();
    let contact = on_contacts(contacts, move |c| c.get(&name)).await?;
    Ok(contact.and_then(|c| c.offered).map(|o| o.key.id()))
}

/// `client contacts`.
pub(super) async fn contacts(a: ContactsArgs) -> Result<ExitCode> {
    let contacts = open_contacts(&a.conn.keys)?;
    // The key to accept is the one an earlier `contacts` showed the user, recorded then: not
    // whatever this command's directory read brings.
    let shown = match &a.accept {
        Some(name) => offered_key(&contacts, name).await?,
        None => None,
    };
    let mut outcome = DirectoryOutcome::default();
    if !a.offline {
        let mut client = connect(&a.conn).await?;
        outcome = refresh_directory(
            &mut client,
            &contacts,
            a.accept.as_deref().map_or(Focus::Everyone, Focus::AllBut),
        )
        .await?;
        let _ = client.close().await;
    }
    if let Some(name) = &a.accept {
        let before = on_contacts(&contacts, {
            let name = name.clone();
            move |c| c.get(&name)
        })
        .await?;
        let offered = before.as_ref().and_then(|b| b.offered.as_ref());
        let shown = match (&a.key, shown, offered) {
            (_, _, None) => {
                return Err(match before {
                    None => ContactsError::NoSuchName(name.clone()),
                    Some(_) => ContactsError::NothingToAccept(name.clone()),
                }
                .into());
            }
            // The key the user names is the one accepted, or nothing.
            (Some(key), _, Some(offered)) => {
                let key = key.trim();
                if key != offered.key.id().to_string()
                    && key != offered.key.ssh_fingerprint().to_string()
                {
                    bail!(
                        "the server's directory offers {name} the key {} ({}), not {key}; \
                         nothing was accepted",
                        offered.key.id(),
                        offered.key.ssh_fingerprint()
                    );
                }
                offered.key.id()
            }
            (None, Some(shown), Some(_)) => shown,
            (None, None, Some(offered)) => bail!(
                "the server's directory offers {name} a changed key that you have not been shown \
                 before: {} ({}); nothing was accepted. Check it with {name} out of band, then \
                 run `letterlock client contacts --accept {name} --key {}`",
                offered.key.id(),
                offered.key.ssh_fingerprint(),
                offered.key.id()
            ),
        };
        on_contacts(&contacts, {
            let name = name.clone();
            move |c| c.accept(&name, &shown)
        })
        .await?;
        outcome.changes = outcome.changes.saturating_sub(1);
        status!(
            "accepted the new key of {name}: {shown}{}",
            before
                .map(|b| format!(" (was {})", b.key.id()))
                .unwrap_or_default()
        );
    }
    let list = on_contacts(&contacts, |c| c.list()).await?;
    let pending = list
        .iter()
        .filter(|c| c.offered.is_some() || keys::reserved_name(&c.name))
        .count();
    if a.json {
        let rows: Vec<_> = list
            .iter()
            .map(|c| {
                let mut row = serde_json::json!({
                    "name": c.name,
                    "key_id": c.key.id().to_string(),
                    "openssh": c.key.ssh_fingerprint().to_string(),
                    "source": c.source.as_str(),
                    "since": c.since,
                    "state": state(c, &outcome),
                });
                if let Some(o) = &c.offered {
                    row["offered_key_id"] = o.key.id().to_string().into();
                    row["offered_openssh"] = o.key.ssh_fingerprint().to_string().into();
                }
                row
            })
            .collect();
        println!("{}", ascii_json(&serde_json::to_string_pretty(&rows)?));
    } else if list.is_empty() {
        status!(
            "no contacts yet: pin a key with `letterlock client trust FILE --name NAME`{}",
            if a.offline {
                ", or run without --offline to read the server's directory"
            } else {
                "; the server's directory is empty"
            }
        );
    } else {
        println!(
            "{:<16} {:<10} {:<20}  {:<8} key id",
            "name", "source", "since (UTC)", "state"
        );
        for c in &list {
            println!(
                "{:<16} {:<10} {:<20}  {:<8} {}",
                letterlock::text::line(&c.name),
                c.source.as_str(),
                time_text(c.since),
                state(c, &outcome),
                c.key.id()
            );
            if keys::reserved_name(&c.name) {
                let name = letterlock::text::line(&c.name);
                println!(
                    "{:<16} NOT used: the name is reserved for the server's own messages; \
                     `letterlock client untrust {name}`, then pin the key under another name",
                    ""
                );
            }
            if let Some(o) = &c.offered {
                let ssh = o.key.ssh_fingerprint();
                println!(
                    "{:<16} offered instead: {} ({ssh}), NOT used until `letterlock client \
                     contacts --accept {} --key {ssh}`",
                    "",
                    o.key.id(),
                    letterlock::text::line(&c.name),
                );
            }
        }
    }
    Ok(if !outcome.conflicts.is_empty() || pending > 0 {
        ExitCode::from(EXIT_ATTENTION)
    } else {
        ExitCode::SUCCESS
    })
}

/// How a name resolves for sending.
pub(super) enum Recipient {
    Usable(Contact),
    /// The directory offers a changed key: not used until accepted.
    Changed(Contact),
}

/// Finds the key to send to NAME: a pinned key as is; otherwise the server's directory,
/// read over `client` first (so a change is seen before anything is sent).
pub(super) async fn resolve(
    client: &mut Client,
    contacts: &Contacts,
    name: &str,
) -> Result<Recipient> {
    let get = |c: &Contacts, name: String| {
        let c = c.clone();
        async move { on_contacts(&c, move |c| c.get(&name)).await }
    };
    if let Some(c) = get(contacts, name.to_owned()).await?
        && c.source == Source::Pinned
    {
        return Ok(Recipient::Usable(c));
    }
    let outcome = refresh_directory(client, contacts, Focus::On(name)).await?;
    match get(contacts, name.to_owned()).await? {
        Some(c) if c.source == Source::Pinned => Ok(Recipient::Usable(c)),
        Some(c) if outcome.unlisted(&c) => bail!(
            "NOT sent: the server's directory no longer lists {name}: the server does not take \
             messages for them now (its operator removed or renamed them). Ask {name} or the \
             operator; `letterlock client untrust {name}` forgets the contact"
        ),
        Some(c) if c.offered.is_some() => Ok(Recipient::Changed(c)),
        Some(c) => Ok(Recipient::Usable(c)),
        None if outcome.conflicts.iter().any(|n| n == name) => bail!(
            "no usable key for {name}: the server's directory conflicts with a pinned key (see \
             above)"
        ),
        None => bail!(
            "no contact named {name}: neither pinned (`letterlock client trust FILE --name \
             {name}`) nor in the server's directory (`letterlock client contacts` lists it)"
        ),
    }
}

/// One sent message's line in `client receipts`.
fn receipt_status(m: &letterlock::client::contacts::SentMessage) -> String {
    match (m.delivered, m.stored) {
        (Some(t), _) => format!("read by {} at {}", m.recipient_name, time_text(t)),
        (None, Some(_)) => "stored on the server, not read yet".to_owned(),
        (None, None) => "not confirmed stored (the send did not finish)".to_owned(),
    }
}

/// Asks the server for the receipts of `ids` and checks them against the kept ack tags;
/// prints each forged one loudly. Returns how many did not check out.
pub(super) async fn check_receipts(
    client: &mut Client,
    contacts: &Contacts,
    ids: Vec<MessageId>,
) -> Result<(Vec<ReceiptCheck>, usize)> {
    let receipts = client.receipts(&ids).await?;
    let now = envelope::unix_now();
    let checks = on_contacts(contacts, move |c| c.check_receipts(&receipts, now)).await?;
    let mut bad = 0;
    for check in &checks {
        match check {
            ReceiptCheck::Forged { id, why } => {
                bad += 1;
                eprintln!(
                    "letterlock: WARNING: the server returned a receipt for {id} that does not \
                     check out ({why}); not counted as read. Only the recipient can make a true \
                     receipt: the server (or someone in it) made this one."
                );
            }
            ReceiptCheck::Unknown { id } => {
                bad += 1;
                eprintln!(
                    "letterlock: WARNING: the server returned a receipt for {id}, which this \
                     client has no record of sending; ignored"
                );
            }
            ReceiptCheck::Read { .. } => {}
        }
    }
    Ok((checks, bad))
}

/// `client receipts`.
pub(super) async fn receipts(a: ReceiptsArgs) -> Result<ExitCode> {
    let contacts = open_contacts(&a.conn.keys)?;
    let sent = on_contacts(&contacts, |c| c.sent()).await?;
    let open: Vec<MessageId> = sent
        .iter()
        .filter(|m| m.delivered.is_none())
        .map(|m| m.id)
        .collect();
    let mut bad = 0;
    if !a.offline && !open.is_empty() {
        let mut client = connect(&a.conn).await?;
        bad = check_receipts(&mut client, &contacts, open).await?.1;
        let _ = client.close().await;
    }
    let sent = on_contacts(&contacts, |c| c.sent()).await?;
    if a.json {
        let rows: Vec<_> = sent
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id.to_string(),
                    "to": m.recipient_name,
                    "to_key": m.recipient.to_string(),
                    "mode": mode_name(m.mode),
                    "bytes": m.bytes,
                    "sent": m.sent,
                    "stored": m.stored,
                    "read": m.delivered.is_some(),
                    "delivered": m.delivered,
                })
            })
            .collect();
        println!("{}", ascii_json(&serde_json::to_string_pretty(&rows)?));
    } else if sent.is_empty() {
        status!("no messages sent to other clients yet (`letterlock client send_msg --to NAME`)");
    } else {
        println!("{:<32}  {:<20}  {:<16} status", "id", "sent (UTC)", "to");
        for m in &sent {
            println!(
                "{:<32}  {:<20}  {:<16} {}",
                m.id,
                time_text(m.sent),
                letterlock::text::line(&m.recipient_name),
                receipt_status(m)
            );
        }
    }
    Ok(if bad > 0 {
        ExitCode::from(EXIT_ATTENTION)
    } else {
        ExitCode::SUCCESS
    })
}

/// The public key of a pinned or accepted contact whose key id is `key`, or a key a contact
/// had before a change, for reading a kept message again (only that: fetching and sending
/// never use earlier keys); with its name and source.
pub(super) fn contact_by_key(
    keys: &Path,
    key: &keys::KeyId,
) -> Result<Option<(PublicKey, String)>> {
    if !mailbox_path(keys).exists() {
        return Ok(None);
    }
    let contacts = open_contacts(keys)?;
    if let Some(c) = contacts.by_key(key)? {
        return Ok(Some((c.key, format!("{} ({})", c.name, c.source.as_str()))));
    }
    // A key the contact had before a change: only here, to read what the mailbox holds.
    Ok(contacts.earlier_key(key)?.map(|e| {
        let who = format!(
            "{} ({}, an earlier key, replaced {})",
            e.name,
            e.source.as_str(),
            time_text(e.replaced)
        );
        (e.key, who)
    }))
}
