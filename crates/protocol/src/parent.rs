//! The parent side of a sync connection: authenticate the child, tell it
//! our heads, verify every chunk it sends (signature, chain continuity,
//! subtree membership), hand accepted chunks to the store, and acknowledge
//! a batch only once the store reports it durable.

use std::collections::{BTreeMap, HashMap, VecDeque};

use ed25519_dalek::{SigningKey, VerifyingKey};
use gridsync_model::chunk::LinkedChunk;
use gridsync_model::{Chunk, Hash32, ZERO_HASH};
use serde_bytes::ByteBuf;

use crate::child::wire_head;
use crate::frame::{Frame, LagReport, PROTOCOL_VERSION};
use crate::{auth, Output, RejectCode};

/// What the parent needs to know about the tree.
pub trait TopologyView {
    /// The parent of `id`, or `None` for the root or an unknown node.
    fn parent_of(&self, id: &str) -> Option<String>;
    /// The key `id` proves itself with now (its current key).
    fn key(&self, id: &str) -> Option<VerifyingKey>;
    /// The key that signs `origin`'s chunk whose head is at `head_seq`
    /// (keys rotate from a seq onward).
    fn key_at(&self, origin: &str, head_seq: u64) -> Option<VerifyingKey>;
    /// A retired node: its history stays verifiable, it may not connect.
    fn is_retired(&self, _id: &str) -> bool {
        false
    }
    /// Whether `node` is `root` or below it.
    fn in_subtree(&self, root: &str, node: &str) -> bool;
    /// `root` and every node below it (what [`TopologyView::in_subtree`]
    /// says yes to, `root` first).
    fn subtree(&self, root: &str) -> Vec<String>;
}

/// What the parent reads from its own (durable) log.
pub trait StoredLog {
    fn heads(&self) -> Vec<(String, u64, Hash32)>;
    fn head(&self, origin: &str) -> Option<(u64, Hash32)>;
    fn hash_at(&self, origin: &str, seq: u64) -> Option<Hash32>;
    /// Durable chunks of `origin` holding the events after `after_seq`, in
    /// order, about `bytes_max` bytes in all (at least one chunk if any).
    fn chunks_after(&self, origin: &str, after_seq: u64, bytes_max: usize) -> Vec<Chunk>;
}

#[derive(Clone, Debug)]
pub struct ParentConfig {
    pub node_id: String,
    pub key: SigningKey,
    pub heartbeat_ms: i64,
    pub idle_timeout_ms: i64,
    /// Chunk bytes per `fetched` answer.
    pub fetch_bytes_max: usize,
    /// The largest batch asked of the child in the welcome (none: the
    /// child's own limit).
    pub batch_bytes_asked: Option<usize>,
    /// Keying material exported from this connection's TLS session (empty
    /// on plain connections): both proofs sign it (see [`crate::auth`]).
    pub channel_binding: Vec<u8>,
    /// Planted bug for the simulator's negative control: acknowledge a
    /// batch as soon as it verifies, before it is durable.
    pub bug_ack_before_durable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitAuth { child: String },
    Streaming { child: String },
    Closed,
}

struct Awaiting {
    id: u64,
    /// Per origin touched: the head this batch leaves (what its ack reports).
    touched: Vec<(String, u64, Hash32)>,
    /// Per accepted chunk: its origin and how many new events it holds
    /// (released from `pending` once durable).
    released: Vec<(String, usize)>,
    acked_early: bool,
}

/// One origin's accepted, not yet durable events: seqs `first ..` and
/// their hashes. Batches are accepted at the origin's tip and become
/// durable in order, so the run only grows at its end and shrinks at its
/// start.
#[derive(Default)]
struct PendingRun {
    first: u64,
    hashes: VecDeque<Hash32>,
}

impl PendingRun {
    fn push(&mut self, first: u64, hashes: Vec<Hash32>) {
        if self.hashes.is_empty() {
            self.first = first;
        } else if self.first + self.hashes.len() as u64 != first {
            // Not at the end of the run (cannot happen: acceptance is at the
            // tip). Keep the newer events; older seqs are then read from the
            // log, as once durable.
            debug_assert!(false, "pending events not consecutive");
            self.hashes.clear();
            self.first = first;
        }
        self.hashes.extend(hashes);
    }

    fn release(&mut self, n: usize) {
        let n = n.min(self.hashes.len());
        self.hashes.drain(..n);
        self.first += n as u64;
    }

    fn get(&self, seq: u64) -> Option<Hash32> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.hashes.get(i).copied()
    }
}

/// Why one origin's chunk was refused.
struct Refusal {
    code: RejectCode,
    /// First seq refused.
    seq: u64,
    message: String,
    /// For an equivocation: the seq and the hash this node holds there.
    fork: Option<(u64, Hash32)>,
}

impl Refusal {
    fn new(code: RejectCode, seq: u64, message: String) -> Self {
        Self {
            code,
            seq,
            message,
            fork: None,
        }
    }
}

pub struct ParentSession {
    cfg: ParentConfig,
    state: State,
    nonce: Vec<u8>,
    /// Per origin: the head including batches accepted but not yet durable.
    tips: HashMap<String, (u64, Hash32)>,
    /// Hashes of accepted, not yet durable events (for duplicate checks),
    /// per origin: one run of consecutive seqs, released oldest first as
    /// batches become durable (in order).
    pending: HashMap<String, PendingRun>,
    awaiting: VecDeque<Awaiting>,
    /// Origins refused in this session: their later chunks are skipped.
    refused: HashMap<String, RejectCode>,
    last_rx_ms: i64,
    last_tx_ms: i64,
    /// The child's lag reports not yet taken ([`Self::take_lag`]): per
    /// origin the latest, for origins the topology knows only (a child
    /// cannot grow it beyond the topology).
    lag: BTreeMap<String, LagReport>,
}

mod batch;

impl ParentSession {
    /// A connection was accepted; `nonce` is 32 fresh random bytes.
    pub fn new(cfg: ParentConfig, nonce: [u8; 32], now_ms: i64) -> Self {
        Self {
            cfg,
            state: State::AwaitHello,
            nonce: nonce.to_vec(),
            tips: HashMap::new(),
            pending: HashMap::new(),
            awaiting: VecDeque::new(),
            refused: HashMap::new(),
            last_rx_ms: now_ms,
            last_tx_ms: now_ms,
            lag: BTreeMap::new(),
        }
    }

    /// The authenticated child, once known.
    pub fn child(&self) -> Option<&str> {
        match &self.state {
            State::Streaming { child } => Some(child),
            _ => None,
        }
    }

    /// The lag reports received since the last call, the latest per
    /// origin. A child speaking `lag-changes-v1` (see
    /// [`crate::CAPABILITY_LAG_CHANGES_V1`]) reports only the origins whose
    /// report changed, so the caller keeps each origin's latest.
    pub fn take_lag(&mut self) -> BTreeMap<String, LagReport> {
        std::mem::take(&mut self.lag)
    }

    /// Keeps `lag`'s reports of origins the topology knows.
    fn merge_lag(&mut self, lag: Vec<LagReport>, topo: &dyn TopologyView) {
        for r in lag {
            if topo.key(&r.origin).is_some() {
                self.lag.insert(r.origin.clone(), r);
            }
        }
    }

    pub fn last_rx_ms(&self) -> i64 {
        self.last_rx_ms
    }

    fn send(&mut self, out: &mut Vec<Output>, f: Frame, now_ms: i64) {
        self.last_tx_ms = now_ms;
        out.push(Output::Send(f));
    }

    /// Sends `frame` (a refusal), reports the rejection and closes.
    fn end(
        &mut self,
        mut out: Vec<Output>,
        frame: Frame,
        code: RejectCode,
        message: String,
        reason: String,
        now_ms: i64,
    ) -> Vec<Output> {
        self.send(&mut out, frame, now_ms);
        out.push(Output::Rejected { code, message });
        self.state = State::Closed;
        out.push(Output::Close { reason });
        out
    }

    fn refuse(
        &mut self,
        out: Vec<Output>,
        code: RejectCode,
        message: String,
        now_ms: i64,
    ) -> Vec<Output> {
        let frame = Frame::Refused {
            code: code.as_str().into(),
            message: message.clone(),
        };
        let reason = format!("{}: {message}", code.as_str());
        self.end(out, frame, code, message, reason, now_ms)
    }

    pub fn on_frame(
        &mut self,
        frame: Frame,
        topo: &dyn TopologyView,
        log: &dyn StoredLog,
        now_ms: i64,
    ) -> Vec<Output> {
        let out = Vec::new();
        self.last_rx_ms = now_ms;
        match (self.state.clone(), frame) {
            (State::Closed, _) => out,
            (
                State::AwaitHello,
                Frame::Hello {
                    version,
                    node,
                    parent,
                    nonce,
                    ..
                },
            ) => self.on_hello(out, version, node, &parent, &nonce, topo, now_ms),
            (State::AwaitAuth { child }, Frame::Auth { proof }) => {
                self.on_auth(out, child, &proof, topo, log, now_ms)
            }
            (State::Streaming { child }, Frame::Batch { id, chunks, lag }) => {
                self.merge_lag(lag, topo);
                self.on_batch(out, &child, id, chunks, topo, log, now_ms)
            }
            (State::Streaming { child }, Frame::Fetch { origin, after_seq }) => {
                self.on_fetch(out, &child, origin, after_seq, log, now_ms)
            }
            (_, Frame::Ping { lag }) => {
                let mut out = out;
                if matches!(self.state, State::Streaming { .. }) {
                    self.merge_lag(lag, topo);
                }
                self.send(&mut out, Frame::Pong, now_ms);
                out
            }
            (_, Frame::Pong) => out,
            (state, f) => {
                let m = format!("unexpected {} frame in state {state:?}", f.name());
                self.refuse(out, RejectCode::Protocol, m, now_ms)
            }
        }
    }

    /// A child says who it is: it must speak this version, be a known,
    /// live child of this node, and send a fresh nonce; the parent answers
    /// with its own proof and a nonce for the child's.
    #[allow(clippy::too_many_arguments)]
    fn on_hello(
        &mut self,
        mut out: Vec<Output>,
        version: u32,
        node: String,
        parent: &str,
        nonce: &[u8],
        topo: &dyn TopologyView,
        now_ms: i64,
    ) -> Vec<Output> {
        let refused = if version != PROTOCOL_VERSION {
            Some((RejectCode::UnsupportedVersion, format!("protocol version {version} is not spoken here (this node speaks {PROTOCOL_VERSION})")))
        } else if parent != self.cfg.node_id {
            Some((
                RejectCode::WrongParent,
                format!("this is node {}, not {parent}", self.cfg.node_id),
            ))
        } else if topo.key(&node).is_none() {
            Some((
                RejectCode::UnknownNode,
                format!("node {node:?} is not in this node's topology"),
            ))
        } else if topo.is_retired(&node) {
            Some((
                RejectCode::Retired,
                format!("node {node} is retired in this node's topology; its history stays, it may no longer connect"),
            ))
        } else if topo.parent_of(&node).as_deref() != Some(self.cfg.node_id.as_str()) {
            Some((
                RejectCode::NotAChild,
                format!("node {node} is not a child of {}", self.cfg.node_id),
            ))
        } else if nonce.len() != 32 {
            Some((RejectCode::Malformed, "hello nonce must be 32 bytes".into()))
        } else {
            None
        };
        if let Some((code, m)) = refused {
            return self.refuse(out, code, m, now_ms);
        }
        let proof = auth::prove(
            &self.cfg.key,
            "parent",
            &self.cfg.node_id,
            &node,
            nonce,
            &self.cfg.channel_binding,
        );
        let challenge = Frame::Challenge {
            version: PROTOCOL_VERSION,
            node: self.cfg.node_id.clone(),
            nonce: ByteBuf::from(self.nonce.clone()),
            proof: ByteBuf::from(proof.to_vec()),
            capabilities: vec![
                crate::CAPABILITY_CHUNKS_V1.to_owned(),
                crate::CAPABILITY_LAG_CHANGES_V1.to_owned(),
                crate::CAPABILITY_HEADS_V2.to_owned(),
            ],
        };
        self.state = State::AwaitAuth { child: node };
        self.send(&mut out, challenge, now_ms);
        out
    }

    /// The child's proof of its key over this connection: streaming starts
    /// with the heads this node holds of the child's subtree.
    fn on_auth(
        &mut self,
        mut out: Vec<Output>,
        child: String,
        proof: &[u8],
        topo: &dyn TopologyView,
        log: &dyn StoredLog,
        now_ms: i64,
    ) -> Vec<Output> {
        let key = topo.key(&child).expect("checked at hello");
        let (me, binding) = (&self.cfg.node_id, &self.cfg.channel_binding);
        if !auth::check(&key, "child", &child, me, &self.nonce, binding, proof) {
            let m = format!(
                "node {child} failed to prove its key over this connection \
                 (wrong key, a replayed session, or a relay in the middle of the TLS channel)"
            );
            return self.refuse(out, RejectCode::BadProof, m, now_ms);
        }
        // The child's subtree looked up, not every origin held scanned: a
        // street's welcome to each of its 1,000 communities was a scan of
        // 1,000 heads.
        let mut members = topo.subtree(&child);
        members.sort_unstable();
        members.dedup();
        let heads = members
            .iter()
            .filter_map(|o| log.head(o).map(|(s, h)| wire_head(o, s, &h)))
            .collect();
        self.state = State::Streaming { child };
        let batch_bytes_max = self.cfg.batch_bytes_asked.map(|b| b as u64);
        self.send(
            &mut out,
            Frame::Welcome {
                heads,
                batch_bytes_max,
            },
            now_ms,
        );
        out
    }

    /// A community pulls back its own chain (after a restore): only its own.
    fn on_fetch(
        &mut self,
        mut out: Vec<Output>,
        child: &str,
        origin: String,
        after_seq: u64,
        log: &dyn StoredLog,
        now_ms: i64,
    ) -> Vec<Output> {
        if origin != child {
            let m = format!("node {child} may fetch only its own chain, not {origin}'s");
            return self.refuse(out, RejectCode::Protocol, m, now_ms);
        }
        let chunks = log
            .chunks_after(&origin, after_seq, self.cfg.fetch_bytes_max)
            .iter()
            .filter_map(|c| c.suffix_after(after_seq))
            .map(|c| ByteBuf::from(c.encode()))
            .collect();
        let head = log.head(&origin).map_or(0, |(s, _)| s);
        let fetched = Frame::Fetched {
            origin,
            chunks,
            head,
        };
        self.send(&mut out, fetched, now_ms);
        out
    }

    fn known_hash(&self, log: &dyn StoredLog, origin: &str, seq: u64) -> Option<Hash32> {
        if seq == 0 {
            return Some(ZERO_HASH);
        }
        self.pending
            .get(origin)
            .and_then(|run| run.get(seq))
            .or_else(|| log.hash_at(origin, seq))
    }

    fn send_ack(&mut self, out: &mut Vec<Output>, id: u64, now_ms: i64) {
        let heads = self
            .awaiting
            .iter()
            .find(|a| a.id == id)
            .map(|a| {
                a.touched
                    .iter()
                    .map(|(o, s, h)| wire_head(o, *s, h))
                    .collect()
            })
            .unwrap_or_default();
        self.send(out, Frame::Ack { id, heads }, now_ms);
    }

    /// Acknowledges, in order, every leading batch that is durable (or had
    /// nothing new). `durable` is the batch just reported durable.
    fn flush_acks(
        &mut self,
        out: &mut Vec<Output>,
        _log: &dyn StoredLog,
        now_ms: i64,
        durable: Option<u64>,
    ) {
        let mut durable = durable;
        while let Some(front) = self.awaiting.front() {
            let is_durable = Some(front.id) == durable || front.touched.is_empty();
            if !is_durable {
                break;
            }
            let id = front.id;
            if !front.acked_early {
                self.send_ack(out, id, now_ms);
            }
            let a = self.awaiting.pop_front().expect("front exists");
            for (origin, n) in a.released {
                if let Some(run) = self.pending.get_mut(&origin) {
                    run.release(n);
                    if run.hashes.is_empty() {
                        self.pending.remove(&origin);
                    }
                }
            }
            durable = None;
        }
    }

    /// The store made batch `id` durable.
    pub fn on_persisted(&mut self, id: u64, log: &dyn StoredLog, now_ms: i64) -> Vec<Output> {
        let mut out = Vec::new();
        if self.state == State::Closed {
            return out;
        }
        if self.awaiting.iter().all(|a| a.id != id) {
            return out;
        }
        self.flush_acks(&mut out, log, now_ms, Some(id));
        out
    }

    /// The store failed to persist: nothing more is acknowledged.
    pub fn on_persist_failed(&mut self, reason: &str) -> Vec<Output> {
        self.state = State::Closed;
        vec![Output::Close {
            reason: format!("store failed: {reason}"),
        }]
    }

    /// When [`ParentSession::on_tick`] next has something to do — the idle
    /// timeout, or a heartbeat while streaming — on the clock of its
    /// `now_ms`; `None` once closed. The node sleeps until then instead of
    /// polling every link.
    pub fn next_tick_ms(&self) -> Option<i64> {
        if self.state == State::Closed {
            return None;
        }
        let idle = self
            .last_rx_ms
            .saturating_add(self.cfg.idle_timeout_ms)
            .saturating_add(1);
        let beat = matches!(self.state, State::Streaming { .. })
            .then(|| self.last_tx_ms.saturating_add(self.cfg.heartbeat_ms));
        Some(beat.map_or(idle, |b| b.min(idle)))
    }

    pub fn on_tick(&mut self, now_ms: i64) -> Vec<Output> {
        let mut out = Vec::new();
        if self.state == State::Closed {
            return out;
        }
        if now_ms - self.last_rx_ms > self.cfg.idle_timeout_ms {
            self.state = State::Closed;
            out.push(Output::Close {
                reason: format!(
                    "no frame from the child for {} ms",
                    now_ms - self.last_rx_ms
                ),
            });
            return out;
        }
        if matches!(self.state, State::Streaming { .. })
            && now_ms - self.last_tx_ms >= self.cfg.heartbeat_ms
        {
            self.send(&mut out, Frame::Ping { lag: Vec::new() }, now_ms);
        }
        out
    }

    fn reject(
        &mut self,
        out: Vec<Output>,
        id: u64,
        code: RejectCode,
        message: String,
        now_ms: i64,
    ) -> Vec<Output> {
        let frame = Frame::Rejected {
            id,
            code: code.as_str().into(),
            message: message.clone(),
        };
        let reason = format!("batch {id} rejected: {message}");
        self.end(out, frame, code, message, reason, now_ms)
    }
}
