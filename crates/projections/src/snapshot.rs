//! The projection saved beside the log, so a restart folds only what was
//! committed after it instead of the whole log.
//!
//! A snapshot is derived data: it is taken only if everything about it
//! agrees with the log it is opened with — its checksum, the projection
//! settings it was made with, the log entry it stops before (the head of
//! the entry just before it must be the log's), and no origin ahead of the
//! log's head. Otherwise the projection is rebuilt from the whole log, as
//! before, and a new snapshot replaces the old. It is written whole to a
//! temporary file, fsynced, and renamed over the old one, so a crash leaves
//! the old one or the new one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use gridsync_model::Hash32;
use gridsync_store::Store;
use serde::{Deserialize, Serialize};

use crate::{OriginState, Projection, ProjectionConfig};

const MAGIC: &[u8] = b"gridsync-projection-1\n";

/// Where the snapshot of the log in `data_dir` is kept: beside it, like the
/// heads record (`<data>.projection`).
pub fn path(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    data_dir.with_file_name(format!("{name}.projection"))
}

/// The head of the log entry a snapshot stops after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Tip {
    origin: String,
    seq: u64,
    hash: Hash32,
}

#[derive(Serialize)]
struct Saving<'a> {
    settings: String,
    offset: u64,
    tip: Option<Tip>,
    origins: &'a BTreeMap<String, OriginState>,
}

#[derive(Deserialize)]
struct Saved {
    settings: String,
    offset: u64,
    tip: Option<Tip>,
    origins: BTreeMap<String, OriginState>,
}

/// What a projection's numbers depend on besides the log.
fn settings(cfg: &ProjectionConfig) -> String {
    format!(
        "{:?}|{}|{:?}",
        cfg.timezone.iana_name(),
        cfg.fever_celsius,
        cfg.flagged_region_prefixes
    )
}

/// The head of log entry `offset - 1` (none before the first).
fn tip(store: &Store, offset: u64) -> Result<Option<Tip>, String> {
    let Some(before) = offset.checked_sub(1) else {
        return Ok(None);
    };
    let entry = store
        .read_log(before, 1)
        .map_err(|e| e.to_string())?
        .pop()
        .filter(|e| e.offset == before)
        .ok_or_else(|| format!("the log has no entry {before}"))?;
    let h = &entry.chunk.head;
    Ok(Some(Tip {
        origin: h.origin.clone(),
        seq: h.seq,
        hash: h.hash,
    }))
}

/// Writes `p`, applied up to log entry `offset` of `store`, to `file`.
///
/// # Errors
/// I/O errors, or the log no longer holding entry `offset - 1`.
pub fn save(p: &Projection, offset: u64, store: &Store, file: &Path) -> Result<(), String> {
    let body = rmp_serde::to_vec(&Saving {
        settings: settings(&p.cfg),
        offset,
        tip: tip(store, offset)?,
        origins: &p.origins,
    })
    .map_err(|e| e.to_string())?;
    let mut bytes = Vec::with_capacity(MAGIC.len() + body.len() + 32);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(blake3::hash(&bytes).as_bytes());
    let tmp = file.with_extension("projection.tmp");
    let io = |e: std::io::Error| format!("{}: {e}", tmp.display());
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, file).map_err(io)?;
    if let Some(dir) = file.parent() {
        // The rename itself durable (best effort where directories cannot
        // be opened).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The snapshot in `file` if it belongs to `store`'s log and `cfg`, with
/// the log offset to fold on from; otherwise why not.
///
/// # Errors
/// No snapshot, or one that does not fit (named): rebuild instead.
pub fn load(
    file: &Path,
    cfg: ProjectionConfig,
    store: &Store,
) -> Result<(Projection, u64), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let (content, sum) = bytes
        .split_at_checked(bytes.len().saturating_sub(32))
        .ok_or("too short")?;
    if !content.starts_with(MAGIC) || blake3::hash(content).as_bytes() != sum {
        return Err("not an intact projection snapshot".into());
    }
    let saved: Saved =
        rmp_serde::from_slice(&content[MAGIC.len()..]).map_err(|e| format!("undecodable: {e}"))?;
    if saved.settings != settings(&cfg) {
        return Err("made with other projection settings".into());
    }
    let end = *store.subscribe().borrow();
    if saved.offset > end {
        return Err(format!(
            "made at log entry {} but the log ends at {end}",
            saved.offset
        ));
    }
    if tip(store, saved.offset)? != saved.tip {
        return Err(format!(
            "the log's entry before {} is not the one the snapshot was made after",
            saved.offset
        ));
    }
    let heads = store.heads();
    if let Some((o, s)) = saved
        .origins
        .iter()
        .find(|(o, s)| s.applied_seq > heads.get(*o).map_or(0, |h| h.seq))
    {
        return Err(format!(
            "it has origin {o} at seq {} beyond the log's head",
            s.applied_seq
        ));
    }
    let mut p = Projection::new(cfg);
    p.origins = saved.origins;
    Ok((p, saved.offset))
}
