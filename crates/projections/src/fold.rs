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
    fold_log_while(store, p, offset, cut, progress, &mut || true).map(|(next, _)| next)
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
    mut offset: u64,
    cut: Cut,
    progress: &dyn Fn(u64),
    go_on: &mut dyn FnMut() -> bool,
) -> Result<(u64, bool), StoreError> {
    let from_store = target_lookup(store);
    let mut n = 0u64;
    let mut previous: Vec<EncodedEntry> = Vec::new();
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
        // this page or the one before rather than read from the store
        // again — the same stored bytes either way.
        let lookup = |origin: &str, seq: u64| {
            in_views(&views, origin, seq)
                .or_else(|| in_entries(&previous, origin, seq))
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
        drop(views);
        previous = entries;
        if !go_on() {
            return Ok((offset, false));
        }
    }
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

/// [`in_views`] for entries not read in place yet (the page before).
fn in_entries(entries: &[EncodedEntry], origin: &str, seq: u64) -> Option<Vec<u8>> {
    entries.iter().rev().find_map(|e| {
        let view = ChunkView::decode(&e.chunk).ok()?;
        in_views(std::slice::from_ref(&view), origin, seq)
    })
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
