//! `letterlock client agent`: a process that keeps the client's key and a connection to the
//! server for the `client send_msg` commands that follow, as ssh's ControlMaster does for
//! `ssh`; and [`hand_over`], the part of `send_msg` that gives its message to it.

use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use letterlock::client::ClientConfig;
use letterlock::client::agent::{self, AgentConfig, AskError, Reply, Request, SendRequest};

use super::client::{
    ClientConn, ClientKeys, ClientSendArgs, backoff, connect_with, print_delivered,
    print_not_delivered, wait_duration,
};

/// The agent's socket, in the keys folder: one agent per client key.
pub(super) const AGENT_SOCKET: &str = "client_agent.sock";

#[derive(Args, Debug)]
pub(super) struct AgentArgs {
    #[command(flatten)]
    conn: ClientConn,
    /// Stop after DURATION without a message (seconds, e.g. 600, or with a unit: 10m, 1h);
    /// 0: only when stopped.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = wait_duration)]
    persist: Duration,
    /// Stop the agent running for --keys instead of starting one.
    #[arg(long)]
    stop: bool,
}

/// `DIR/client_agent.sock` for `--keys DIR`.
fn socket_path(keys: &Path) -> PathBuf {
    keys.join(AGENT_SOCKET)
}

/// `letterlock client agent`: loads (and unlocks) the key, connects, then serves `send_msg`
/// commands on the socket until stopped or idle for `--persist`.
pub(super) async fn run(a: AgentArgs) -> Result<ExitCode> {
    let path = socket_path(&a.conn.keys);
    if a.stop {
        return stop(&path);
    }
    if a.conn.plain_v1 {
        bail!("the agent speaks TLS 1.3 (protocol version 2) only; drop --plain-v1");
    }
    let keys = ClientKeys::load(&a.conn)?;
    let (identity, server) = (keys.identity.clone(), keys.server.clone());
    // Before the connection and the "listening" line: a signal after it stops us cleanly.
    let signals = super::stop_signals()?;
    let listener = bind(&path)?;
    let client = match connect_with(&a.conn, keys).await {
        Ok(client) => client,
        Err(e) => {
            remove_socket(&path);
            return Err(e);
        }
    };
    let persist = (!a.persist.is_zero()).then_some(a.persist);
    println!(
        "letterlock client agent: listening on {} for messages to {} ({}); stop it with \
         `letterlock client agent --stop --keys {}` or Ctrl-C",
        path.display(),
        a.conn.server,
        match persist {
            Some(p) => format!("stops after {} without one", humantime::format_duration(p)),
            None => "until stopped".to_owned(),
        },
        a.conn.keys.display(),
    );
    let config = AgentConfig {
        server_addr: a.conn.server.clone(),
        identity,
        server,
        client: ClientConfig::default(),
        tls: letterlock::tls::TlsOptions::default(),
        backoff: backoff(a.conn.timeout),
        uid: nix::unistd::getuid().as_raw(),
        persist,
        socket_timeout: SOCKET_TIMEOUT,
    };
    let served = agent::serve(listener, config, Some(client), signals).await;
    remove_socket(&path);
    served?;
    Ok(ExitCode::SUCCESS)
}

/// How long a command and the agent wait for each other to write on the socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// Listens on `path`, mode 0600, replacing a socket left by an agent that is gone; refuses to
/// start beside a running one, or over anything that is not a socket.
fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => bail!(
                "an agent is already running on {}; stop it first with `letterlock client \
                     agent --stop`",
                path.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).with_context(|| {
                    format!("removing {}, left by an agent that is gone", path.display())
                })?;
            }
            Err(e) => bail!("{}: {e}", path.display()),
        },
        Ok(_) => bail!(
            "{} exists and is not a socket; move it away to start an agent",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => bail!("{}: {e}", path.display()),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| {
        let long = path.as_os_str().len() >= 108;
        anyhow::anyhow!(
            "cannot listen on {}: {e}{}",
            path.display(),
            if long {
                " (a Unix socket's path is at most 107 bytes: use a shorter --keys folder)"
            } else {
                ""
            }
        )
    })?;
    // The agent also checks every peer's user id; the mode keeps other users from even
    // connecting.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))?;
    Ok(listener)
}

/// Removes the socket at exit, if it still is one.
fn remove_socket(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// `letterlock client agent --stop`.
fn stop(path: &Path) -> Result<ExitCode> {
    match agent::ask(path, &Request::Stop, SOCKET_TIMEOUT) {
        Ok(Reply::Stopping) => {
            println!(
                "letterlock client agent: stopped the agent on {}",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(other) => bail!(
            "unexpected answer from the agent on {}: {other:?}",
            path.display()
        ),
        Err(AskError::NotRunning(_)) => bail!("no agent is running on {}", path.display()),
        Err(e) => Err(e.into()),
    }
}

/// Hands a `send_msg` message to the agent running for `--keys`, if there is one and the
/// message is for it: TEXT or a regular file of at most [`agent::MAX_MESSAGE`] bytes, to the
/// agent's server, on TLS, not `--to`, not `--no-agent`. `Ok(None)`: nothing was handed over;
/// the command sends the message itself. Blocking, without a runtime: a command whose message
/// the agent takes does nothing else.
pub(super) fn hand_over(a: &ClientSendArgs) -> Result<Option<ExitCode>> {
    if a.no_agent || a.to.is_some() || a.conn.plain_v1 {
        return Ok(None);
    }
    let limit = agent::MAX_MESSAGE as u64;
    let path = socket_path(&a.conn.keys);
    if a.message.small_len(limit).is_none() || std::fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    let mut message = zeroize::Zeroizing::new(Vec::new());
    a.message
        .input()?
        .take(limit + 1)
        .read_to_end(&mut message)?;
    if message.len() as u64 > limit {
        // The file grew since it was looked at: streamed by this process.
        return Ok(None);
    }
    let request = Request::Send(SendRequest {
        server: a.conn.server.clone(),
        mode: a.message.mode.into(),
        max_asymmetric: a.max_asymmetric,
        message,
    });
    // The agent may retry a busy server for --timeout, then wait for the ack.
    let wait = Duration::from_secs(a.conn.timeout) + ClientConfig::default().timeout;
    match agent::ask(&path, &request, wait) {
        Ok(Reply::Delivered {
            id,
            plaintext_len,
            mode,
        }) => {
            tracing::debug!(socket = %path.display(), "sent by the agent");
            print_delivered(a.json, &id, plaintext_len, mode);
            Ok(Some(ExitCode::SUCCESS))
        }
        Ok(Reply::NotDelivered(error)) => {
            print_not_delivered(a.json, &format!("{error} (sent by the agent)"));
            Ok(Some(ExitCode::FAILURE))
        }
        Ok(Reply::Declined(why)) => {
            tracing::debug!(%why, "the agent declined the message; sending it from here");
            Ok(None)
        }
        Ok(Reply::Stopping) => {
            tracing::debug!("the agent is stopping; sending the message from here");
            Ok(None)
        }
        Err(e @ (AskError::NotRunning(_) | AskError::NotHandedOver(_))) => {
            tracing::debug!(error = %e, "sending the message from here");
            Ok(None)
        }
        Err(e @ AskError::NoAnswer(_)) => {
            print_not_delivered(
                a.json,
                &format!(
                    "{e}; the message was handed to the agent on {}, and may or may not have \
                     been delivered",
                    path.display()
                ),
            );
            Ok(Some(ExitCode::FAILURE))
        }
    }
}
