//! Large log entries in the body file beside sled (`bodies.rs`): written
//! once, named by pointers, read back across reopens; a tail no commit
//! recorded is cut off at open, a file shorter than the log says is
//! refused with what to do, an altered body is reported (never read as
//! another chunk), and a store written before body files (format 2) is
//! read as it is and upgraded.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use gridsync_model::ingest::PreparedEvent;
use gridsync_model::kinds::EventRef;
use gridsync_store::bodies::{is_pointer, Pointer, BLOCK_BYTES, BODIES_FILE};
use gridsync_store::sled_kv::SledKv;
use gridsync_store::{layout, KeyLookup, Kv, MemKv, OriginIdentity, Store, StoreConfig};

mod common;

const ORIGIN: &str = "c1";

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn keys() -> KeyLookup {
    Arc::new(|o: &str, _seq: u64| (o == ORIGIN).then(|| signing_key().verifying_key()))
}

fn open_on(kv: Arc<dyn Kv>, config: StoreConfig) -> Result<Store, gridsync_store::StoreError> {
    let identity = OriginIdentity {
        node_id: ORIGIN.into(),
        key: signing_key(),
    };
    Store::open(kv, config, Some(identity), keys())
}

fn sled(dir: &Path) -> Arc<SledKv> {
    Arc::new(SledKv::open(dir, 16 << 20).expect("sled opens"))
}

fn open(dir: &Path) -> Store {
    open_on(sled(dir), StoreConfig::default()).expect("open")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// A batch of `n` events of ~`note` bytes each.
fn batch(tag: &str, n: usize, note: usize) -> Vec<PreparedEvent> {
    (0..n)
        .map(|i| common::visit(ORIGIN, &format!("{tag}-{i}"), &"x".repeat(note)))
        .collect()
}

/// Appends, in turn, a large batch (6 events of ~1.5 KB: a body, or two
/// fragments) and a
/// small one (one event: packed), `rounds` times; returns the events.
fn append_rounds(store: &Store, from: usize, rounds: usize) -> u64 {
    let rt = rt();
    let mut events = 0;
    for r in from..from + rounds {
        rt.block_on(store.append(batch(&format!("big{r}"), 6, 1500), r as i64))
            .unwrap();
        rt.block_on(store.append(batch(&format!("small{r}"), 1, 10), r as i64))
            .unwrap();
        events += 7;
    }
    events
}

/// The log's values in sled, in key order.
fn log_values(kv: &dyn Kv) -> Vec<(Vec<u8>, Vec<u8>)> {
    kv.scan(&[layout::LOG], &[layout::LOG], usize::MAX).unwrap()
}

fn bodies_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(BODIES_FILE)).unwrap().len()
}

/// The body file of an open store holds `len` bytes of bodies, then at
/// most the zeros that pad its last block (written whole, `BLOCK_BYTES`).
fn assert_bodies_end(dir: &Path, len: u64) {
    let bytes = std::fs::read(dir.join(BODIES_FILE)).unwrap();
    let block = BLOCK_BYTES as u64;
    assert!(
        bytes.len() as u64 >= len && bytes.len() as u64 <= len.div_ceil(block) * block,
        "{} bytes in the file for {len} of bodies",
        bytes.len()
    );
    assert!(
        bytes[len as usize..].iter().all(|&b| b == 0),
        "padding is zeros"
    );
}

/// The body file's length the checkpoint records.
fn checkpoint_bodies_len(kv: &dyn Kv) -> Option<u64> {
    let v = kv
        .get(layout::CHECKPOINT_KEY)
        .unwrap()
        .expect("a checkpoint");
    (v.len() == 32).then(|| u64::from_be_bytes(v[24..32].try_into().unwrap()))
}

/// Every event of the log read back (its envelope), in log order: what each reader
/// returns agrees, and the whole log verifies with every signature.
fn read_all(store: &Store) -> Vec<Vec<u8>> {
    let log = store.read_log(0, 10_000).unwrap();
    let encoded = store.read_log_encoded(0, 10_000).unwrap();
    assert_eq!(log.len(), encoded.len());
    for (e, enc) in log.iter().zip(&encoded) {
        assert_eq!(e.chunk.encode(), enc.chunk, "entry {}", e.offset);
        assert_eq!(e.received_at_ms, enc.received_at_ms);
    }
    let last = log.last().map_or(0, |e| e.chunk.last_seq());
    for seq in [1, last / 2 + 1, last] {
        let r = EventRef {
            origin: ORIGIN.into(),
            seq,
        };
        let (found, _) = store.find_event(&r).unwrap().expect("event found");
        assert_eq!(found.envelope.seq, seq);
    }
    let by_origin = store.read_origin(ORIGIN, 0, 10_000).unwrap();
    assert_eq!(by_origin.len(), log.len());
    store.verify_log(true, &|| false).expect("the log verifies");
    log.iter()
        .flat_map(|e| e.chunk.events.iter().map(|ev| ev.envelope.clone()))
        .collect()
}

#[test]
fn large_entries_are_written_once_to_the_body_file_and_read_back_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let kv = sled(dir.path());
    let store = open_on(kv.clone(), StoreConfig::default()).unwrap();
    let events = append_rounds(&store, 0, 10);
    let before = read_all(&store);
    assert_eq!(before.len() as u64, events);
    drop(store);
    // In sled: packs and pointers only, no fragment; the pointers name
    // the whole file, each body once; the checkpoint records its length.
    let values = log_values(kv.as_ref());
    let pointers: Vec<Pointer> = values
        .iter()
        .filter_map(|(_, v)| Pointer::decode(v))
        .collect();
    assert_eq!(pointers.len(), 10, "one body per large entry");
    for (k, v) in &values {
        let (_, part) = layout::parse_log_key(k).unwrap();
        assert_eq!(part, 0, "no fragments");
        assert!(is_pointer(v) || layout::is_pack(v), "a pack or a pointer");
    }
    let mut next = 0;
    for p in &pointers {
        assert_eq!(p.position, next, "bodies follow each other");
        next += u64::from(p.length);
    }
    assert_bodies_end(dir.path(), next);
    assert_eq!(checkpoint_bodies_len(kv.as_ref()), Some(next));
    drop(kv);
    assert_eq!(bodies_len(dir.path()), next, "the padding cut off at close");
    let store = open(dir.path());
    assert_eq!(read_all(&store), before);
    // And the log goes on after the reopen.
    let more = append_rounds(&store, 10, 3);
    drop(store);
    let store = open(dir.path());
    assert_eq!(read_all(&store).len() as u64, events + more);
}

#[test]
fn bodies_no_commit_recorded_are_cut_off_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = open(dir.path());
        append_rounds(&store, 0, 4);
        read_all(&store)
    };
    let committed = bodies_len(dir.path());
    // A crash between a commit's append (even its fdatasync) and sled's
    // commit leaves bodies no pointer names.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(BODIES_FILE))
        .unwrap();
    f.write_all(&[7u8; 5000]).unwrap();
    drop(f);
    assert_eq!(bodies_len(dir.path()), committed + 5000);
    let store = open(dir.path());
    assert_eq!(
        bodies_len(dir.path()),
        committed,
        "cut back to the commit's"
    );
    assert_eq!(read_all(&store), before);
    // The next bodies go where the commit's ended.
    append_rounds(&store, 4, 2);
    drop(store);
    let store = open(dir.path());
    assert_eq!(read_all(&store).len(), before.len() + 14);
}

#[test]
fn a_body_file_shorter_than_the_log_says_is_refused_with_what_to_do() {
    for cut in [1u64, u64::MAX] {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            append_rounds(&store, 0, 3);
        }
        let len = bodies_len(dir.path());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(BODIES_FILE))
            .unwrap();
        // One byte lost, or the file gone (a copy of sled's files alone).
        f.set_len(len.saturating_sub(cut)).unwrap();
        drop(f);
        let err = open_on(sled(dir.path()), StoreConfig::default())
            .err()
            .expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains(BODIES_FILE) && msg.contains("restore the whole data directory"),
            "{msg}"
        );
        // Nothing was cut or written by the refusal.
        assert_eq!(bodies_len(dir.path()), len.saturating_sub(cut));
    }
}

#[test]
fn an_altered_body_is_reported_never_read_as_another_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let kv = sled(dir.path());
        let store = open_on(kv.clone(), StoreConfig::default()).unwrap();
        append_rounds(&store, 0, 3);
        read_all(&store);
        drop(store);
        let v = log_values(kv.as_ref());
        v.iter().find_map(|(_, v)| Pointer::decode(v)).unwrap()
    };
    // One byte of the first body flipped (the log's last entry, which the
    // open reads, is untouched).
    let path = dir.path().join(BODIES_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (first.position + u64::from(first.length) / 2) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let store = open(dir.path());
    let err = store.read_log(0, 100).expect_err("the read fails");
    assert!(err.to_string().contains("checksum"), "{err}");
    assert!(store.verify_log(false, &|| false).is_err());
    drop(store);
    let whole = StoreConfig {
        verify_whole_log: true,
        ..StoreConfig::default()
    };
    let err = open_on(sled(dir.path()), whole).err().expect("refused");
    assert!(err.to_string().contains("checksum"), "{err}");
    // Control: the byte put back, everything reads again.
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let store = open(dir.path());
    assert_eq!(read_all(&store).len(), 21);
}

#[test]
fn a_store_written_before_body_files_is_read_as_it_is_and_upgraded() {
    // What a build before format 3 left: large entries in fragments, a
    // checkpoint without the body file's length.
    let mem = MemKv::new();
    let before = {
        let store = open_on(Arc::new(mem.clone()), StoreConfig::default()).unwrap();
        append_rounds(&store, 0, 3);
        read_all(&store)
    };
    let dir = tempfile::tempdir().unwrap();
    let kv = sled(dir.path());
    let mut writes: Vec<_> = mem.dump().into_iter().map(|(k, v)| (k, Some(v))).collect();
    writes.push((
        layout::FORMAT_KEY.to_vec(),
        Some(layout::FORMAT_VALUE_2.to_vec()),
    ));
    kv.commit(writes).unwrap();
    assert_eq!(checkpoint_bodies_len(kv.as_ref()), None);
    assert!(
        log_values(kv.as_ref())
            .iter()
            .any(|(k, _)| layout::parse_log_key(k).is_some_and(|(_, part)| part > 0)),
        "the old entries are in fragments"
    );
    let store = open_on(kv.clone(), StoreConfig::default()).unwrap();
    assert_eq!(
        kv.get(layout::FORMAT_KEY).unwrap().as_deref(),
        Some(layout::FORMAT_VALUE),
        "marked as format 3 at open"
    );
    assert_eq!(read_all(&store), before);
    append_rounds(&store, 3, 3);
    drop(store);
    assert_bodies_end(dir.path(), checkpoint_bodies_len(kv.as_ref()).unwrap());
    let pointers = log_values(kv.as_ref())
        .iter()
        .filter(|(_, v)| is_pointer(v))
        .count();
    assert_eq!(pointers, 3, "the new large entries are bodies");
    drop(kv);
    let whole = StoreConfig {
        verify_whole_log: true,
        ..StoreConfig::default()
    };
    let store = open_on(sled(dir.path()), whole).unwrap();
    let all = read_all(&store);
    assert_eq!(all.len(), 42);
    assert_eq!(all[..21], before[..]);
}
