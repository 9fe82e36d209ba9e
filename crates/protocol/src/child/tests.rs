//! The lag report: the same answers whether or not a receipt time was
//! remembered, the local log read only when the parent's ack moved, and —
//! to a parent speaking `lag-changes-v1` — only the origins whose report
//! changed.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use ed25519_dalek::SigningKey;
use gridsync_model::chunk::EncodedChunk;
use gridsync_model::Hash32;

use super::{ChildConfig, ChildSession, LocalLog};

/// A log of `origins` origins, each at seq 100, event `seq` of origin `i`
/// received at `i * 1_000_000 + seq`; origins in `unreadable` answer none.
struct CountingLog {
    origins: usize,
    /// Every origin's head (100 unless a test moves it).
    head: Cell<u64>,
    reads: Cell<usize>,
    unreadable: RefCell<BTreeSet<String>>,
}

impl CountingLog {
    fn new(origins: usize) -> Self {
        Self {
            origins,
            head: Cell::new(100),
            reads: Cell::new(0),
            unreadable: RefCell::new(BTreeSet::new()),
        }
    }
}

impl LocalLog for CountingLog {
    fn heads(&self) -> Vec<(String, u64)> {
        (0..self.origins)
            .map(|i| (format!("o{i}"), self.head.get()))
            .collect()
    }
    fn encoded_chunks_after(&self, _: &str, _: u64, _: usize) -> Vec<EncodedChunk> {
        Vec::new()
    }
    fn received_at(&self, origin: &str, seq: u64) -> Option<i64> {
        self.reads.set(self.reads.get() + 1);
        if self.unreadable.borrow().contains(origin) {
            return None;
        }
        let i: i64 = origin[1..].parse().expect("o<number>");
        Some(i * 1_000_000 + seq as i64)
    }
    fn hash_at(&self, _origin: &str, _seq: u64) -> Option<Hash32> {
        None
    }
}

fn session() -> ChildSession {
    let key = SigningKey::from_bytes(&[7; 32]);
    ChildSession::new(ChildConfig {
        node_id: "s".into(),
        parent_id: "d".into(),
        parent_key: key.verifying_key(),
        key,
        window_batches: 4,
        batch_bytes_max: 256 * 1024,
        heartbeat_ms: 15_000,
        idle_timeout_ms: 45_000,
        ack_timeout_ms: 30_000,
        forward_personal: false,
        join_bytes_max: 32 * 1024,
        own_previous_keys: Vec::new(),
        bug_resume_from_memory: false,
    })
}

/// What every report must say: origin `i` acked at `acked(i)` lacks
/// `acked + 1`, received at `i * 1_000_000 + acked + 1`.
fn expected(origins: usize, acked: impl Fn(usize) -> u64) -> Vec<Option<i64>> {
    (0..origins)
        .map(|i| Some(i as i64 * 1_000_000 + acked(i) as i64 + 1))
        .collect()
}

#[test]
fn lag_reads_each_origin_once_until_its_ack_moves() {
    let log = CountingLog::new(1000);
    let mut s = session();
    // By origin number (reports come in origin order: o0, o1, o10, …).
    let times = |s: &mut ChildSession| -> Vec<Option<i64>> {
        let by: std::collections::BTreeMap<String, Option<i64>> = s
            .lag(&log)
            .into_iter()
            .map(|r| (r.origin, r.oldest_missing_ms))
            .collect();
        (0..1000).map(|i| by[&format!("o{i}")]).collect()
    };
    assert_eq!(times(&mut s), expected(1000, |_| 0));
    assert_eq!(log.reads.get(), 1000);
    // A batch later: nothing acked, nothing read again.
    assert_eq!(times(&mut s), expected(1000, |_| 0));
    assert_eq!(
        log.reads.get(),
        1000,
        "the log was read again for unchanged acks"
    );
    // The parent acks two origins: only those two are read.
    s.acknowledge("o3".into(), 40);
    s.acknowledge("o7".into(), 100);
    let want = expected(1000, |i| if i == 3 { 40 } else { 0 });
    let got = times(&mut s);
    assert_eq!(got[3], want[3]);
    assert_eq!(got[7], None, "an origin fully acked lacks nothing");
    assert_eq!(log.reads.get(), 1001);
    // Control: an origin whose receipt time cannot be read is not
    // remembered as such: it is asked again each time.
    s.acknowledge("o5".into(), 10);
    log.unreadable.borrow_mut().insert("o5".into());
    assert_eq!(times(&mut s)[5], None);
    assert_eq!(times(&mut s)[5], None);
    assert_eq!(log.reads.get(), 1003);
    log.unreadable.borrow_mut().clear();
    assert_eq!(times(&mut s)[5], Some(5_000_011));
}

#[test]
fn to_a_parent_that_merges_only_changed_reports_are_sent() {
    let log = CountingLog::new(1000);
    let mut s = session();
    s.lag_changes_only = true;
    let sent = |s: &mut ChildSession| -> Vec<(String, u64, Option<i64>)> {
        s.lag(&log)
            .into_iter()
            .map(|r| (r.origin, r.seq, r.oldest_missing_ms))
            .collect()
    };
    // The session's first report has every origin.
    assert_eq!(sent(&mut s).len(), 1000);
    assert_eq!(sent(&mut s), vec![], "nothing changed, nothing sent");
    // An ack moves the oldest missing event of one origin, another is
    // acked whole.
    s.acknowledge("o3".into(), 40);
    s.acknowledge("o7".into(), 100);
    assert_eq!(
        sent(&mut s),
        vec![
            ("o3".into(), 100, Some(3_000_041)),
            ("o7".into(), 100, None)
        ]
    );
    assert_eq!(sent(&mut s), vec![]);
    // A receipt time that cannot be read is reported as unknown once, and
    // the time once it can be read.
    s.acknowledge("o5".into(), 10);
    log.unreadable.borrow_mut().insert("o5".into());
    assert_eq!(sent(&mut s), vec![("o5".into(), 100, None)]);
    assert_eq!(sent(&mut s), vec![]);
    log.unreadable.borrow_mut().clear();
    assert_eq!(sent(&mut s), vec![("o5".into(), 100, Some(5_000_011))]);
    // New events: every origin's head moved (o7's, acked whole before,
    // now lacks its 101st).
    log.head.set(120);
    let all = sent(&mut s);
    assert_eq!(all.len(), 1000);
    assert!(all.iter().all(|(_, seq, _)| *seq == 120));
    assert!(all.contains(&("o7".into(), 120, Some(7_000_101))));
    // Control: a parent without the capability gets every origin each time.
    s.lag_changes_only = false;
    assert_eq!(sent(&mut s).len(), 1000);
    assert_eq!(sent(&mut s).len(), 1000);
}

/// One origin's chain stored as one-event chunks (phones' posts), each
/// with its own signed head.
struct OneEventLog {
    chunks: Vec<gridsync_model::Chunk>,
}

impl OneEventLog {
    fn new(n: u64, key: &SigningKey) -> Self {
        use gridsync_model::event::{event_hash, EnvelopeHeader, OccurredAt};
        let mut prev = gridsync_model::ZERO_HASH;
        let chunks = (1..=n)
            .map(|seq| {
                let client_id = format!("k{seq}");
                let header = EnvelopeHeader {
                    origin: "c1",
                    seq,
                    kind: "visit",
                    schema: 1,
                    occurred_at: OccurredAt {
                        unix_ms: 1_000 * seq as i64,
                        offset_min: 480,
                    },
                    recorded_at_ms: 2_000,
                    grid: "g",
                    recorded_by: "w",
                    client_id: &client_id,
                    prev: &prev,
                    personal_digest: None,
                };
                let envelope = header.encode_with_data(&gridsync_model::canonical::to_canonical(
                    &serde_json::json!({"household": "h", "method": "phone", "quarantine": "none"}),
                ));
                prev = event_hash(&envelope);
                gridsync_model::Chunk {
                    origin: "c1".into(),
                    events: vec![gridsync_model::EventRecord {
                        envelope,
                        personal: None,
                    }],
                    head: gridsync_model::SignedHead::sign(key, "c1", seq, prev, 5),
                }
            })
            .collect();
        Self { chunks }
    }
}

impl LocalLog for OneEventLog {
    fn heads(&self) -> Vec<(String, u64)> {
        vec![("c1".into(), self.chunks.len() as u64)]
    }
    fn encoded_chunks_after(&self, _: &str, after: u64, bytes_max: usize) -> Vec<EncodedChunk> {
        let mut bytes = 0;
        let mut out = Vec::new();
        for c in &self.chunks[after as usize..] {
            if bytes >= bytes_max {
                break;
            }
            let e = EncodedChunk::from(c);
            bytes += e.bytes.len();
            out.push(e);
        }
        out
    }
    fn received_at(&self, _: &str, seq: u64) -> Option<i64> {
        Some(seq as i64)
    }
    fn hash_at(&self, _: &str, _: u64) -> Option<Hash32> {
        None
    }
}

/// The chunks of the batches `fill` sends, decoded.
fn sent_chunks(s: &mut ChildSession, log: &OneEventLog) -> Vec<gridsync_model::Chunk> {
    let mut out = Vec::new();
    s.fill(&mut out, log, 0);
    out.into_iter()
        .flat_map(|o| match o {
            crate::Output::Send(crate::Frame::Batch { chunks, .. }) => chunks,
            _ => Vec::new(),
        })
        .map(|b| gridsync_model::Chunk::decode(&b).unwrap())
        .collect()
}

/// Phones' one-event chunks go up joined into chunks within the join
/// limit, each closed by its last event's own signed head, verifying as
/// one chunk; with the limit at 0 each goes alone, as stored.
#[test]
fn consecutive_small_chunks_go_up_joined() {
    let key = SigningKey::from_bytes(&[9; 32]);
    let log = OneEventLog::new(400, &key);
    let one = log.chunks[0].encode().len();
    let mut s = session();
    s.cfg.join_bytes_max = 8 * 1024;
    let sent = sent_chunks(&mut s, &log);
    let events: usize = sent.iter().map(|c| c.events.len()).sum();
    assert_eq!(events, 400, "every event sent once");
    assert!(
        sent.len() <= 400 * one / (6 * 1024),
        "{} chunks",
        sent.len()
    );
    let mut prev = gridsync_model::ZERO_HASH;
    let mut next = 1;
    for c in &sent {
        assert!(c.encode().len() <= 8 * 1024);
        assert_eq!(c.first_seq(), next);
        assert_eq!(c.head, log.chunks[c.last_seq() as usize - 1].head);
        let v = c.verify(next, &prev, &key.verifying_key()).unwrap();
        prev = v.last().unwrap().hash;
        next = c.last_seq() + 1;
    }
    let mut s = session();
    s.cfg.join_bytes_max = 0;
    let sent = sent_chunks(&mut s, &log);
    assert_eq!(sent, log.chunks);
}

/// A log of many origins that tells which heads moved
/// ([`LocalLog::heads_since`]) and records which origins the sender read.
struct MovingLog {
    heads: RefCell<std::collections::BTreeMap<String, u64>>,
    /// Per origin, the generation that last moved it.
    moved: RefCell<std::collections::BTreeMap<String, u64>>,
    generation: Cell<u64>,
    reads: RefCell<Vec<String>>,
    /// Answer every head each time, as a log that cannot tell.
    full_always: bool,
}

impl MovingLog {
    fn new(origins: usize, full_always: bool) -> Self {
        let log = Self {
            heads: RefCell::default(),
            moved: RefCell::default(),
            generation: Cell::new(0),
            reads: RefCell::default(),
            full_always,
        };
        for i in 0..origins {
            log.set(&format!("o{i}"), 1);
        }
        log
    }

    fn set(&self, origin: &str, seq: u64) {
        self.generation.set(self.generation.get() + 1);
        self.heads.borrow_mut().insert(origin.into(), seq);
        self.moved
            .borrow_mut()
            .insert(origin.into(), self.generation.get());
    }

    fn take_reads(&self) -> Vec<String> {
        std::mem::take(&mut *self.reads.borrow_mut())
    }
}

impl LocalLog for MovingLog {
    fn heads(&self) -> Vec<(String, u64)> {
        let heads = self.heads.borrow();
        heads.iter().map(|(o, s)| (o.clone(), *s)).collect()
    }
    fn encoded_chunks_after(&self, origin: &str, after: u64, _: usize) -> Vec<EncodedChunk> {
        self.reads.borrow_mut().push(origin.into());
        let head = self.heads.borrow().get(origin).copied().unwrap_or(0);
        // Bytes passed through as they are (`forward_personal`).
        (head > after)
            .then(|| EncodedChunk {
                first_seq: after + 1,
                last_seq: head,
                bytes: vec![0xab; 16],
            })
            .into_iter()
            .collect()
    }
    fn received_at(&self, _: &str, seq: u64) -> Option<i64> {
        Some(seq as i64)
    }
    fn hash_at(&self, _: &str, _: u64) -> Option<Hash32> {
        None
    }
    fn heads_since(&self, since: u64) -> super::MovedHeads {
        if self.full_always {
            return super::MovedHeads {
                heads: self.heads(),
                stamp: 0,
                full: true,
            };
        }
        let heads = self.heads.borrow();
        let moved = self.moved.borrow();
        super::MovedHeads {
            heads: moved
                .iter()
                .filter(|(_, at)| **at > since)
                .map(|(o, _)| (o.clone(), heads[o]))
                .collect(),
            stamp: self.generation.get(),
            full: since == 0,
        }
    }
}

/// A batch sent: its tips (origin, last seq) and its lag reports' origins.
type Sent = (Vec<(String, u64)>, Vec<String>);

/// The batches `fill` sends.
fn batches(s: &mut ChildSession, log: &MovingLog) -> Vec<Sent> {
    let mut out = Vec::new();
    s.fill(&mut out, log, 0);
    let tips: Vec<Vec<(String, u64)>> = s.inflight.iter().map(|f| f.tips.clone()).collect();
    let sent: Vec<Vec<String>> = out
        .into_iter()
        .filter_map(|o| match o {
            crate::Output::Send(crate::Frame::Batch { lag, .. }) => {
                Some(lag.into_iter().map(|r| r.origin).collect())
            }
            _ => None,
        })
        .collect();
    let first = tips.len() - sent.len();
    tips[first..].iter().cloned().zip(sent).collect()
}

/// With 1,000 origins, once everything is sent and acknowledged, a head
/// that moves makes the sender read that origin only and report its lag
/// only — whether the log tells what moved or answers every head each
/// time — and the parent's acknowledgements reach the caller as moves
/// (the welcome as a reset). Nothing is sent twice, nothing missed.
#[test]
fn a_moved_head_is_the_only_origin_read_and_reported() {
    for full_always in [false, true] {
        let log = MovingLog::new(1000, full_always);
        let mut s = session();
        s.cfg.forward_personal = true;
        s.lag_changes_only = true;
        s.state = super::State::Streaming;
        s.welcomed = true;
        s.acked_reset = true;
        // The first fill sends every origin once, in one batch.
        let first = batches(&mut s, &log);
        assert_eq!(first.len(), 1, "full_always {full_always}");
        let (tips, lag) = &first[0];
        assert_eq!(tips.len(), 1000);
        assert_eq!(lag.len(), 1000);
        assert_eq!(log.take_reads().len(), 1000);
        // Acknowledged: the caller hears of 1,000 moves, after the reset.
        let mut out = Vec::new();
        s.on_ack(&mut out, Vec::new(), &log, 0);
        let (reset, moved) = s.take_acked_moves();
        assert!(reset);
        assert_eq!(moved.len(), 1000);
        assert_eq!(s.take_acked_moves(), (false, Vec::new()));
        assert!(
            batches(&mut s, &log).is_empty(),
            "nothing new, nothing sent"
        );
        assert!(log.take_reads().is_empty(), "nothing moved, nothing read");
        // The next report (a heartbeat's) says every origin caught up.
        let caught_up = s.lag(&log);
        assert_eq!(caught_up.len(), 1000);
        assert!(caught_up.iter().all(|r| r.oldest_missing_ms.is_none()));
        assert!(s.lag(&log).is_empty());
        // One head moves.
        log.set("o500", 3);
        let next = batches(&mut s, &log);
        assert_eq!(
            next,
            vec![(vec![("o500".to_owned(), 3)], vec!["o500".to_owned()])],
            "full_always {full_always}"
        );
        assert_eq!(log.take_reads(), vec!["o500".to_owned()]);
        assert!(batches(&mut s, &log).is_empty(), "sent once");
        s.on_ack(&mut out, Vec::new(), &log, 0);
        assert_eq!(s.take_acked_moves(), (false, vec![("o500".to_owned(), 3)]));
    }
}

/// A child of this build signs v2 heads, which a parent of an earlier
/// build refuses: it needs the parent's `heads-v2` and, without it, closes
/// saying what to do — before anything is sent.
#[test]
fn a_parent_without_heads_v2_is_told_to_upgrade() {
    let log = CountingLog::new(1);
    let close_reason = |capabilities: &[&str]| {
        let mut s = session();
        s.on_open([1; 32], &[], 0);
        let challenge = crate::Frame::Challenge {
            version: crate::PROTOCOL_VERSION,
            node: "d".into(),
            nonce: serde_bytes::ByteBuf::from(vec![2; 32]),
            proof: serde_bytes::ByteBuf::from(vec![0; 64]),
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        };
        let out = s.on_frame(challenge, &log, 1);
        assert!(
            !out.iter().any(|o| matches!(o, crate::Output::Send(_))),
            "{out:?}"
        );
        out.into_iter()
            .find_map(|o| match o {
                crate::Output::Close { reason } => Some(reason),
                _ => None,
            })
            .expect("the session closes")
    };
    let earlier = close_reason(&["chunks-v1", "lag-changes-v1"]);
    assert!(
        earlier.contains("does not read heads-v2") && earlier.contains("upgrade d"),
        "{earlier}"
    );
    // Control: with it, the same (unproven) challenge fails on its proof.
    let this_build = close_reason(&["chunks-v1", "lag-changes-v1", "heads-v2"]);
    assert!(!this_build.contains("heads-v2"), "{this_build}");
}
