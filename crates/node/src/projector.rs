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
//!
//! The start folds for at most `projections.fold_before_listen_s`; what is
//! left (a node of millions of events with no saved projection: ~11 s at
//! 10 M) is folded by the running node a page of log entries at a time,
//! so the node listens, takes events and answers queries meanwhile. Until
//! it is done its answers count a prefix of the log: `/v1/status` says how
//! far (`log.projected_chunks`), and each origin's `coverage` in an
//! aggregates answer says which of its events are counted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use gridsync_projections::fold::{fold_log_while, Cut, Recent};
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
    /// The start stopped folding before the end of the log, and
    /// [`Projector::finish_start`] has not folded the rest yet: the
    /// projector task leaves the fold to it meanwhile.
    start_pending: AtomicBool,
    /// The log entries folded last, where corrections find their targets
    /// (locked while the projection's write lock is held).
    recent: Mutex<Recent>,
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
        Self::open(store, cfg, None, progress, None)
    }

    /// The projection from the snapshot in `snapshot` folded on towards
    /// the end of the log, or (without a snapshot that fits) from the
    /// whole log — for at most `fold_for` (`None`: to the end). What is
    /// left is for [`Projector::finish_start`].
    ///
    /// # Errors
    /// Storage errors, or a log whose events are out of order.
    pub fn open(
        store: &Store,
        cfg: ProjectionConfig,
        snapshot: Option<PathBuf>,
        progress: &dyn Fn(u64),
        fold_for: Option<Duration>,
    ) -> Result<Self, StoreError> {
        let deadline = fold_for.and_then(|d| Instant::now().checked_add(d));
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
        let mut recent = Recent::default();
        let resumed = loaded.and_then(|(mut p, from)| {
            match fold_until(store, &mut p, &mut recent, from, progress, deadline) {
                Ok(to) => {
                    tracing::info!(from, to = to.0, "projection resumed from its snapshot");
                    Some((p, to, Some(from)))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "folding on from the projection snapshot failed; folding the whole log");
                    None
                }
            }
        });
        let (p, (offset, end), resumed_from) = match resumed {
            Some(x) => x,
            None => {
                let mut p = Projection::new(cfg);
                recent = Recent::default();
                let to = fold_until(store, &mut p, &mut recent, 0, progress, deadline)?;
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
            start_pending: AtomicBool::new(!end),
            recent: Mutex::new(recent),
        })
    }

    /// Whether the start left part of the log for [`Projector::finish_start`].
    pub fn start_pending(&self) -> bool {
        self.start_pending.load(Ordering::Acquire)
    }

    /// Folds what the start left (nothing when it reached the end of the
    /// log), then hands the projection to the projector task and saves it
    /// (a crash then resumes from here). `gridsync serve` runs it on the
    /// thread that opened the node, before the whole-log check: the two
    /// passes after each other rather than fighting for the cores, and the
    /// projection's allocations in the arena the open used (a 10 M street
    /// rested up to ~35 MB higher with the fold on another thread).
    ///
    /// `stop` is asked between pages: a node stopping leaves the rest
    /// (its projector task saves what was folded, which the next start
    /// resumes from) rather than holding its shutdown for the whole fold.
    ///
    /// # Errors
    /// Storage errors, or a log whose events are out of order.
    pub fn finish_start(&self, store: &Store, stop: &dyn Fn() -> bool) -> Result<(), StoreError> {
        if !self.start_pending() {
            return Ok(());
        }
        if !self.fold_on(store, stop)? {
            return Ok(());
        }
        self.start_pending.store(false, Ordering::Release);
        // Commits made meanwhile and not folded yet: the projector task
        // wakes only at the next commit.
        self.catch_up(store)?;
        self.save_if_due(store, Duration::ZERO, true);
        Ok(())
    }

    /// Applies entries committed since the last call, a page of log
    /// entries per hold of the projection's lock (queries wait for one
    /// page at most, not for a fold of the whole log).
    ///
    /// # Errors
    /// Storage errors.
    pub fn catch_up(&self, store: &Store) -> Result<(), StoreError> {
        self.fold_on(store, &|| false).map(|_| ())
    }

    /// [`Projector::catch_up`] asking `stop` between pages: whether it
    /// reached the end of the log.
    fn fold_on(&self, store: &Store, stop: &dyn Fn() -> bool) -> Result<bool, StoreError> {
        loop {
            let mut p = self.projection.write().expect("lock");
            let mut recent = self.recent.lock().expect("lock");
            let from = *self.applied.borrow();
            let (to, end) = fold_log_while(
                store,
                &mut p,
                &mut recent,
                from,
                Cut::Everything,
                &|_| {},
                &mut || false,
            )?;
            if to != from {
                self.applied.send_replace(to);
            }
            if end {
                return Ok(true);
            }
            drop((p, recent));
            if stop() {
                return Ok(false);
            }
        }
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

/// Folds `p` on from log entry `offset` until the end of the log or
/// `deadline` (checked after each page); the next entry to apply, and
/// whether it is the end. `progress` gets the events applied so far.
fn fold_until(
    store: &Store,
    p: &mut Projection,
    recent: &mut Recent,
    offset: u64,
    progress: &dyn Fn(u64),
    deadline: Option<Instant>,
) -> Result<(u64, bool), StoreError> {
    let mut go_on = || deadline.is_none_or(|d| Instant::now() < d);
    fold_log_while(
        store,
        p,
        recent,
        offset,
        Cut::Everything,
        progress,
        &mut go_on,
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ed25519_dalek::SigningKey;
    use gridsync_model::ingest::{prepare, IngestContext, IngestLimits};
    use gridsync_store::{MemKv, OriginIdentity, StoreConfig};
    use serde_json::json;

    use super::*;

    const NOW_MS: i64 = 1_580_300_000_000;

    /// A community's store holding `n` temperature readings, each posted
    /// alone (one log entry each).
    fn store_with(n: u64) -> Store {
        let key = SigningKey::from_bytes(&[7; 32]);
        let vk = key.verifying_key();
        let store = Store::open(
            Arc::new(MemKv::default()),
            StoreConfig::default(),
            Some(OriginIdentity {
                node_id: "c1".into(),
                key,
            }),
            Arc::new(move |o: &str, _| (o == "c1").then_some(vk)),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let limits = IngestLimits::default();
        for i in 0..n {
            let ctx = IngestContext {
                node_id: "c1",
                now_ms: NOW_MS,
                limits: &limits,
            };
            let v = json!({"kind": "temperature", "occurred_at": format!("2020-01-{:02}T09:00:00+08:00", 20 + i % 5),
                "grid": "g1", "recorded_by": "w1", "client_id": format!("k{i}"),
                "data": {"person": {"name": "李四"}, "celsius": 36.5 + (i % 3) as f64 * 0.6, "site": "checkpoint", "action": "none"}});
            let ev = prepare(v, &ctx, &|_| None, &mut rand::thread_rng()).expect("valid event");
            rt.block_on(store.append(vec![ev], NOW_MS)).unwrap();
        }
        store
    }

    fn cfg() -> ProjectionConfig {
        ProjectionConfig::new("Asia/Shanghai").unwrap()
    }

    /// A start given no time to fold listens with a prefix of the log
    /// folded (one page); `finish_start` folds the rest, to the same state
    /// as a start that folded everything. Progress counts
    /// every event folded, across pages.
    #[test]
    fn a_start_with_no_time_to_fold_leaves_the_rest_to_the_catch_up() {
        let store = store_with(300);
        let entries = store.counts().chunks;
        assert_eq!(entries, 300, "one log entry per post");
        let reported = std::sync::atomic::AtomicU64::new(0);
        let progress = |n: u64| reported.store(n, std::sync::atomic::Ordering::Relaxed);
        let whole = Projector::open(&store, cfg(), None, &progress, None).unwrap();
        assert_eq!(*whole.applied.borrow(), entries);
        assert!(!whole.start_pending());
        assert_eq!(reported.into_inner(), 300, "progress counts across pages");

        let started = Projector::open(&store, cfg(), None, &|_| {}, Some(Duration::ZERO)).unwrap();
        let at_start = *started.applied.borrow();
        assert!(
            at_start > 0 && at_start < entries,
            "folded {at_start} of {entries} entries before listening"
        );
        let (p, w) = (
            started.projection.read().unwrap(),
            whole.projection.read().unwrap(),
        );
        assert!(!p.same_state(&w), "a prefix counts less than the whole log");
        drop(p);
        assert!(started.start_pending());
        // A node stopping leaves the rest (after a page), still pending.
        started.finish_start(&store, &|| true).unwrap();
        let stopped_at = *started.applied.borrow();
        assert!(
            stopped_at > at_start && stopped_at < entries,
            "{stopped_at}"
        );
        assert!(started.start_pending());
        started.finish_start(&store, &|| false).unwrap();
        assert!(!started.start_pending());
        assert_eq!(*started.applied.borrow(), entries);
        assert!(started.projection.read().unwrap().same_state(&w));

        // The catch-up alone folds the rest too (a node whose start fold
        // has not run yet still answers from the log it holds).
        let other = Projector::open(&store, cfg(), None, &|_| {}, Some(Duration::ZERO)).unwrap();
        other.catch_up(&store).unwrap();
        assert_eq!(*other.applied.borrow(), entries);
        assert!(other.projection.read().unwrap().same_state(&w));
    }
}
