//! The node's projection, kept in memory, rebuilt from the log on start and
//! advanced after every commit.
//!
//! Keeping projection state only in memory makes "consistent with the log
//! across crashes" hold by construction: after any crash the projection is a
//! fresh fold of the durable log, so nothing can be counted twice or missed.
//! The price is the rebuild at start (see BENCHMARKS.md for its speed).

use std::sync::RwLock;

use gridsync_projections::fold::{fold_log, Cut};
use gridsync_projections::{Projection, ProjectionConfig};
use gridsync_store::{Store, StoreError};
use tokio::sync::watch;

/// The projection and how far into the log it has been applied.
pub struct Projector {
    pub projection: RwLock<Projection>,
    /// Log offset applied up to (next entry to apply); changes wake streams.
    pub applied: watch::Sender<u64>,
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
        let mut p = Projection::new(cfg);
        let offset = fold_log(store, &mut p, 0, Cut::Everything, progress)?;
        Ok(Self {
            projection: RwLock::new(p),
            applied: watch::channel(offset).0,
        })
    }

    /// Applies entries committed since the last call.
    ///
    /// # Errors
    /// Storage errors.
    pub fn catch_up(&self, store: &Store) -> Result<(), StoreError> {
        let from = *self.applied.borrow();
        let mut p = self.projection.write().expect("lock");
        let to = fold_log(store, &mut p, from, Cut::Everything, &|_| {})?;
        drop(p);
        if to != from {
            self.applied.send_replace(to);
        }
        Ok(())
    }
}
