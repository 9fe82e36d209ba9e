//! sled, patched to settle its cache's accounting sooner (`vendor/sled`,
//! `PATCHES.md`), holds about what its `cache_capacity` says while a
//! reader goes through a log larger than the cache.
//!
//! sled 0.34.7 records each page read or written in one of 256 shards and
//! applies a shard's records (and evicts) only when 64 have gathered, so
//! up to ~16,000 pages stay in memory whatever the capacity: a scan of a
//! 10 M-event street's log held ~940 MB with a 16 MiB cache. The patch: 16
//! shards, records applied 8 at a time.
//!
//! Negative control (run by hand): with `N_SHARDS` 256 and
//! `MAX_QUEUE_ITEMS` 64 back in `vendor/sled/src/lru.rs`, this test fails:
//! the open and scan grow the RSS by 149 MB (73 → 222 MB; the writing
//! before left more behind too), against 11 MB (34 → 45) patched.

use gridsync_store::kv::Kv;
use gridsync_store::layout::{self, FRAGMENT_BYTES_MAX};
use gridsync_store::SledKv;

/// ~190 MB of log in 7 KiB fragments, ~2,200 tree leaves.
const FRAGMENTS: u64 = 28_000;
const CACHE_BYTES: u64 = 8 << 20;
/// What the open and the scan may add to the process's RSS: the cache,
/// the pages whose reads are not yet accounted (16 shards × 7), and the
/// allocator's slack.
const GROWTH_MAX_MB: u64 = 50;

fn rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("a VmRSS line")
        / 1024
}

#[test]
fn a_scan_of_a_log_larger_than_the_cache_stays_near_the_cache() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let fragment = |offset: u64| -> Vec<u8> {
        let mut v = vec![(offset % 251) as u8; FRAGMENT_BYTES_MAX];
        v[..8].copy_from_slice(&offset.to_be_bytes());
        v
    };
    {
        let kv = SledKv::open(dir.path(), CACHE_BYTES).expect("sled opens");
        let mut offset = 0;
        while offset < FRAGMENTS {
            let batch = (offset..(offset + 50).min(FRAGMENTS))
                .map(|o| (layout::log_key(o, 0), Some(fragment(o))))
                .collect();
            kv.commit(batch).expect("commit");
            offset += 50;
        }
    }
    let base = rss_mb();
    let kv = SledKv::open(dir.path(), CACHE_BYTES).expect("sled reopens");
    let mut peak = base;
    let mut start = vec![layout::LOG];
    let mut read = 0u64;
    loop {
        let page = kv.scan(&start, &[layout::LOG], 128).expect("scan");
        let Some((last, _)) = page.last() else { break };
        start.clone_from(last);
        start.push(0);
        for (k, v) in &page {
            let (offset, _) = layout::parse_log_key(k).expect("a log key");
            assert_eq!(v, &fragment(offset), "fragment {offset} reads back");
            read += 1;
        }
        peak = peak.max(rss_mb());
    }
    assert_eq!(read, FRAGMENTS, "every fragment was read");
    let growth = peak - base;
    eprintln!("RSS {base} MB before the open, peak {peak} MB during the scan: +{growth} MB");
    assert!(
        growth < GROWTH_MAX_MB,
        "reading {FRAGMENTS} fragments (~{} MB) with a {} MiB cache grew the RSS by {growth} MB \
         (at most {GROWTH_MAX_MB} expected): sled keeps pages it no longer accounts for",
        (FRAGMENTS * FRAGMENT_BYTES_MAX as u64) >> 20,
        CACHE_BYTES >> 20
    );
}
