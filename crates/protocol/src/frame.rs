//! Wire frames: one msgpack value per websocket binary message, encoded
//! with field names (`rmp_serde::to_vec_named`) so later versions can add
//! fields. `schemas/sync-frames.md` documents every frame; golden fixtures
//! in `tests/` pin the encoding.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The protocol version this build speaks (2: per-origin refusal and an
/// origin pulling its own chain back from its parent).
pub const PROTOCOL_VERSION: u32 = 2;

/// An origin's head as a peer reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHead {
    pub origin: String,
    pub seq: u64,
    pub hash: ByteBuf,
}

/// What a child reports about one origin it holds, so the parent can show
/// lag: the child's head, and when the child received the oldest event the
/// parent does not have yet (child clock, unix ms).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LagReport {
    pub origin: String,
    pub seq: u64,
    pub oldest_missing_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    /// Child → parent, first frame: who I am, who I think you are, a nonce
    /// for you to sign.
    Hello {
        version: u32,
        node: String,
        parent: String,
        nonce: ByteBuf,
        capabilities: Vec<String>,
    },
    /// Parent → child: the parent's proof (signature over the child's
    /// nonce) and a nonce for the child to sign.
    Challenge {
        version: u32,
        node: String,
        nonce: ByteBuf,
        proof: ByteBuf,
        /// What the parent supports (the child's `hello` lists its own).
        #[serde(default)]
        capabilities: Vec<String>,
    },
    /// Child → parent: the child's proof over the parent's nonce.
    Auth {
        proof: ByteBuf,
    },
    /// Parent → child: authenticated; the parent's heads for every origin of
    /// the child's subtree it holds. The child sends what lies beyond them.
    Welcome {
        heads: Vec<WireHead>,
        /// The largest batch the parent wants (chunk bytes; a single larger
        /// chunk still goes alone): its budget for received bytes shared
        /// by the children it takes at once. A parent reads each child's
        /// message whole before its budget can count it, so this is what
        /// bounds those. Absent from older parents (and skipped by older
        /// children: frames are maps).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch_bytes_max: Option<u64>,
    },
    /// Either way, then the connection closes.
    Refused {
        code: String,
        message: String,
    },
    /// Child → parent: chunks (each a run of one origin's events with its
    /// signed head), in per-origin seq order.
    Batch {
        id: u64,
        chunks: Vec<ByteBuf>,
        lag: Vec<LagReport>,
    },
    /// Parent → child: batch `id` is durable; the parent's heads for the
    /// origins it touched.
    Ack {
        id: u64,
        heads: Vec<WireHead>,
    },
    /// Parent → child: batch `id` was refused as a whole (it could not be
    /// read); the connection closes.
    Rejected {
        id: u64,
        code: String,
        message: String,
    },
    /// Parent → child: the chunks of `origin` from `seq` on (in batch `id`
    /// and after it) are refused for the rest of this session; the other
    /// origins' chunks are accepted as usual and the session goes on.
    OriginRefused {
        id: u64,
        origin: String,
        seq: u64,
        code: String,
        message: String,
    },
    /// Child → parent: send back my own chain after `after_seq` (an origin
    /// that finds its parent holding more of its chain than it does).
    Fetch {
        origin: String,
        after_seq: u64,
    },
    /// Parent → child: durable chunks of `origin` after the fetched seq, in
    /// order (the first trimmed to start right after it), at most about a
    /// batch of bytes; `head` is the parent's durable head seq of `origin`.
    Fetched {
        origin: String,
        chunks: Vec<ByteBuf>,
        head: u64,
    },
    /// Either way when idle; the child's carries its lag report.
    Ping {
        lag: Vec<LagReport>,
    },
    Pong,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("frame is not valid msgpack for this protocol: {0}")]
    Malformed(String),
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("frames always encode")
    }

    /// # Errors
    /// Oversized or undecodable input.
    pub fn decode(bytes: &[u8], frame_bytes_max: usize) -> Result<Self, FrameError> {
        if bytes.len() > frame_bytes_max {
            return Err(FrameError::TooLarge(bytes.len(), frame_bytes_max));
        }
        rmp_serde::from_slice(bytes).map_err(|e| FrameError::Malformed(e.to_string()))
    }

    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Challenge { .. } => "challenge",
            Frame::Auth { .. } => "auth",
            Frame::Welcome { .. } => "welcome",
            Frame::Refused { .. } => "refused",
            Frame::Batch { .. } => "batch",
            Frame::Ack { .. } => "ack",
            Frame::Rejected { .. } => "rejected",
            Frame::OriginRefused { .. } => "origin_refused",
            Frame::Fetch { .. } => "fetch",
            Frame::Fetched { .. } => "fetched",
            Frame::Ping { .. } => "ping",
            Frame::Pong => "pong",
        }
    }
}
