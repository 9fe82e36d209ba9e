//! The node's projection, kept in memory, rebuilt from the log on start and
//! advanced after every commit.
//!
//! Keeping projection state only in memory makes "consistent with the log
//! across crashes" hold by construction: after any crash the projection is a
//! fresh fold of the durable log, so nothing can be counted twice or missed.
//! The price is the rebuild at start (see BENCHMARKS.md for its speed).

use std::sync::RwLock;

use gridsync_model::kinds::EventRef;
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
        let offset = apply_from(store, &mut p, 0, progress)?;
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
        let to = apply_from(store, &mut p, from, &|_| {})?;
        drop(p);
        if to != from {
            self.applied.send_replace(to);
        }
        Ok(())
    }
}

/// Finds a correction's target in the store (its envelope bytes).
fn target_lookup(store: &Store) -> impl Fn(&str, u64) -> Option<Vec<u8>> + '_ {
    move |origin: &str, seq: u64| {
        store
            .find_event(&EventRef {
                origin: origin.to_owned(),
                seq,
            })
            .ok()
            .flatten()
            .map(|(_, rec)| rec.envelope)
    }
}

/// A projection of the log as it was at `as_of_ms`: by event time (only
/// events that occurred by then, and corrections made by then), or with
/// `known_at`, only log entries this node had committed by then.
///
/// # Errors
/// Storage errors or a log out of order.
pub fn fold_as_of(
    store: &Store,
    cfg: ProjectionConfig,
    as_of_ms: i64,
    known_at: bool,
) -> Result<Projection, String> {
    let mut p = Projection::new(cfg);
    let lookup = target_lookup(store);
    let mut offset = 0;
    loop {
        let entries = store.read_log(offset, 256).map_err(|e| e.to_string())?;
        if entries.is_empty() {
            return Ok(p);
        }
        for e in &entries {
            if known_at && e.received_at_ms > as_of_ms {
                continue;
            }
            for rec in &e.chunk.events {
                if !known_at {
                    let occurred = gridsync_model::Envelope::decode(&rec.envelope)
                        .map(|env| env.occurred_at.unix_ms)
                        .unwrap_or(i64::MAX);
                    if occurred > as_of_ms {
                        // Later seqs of the origin may have occurred earlier
                        // (late events): skip this one but keep the order.
                        p.skip(&rec.envelope).map_err(|e| e.to_string())?;
                        continue;
                    }
                }
                p.apply(&rec.envelope, &lookup)
                    .map_err(|err| format!("log entry {}: {err}", e.offset))?;
            }
        }
        offset = entries.last().expect("non-empty").offset + 1;
    }
}

/// Applies log entries from `offset` to the end; returns the next offset.
fn apply_from(
    store: &Store,
    p: &mut Projection,
    mut offset: u64,
    progress: &dyn Fn(u64),
) -> Result<u64, StoreError> {
    let lookup = target_lookup(store);
    let mut n = 0u64;
    loop {
        let entries = store.read_log(offset, 256)?;
        if entries.is_empty() {
            return Ok(offset);
        }
        for e in entries {
            for rec in &e.chunk.events {
                p.apply(&rec.envelope, &lookup)
                    .map_err(|err| StoreError::Corrupt(format!("log entry {}: {err}", e.offset)))?;
                n += 1;
            }
            offset = e.offset + 1;
        }
        progress(n);
    }
}
