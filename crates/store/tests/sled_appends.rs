//! sled, patched to split an appended-to leaf near its end (`vendor/sled`,
//! `PATCHES.md`), writes a log's appends about 2.8 times over instead of
//! about 3.6 times, and still keeps every tree node below the size that
//! would send it to sled's never-fsynced blob files.
//!
//! The workload is a node's log as [`SledKv::commit`] writes it: each
//! commit appends consecutive `L` keys holding full fragments
//! ([`layout::FRAGMENT_BYTES_MAX`]) and rewrites a few small keys (an
//! origin's head, the checkpoint), with the store's `V` key sorting after
//! the log. What sled writes is read from `/proc/self/io` (`wchar`: the
//! bytes this process handed to `write` and its kin); this file holds one
//! test, so nothing else in the process writes meanwhile.
//!
//! Negative controls (run by hand, each fails this test): `vendor/sled`'s
//! three changes for appends undone (batches in hash order, leaves split
//! in the middle, pages consolidated every 10 links): sled writes 3.63× the
//! appended bytes; only `batch.rs` undone (the append split never sees
//! keys in order): 3.64×; only the consolidation threshold back at 10:
//! 4.28×. With all three: 2.80–2.82×.

use gridsync_store::kv::Kv;
use gridsync_store::layout::{self, FRAGMENT_BYTES_MAX};
use gridsync_store::SledKv;

const COMMITS: u64 = 300;
const FRAGMENTS_PER_COMMIT: u64 = 20;
/// Bytes sled may write per appended byte: 2.80–2.82 with the patch,
/// 3.63 or more without any of its three parts (measured here).
const WRITTEN_PER_APPENDED_MAX: f64 = 3.2;

fn wchar() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a wchar line")
}

#[test]
fn appends_are_written_under_three_times_over_and_stay_out_of_blob_files() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let kv = SledKv::open(dir.path(), 64 << 20).expect("sled opens");
    kv.commit(vec![(
        layout::FORMAT_KEY.to_vec(),
        Some(layout::FORMAT_VALUE.to_vec()),
    )])
    .expect("format key");
    let fragment = |offset: u64| -> Vec<u8> {
        let mut v = vec![0u8; FRAGMENT_BYTES_MAX];
        v[..8].copy_from_slice(&offset.to_be_bytes());
        v
    };
    let before = wchar();
    let mut offset = 0u64;
    for commit in 0..COMMITS {
        let mut batch = Vec::new();
        for _ in 0..FRAGMENTS_PER_COMMIT {
            batch.push((layout::log_key(offset, 0), Some(fragment(offset))));
            offset += 1;
        }
        // An origin's head (one of a few dozen, rewritten in place) and
        // the checkpoint, as every commit writes them.
        let mut head = vec![layout::HEAD];
        head.extend_from_slice(format!("origin-{}", commit % 40).as_bytes());
        batch.push((head, Some(vec![1u8; 140])));
        batch.push((
            layout::CHECKPOINT_KEY.to_vec(),
            Some(offset.to_be_bytes().to_vec()),
        ));
        kv.commit(batch).expect("commit");
    }
    let written = wchar() - before;
    let appended = offset * FRAGMENT_BYTES_MAX as u64;
    let ratio = written as f64 / appended as f64;
    eprintln!("sled wrote {written} bytes for {appended} appended: {ratio:.2}×");
    assert!(
        ratio < WRITTEN_PER_APPENDED_MAX,
        "sled wrote {written} bytes for {appended} appended ({ratio:.2}×, at most \
         {WRITTEN_PER_APPENDED_MAX}× expected): appends split their leaves in the middle again"
    );

    let blobs = std::fs::read_dir(dir.path().join("blobs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        blobs, 0,
        "a tree node went to sled's blob files, which sled never fsyncs"
    );
    for o in 0..offset {
        let v = kv
            .get(&layout::log_key(o, 0))
            .expect("read")
            .unwrap_or_else(|| panic!("fragment {o} is missing"));
        assert_eq!(v, fragment(o), "fragment {o} reads back as written");
    }
    drop(kv);
    let kv = SledKv::open(dir.path(), 64 << 20).expect("sled reopens");
    for o in (0..offset).step_by(97) {
        assert_eq!(
            kv.get(&layout::log_key(o, 0)).expect("read"),
            Some(fragment(o)),
            "fragment {o} after a reopen"
        );
    }
}
