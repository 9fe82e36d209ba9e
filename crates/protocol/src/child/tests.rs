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
    let times = |s: &mut ChildSession| -> Vec<Option<i64>> {
        s.lag(&log).iter().map(|r| r.oldest_missing_ms).collect()
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
    s.acked.insert("o3".into(), 40);
    s.acked.insert("o7".into(), 100);
    let want = expected(1000, |i| if i == 3 { 40 } else { 0 });
    let got = times(&mut s);
    assert_eq!(got[3], want[3]);
    assert_eq!(got[7], None, "an origin fully acked lacks nothing");
    assert_eq!(log.reads.get(), 1001);
    // Control: an origin whose receipt time cannot be read is not
    // remembered as such: it is asked again each time.
    s.acked.insert("o5".into(), 10);
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
    s.acked.insert("o3".into(), 40);
    s.acked.insert("o7".into(), 100);
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
    s.acked.insert("o5".into(), 10);
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
    assert_eq!(all[7], ("o7".into(), 120, Some(7_000_101)));
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
