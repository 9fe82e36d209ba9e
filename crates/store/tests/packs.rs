//! Small log entries kept several to a sled value (packs): they cost far
//! fewer keys than entries, read back exactly as entries of their own, go
//! on across reopens, mix with fragmented entries, and a store written
//! before packs is read as it is and upgraded.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use gridsync_model::ingest::PreparedEvent;
use gridsync_model::kinds::EventRef;
use gridsync_model::Chunk;
use gridsync_store::{layout, KeyLookup, Kv, MemKv, OriginIdentity, Store, StoreConfig};

mod common;

const ORIGINS: [&str; 2] = ["c1", "c2"];

fn signing_key(origin: &str) -> SigningKey {
    SigningKey::from_bytes(&[origin.as_bytes()[1]; 32])
}

fn keys() -> KeyLookup {
    Arc::new(|o: &str, _seq: u64| ORIGINS.contains(&o).then(|| signing_key(o).verifying_key()))
}

fn event(origin: &str, client_id: &str, note_len: usize) -> PreparedEvent {
    common::visit(origin, client_id, &"x".repeat(note_len))
}

fn open(kv: &MemKv, origin: Option<&str>, config: StoreConfig) -> Store {
    let identity = origin.map(|o| OriginIdentity {
        node_id: o.into(),
        key: signing_key(o),
    });
    Store::open(Arc::new(kv.clone()), config, identity, keys()).expect("open")
}

fn packing(bytes: usize) -> StoreConfig {
    StoreConfig {
        pack_entry_bytes_max: bytes,
        ..StoreConfig::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// The chunk index's keys in the key/value store.
fn index_keys(kv: &MemKv) -> usize {
    kv.dump().keys().filter(|k| k[0] == layout::INDEX).count()
}

/// `(log keys, log entries)` in the key/value store.
fn log_shape(kv: &MemKv) -> (usize, usize) {
    let log: Vec<_> = kv
        .dump()
        .into_iter()
        .filter(|(k, _)| k[0] == layout::LOG)
        .collect();
    let entries = log
        .iter()
        .map(|(k, v)| layout::log_value_entries(k, v).expect("well formed").len())
        .sum();
    (log.len(), entries)
}

/// Every way of reading `origin`'s `n` one-event entries (the log from
/// each offset, the origin from each seq, encoded, one event, its receipt
/// time) finds each where it is, as if it had a key of its own.
fn reads_back(store: &Store, origin: &str, n: u64, received_at: &dyn Fn(u64) -> i64) {
    let log = store.read_log(0, 10_000).unwrap();
    let own: Vec<_> = log.iter().filter(|e| e.chunk.origin == origin).collect();
    assert_eq!(own.len() as u64, n, "{origin}: one entry per append");
    for (i, e) in own.iter().enumerate() {
        assert_eq!(e.chunk.first_seq(), i as u64 + 1);
        assert_eq!(e.received_at_ms, received_at(i as u64 + 1));
    }
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.offset, i as u64, "offsets follow each other");
        let from_here = store.read_log(e.offset, 2).unwrap();
        assert_eq!(from_here[0].offset, e.offset);
        assert_eq!(from_here[0].chunk.head, e.chunk.head);
        assert_eq!(from_here.len(), 2.min(log.len() - i));
    }
    for seq in 1..=n {
        let chunks = store.read_origin(origin, seq - 1, 1).unwrap();
        assert_eq!(
            chunks[0].chunk.first_seq(),
            seq,
            "{origin} after {}",
            seq - 1
        );
        let encoded = store.read_origin_encoded(origin, seq - 1, 1).unwrap();
        assert_eq!(encoded[0].bytes, chunks[0].chunk.encode());
        let r = EventRef {
            origin: origin.into(),
            seq,
        };
        let (found, _) = store.find_event(&r).unwrap().expect("event found");
        assert_eq!(found.envelope.seq, seq);
        assert_eq!(
            store.received_at(origin, seq).unwrap(),
            Some(received_at(seq))
        );
    }
    assert!(store.read_origin(origin, n, 1).unwrap().is_empty());
}

#[test]
fn one_event_commits_share_packs_and_read_back_as_entries_of_their_own() {
    let rt = rt();
    for pack_bytes in [2048, 0] {
        let kv = MemKv::new();
        let mut n = 0u64;
        for round in 0..2 {
            // A reopen between rounds: the newest pack is taken up again.
            let store = open(&kv, Some("c1"), packing(pack_bytes));
            for i in 0..120 {
                // One large event in the middle: an entry in fragments, which
                // closes the pack before it.
                let note = if round == 0 && i == 60 { 1999 } else { 0 };
                let c = format!("r{round}-{i}");
                n += 1;
                let at = n as i64 * 1000;
                let keys_before = log_shape(&kv).0;
                rt.block_on(store.append(vec![event("c1", &c, note)], at))
                    .unwrap();
                if round == 1 && i == 0 && pack_bytes > 0 {
                    assert_eq!(
                        log_shape(&kv).0,
                        keys_before,
                        "joined the pack of before the reopen"
                    );
                }
            }
        }
        let store = open(&kv, Some("c1"), packing(pack_bytes));
        reads_back(&store, "c1", n, &|seq| seq as i64 * 1000);
        assert_eq!(store.verify_log(true, &|| false).unwrap().events, n);
        let (keys, entries) = log_shape(&kv);
        assert_eq!(entries as u64, n);
        if pack_bytes == 0 {
            // Control: without packs, a key per one-fragment entry, and an
            // index key per chunk.
            assert_eq!(keys as u64, n);
            assert_eq!(index_keys(&kv) as u64, n);
        } else {
            // ~19 one-event entries of ~370 bytes to a 7 KiB pack, named
            // by one index entry; the large event closes one early.
            assert!(keys as u64 <= n / 15, "{keys} log keys for {n} entries");
            assert_eq!(index_keys(&kv), keys, "one index entry per pack");
        }
        // The whole-log open and the full check read packs too.
        let whole = StoreConfig {
            verify_all_signatures: true,
            ..packing(pack_bytes)
        };
        drop(store);
        let store = open(&kv, Some("c1"), whole);
        assert_eq!(store.head("c1").unwrap().seq, n);
    }
}

/// Origin `origin`'s `n` one-event chunks, one append each.
fn origin_chunks(origin: &str, n: usize) -> Vec<Chunk> {
    let rt = rt();
    let store = open(&MemKv::new(), Some(origin), StoreConfig::default());
    for i in 0..n {
        rt.block_on(store.append(vec![event(origin, &format!("{i}"), 0)], i as i64))
            .unwrap();
    }
    let chunks: Vec<Chunk> = store
        .read_log(0, n)
        .unwrap()
        .into_iter()
        .map(|c| c.chunk)
        .collect();
    assert_eq!(chunks.len(), n);
    chunks
}

#[test]
fn an_aggregator_packs_the_one_event_chunks_of_its_children_as_they_arrive() {
    let rt = rt();
    let a = origin_chunks("c1", 80);
    let b = origin_chunks("c2", 80);
    let kv = MemKv::new();
    let store = open(&kv, None, StoreConfig::default());
    // Each chunk in its own push, the children taking turns: nothing to
    // join within a request.
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let at = 10 * i as i64;
        assert_eq!(rt.block_on(store.import(vec![x.clone()], at)).unwrap(), 1);
        assert_eq!(
            rt.block_on(store.import(vec![y.clone()], at + 1)).unwrap(),
            1
        );
    }
    for (origin, shift) in [("c1", 0), ("c2", 1)] {
        reads_back(&store, origin, 80, &|seq| 10 * (seq as i64 - 1) + shift);
        let forwarded = store.read_origin_encoded(origin, 0, usize::MAX).unwrap();
        let sent = if origin == "c1" { &a } else { &b };
        let want: Vec<Vec<u8>> = sent.iter().map(Chunk::encode).collect();
        let got: Vec<Vec<u8>> = forwarded.into_iter().map(|c| c.bytes).collect();
        assert_eq!(got, want, "{origin}: forwarded as received");
    }
    drop(store);
    let store = open(&kv, None, StoreConfig::default());
    assert_eq!(store.verify_log(true, &|| false).unwrap().chunks, 160);
    let (keys, entries) = log_shape(&kv);
    assert_eq!(entries, 160);
    assert!(keys <= 160 / 15, "{keys} log keys for 160 entries");
    // One index entry per origin and pack.
    assert!(
        index_keys(&kv) <= 2 * keys,
        "{} index keys",
        index_keys(&kv)
    );
}

#[test]
fn a_store_written_before_packs_is_read_as_it_is_and_upgraded() {
    let rt = rt();
    let kv = MemKv::new();
    {
        let store = open(&kv, Some("c1"), packing(0));
        for i in 0..20 {
            rt.block_on(store.append(vec![event("c1", &format!("a{i}"), 0)], i))
                .unwrap();
        }
    }
    // What a build before packs left: format 1, an entry per key.
    kv.commit(vec![(
        layout::FORMAT_KEY.to_vec(),
        Some(layout::FORMAT_VALUE_1.to_vec()),
    )])
    .unwrap();
    assert_eq!(log_shape(&kv), (20, 20));
    {
        let store = open(&kv, Some("c1"), StoreConfig::default());
        assert_eq!(
            kv.get(layout::FORMAT_KEY).unwrap().as_deref(),
            Some(layout::FORMAT_VALUE),
            "marked as format 2 at open"
        );
        for i in 20..40 {
            rt.block_on(store.append(vec![event("c1", &format!("a{i}"), 0)], i))
                .unwrap();
        }
    }
    let store = open(&kv, Some("c1"), StoreConfig::default());
    reads_back(&store, "c1", 40, &|seq| seq as i64 - 1);
    assert_eq!(store.verify_log(true, &|| false).unwrap().events, 40);
    drop(store);
    let (log_keys, entries) = log_shape(&kv);
    assert_eq!(entries, 40);
    assert!(
        log_keys <= 20 + 2,
        "the new entries are packed: {log_keys} keys"
    );
    let whole = StoreConfig {
        verify_whole_log: true,
        ..StoreConfig::default()
    };
    assert_eq!(open(&kv, Some("c1"), whole).head("c1").unwrap().seq, 40);

    // A format this build does not know is refused, with what it is.
    kv.commit(vec![(
        layout::FORMAT_KEY.to_vec(),
        Some(b"gridsync-store-9".to_vec()),
    )])
    .unwrap();
    let refused = Store::open(Arc::new(kv.clone()), StoreConfig::default(), None, keys());
    let Err(e) = refused else {
        panic!("an unknown format was opened")
    };
    assert!(e.to_string().contains("gridsync-store-9"), "{e}");
}

/// Rewrites every index entry as entries of one chunk each (what a build
/// that packed entries but indexed each chunk alone left).
fn index_each_chunk_alone(kv: &MemKv) {
    let mut writes = Vec::new();
    for (k, v) in kv.dump().into_iter().filter(|(k, _)| k[0] == layout::INDEX) {
        let (origin, _, _) = layout::parse_origin_seq_key(&k).unwrap();
        writes.push((k.clone(), None));
        for (last, offset, first) in layout::index_chunks(&k, &v).unwrap() {
            let value = layout::index_value(offset, first);
            writes.push((layout::index_key(&origin, last), Some(value)));
        }
    }
    kv.commit(writes).unwrap();
}

#[test]
fn index_entries_of_packs_are_checked_and_taken_up_whatever_wrote_them() {
    let rt = rt();
    let kv = MemKv::new();
    {
        let store = open(&kv, Some("c1"), StoreConfig::default());
        for i in 0..30 {
            rt.block_on(store.append(vec![event("c1", &format!("a{i}"), 0)], i))
                .unwrap();
        }
    }
    let whole = || StoreConfig {
        verify_whole_log: true,
        ..StoreConfig::default()
    };
    // An index entry of a pack that lacks one of its chunks (the middle
    // one of the first pack's) is found by the whole-log open.
    let damaged = MemKv::new();
    damaged
        .commit(kv.dump().into_iter().map(|(k, v)| (k, Some(v))).collect())
        .unwrap();
    let (k, v) = kv
        .dump()
        .into_iter()
        .find(|(k, v)| k[0] == layout::INDEX && v.len() > 16 * 2)
        .expect("an index entry naming several chunks");
    let mut fewer = v.clone();
    fewer.drain(16..32);
    damaged.commit(vec![(k, Some(fewer))]).unwrap();
    let refused = Store::open(Arc::new(damaged), whole(), None, keys());
    assert!(
        matches!(refused, Err(gridsync_store::StoreError::Corrupt(_))),
        "an index lacking a chunk was taken"
    );
    // Control: the intact copy opens whole.
    assert_eq!(open(&kv, Some("c1"), whole()).head("c1").unwrap().seq, 30);

    // Each chunk indexed alone: read and checked the same, and new chunks
    // in the same pack get an index entry of their own group.
    index_each_chunk_alone(&kv);
    assert_eq!(index_keys(&kv), 30);
    {
        let store = open(&kv, Some("c1"), whole());
        for i in 30..40 {
            rt.block_on(store.append(vec![event("c1", &format!("a{i}"), 0)], i))
                .unwrap();
        }
    }
    assert!(index_keys(&kv) < 40, "{} index keys", index_keys(&kv));
    let store = open(&kv, Some("c1"), whole());
    reads_back(&store, "c1", 40, &|seq| seq as i64 - 1);
    assert_eq!(store.verify_log(true, &|| false).unwrap().events, 40);
}

/// A log mixing packs of one-event entries with entries of several
/// fragments (60-event posts) and larger one-event entries reads the same in
/// pages of every size from every offset (a page may start inside a pack,
/// and end inside an entry's fragments or a pack).
#[test]
fn pages_of_any_size_read_a_mixed_log_the_same() {
    let rt = rt();
    let kv = MemKv::new();
    let store = open(
        &kv,
        Some("c1"),
        packing(StoreConfig::default().pack_entry_bytes_max),
    );
    let mut t = 0;
    for round in 0..6 {
        for i in 0..30 {
            t += 1;
            let e = event("c1", &format!("s{round}-{i}"), 0);
            rt.block_on(store.append(vec![e], t)).unwrap();
        }
        for i in 0..3 {
            t += 1;
            let big = (0..60)
                .map(|k| event("c1", &format!("b{round}-{i}-{k}"), 200))
                .collect();
            rt.block_on(store.append(big, t)).unwrap();
        }
        t += 1;
        let medium = event("c1", &format!("m{round}"), 1_000);
        rt.block_on(store.append(vec![medium], t)).unwrap();
    }
    let (keys, entries) = log_shape(&kv);
    assert_eq!(entries, 6 * 34);
    assert!(keys > 6 * 3 * 3, "the big entries take several fragments");
    let whole = store.read_log(0, 10_000).unwrap();
    assert_eq!(whole.len(), entries);
    for page in [1, 2, 3, 7, 19, 64, 500] {
        for from in 0..whole.len() {
            let got = store.read_log(from as u64, page).unwrap();
            let want = &whole[from..(from + page).min(whole.len())];
            assert_eq!(got.len(), want.len(), "page {page} from {from}");
            for (g, w) in got.iter().zip(want) {
                assert_eq!((g.offset, &g.chunk), (w.offset, &w.chunk), "page {page}");
            }
        }
    }
}
