//! The child side of a sync connection: authenticate, learn the parent's
//! heads, check this node's own chain against the parent's copy (pulling a
//! lost tail back), then stream what the parent lacks with a bounded window
//! of unacknowledged batches.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use ed25519_dalek::{SigningKey, VerifyingKey};
use gridsync_model::chunk::EncodedChunk;
use gridsync_model::{Chunk, Hash32, ZERO_HASH};
use serde_bytes::ByteBuf;

use crate::frame::{Frame, LagReport, WireHead, PROTOCOL_VERSION};
use crate::{auth, Output};

/// What the child reads from its own log. Only durable events are offered.
pub trait LocalLog {
    /// Every origin held and its head seq.
    fn heads(&self) -> Vec<(String, u64)>;
    /// Chunks of `origin` holding the events after `after_seq`, in order,
    /// as stored (encoded, not decoded; the first may begin at or before
    /// `after_seq`), about `bytes_max` bytes in all (at least one chunk if
    /// any). The sender sends them as they are when there is nothing to
    /// trim, and decodes only the one the parent holds part of.
    fn encoded_chunks_after(
        &self,
        origin: &str,
        after_seq: u64,
        bytes_max: usize,
    ) -> Vec<EncodedChunk>;
    /// When this node received the event `seq` of `origin` (unix ms).
    fn received_at(&self, origin: &str, seq: u64) -> Option<i64>;
    /// Hash of event `seq` of `origin` (zero hash for seq 0), if held.
    fn hash_at(&self, origin: &str, seq: u64) -> Option<Hash32>;
    /// The heads that moved after `since` — a stamp an earlier answer
    /// gave; 0 for every head — and the stamp to ask from next time. The
    /// sender reads only what moved instead of every origin per batch (a
    /// street with 1,000 origins read and compared all of them per batch
    /// and per acknowledgement). A log that cannot tell answers every
    /// head each time (`full`).
    fn heads_since(&self, since: u64) -> MovedHeads {
        let _ = since;
        MovedHeads {
            heads: self.heads(),
            stamp: 0,
            full: true,
        }
    }
}

/// What [`LocalLog::heads_since`] answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MovedHeads {
    /// Origins whose head moved, and the head.
    pub heads: Vec<(String, u64)>,
    /// Where the next call starts (`since`).
    pub stamp: u64,
    /// `heads` is every head: an origin missing from it is no longer held
    /// (or no longer offered upward).
    pub full: bool,
}

#[derive(Clone, Debug)]
pub struct ChildConfig {
    pub node_id: String,
    pub parent_id: String,
    pub parent_key: VerifyingKey,
    pub key: SigningKey,
    /// Unacknowledged batches in flight at most.
    pub window_batches: usize,
    /// Chunk bytes per batch (a single larger chunk still goes alone).
    pub batch_bytes_max: usize,
    /// Send a ping after this long without sending anything.
    pub heartbeat_ms: i64,
    /// Close when nothing arrived for this long.
    pub idle_timeout_ms: i64,
    /// Close when the handshake, the oldest batch in flight or a fetch has
    /// waited this long for its answer (a lost frame would otherwise stall
    /// the window while heartbeats keep the link looking alive).
    pub ack_timeout_ms: i64,
    /// Consecutive chunks of one origin in a batch are sent as one while
    /// the joined chunk and the next fit in this many bytes (the store's
    /// chunk target; 0: never joined). The later head's signature covers the
    /// earlier events through the chain links, so the parent verifies,
    /// stores and forwards one head per joined chunk.
    pub join_bytes_max: usize,
    /// Send events' personal parts to the parent (otherwise each event goes
    /// with the salted digest of its personal part only, which still
    /// verifies).
    pub forward_personal: bool,
    /// This node's rotated-out keys, `(until_seq, key)` as in the topology:
    /// its own chunks fetched back from the parent verify with them.
    pub own_previous_keys: Vec<(u64, VerifyingKey)>,
    /// Planted bug for the simulator's negative control: resume from what
    /// this child remembers having sent instead of the parent's heads.
    pub bug_resume_from_memory: bool,
}

/// What the handshake found about this node's own chain (as an origin)
/// compared with the parent's copy of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnChain {
    /// The parent holds a prefix of (or exactly) what this node holds.
    Agrees,
    /// The parent holds more of this node's chain than this node does (a
    /// restored backup, a lost tail): stop taking posts; the missing suffix
    /// is being pulled back.
    Behind { local: u64, parent: u64 },
    /// The missing suffix was pulled back and imported: posts may resume.
    Repaired { seq: u64 },
    /// The parent's copy and this node's differ at `seq`: two histories
    /// signed with this node's key. Nothing is overwritten; posts stay
    /// stopped until an operator resolves it. `evidence`: the parent's
    /// signed chunk that does not follow ours, when one was fetched (when the
    /// parent holds no more than this node, this node's own version is sent
    /// up instead, and the parent records the evidence and refuses it).
    Diverged {
        seq: u64,
        ours: Hash32,
        theirs: Hash32,
        evidence: Option<Box<Chunk>>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    AwaitChallenge,
    AwaitWelcome,
    /// Pulling this node's own chain back from the parent.
    Repairing,
    Streaming,
    Closed,
}

struct InFlight {
    id: u64,
    sent_at_ms: i64,
    /// `(origin, last seq)` sent in the batch.
    tips: Vec<(String, u64)>,
}

/// Progress of pulling this node's own chain back.
struct Repair {
    /// Seq and hash of the last event held (locally, or verified and handed
    /// to the caller for import).
    at: (u64, Hash32),
    /// The parent's head for this origin.
    target: u64,
    /// A `Fetch` is unanswered since (ms), or an import is pending.
    fetch_sent_ms: Option<i64>,
    importing: bool,
}

/// One connection's worth of child state; make a new one per connection
/// (except for the planted bug, nothing carries over).
pub struct ChildSession {
    cfg: ChildConfig,
    state: State,
    nonce: Vec<u8>,
    /// This connection's TLS keying material (see [`Self::on_open`]).
    channel_binding: Vec<u8>,
    /// Parent's durable heads as last reported.
    acked: BTreeMap<String, u64>,
    /// Origins whose entry in `acked` moved since the caller last took
    /// them ([`Self::take_acked_moves`]); `acked_reset`: the welcome
    /// replaced them all.
    acked_moved: BTreeSet<String>,
    acked_reset: bool,
    /// Highest seq sent per origin in this session.
    sent: BTreeMap<String, u64>,
    /// The local heads as last read, and the stamp to read what moved
    /// after them ([`LocalLog::heads_since`]).
    heads: BTreeMap<String, u64>,
    heads_stamp: u64,
    /// Origins that may have events to send (a head beyond `sent`, not
    /// blocked): a superset — `fill` checks each and drops those with
    /// nothing to send — so a batch visits origins with work, not all.
    sendable: BTreeSet<String>,
    /// Origins whose head or acknowledged head moved since their last lag
    /// report (used with `lag_changes_only`).
    lag_dirty: BTreeSet<String>,
    /// Origins the parent refused in this session, with why.
    blocked: BTreeMap<String, String>,
    inflight: VecDeque<InFlight>,
    next_batch_id: u64,
    last_rx_ms: i64,
    last_tx_ms: i64,
    opened_at_ms: i64,
    /// Where the next batch's round-robin over `sendable` starts.
    rr_next: String,
    /// The handshake completed in this session (the link worked).
    welcomed: bool,
    repair: Option<Repair>,
    /// Per origin: the oldest seq the parent lacks and when this node
    /// received it, as last read for a lag report. A stored event's
    /// receipt time never changes, so it is read again only when the
    /// parent's ack moves (a street with 1,000 children read 1,000 log
    /// entries per batch while catching up when it was read for every
    /// report). One entry per origin of the heads.
    oldest_missing: HashMap<String, (u64, i64)>,
    /// The parent keeps each origin's latest lag report
    /// (`lag-changes-v1`): send only the reports that changed.
    lag_changes_only: bool,
    /// Per origin, the report last sent in this session (kept with
    /// `lag_changes_only` only).
    lag_sent: HashMap<String, (u64, Option<i64>)>,
    /// This session's batch limit: the configured one, or less when the
    /// parent's welcome asks for less (see [`batch_limit`]).
    batch_bytes_max: usize,
}

/// A session's batch limit: `own` (the child's setting), lowered to what
/// the parent's welcome asks. Whatever it asks, each batch still carries
/// at least one chunk (a limit of 0 counts as 1), so a session always
/// moves; how small is worth asking is the parent's policy.
pub fn batch_limit(own: usize, asked: Option<u64>) -> usize {
    asked.map_or(own, |asked| {
        own.min(usize::try_from(asked).unwrap_or(usize::MAX).max(1))
    })
}

mod repair;
mod send;
#[cfg(test)]
mod tests;
mod timers;

impl ChildSession {
    pub fn new(cfg: ChildConfig) -> Self {
        Self {
            batch_bytes_max: cfg.batch_bytes_max,
            cfg,
            state: State::Idle,
            nonce: Vec::new(),
            channel_binding: Vec::new(),
            acked: BTreeMap::new(),
            acked_moved: BTreeSet::new(),
            acked_reset: false,
            sent: BTreeMap::new(),
            heads: BTreeMap::new(),
            heads_stamp: 0,
            sendable: BTreeSet::new(),
            lag_dirty: BTreeSet::new(),
            blocked: BTreeMap::new(),
            inflight: VecDeque::new(),
            next_batch_id: 1,
            last_rx_ms: 0,
            last_tx_ms: 0,
            opened_at_ms: 0,
            rr_next: String::new(),
            welcomed: false,
            repair: None,
            oldest_missing: HashMap::new(),
            lag_changes_only: false,
            lag_sent: HashMap::new(),
        }
    }

    /// For the planted bug: a new session that keeps the old `sent` map.
    pub fn reconnect(self) -> Self {
        let keep = if self.cfg.bug_resume_from_memory {
            self.sent.clone()
        } else {
            BTreeMap::new()
        };
        let mut s = Self::new(self.cfg);
        s.sent = keep;
        s
    }

    pub fn is_streaming(&self) -> bool {
        self.state == State::Streaming
    }

    /// Whether this session got past the handshake, even if it has closed
    /// since (an idle or ack timeout on a poor link ends healthy sessions
    /// too): the caller resets its reconnect backoff after such a session.
    pub fn made_progress(&self) -> bool {
        self.welcomed
    }

    /// The parent's durable heads as last acknowledged.
    pub fn acked(&self) -> &BTreeMap<String, u64> {
        &self.acked
    }

    /// What moved in [`Self::acked`] since the last call: `(true, _)` when
    /// the parent's welcome replaced it all (a copy of it is to be
    /// replaced), else the origins whose acknowledged head moved, with it.
    pub fn take_acked_moves(&mut self) -> (bool, Vec<(String, u64)>) {
        let reset = std::mem::take(&mut self.acked_reset);
        let moved = std::mem::take(&mut self.acked_moved)
            .into_iter()
            .filter_map(|o| {
                let seq = *self.acked.get(&o)?;
                Some((o, seq))
            })
            .collect();
        (reset, moved)
    }

    /// Origins the parent refused in this session, with the reason.
    pub fn blocked(&self) -> &BTreeMap<String, String> {
        &self.blocked
    }

    pub fn inflight_batches(&self) -> usize {
        self.inflight.len()
    }

    fn send(&mut self, out: &mut Vec<Output>, frame: Frame, now_ms: i64) {
        self.last_tx_ms = now_ms;
        out.push(Output::Send(frame));
    }

    fn close(&mut self, out: &mut Vec<Output>, reason: String) {
        self.state = State::Closed;
        out.push(Output::Close { reason });
    }

    /// The connection is open; `nonce` is 32 fresh random bytes,
    /// `channel_binding` keying material exported from the connection's TLS
    /// session (empty on a plain connection): both proofs sign it, so a
    /// handshake relayed between two TLS sessions fails (see [`crate::auth`]).
    pub fn on_open(&mut self, nonce: [u8; 32], channel_binding: &[u8], now_ms: i64) -> Vec<Output> {
        self.channel_binding = channel_binding.to_vec();
        let mut out = Vec::new();
        self.nonce = nonce.to_vec();
        self.last_rx_ms = now_ms;
        self.opened_at_ms = now_ms;
        self.state = State::AwaitChallenge;
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            node: self.cfg.node_id.clone(),
            parent: self.cfg.parent_id.clone(),
            nonce: ByteBuf::from(self.nonce.clone()),
            capabilities: vec![
                crate::CAPABILITY_CHUNKS_V1.into(),
                crate::CAPABILITY_LAG_CHANGES_V1.into(),
                crate::CAPABILITY_HEADS_V2.into(),
            ],
        };
        self.send(&mut out, hello, now_ms);
        out
    }

    pub fn on_frame(&mut self, frame: Frame, log: &dyn LocalLog, now_ms: i64) -> Vec<Output> {
        let mut out = Vec::new();
        self.last_rx_ms = now_ms;
        match (self.state, frame) {
            (State::Closed, _) => {}
            (_, Frame::Refused { code, message }) => {
                self.close(&mut out, format!("parent refused: {code}: {message}"));
            }
            (_, Frame::Rejected { id, code, message }) => {
                self.close(
                    &mut out,
                    format!("parent rejected batch {id}: {code}: {message}"),
                );
            }
            (
                State::AwaitChallenge,
                Frame::Challenge {
                    version,
                    node,
                    nonce,
                    proof,
                    capabilities,
                },
            ) => {
                return self.on_challenge(out, version, node, &nonce, &proof, &capabilities, now_ms)
            }
            (
                State::AwaitWelcome,
                Frame::Welcome {
                    heads,
                    batch_bytes_max,
                },
            ) => {
                self.batch_bytes_max = batch_limit(self.cfg.batch_bytes_max, batch_bytes_max);
                self.on_welcome(&mut out, &heads, log, now_ms);
            }
            (
                State::Repairing,
                Frame::Fetched {
                    origin,
                    chunks,
                    head,
                },
            ) => return self.on_fetched(out, &origin, chunks, head, now_ms),
            (State::Streaming, Frame::Ack { id, heads }) => {
                if self.inflight.front().is_none_or(|f| f.id != id) {
                    let m = format!("ack for batch {id}, which is not the oldest in flight");
                    return self.fail(out, m);
                }
                self.on_ack(&mut out, heads, log, now_ms);
            }
            (
                State::Streaming,
                Frame::OriginRefused {
                    id,
                    origin,
                    seq,
                    code,
                    message,
                },
            ) => {
                let reason = format!("batch {id}, seq {seq}: {code}: {message}");
                out.push(self.on_origin_refused(origin, reason, code, message));
            }
            (_, Frame::Ping { .. }) => self.send(&mut out, Frame::Pong, now_ms),
            (_, Frame::Pong) => {}
            (state, f) => {
                return self.fail(
                    out,
                    format!("unexpected {} frame in state {state:?}", f.name()),
                );
            }
        }
        out
    }

    /// Streaming starts: the parent's heads are what it holds durably.
    fn on_welcome(
        &mut self,
        out: &mut Vec<Output>,
        heads: &[WireHead],
        log: &dyn LocalLog,
        now_ms: i64,
    ) {
        self.welcomed = true;
        self.acked = heads.iter().map(|h| (h.origin.clone(), h.seq)).collect();
        self.acked_reset = true;
        self.acked_moved.clear();
        if !self.cfg.bug_resume_from_memory || self.sent.is_empty() {
            self.sent = self.acked.clone();
        }
        // Whatever was known of the local heads is worth a look again
        // (those not read yet come with the first read, all as moved).
        self.sendable.extend(self.heads.keys().cloned());
        self.lag_dirty.extend(self.heads.keys().cloned());
        self.check_own_chain(out, heads, log, now_ms);
        if self.state == State::Streaming {
            self.fill(out, log, now_ms);
        }
    }

    /// The oldest batch in flight is durable at the parent.
    fn on_ack(
        &mut self,
        out: &mut Vec<Output>,
        heads: Vec<WireHead>,
        log: &dyn LocalLog,
        now_ms: i64,
    ) {
        let f = self.inflight.pop_front().expect("checked by the caller");
        let tips = f.tips.into_iter();
        for (origin, seq) in tips.chain(heads.into_iter().map(|h| (h.origin, h.seq))) {
            self.acknowledge(origin, seq);
        }
        self.fill(out, log, now_ms);
    }

    /// The parent holds `origin` up to `seq` durably: its acknowledged
    /// head moves (never back), and with it the origin's lag report.
    fn acknowledge(&mut self, origin: String, seq: u64) {
        let a = self.acked.entry(origin.clone()).or_insert(0);
        if seq > *a {
            *a = seq;
            self.acked_moved.insert(origin.clone());
            self.lag_dirty.insert(origin);
        }
    }

    /// The parent refuses one origin: nothing of it sent in this session
    /// counts as acknowledged, and nothing more of it is sent.
    fn on_origin_refused(
        &mut self,
        origin: String,
        reason: String,
        code: String,
        message: String,
    ) -> Output {
        for f in &mut self.inflight {
            f.tips.retain(|(o, _)| *o != origin);
        }
        self.blocked.insert(origin.clone(), reason);
        Output::OriginBlocked {
            origin,
            code,
            message,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_challenge(
        &mut self,
        out: Vec<Output>,
        version: u32,
        node: String,
        nonce: &[u8],
        proof: &[u8],
        capabilities: &[String],
        now_ms: i64,
    ) -> Vec<Output> {
        let speaks = |wanted: &str| capabilities.iter().any(|c| c == wanted);
        if !speaks(crate::CAPABILITY_CHUNKS_V1) {
            let m = format!(
                "parent {node} does not speak {}",
                crate::CAPABILITY_CHUNKS_V1
            );
            return self.fail(out, m);
        }
        if version != PROTOCOL_VERSION {
            let m = format!("parent speaks protocol {version}, this node {PROTOCOL_VERSION}");
            return self.fail(out, m);
        }
        if !speaks(crate::CAPABILITY_HEADS_V2) {
            let m = format!(
                "parent {node} does not read {} (signed heads naming the head before them, which this build signs): upgrade {node} to this build; events are held here until then",
                crate::CAPABILITY_HEADS_V2
            );
            return self.fail(out, m);
        }
        self.lag_changes_only = speaks(crate::CAPABILITY_LAG_CHANGES_V1);
        if node != self.cfg.parent_id {
            let m = format!(
                "expected parent {}, connected to {node}",
                self.cfg.parent_id
            );
            return self.fail(out, m);
        }
        if !auth::check(
            &self.cfg.parent_key,
            "parent",
            &node,
            &self.cfg.node_id,
            &self.nonce,
            &self.channel_binding,
            proof,
        ) {
            return self.fail(
                out,
                format!(
                    "parent {node} failed to prove its key over this connection \
                     (a wrong key, or a relay in the middle of the TLS channel)"
                ),
            );
        }
        let proof = auth::prove(
            &self.cfg.key,
            "child",
            &self.cfg.node_id,
            &node,
            nonce,
            &self.channel_binding,
        );
        self.state = State::AwaitWelcome;
        let mut out = out;
        self.send(
            &mut out,
            Frame::Auth {
                proof: ByteBuf::from(proof.to_vec()),
            },
            now_ms,
        );
        out
    }

    fn fail(&mut self, mut out: Vec<Output>, reason: String) -> Vec<Output> {
        self.close(&mut out, reason);
        out
    }

    /// New events were committed locally.
    pub fn on_local_append(&mut self, log: &dyn LocalLog, now_ms: i64) -> Vec<Output> {
        let mut out = Vec::new();
        if self.state == State::Streaming {
            self.fill(&mut out, log, now_ms);
        }
        out
    }
}

/// Builds a `WireHead`.
pub fn wire_head(origin: &str, seq: u64, hash: &[u8; 32]) -> WireHead {
    WireHead {
        origin: origin.to_owned(),
        seq,
        hash: ByteBuf::from(hash.to_vec()),
    }
}
