//! What the protocol's state machines see of the node: the topology, the
//! durable log (parent side) and the log to send upward (child side).

use ed25519_dalek::VerifyingKey;
use gridsync_model::chunk::EncodedChunk;
use gridsync_model::{Chunk, Hash32};
use gridsync_protocol::{LocalLog, MovedHeads, StoredLog, TopologyView};
use gridsync_store::Store;

use crate::state::NodeState;
use gridsync_deploy::topology::Topology;

pub(super) struct TopoView<'a>(pub(super) &'a Topology);

impl TopologyView for TopoView<'_> {
    fn parent_of(&self, id: &str) -> Option<String> {
        self.0.node(id).and_then(|n| n.parent.clone())
    }
    fn key(&self, id: &str) -> Option<VerifyingKey> {
        self.0.key(id)
    }
    fn key_at(&self, origin: &str, head_seq: u64) -> Option<VerifyingKey> {
        self.0.key_at(origin, head_seq)
    }
    fn is_retired(&self, id: &str) -> bool {
        self.0.is_retired(id)
    }
    fn in_subtree(&self, root: &str, node: &str) -> bool {
        let mut at = node;
        for _ in 0..1024 {
            if at == root {
                return true;
            }
            match self.0.node(at).and_then(|n| n.parent.as_deref()) {
                Some(p) => at = p,
                None => return false,
            }
        }
        false
    }
    fn subtree(&self, root: &str) -> Vec<String> {
        self.0.subtree(root)
    }
}

pub(super) struct StoreView<'a>(pub(super) &'a Store);

/// What a child sends up: its log, less origins no longer in its subtree
/// (a community moved to another street: its new street forwards it, and
/// this node keeps its history without offering it upward).
pub(super) struct UpwardView<'a> {
    log: StoreView<'a>,
    topology: &'a Topology,
    me: &'a str,
}

impl LocalLog for UpwardView<'_> {
    fn heads(&self) -> Vec<(String, u64)> {
        let mut heads = LocalLog::heads(&self.log);
        heads.retain(|(o, _)| TopoView(self.topology).in_subtree(self.me, o));
        heads
    }
    fn heads_since(&self, since: u64) -> MovedHeads {
        let mut moved = self.log.heads_since(since);
        moved
            .heads
            .retain(|(o, _)| TopoView(self.topology).in_subtree(self.me, o));
        moved
    }
    fn encoded_chunks_after(
        &self,
        origin: &str,
        after_seq: u64,
        bytes_max: usize,
    ) -> Vec<EncodedChunk> {
        LocalLog::encoded_chunks_after(&self.log, origin, after_seq, bytes_max)
    }
    fn received_at(&self, origin: &str, seq: u64) -> Option<i64> {
        self.log.received_at(origin, seq)
    }
    fn hash_at(&self, origin: &str, seq: u64) -> Option<Hash32> {
        LocalLog::hash_at(&self.log, origin, seq)
    }
}

impl StoredLog for StoreView<'_> {
    fn heads(&self) -> Vec<(String, u64, Hash32)> {
        self.0.head_positions()
    }
    fn head(&self, origin: &str) -> Option<(u64, Hash32)> {
        self.0.head(origin).map(|h| (h.seq, h.hash))
    }
    fn hash_at(&self, origin: &str, seq: u64) -> Option<Hash32> {
        self.0.hash_at(origin, seq).ok().flatten()
    }
    /// Durable chunks of `origin` after `after_seq`, about `bytes_max` bytes.
    fn chunks_after(&self, origin: &str, after_seq: u64, bytes_max: usize) -> Vec<Chunk> {
        match self.0.read_origin_bytes(origin, after_seq, bytes_max) {
            Ok(v) => v.into_iter().map(|c| c.chunk).collect(),
            Err(e) => {
                tracing::error!(error = %e, origin, "cannot read the log to forward it");
                Vec::new()
            }
        }
    }
}

impl LocalLog for StoreView<'_> {
    fn heads(&self) -> Vec<(String, u64)> {
        self.0.readable_heads().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the heads to forward the log");
            Vec::new()
        })
    }
    fn encoded_chunks_after(
        &self,
        origin: &str,
        after_seq: u64,
        bytes_max: usize,
    ) -> Vec<EncodedChunk> {
        self.0
            .read_origin_encoded(origin, after_seq, bytes_max)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, origin, "cannot read the log to forward it");
                Vec::new()
            })
    }
    fn received_at(&self, origin: &str, seq: u64) -> Option<i64> {
        self.0.received_at(origin, seq).ok().flatten()
    }
    fn heads_since(&self, since: u64) -> MovedHeads {
        match self.0.heads_since(since) {
            Some((heads, stamp)) => MovedHeads {
                heads,
                stamp,
                full: since == 0,
            },
            None => MovedHeads {
                heads: LocalLog::heads(self),
                stamp: 0,
                full: true,
            },
        }
    }
    fn hash_at(&self, origin: &str, seq: u64) -> Option<Hash32> {
        if seq == 0 {
            return Some(gridsync_model::ZERO_HASH);
        }
        self.0.hash_at(origin, seq).ok().flatten()
    }
}

pub(super) fn upward_view(state: &NodeState) -> UpwardView<'_> {
    UpwardView {
        log: StoreView(&state.store),
        topology: &state.topology,
        me: &state.config.id,
    }
}
