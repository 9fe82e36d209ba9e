//! The node's projection, kept in memory, advanced after every commit, and
//! saved beside the log (`gridsync_projections::snapshot`) at most every
//! `projections.snapshot_interval_s` and at shutdown.
//!
//! The projection is derived data: at start it is the saved one folded on
//! with what was committed after it, when the snapshot belongs to this log
//! and these settings; otherwise (none, damaged, another log, a fold after
//! it that fails) a fresh fold of the whole durable log. Either way nothing
//! is counted twice or missed: the snapshot records exactly the log entry
//! its state stops before.

use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use gridsync_projections::fold::{fold_log, Cut};
use gridsync_projections::{snapshot, Projection, ProjectionConfig};
use gridsync_store::{Store, StoreError};
use tokio::sync::watch;

/// The projection and how far into the log it has been applied.
pub struct Projector {
    pub projection: RwLock<Projection>,
    /// Log offset applied up to (next entry to apply); changes wake streams.
    /// Moves only while the projection's write lock is held.
    pub applied: watch::Sender<u64>,
    /// Where the projection is saved (none: never saved).
    snapshot: Option<PathBuf>,
    /// When it was last saved, and at which offset.
    saved: Mutex<(Option<Instant>, u64)>,
    /// The log entry the start folded from: the snapshot's, or 0 when the
    /// whole log was folded (metric `gridsync_projection_resumed_from`).
    pub resumed_from: u64,
}

impl Projector {
    /// Folds the whole log into a fresh projection.
    ///
    /// # Errors
    /// Storage errors, or a log whose events are out of order.
    pub fn rebuild(
        store: &Store,
        cfg: ProjectionConfig,
        progress: &dyn Fn(u64),
    ) -> Result<Self, StoreError> {
        Self::open(store, cfg, None, progress)
    }

    /// The projection from the snapshot in `snapshot` folded on to the end
    /// of the log, or (without a snapshot that fits) from the whole log.
    ///
    /// # Errors
    /// Storage errors, or a log whose events are out of order.
    pub fn open(
        store: &Store,
        cfg: ProjectionConfig,
        snapshot: Option<PathBuf>,
        progress: &dyn Fn(u64),
    ) -> Result<Self, StoreError> {
        let loaded = match snapshot.as_deref() {
            Some(file) if file.exists() => match snapshot::load(file, cfg.clone(), store) {
                Ok(x) => Some(x),
                Err(why) => {
                    tracing::warn!(file = %file.display(), %why, "projection snapshot not used; folding the whole log");
                    None
                }
            },
            _ => None,
        };
        let resumed = loaded.and_then(|(mut p, from)| {
            match fold_log(store, &mut p, from, Cut::Everything, progress) {
                Ok(to) => {
                    tracing::info!(from, to, "projection resumed from its snapshot");
                    Some((p, to, Some(from)))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "folding on from the projection snapshot failed; folding the whole log");
                    None
                }
            }
        });
        let (p, offset, resumed_from) = match resumed {
            Some(x) => x,
            None => {
                let mut p = Projection::new(cfg);
                let to = fold_log(store, &mut p, 0, Cut::Everything, progress)?;
                (p, to, None)
            }
        };
        Ok(Self {
            projection: RwLock::new(p),
            applied: watch::channel(offset).0,
            snapshot,
            // What is on disk: the snapshot resumed from, or nothing that
            // fits (replaced at the first save).
            saved: Mutex::new((None, resumed_from.unwrap_or(u64::MAX))),
            resumed_from: resumed_from.unwrap_or(0),
        })
    }

    /// Applies entries committed since the last call.
    ///
    /// # Errors
    /// Storage errors.
    pub fn catch_up(&self, store: &Store) -> Result<(), StoreError> {
        let mut p = self.projection.write().expect("lock");
        let from = *self.applied.borrow();
        let to = fold_log(store, &mut p, from, Cut::Everything, &|_| {})?;
        if to != from {
            self.applied.send_replace(to);
        }
        Ok(())
    }

    /// Saves the projection if it moved since the last save and `interval`
    /// has passed (or `now`). Failures are logged: the snapshot is only a
    /// shortcut for the next start.
    pub fn save_if_due(&self, store: &Store, interval: Duration, now: bool) {
        let Some(file) = &self.snapshot else { return };
        let mut saved = self.saved.lock().expect("lock");
        if !now && saved.0.is_some_and(|t| t.elapsed() < interval) {
            return;
        }
        let p = self.projection.read().expect("lock");
        // Read under the lock: the offset the state stops before.
        let applied = *self.applied.borrow();
        if saved.1 == applied {
            return;
        }
        let started = Instant::now();
        match snapshot::save(&p, applied, store, file) {
            Ok(()) => {
                *saved = (Some(Instant::now()), applied);
                tracing::debug!(
                    offset = applied,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "projection saved"
                );
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot save the projection")
            }
        }
    }
}
