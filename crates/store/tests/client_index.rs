//! The client-id index: exactly once across flushes, merges and restarts
//! (including restarts in the middle of a merge), at far less than one key
//! per event; an index of the earlier format (one key per event) is
//! migrated at open.

use std::collections::HashMap;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use gridsync_model::ingest::PreparedEvent;
use gridsync_store::{
    layout, AppendError, ClientIndexConfig, KeyLookup, Kv, MemKv, OriginIdentity, Store,
    StoreConfig,
};
use rand::{Rng, SeedableRng};

mod common;

const ORIGIN: &str = "c1";

fn keys() -> KeyLookup {
    let vk = SigningKey::from_bytes(&[9; 32]).verifying_key();
    Arc::new(move |o: &str, _seq: u64| (o == ORIGIN).then_some(vk))
}

fn event(client_id: &str, note: &str) -> PreparedEvent {
    common::visit(ORIGIN, client_id, note)
}

/// Small enough that a few thousand events flush many runs and merge
/// them over three tiers.
fn small() -> ClientIndexConfig {
    ClientIndexConfig {
        flush_entries: 16,
        fanout: 3,
        slice_pairs: 20,
    }
}

fn open(kv: &MemKv, index: ClientIndexConfig) -> Store {
    Store::open(
        Arc::new(kv.clone()),
        StoreConfig {
            client_index: index,
            ..StoreConfig::default()
        },
        Some(OriginIdentity {
            node_id: ORIGIN.into(),
            key: SigningKey::from_bytes(&[9; 32]),
        }),
        keys(),
    )
    .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn keys_with(kv: &MemKv, tag: u8) -> usize {
    kv.dump().keys().filter(|k| k.first() == Some(&tag)).count()
}

/// Posts `ids` in random batches (restarting the store at random), checks
/// every answer against `model` and records new ones.
fn post_all(
    kv: &MemKv,
    store: &mut Store,
    ids: &[String],
    model: &mut HashMap<String, u64>,
    rng: &mut rand::rngs::StdRng,
    rt: &tokio::runtime::Runtime,
) {
    let mut i = 0;
    while i < ids.len() {
        let n = rng.gen_range(1..=12).min(ids.len() - i);
        let batch = &ids[i..i + n];
        let evs = batch.iter().map(|c| event(c, "n")).collect();
        let res = rt.block_on(store.append(evs, 1)).unwrap();
        for (c, r) in batch.iter().zip(res) {
            match model.get(c) {
                Some(seq) => assert!(r.duplicate && r.seq == *seq, "{c}: {r:?}"),
                None => {
                    assert!(!r.duplicate, "{c} is new: {r:?}");
                    model.insert(c.clone(), r.seq);
                }
            }
        }
        if rng.gen_ratio(1, 25) {
            *store = open(kv, small());
        }
        i += n;
    }
}

#[test]
fn retries_are_duplicates_across_flushes_merges_and_restarts() {
    let rt = rt();
    let kv = MemKv::new();
    let mut store = open(&kv, small());
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut model = HashMap::new();
    // New ids, with retries of recent and old ones mixed in.
    let mut ids = Vec::new();
    for i in 0..3000u32 {
        ids.push(format!("phone-{}-{i}", i % 17));
        if rng.gen_ratio(1, 10) {
            ids.push(format!(
                "phone-{}-{}",
                rng.gen_range(0..17),
                rng.gen_range(0..=i)
            ));
        }
    }
    post_all(&kv, &mut store, &ids, &mut model, &mut rng, &rt);
    let events = model.len();
    assert_eq!(store.head(ORIGIN).unwrap().seq, events as u64);
    // Every id again, after a restart: all duplicates with their seqs.
    store = open(&kv, small());
    let mut again: Vec<String> = model.keys().cloned().collect();
    again.sort();
    post_all(&kv, &mut store, &again, &mut model, &mut rng, &rt);
    assert_eq!(
        store.head(ORIGIN).unwrap().seq,
        events as u64,
        "nothing new"
    );
    // Reused with other content: refused, naming the stored seq.
    let (cid, seq) = model.iter().next().map(|(c, s)| (c.clone(), *s)).unwrap();
    assert!(matches!(
        rt.block_on(store.append(vec![event(&cid, "other")], 2)),
        Err(AppendError::ClientIdReused { seq: s, .. }) if s == seq
    ));
    // Far fewer index keys than events (one per 448 pairs, plus runs not
    // yet merged); no key of the earlier format.
    let blocks = keys_with(&kv, layout::CLIENT_RUN);
    assert!(blocks * 10 < events, "{blocks} blocks for {events} events");
    assert_eq!(keys_with(&kv, layout::CLIENT), 0);
    // ~190 runs were flushed; merges left a handful (tiers of 3).
    let mut runs: Vec<Vec<u8>> = kv
        .dump()
        .into_keys()
        .filter(|k| k.first() == Some(&layout::CLIENT_RUN))
        .map(|k| k[1..9].to_vec())
        .collect();
    runs.dedup();
    assert!(runs.len() < 30, "{} runs left unmerged", runs.len());

    // Control: without its runs the index forgets the older events, so
    // the checks above depend on the runs (not only on the recent ids).
    drop(store);
    let runs: Vec<_> = kv
        .dump()
        .into_keys()
        .filter(|k| k.first() == Some(&layout::CLIENT_RUN))
        .map(|k| (k, None))
        .collect();
    kv.commit(runs).unwrap();
    let store = open(&kv, small());
    let old = model.iter().find(|(_, s)| **s == 1).unwrap().0.clone();
    let r = rt
        .block_on(store.append(vec![event(&old, "n")], 3))
        .unwrap();
    assert!(
        !r[0].duplicate,
        "with its runs gone, seq 1's id is taken as new"
    );
}

#[test]
fn an_index_of_the_earlier_format_is_migrated_at_open() {
    let rt = rt();
    let kv = MemKv::new();
    let store = open(&kv, ClientIndexConfig::default());
    let ids: Vec<String> = (0..500).map(|i| format!("old-{i}")).collect();
    for batch in ids.chunks(50) {
        let evs = batch.iter().map(|c| event(c, "n")).collect();
        rt.block_on(store.append(evs, 1)).unwrap();
    }
    let hashes: Vec<_> = (1..=500)
        .map(|s| store.hash_at(ORIGIN, s).unwrap().unwrap())
        .collect();
    drop(store);
    // Rewrite the index as the earlier format held it: one `C` key per
    // event (seq ‖ hash ‖ fingerprint), no runs, no state record.
    let mut writes: Vec<_> = kv
        .dump()
        .into_keys()
        .filter(|k| k.first() == Some(&layout::CLIENT_RUN) || k == layout::CLIENT_META_KEY)
        .map(|k| (k, None))
        .collect();
    for (i, c) in ids.iter().enumerate() {
        let fp = event(c, "n").fingerprint();
        let mut v = (i as u64 + 1).to_be_bytes().to_vec();
        v.extend_from_slice(&hashes[i]);
        v.extend_from_slice(&fp);
        writes.push((layout::client_key(ORIGIN, c), Some(v)));
    }
    kv.commit(writes).unwrap();
    // The migration takes the whole log as indexed (the earlier format
    // wrote a key in every commit), so these retries are answered from the
    // migrated run, not from ids read back from the log tail.
    let store = open(&kv, small());
    let r = rt
        .block_on(store.append(ids.iter().map(|c| event(c, "n")).collect(), 2))
        .unwrap();
    assert!(r
        .iter()
        .enumerate()
        .all(|(i, r)| r.duplicate && r.seq == i as u64 + 1));
    assert_eq!(keys_with(&kv, layout::CLIENT), 0, "old keys deleted");
    assert!(keys_with(&kv, layout::CLIENT_RUN) > 0, "moved into a run");
    let r = rt
        .block_on(store.append(vec![event("new", "n")], 3))
        .unwrap();
    assert_eq!((r[0].seq, r[0].duplicate), (501, false));
}
