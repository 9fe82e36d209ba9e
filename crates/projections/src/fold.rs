//! The log folded into a projection: the one fold both the running node
//! (its live projection, rebuilt at start and advanced after every commit)
//! and the auditor (`audit project`, a projection as of a past moment) use,
//! so an as-of answer is recomputed by exactly the code that served it.

use gridsync_model::chunk::ChunkView;
use gridsync_model::kinds::EventRef;
use gridsync_store::{EncodedEntry, Store, StoreError};

use crate::{Projection, ProjectionConfig};

/// Which events a fold takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Every committed event.
    Everything,
    /// Events that occurred by this moment (and corrections made by then);
    /// later seqs of an origin may have occurred earlier (late events), so
    /// skipped events keep their place in the origin's order.
    OccurredBy(i64),
    /// Only log entries this node had committed by this moment.
    KnownBy(i64),
}

/// Log entries read per storage call (chunks are cut near 32 KiB, so a
/// page holds about 2 MiB at most).
const PAGE: usize = 64;

/// Applies log entries from `offset` to the end of the log (those `cut`
/// takes); returns the next offset to apply. `progress` gets the number of
/// events applied so far after each page.
///
/// # Errors
/// Storage errors, or a log whose events are out of order
/// ([`StoreError::Corrupt`] naming the entry).
pub fn fold_log(
    store: &Store,
    p: &mut Projection,
    offset: u64,
    cut: Cut,
    progress: &dyn Fn(u64),
) -> Result<u64, StoreError> {
    let mut recent = Recent::default();
    fold_log_while(store, p, &mut recent, offset, cut, progress, &mut || true).map(|(next, _)| next)
}

/// Bytes of log entries a fold keeps after applying them ([`Recent`]).
const RECENT_BYTES: usize = 2 << 20;

/// The log entries folded last (about [`RECENT_BYTES`] of them, and at
/// least the last page), kept so that a correction's target — nearly
/// always a recent event — is found in memory rather than read back from
/// the store: the same stored bytes either way. A running node folds each
/// commit as it lands, a few entries at a time, so the window must outlive
/// one call of [`fold_log_while`]: the projector keeps one.
pub struct Recent {
    /// Oldest first: origin, first and last seq, the entry.
    entries: std::collections::VecDeque<(String, u64, u64, EncodedEntry)>,
    bytes: usize,
    max_bytes: usize,
}

impl Default for Recent {
    fn default() -> Self {
        Self::with_bound(RECENT_BYTES)
    }
}

impl Recent {
    fn with_bound(max_bytes: usize) -> Self {
        Self {
            entries: std::collections::VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Keeps `entries` (just applied; `spans` their origins and seqs),
    /// forgetting the oldest beyond the bound but never any of these.
    fn keep(&mut self, entries: Vec<EncodedEntry>, spans: Vec<(String, u64, u64)>) {
        let page = entries.len();
        for (e, (origin, first, last)) in entries.into_iter().zip(spans) {
            self.bytes += e.chunk.len();
            self.entries.push_back((origin, first, last, e));
        }
        while self.bytes > self.max_bytes && self.entries.len() > page {
            if let Some((.., e)) = self.entries.pop_front() {
                self.bytes -= e.chunk.len();
            }
        }
    }

    /// The envelope of event `seq` of `origin`, if a kept entry holds it.
    fn envelope(&self, origin: &str, seq: u64) -> Option<Vec<u8>> {
        let (.., e) = self
            .entries
            .iter()
            .rev()
            .find(|(o, first, last, _)| o == origin && (*first..=*last).contains(&seq))?;
        let view = ChunkView::decode(&e.chunk).ok()?;
        in_views(std::slice::from_ref(&view), origin, seq)
    }
}

/// [`fold_log`] a page of [`PAGE`] log entries at a time, asking
/// `go_on` after each page whether to fold another: the next offset to
/// apply, and whether it is the end of the log. A caller that must not
/// hold the projection for long (the running node, whose queries wait on
/// it) folds one page (`&mut || false`) per hold; a start folds until a
/// deadline.
///
/// # Errors
/// As [`fold_log`].
pub fn fold_log_while(
    store: &Store,
    p: &mut Projection,
    recent: &mut Recent,
    mut offset: u64,
    cut: Cut,
    progress: &dyn Fn(u64),
    go_on: &mut dyn FnMut() -> bool,
) -> Result<(u64, bool), StoreError> {
    let from_store = target_lookup(store);
    let mut n = 0u64;
    loop {
        // Read in place: each chunk's events stay in its bytes (decoding
        // every event into its own allocations, and freeing them, was
        // ~40 % of the fold).
        let entries = store.read_log_encoded(offset, PAGE)?;
        if entries.is_empty() {
            return Ok((offset, true));
        }
        let views = entries
            .iter()
            .map(|e| {
                ChunkView::decode(&e.chunk)
                    .map_err(|err| StoreError::Corrupt(format!("log entry {}: {err}", e.offset)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A correction's target is almost always a recent event: found in
        // this page or the entries folded before it rather than read from
        // the store again — the same stored bytes either way.
        let lookup = |origin: &str, seq: u64| {
            in_views(&views, origin, seq)
                .or_else(|| recent.envelope(origin, seq))
                .or_else(|| from_store(origin, seq))
        };
        for (e, view) in entries.iter().zip(&views) {
            offset = e.offset + 1;
            if matches!(cut, Cut::KnownBy(t) if e.received_at_ms > t) {
                continue;
            }
            for rec in &view.events {
                let applied = match cut {
                    Cut::OccurredBy(t) if occurred_ms(rec.envelope) > t => p.skip(rec.envelope),
                    _ => {
                        n += 1;
                        p.apply(rec.envelope, &lookup)
                    }
                };
                applied
                    .map_err(|err| StoreError::Corrupt(format!("log entry {}: {err}", e.offset)))?;
            }
        }
        progress(n);
        let spans = spans(&views);
        drop(views);
        recent.keep(entries, spans);
        if !go_on() {
            return Ok((offset, false));
        }
    }
}

/// Each chunk's origin and first and last seq, for [`Recent::keep`].
fn spans(views: &[ChunkView<'_>]) -> Vec<(String, u64, u64)> {
    views
        .iter()
        .map(|v| (v.origin.to_owned(), v.first_seq(), v.last_seq()))
        .collect()
}

/// The envelope of event `seq` of `origin` if one of these chunks holds it.
fn in_views(views: &[ChunkView<'_>], origin: &str, seq: u64) -> Option<Vec<u8>> {
    views
        .iter()
        .rev()
        .filter(|v| v.origin == origin)
        .find_map(|v| v.event(seq))
        .map(|rec| rec.envelope.to_vec())
}

/// A projection of the whole log as it was at `as_of_ms`: by event time,
/// or with `known_at` by what this node had committed then.
///
/// # Errors
/// As [`fold_log`].
pub fn fold_as_of(
    store: &Store,
    cfg: ProjectionConfig,
    as_of_ms: i64,
    known_at: bool,
) -> Result<Projection, StoreError> {
    let mut p = Projection::new(cfg);
    let cut = if known_at {
        Cut::KnownBy(as_of_ms)
    } else {
        Cut::OccurredBy(as_of_ms)
    };
    fold_log(store, &mut p, 0, cut, &|_| {})?;
    Ok(p)
}

/// When an event occurred: read where the field lies; an envelope that
/// cannot be read so is decoded whole, and one that does not decode never
/// occurred (a cut by event time skips it and `apply` is not asked to read
/// it). The fold reads logs that verified (`audit project` folds only a
/// log whose every envelope is canonical), where the two reads agree; the
/// whole decode per event was two thirds of the fold.
fn occurred_ms(envelope: &[u8]) -> i64 {
    crate::lite::occurred_ms(envelope).unwrap_or_else(|| {
        gridsync_model::Envelope::decode(envelope).map_or(i64::MAX, |env| env.occurred_at.unix_ms)
    })
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ed25519_dalek::SigningKey;
    use gridsync_model::ingest::{prepare, IngestContext, IngestLimits};
    use gridsync_store::{MemKv, OriginIdentity, StoreConfig};
    use serde_json::json;

    use super::*;

    /// A store of `n` one-event commits (one log entry each) of `c1`.
    fn store_of(n: u64) -> Store {
        let key = SigningKey::from_bytes(&[5; 32]);
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
            .build()
            .unwrap();
        let limits = IngestLimits::default();
        let ctx = IngestContext {
            node_id: "c1",
            now_ms: 1_580_300_000_000,
            limits: &limits,
        };
        for i in 0..n {
            let v = json!({"kind": "visit", "occurred_at": "2020-01-28T09:30:00+08:00",
                "grid": "g1", "recorded_by": "w1", "client_id": format!("k{i}"),
                "data": {"household": format!("h{i}"), "method": "phone", "quarantine": "none"}});
            let ev = prepare(v, &ctx, &|_| None, &mut rand::thread_rng()).unwrap();
            rt.block_on(store.append(vec![ev], 1_580_300_000_000))
                .unwrap();
        }
        store
    }

    fn stored(store: &Store, seq: u64) -> Vec<u8> {
        let r = EventRef {
            origin: "c1".into(),
            seq,
        };
        store.find_event(&r).unwrap().unwrap().1.envelope
    }

    /// The window answers with the stored bytes of the events it keeps,
    /// forgets the oldest entries past its bound but never the last page,
    /// and answers nothing for what it does not hold.
    #[test]
    fn the_window_keeps_recent_entries_and_their_stored_bytes() {
        let store = store_of(12);
        let entry_bytes = store.read_log_encoded(0, 1).unwrap()[0].chunk.len();
        // Room for about four entries.
        let mut recent = Recent::with_bound(4 * entry_bytes + entry_bytes / 2);
        let mut offset = 0;
        // Fold as a running node does: a few entries a call.
        while offset < 12 {
            let to = (offset + 3).min(12);
            let entries = store
                .read_log_encoded(offset, (to - offset) as usize)
                .unwrap();
            let views: Vec<ChunkView<'_>> = entries
                .iter()
                .map(|e| ChunkView::decode(&e.chunk).unwrap())
                .collect();
            let spans = spans(&views);
            drop(views);
            recent.keep(entries, spans);
            offset = to;
        }
        let held: Vec<u64> = (1..=12)
            .filter(|&s| recent.envelope("c1", s).is_some())
            .collect();
        assert_eq!(held, vec![9, 10, 11, 12], "the newest four entries");
        for seq in held {
            assert_eq!(recent.envelope("c1", seq).unwrap(), stored(&store, seq));
        }
        assert!(recent.envelope("c2", 12).is_none(), "another origin");
        assert!(recent.envelope("c1", 13).is_none(), "not yet stored");
        // A page larger than the bound is kept whole.
        let mut small = Recent::with_bound(1);
        let entries = store.read_log_encoded(0, 3).unwrap();
        let spans = (1..=3).map(|s| ("c1".to_owned(), s, s)).collect();
        small.keep(entries, spans);
        assert!((1..=3).all(|s| small.envelope("c1", s).is_some()));
    }
}
