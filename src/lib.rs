//! letterlock: secure application messages between a client and a server.
//!
//! # Layout
//! - [`keys`]: RSA key pairs, PEM files, fingerprints, and the private-key trait.
//! - [`envelope`]: the sealed-message format (asymmetric and hybrid), streaming seal and open.
//! - [`store`]: the server's durable mailbox (SQLite).
//! - `fuzzing` (hidden): the fuzz targets' bodies, shared with the corpus replay test.
#![forbid(unsafe_code)]

pub mod cli;
pub mod envelope;
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod store;
