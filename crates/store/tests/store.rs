//! Store behaviour on both backends: appends, idempotency, reopen with
//! verification, refusal of altered logs, large events, and a model test
//! with random reboots against a plain in-memory model.

use std::collections::BTreeMap;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use gridsync_model::ingest::{prepare, IngestContext, IngestLimits, PreparedEvent};
use gridsync_model::kinds::EventRef;
use gridsync_store::{
    AppendError, KeyLookup, Kv, MemKv, OriginIdentity, SledKv, Store, StoreConfig, StoreError,
};
use proptest::prelude::*;
use serde_json::json;

const ORIGIN: &str = "c1";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

fn keys() -> KeyLookup {
    let vk = key().verifying_key();
    Arc::new(move |o: &str, _seq: u64| (o == ORIGIN).then_some(vk))
}

fn event(client_id: &str, note_len: usize) -> PreparedEvent {
    prepared(json!({
        "kind": "visit", "occurred_at": "2020-01-28T09:30:00+08:00",
        "grid": "g1", "recorded_by": "w1", "client_id": client_id,
        "data": {"household": "h1", "method": "phone", "quarantine": "ongoing", "note": "x".repeat(note_len)}
    }))
}

/// A posted event of this origin, prepared as ingest would.
fn prepared(posted: serde_json::Value) -> PreparedEvent {
    let limits = IngestLimits::default();
    let ctx = IngestContext {
        node_id: ORIGIN,
        now_ms: 1_580_200_000_000,
        limits: &limits,
    };
    prepare(posted, &ctx, &|_: &EventRef| None, &mut rand::thread_rng()).expect("valid event")
}

fn open(kv: Arc<dyn Kv>) -> Result<Store, StoreError> {
    open_with(kv, false, false)
}

fn open_verifying(kv: Arc<dyn Kv>, verify_all_signatures: bool) -> Result<Store, StoreError> {
    open_with(kv, verify_all_signatures, false)
}

fn open_with(
    kv: Arc<dyn Kv>,
    verify_all_signatures: bool,
    verify_whole_log: bool,
) -> Result<Store, StoreError> {
    open_config(
        kv,
        StoreConfig {
            verify_all_signatures,
            verify_whole_log,
            ..StoreConfig::default()
        },
    )
}

/// This origin's store over `kv` with `config`.
fn open_config(kv: Arc<dyn Kv>, config: StoreConfig) -> Result<Store, StoreError> {
    Store::open(
        kv,
        config,
        Some(OriginIdentity {
            node_id: ORIGIN.into(),
            key: key(),
        }),
        keys(),
    )
}

/// A store whose client-id index flushes and merges after a few events.
fn open_small_index(kv: Arc<dyn Kv>) -> Store {
    open_config(
        kv,
        StoreConfig {
            client_index: gridsync_store::ClientIndexConfig {
                flush_entries: 3,
                fanout: 2,
                slice_pairs: 4,
            },
            ..StoreConfig::default()
        },
    )
    .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn append_dedup_and_reopen_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let store = open(Arc::new(SledKv::open(dir.path(), 16 << 20).unwrap())).unwrap();
        let r = rt
            .block_on(store.append(vec![event("a", 0), event("b", 0)], 1))
            .unwrap();
        assert_eq!(
            r.iter().map(|a| (a.seq, a.duplicate)).collect::<Vec<_>>(),
            vec![(1, false), (2, false)]
        );
        // A retry returns the originals and writes nothing.
        let again = rt
            .block_on(store.append(vec![event("b", 0), event("c", 0)], 2))
            .unwrap();
        assert_eq!(again[0].seq, 2);
        assert!(again[0].duplicate);
        assert_eq!(again[0].hash, r[1].hash);
        assert_eq!((again[1].seq, again[1].duplicate), (3, false));
        // Same client_id, different content: refused, batch not stored.
        let err = rt
            .block_on(store.append(vec![event("d", 0), event("a", 5)], 3))
            .unwrap_err();
        assert!(
            matches!(
                err,
                AppendError::ClientIdReused {
                    index: 1,
                    seq: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(store.head(ORIGIN).unwrap().seq, 3);
        // The same client_id twice in one batch is one event; "d", numbered
        // in the refused batch, was not kept: it is new here.
        let twice = rt
            .block_on(store.append(vec![event("d", 0), event("d", 0)], 4))
            .unwrap();
        assert_eq!(
            (
                twice[0].seq,
                twice[0].duplicate,
                twice[1].seq,
                twice[1].duplicate
            ),
            (4, false, 4, true)
        );
    }
    let store = open(Arc::new(SledKv::open(dir.path(), 16 << 20).unwrap())).unwrap();
    assert_eq!(store.head(ORIGIN).unwrap().seq, 4);
    assert_eq!(store.counts().events, 4);
    let (ev, _) = store
        .find_event(&EventRef {
            origin: ORIGIN.into(),
            seq: 3,
        })
        .unwrap()
        .unwrap();
    assert_eq!(ev.envelope.client_id, "c");
    let dup = rt.block_on(store.append(vec![event("a", 0)], 5)).unwrap();
    assert!(dup[0].duplicate);
}

#[test]
fn appends_wake_subscribers() {
    let rt = rt();
    let store = open(Arc::new(MemKv::new())).unwrap();
    let mut rx = store.subscribe();
    assert_eq!(*rx.borrow_and_update(), 0);
    let s2 = store.clone();
    rt.block_on(async move {
        let waiter = tokio::spawn(async move {
            rx.changed().await.unwrap();
            *rx.borrow()
        });
        s2.append(vec![event("w", 0)], 1).await.unwrap();
        assert_eq!(waiter.await.unwrap(), 1, "one log entry committed");
    });
}

#[test]
fn large_events_are_fragmented_below_the_blob_threshold() {
    let kv = MemKv::new();
    let rt = rt();
    let store = open(Arc::new(kv.clone())).unwrap();
    rt.block_on(store.append(vec![event("big", 1999), event("small", 0)], 1))
        .unwrap();
    let big = vec![event("big2", 1999); 1];
    rt.block_on(store.append(big, 2)).unwrap();
    for (k, v) in kv.dump() {
        assert!(
            v.len() <= gridsync_store::layout::FRAGMENT_BYTES_MAX,
            "value of {} bytes under {k:?}",
            v.len()
        );
    }
    drop(store);
    let store = open(Arc::new(kv)).unwrap();
    assert_eq!(store.head(ORIGIN).unwrap().seq, 3);
    let chunks = store.read_log(0, 100).unwrap();
    assert_eq!(
        chunks.iter().map(|c| c.chunk.events.len()).sum::<usize>(),
        3
    );
}

#[test]
fn many_events_make_many_chunks_and_read_back_in_order() {
    let kv = MemKv::new();
    let rt = rt();
    let store = open(Arc::new(kv.clone())).unwrap();
    let batch: Vec<_> = (0..1000).map(|i| event(&format!("k{i}"), 10)).collect();
    rt.block_on(store.append(batch, 1)).unwrap();
    let chunks = store.read_log(0, 10_000).unwrap();
    // ~250 KB of events, cut near the 32 KiB target.
    assert!(
        (6..=12).contains(&chunks.len()),
        "expected about 8 chunks, got {}",
        chunks.len()
    );
    let seqs: Vec<u64> = chunks
        .iter()
        .flat_map(|c| c.chunk.first_seq()..=c.chunk.last_seq())
        .collect();
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
    // read_origin from the middle starts at the chunk holding the next seq.
    let from = store.read_origin(ORIGIN, 500, 1).unwrap();
    assert!(from[0].chunk.first_seq() <= 501 && from[0].chunk.last_seq() >= 501);
    // Read by bytes: at least one chunk, and chunks only until the budget
    // is reached — the same chunks as by count.
    let by_count = store.read_origin(ORIGIN, 500, 100).unwrap();
    for budget in [1, 40_000, 70_000, 10_000_000] {
        let by_bytes = store.read_origin_bytes(ORIGIN, 500, budget).unwrap();
        let bytes: Vec<usize> = by_bytes
            .iter()
            .map(|c| c.chunk.events.iter().map(|e| e.envelope.len()).sum())
            .collect();
        assert!(!by_bytes.is_empty());
        assert!(bytes[..bytes.len() - 1].iter().sum::<usize>() < budget);
        assert!(bytes.iter().sum::<usize>() >= budget || by_bytes.len() == by_count.len());
        for (a, b) in by_bytes.iter().zip(&by_count) {
            assert_eq!(a.offset, b.offset);
        }
    }
    // Read without decoding: each chunk's stored bytes are its encoding,
    // with the seqs the index gives.
    let encoded = store.read_origin_encoded(ORIGIN, 500, 10_000_000).unwrap();
    assert_eq!(encoded.len(), by_count.len());
    for (e, c) in encoded.iter().zip(&by_count) {
        assert_eq!(e.bytes, c.chunk.encode());
        assert_eq!(
            (e.first_seq, e.last_seq),
            (c.chunk.first_seq(), c.chunk.last_seq())
        );
    }
    assert_eq!(store.read_origin_encoded(ORIGIN, 500, 1).unwrap().len(), 1);
    // Receipt times from the index and each entry's header, nothing
    // decoded: the same as the chunk read holding each seq.
    rt.block_on(store.append(vec![event("later", 10)], 7))
        .unwrap();
    for seq in [1, 2, 500, 501, 999, 1000, 1001] {
        let chunk = &store.read_origin(ORIGIN, seq - 1, 1).unwrap()[0];
        assert_eq!(
            store.received_at(ORIGIN, seq).unwrap(),
            Some(chunk.received_at_ms),
            "seq {seq}"
        );
    }
    assert_eq!(store.received_at(ORIGIN, 1001).unwrap(), Some(7));
    assert_eq!(store.received_at(ORIGIN, 1).unwrap(), Some(1));
    assert_eq!(store.received_at(ORIGIN, 1002).unwrap(), None);
    assert_eq!(store.received_at(ORIGIN, 0).unwrap(), None);
    assert_eq!(store.received_at("elsewhere", 1).unwrap(), None);
}

/// The stored keys and values of a log of `n` one-event posts.
fn one_event_posts(n: u64) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    let rt = rt();
    let base = MemKv::new();
    let store = open(Arc::new(base.clone())).unwrap();
    for i in 0..n {
        rt.block_on(store.append(vec![event(&format!("k{i}"), 0)], i as i64))
            .unwrap();
    }
    drop(store);
    base.dump()
}

#[test]
fn altered_logs_are_refused_on_open() {
    let entries = one_event_posts(5);
    let log_keys: Vec<Vec<u8>> = entries.keys().filter(|k| k[0] == b'L').cloned().collect();
    assert!(
        log_keys.len() < 5,
        "the five one-event entries share a pack: {} log keys",
        log_keys.len()
    );
    // Flip one byte in every position class of every entry (and of the
    // packs holding them: the count, an entry's length); drop the last
    // entry.
    let flipped = |k: &Vec<u8>, pos: usize| {
        let kv = MemKv::new();
        let mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = entries
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        batch[entries.keys().position(|x| x == k).unwrap()]
            .1
            .as_mut()
            .unwrap()[pos] ^= 0x20;
        kv.commit(batch).unwrap();
        kv
    };
    let mut cases: Vec<(String, MemKv, bool)> = Vec::new();
    let mut n = 0;
    for k in &log_keys {
        let v = &entries[k];
        let held = gridsync_store::layout::log_value_entries(k, v).unwrap();
        if gridsync_store::layout::is_pack(v) {
            let last_len = held.last().unwrap().1.start - 1;
            for pos in [3, last_len] {
                cases.push((format!("flip pack byte {pos}"), flipped(k, pos), false));
            }
        }
        for (_, r) in held {
            for pos in [r.start + 12, r.start + r.len() / 2, r.end - 40, r.end - 3] {
                // An entry ends in its head's signature (64 bytes) and
                // `after` (32): a v2 head, whose signature covers `after`
                // and which the origin's next head names by its digest.
                let older_signature = pos >= r.end - 40 && n + 1 < 5;
                let what = format!("flip entry {n} byte {pos}");
                cases.push((what, flipped(k, pos), older_signature));
            }
            n += 1;
        }
    }
    assert_eq!(n, 5, "every entry was found in the log's values");
    let kv = MemKv::new();
    kv.commit(
        entries
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect(),
    )
    .unwrap();
    let (last_key, last_value) = entries
        .range(log_keys.last().unwrap().clone()..)
        .next()
        .unwrap();
    let mut held = gridsync_store::layout::log_value_entries(last_key, last_value).unwrap();
    held.pop();
    let shorter = held
        .into_iter()
        .fold(None, |pack: Option<(Vec<u8>, u16)>, (_, r)| {
            let (mut v, mut count) = pack.unwrap_or_default();
            gridsync_store::layout::append_to_pack(&mut v, &mut count, &last_value[r]);
            Some((v, count))
        });
    kv.commit(vec![(last_key.clone(), shorter.map(|(v, _)| v))])
        .unwrap();
    cases.push(("drop the last entry".into(), kv, false));
    // The whole-log open recomputes every chain link and verifies each
    // origin's newest head; only an older head's own signature bytes are
    // left to the full pass (verify_all_signatures, `serve --verify-all`,
    // `audit verify`), which refuses every case. The default open checks
    // only what the checkpoint vouches for (the heads, and that the log
    // ends in them); the rest is found by `verify_log`, which a node runs
    // after it listens.
    let mut opened_at_checkpoint = 0;
    for (what, kv, older_signature) in cases {
        match open_verifying(Arc::new(kv.clone()), true) {
            // An older head's signature is named (checked in batches).
            Err(StoreError::Corrupt(msg)) if older_signature => {
                assert!(msg.contains("signature does not verify"), "{what}: {msg}");
            }
            Err(StoreError::Corrupt(msg)) => assert!(!msg.is_empty()),
            Err(other) => panic!("{what}: unexpected error {other}"),
            Ok(_) => panic!("{what}: altered log opened without complaint (verify all)"),
        }
        match open_with(Arc::new(kv.clone()), false, true) {
            Err(StoreError::Corrupt(msg)) => assert!(!msg.is_empty()),
            Err(other) => panic!("{what}: unexpected error {other}"),
            Ok(_) if older_signature => {}
            Ok(_) => panic!("{what}: altered log opened without complaint (whole log)"),
        }
        match open(Arc::new(kv)) {
            Err(StoreError::Corrupt(msg)) => assert!(!msg.is_empty()),
            Err(other) => panic!("{what}: unexpected error {other}"),
            Ok(store) => {
                opened_at_checkpoint += 1;
                assert!(
                    matches!(
                        store.verify_log(true, &|| false),
                        Err(StoreError::Corrupt(_))
                    ),
                    "{what}: verify_log(all) let it through"
                );
                match store.verify_log(false, &|| false) {
                    Err(StoreError::Corrupt(_)) => {}
                    Ok(_) if older_signature => {}
                    other => panic!("{what}: verify_log let it through: {other:?}"),
                }
            }
        }
    }
    // Control: the default open really skipped the whole-log pass (some
    // damage was left to verify_log), and an intact log verifies.
    assert!(opened_at_checkpoint > 0);
    let intact = MemKv::new();
    intact
        .commit(entries.into_iter().map(|(k, v)| (k, Some(v))).collect())
        .unwrap();
    let store = open(Arc::new(intact)).unwrap();
    assert_eq!(store.verify_log(true, &|| false).unwrap().events, 5);
}

/// A log written before checkpoints existed (no checkpoint record) is read
/// back whole at open, and gets a checkpoint with its next commit; a
/// checkpoint that disagrees with the log refuses the open.
#[test]
fn the_checkpoint_is_written_with_commits_and_checked_against_the_log() {
    let rt = rt();
    let base = MemKv::new();
    {
        let store = open(Arc::new(base.clone())).unwrap();
        for i in 0..3 {
            rt.block_on(store.append(vec![event(&format!("k{i}"), 0)], i))
                .unwrap();
        }
    }
    let cp = base
        .get(gridsync_store::layout::CHECKPOINT_KEY)
        .unwrap()
        .unwrap();
    assert_eq!(
        u64::from_be_bytes(cp[..8].try_into().unwrap()),
        3,
        "next offset"
    );
    assert_eq!(
        u64::from_be_bytes(cp[16..24].try_into().unwrap()),
        3,
        "events"
    );
    // Without the record: the whole log is read, and the next commit
    // writes it again.
    base.commit(vec![(
        gridsync_store::layout::CHECKPOINT_KEY.to_vec(),
        None,
    )])
    .unwrap();
    {
        let store = open(Arc::new(base.clone())).unwrap();
        assert_eq!(store.counts().events, 3);
        rt.block_on(store.append(vec![event("k9", 0)], 9)).unwrap();
    }
    assert!(base
        .get(gridsync_store::layout::CHECKPOINT_KEY)
        .unwrap()
        .is_some());
    // A checkpoint claiming more than the log holds (a cut log whose
    // record survived) is refused by both opens.
    let mut wrong = base
        .get(gridsync_store::layout::CHECKPOINT_KEY)
        .unwrap()
        .unwrap();
    wrong[..8].copy_from_slice(&9u64.to_be_bytes());
    base.commit(vec![(
        gridsync_store::layout::CHECKPOINT_KEY.to_vec(),
        Some(wrong),
    )])
    .unwrap();
    assert!(matches!(
        open(Arc::new(base.clone())),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        open_with(Arc::new(base.clone()), false, true),
        Err(StoreError::Corrupt(_))
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Reboot,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::collection::vec(0u8..40, 1..6).prop_map(Op::Append),
            1 => Just(Op::Reboot),
        ],
        1..25,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// Random appends (with repeated client ids) and reboots on sled agree
    /// with a model: client id -> seq, seqs gap-free, duplicates detected.
    #[test]
    fn sled_store_agrees_with_model(ops in ops()) {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let mut model: BTreeMap<String, u64> = BTreeMap::new();
        let mut store = open_small_index(Arc::new(SledKv::open(dir.path(), 8 << 20).unwrap()));
        for op in ops {
            match op {
                Op::Reboot => {
                    drop(store);
                    store = open_small_index(Arc::new(SledKv::open(dir.path(), 8 << 20).unwrap()));
                }
                Op::Append(ids) => {
                    let evs: Vec<_> = ids.iter().map(|i| event(&format!("k{i}"), 0)).collect();
                    let res = rt.block_on(store.append(evs, 1)).unwrap();
                    for (i, r) in ids.iter().zip(res) {
                        let name = format!("k{i}");
                        match model.get(&name) {
                            Some(seq) => { prop_assert!(r.duplicate); prop_assert_eq!(r.seq, *seq); }
                            None => {
                                prop_assert!(!r.duplicate);
                                prop_assert_eq!(r.seq, model.len() as u64 + 1);
                                model.insert(name, r.seq);
                            }
                        }
                    }
                }
            }
        }
        let head = store.head(ORIGIN).map_or(0, |h| h.seq);
        prop_assert_eq!(head, model.len() as u64);
        let stored: Vec<String> = store.read_log(0, 1 << 20).unwrap().into_iter()
            .flat_map(|c| c.chunk.events.into_iter())
            .map(|r| gridsync_model::Envelope::decode(&r.envelope).unwrap().client_id)
            .collect();
        let mut by_seq: Vec<(u64, String)> = model.into_iter().map(|(k, s)| (s, k)).collect();
        by_seq.sort();
        prop_assert_eq!(stored, by_seq.into_iter().map(|(_, k)| k).collect::<Vec<_>>());
    }
}

/// A [`Kv`] whose commits become visible (applied) before they are durable,
/// as sled's do: `commit` applies the batch to the map readers see, then
/// waits at a gate before returning (the flush and fsync).
struct GatedKv {
    inner: MemKv,
    gate: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    applied: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

impl Kv for GatedKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn scan(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<gridsync_store::kv::KvEntry>, StoreError> {
        self.inner.scan(start, prefix, limit)
    }
    fn last_with_prefix(
        &self,
        prefix: &[u8],
    ) -> Result<Option<gridsync_store::kv::KvEntry>, StoreError> {
        self.inner.last_with_prefix(prefix)
    }
    fn last_before(
        &self,
        prefix: &[u8],
        key: &[u8],
    ) -> Result<Option<gridsync_store::kv::KvEntry>, StoreError> {
        self.inner.last_before(prefix, key)
    }
    fn commit(
        &self,
        batch: Vec<gridsync_store::kv::KvWrite>,
    ) -> Result<gridsync_store::kv::CommitTimings, StoreError> {
        let t = self.inner.commit(batch)?;
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            if let Some(tx) = self.applied.lock().unwrap().take() {
                tx.send(()).unwrap();
            }
            gate.recv().unwrap();
        }
        Ok(t)
    }
}

/// An origin store over a fresh [`GatedKv`] (no gate set yet).
fn gated_store(config: StoreConfig) -> (Arc<GatedKv>, Store) {
    let kv = Arc::new(GatedKv {
        inner: MemKv::new(),
        gate: std::sync::Mutex::new(None),
        applied: std::sync::Mutex::new(None),
    });
    let store = open_config(kv.clone(), config).unwrap();
    (kv, store)
}

/// A request refused for a reused client id leaves none of its ids behind,
/// also when it shares a commit with requests that succeed (the writer
/// numbers ids into the commit's map as it goes). Three requests are queued
/// while the writer waits inside a commit, so the next commit takes them
/// together: "p" (good), "q" with a reused "a" (refused), "r" (good).
#[test]
fn a_refused_request_leaves_no_client_id_in_a_shared_commit() {
    let (kv, store) = gated_store(StoreConfig::default());
    rt().block_on(store.append(vec![event("a", 0)], 1)).unwrap();
    let (release, gate) = std::sync::mpsc::channel();
    let (applied_tx, applied) = std::sync::mpsc::channel();
    *kv.gate.lock().unwrap() = Some(gate);
    *kv.applied.lock().unwrap() = Some(applied_tx);
    let post = |events: Vec<PreparedEvent>| {
        let s = store.clone();
        std::thread::spawn(move || rt().block_on(s.append(events, 2)))
    };
    let holder = post(vec![event("h", 0)]);
    applied.recv().unwrap();
    let queued = [
        post(vec![event("p", 0)]),
        post(vec![event("q", 0), event("a", 7)]),
        post(vec![event("r", 0)]),
    ];
    // Queued behind the held commit (nothing else can take them).
    std::thread::sleep(std::time::Duration::from_millis(300));
    release.send(()).unwrap();
    assert!(holder.join().unwrap().is_ok());
    let [p, q, r] = queued.map(|t| t.join().unwrap());
    assert!(matches!(
        q,
        Err(AppendError::ClientIdReused {
            index: 1,
            seq: 1,
            ..
        })
    ));
    let mut seqs = [p.unwrap()[0].seq, r.unwrap()[0].seq];
    seqs.sort_unstable();
    assert_eq!(seqs, [3, 4]);
    // "q" was numbered (3, 4 or 5, as the requests arrived) before its
    // request was refused; it is new. (Kept, it came back a duplicate of
    // seq 4: another event's.)
    let again = rt().block_on(store.append(vec![event("q", 0)], 3)).unwrap();
    assert_eq!((again[0].seq, again[0].duplicate), (5, false));
}

/// A reused client id is told from a retry by the two events' contents,
/// compared only when the id is found held: earlier in the same request,
/// earlier in the same commit (another request), or in the log. Each
/// place answers a retry with the first event and refuses other content.
#[test]
fn a_reused_client_id_is_compared_wherever_the_first_event_is_held() {
    let (kv, store) = gated_store(StoreConfig::default());
    // Earlier in the same request.
    let r = rt()
        .block_on(store.append(vec![event("x", 0), event("x", 0)], 1))
        .unwrap();
    assert_eq!(
        r.iter().map(|a| (a.seq, a.duplicate)).collect::<Vec<_>>(),
        vec![(1, false), (1, true)]
    );
    assert!(matches!(
        rt().block_on(store.append(vec![event("y", 0), event("y", 2)], 2)),
        Err(AppendError::ClientIdReused {
            index: 1,
            seq: 2,
            ..
        })
    ));
    // Earlier in the same commit: requests queued, in this order, while
    // the writer waits inside the commit before.
    let (release, gate) = std::sync::mpsc::channel();
    let (applied_tx, applied) = std::sync::mpsc::channel();
    *kv.gate.lock().unwrap() = Some(gate);
    *kv.applied.lock().unwrap() = Some(applied_tx);
    let post = |events: Vec<PreparedEvent>| {
        let s = store.clone();
        let t = std::thread::spawn(move || rt().block_on(s.append(events, 3)));
        std::thread::sleep(std::time::Duration::from_millis(100));
        t
    };
    let holder = post(vec![event("h", 0)]);
    applied.recv().unwrap();
    let first = post(vec![event("m", 0)]);
    let retry = post(vec![event("n", 0), event("m", 0)]);
    let other = post(vec![event("m", 4)]);
    release.send(()).unwrap();
    assert_eq!(holder.join().unwrap().unwrap()[0].seq, 2);
    assert_eq!(first.join().unwrap().unwrap()[0].seq, 3);
    let retry = retry.join().unwrap().unwrap();
    assert_eq!(
        retry
            .iter()
            .map(|a| (a.seq, a.duplicate))
            .collect::<Vec<_>>(),
        vec![(4, false), (3, true)]
    );
    assert!(matches!(
        other.join().unwrap(),
        Err(AppendError::ClientIdReused {
            index: 0,
            seq: 3,
            ..
        })
    ));
    // In the log.
    let r = rt().block_on(store.append(vec![event("m", 0)], 4)).unwrap();
    assert_eq!((r[0].seq, r[0].duplicate), (3, true));
    assert!(matches!(
        rt().block_on(store.append(vec![event("x", 1)], 5)),
        Err(AppendError::ClientIdReused { seq: 1, .. })
    ));
    assert_eq!(store.head(ORIGIN).unwrap().seq, 4);
}

/// Readers (replication, projections, `GET /v1/events`) see only durable
/// commits, although the key/value store shows a commit to readers as soon
/// as it is applied. The planted bug (`unsafe_read_uncommitted`) shows the
/// test can fail.
#[test]
fn readers_never_see_a_commit_before_it_is_durable() {
    for planted_bug in [false, true] {
        let (kv, store) = gated_store(StoreConfig {
            unsafe_read_uncommitted: planted_bug,
            ..StoreConfig::default()
        });
        rt().block_on(store.append(vec![event("a", 0), event("b", 0)], 1))
            .unwrap();
        let stamp = store.heads_since(0).map(|(_, stamp)| stamp);
        // The next commit stops after it is applied, before it is durable.
        let (release, gate) = std::sync::mpsc::channel();
        let (applied_tx, applied) = std::sync::mpsc::channel();
        *kv.gate.lock().unwrap() = Some(gate);
        *kv.applied.lock().unwrap() = Some(applied_tx);
        let s2 = store.clone();
        let appender = std::thread::spawn(move || {
            rt().block_on(s2.append(vec![event("c", 0), event("d", 0)], 2))
                .unwrap()
        });
        applied.recv().unwrap();
        // The window is real: the raw store already shows the new entry.
        let raw_entries: usize = kv
            .inner
            .dump()
            .iter()
            .filter(|(k, _)| k[0] == gridsync_store::layout::LOG)
            .map(|(k, v)| {
                gridsync_store::layout::log_value_entries(k, v)
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(raw_entries, 2, "the applied commit is visible in the kv");
        let log = store.read_log(0, 100).unwrap();
        let by_origin = store.read_origin(ORIGIN, 2, 100).unwrap();
        let encoded = store.read_origin_encoded(ORIGIN, 2, usize::MAX).unwrap();
        let found = store
            .find_event(&EventRef {
                origin: ORIGIN.into(),
                seq: 3,
            })
            .unwrap();
        let leaked =
            log.len() != 1 || !by_origin.is_empty() || !encoded.is_empty() || found.is_some();
        assert_eq!(
            leaked,
            planted_bug,
            "planted bug {planted_bug}: read_log saw {} entries, read_origin {} chunks, read_origin_encoded {}, find_event {}",
            log.len(),
            by_origin.len(),
            encoded.len(),
            found.is_some()
        );
        // The receipt time alone (a lag report's read): with the planted
        // bug it shows the commit not yet durable, without it not.
        let received = store.received_at(ORIGIN, 3).unwrap();
        assert_eq!(received.is_some(), planted_bug, "received_at: {received:?}");
        assert_eq!(store.head(ORIGIN).unwrap().seq, 2);
        // Moved heads come from durable commits only (with the planted
        // bug the sender reads every head from the log instead: `None`).
        let moved = stamp.and_then(|s| store.heads_since(s));
        assert_eq!(moved.map(|(m, _)| m), (!planted_bug).then(Vec::new));
        release.send(()).unwrap();
        appender.join().unwrap();
        if let Some(s) = stamp {
            let (moved, _) = store.heads_since(s).unwrap();
            assert_eq!(moved, vec![(ORIGIN.to_owned(), 4)]);
        }
        assert_eq!(store.read_log(0, 100).unwrap().len(), 2);
        assert_eq!(store.read_origin(ORIGIN, 2, 100).unwrap().len(), 1);
        assert_eq!(
            store
                .read_origin_encoded(ORIGIN, 2, usize::MAX)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(store.head(ORIGIN).unwrap().seq, 4);
    }
}

/// `heads_since` names the heads that moved after a stamp, and only
/// those (a sync session with 1,000 origins reads what a commit moved,
/// not every head per batch); stamps only grow; a reopened store counts
/// every head as moved since 0.
#[test]
fn heads_since_names_only_the_heads_that_moved() {
    let rt = rt();
    let kv: Arc<dyn Kv> = Arc::new(MemKv::new());
    let store = open(kv.clone()).unwrap();
    assert_eq!(store.heads_since(0), Some((Vec::new(), 1)));
    rt.block_on(store.append(vec![event("a", 0)], 1)).unwrap();
    let (moved, s1) = store.heads_since(0).unwrap();
    assert_eq!(moved, vec![(ORIGIN.to_owned(), 1)]);
    assert_eq!(store.heads_since(s1), Some((Vec::new(), s1)));
    rt.block_on(store.append(vec![event("b", 0), event("c", 0)], 2))
        .unwrap();
    let (moved, s2) = store.heads_since(s1).unwrap();
    assert_eq!(moved, vec![(ORIGIN.to_owned(), 3)]);
    assert!(s2 > s1);
    // A post already held moves nothing.
    rt.block_on(store.append(vec![event("c", 0)], 3)).unwrap();
    assert_eq!(store.heads_since(s2), Some((Vec::new(), s2)));
    store.close();
    let store = open(kv).unwrap();
    assert_eq!(
        store.heads_since(0).map(|(m, _)| m),
        Some(vec![(ORIGIN.to_owned(), 3)])
    );
}

/// The chunks an origin store over a fresh `MemKv` writes for `client_ids`
/// (one append each), read back from its log.
fn origin_chunks(client_ids: &[&str], note_len: usize) -> Vec<gridsync_model::Chunk> {
    let rt = rt();
    let store = open(Arc::new(MemKv::new())).unwrap();
    for (i, c) in client_ids.iter().enumerate() {
        rt.block_on(store.append(vec![event(c, note_len)], i as i64))
            .unwrap();
    }
    store
        .read_log(0, 1000)
        .unwrap()
        .into_iter()
        .map(|c| c.chunk)
        .collect()
}

fn aggregator(kv: Arc<dyn Kv>) -> Store {
    Store::open(kv, StoreConfig::default(), None, keys()).unwrap()
}

#[test]
fn import_compares_what_it_already_holds() {
    let rt = rt();
    let ours = origin_chunks(&["a", "b", "c"], 0);
    let other = origin_chunks(&["x", "y", "z", "w", "v"], 0);
    let store = aggregator(Arc::new(MemKv::new()));
    assert_eq!(rt.block_on(store.import(ours.clone(), 1)).unwrap(), 3);
    // The same chunks again: nothing new, accepted.
    assert_eq!(rt.block_on(store.import(ours.clone(), 2)).unwrap(), 0);
    // A covered chunk with other content (seq 2, below the head).
    let covered = rt.block_on(store.import(other[1..2].to_vec(), 3));
    assert_eq!(
        covered,
        Err(StoreError::Diverged {
            origin: ORIGIN.into(),
            seq: 2
        })
    );
    // One ending exactly at the head, and one overlapping past it.
    for (chunks, seq) in [(other[2..3].to_vec(), 3), (other[2..].to_vec(), 3)] {
        assert_eq!(
            rt.block_on(store.import(chunks, 4)),
            Err(StoreError::Diverged {
                origin: ORIGIN.into(),
                seq
            })
        );
    }
    // One chunk of five events overlapping the held three.
    let batch = {
        let s = open(Arc::new(MemKv::new())).unwrap();
        let evs = ["p", "q", "r", "s", "t"].map(|c| event(c, 0)).to_vec();
        rt.block_on(s.append(evs, 5)).unwrap();
        s.read_log(0, 10).unwrap().remove(0).chunk
    };
    assert_eq!((batch.first_seq(), batch.last_seq()), (1, 5));
    assert_eq!(
        rt.block_on(store.import(vec![batch], 6)),
        Err(StoreError::Diverged {
            origin: ORIGIN.into(),
            seq: 3
        })
    );
    assert_eq!(store.head(ORIGIN).unwrap().seq, 3);
    assert_eq!(store.counts().events, 3);
}

#[test]
fn an_origin_reimporting_its_own_chain_keeps_idempotency() {
    let rt = rt();
    let chunks = origin_chunks(&["a", "b", "c"], 30);
    let store = open(Arc::new(MemKv::new())).unwrap();
    assert_eq!(rt.block_on(store.import(chunks, 1)).unwrap(), 3);
    // A phone retrying "b" gets its original seq back, not a new event.
    let r = rt.block_on(store.append(vec![event("b", 30)], 2)).unwrap();
    assert_eq!((r[0].seq, r[0].duplicate), (2, true));
    // The same client id with other content is refused; a new one is seq 4.
    assert!(matches!(
        rt.block_on(store.append(vec![event("b", 31)], 3)),
        Err(AppendError::ClientIdReused { seq: 2, .. })
    ));
    let r = rt.block_on(store.append(vec![event("d", 0)], 4)).unwrap();
    assert_eq!((r[0].seq, r[0].duplicate), (4, false));
}

#[test]
fn evidence_is_recorded_once_per_conflicting_event_and_fragmented() {
    let rt = rt();
    let kv = MemKv::new();
    let store = aggregator(Arc::new(kv.clone()));
    let ours = origin_chunks(&["a"], 0);
    rt.block_on(store.import(ours.clone(), 1)).unwrap();
    // A large conflicting chunk (over the fragment size).
    let theirs = origin_chunks(&["big"], 1999);
    let ours_bytes = ours[0].encode();
    for attempt in 0..3 {
        let added = rt
            .block_on(store.record_evidence(ORIGIN, 1, ours_bytes.clone(), &theirs[0], attempt))
            .unwrap();
        assert_eq!(added, attempt == 0, "attempt {attempt}");
    }
    let other = origin_chunks(&["other"], 0);
    assert!(rt
        .block_on(store.record_evidence(ORIGIN, 1, ours_bytes, &other[0], 9))
        .unwrap());
    let listed = store.evidence(100).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed.iter().filter(|e| e.2 == 0).count(), 1);
    for (k, v) in kv.dump() {
        assert!(
            v.len() <= gridsync_store::layout::FRAGMENT_BYTES_MAX,
            "value of {} bytes under {k:?}",
            v.len()
        );
    }
}

fn open_with_record(
    kv: Arc<dyn Kv>,
    data: &std::path::Path,
    accept: bool,
) -> Result<Store, StoreError> {
    open_config(
        kv,
        StoreConfig {
            heads_record: Some(data.to_owned()),
            accept_shorter_log: accept,
            ..StoreConfig::default()
        },
    )
}

fn copy_kv(from: &MemKv) -> MemKv {
    let kv = MemKv::new();
    kv.commit(from.dump().into_iter().map(|(k, v)| (k, Some(v))).collect())
        .unwrap();
    kv
}

/// The heads record beside the data directory: a log that holds less than
/// it (sled recovering to an earlier point, a restored backup) is refused,
/// naming the origin and the seqs missing, unless the operator accepts it.
#[test]
fn a_log_shorter_than_its_heads_record_is_refused() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kv = MemKv::new();
    let store = open_with_record(Arc::new(kv.clone()), &data, false).unwrap();
    rt.block_on(store.append(vec![event("a", 0), event("b", 0), event("c", 0)], 1))
        .unwrap();
    let earlier = copy_kv(&kv);
    rt.block_on(store.append(vec![event("d", 0), event("e", 0)], 2))
        .unwrap();
    drop(store); // closing writes the record
    assert!(matches!(
        gridsync_store::heads_file::load(&data),
        gridsync_store::heads_file::Loaded::Valid(r) if r.heads[ORIGIN].seq == 5
    ));
    // The whole log reopens.
    drop(open_with_record(Arc::new(kv.clone()), &data, false).unwrap());
    // The earlier state of the same log does not.
    match open_with_record(Arc::new(copy_kv(&earlier)), &data, false) {
        Err(StoreError::Truncated(m)) => {
            assert!(
                m.contains("origin c1") && m.contains("seqs 4–5 missing"),
                "{m}"
            );
            let full = StoreError::Truncated(m).to_string();
            assert!(full.contains("--after-restore"), "{full}");
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a shorter log opened without complaint"),
    }
    // Accepted (a restored backup): it opens, and its record now says so.
    let accepted = copy_kv(&earlier);
    drop(open_with_record(Arc::new(accepted.clone()), &data, true).unwrap());
    drop(open_with_record(Arc::new(accepted), &data, false).unwrap());
    // A record that cannot be read is not taken as absent.
    for p in gridsync_store::heads_file::paths(&data) {
        std::fs::write(p, b"junk").unwrap();
    }
    assert!(matches!(
        open_with_record(Arc::new(kv), &data, false),
        Err(StoreError::Truncated(m)) if m.contains("damaged")
    ));
}

/// Phones post one event at a time; the posts gathered into one commit
/// are cut into chunks together — one signature per ~32 KiB of the commit,
/// not one per post — and every chunk's head still verifies.
#[test]
fn single_event_posts_of_one_commit_share_signed_chunks() {
    let (kv, store) = gated_store(StoreConfig::default());
    // Hold the writer inside a commit while 40 single-event posts queue.
    let (release, gate) = std::sync::mpsc::channel();
    let (applied_tx, applied) = std::sync::mpsc::channel();
    *kv.gate.lock().unwrap() = Some(gate);
    *kv.applied.lock().unwrap() = Some(applied_tx);
    let s = store.clone();
    let first = std::thread::spawn(move || rt().block_on(s.append(vec![event("first", 0)], 1)));
    applied.recv().unwrap();
    let s = store.clone();
    let phones = std::thread::spawn(move || {
        rt().block_on(async move {
            let posts: Vec<_> = (0..40)
                .map(|i| {
                    let s = s.clone();
                    tokio::spawn(async move { s.append(vec![event(&format!("p{i}"), 0)], 2).await })
                })
                .collect();
            // Let every post reach the writer's queue, then open the gate.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            release.send(()).unwrap();
            let mut seqs = Vec::new();
            for p in posts {
                seqs.push(p.await.unwrap().unwrap()[0].seq);
            }
            seqs
        })
    });
    first.join().unwrap().unwrap();
    let mut seqs = phones.join().unwrap();
    seqs.sort_unstable();
    assert_eq!(seqs, (2..=41).collect::<Vec<u64>>());
    let log = store.read_log(0, 100).unwrap();
    let vk = key().verifying_key();
    for e in &log {
        e.chunk.head.verify(&vk).unwrap();
        e.chunk
            .check_links(e.chunk.first_seq(), &e.chunk.first_prev().unwrap())
            .unwrap();
    }
    // 40 posts of ~250 bytes: one chunk of ~10 KiB, not forty.
    assert!(log.len() <= 4, "{} log entries for 41 posts", log.len());
    assert_eq!(log.iter().map(|e| e.chunk.events.len()).sum::<usize>(), 41);
}

/// A child's batch of one-event chunks (phones posting one at a time) is
/// stored as chunks near the size target, each closed by the last original
/// head of its run: the stored events are byte-identical, every stored
/// chunk verifies, and a merged chunk forwarded upward is accepted.
#[test]
fn an_aggregator_stores_a_batch_of_one_event_chunks_as_large_chunks() {
    let rt = rt();
    let ids: Vec<String> = (0..60).map(|i| format!("p{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let small = origin_chunks(&refs, 0);
    assert_eq!(small.len(), 60, "one chunk per post at the origin");
    let store = aggregator(Arc::new(MemKv::new()));
    assert_eq!(
        rt.block_on(store.import(small[..40].to_vec(), 1)).unwrap(),
        40
    );
    let first = store.read_log(0, 100).unwrap().len();
    assert!(
        first <= 3,
        "{first} entries for a batch of 40 one-event chunks"
    );
    // A later request is stored on its own, never folded into an entry of
    // an earlier one.
    assert_eq!(
        rt.block_on(store.import(small[40..].to_vec(), 2)).unwrap(),
        20
    );
    let log = store.read_log(0, 100).unwrap();
    assert!(log.len() > first && log.len() <= first + 2);
    let vk = key().verifying_key();
    let mut next = 1;
    for e in &log {
        e.chunk.head.verify(&vk).unwrap();
        e.chunk
            .check_links(next, &e.chunk.first_prev().unwrap())
            .unwrap();
        next = e.chunk.last_seq() + 1;
    }
    assert_eq!(next, 61);
    let stored: Vec<_> = log.iter().flat_map(|e| e.chunk.events.clone()).collect();
    let original: Vec<_> = small.iter().flat_map(|c| c.events.clone()).collect();
    assert!(stored == original, "the events are stored unchanged");
    // The small chunks again: held, nothing new.
    assert_eq!(rt.block_on(store.import(small.clone(), 3)).unwrap(), 0);
    // Forwarded upward, the merged chunks are taken as they are.
    let upper = aggregator(Arc::new(MemKv::new()));
    let forwarded: Vec<_> = log.into_iter().map(|e| e.chunk).collect();
    assert_eq!(rt.block_on(upper.import(forwarded, 4)).unwrap(), 60);
    assert_eq!(upper.head(ORIGIN).unwrap().seq, 60);
}

/// The entry a request is still joining chunks into is held like any
/// other: a repeated chunk inside it is recognised (not a divergence), a
/// different event at one of its seqs is a divergence, and a request
/// refused half-way leaves nothing of its joined entry behind.
#[test]
fn an_entry_being_joined_is_checked_and_rolled_back_like_the_rest() {
    let rt = rt();
    let ids: Vec<String> = (0..12).map(|i| format!("q{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let small = origin_chunks(&refs, 0);
    let store = aggregator(Arc::new(MemKv::new()));
    // Seqs 1..=8, then seq 5 again (inside the entry being joined).
    let mut batch = small[..8].to_vec();
    batch.push(small[4].clone());
    assert_eq!(rt.block_on(store.import(batch, 1)).unwrap(), 8);
    assert_eq!(store.read_log(0, 100).unwrap().len(), 1, "one joined entry");
    // Seqs 9..=10 joined, then seq 9 from another chain: the whole request
    // is refused and nothing of it is stored.
    let other: Vec<String> = (0..9).map(|i| format!("o{i}")).collect();
    let forged = origin_chunks(&other.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    let mut batch = small[8..10].to_vec();
    batch.push(forged[8].clone());
    assert!(rt.block_on(store.import(batch, 2)).is_err());
    // A gap after a joined run refuses the request too.
    let mut batch = small[8..10].to_vec();
    batch.push(small[11].clone());
    assert!(rt.block_on(store.import(batch, 3)).is_err());
    assert_eq!(store.head(ORIGIN).unwrap().seq, 8);
    assert_eq!(store.counts().events, 8);
    // What follows is taken as usual.
    assert_eq!(
        rt.block_on(store.import(small[8..].to_vec(), 4)).unwrap(),
        4
    );
    let log = store.read_log(0, 100).unwrap();
    let stored: Vec<_> = log.iter().flat_map(|e| e.chunk.events.clone()).collect();
    let original: Vec<_> = small.iter().flat_map(|c| c.events.clone()).collect();
    assert!(stored == original);
    for seq in 1..=12 {
        let r = EventRef {
            origin: ORIGIN.into(),
            seq,
        };
        let (_, rec) = store.find_event(&r).unwrap().unwrap();
        assert!(rec == original[seq as usize - 1], "seq {seq}");
    }
}

/// Event `i` of a run of two kinds: a visit every third, else a temperature.
fn kinded(i: usize) -> PreparedEvent {
    if i.is_multiple_of(3) {
        return event(&format!("v{i}"), 10);
    }
    prepared(json!({
        "kind": "temperature", "occurred_at": "2020-01-28T09:30:00+08:00",
        "grid": "g1", "recorded_by": "w1", "client_id": format!("t{i}"),
        "data": {"person": {"name": "张三"}, "celsius": 36.5, "site": "home"}
    }))
}

#[test]
fn the_kinds_of_recent_events_are_known_without_reading_the_log() {
    let rt = rt();
    let kv = Arc::new(MemKv::new());
    let open_small = |kv: Arc<MemKv>| {
        open_config(
            kv,
            StoreConfig {
                recent_kinds_max: 10,
                chunk_bytes_target: 600,
                ..StoreConfig::default()
            },
        )
        .unwrap()
    };
    let at = |seq: u64| EventRef {
        origin: ORIGIN.into(),
        seq,
    };
    let from_log = |store: &Store, seq: u64| {
        store
            .find_event(&at(seq))
            .unwrap()
            .map(|(e, _)| (e.envelope.kind, e.envelope.schema))
    };
    let store = open_small(kv.clone());
    for batch in [0..4, 4..5, 5..17] {
        rt.block_on(store.append(batch.map(kinded).collect(), 1))
            .unwrap();
    }
    // After a reopen nothing is remembered: older seqs come from the log.
    drop(store);
    let store = open_small(kv.clone());
    rt.block_on(store.append((17..29).map(kinded).collect(), 2))
        .unwrap();
    assert!(store.read_log(0, 100).unwrap().len() > 5, "several chunks");
    let expected: Vec<_> = (0..=31).map(|seq| from_log(&store, seq)).collect();
    assert_eq!(expected[30], None);
    assert_eq!(expected[1].as_ref().unwrap().0, "visit");
    assert_eq!(expected[2].as_ref().unwrap().0, "temperature");
    for (seq, want) in expected.iter().enumerate() {
        assert_eq!(&store.kind_of(&at(seq as u64)).unwrap(), want, "seq {seq}");
    }
    // With the log's entries gone, the newest 10 events (20..=29; 18 and
    // 19, learnt since the reopen too, are past the bound) are still
    // known — from memory — and older ones are not.
    let deletes: Vec<_> = (0..100u64)
        .flat_map(|offset| {
            kv.scan(
                &gridsync_store::layout::log_prefix(offset),
                &gridsync_store::layout::log_prefix(offset),
                100,
            )
            .unwrap()
        })
        .map(|(k, _)| (k, None))
        .collect();
    assert!(!deletes.is_empty());
    kv.commit(deletes).unwrap();
    for seq in 1..=29u64 {
        let got = store.kind_of(&at(seq));
        if seq >= 20 {
            assert_eq!(got.unwrap(), expected[seq as usize], "seq {seq}");
        } else {
            assert!(got.is_err(), "seq {seq} was read from the log: {got:?}");
        }
    }
}

/// With every signature checked (`serve --verify-all`), heads are verified
/// in batches on a second thread while the walk reads on: over more than
/// two batches of one-event entries, the first problem in log order is
/// the one named — a bad signature before a broken entry (in a sent batch
/// or in the one being gathered), the earlier of two bad signatures, one
/// in a later batch.
#[test]
fn verify_all_names_the_first_problem_in_log_order() {
    // Two whole batches sent to the verifier thread, and a third being
    // gathered: `b` is the batch, `g` an entry in the third.
    let b = gridsync_model::chunk::HEADS_PER_BATCH;
    let (n, g) = (2 * b + 200, 2 * b + 100);
    let entries = one_event_posts(u64::try_from(n).unwrap());
    // (log key, byte range) of every entry, in log order.
    let mut at = Vec::new();
    for (k, v) in entries.iter().filter(|(k, _)| k[0] == b'L') {
        for (_, r) in gridsync_store::layout::log_value_entries(k, v).unwrap() {
            at.push((k.clone(), r));
        }
    }
    assert_eq!(at.len(), n);
    // Each flip: (entry, in its signature or in the middle of its event).
    let altered = |flips: &[(usize, bool)]| {
        let mut m = entries.clone();
        for &(n, signature) in flips {
            let (k, r) = &at[n];
            let pos = if signature {
                r.end - 3
            } else {
                r.start + r.len() / 2
            };
            m.get_mut(k).unwrap()[pos] ^= 0x20;
        }
        let kv = MemKv::new();
        kv.commit(m.into_iter().map(|(k, v)| (k, Some(v))).collect())
            .unwrap();
        match open_verifying(Arc::new(kv), true) {
            Err(StoreError::Corrupt(msg)) => msg,
            Err(other) => panic!("{flips:?}: unexpected error {other}"),
            Ok(_) => panic!("{flips:?}: opened"),
        }
    };
    let named = |msg: &str, entry: usize| {
        assert!(
            msg.contains(&format!("log entry {entry}:")) && msg.contains("signature"),
            "{msg}"
        );
    };
    // In the first batch sent, and in the second, before a broken entry.
    named(&altered(&[(20, true), (g + 50, false)]), 20);
    named(&altered(&[(b + 10, true), (g + 50, false)]), b + 10);
    // In the batch still being gathered when the walk finds the damage.
    named(&altered(&[(g, true), (g + 50, false)]), g);
    // The earlier of two, in different batches; one alone.
    named(&altered(&[(20, true), (g, true)]), 20);
    named(&altered(&[(g, true)]), g);
    let msg = altered(&[(g + 50, false)]);
    assert!(!msg.contains("signature"), "{msg}");
}

/// Commits of many chunks store the heads their origin signs: each
/// verifies, closes its chunk (its last seq and hash), names the digest of
/// the head before it — within a commit and across commits, large and
/// small — and is the same bytes as signing that chain here (ed25519 is
/// deterministic); the whole log passes the open's full check.
#[test]
fn the_heads_of_a_commit_of_many_chunks_are_chained_and_signed_by_the_origin() {
    let kv: Arc<dyn Kv> = Arc::new(MemKv::new());
    let rt = rt();
    let store = open(kv.clone()).unwrap();
    // 300 events of ~1 KiB in one commit (~9 chunks), then 3 in one,
    // then 300 again.
    let batch = |from: usize, n: usize| -> Vec<PreparedEvent> {
        (from..from + n)
            .map(|i| event(&format!("s{i}"), 700))
            .collect()
    };
    rt.block_on(store.append(batch(0, 300), 5)).unwrap();
    rt.block_on(store.append(batch(300, 3), 6)).unwrap();
    rt.block_on(store.append(batch(303, 300), 7)).unwrap();
    let log = store.read_log(0, 1000).unwrap();
    assert!(log.len() >= 16, "{} chunks", log.len());
    let vk = key().verifying_key();
    let sk = key();
    let mut before: Option<gridsync_model::SignedHead> = None;
    for e in &log {
        let c = &e.chunk;
        c.head.verify(&vk).unwrap();
        c.check_links(c.first_seq(), &c.first_prev().unwrap())
            .unwrap();
        assert_eq!(c.head.seq, c.last_seq());
        let last = gridsync_model::event::event_hash(&c.events.last().unwrap().envelope);
        assert_eq!(c.head.hash, last, "the head closes its chunk");
        let after = before
            .as_ref()
            .map_or(gridsync_model::ZERO_HASH, |h| h.digest());
        assert_eq!(
            c.head.after,
            Some(after),
            "chunk ending at {}",
            c.last_seq()
        );
        let here = gridsync_model::SignedHead::sign_after(
            &sk,
            (ORIGIN, c.head.seq, c.head.hash),
            c.head.signed_at_ms,
            after,
        );
        assert_eq!(c.head, here, "the same head signed here");
        before = Some(c.head.clone());
    }
    assert_eq!(log.last().unwrap().chunk.last_seq(), 603);
    drop(store);
    open_with(kv, true, true).expect("the whole log verifies at open");
}
