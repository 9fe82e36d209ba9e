//! Deterministic simulation of a whole tree (1 district, 3 streets, 9
//! communities) in one thread with simulated time. The network drops,
//! duplicates, delays and reorders frames; links partition and heal; nodes
//! crash and restart, losing every persist that was not yet flushed.
//! Communities crash too: their own appends are *applied* (visible to a
//! buggy reader, as sled shows an applied batch) before they are durable,
//! a crash loses what was not durable yet, and the grid workers' retries
//! then create different events (new times) at those seqs. Communities are
//! also restored from an older backup: they must pull their lost tail back
//! from the parent before taking posts again.
//!
//! Checked for every seed:
//! * no node ever acknowledged an event it later lost (checked at every
//!   crash and at the end);
//! * no equivocation, no refused origin, and no origin finding its parent
//!   ahead of it unless it was restored from a backup;
//! * after healing, every ancestor holds exactly each community's final
//!   chain, once, contiguous, and verified;
//! * on a connection whose frames all arrived in order, the parent's lag
//!   reports merged per origin equal the child's lag when it sent each:
//!   its head, and when it received the oldest event the parent had not
//!   acknowledged (the log's receipt times are the appends' generations,
//!   so naming the wrong entry shows).
//!
//! `GRIDSYNC_SIM_SEEDS` (default 10,000) seeds per run; a failure prints the
//! seed and `GRIDSYNC_SIM_SEED=<seed>` replays exactly that one. Three
//! planted bugs (ack before durable; resume from the child's memory; read
//! past the durable point) must be caught.

mod common;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use ed25519_dalek::{SigningKey, VerifyingKey};
use gridsync_model::chunk::EncodedChunk;
use gridsync_model::{Chunk, Hash32, SignedHead, ZERO_HASH};
use gridsync_protocol::{
    ChildConfig, ChildSession, Frame, LagReport, LocalLog, MovedHeads, Output, OwnChain,
    ParentConfig, ParentSession, StoredLog, TopologyView,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const STREETS: usize = 3;
const COMMUNITIES_PER_STREET: usize = 3;
const CHUNKS_PER_COMMUNITY: usize = 8;
const EVENTS_PER_CHUNK: u64 = 3;
const FRAME_BYTES_MAX: usize = 1 << 20;

/// Node 0 is the district, 1..=3 streets, then communities.
struct Tree {
    ids: Vec<String>,
    parent: Vec<Option<usize>>,
    keys: Vec<SigningKey>,
}

fn build_tree() -> Tree {
    let mut ids = vec!["district".to_owned()];
    let mut parent = vec![None];
    for s in 0..STREETS {
        ids.push(format!("street{s}"));
        parent.push(Some(0));
    }
    for s in 0..STREETS {
        for c in 0..COMMUNITIES_PER_STREET {
            ids.push(format!("street{s}-c{c}"));
            parent.push(Some(1 + s));
        }
    }
    let keys: Vec<SigningKey> = (0..ids.len())
        .map(|i| SigningKey::from_bytes(&[i as u8 + 1; 32]))
        .collect();
    Tree { ids, parent, keys }
}

/// The next chunk a community creates after `(seq, prev)`, its head naming
/// the head before it (`after`, as an origin's writer signs: so a parent
/// checks one signature for a run of them in a batch): its events'
/// content depends on `now`, so a retry after a crash makes different
/// events at the same seqs.
fn make_chunk(
    origin: &str,
    key: &SigningKey,
    (seq, prev): (u64, Hash32),
    after: Hash32,
    now: i64,
) -> Chunk {
    let (events, prev) = common::visit_events(
        origin,
        seq + 1..=seq + EVENTS_PER_CHUNK,
        prev,
        1_580_000_000_000,
        1_580_000_000_000 + now,
    );
    let head = SignedHead::sign_after(key, (origin, seq + EVENTS_PER_CHUNK, prev), now, after);
    Chunk {
        origin: origin.to_owned(),
        events,
        head,
    }
}

impl Tree {
    fn index(&self, id: &str) -> Option<usize> {
        self.ids.iter().position(|x| x == id)
    }

    fn is_community(&self, n: usize) -> bool {
        n > STREETS
    }
}

impl TopologyView for Tree {
    fn subtree(&self, root: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .ids
            .iter()
            .filter(|id| self.in_subtree(root, id))
            .cloned()
            .collect();
        out.sort_by_key(|id| id != root);
        out
    }
    fn parent_of(&self, id: &str) -> Option<String> {
        self.index(id)
            .and_then(|i| self.parent[i])
            .map(|p| self.ids[p].clone())
    }
    fn key(&self, id: &str) -> Option<VerifyingKey> {
        self.index(id).map(|i| self.keys[i].verifying_key())
    }
    fn key_at(&self, id: &str, _head_seq: u64) -> Option<VerifyingKey> {
        self.key(id)
    }
    fn in_subtree(&self, root: &str, node: &str) -> bool {
        let (Some(r), Some(mut n)) = (self.index(root), self.index(node)) else {
            return false;
        };
        loop {
            if n == r {
                return true;
            }
            match self.parent[n] {
                Some(p) => n = p,
                None => return false,
            }
        }
    }
}

/// A node's durable log: per origin, chunks and per-seq hashes.
#[derive(Default, Clone)]
struct SimLog {
    chunks: BTreeMap<String, Vec<Chunk>>,
    hashes: BTreeMap<String, Vec<Hash32>>,
    /// Per origin and seq, when this log received the event: the
    /// generation of the append that brought it (unique and increasing,
    /// so a lag report naming the wrong entry's receipt is told apart).
    received: BTreeMap<String, Vec<i64>>,
    /// Per origin, the generation of the append that last moved its head
    /// (`LocalLog::heads_since`, as the store does).
    moved: BTreeMap<String, u64>,
}

/// Generations of appends, shared by every log: a log copied over another
/// (a crash, a restored backup) never hands out a stamp that hides a
/// later move.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl SimLog {
    /// Appends like the real store: trims what is already held (checking it
    /// is the same), refuses gaps and forks.
    fn append(&mut self, chunk: &Chunk) -> Result<(), String> {
        let hashes = self.hashes.entry(chunk.origin.clone()).or_default();
        let head = hashes.len() as u64;
        if chunk.last_seq() <= head {
            return if hashes[chunk.last_seq() as usize - 1] == chunk.head.hash {
                Ok(())
            } else {
                Err("fork".into())
            };
        }
        if chunk.first_seq() > head + 1 {
            return Err(format!(
                "gap: holds {head}, chunk starts {}",
                chunk.first_seq()
            ));
        }
        let suffix = chunk.suffix_after(head).expect("last > head");
        let prev = if head == 0 {
            ZERO_HASH
        } else {
            hashes[head as usize - 1]
        };
        let verified = suffix
            .check_chain(head + 1, &prev)
            .map_err(|e| e.to_string())?;
        hashes.extend(verified.iter().map(|v| v.hash));
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let at = i64::try_from(generation).expect("generations fit an i64");
        let received = self.received.entry(chunk.origin.clone()).or_default();
        received.resize(hashes.len(), at);
        self.moved.insert(chunk.origin.clone(), generation);
        self.chunks
            .entry(chunk.origin.clone())
            .or_default()
            .push(suffix);
        Ok(())
    }
}

impl SimLog {
    fn chunks_after_seq(&self, origin: &str, after_seq: u64, bytes_max: usize) -> Vec<Chunk> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for c in self.chunks.get(origin).into_iter().flatten() {
            if c.last_seq() <= after_seq {
                continue;
            }
            bytes += c.events.iter().map(|e| e.envelope.len()).sum::<usize>();
            out.push(c.clone());
            if bytes >= bytes_max {
                break;
            }
        }
        out
    }

    fn seq(&self, origin: &str) -> u64 {
        self.hashes.get(origin).map_or(0, |h| h.len() as u64)
    }

    fn head_or_zero(&self, origin: &str) -> (u64, Hash32) {
        StoredLog::head(self, origin).unwrap_or((0, ZERO_HASH))
    }

    /// The digest of the origin's newest signed head held (zeros for none).
    fn after(&self, origin: &str) -> Hash32 {
        self.chunks
            .get(origin)
            .and_then(|c| c.last())
            .map_or(ZERO_HASH, |c| c.head.digest())
    }
}

impl LocalLog for SimLog {
    fn heads(&self) -> Vec<(String, u64)> {
        self.hashes
            .iter()
            .map(|(o, h)| (o.clone(), h.len() as u64))
            .collect()
    }
    fn encoded_chunks_after(
        &self,
        origin: &str,
        after_seq: u64,
        bytes_max: usize,
    ) -> Vec<EncodedChunk> {
        self.chunks_after_seq(origin, after_seq, bytes_max)
            .iter()
            .map(EncodedChunk::from)
            .collect()
    }
    fn received_at(&self, origin: &str, seq: u64) -> Option<i64> {
        let i = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.received.get(origin)?.get(i).copied()
    }
    fn heads_since(&self, since: u64) -> MovedHeads {
        let heads = self
            .moved
            .iter()
            .filter(|(_, at)| **at > since)
            .map(|(o, _)| (o.clone(), self.seq(o)))
            .collect();
        MovedHeads {
            heads,
            stamp: GENERATION.load(std::sync::atomic::Ordering::Relaxed),
            full: since == 0,
        }
    }
    fn hash_at(&self, origin: &str, seq: u64) -> Option<Hash32> {
        if seq == 0 {
            return Some(ZERO_HASH);
        }
        StoredLog::hash_at(self, origin, seq)
    }
}

impl StoredLog for SimLog {
    fn heads(&self) -> Vec<(String, u64, Hash32)> {
        self.hashes
            .iter()
            .map(|(o, h)| (o.clone(), h.len() as u64, *h.last().expect("non-empty")))
            .collect()
    }
    fn head(&self, origin: &str) -> Option<(u64, Hash32)> {
        self.hashes
            .get(origin)
            .and_then(|h| h.last().map(|l| (h.len() as u64, *l)))
    }
    fn hash_at(&self, origin: &str, seq: u64) -> Option<Hash32> {
        self.hashes
            .get(origin)
            .and_then(|h| h.get(seq.checked_sub(1)? as usize).copied())
    }
    fn chunks_after(&self, origin: &str, after_seq: u64, bytes_max: usize) -> Vec<Chunk> {
        self.chunks_after_seq(origin, after_seq, bytes_max)
    }
}

#[derive(Clone, Copy, Default)]
struct Bugs {
    ack_before_durable: bool,
    resume_from_memory: bool,
    /// A community's sender reads its own appends before they are durable
    /// (review F1: sled shows applied batches to readers).
    read_past_durable: bool,
}

impl Bugs {
    fn any(self) -> bool {
        self.ack_before_durable || self.resume_from_memory || self.read_past_durable
    }
}

struct Persist {
    conn: u64,
    batch: u64,
    chunks: Vec<Chunk>,
}

struct Node {
    up: bool,
    /// What is durable.
    log: SimLog,
    /// A community's log as readers of the live store would see it: the
    /// durable log plus its own appends applied but not yet durable.
    applied: SimLog,
    local_flush_scheduled: bool,
    /// A community restored from a backup takes no posts until its parent
    /// has confirmed (or given back) its chain.
    hold_posts: bool,
    /// Restored since its parent last confirmed its chain: finding the
    /// parent ahead is expected.
    restored: bool,
    backup: Option<SimLog>,
    disk: Vec<Persist>,
    /// Connection id and session toward the parent.
    up_link: Option<(u64, ChildSession)>,
    /// The last child session, kept for the resume-from-memory bug.
    old_child: Option<ChildSession>,
    down: HashMap<u64, ParentSession>,
    /// Highest seq per origin this node has acknowledged to a child.
    acked: BTreeMap<String, u64>,
    backoff_ms: i64,
    partitioned_until: i64,
}

#[derive(Debug)]
enum Ev {
    Deliver {
        conn: u64,
        to_parent: bool,
        bytes: Vec<u8>,
        /// The sender's count of frames sent on `conn` toward the parent.
        no: u64,
    },
    Closed {
        conn: u64,
        to_parent: bool,
    },
    Flush {
        node: usize,
    },
    Tick {
        node: usize,
    },
    Append {
        node: usize,
    },
    Crash {
        node: usize,
    },
    /// A community's own appends become durable.
    LocalFlush {
        node: usize,
    },
    Backup {
        node: usize,
    },
    Restore {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Connect {
        node: usize,
    },
    Partition {
        node: usize,
    },
}

struct Sim<'t> {
    tree: &'t Tree,
    rng: StdRng,
    now: i64,
    queue: BinaryHeap<Reverse<(i64, u64, usize)>>,
    events: HashMap<usize, Ev>,
    counter: u64,
    nodes: Vec<Node>,
    /// conn id -> (child node, parent node, open)
    conns: HashMap<u64, (usize, usize, bool)>,
    next_conn: u64,
    faults_until: i64,
    bugs: Bugs,
    failure: Option<String>,
    lag: LagCheck,
}

/// The parent's view of a child's lag reports, merged per origin as the
/// node merges them, against the child's heads — and when it received the
/// oldest event its parent had not acknowledged — when it sent each report
/// (`lag-changes-v1` sends only what changed): on a connection whose frames
/// to the parent all arrived, once each and in order — what TCP gives the
/// real link — they are equal at every report.
#[derive(Default)]
struct LagCheck {
    /// Per connection: frames sent toward the parent, and received in order.
    sent: HashMap<u64, u64>,
    received: HashMap<u64, u64>,
    /// Connections where one was lost, repeated or overtaken.
    disordered: HashSet<u64>,
    /// The child's lag when it sent frame `(conn, no)` with a report: per
    /// origin its head and, when the parent has not acknowledged it all,
    /// when it received the oldest event the parent lacks.
    expected: HashMap<(u64, u64), BTreeMap<String, Lag>>,
    merged: HashMap<u64, BTreeMap<String, Lag>>,
}

/// An origin's head and the receipt time of its oldest unacknowledged event.
type Lag = (u64, Option<i64>);

/// Reports compared by [`LagCheck`], over all seeds run.
static LAG_CHECKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

const FAULTS_MS: i64 = 4_000;

/// Communities that pulled a lost tail back from their parent, over all
/// seeds run (the honest run checks the repair path was exercised).
static REPAIRS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const END_MS: i64 = 40_000;

impl<'t> Sim<'t> {
    fn new(tree: &'t Tree, seed: u64, bugs: Bugs) -> Self {
        let nodes = (0..tree.ids.len())
            .map(|_| Node {
                up: true,
                log: SimLog::default(),
                applied: SimLog::default(),
                local_flush_scheduled: false,
                hold_posts: false,
                restored: false,
                backup: None,
                disk: Vec::new(),
                up_link: None,
                old_child: None,
                down: HashMap::new(),
                acked: BTreeMap::new(),
                backoff_ms: 20,
                partitioned_until: 0,
            })
            .collect();
        let mut sim = Sim {
            tree,
            rng: StdRng::seed_from_u64(seed),
            now: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            counter: 0,
            nodes,
            conns: HashMap::new(),
            next_conn: 1,
            faults_until: FAULTS_MS,
            bugs,
            failure: None,
            lag: LagCheck::default(),
        };
        for n in 0..tree.ids.len() {
            sim.at(0, Ev::Tick { node: n });
            if tree.parent[n].is_some() {
                let t = sim.rng.gen_range(0..50);
                sim.at(t, Ev::Connect { node: n });
            }
            if tree.is_community(n) {
                let t = sim.rng.gen_range(0..800);
                sim.at(t, Ev::Append { node: n });
            }
        }
        // Faults during the first seconds: crashes (of any node), partitions,
        // and communities restored from an older backup.
        let n_crashes = sim.rng.gen_range(0..8);
        for _ in 0..n_crashes {
            let node = sim.rng.gen_range(0..tree.ids.len());
            let t = sim.rng.gen_range(0..FAULTS_MS);
            sim.at(t, Ev::Crash { node });
        }
        if sim.rng.gen_bool(0.3) {
            let node = sim.rng.gen_range(1 + STREETS..tree.ids.len());
            let t = sim.rng.gen_range(0..FAULTS_MS / 2);
            sim.at(t, Ev::Backup { node });
            let later = sim.rng.gen_range(t + 1..FAULTS_MS);
            sim.at(later, Ev::Restore { node });
        }
        let n_parts = sim.rng.gen_range(0..6);
        for _ in 0..n_parts {
            let node = sim.rng.gen_range(1..tree.ids.len());
            let t = sim.rng.gen_range(0..FAULTS_MS);
            sim.at(t, Ev::Partition { node });
        }
        sim
    }

    fn at(&mut self, t: i64, ev: Ev) {
        self.counter += 1;
        let id = self.counter as usize;
        self.events.insert(id, ev);
        self.queue.push(Reverse((t, self.counter, id)));
    }

    fn faulty(&self) -> bool {
        self.now < self.faults_until
    }

    fn fail(&mut self, msg: String) {
        if self.failure.is_none() {
            self.failure = Some(format!("t={}ms: {msg}", self.now));
        }
    }

    fn child_cfg(&self, n: usize) -> ChildConfig {
        let p = self.tree.parent[n].expect("has parent");
        ChildConfig {
            node_id: self.tree.ids[n].clone(),
            parent_id: self.tree.ids[p].clone(),
            parent_key: self.tree.keys[p].verifying_key(),
            key: self.tree.keys[n].clone(),
            window_batches: 3,
            batch_bytes_max: 2_000,
            heartbeat_ms: 200,
            idle_timeout_ms: 1_000,
            ack_timeout_ms: 600,
            forward_personal: false,
            // Half the children join consecutive chunks of an origin in a
            // batch, half send them as stored.
            join_bytes_max: if n.is_multiple_of(2) { 0 } else { 1_500 },
            own_previous_keys: Vec::new(),
            bug_resume_from_memory: self.bugs.resume_from_memory,
        }
    }

    fn parent_cfg(&self, n: usize, channel_binding: &[u8]) -> ParentConfig {
        ParentConfig {
            node_id: self.tree.ids[n].clone(),
            key: self.tree.keys[n].clone(),
            heartbeat_ms: 200,
            idle_timeout_ms: 1_000,
            fetch_bytes_max: 2_000,
            batch_bytes_asked: self.batch_bytes_asked(n),
            channel_binding: channel_binding.to_vec(),
            bug_ack_before_durable: self.bugs.ack_before_durable,
        }
    }

    /// What parent `n` asks of its children's batches in its welcome:
    /// odd-numbered parents ask for less than the children's own 2,000
    /// bytes, the others leave it to them.
    fn batch_bytes_asked(&self, n: usize) -> Option<usize> {
        (n % 2 == 1).then_some(700)
    }

    fn nonce(&mut self) -> [u8; 32] {
        self.rng.gen()
    }

    /// Sends bytes over a connection, with faults while faulty.
    fn transmit(&mut self, conn: u64, to_parent: bool, bytes: Vec<u8>) {
        let Some(&(c, p, open)) = self.conns.get(&conn) else {
            return;
        };
        let no = if to_parent {
            let n = self.lag.sent.entry(conn).or_insert(0);
            *n += 1;
            *n
        } else {
            0
        };
        if !open {
            return;
        }
        let partitioned = self.nodes[c].partitioned_until > self.now;
        if partitioned {
            return;
        }
        let mut copies = 1;
        let mut delay = self.rng.gen_range(1..5);
        if self.faulty() {
            if self.rng.gen_bool(0.02) {
                copies = 0;
            } else if self.rng.gen_bool(0.02) {
                copies = 2;
            }
            delay = self.rng.gen_range(1..60);
        }
        for _ in 0..copies {
            let d = if self.faulty() {
                self.rng.gen_range(1..60)
            } else {
                delay
            };
            let t = self.now + d;
            self.at(
                t,
                Ev::Deliver {
                    conn,
                    to_parent,
                    bytes: bytes.clone(),
                    no,
                },
            );
        }
        let _ = p;
    }

    fn close_conn(&mut self, conn: u64) {
        if let Some(entry) = self.conns.get_mut(&conn) {
            if entry.2 {
                entry.2 = false;
                let d = self.rng.gen_range(1..30);
                let t = self.now + d;
                self.at(
                    t,
                    Ev::Closed {
                        conn,
                        to_parent: true,
                    },
                );
                self.at(
                    t,
                    Ev::Closed {
                        conn,
                        to_parent: false,
                    },
                );
            }
        }
    }

    fn child_outputs(&mut self, n: usize, conn: u64, outs: Vec<Output>) {
        let mut queue: std::collections::VecDeque<Output> = outs.into();
        while let Some(o) = queue.pop_front() {
            match o {
                Output::Send(f) => {
                    // A report counts once the parent has welcomed the child
                    // (a ping before carries none).
                    let acked = match &self.nodes[n].up_link {
                        Some((lc, s)) if *lc == conn && s.made_progress() => Some(s.acked()),
                        _ => None,
                    };
                    // A batch stays within the smaller of the child's limit
                    // and its parent's ask, but for the chunk that crosses it.
                    if let Frame::Batch { chunks, .. } = &f {
                        let p = self.tree.parent[n].expect("has parent");
                        let asked = self.batch_bytes_asked(p).map(|b| b as u64);
                        let limit = gridsync_protocol::child::batch_limit(
                            self.child_cfg(n).batch_bytes_max,
                            asked,
                        );
                        let total: usize = chunks.iter().map(|c| c.len()).sum();
                        let largest = chunks.iter().map(|c| c.len()).max().unwrap_or(0);
                        if total > limit + largest {
                            return self.fail(format!(
                                "{} sent a batch of {total} bytes in {} chunks (largest \
                                 {largest}); its limit is {limit}",
                                self.tree.ids[n],
                                chunks.len()
                            ));
                        }
                    }
                    if let (Some(acked), Frame::Batch { .. } | Frame::Ping { .. }) = (acked, &f) {
                        let log = self.local_view(n);
                        let lag = LocalLog::heads(log).into_iter().map(|(origin, seq)| {
                            let a = acked.get(&origin).copied().unwrap_or(0);
                            let oldest = (seq > a).then(|| log.received_at(&origin, a + 1));
                            (origin, (seq, oldest.flatten()))
                        });
                        let lag = lag.collect();
                        let no = self.lag.sent.get(&conn).copied().unwrap_or(0) + 1;
                        self.lag.expected.insert((conn, no), lag);
                    }
                    self.transmit(conn, true, f.encode());
                }
                Output::Close { .. } => self.close_conn(conn),
                Output::Import { chunks } => {
                    for c in &chunks {
                        if let Err(e) = self.nodes[n].log.append(c) {
                            return self.fail(format!("{}: repair import: {e}", self.tree.ids[n]));
                        }
                    }
                    self.nodes[n].applied = self.nodes[n].log.clone();
                    if let Some((lc, mut s)) = self.nodes[n].up_link.take() {
                        let outs = s.on_repaired(self.local_view(n), self.now);
                        self.nodes[n].up_link = Some((lc, s));
                        if lc == conn {
                            queue.extend(outs);
                        }
                    }
                }
                Output::OwnChain(OwnChain::Repaired { .. }) => {
                    if !self.bugs.any() {
                        REPAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.nodes[n].hold_posts = false;
                    self.nodes[n].restored = false;
                }
                Output::OwnChain(OwnChain::Agrees) => {
                    self.nodes[n].hold_posts = false;
                    self.nodes[n].restored = false;
                }
                Output::OwnChain(OwnChain::Behind { local, parent }) => {
                    if !self.nodes[n].restored {
                        return self.fail(format!(
                            "{} holds its chain up to {local} but its parent holds {parent}, and it was never restored from a backup",
                            self.tree.ids[n]
                        ));
                    }
                }
                Output::OwnChain(OwnChain::Diverged { seq, .. }) => {
                    return self.fail(format!(
                        "{}: its parent holds a different chain at seq {seq}",
                        self.tree.ids[n]
                    ));
                }
                Output::OriginBlocked {
                    origin, message, ..
                } => {
                    return self.fail(format!(
                        "{}: parent refused origin {origin}: {message}",
                        self.tree.ids[n]
                    ));
                }
                Output::Persist { .. } | Output::Equivocation { .. } | Output::Rejected { .. } => {}
            }
        }
    }

    /// See [`LagCheck`]: called with each frame the parent session took.
    fn check_lag(&mut self, conn: u64, no: u64, reports: BTreeMap<String, LagReport>) {
        let received = self.lag.received.entry(conn).or_insert(0);
        if no != *received + 1 {
            self.lag.disordered.insert(conn);
        }
        *received = (*received).max(no);
        let merged = self.lag.merged.entry(conn).or_default();
        merged.extend(
            reports
                .into_values()
                .map(|r| (r.origin, (r.seq, r.oldest_missing_ms))),
        );
        let Some(want) = self.lag.expected.remove(&(conn, no)) else {
            return; // not a frame with a report
        };
        if self.lag.disordered.contains(&conn) || self.bugs.any() {
            return;
        }
        if *merged != want {
            let got = merged.clone();
            return self.fail(format!(
                "conn {conn}: the parent's merged lag reports {got:?} differ from the child's lag {want:?} (head, oldest unacknowledged receipt) when it sent frame {no}"
            ));
        }
        LAG_CHECKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The log a node's sender reads: only what is durable, unless the
    /// planted bug lets it see its own applied appends.
    fn local_view(&self, n: usize) -> &SimLog {
        if self.bugs.read_past_durable && self.tree.is_community(n) {
            &self.nodes[n].applied
        } else {
            &self.nodes[n].log
        }
    }

    fn parent_outputs(&mut self, n: usize, conn: u64, outs: Vec<Output>) {
        for o in outs {
            match o {
                Output::Send(f) => {
                    if let Frame::Ack { heads, .. } = &f {
                        for h in heads {
                            let a = self.nodes[n].acked.entry(h.origin.clone()).or_insert(0);
                            *a = (*a).max(h.seq);
                        }
                    }
                    self.transmit(conn, false, f.encode());
                }
                Output::Persist { batch, chunks } => {
                    let was_empty = self.nodes[n].disk.is_empty();
                    self.nodes[n].disk.push(Persist {
                        conn,
                        batch,
                        chunks: chunks.into_iter().map(|c| c.into_chunk()).collect(),
                    });
                    if was_empty {
                        let d = self.rng.gen_range(1..25);
                        self.at(self.now + d, Ev::Flush { node: n });
                    }
                }
                Output::Equivocation { origin, seq, .. } => {
                    self.fail(format!(
                        "equivocation reported for {origin}/{seq}, but no origin equivocates here"
                    ));
                }
                Output::Rejected { .. } => {}
                Output::Close { .. } => {
                    self.nodes[n].down.remove(&conn);
                    self.close_conn(conn);
                }
                Output::Import { .. } | Output::OriginBlocked { .. } | Output::OwnChain(_) => {
                    self.fail("a child-side output from a parent session".into());
                }
            }
        }
    }

    fn check_acks_held(&mut self, n: usize) {
        let mut lost = None;
        for (origin, seq) in &self.nodes[n].acked {
            let held = self.nodes[n].log.seq(origin);
            if held < *seq {
                lost = Some(format!(
                    "{} acked {origin} up to {seq} but holds {held}",
                    self.tree.ids[n]
                ));
            }
        }
        if let Some(m) = lost {
            self.fail(m);
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Tick { node } => {
                if self.nodes[node].up {
                    // The node sleeps until `next_tick_ms`: a tick before
                    // it must find nothing to do, or a timeout or heartbeat
                    // would come late.
                    if let Some((conn, mut s)) = self.nodes[node].up_link.take() {
                        let due = s.next_tick_ms();
                        let outs = s.on_tick(self.local_view(node), self.now);
                        if due.is_none_or(|d| self.now < d) && !outs.is_empty() {
                            self.fail(format!(
                                "child session acted at {} before its next_tick_ms {due:?}",
                                self.now
                            ));
                        }
                        self.nodes[node].up_link = Some((conn, s));
                        self.child_outputs(node, conn, outs);
                    }
                    let conns: Vec<u64> = self.nodes[node].down.keys().copied().collect();
                    for c in conns {
                        if let Some(s) = self.nodes[node].down.get_mut(&c) {
                            let due = s.next_tick_ms();
                            let outs = s.on_tick(self.now);
                            if due.is_none_or(|d| self.now < d) && !outs.is_empty() {
                                self.fail(format!(
                                    "parent session acted at {} before its next_tick_ms {due:?}",
                                    self.now
                                ));
                            }
                            self.parent_outputs(node, c, outs);
                        }
                    }
                }
                self.at(self.now + 100, Ev::Tick { node });
            }
            Ev::Append { node } => {
                if !self.nodes[node].up || self.nodes[node].hold_posts {
                    self.at(self.now + 50, Ev::Append { node });
                    return;
                }
                let origin = self.tree.ids[node].clone();
                let applied = &self.nodes[node].applied;
                if applied.seq(&origin) >= CHUNKS_PER_COMMUNITY as u64 * EVENTS_PER_CHUNK {
                    return; // done; a crash or restore schedules more
                }
                let chunk = make_chunk(
                    &origin,
                    &self.tree.keys[node],
                    applied.head_or_zero(&origin),
                    applied.after(&origin),
                    self.now,
                );
                self.nodes[node]
                    .applied
                    .append(&chunk)
                    .expect("own chain appends");
                if !self.nodes[node].local_flush_scheduled {
                    self.nodes[node].local_flush_scheduled = true;
                    let d = self.rng.gen_range(2..40);
                    self.at(self.now + d, Ev::LocalFlush { node });
                    // Now and then the power fails while the commit is in
                    // flight (applied, not durable yet).
                    if self.faulty() && self.rng.gen_bool(0.05) {
                        let t = self.now + self.rng.gen_range(0..d);
                        self.at(t, Ev::Crash { node });
                    }
                }
                let d = self.rng.gen_range(5..300);
                self.at(self.now + d, Ev::Append { node });
            }
            Ev::LocalFlush { node } => {
                self.nodes[node].local_flush_scheduled = false;
                if !self.nodes[node].up {
                    return;
                }
                let origin = self.tree.ids[node].clone();
                let from = self.nodes[node].log.seq(&origin);
                for c in self.nodes[node]
                    .applied
                    .chunks_after_seq(&origin, from, usize::MAX)
                {
                    self.nodes[node]
                        .log
                        .append(&c)
                        .expect("applied chunks chain");
                }
                self.local_append(node);
            }
            Ev::Backup { node } => {
                self.nodes[node].backup = Some(self.nodes[node].log.clone());
            }
            Ev::Restore { node } => {
                let Some(backup) = self.nodes[node].backup.take() else {
                    return;
                };
                // Power off, copy the backup over the data, power on.
                self.step(Ev::Crash { node });
                self.nodes[node].log = backup.clone();
                self.nodes[node].applied = backup;
                self.nodes[node].hold_posts = true;
                self.nodes[node].restored = true;
            }
            Ev::Connect { node } => {
                if !self.nodes[node].up || self.nodes[node].up_link.is_some() {
                    return;
                }
                let p = self.tree.parent[node].expect("has parent");
                if !self.nodes[p].up || self.nodes[node].partitioned_until > self.now {
                    let b = self.backoff(node);
                    self.at(self.now + b, Ev::Connect { node });
                    return;
                }
                let conn = self.next_conn;
                self.next_conn += 1;
                self.conns.insert(conn, (node, p, true));
                let pn = self.nonce();
                // Each connection is its own (simulated) TLS session.
                let channel = self.nonce();
                let session = ParentSession::new(self.parent_cfg(p, &channel), pn, self.now);
                self.nodes[p].down.insert(conn, session);
                let mut child = match self.nodes[node].old_child.take() {
                    Some(old) => old.reconnect(),
                    None => ChildSession::new(self.child_cfg(node)),
                };
                let cn = self.nonce();
                let outs = child.on_open(cn, &channel, self.now);
                self.nodes[node].up_link = Some((conn, child));
                self.child_outputs(node, conn, outs);
            }
            Ev::Deliver {
                conn,
                to_parent,
                bytes,
                no,
            } => {
                let Some(&(c, p, open)) = self.conns.get(&conn) else {
                    return;
                };
                if !open {
                    return;
                }
                let frame = match Frame::decode(&bytes, FRAME_BYTES_MAX) {
                    Ok(f) => f,
                    Err(e) => return self.fail(format!("undecodable frame: {e}")),
                };
                if to_parent {
                    if !self.nodes[p].up {
                        return;
                    }
                    let Some(mut s) = self.nodes[p].down.remove(&conn) else {
                        return;
                    };
                    let outs = s.on_frame(frame, self.tree, &self.nodes[p].log, self.now);
                    let reports = s.take_lag();
                    self.nodes[p].down.insert(conn, s);
                    self.check_lag(conn, no, reports);
                    self.parent_outputs(p, conn, outs);
                } else {
                    if !self.nodes[c].up {
                        return;
                    }
                    let Some((lc, mut s)) = self.nodes[c].up_link.take() else {
                        return;
                    };
                    if lc != conn {
                        self.nodes[c].up_link = Some((lc, s));
                        return;
                    }
                    let outs = s.on_frame(frame, self.local_view(c), self.now);
                    self.nodes[c].up_link = Some((lc, s));
                    self.child_outputs(c, conn, outs);
                }
            }
            Ev::Closed { conn, to_parent } => {
                let Some(&(c, p, _)) = self.conns.get(&conn) else {
                    return;
                };
                if to_parent {
                    self.nodes[p].down.remove(&conn);
                } else if matches!(self.nodes[c].up_link, Some((lc, _)) if lc == conn) {
                    let (_, s) = self.nodes[c].up_link.take().expect("checked");
                    self.nodes[c].old_child = Some(s);
                    let b = self.backoff(c);
                    self.at(self.now + b, Ev::Connect { node: c });
                }
            }
            Ev::Flush { node } => {
                if !self.nodes[node].up || self.nodes[node].disk.is_empty() {
                    return;
                }
                let p = self.nodes[node].disk.remove(0);
                let mut ok = true;
                for c in &p.chunks {
                    if let Err(e) = self.nodes[node].log.append(c) {
                        // The real store refuses such a batch; so does this one.
                        let _ = e;
                        ok = false;
                        break;
                    }
                }
                if let Some(mut s) = self.nodes[node].down.remove(&p.conn) {
                    let outs = if ok {
                        s.on_persisted(p.batch, &self.nodes[node].log, self.now)
                    } else {
                        s.on_persist_failed("refused by the log")
                    };
                    self.nodes[node].down.insert(p.conn, s);
                    self.parent_outputs(node, p.conn, outs);
                }
                self.local_append(node);
                if !self.nodes[node].disk.is_empty() {
                    let d = self.rng.gen_range(1..25);
                    self.at(self.now + d, Ev::Flush { node });
                }
            }
            Ev::Crash { node } => {
                if !self.nodes[node].up {
                    return;
                }
                self.nodes[node].up = false;
                self.nodes[node].disk.clear();
                // A community's appends that were not durable are gone.
                self.nodes[node].applied = self.nodes[node].log.clone();
                self.check_acks_held(node);
                let conns: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, (c, p, open))| *open && (*c == node || *p == node))
                    .map(|(k, _)| *k)
                    .collect();
                for c in conns {
                    self.close_conn(c);
                }
                self.nodes[node].down.clear();
                if let Some((_, s)) = self.nodes[node].up_link.take() {
                    self.nodes[node].old_child = Some(s);
                }
                let d = self.rng.gen_range(50..1500);
                self.at(self.now + d, Ev::Restart { node });
            }
            Ev::Restart { node } => {
                self.nodes[node].up = true;
                if self.tree.parent[node].is_some() {
                    self.at(self.now + 1, Ev::Connect { node });
                }
                if self.tree.is_community(node) {
                    // The grid workers retry what was not acknowledged.
                    self.at(self.now + 1, Ev::Append { node });
                }
            }
            Ev::Partition { node } => {
                let d = self.rng.gen_range(100..2000);
                self.nodes[node].partitioned_until = self.now + d;
                if let Some((conn, _)) = &self.nodes[node].up_link {
                    let conn = *conn;
                    self.close_conn(conn);
                }
            }
        }
    }

    fn backoff(&mut self, node: usize) -> i64 {
        let b = self.nodes[node].backoff_ms;
        self.nodes[node].backoff_ms = (b * 2).min(800);
        let jitter = self.rng.gen_range(0..=b / 2);
        b + jitter
    }

    fn local_append(&mut self, node: usize) {
        if let Some((conn, mut s)) = self.nodes[node].up_link.take() {
            if s.is_streaming() {
                self.nodes[node].backoff_ms = 20;
            }
            let outs = s.on_local_append(self.local_view(node), self.now);
            self.nodes[node].up_link = Some((conn, s));
            self.child_outputs(node, conn, outs);
        }
    }

    fn run(mut self) -> Result<(), String> {
        while let Some(Reverse((t, _, id))) = self.queue.pop() {
            if t > END_MS || self.failure.is_some() {
                break;
            }
            self.now = t;
            let ev = self.events.remove(&id).expect("event stored");
            self.step(ev);
        }
        if let Some(f) = self.failure.take() {
            return Err(f);
        }
        for n in 0..self.nodes.len() {
            self.check_acks_held(n);
        }
        if let Some(f) = self.failure.take() {
            return Err(f);
        }
        // Every ancestor holds exactly each community's final chain.
        for c in (0..self.tree.ids.len()).filter(|&n| self.tree.is_community(n)) {
            let origin = &self.tree.ids[c];
            let want = self.nodes[c]
                .log
                .hashes
                .get(origin)
                .cloned()
                .unwrap_or_default();
            let n_events = CHUNKS_PER_COMMUNITY as u64 * EVENTS_PER_CHUNK;
            if want.len() as u64 != n_events {
                return Err(format!(
                    "{origin} holds {} of its {n_events} events at the end",
                    want.len()
                ));
            }
            let mut a = self.tree.parent[c];
            while let Some(anc) = a {
                let log = &self.nodes[anc].log;
                let held = log.hashes.get(origin).map_or(&[][..], Vec::as_slice);
                if held.len() as u64 != n_events {
                    return Err(format!(
                        "{} holds {} of {n_events} events of {origin}",
                        self.tree.ids[anc],
                        held.len()
                    ));
                }
                if held != want.as_slice() {
                    return Err(format!(
                        "{} holds a different chain for {origin}",
                        self.tree.ids[anc]
                    ));
                }
                // Stored chunks are contiguous, non-overlapping and verify.
                let key = self.tree.keys[c].verifying_key();
                let mut next = 1u64;
                let mut prev = ZERO_HASH;
                for ch in &log.chunks[origin] {
                    if ch.first_seq() != next {
                        return Err(format!(
                            "{}: {origin} chunk starts at {} not {next}",
                            self.tree.ids[anc],
                            ch.first_seq()
                        ));
                    }
                    let v = ch.verify(next, &prev, &key).map_err(|e| e.to_string())?;
                    prev = v.last().unwrap().hash;
                    next = ch.last_seq() + 1;
                }
                a = self.tree.parent[anc];
            }
        }
        Ok(())
    }
}

fn run_seed(tree: &Tree, seed: u64, bugs: Bugs) -> Result<(), String> {
    Sim::new(tree, seed, bugs).run()
}

/// Runs `seeds` in two threads; returns the failing seeds with reasons.
fn run_many(
    tree: &Tree,
    seeds: std::ops::Range<u64>,
    bugs: Bugs,
    stop_at_first: bool,
) -> Vec<(u64, String)> {
    let threads = 2u64;
    let failures = std::sync::Mutex::new(Vec::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..threads {
            let seeds = seeds.clone();
            let (failures, stop) = (&failures, &stop);
            s.spawn(move || {
                for seed in seeds.filter(|x| x % threads == t) {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    if let Err(e) = run_seed(tree, seed, bugs) {
                        failures.lock().unwrap().push((seed, e));
                        if stop_at_first {
                            stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

#[test]
fn simulated_tree_converges_under_faults() {
    let tree = build_tree();
    if let Ok(seed) = std::env::var("GRIDSYNC_SIM_SEED") {
        let seed: u64 = seed.parse().expect("GRIDSYNC_SIM_SEED is a number");
        run_seed(&tree, seed, Bugs::default()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        return;
    }
    let n: u64 = std::env::var("GRIDSYNC_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let base: u64 = std::env::var("GRIDSYNC_SIM_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let started = std::time::Instant::now();
    let failures = run_many(&tree, base..base + n, Bugs::default(), true);
    eprintln!(
        "simulated {n} seeds in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Some((seed, e)) = failures.first() {
        panic!(
            "seed {seed} failed: {e}\nreplay: GRIDSYNC_SIM_SEED={seed} cargo test -p gridsync-protocol --test sim simulated_tree -- --nocapture"
        );
    }
    let repairs = REPAIRS.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{repairs} restored communities pulled their lost tail back from their parent");
    let lag_checks = LAG_CHECKS.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{lag_checks} merged lag reports equal to the child's heads and oldest receipts");
    assert!(lag_checks > n, "too few lag reports checked: {lag_checks}");
    if n >= 200 {
        assert!(
            repairs > 0,
            "no seed exercised the repair of a restored community"
        );
    }
}

#[test]
fn negative_control_ack_before_durable_is_caught() {
    let tree = build_tree();
    let bugs = Bugs {
        ack_before_durable: true,
        ..Bugs::default()
    };
    let failures = run_many(&tree, 0..500, bugs, true);
    assert!(
        !failures.is_empty(),
        "acking before the persist completed went unnoticed in 500 seeds"
    );
    eprintln!(
        "ack-before-durable caught at seed {}: {}",
        failures[0].0, failures[0].1
    );
}

#[test]
fn negative_control_resume_from_memory_is_caught() {
    let tree = build_tree();
    let bugs = Bugs {
        resume_from_memory: true,
        ..Bugs::default()
    };
    let failures = run_many(&tree, 0..500, bugs, true);
    assert!(
        !failures.is_empty(),
        "resuming from the child's memory went unnoticed in 500 seeds"
    );
    eprintln!(
        "resume-from-memory caught at seed {}: {}",
        failures[0].0, failures[0].1
    );
}

#[test]
fn negative_control_read_past_durable_is_caught() {
    let tree = build_tree();
    let bugs = Bugs {
        read_past_durable: true,
        ..Bugs::default()
    };
    let failures = run_many(&tree, 0..500, bugs, true);
    assert!(
        !failures.is_empty(),
        "a sender reading past the durable point went unnoticed in 500 seeds"
    );
    eprintln!(
        "read-past-durable caught at seed {}: {}",
        failures[0].0, failures[0].1
    );
}
