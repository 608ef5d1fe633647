//! letterlock: secure application messages between a client and a server.
//!
//! # Layout
//! - [`bench`]: `letterlock bench`, measured speed beside this machine's bounds.
//! - [`keys`]: RSA key pairs, PEM files, fingerprints, and the private-key trait.
//! - [`envelope`]: the sealed-message format (asymmetric and hybrid), streaming seal and open.
//! - [`store`]: the server's durable mailbox (SQLite).
//! - [`wire`], [`server`], [`client`]: the network protocol and its two ends.
//! - [`intercept`]: a keyless man-in-the-middle that records and attacks the traffic.
//! - [`demo`]: `letterlock demo`, the one-command tour.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod client;
pub mod demo;
pub mod envelope;
pub mod intercept;
pub mod keys;
pub mod server;
pub mod store;
pub mod wire;
