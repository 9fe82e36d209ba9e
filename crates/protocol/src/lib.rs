//! The gridsync replication protocol, sans IO.
//!
//! Pure state machines — no sockets, no tokio, no sled, no clock reads, no
//! OS randomness. The caller feeds inputs (connection opened with a fresh
//! nonce, frame received, local append, store reported durable, tick with
//! the time) and carries out the [`Output`]s (send a frame, persist chunks,
//! record equivocation evidence, close). Storage is read through the small
//! traits [`child::LocalLog`] and [`parent::StoredLog`].
//!
//! A child connects to its parent and pushes upward:
//!
//! ```text
//! child                                  parent
//!   Hello{node, parent, nonce_c}   ──▶   checks topology
//!                                  ◀──   Challenge{nonce_p, proof_p(nonce_c)}
//!   checks proof_p                        
//!   Auth{proof_c(nonce_p)}         ──▶   checks proof_c
//!                                  ◀──   Welcome{heads of the child's subtree,
//!                                                batch size it wants}
//!   Batch{id, chunks} …            ──▶   verify, Persist ─▶ store
//!   (≤ window in flight)           ◀──   Ack{id} once durable
//!                                  ◀──   OriginRefused{origin} (that origin
//!                                         only; the others go on)
//! ```
//!
//! Nothing depends on the child remembering what it sent: every session
//! resumes from the parent's heads in `Welcome`. An origin whose parent
//! holds more of the origin's own chain than it does (a restored backup, a
//! lost tail) stops taking posts and pulls the missing suffix back with
//! `Fetch`/`Fetched` before it streams again; a parent copy that differs
//! from its own is reported, never overwritten.

pub mod auth;
pub mod child;
pub mod frame;
pub mod parent;

pub use child::{ChildConfig, ChildSession, LocalLog, MovedHeads, OwnChain};
pub use frame::{Frame, FrameError, LagReport, WireHead, PROTOCOL_VERSION};
pub use parent::{ParentConfig, ParentSession, StoredLog, TopologyView};

use gridsync_model::{Chunk, Hash32};

/// The one capability of protocol version 1: batches carry chunks in the
/// stored format (`crates/model/src/chunk.rs`).
pub const CAPABILITY_CHUNKS_V1: &str = "chunks-v1";

/// A parent that keeps each origin's latest lag report (every parent of
/// this build) says so with this capability, and a child that sees it
/// sends in each `batch` and `ping` only the origins whose report changed
/// since its previous one in the session (all of them in the first). Without
/// it a child sends every origin each time — which a parent that merges
/// takes the same way, as a child's origins never go away in a session. At
/// 1,000 origins below a street, a report of all of them is ~40 KB built,
/// sent and decoded with every batch, however few chunks the batch holds.
pub const CAPABILITY_LAG_CHANGES_V1: &str = "lag-changes-v1";

/// A parent that reads v2 signed heads (`after`: the digest of the
/// origin's previous head, `crates/model/src/chunk.rs`) says so with this
/// capability. A child of this build signs v2 heads and requires it: a
/// parent of an earlier build would refuse each v2 chunk as undecodable or
/// badly signed, so the child says what to do instead ("upgrade the
/// parent") and holds its events until it is. Upgrade parents first.
pub const CAPABILITY_HEADS_V2: &str = "heads-v2";

/// Why a peer or a batch was refused. Stable strings on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectCode {
    UnsupportedVersion,
    WrongParent,
    UnknownNode,
    NotAChild,
    Retired,
    BadProof,
    Malformed,
    ForeignOrigin,
    BadSignature,
    BrokenChain,
    Gap,
    Equivocation,
    Protocol,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::UnsupportedVersion => "unsupported_version",
            RejectCode::WrongParent => "wrong_parent",
            RejectCode::UnknownNode => "unknown_node",
            RejectCode::NotAChild => "not_a_child",
            RejectCode::Retired => "retired",
            RejectCode::BadProof => "bad_proof",
            RejectCode::Malformed => "malformed",
            RejectCode::ForeignOrigin => "foreign_origin",
            RejectCode::BadSignature => "bad_signature",
            RejectCode::BrokenChain => "broken_chain",
            RejectCode::Gap => "gap",
            RejectCode::Equivocation => "equivocation",
            RejectCode::Protocol => "protocol",
        }
    }
}

/// What the caller must do.
#[derive(Clone, Debug)]
pub enum Output {
    Send(Frame),
    /// Parent: make these chunks durable, then call `on_persisted(batch)`.
    /// Linked: their links were checked (and their events hashed) here.
    Persist {
        batch: u64,
        chunks: Vec<gridsync_model::chunk::LinkedChunk>,
    },
    /// Child: import these verified chunks of this node's own chain (pulled
    /// back from the parent) into the local log, then call `on_repaired`.
    Import {
        chunks: Vec<Chunk>,
    },
    /// An origin signed two different events at `seq`: keep both.
    Equivocation {
        origin: String,
        seq: u64,
        ours: Hash32,
        theirs: Chunk,
    },
    /// For metrics and logs: a peer, a batch or one origin was refused.
    Rejected {
        code: RejectCode,
        message: String,
    },
    /// Child: the parent refuses `origin` for this session; the others go on.
    OriginBlocked {
        origin: String,
        code: String,
        message: String,
    },
    /// Child: what the handshake found about this node's own chain.
    OwnChain(OwnChain),
    /// Close the connection (after sending any frames above).
    Close {
        reason: String,
    },
}
