//! `letterlock client ...`: the client side of the walk-through (key pair, send_msg, recv_msg).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use letterlock::envelope::{self, SealOptions};
use letterlock::keys::Identity;

use super::offline::{file_reader, write_stdout_unbuffered};
use super::{ModeArg, PairArgs, STDOUT_LIMIT, own_key, peer_key, print_hint};

#[derive(Subcommand, Debug)]
pub(super) enum ClientCommand {
    /// Generate the client's key pair: client_private.pem and client_public.pem.
    #[command(name = "generate_key_pair")]
    GenerateKeyPair(PairArgs),
    /// Seal a message for the server and send it; prints "delivered" only once the server
    /// proved it decrypted and stored the message.
    #[command(name = "send_msg")]
    SendMsg(ClientSendArgs),
    /// Fetch, verify and print (or save) every message the server holds for this client.
    #[command(name = "recv_msg")]
    RecvMsg(RecvArgs),
}

#[derive(Args, Debug)]
pub(super) struct ClientConn {
    /// Folder with client_private.pem and server_public.pem.
    #[arg(long, default_value = ".")]
    pub(super) keys: PathBuf,
    /// Address of the server.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub(super) server: String,
}

/// What to send and how: the message arguments `client send_msg` and `server send_msg` share.
#[derive(Args, Debug)]
pub(super) struct MessageArgs {
    /// The message text (or use --file).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub(super) text: Option<String>,
    /// Send the contents of a file instead (`-` for stdin); any size in hybrid mode.
    #[arg(long)]
    pub(super) file: Option<PathBuf>,
    /// How to encrypt: hybrid (AES-256-GCM, any size) or asymmetric (RSA only, up to 1 MiB).
    #[arg(long, value_enum, default_value = "hybrid")]
    pub(super) mode: ModeArg,
}

impl MessageArgs {
    /// The message's bytes: the text argument, or `--file` (`-` for stdin).
    pub(super) fn input(&self) -> Result<Box<dyn Read + Send>> {
        Ok(match (&self.text, &self.file) {
            (Some(text), _) => Box::new(io::Cursor::new(text.as_bytes().to_vec())),
            (None, Some(p)) if p == Path::new("-") => Box::new(io::stdin()),
            (None, Some(p)) if p.is_dir() => bail!("{} is a folder, not a file", p.display()),
            (None, Some(p)) => file_reader(p)?,
            (None, None) => bail!("give the message text or --file"),
        })
    }
}

#[derive(Args, Debug)]
pub(super) struct ClientSendArgs {
    #[command(flatten)]
    pub(super) message: MessageArgs,
    /// Largest plaintext to send in asymmetric mode, in bytes (the server has its own limit).
    #[arg(long, default_value_t = envelope::DEFAULT_ASYMMETRIC_LIMIT)]
    pub(super) max_asymmetric: u64,
    #[command(flatten)]
    pub(super) conn: ClientConn,
}

#[derive(Args, Debug)]
pub(super) struct RecvArgs {
    #[command(flatten)]
    pub(super) conn: ClientConn,
    /// Save each message as DIR/<message id>.msg instead of printing it.
    #[arg(short, long, value_name = "DIR")]
    pub(super) output: Option<PathBuf>,
    /// If nothing is waiting, keep asking for up to this many seconds.
    #[arg(long, default_value_t = 0)]
    pub(super) wait: u64,
}

pub(super) async fn connect(conn: &ClientConn) -> Result<letterlock::client::Client> {
    use letterlock::client::ClientError;
    if !conn.server.contains(':') {
        bail!(
            "--server {} has no port; give HOST:PORT, e.g. 127.0.0.1:8000",
            conn.server
        );
    }
    let identity: Arc<dyn Identity> = Arc::new(own_key(&conn.keys, "client")?);
    let me = identity.public().id();
    let server = peer_key(&conn.keys, "server")?;
    match letterlock::client::Client::connect(
        &conn.server,
        identity,
        server,
        letterlock::client::ClientConfig::default(),
    )
    .await
    {
        Ok(c) => Ok(c),
        Err(ClientError::Refused {
            code: letterlock::wire::ErrorCode::AuthFailed,
            ..
        }) => bail!(
            "the server at {} refused our key {me} (authentication failed): its operator must \
             trust client_public.pem (`letterlock server trust client_public.pem --name NAME`)",
            conn.server
        ),
        Err(e) => Err(anyhow::Error::new(e).context(format!("server {}", conn.server))),
    }
}

pub(super) async fn client_send(a: ClientSendArgs) -> Result<ExitCode> {
    let mut client = connect(&a.conn).await?;
    let opts = SealOptions {
        asymmetric_limit: a.max_asymmetric,
        ..SealOptions::mode(a.message.mode.into())
    };
    let input = a.message.input()?;
    match client.send(input, opts).await {
        Ok(d) => {
            println!("message id {}", d.id);
            println!(
                "delivered: the server proved it decrypted and stored {} bytes ({} mode)",
                d.plaintext_len, d.header.mode
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("letterlock: NOT delivered: {e}");
            print_hint(std::iter::successors(
                Some(&e as &(dyn std::error::Error + 'static)),
                |c| c.source(),
            ));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Ids of messages this client already printed, so an at-least-once repeat is not shown twice.
pub(super) fn seen_path(keys: &Path) -> PathBuf {
    keys.join(".letterlock-received")
}

pub(super) async fn client_recv(a: RecvArgs) -> Result<ExitCode> {
    use letterlock::client::{Content, Output};
    let mut client = connect(&a.conn).await?;
    let output = match &a.output {
        Some(dir) => Output::Dir(dir.clone()),
        None => Output::Memory {
            limit: STDOUT_LIMIT,
        },
    };
    let seen_file = seen_path(&a.conn.keys);
    let mut seen: std::collections::HashSet<String> = std::fs::read_to_string(&seen_file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(a.wait);
    let mut total = 0;
    loop {
        let got = client
            .fetch(&output, |r| {
                let id = r.header.message_id.to_string();
                match &r.content {
                    Content::Memory(_) if seen.contains(&id) => {
                        eprintln!("message {id}: already received (repeat suppressed)");
                    }
                    Content::Memory(text) => {
                        eprintln!(
                            "message {id} from the server ({} mode, {} bytes, signature verified):",
                            r.header.mode, r.plaintext_len
                        );
                        write_stdout_unbuffered(text, !text.ends_with(b"\n"))?;
                        // Remember it durably before the ack goes out.
                        let mut f = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&seen_file)?;
                        writeln!(f, "{id}")?;
                        f.sync_all()?;
                        seen.insert(id);
                    }
                    Content::File(path) if r.duplicate => {
                        eprintln!("message {id}: already saved as {} (repeat)", path.display());
                    }
                    Content::File(path) => eprintln!(
                        "message {id} ({} mode, {} bytes, signature verified) saved to {}",
                        r.header.mode,
                        r.plaintext_len,
                        path.display()
                    ),
                }
                Ok(())
            })
            .await?;
        total += got;
        if total > 0 || std::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    if total == 0 {
        eprintln!("no messages");
    }
    Ok(ExitCode::SUCCESS)
}
