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
        // Sized up front from the chunks it carries: grown by doubling, a
        // batch's buffer was copied and its fresh pages touched about
        // twice over (a tenth of an aggregator's page faults while it
        // forwards a catch-up; BENCHMARKS.md, "A phone's post…").
        let mut out = Vec::with_capacity(self.encoded_len_bound());
        rmp_serde::encode::write_named(&mut out, self).expect("frames always encode");
        out
    }

    /// Enough bytes for the frame's encoding (a larger one only grows its
    /// buffer): its chunks' and items' lengths with their msgpack headers
    /// and keys, and a margin for the rest.
    fn encoded_len_bound(&self) -> usize {
        const MARGIN: usize = 256;
        let chunks = |c: &[ByteBuf]| c.iter().map(|b| 5 + b.len()).sum::<usize>();
        // A head: its map, keys, origin, seq as u64 and 32-byte hash (62
        // bytes and the origin); a lag report: 50 and the origin.
        let heads = |h: &[WireHead]| h.iter().map(|h| 64 + h.origin.len()).sum::<usize>();
        let lag = |l: &[LagReport]| l.iter().map(|l| 56 + l.origin.len()).sum::<usize>();
        MARGIN
            + match self {
                Frame::Batch {
                    chunks: c, lag: l, ..
                } => chunks(c) + lag(l),
                Frame::Fetched { chunks: c, .. } => chunks(c),
                Frame::Welcome { heads: h, .. } | Frame::Ack { heads: h, .. } => heads(h),
                Frame::Ping { lag: l } => lag(l),
                // The rest: their strings and byte strings (each with up
                // to 5 bytes of header); the margin covers keys and numbers.
                Frame::Hello {
                    node,
                    parent,
                    nonce,
                    capabilities,
                    ..
                } => {
                    20 + node.len()
                        + parent.len()
                        + nonce.len()
                        + capabilities.iter().map(|c| 5 + c.len()).sum::<usize>()
                }
                Frame::Challenge {
                    node,
                    nonce,
                    proof,
                    capabilities,
                    ..
                } => {
                    20 + node.len()
                        + nonce.len()
                        + proof.len()
                        + capabilities.iter().map(|c| 5 + c.len()).sum::<usize>()
                }
                Frame::Auth { proof } => proof.len(),
                Frame::Refused { code, message } | Frame::Rejected { code, message, .. } => {
                    10 + code.len() + message.len()
                }
                Frame::OriginRefused {
                    origin,
                    code,
                    message,
                    ..
                } => 15 + origin.len() + code.len() + message.len(),
                Frame::Fetch { origin, .. } => 5 + origin.len(),
                Frame::Pong => 0,
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer is never grown: the bound holds for the largest items a
    /// frame carries (64-character origins, u64 seqs and i64 times at
    /// their widest, chunks of every header size).
    #[test]
    fn an_encoding_fits_its_bound() {
        let origin = "o".repeat(64);
        let head = WireHead {
            origin: origin.clone(),
            seq: u64::MAX,
            hash: ByteBuf::from(vec![7; 32]),
        };
        let lag = LagReport {
            origin: origin.clone(),
            seq: u64::MAX,
            oldest_missing_ms: Some(i64::MIN),
        };
        let chunks: Vec<ByteBuf> = [0, 1, 31, 32, 255, 256, 65_535, 65_536, 300_000]
            .iter()
            .map(|n| ByteBuf::from(vec![1; *n]))
            .collect();
        let frames = [
            Frame::Batch {
                id: u64::MAX,
                chunks: chunks.clone(),
                lag: vec![lag.clone(); 1000],
            },
            Frame::Fetched {
                origin: origin.clone(),
                chunks,
                head: u64::MAX,
            },
            Frame::Welcome {
                heads: vec![head.clone(); 1000],
                batch_bytes_max: Some(u64::MAX),
            },
            Frame::Ack {
                id: u64::MAX,
                heads: vec![head; 1000],
            },
            Frame::Ping {
                lag: vec![lag; 1000],
            },
            Frame::Pong,
            Frame::Hello {
                version: u32::MAX,
                node: origin.clone(),
                parent: origin.clone(),
                nonce: ByteBuf::from(vec![3; 32]),
                capabilities: vec!["c".repeat(300); 20],
            },
            Frame::Challenge {
                version: u32::MAX,
                node: origin.clone(),
                nonce: ByteBuf::from(vec![3; 32]),
                proof: ByteBuf::from(vec![4; 64]),
                capabilities: vec!["c".repeat(300); 20],
            },
            Frame::Auth {
                proof: ByteBuf::from(vec![4; 64]),
            },
            Frame::Refused {
                code: "c".repeat(300),
                message: "m".repeat(70_000),
            },
            Frame::Rejected {
                id: u64::MAX,
                code: "c".repeat(300),
                message: "m".repeat(70_000),
            },
            Frame::Fetch {
                origin: origin.clone(),
                after_seq: u64::MAX,
            },
            Frame::OriginRefused {
                id: u64::MAX,
                origin,
                seq: u64::MAX,
                code: "c".repeat(300),
                message: "m".repeat(70_000),
            },
        ];
        for f in frames {
            let bound = f.encoded_len_bound();
            let bytes = f.encode();
            assert!(
                bytes.len() <= bound,
                "{}: {} > {bound}",
                f.name(),
                bytes.len()
            );
            assert_eq!(bytes.capacity(), bound, "{}: the buffer grew", f.name());
            assert_eq!(bytes, rmp_serde::to_vec_named(&f).unwrap(), "{}", f.name());
        }
    }
}
