//! sled's I/O pool, patched to wake one thread per job (`vendor/sled`,
//! `PATCHES.md`), still wakes a thread for every job. A node's log writer
//! flushes, pauses while the next request arrives, flushes again: each
//! flush seals a buffer and queues its write on the pool, whose threads
//! have gone back to waiting meanwhile. A job queued without a wake-up is
//! run only when the waiting threads' one-second timeouts come round, so a
//! lost wake-up shows as slow flushes (a pool that is never woken took
//! 0.59 s a flush here, against well under a millisecond).
//!
//! Negative control (run by hand): with the `notify_one` in
//! `vendor/sled/src/threadpool.rs` removed, this test fails.

use std::time::{Duration, Instant};

const FLUSHES: u64 = 400;
/// Far above what a working pool needs for all the flushes (~0.1–0.2 s
/// here) and reached after ~14 flushes of a pool that is never woken.
const FLUSHING_MAX: Duration = Duration::from_secs(8);

#[test]
fn a_flush_after_a_pause_is_written_without_waiting_for_a_timeout() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .expect("sled opens");
    let mut flushing = Duration::ZERO;
    for i in 0..FLUSHES {
        db.insert(i.to_be_bytes(), vec![7u8; 1024]).expect("insert");
        let t = Instant::now();
        db.flush().expect("flush");
        flushing += t.elapsed();
        if flushing > FLUSHING_MAX {
            break;
        }
        // Long enough for the pool's threads to be waiting again.
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        flushing < FLUSHING_MAX,
        "flushes took {flushing:?} (all {FLUSHES} may take {FLUSHING_MAX:?}): \
         their writes waited on sled's pool — a lost wake-up"
    );
    assert_eq!(db.len() as u64, FLUSHES, "every key is held");
}
