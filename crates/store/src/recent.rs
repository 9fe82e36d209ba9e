//! The kind and schema version of this origin's newest events, in memory.
//!
//! A posted correction names its target `(origin, seq)`, and ingest must
//! know that event's kind (a correction cannot correct a correction; a
//! replacement is checked against the target kind's schema). Read from the
//! log, that is a whole log entry — a chunk of up to ~32 KiB in several
//! sled fragments — for two fields. Corrections nearly always name recent
//! events, so the writer keeps those two fields for this origin's newest
//! `StoreConfig::recent_kinds_max` events (a few bytes each), learnt from
//! each chunk it has made durable; older targets are read from the log.

use std::collections::VecDeque;

use gridsync_model::Chunk;

/// At most this many distinct kind names are kept; a log with more (not
/// possible through ingest, which knows five) is simply not remembered.
const NAMES_MAX: usize = 64;

pub(crate) struct RecentKinds {
    origin: Option<String>,
    cap: usize,
    /// Seq of `entries[0]`; `entries` are consecutive seqs from it.
    first: u64,
    /// Index into `names`, schema version.
    entries: VecDeque<(u8, u32)>,
    names: Vec<String>,
}

impl RecentKinds {
    /// Remembers the newest `cap` events of `origin` (none without one).
    pub(crate) fn new(origin: Option<String>, cap: usize) -> Self {
        Self {
            origin,
            cap,
            first: 0,
            entries: VecDeque::new(),
            names: Vec::new(),
        }
    }

    /// Learns the events of `chunk`, which the log now holds durably. A
    /// chunk that does not follow what is remembered starts afresh.
    pub(crate) fn learn(&mut self, chunk: &Chunk) {
        if self.cap == 0 || self.origin.as_deref() != Some(chunk.origin.as_str()) {
            return;
        }
        let first = chunk.first_seq();
        if self.entries.is_empty() || first != self.first + self.entries.len() as u64 {
            self.entries.clear();
            self.first = first;
        }
        for rec in &chunk.events {
            // Only the kind and schema: this writer's own chunks, just made.
            let Some((kind, schema)) = gridsync_model::event::read_kind(&rec.envelope) else {
                return self.forget();
            };
            let index = match self.names.iter().position(|n| n == kind) {
                Some(i) => i,
                None if self.names.len() < NAMES_MAX => {
                    self.names.push(kind.to_owned());
                    self.names.len() - 1
                }
                None => return self.forget(),
            };
            let index = u8::try_from(index).expect("NAMES_MAX fits a byte");
            self.entries.push_back((index, schema));
            if self.entries.len() > self.cap {
                self.entries.pop_front();
                self.first += 1;
            }
        }
    }

    fn forget(&mut self) {
        self.entries.clear();
        self.names.clear();
    }

    /// Kind and schema version of `origin`'s event `seq`, if remembered.
    pub(crate) fn get(&self, origin: &str, seq: u64) -> Option<(&str, u32)> {
        if self.origin.as_deref() != Some(origin) || seq < self.first {
            return None;
        }
        let (index, schema) = *self.entries.get(usize::try_from(seq - self.first).ok()?)?;
        Some((self.names[usize::from(index)].as_str(), schema))
    }
}
