//! The offline audit: a node's data checked without trusting the node.
//!
//! - [`verify`]: every chain, signature, head, index entry and reference in
//!   a copy of a data directory, reporting every problem with its origin
//!   and seq (`audit verify`).
//! - [`replay`]: the history as JSON lines from a verified copy, one filter
//!   for both sources; [`remote`]: the same from a running node, proving
//!   each chain on this side (`audit replay --url`).
//! - [`project`]: the aggregates as of a past moment (`audit project`).
//! - [`reference`]: heads held outside the log (a parent's status, the
//!   node's heads record) and their signatures; [`data`]: the copy every
//!   audit reads, so the audited files are never touched.
//!
//! The CLI (`crates/gridsync/src/audit.rs`) only parses flags and prints.

pub mod data;
mod pipeline;
pub mod project;
pub mod reference;
pub mod remote;
pub mod replay;
pub mod verify;

/// Why an audit could not finish: `Unreadable` (an input is missing or
/// malformed: the CLI exits 2) or `Problems` (the data does not verify:
/// exit 1).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Unreadable(String),
    #[error("{0}")]
    Problems(String),
}
