//! [`Kv`] on sled 0.34.7, durable in the sense of DESIGN.md "Storage".
//!
//! sled's `flush()` writes its log with `sync_file_range` on Linux, which
//! survives a killed process but not a power cut (spacejam/sled#1452). So a
//! commit is `apply_batch` + `flush()` + `File::sync_all()` on the database
//! file, and the directory is fsynced once when the database is created.
//! Values are kept at or below [`crate::layout::FRAGMENT_BYTES_MAX`] so no
//! tree node is large enough to go to sled's (never fsynced) blob files;
//! the log's large entries live in the body file beside sled's
//! (`bodies.rs`), `fdatasync`ed before each commit's batch.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::kv::{BodyFile, CommitTimings, Kv, KvEntry, KvWrite, SharedValue};
use crate::StoreError;

pub struct SledKv {
    db: sled::Db,
    db_file: File,
    /// The log's large entries (`bodies.rs`).
    bodies: BodyFile,
    path: PathBuf,
    skip_fsync: bool,
    skip_body_sync: bool,
}

impl SledKv {
    /// Opens (creating if needed) the sled database in `dir`.
    ///
    /// # Errors
    /// When sled cannot open the directory (in use by another process,
    /// damaged snapshot, permissions); the message says which directory.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let created = !dir.join("db").exists();
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("create {}: {e}", dir.display())))?;
        // sled releases its file lock from a background thread after the
        // last handle is dropped, so an immediate reopen in the same process
        // can find it still held: retry that case briefly.
        let mut attempt = 0;
        let opened = loop {
            // sled 0.34.7 panics on some damaged files (e.g. "tried to
            // serialize Uninitialized" while rebuilding its snapshot): a
            // damaged store is reported, never a crash.
            let r = guard("opening the database", || {
                sled::Config::new()
                    .path(dir)
                    .cache_capacity(cache_bytes)
                    .mode(sled::Mode::HighThroughput)
                    .open()
            })?;
            match r {
                // sled wraps the lock failure in an io::Error of its own
                // kind, naming the cause only in the message.
                Err(sled::Error::Io(ref e))
                    if (e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock"))
                        && attempt < 300 =>
                {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other,
            }
        };
        let db = opened.map_err(|e| {
            StoreError::Open(format!(
                "sled could not open {}: {e}. If another gridsync process uses this data directory, stop it; \
                 if the directory was damaged, restore it from a copy (gridsync never starts empty over a damaged log)",
                dir.display()
            ))
        })?;
        let db_file = File::open(dir.join("db"))
            .map_err(|e| StoreError::Io(format!("open {}/db for fsync: {e}", dir.display())))?;
        if created {
            // Make the new files' directory entries durable once.
            db.flush()
                .map_err(|e| StoreError::Io(format!("flush: {e}")))?;
            db_file
                .sync_all()
                .map_err(|e| StoreError::Io(format!("fsync db: {e}")))?;
            if let Ok(conf) = File::open(dir.join("conf")) {
                conf.sync_all()
                    .map_err(|e| StoreError::Io(format!("fsync conf: {e}")))?;
            }
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::Io(format!("fsync dir {}: {e}", dir.display())))?;
            if let Some(parent) = dir.parent() {
                if let Ok(p) = File::open(parent) {
                    let _ = p.sync_all();
                }
            }
        }
        let bodies = BodyFile::open(dir)?;
        Ok(Self {
            db,
            db_file,
            bodies,
            path: dir.to_owned(),
            skip_fsync: false,
            skip_body_sync: false,
        })
    }

    /// Test-only negative control for the power-loss test: commit with
    /// sled's `flush()` alone (`sync_file_range` on Linux), skipping the
    /// `fsync` of the database file. Loses acknowledged events when the
    /// power fails (not on `kill -9`: the page cache survives that).
    #[must_use]
    pub fn unsafe_skip_fsync(mut self) -> Self {
        self.skip_fsync = true;
        self
    }

    /// Test-only negative control for the power-loss test: commit sled's
    /// batch (pointers included) without first syncing the log bodies
    /// they point at. A power cut then leaves pointers to bytes the file
    /// never kept, which the next open refuses.
    #[must_use]
    pub fn unsafe_skip_body_fsync(mut self) -> Self {
        self.skip_body_sync = true;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the store on disk, bytes: sled's files and the body file.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.bodies.len()
    }

    /// Up to `limit` entries from `start` with keys beginning with
    /// `prefix`, each value as `value` makes it ([`Kv::scan`],
    /// [`Kv::scan_shared`]).
    fn range_of<V>(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        value: impl Fn(sled::IVec) -> V,
    ) -> Result<Vec<(Vec<u8>, V)>, StoreError> {
        guard("reading", || {
            let mut out = Vec::new();
            for item in self.db.range(start..) {
                let (k, v) = item.map_err(sled_err)?;
                if !k.starts_with(prefix) || out.len() >= limit {
                    break;
                }
                out.push((k.to_vec(), value(v)));
            }
            Ok(out)
        })?
    }
}

fn sled_err(e: sled::Error) -> StoreError {
    StoreError::Io(format!("sled: {e}"))
}

/// Runs a sled call, turning a panic inside sled (which 0.34.7 does on some
/// damaged files) into an error that names what was being done.
fn guard<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        StoreError::Open(format!(
            "sled failed while {what} ({msg}): the database files are damaged; \
             restore the data directory from a copy (gridsync never starts over a damaged log)"
        ))
    })
}

impl Kv for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        guard("reading", || self.db.get(key))?
            .map_err(sled_err)
            .map(|v| v.map(|v| v.to_vec()))
    }

    fn scan(&self, start: &[u8], prefix: &[u8], limit: usize) -> Result<Vec<KvEntry>, StoreError> {
        self.range_of(start, prefix, limit, |v| v.to_vec())
    }

    fn scan_shared(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, SharedValue)>, StoreError> {
        // sled's value as read (its own allocation), not a copy.
        self.range_of(start, prefix, limit, |v| Arc::new(v) as SharedValue)
    }

    fn visit(
        &self,
        start: &[u8],
        prefix: &[u8],
        each: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        // One iterator for the whole range; only sled's own calls are
        // guarded (a panic in `each` is not sled's damage).
        let mut items = guard("reading", || self.db.range(start..))?;
        while let Some(item) = guard("reading", || items.next())? {
            let (k, v) = item.map_err(sled_err)?;
            if !k.starts_with(prefix) || !each(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<KvEntry>, StoreError> {
        match guard("reading", || self.db.scan_prefix(prefix).next_back())? {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(sled_err)?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
        }
    }

    fn last_before(&self, prefix: &[u8], key: &[u8]) -> Result<Option<KvEntry>, StoreError> {
        match guard("reading", || self.db.range(..key).next_back())? {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(sled_err)?;
                Ok(k.starts_with(prefix).then(|| (k.to_vec(), v.to_vec())))
            }
        }
    }

    fn bodies(&self) -> Option<&BodyFile> {
        Some(&self.bodies)
    }

    fn commit(&self, batch: Vec<KvWrite>) -> Result<CommitTimings, StoreError> {
        let t0 = Instant::now();
        // The bodies the batch's pointers name, durable first.
        self.bodies
            .write(!self.skip_fsync && !self.skip_body_sync)?;
        let mut b = sled::Batch::default();
        for (k, v) in batch {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.db.apply_batch(b).map_err(sled_err)?;
        let t1 = Instant::now();
        self.db.flush().map_err(sled_err)?;
        let t2 = Instant::now();
        if !self.skip_fsync {
            self.db_file
                .sync_all()
                .map_err(|e| StoreError::Io(format!("fsync {}/db: {e}", self.path.display())))?;
        }
        let t3 = Instant::now();
        Ok(CommitTimings {
            apply_s: (t1 - t0).as_secs_f64(),
            flush_s: (t2 - t1).as_secs_f64(),
            fsync_s: (t3 - t2).as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemKv;

    /// `visit` hands over exactly what `scan` reads — from `start`, within
    /// `prefix`, in key order — and stops when told; sled's own and the
    /// trait's default (paging through `scan`, as `MemKv` has it) alike.
    #[test]
    fn visit_hands_over_what_scan_reads() {
        let dir = tempfile::tempdir().unwrap();
        let sled = SledKv::open(dir.path(), 8 << 20).unwrap();
        let mem = MemKv::new();
        let mut writes = Vec::new();
        for i in 0u32..10_000 {
            let tag = [b'A', b'I', b'L'][(i % 3) as usize];
            let mut k = vec![tag];
            k.extend_from_slice(&i.to_be_bytes());
            writes.push((k, Some(i.to_le_bytes().repeat((i % 7) as usize))));
        }
        for kv in [&sled as &dyn Kv, &mem] {
            kv.commit(writes.clone()).unwrap();
            for (start, prefix) in [(&b"I"[..], &b"I"[..]), (b"I\0\0\x10", b"I"), (b"", b"")] {
                let want = kv.scan(start, prefix, usize::MAX).unwrap();
                let mut got = Vec::new();
                kv.visit(start, prefix, &mut |k, v| {
                    got.push((k.to_vec(), v.to_vec()));
                    true
                })
                .unwrap();
                assert!(!want.is_empty());
                assert_eq!(got, want);
                let mut seen = 0;
                kv.visit(start, prefix, &mut |_, _| {
                    seen += 1;
                    seen < 5
                })
                .unwrap();
                assert_eq!(seen, 5, "stops when told");
            }
        }
    }
}
