//! `letterlock client trust-server HOST:PORT`: the server's key on first contact, as ssh's
//! known_hosts keeps a host key.
//!
//! The TLS handshake proves that the server at HOST:PORT holds the key it presents
//! ([`letterlock::tls::probe`]); whether it is the *right* server only a person can tell, by
//! comparing the fingerprint with the one its operator reads out (`letterlock fingerprint
//! server_public.pem`). So the key is written to KEYS/server_public.pem only after a yes on a
//! terminal, a matching `--fingerprint`, or an explicit `--yes`. A different key already kept
//! there is never replaced without `--replace`, and then with ssh's warning.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use letterlock::keys::{self, PublicKey};
use letterlock::tls::probe::{self, ProbeError, ProbedServer};
use letterlock::tls::{TlsError, TlsOptions};

#[derive(Args, Debug)]
pub(crate) struct TrustServerArgs {
    /// The server, HOST:PORT.
    #[arg(value_name = "HOST:PORT", env = "LETTERLOCK_SERVER", value_parser = super::server_address)]
    server: String,
    /// The client's key folder: server_public.pem is written there.
    #[arg(long, env = "LETTERLOCK_KEYS", default_value = ".", value_parser = super::home_path())]
    keys: PathBuf,
    /// Write the key without asking if its fingerprint is this one, as the server's operator
    /// reads it out (`letterlock fingerprint server_public.pem`); refuse if it is not.
    #[arg(long, value_name = "SHA256:…")]
    fingerprint: Option<String>,
    /// Write the key without asking and without a fingerprint to compare (trust on first use,
    /// as ssh's accept-new): only where the network path to the server is trusted.
    #[arg(long, conflicts_with = "fingerprint")]
    yes: bool,
    /// Replace a different server_public.pem already kept (the server's key changed, or this is
    /// another server): only once you know why.
    #[arg(long)]
    replace: bool,
    /// How long to wait for the connection and the handshake (seconds, or with a unit: 500ms,
    /// 2m).
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = super::client::wait_duration)]
    timeout: Duration,
}

/// The fingerprints shown for a key, each with its label: the OpenSSH one (what `ssh-keygen -l`
/// prints, what an operator most likely reads out) and letterlock's key id.
fn fingerprints(key: &PublicKey) -> Vec<(&'static str, String)> {
    vec![
        ("OpenSSH fingerprint", key.ssh_fingerprint().to_string()),
        ("letterlock key id", key.id().to_string()),
    ]
}

/// Whether `given` (from `--fingerprint`) names `key`: any of [`fingerprints`], exactly as
/// printed or without its `ALGORITHM:` prefix (base64 is case-sensitive, so no case folding),
/// or the key id in hex. Fingerprints are public: no constant-time comparison is needed.
fn fingerprint_matches(key: &PublicKey, given: &str) -> bool {
    let given = given.trim();
    if given.is_empty() {
        return false;
    }
    if let Ok(named) = given.parse::<keys::Fingerprint>() {
        return named.matches(key);
    }
    let hex_id = hex::encode(key.id().0);
    fingerprints(key).iter().any(|(_, shown)| {
        shown == given || shown.split_once(':').is_some_and(|(_, bare)| bare == given)
    }) || given.eq_ignore_ascii_case(&hex_id)
}

/// Runs `client trust-server`.
pub(super) fn run(a: TrustServerArgs) -> Result<ExitCode> {
    let (_, path) = keys::pair_paths(&a.keys, "server");
    if !a.keys.is_dir() {
        bail!(
            "the key folder {} does not exist; create the client's keys first (`letterlock \
             client generate_key_pair --keys {}`), or pass --keys DIR",
            a.keys.display(),
            a.keys.display()
        );
    }
    let kept = if path.exists() {
        Some(keys::load_public(&path).with_context(|| {
            format!(
                "{} exists but cannot be read; move it away to fetch the server's key again",
                path.display()
            )
        })?)
    } else {
        None
    };
    let probed = super::runtime()?.block_on(fetch(&a.server, a.timeout))?;
    let key = &probed.key;
    show(&a.server, &probed);

    // A given fingerprint is checked first, whatever is kept: a script that asks "is this the
    // key the operator read out?" must never hear yes for another key.
    if let Some(given) = &a.fingerprint {
        if !fingerprint_matches(key, given) {
            bail!(
                "the server at {} presented {} (key id {}), not the expected {given}: nothing \
                 was written. Check the fingerprint with the server's operator (`letterlock \
                 fingerprint server_public.pem` on the server)",
                a.server,
                key.ssh_fingerprint(),
                key.id()
            );
        }
        status!("the fingerprint matches --fingerprint");
    }
    match &kept {
        Some(k) if k.id() == key.id() => {
            status!(
                "{} already holds this key: nothing to change",
                path.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Some(k) if !a.replace => bail!(
            "{} holds ANOTHER server key, {}: the server at {} presented {}. Either the \
             server's key changed (its operator can tell you), or this is not the server you \
             trusted (someone may be in the way). Nothing was written; once you know the new \
             key is right, run again with --replace",
            path.display(),
            k.id(),
            a.server,
            key.id()
        ),
        Some(k) => warn_changed(&path, k, key),
        None => {}
    }
    if a.fingerprint.is_none() {
        if a.yes {
            status!("accepted without comparing a fingerprint (--yes)");
        } else if !confirm()? {
            bail!("not confirmed: nothing was written");
        }
    }
    // The replaced key is kept beside it: messages in the client's mailbox that it signed stay
    // readable (`client read` looks for it there).
    if let Some(old) = kept.as_ref().filter(|k| k.id() != key.id()) {
        let keep = replaced_key_path(&a.keys, &old.id());
        keys::write_atomic(&keep, old.to_pem().as_bytes(), 0o644, true)?;
        status!("kept the replaced key as {}", keep.display());
    }
    keys::write_atomic(&path, key.to_pem().as_bytes(), 0o644, a.replace)?;
    status!(
        "wrote {}: this client now accepts only this server key",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Where `trust-server --replace` keeps a server key it replaced:
/// `KEYS/server_public.<first 8 bytes of its key id in hex>.pem`.
pub(super) fn replaced_key_path(keys: &Path, id: &keys::KeyId) -> PathBuf {
    keys.join(format!("server_public.{}.pem", id.short()))
}

/// The server key `id` that `trust-server --replace` replaced and kept in `keys`, if it did:
/// the file [`replaced_key_path`] names, holding exactly that key. Only to name it: recv_msg
/// never opens a delivery with it (`client read` verifies messages kept before the change).
pub(super) fn kept_server_key(keys: &Path, id: &keys::KeyId) -> Option<PathBuf> {
    let path = replaced_key_path(keys, id);
    keys::load_public(&path)
        .is_ok_and(|k| k.id() == *id)
        .then_some(path)
}

/// A silent server, said (and hinted) as every client command says it.
fn timed_out(addr: &str, after: Duration) -> anyhow::Error {
    letterlock::client::ClientError::Timeout {
        addr: addr.to_owned(),
        after,
    }
    .into()
}

/// Connects and runs the probe's handshake, turning failures into what to do about them.
async fn fetch(addr: &str, timeout: Duration) -> Result<ProbedServer> {
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        // Said as `send_msg` says it: the reason first, then the question (found by a trial
        // run: the question came before the reason, as "…address?: Connection refused").
        Ok(Err(e)) => bail!(
            "cannot connect to {addr}: {e}. Is `letterlock server` running there, and is \
             HOST:PORT its --listen address?"
        ),
        Err(_) => return Err(timed_out(addr, timeout)),
    };
    tracing::debug!(server = %addr, "connected; TLS 1.3 handshake without a client certificate");
    match probe::server_key(tcp, &TlsOptions::default(), timeout).await {
        Ok(p) => {
            tracing::debug!(
                server = %addr,
                version = ?p.session.version,
                group = ?p.session.group,
                cipher_suite = ?p.session.cipher_suite,
                server_key = %p.key.id(),
                "the server proved its key"
            );
            Ok(p)
        }
        Err(ProbeError::Tls(TlsError::Timeout)) => Err(timed_out(addr, timeout)),
        Err(ProbeError::Tls(e)) => Err(anyhow::Error::new(e).context(format!(
            "the server at {addr} did not complete a letterlock TLS 1.3 handshake (a server \
             started with --plain-v1 cannot be trusted this way: copy its server_public.pem)"
        ))),
        Err(e) => Err(anyhow::Error::new(e).context(format!("server {addr}"))),
    }
}

/// Shows the proven key: on stdout, as it is what the command is for.
fn show(addr: &str, p: &ProbedServer) {
    println!(
        "the server at {addr} proved in a TLS 1.3 handshake ({:?}) that it holds this key:",
        p.session.group
    );
    for (label, value) in fingerprints(&p.key) {
        println!("  {label:<8} {value}");
    }
    println!("  size     {} bits, RSA", p.key.bits());
}

/// ssh's warning, for `--replace`: loud, because it is what a man in the middle looks like.
fn warn_changed(path: &Path, old: &PublicKey, new: &PublicKey) {
    eprintln!(
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
         @    WARNING: THE SERVER'S KEY HAS CHANGED (--replace)    @\n\
         @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
         Someone could be intercepting this connection, or the server's key was replaced.\n\
         kept in {}: {}\n\
         presented now:        {}",
        path.display(),
        old.id(),
        new.id()
    );
}

/// Asks on the terminal; refuses (with what to pass instead) when there is no terminal to ask.
fn confirm() -> Result<bool> {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "cannot ask for confirmation: stdin is not a terminal. Pass --fingerprint \
             SHA256:… (as the server's operator reads it out with `letterlock fingerprint \
             server_public.pem`), or --yes to trust it unchecked"
        );
    }
    eprint!(
        "Is this the key the server's operator sees with `letterlock fingerprint \
         server_public.pem`? Trust it (yes/no)? "
    );
    io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "yes" | "y" | "YES" | "Yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_matches_as_printed_without_prefix_or_as_hex_and_nothing_else() {
        let key = PublicKey::from_pem(include_str!("../../tests/keys/alice2048_public.pem"))
            .expect("the fixed test key");
        let other = PublicKey::from_pem(include_str!("../../tests/keys/bob2048_public.pem"))
            .expect("the fixed test key");
        let shown = key.id().to_string();
        assert!(fingerprint_matches(&key, &shown));
        assert!(fingerprint_matches(&key, &format!("  {shown}\n")));
        let (_, bare) = shown.split_once(':').expect("ALGORITHM:value");
        assert!(fingerprint_matches(&key, bare));
        assert!(fingerprint_matches(&key, &hex::encode(key.id().0)));
        assert!(!fingerprint_matches(&key, &other.id().to_string()));
        assert!(!fingerprint_matches(&key, ""));
        assert!(!fingerprint_matches(&key, "SHA256:"));
        assert!(!fingerprint_matches(&key, &shown.to_lowercase()));
        let ssh = key.ssh_fingerprint().to_string();
        assert!(ssh.starts_with("SHA256:"));
        assert!(fingerprint_matches(&key, &ssh));
        assert!(!fingerprint_matches(
            &key,
            &other.ssh_fingerprint().to_string()
        ));
    }
}
