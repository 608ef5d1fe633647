//! The `letterlock` command line, on top of the [`letterlock`] library.
//!
//! This crate holds what only the binary needs; a program that seals, opens, sends or serves
//! messages depends on the `letterlock` library crate alone.
//!
//! # Layout
//! - [`cli`]: the command line (clap); the binary only calls [`cli::run`].
//! - [`demo`]: `letterlock demo`, the one-command tour.
//! - [`bench`](mod@bench): `letterlock bench`, each figure beside the bound this machine allows.
//! - [`intercept`]: a keyless man-in-the-middle that records and attacks the traffic.
//! - [`pgcluster`]: a throwaway PostgreSQL for the bench's store section and the tests.
//! - `shell`: words and lines to paste into a POSIX shell.
#![deny(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod demo;
pub mod intercept;
pub mod pgcluster;
mod shell;
