//! A design probe for the store format: what an aggregator's log writes
//! cost in sled as the store keeps them today, against the same entries
//! appended to a file beside sled with a small pointer key in sled.
//!
//! The workload is a street catching up: `GRIDSYNC_BENCH_EVENTS` events
//! (default 1,000,000) of ~190 bytes from 1,000 origins, in chunks of
//! ~32 KiB (the chunk target), 4,096 events a commit (the default
//! `store.commit_events_max`). Each commit writes, through
//! [`SledKv::commit`] (one batch, flushed and fsynced: durable), each
//! chunk's index entry, its origin's head and the checkpoint, and either
//! - **sled**: each entry as the store writes it now, in fragments of
//!   [`FRAGMENT_BYTES_MAX`] under consecutive `L` keys; or
//! - **file**: the entries appended to one file, `fdatasync`ed before the
//!   sled commit (so a durable pointer never points past the file's
//!   durable end), and one `L` key per entry holding its position and
//!   length.
//!
//! After each commit the entries are read back as a sender forwarding them
//! would (a sled scan of the commit's `L` keys, or `pread` of the file).
//! Measured per variant: process CPU per event (user + system, all threads,
//! from `/proc/self/stat`), wall time, minor page faults (fresh memory
//! touched; on each run's line), bytes handed to `write` per byte of
//! entries (`/proc/self/io` `wchar`) and the size on disk. Variants
//! alternate, `GRIDSYNC_BENCH_RUNS` times each (default 3); medians.
//!
//! The process runs with the allocator settings `gridsync serve` gives an
//! aggregator (it re-executes itself with them, as the server does;
//! `crates/gridsync/src/malloc_tuning.rs`): with glibc's defaults each of
//! sled's fresh 512 KiB I/O buffers page-faults on every 4 KiB — 170,000
//! faults and ~1.3 µs per event here instead of ~18,000 and ~0.8 µs —,
//! which the server does not pay.
//!
//! Nothing here is the store's code path for the file variant: it is the
//! floor of what that format would cost (no checksum of the entries, no
//! recovery, no audit reads), to size the change before making it.
//!
//! `cargo bench --bench log_beside_sled`

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use gridsync_store::kv::Kv;
use gridsync_store::layout::{self, FRAGMENT_BYTES_MAX};
use gridsync_store::SledKv;
use gridsync_suite::median;

const ORIGINS: u64 = 1_000;
const EVENT_BYTES: usize = 190;
const CHUNK_BYTES: usize = 32 * 1024;
const COMMIT_EVENTS: u64 = 4_096;
/// `parts:u16be ‖ received_at_ms:i64be`, as the store's entries begin.
const ENTRY_HEADER_BYTES: usize = 10;
/// The node's default `store.cache_bytes`.
const CACHE_BYTES: u64 = 64 << 20;

fn wchar() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a wchar line")
}

/// CPU of this process so far (all threads), seconds.
fn cpu_s() -> f64 {
    let (_, ticks) = gridsync_suite::proc_usage(std::process::id());
    ticks as f64 / 100.0
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let m = e.metadata().expect("metadata");
                    if m.is_dir() {
                        dir_bytes(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

struct Run {
    cpu_us_per_event: f64,
    wall_s: f64,
    faults: u64,
    written_per_byte: f64,
    disk_mb: f64,
}

fn run(variant: &str, events: u64) -> Run {
    let dir = tempfile::tempdir().expect("a temp dir");
    let kv = SledKv::open(&dir.path().join("db"), CACHE_BYTES).expect("sled opens");
    kv.commit(vec![(
        layout::FORMAT_KEY.to_vec(),
        Some(layout::FORMAT_VALUE.to_vec()),
    )])
    .expect("format key");
    let body_path = dir.path().join("log.body");
    let body = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&body_path)
        .expect("the body file");
    let mut body_len = 0u64;
    let per_chunk = (CHUNK_BYTES / EVENT_BYTES) as u64;
    let mut seqs = vec![0u64; ORIGINS as usize];
    let (mut offset, mut done, mut next_origin) = (0u64, 0u64, 0u64);
    let mut entry_bytes = 0u64;
    let mut sink = 0u64;
    let (cpu0, w0, f0, t0) = (
        cpu_s(),
        wchar(),
        gridsync_suite::proc_minflt(std::process::id()),
        Instant::now(),
    );
    while done < events {
        let first_offset = offset;
        let mut batch = Vec::new();
        let mut appended = Vec::new();
        let mut placed = Vec::new();
        let mut in_commit = 0u64;
        while in_commit < COMMIT_EVENTS && done < events {
            let n = per_chunk.min(events - done);
            let origin = format!("community-{:04}", next_origin % ORIGINS);
            let first_seq = seqs[(next_origin % ORIGINS) as usize] + 1;
            let last_seq = first_seq + n - 1;
            seqs[(next_origin % ORIGINS) as usize] = last_seq;
            let chunk_len = n as usize * EVENT_BYTES + 200;
            let mut entry = Vec::with_capacity(ENTRY_HEADER_BYTES + chunk_len);
            let parts = (ENTRY_HEADER_BYTES + chunk_len).div_ceil(FRAGMENT_BYTES_MAX);
            entry.extend_from_slice(&u16::try_from(parts).expect("few parts").to_be_bytes());
            entry.extend_from_slice(&1_764_000_000_000i64.to_be_bytes());
            entry.extend((0..chunk_len).map(|i| (i as u64 ^ offset) as u8));
            entry_bytes += entry.len() as u64;
            if variant == "sled" {
                for (part, frag) in entry.chunks(FRAGMENT_BYTES_MAX).enumerate() {
                    let part = u16::try_from(part).expect("few parts");
                    batch.push((layout::log_key(offset, part), Some(frag.to_vec())));
                }
            } else {
                let pos = body_len + appended.len() as u64;
                let mut pointer = Vec::with_capacity(14);
                pointer.extend_from_slice(&u16::MAX.to_be_bytes());
                pointer.extend_from_slice(&pos.to_be_bytes());
                pointer
                    .extend_from_slice(&u32::try_from(entry.len()).expect("small").to_be_bytes());
                batch.push((layout::log_key(offset, 0), Some(pointer)));
                placed.push((pos, entry.len()));
                appended.extend_from_slice(&entry);
            }
            batch.push((
                layout::index_key(&origin, last_seq),
                Some(layout::index_value(offset, first_seq)),
            ));
            let mut head = vec![layout::HEAD];
            head.extend_from_slice(origin.as_bytes());
            batch.push((head, Some(vec![1u8; 140])));
            next_origin += 1;
            offset += 1;
            done += n;
            in_commit += n;
        }
        batch.push((
            layout::CHECKPOINT_KEY.to_vec(),
            Some(offset.to_be_bytes().to_vec()),
        ));
        if !appended.is_empty() {
            (&body).write_all(&appended).expect("append");
            body.sync_data().expect("fdatasync");
            body_len += appended.len() as u64;
        }
        kv.commit(batch).expect("commit");
        // Read back what the commit added, as a sender forwarding it does.
        if variant == "sled" {
            let rows = kv
                .scan(
                    &layout::log_key(first_offset, 0),
                    &[layout::LOG],
                    usize::MAX,
                )
                .expect("scan");
            sink += rows.iter().map(|(_, v)| u64::from(v[0])).sum::<u64>();
        } else {
            for (pos, len) in placed {
                let mut buf = vec![0u8; len];
                body.read_exact_at(&mut buf, pos).expect("pread");
                sink += u64::from(buf[0]);
            }
        }
    }
    let (cpu1, w1, f1, wall) = (
        cpu_s(),
        wchar(),
        gridsync_suite::proc_minflt(std::process::id()),
        t0.elapsed().as_secs_f64(),
    );
    std::hint::black_box(sink);
    drop(kv);
    Run {
        cpu_us_per_event: (cpu1 - cpu0) * 1e6 / events as f64,
        wall_s: wall,
        faults: f1 - f0,
        written_per_byte: (w1 - w0) as f64 / entry_bytes as f64,
        disk_mb: dir_bytes(dir.path()) as f64 / 1e6,
    }
}

/// Re-executes this process with `gridsync serve`'s allocator settings for
/// an aggregator, unless `GLIBC_TUNABLES` already sets `glibc.malloc.`.
fn with_server_malloc() {
    use std::os::unix::process::CommandExt;
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|v| v.contains("glibc.malloc.")) {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let tunables = format!(
        "glibc.malloc.mmap_threshold=1048576:glibc.malloc.trim_threshold=8388608:\
         glibc.malloc.arena_max={cores}"
    );
    let exe = std::env::current_exe().expect("this benchmark's path");
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", tunables)
        .exec();
    panic!("re-executing with GLIBC_TUNABLES failed: {err}");
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    with_server_malloc();
    let events = gridsync_suite::env_u64("GRIDSYNC_BENCH_EVENTS", 1_000_000);
    let runs = gridsync_suite::env_u64("GRIDSYNC_BENCH_RUNS", 3);
    let variants = ["sled", "file"];
    let mut results: Vec<Vec<Run>> = variants.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (i, v) in variants.iter().enumerate() {
            let r = run(v, events);
            eprintln!(
                "{v}: {:.2} µs CPU/event, {:.2} s, {} minor faults, wrote {:.2}× the entries, \
                 {:.0} MB on disk",
                r.cpu_us_per_event, r.wall_s, r.faults, r.written_per_byte, r.disk_mb
            );
            results[i].push(r);
        }
    }
    println!("log writes of a catch-up, {events} events from {ORIGINS} origins, {runs} runs each (medians)");
    println!("| entries kept | CPU per event (runs) | median | wall | written per byte of entries | on disk |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (v, rs) in variants.iter().zip(&results) {
        let cpus: Vec<String> = rs
            .iter()
            .map(|r| format!("{:.2}", r.cpu_us_per_event))
            .collect();
        println!(
            "| {v} | {} µs | {:.2} µs | {:.2} s | {:.2}× | {:.0} MB |",
            cpus.join(" / "),
            median(rs.iter().map(|r| r.cpu_us_per_event).collect()),
            median(rs.iter().map(|r| r.wall_s).collect()),
            median(rs.iter().map(|r| r.written_per_byte).collect()),
            median(rs.iter().map(|r| r.disk_mb).collect()),
        );
    }
}
