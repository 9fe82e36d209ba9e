//! Reading the log: what a reader may see (only durable commits), log
//! entries in order, an origin's chunks from a seq, one event.

use super::*;

impl Store {
    /// Every origin's highest seq that readers may see: the durable heads
    /// (with the planted bug `unsafe_read_uncommitted`, whatever the live
    /// key/value store shows, applied or not — what the sender read before
    /// the fix).
    ///
    /// # Errors
    /// Storage errors (planted-bug mode only).
    pub fn readable_heads(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let durable = self.heads();
        if !self.read_uncommitted {
            return Ok(durable.into_iter().map(|(o, h)| (o, h.seq)).collect());
        }
        let mut origins: Vec<String> = durable.into_keys().collect();
        if let Some(own) = &self.origin {
            if !origins.contains(own) {
                origins.push(own.clone());
            }
        }
        let mut out = Vec::new();
        for o in origins {
            let last = self.shared.kv.last_with_prefix(&layout::index_prefix(&o))?;
            if let Some((k, _)) = last {
                if let Some((_, seq, _)) = layout::parse_origin_seq_key(&k) {
                    out.push((o, seq));
                }
            }
        }
        Ok(out)
    }

    /// The next log offset that is not durable yet: readers stop before it.
    fn durable_end(&self) -> u64 {
        if self.read_uncommitted {
            return u64::MAX;
        }
        *self.shared.committed.borrow()
    }

    /// The highest seq of `origin` that is durable here (0 if none).
    fn durable_seq(&self, origin: &str) -> u64 {
        if self.read_uncommitted {
            return u64::MAX;
        }
        self.head(origin).map_or(0, |h| h.seq)
    }

    /// Reads up to `max_entries` log entries starting at `offset`, in log
    /// order, never past the last durable commit: sled shows an applied
    /// batch to readers before its flush and fsync return, and nothing may
    /// be forwarded, counted or served that a crash could still take back.
    /// Does not verify signatures (the log was verified on open and every
    /// entry was verified or created by this node).
    ///
    /// # Errors
    /// Storage errors, or an entry that does not decode.
    pub fn read_log(
        &self,
        offset: u64,
        max_entries: usize,
    ) -> Result<Vec<StoredChunk>, StoreError> {
        let end = self.durable_end();
        if offset >= end {
            return Ok(Vec::new());
        }
        let max = usize::try_from(end - offset).map_or(max_entries, |n| n.min(max_entries));
        recover::read_entries(self.shared.kv.as_ref(), offset, max)
    }

    /// Reads the durable chunks of `origin` that hold seqs `> after_seq`,
    /// in seq order, at most `max_chunks` (never past the origin's durable
    /// head: see [`Store::read_log`]).
    ///
    /// # Errors
    /// Storage errors.
    pub fn read_origin(
        &self,
        origin: &str,
        after_seq: u64,
        max_chunks: usize,
    ) -> Result<Vec<StoredChunk>, StoreError> {
        let durable = self.durable_seq(origin);
        if after_seq >= durable {
            return Ok(Vec::new());
        }
        recover::origin_chunks(
            self.shared.kv.as_ref(),
            origin,
            after_seq,
            durable,
            max_chunks,
        )
    }

    /// Finds one event and its personal part.
    ///
    /// # Errors
    /// Storage errors or an entry that does not decode.
    pub fn find_event(
        &self,
        r: &EventRef,
    ) -> Result<Option<(VerifiedEvent, EventRecord)>, StoreError> {
        let Some(head) = self.head(&r.origin) else {
            return Ok(None);
        };
        if r.seq == 0 || r.seq > head.seq {
            return Ok(None);
        }
        let Some(sc) = self.read_origin(&r.origin, r.seq - 1, 1)?.pop() else {
            return Ok(None);
        };
        let first = sc.chunk.first_seq();
        if r.seq < first {
            return Ok(None);
        }
        let idx = usize::try_from(r.seq - first).expect("chunk index fits usize");
        let rec = sc.chunk.events[idx].clone();
        let envelope = gridsync_model::Envelope::decode(&rec.envelope)
            .map_err(|e| StoreError::Corrupt(format!("event {}/{}: {e}", r.origin, r.seq)))?;
        let hash = gridsync_model::event::event_hash(&rec.envelope);
        Ok(Some((VerifiedEvent { envelope, hash }, rec)))
    }
}
