//! Chunks received from children (and an origin's own chain pulled back
//! from its parent): checked against what the writer holds, merged into
//! large entries within a request, added to the commit.

use super::*;

/// The log entry an import request added last, while it may still grow:
/// it is `work.pushed`'s last chunk, counted in the work (its writes are
/// made once the commit is staged, so joining many small chunks encodes
/// the result once, not once per join).
pub(super) struct OpenEntry {
    /// Estimated encoded size ([`records_bytes`]).
    bytes: usize,
}

/// About the encoded size of one event in a chunk (what chunks are cut
/// and joined by).
pub(super) fn record_bytes(r: &EventRecord) -> usize {
    r.envelope.len() + r.personal.as_ref().map_or(0, |p| p.bytes.len() + 24) + 8
}

/// [`record_bytes`] of these events.
fn records_bytes(records: &[EventRecord]) -> usize {
    records.iter().map(record_bytes).sum()
}

impl Writer {
    /// Adds a chunk received from a child. When the entry this request
    /// added last holds the same origin's events just before it and the
    /// two fit the chunk target together, they become one entry closed by
    /// the later head: its signature covers both through the chain links,
    /// the earlier head's signature adds nothing a verifier needs. So
    /// children that forward phones' one-event commits in a batch are
    /// stored (and forwarded, and verified) as large chunks.
    fn push_received(
        &self,
        work: &mut Work,
        chunk: Chunk,
        received_at_ms: i64,
        open: &mut Option<OpenEntry>,
    ) {
        let bytes = records_bytes(&chunk.events);
        if let Some(o) = open.as_mut() {
            let last = work.pushed.last_mut().expect("an open entry is pushed");
            if last.origin == chunk.origin
                && last.last_seq().checked_add(1) == Some(chunk.first_seq())
                && o.bytes + bytes <= self.config.chunk_bytes_target
            {
                o.bytes += bytes;
                work.events += chunk.events.len() as u64;
                last.events.extend(chunk.events);
                last.head = chunk.head;
                work.heads
                    .insert(last.origin.clone(), HeadState::of(&last.head));
                return;
            }
        }
        *open = Some(OpenEntry { bytes });
        Self::push_chunk(work, chunk, received_at_ms);
    }

    /// Adds one chunk to the work as its next log entry.
    pub(super) fn push_chunk(work: &mut Work, chunk: Chunk, received_at_ms: i64) {
        work.offset += 1;
        work.chunks += 1;
        work.events += chunk.events.len() as u64;
        work.heads
            .insert(chunk.origin.clone(), HeadState::of(&chunk.head));
        work.pushed.push(chunk);
        work.pushed_at.push(received_at_ms);
    }

    /// Hash of event `seq` of `origin` as this writer holds it: in this
    /// commit's work, or durable in the log.
    fn held_hash(&self, work: &Work, origin: &str, seq: u64) -> Result<Option<Hash32>, StoreError> {
        if seq == 0 {
            return Ok(Some(ZERO_HASH));
        }
        let (head_seq, head_hash) = self.head_of(work, origin);
        if seq > head_seq {
            return Ok(None);
        }
        if seq == head_seq {
            return Ok(Some(head_hash));
        }
        if let Some(h) = work
            .pushed
            .iter()
            .rev()
            .filter(|c| c.origin == origin)
            .find_map(|c| event_in_chunk(c, seq))
        {
            return Ok(Some(h));
        }
        hash_in_log(self.shared.kv.as_ref(), origin, seq)
    }

    /// Chunks received from a child (or, at an origin repairing itself,
    /// its own chain pulled back from its parent), already verified by the
    /// protocol and linked (each event's hash known, so none is read or
    /// hashed here). The writer re-checks them against its own heads (a second
    /// session of the same child may have sent the same events): what is
    /// held is skipped if its hash is the one held, a gap refuses the whole
    /// request, and a different event at a held seq refuses it as
    /// [`StoreError::Diverged`].
    pub(super) fn import(
        &mut self,
        work: &mut Work,
        chunks: Vec<LinkedChunk>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        // Entries are merged only within one request: a later request's
        // failure must not undo an entry an earlier one added.
        let snapshot = work.snapshot();
        let result = self.import_all(work, chunks, now_ms);
        if result.is_err() {
            work.restore(snapshot);
        }
        result
    }

    fn import_all(
        &mut self,
        work: &mut Work,
        chunks: Vec<LinkedChunk>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let own = self.origin.as_ref().map(|o| o.node_id.clone());
        let mut n_new = 0u64;
        let mut open = None;
        for linked in chunks {
            let origin = linked.chunk().origin.clone();
            let (head_seq, head_hash) = self.head_of(work, &origin);
            let (first, last) = (linked.chunk().first_seq(), linked.chunk().last_seq());
            if last <= head_seq {
                let theirs = *linked.hashes().last().expect("non-empty");
                if self.held_hash(work, &origin, last)? != Some(theirs) {
                    return Err(StoreError::Diverged { origin, seq: last });
                }
                continue;
            }
            if first > head_seq.saturating_add(1) {
                return Err(StoreError::Refused(format!(
                    "origin {origin}: gap (holds {head_seq}, chunk starts at {first})"
                )));
            }
            // Linked: the events follow each other from `prev` (checked
            // where the chunk was linked), so it joins the held chain iff
            // its first new event follows the head.
            let linked = linked.into_suffix_after(head_seq).expect("last > head");
            if linked.prev() != head_hash {
                return Err(StoreError::Diverged {
                    origin,
                    seq: head_seq,
                });
            }
            let suffix = linked.into_chunk();
            if own.as_deref() == Some(origin.as_str()) {
                // This origin's own chain coming back from its parent: index
                // its client ids so a phone's retry is still a duplicate.
                for rec in &suffix.events {
                    let (client_id, entry) = entry_of(rec)
                        .map_err(|e| StoreError::Refused(format!("origin {origin}: {e}")))?;
                    let h = client_key(&client_id);
                    work.clients.insert(client_id, h, entry);
                }
            }
            n_new += suffix.events.len() as u64;
            self.push_received(work, suffix, now_ms, &mut open);
        }
        Ok(n_new)
    }
}
