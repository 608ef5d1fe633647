//! letterlock: secure application messages between a client and a server.
//!
//! Every message is confidential (only the recipient can read it), authenticated (the recipient
//! knows who sent it) and tamper-evident (any change is refused), in two modes: asymmetric (RSA
//! only) and hybrid (AES-256-GCM under a fresh key that RSA wraps).
//!
//! # Layout
//! - [`codec`]: the bounded cursor every binary parser (header, frames, handshake) reads with.
//! - [`keys`]: RSA key pairs, PEM files, fingerprints, trust lists, and the private-key trait.
//! - [`envelope`]: the sealed-message format (asymmetric and hybrid), streaming seal and open.
//! - `wire` (feature `net`): the network protocol: frames and their codec, a connection that
//!   reads and writes whole frames, and the handshake both ends run.
//! - `client` (feature `client`) and `server` (feature `server`): the two ends of the protocol.
//! - `store` (feature `server`; SQLite with feature `sqlite`): the server's durable mailbox.
//! - `tls` (feature `tls`, which `client` and `server` turn on): protocol version 2's
//!   transport, TLS 1.3 with post-quantum key exchange and keys pinned by key id.
//! - `fuzzing` (feature `fuzzing`, hidden): the fuzz targets' bodies, shared with the corpus
//!   replay test. Never enabled in a program.
//!
//! # Features
//! The default features build everything. A program that only seals and opens messages takes
//! `default-features = false` and depends on aws-lc-rs and a few small crates only.
#![forbid(unsafe_code)]

#[cfg(feature = "client")]
pub mod client;
pub mod codec;
pub mod envelope;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "net")]
pub mod wire;
