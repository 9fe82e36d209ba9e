//! The audited data directory, never touched: every audit reads a copy.

use std::path::Path;
use std::sync::Arc;

use gridsync_deploy::topology::Topology;
use gridsync_store::{SledKv, Store, StoreConfig};

use crate::AuditError;

/// sled's page cache for an audited copy. The audit (and a replay, an
/// as-of projection) reads each page of the log and index once, in order:
/// a larger cache only holds pages already done with. 10 M events, every
/// head checked, alternating (2026-12-05): 16 MiB 9.11 / 9.22 / 9.33 s
/// against 64 MiB 9.61 / 9.36 / 9.71 s and ~60 MB less; 4 MiB no faster
/// than 16; `audit replay` 57 / 64 s against 71 / 75 s.
const CACHE_BYTES: u64 = 16 << 20;

/// Copies a data directory (so the audited files are never touched).
///
/// # Errors
/// I/O errors.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Copies `data` into a temporary directory (under `TMPDIR`, else the
/// system's) and opens the copy's database raw (nothing checked yet:
/// `verify` reports every problem itself). Refused, before and after the
/// copy, while a running node holds the directory's database (a copy
/// taken under a running node can be torn — its newest writes half there
/// — and then look truncated or damaged), and when the temporary
/// directory's filesystem has no room for the copy (it is often a tmpfs,
/// i.e. memory).
///
/// # Errors
/// Not a gridsync data directory, in use by a running node, no room for
/// the copy, or the copy failed.
pub fn open_copy(data: &Path) -> Result<(tempfile::TempDir, SledKv), AuditError> {
    let unreadable = |m: String| AuditError::Unreadable(m);
    if !data.join("db").exists() {
        return Err(unreadable(format!(
            "{} is not a gridsync data directory (no sled database in it)",
            data.display()
        )));
    }
    refuse_if_in_use(data)?;
    let tmp = tempfile::tempdir().map_err(|e| unreadable(e.to_string()))?;
    let needed =
        dir_bytes(data).map_err(|e| unreadable(format!("cannot read {}: {e}", data.display())))?;
    if let Ok(free) = free_bytes(tmp.path()) {
        if free < needed.saturating_add(COPY_ROOM_BYTES) {
            return Err(unreadable(format!(
                "the audit reads a copy of {} ({} MB) and {} has {} MB free: set TMPDIR to a \
                 directory on a filesystem with room (not a tmpfs, which is memory)",
                data.display(),
                needed >> 20,
                tmp.path().parent().unwrap_or(tmp.path()).display(),
                free >> 20
            )));
        }
    }
    copy_dir(data, tmp.path())
        .map_err(|e| unreadable(format!("cannot copy {}: {e}", data.display())))?;
    refuse_if_in_use(data)?;
    let kv = SledKv::open(tmp.path(), CACHE_BYTES).map_err(|e| unreadable(e.to_string()))?;
    Ok((tmp, kv))
}

/// Room left beside the copy: sled writes a little on opening it.
const COPY_ROOM_BYTES: u64 = 64 << 20;

/// A running node holds an exclusive `flock` on its database file (sled
/// takes it on open): a shared one is refused then. Ours is released at
/// once (the file is closed), so a node starting meanwhile is not held up.
fn refuse_if_in_use(data: &Path) -> Result<(), AuditError> {
    use rustix::fs::{flock, FlockOperation};
    let db = data.join("db");
    let file = std::fs::File::open(&db)
        .map_err(|e| AuditError::Unreadable(format!("cannot read {}: {e}", db.display())))?;
    match flock(&file, FlockOperation::NonBlockingLockShared) {
        Err(rustix::io::Errno::WOULDBLOCK) => Err(AuditError::Unreadable(format!(
            "{} is in use by a running node (its database is locked): a copy taken now could \
             be torn and look damaged. Stop the node first, or audit a copy or filesystem \
             snapshot taken while it was stopped",
            data.display()
        ))),
        // Locked (and released with the file), or locks unsupported here.
        _ => Ok(()),
    }
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total = total.saturating_add(if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        });
    }
    Ok(total)
}

/// Bytes free to an unprivileged writer on the filesystem holding `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Opens a copy of `data` as a store, once `audit verify` of the copy
/// found nothing wrong (chains, canonical envelopes, heads table, chunk
/// index, the node's heads record beside `data`, and the signatures
/// `signatures` names: every chunk's, or each run's newest head, which
/// vouches for its chain through the links) — the same parallel pass as
/// `audit verify`, ~2× faster than the store's own one-thread walk of
/// the whole log. Replay and as-of projection read only a log that passed
/// it; the store then opens at its checkpoint. `progress` gets the
/// number of events verified so far.
///
/// # Errors
/// As [`open_copy`], or the log does not verify (the first problem, and
/// how many there are).
pub fn open_verified(
    data: &Path,
    topology: &Topology,
    signatures: crate::verify::Signatures,
    progress: &dyn Fn(u64),
) -> Result<(tempfile::TempDir, Store), AuditError> {
    let (tmp, kv) = open_copy(data)?;
    let how = crate::verify::How {
        signatures,
        ..Default::default()
    };
    let report = crate::verify::verify_data_dir(&kv, data, topology, (None, None), how, progress);
    if let Some(first) = report.problems.first() {
        let at = match (&first.origin, first.seq) {
            (Some(o), Some(seq)) => format!("{o} seq {seq}: "),
            (Some(o), None) => format!("{o}: "),
            _ => String::new(),
        };
        let more = match report.problems.len() {
            1 => String::new(),
            n => format!(" (and {} more problems)", n - 1),
        };
        return Err(AuditError::Problems(format!(
            "the log does not verify: {} — {at}{}{more}; `gridsync audit verify` lists every problem",
            first.kind, first.message
        )));
    }
    let keys = topology.clone();
    let store = Store::open(
        Arc::new(kv),
        StoreConfig::default(),
        None,
        Arc::new(move |o: &str, seq: u64| keys.key_at(o, seq)),
    )
    .map_err(|e| AuditError::Problems(format!("the log does not verify: {e}")))?;
    Ok((tmp, store))
}
