//! The handshake, whole: the bytes a client signs, how it signs them, and how the server checks
//! them. The client and the server both call this module; neither builds a transcript itself.
//!
//! ```text
//! server → client  Hello { version, server key id, challenge (32 fresh random bytes) }
//! client → server  Auth  { client key id, RSA-PSS signature over the transcript }
//! server → client  Ready                        (or Error AuthFailed)
//!
//! transcript = "letterlock v1 handshake" || server key id || challenge || client key id
//! ```
//!
//! Naming both keys and the fresh challenge stops a signature being replayed on another
//! connection or to another server. The server's check is public-key work only, so an unknown
//! peer never costs it a private-key operation; the client checks the server's key id against
//! the key it pins before it signs anything.

use tracing::warn;

use crate::keys::{Identity, KeyError, KeyId, TrustList, Trusted};

use super::frame::Frame;

/// Protocol version carried in the server's hello.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes of the handshake challenge.
pub const CHALLENGE_LEN: usize = 32;
/// Domain separation for the handshake signature: no other letterlock signature covers bytes
/// that start this way.
pub const HANDSHAKE_CONTEXT: &[u8] = b"letterlock v1 handshake";
/// Shortest signature an `Auth` may carry: one modulus of a 2048-bit key.
pub const MIN_SIGNATURE: usize = 256;
/// Longest signature an `Auth` may carry: one modulus of an 8192-bit key.
pub const MAX_SIGNATURE: usize = 1024;
/// Largest frame a peer may send before it is authenticated: an `Auth` with the largest
/// signature we accept. Keeps an unauthenticated peer from making us buffer more.
pub const MAX_HANDSHAKE_FRAME: usize = 1 + 32 + MAX_SIGNATURE;

/// Why a handshake did not complete, as far as this module can tell from the frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer sent another frame where the handshake expects `expected`.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    /// The server speaks another protocol version.
    #[error("server speaks protocol version {0}, we speak {PROTOCOL_VERSION}")]
    Version(u8),
    /// The server presented a key other than the pinned one.
    #[error("the server presented key {got}, but the trusted server key is {expected}")]
    WrongServer { got: KeyId, expected: KeyId },
    /// Unknown client key or bad signature; deliberately not saying which.
    #[error("authentication failed")]
    AuthFailed,
    /// The system's random generator failed (no challenge).
    #[error("no randomness for the challenge")]
    Random,
    /// Our own key could not sign.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The bytes a client signs to authenticate (see the module doc).
pub fn transcript(server: &KeyId, challenge: &[u8; CHALLENGE_LEN], client: &KeyId) -> Vec<u8> {
    let mut t = Vec::with_capacity(HANDSHAKE_CONTEXT.len() + 32 + CHALLENGE_LEN + 32);
    t.extend_from_slice(HANDSHAKE_CONTEXT);
    t.extend_from_slice(&server.0);
    t.extend_from_slice(challenge);
    t.extend_from_slice(&client.0);
    t
}

/// The server's half of one connection's handshake: its key id and the challenge it sent.
#[derive(Clone, Debug)]
pub struct ServerHandshake {
    /// Who we are; the client's signature must name us.
    server: KeyId,
    /// Fresh for this connection, so no earlier signature fits it.
    challenge: [u8; CHALLENGE_LEN],
}

impl ServerHandshake {
    /// A fresh challenge from the system CSPRNG.
    pub fn new(server: KeyId) -> Result<Self, HandshakeError> {
        let mut challenge = [0u8; CHALLENGE_LEN];
        aws_lc_rs::rand::fill(&mut challenge).map_err(|_| HandshakeError::Random)?;
        Ok(ServerHandshake { server, challenge })
    }

    /// The `Hello` that opens the connection.
    pub fn hello(&self) -> Frame {
        Frame::Hello {
            version: PROTOCOL_VERSION,
            server: self.server,
            challenge: self.challenge,
        }
    }

    /// Checks the client's answer: an `Auth` from a trusted key, signed over this handshake.
    /// Public-key work of up to 8192 bits: run it on the blocking pool.
    pub fn check(&self, clients: &TrustList, answer: Frame) -> Result<Trusted, HandshakeError> {
        let Frame::Auth { client, signature } = answer else {
            return Err(HandshakeError::Unexpected {
                expected: "Auth",
                got: answer.name(),
            });
        };
        authenticate(clients, &self.server, &self.challenge, &client, &signature)
            .cloned()
            .ok_or(HandshakeError::AuthFailed)
    }
}

/// The server's check, public-key work only: the client's key is one we trust and its
/// signature covers this server, this connection's challenge and that key. `None` for either
/// failure alike (the log says which): the peer learns only "authentication failed". A plain
/// function so the fuzzer can call it on arbitrary input.
pub fn authenticate<'a>(
    clients: &'a TrustList,
    server: &KeyId,
    challenge: &[u8; CHALLENGE_LEN],
    client: &KeyId,
    signature: &[u8],
) -> Option<&'a Trusted> {
    let transcript = transcript(server, challenge, client);
    match clients.get(client) {
        Some(t) if t.key.verify_pss(&transcript, signature) => Some(t),
        found => {
            if found.is_none() {
                // Spend what a verification costs anyway, so the time to refuse does not tell a
                // peer whether a key id is trusted.
                if let Some(any) = clients.iter().next() {
                    let _ = any.key.verify_pss(&transcript, signature);
                }
            }
            warn!(
                key = %client,
                cause = if found.is_some() { "bad signature" } else { "untrusted key" },
                "handshake refused"
            );
            None
        }
    }
}

/// The client's reading of the server's first frame: a `Hello` in our version from the pinned
/// server. Returns the challenge to sign.
pub fn check_hello(first: Frame, pinned: &KeyId) -> Result<[u8; CHALLENGE_LEN], HandshakeError> {
    match first {
        Frame::Hello {
            version: PROTOCOL_VERSION,
            server,
            challenge,
        } if server == *pinned => Ok(challenge),
        Frame::Hello {
            version: PROTOCOL_VERSION,
            server,
            ..
        } => Err(HandshakeError::WrongServer {
            got: server,
            expected: *pinned,
        }),
        Frame::Hello { version, .. } => Err(HandshakeError::Version(version)),
        other => Err(HandshakeError::Unexpected {
            expected: "Hello",
            got: other.name(),
        }),
    }
}

/// The client's answer to a checked `Hello`: its key id and its signature over the transcript.
/// A private-key operation: run it on the blocking pool.
pub fn sign_auth(
    identity: &dyn Identity,
    server: &KeyId,
    challenge: &[u8; CHALLENGE_LEN],
) -> Result<Frame, KeyError> {
    let client = identity.public().id();
    let signature = identity.sign(&transcript(server, challenge, &client))?;
    Ok(Frame::Auth { client, signature })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_layout_is_the_documented_one() {
        let t = transcript(&KeyId([1; 32]), &[2; CHALLENGE_LEN], &KeyId([3; 32]));
        let mut want = b"letterlock v1 handshake".to_vec();
        want.extend_from_slice(&[1; 32]);
        want.extend_from_slice(&[2; 32]);
        want.extend_from_slice(&[3; 32]);
        assert_eq!(t, want);
    }

    #[test]
    fn the_client_accepts_only_the_pinned_server_in_our_version() {
        let pinned = KeyId([7; 32]);
        let hello = |version, server| Frame::Hello {
            version,
            server,
            challenge: [9; CHALLENGE_LEN],
        };
        assert_eq!(
            check_hello(hello(PROTOCOL_VERSION, pinned), &pinned).unwrap(),
            [9; CHALLENGE_LEN]
        );
        assert!(matches!(
            check_hello(hello(PROTOCOL_VERSION, KeyId([8; 32])), &pinned),
            Err(HandshakeError::WrongServer { .. })
        ));
        assert!(matches!(
            check_hello(hello(2, pinned), &pinned),
            Err(HandshakeError::Version(2))
        ));
        assert!(matches!(
            check_hello(Frame::Ready, &pinned),
            Err(HandshakeError::Unexpected {
                expected: "Hello",
                got: "Ready"
            })
        ));
    }
}
