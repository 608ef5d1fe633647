//! letterlock: secure application messages between a client and a server.
//!
//! Every message is confidential (only the recipient can read it), authenticated (the recipient
//! knows who sent it) and tamper-evident (any change is refused), in two modes: asymmetric (RSA
//! only) and hybrid (AES-256-GCM under a fresh key that RSA wraps).
//!
//! # Layout
//! - [`keys`]: RSA key pairs, PEM files, fingerprints, trust lists, and the private-key trait.
//! - [`envelope`]: the sealed-message format (asymmetric and hybrid), streaming seal and open.
//! - [`wire`]: the network protocol's frames and their codec.
//! - [`server`] and [`client`]: the two ends of the protocol.
//! - [`store`]: the server's durable mailbox (SQLite).
//! - [`intercept`]: a keyless man-in-the-middle that records and attacks the traffic.
//! - [`demo`]: `letterlock demo`, the one-command tour.
//! - [`bench`]: `letterlock bench`, each figure beside the bound this machine allows.
//! - [`cli`]: the command line; the binary only calls [`cli::run`].
//! - `fuzzing` (hidden): the fuzz targets' bodies, shared with the corpus replay test.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod client;
pub mod demo;
pub mod envelope;
#[doc(hidden)]
pub mod fuzzing;
pub mod intercept;
pub mod keys;
pub mod server;
pub mod store;
pub mod wire;
