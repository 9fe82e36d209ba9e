//! Events created at this origin: numbered, chained, cut into signed
//! chunks, and their `client_id`s indexed so a retried post is answered
//! with the event it already made (exactly once).

use super::*;
use crate::recover::corrupt;

impl Writer {
    pub(super) fn originate(
        &mut self,
        work: &mut Work,
        events: Vec<PreparedEvent>,
        now_ms: i64,
    ) -> Result<Vec<Appended>, AppendError> {
        let Some(origin) = self.origin.as_ref() else {
            return Err(AppendError::NotAnOrigin);
        };
        // One string for the request: every result shares it.
        let origin_id: Arc<str> = Arc::from(origin.node_id.as_str());
        let start = self.head_of(work, &origin_id);
        let (mut seq, mut hash) = start;
        // Sized once: grown a doubling at a time, these were reallocated
        // (and glibc's free lists consolidated) several times a request.
        let mut records: Vec<EventRecord> = Vec::with_capacity(events.len());
        let mut hashes: Vec<Hash32> = Vec::with_capacity(events.len());
        let mut results = Vec::with_capacity(events.len());
        if let Some(index) = &self.clients {
            index.warm(events.iter().map(|e| e.client_key));
        }
        // Each new id goes into `work.clients` at once (a duplicate later
        // in the request finds it there); a request that fails leaves
        // none of its ids behind — they are the ones numbered after
        // `start`, as nothing else in `work.clients` is.
        // The log's chunk a retry's events were last read from: a retried
        // post's events are read back a chunk at a time, not an entry each.
        let mut read_back: Option<Chunk> = None;
        let failed = 'numbering: {
            for (index, mut ev) in events.into_iter().enumerate() {
                // Already taken: in this commit, earlier in this request,
                // or stored.
                let held = (start.0, &records[..], &mut read_back);
                let existing = match self.held_event(work, held, index, &ev) {
                    Ok(e) => e,
                    Err(e) => break 'numbering Some(e),
                };
                if let Some((s, h)) = existing {
                    results.push(Appended {
                        origin: origin_id.clone(),
                        seq: s,
                        hash: h,
                        duplicate: true,
                    });
                    continue;
                }
                seq += 1;
                let envelope = envelope_of(&ev, &origin_id, seq, &hash, now_ms);
                hash = event_hash(&envelope);
                hashes.push(hash);
                records.push(EventRecord {
                    envelope,
                    personal: ev.take_personal(),
                });
                // Indexed at the commit (`ClientIndex::stage`): most
                // commits write nothing for them, the log holds their ids.
                work.clients
                    .insert(ev.client_id, ev.client_key, (seq, hash));
                results.push(Appended {
                    origin: origin_id.clone(),
                    seq,
                    hash,
                    duplicate: false,
                });
            }
            None
        };
        if let Some(e) = failed {
            work.clients.retain(|(s, ..)| *s <= start.0);
            return Err(e);
        }
        if records.is_empty() {
            return Ok(results);
        }
        // Cut into chunks with the rest of the commit's own events
        // ([`Writer::cut_own`]): one signature per ~32 KiB of the commit,
        // however many phones' single-event posts it gathered.
        match work.own.as_mut() {
            Some(own) => {
                own.records.extend(records);
                own.hashes.extend(hashes);
                own.end = (seq, hash);
                own.now_ms = own.now_ms.max(now_ms);
            }
            // The commit's first: its vectors taken as they are.
            None => {
                work.own = Some(OwnEvents {
                    start,
                    end: (seq, hash),
                    records,
                    hashes,
                    now_ms,
                });
            }
        }
        Ok(results)
    }

    /// Cuts the events originated so far in this commit into signed
    /// chunks and adds them to the log entries of the commit.
    pub(super) fn cut_own(&self, work: &mut Work) {
        let (Some(own), Some(origin)) = (work.own.take(), self.origin.as_ref()) else {
            return;
        };
        // The origin's previous signed head, in this commit or stored:
        // its digest is what the first new head signs as `after`.
        let after = self
            .held_head(work, &origin.node_id)
            .map_or(ZERO_HASH, |h| h.signed.digest());
        let end = cut_into_chunks(
            work,
            origin,
            (own.start, after),
            own.records,
            &own.hashes,
            self.config.chunk_bytes_target,
            own.now_ms,
        );
        debug_assert_eq!(end, own.end);
    }

    /// The held event (in this commit or stored) whose client id `ev`, the
    /// request's `index`th, reuses, if any; refused if its content differs.
    /// `records` are the request's events numbered after `start`;
    /// `read_back`, the log's chunk last read for a held event.
    fn held_event(
        &self,
        work: &Work,
        (start, records, read_back): (u64, &[EventRecord], &mut Option<Chunk>),
        index: usize,
        ev: &PreparedEvent,
    ) -> Result<Option<ClientEntry>, AppendError> {
        let h = ev.client_key;
        debug_assert_eq!(h, client_key(&ev.client_id));
        let found = match work.clients.get(&ev.client_id, h) {
            found @ Some(_) => found,
            None => self.lookup_client(&ev.client_id, h, read_back)?,
        };
        let Some((seq, hash)) = found else {
            return Ok(None);
        };
        // Only now are the two contents compared: most events' ids are
        // new, and their content is never hashed for it.
        let held = self.held_fingerprint(work, (start, records, read_back), seq)?;
        if held.is_some_and(|fp| fp != ev.fingerprint()) {
            return Err(AppendError::ClientIdReused {
                index,
                client_id: ev.client_id.clone(),
                seq,
            });
        }
        Ok(Some((seq, hash)))
    }

    /// The content fingerprint of own event `seq` (`None`: its content
    /// cannot be compared, see [`record_fingerprint`]), wherever it is held:
    /// numbered earlier in this request (`records`, the events after
    /// `start`), earlier in this commit (not yet cut, or cut into a chunk),
    /// or in the log (its chunk kept in `read_back`).
    fn held_fingerprint(
        &self,
        work: &Work,
        (start, records, read_back): (u64, &[EventRecord], &mut Option<Chunk>),
        seq: u64,
    ) -> Result<Option<Hash32>, StoreError> {
        let origin = &self
            .origin
            .as_ref()
            .expect("only an origin numbers events")
            .node_id;
        // `recs` are the events after `after`, in seq order.
        fn at(recs: &[EventRecord], after: u64, seq: u64) -> Option<&EventRecord> {
            recs.get(usize::try_from(seq.checked_sub(after + 1)?).ok()?)
        }
        let in_memory = if seq > start {
            at(records, start, seq)
        } else if let Some(own) = work.own.as_ref().filter(|o| seq > o.start.0) {
            at(&own.records, own.start.0, seq)
        } else {
            work.pushed
                .iter()
                .rev()
                .filter(|c| c.origin == *origin)
                .find_map(|c| c.event(seq))
        };
        let rec = match in_memory {
            Some(rec) => rec,
            None => own_event(self.shared.kv.as_ref(), origin, seq, read_back)?,
        };
        record_fingerprint(rec).map_err(corrupt)
    }

    /// The stored event of this origin with `client_id` (whose
    /// [`client_key`] is `h`). The index is loaded by the writer thread
    /// before its first commit.
    fn lookup_client(
        &self,
        client_id: &str,
        h: u64,
        read_back: &mut Option<Chunk>,
    ) -> Result<Option<ClientEntry>, StoreError> {
        match &self.clients {
            Some(index) => index.lookup(self.shared.kv.as_ref(), client_id, h, read_back),
            None => Err(StoreError::Failed(
                "the client-id index is not loaded".into(),
            )),
        }
    }
}

/// The canonical envelope of a prepared event at `seq` after `prev`.
fn envelope_of(ev: &PreparedEvent, origin: &str, seq: u64, prev: &Hash32, now_ms: i64) -> Vec<u8> {
    debug_assert_eq!(
        ev.personal_digest(),
        ev.personal().map(|p| p.digest()).as_ref()
    );
    EnvelopeHeader {
        origin,
        seq,
        kind: ev.kind,
        schema: ev.schema,
        occurred_at: ev.occurred_at,
        recorded_at_ms: now_ms,
        grid: ev.grid(),
        recorded_by: ev.recorded_by(),
        client_id: &ev.client_id,
        prev,
        personal_digest: ev.personal_digest(),
    }
    .encode_with_data(ev.data())
}

/// Cuts an origin's new events (following `start`: seq, hash; and the
/// digest of the origin's previous head) into chunks of about
/// `bytes_target`, each closed by a v2 head signed with the origin's key
/// naming the head before it, and adds them to the work; returns the last
/// seq and hash.
/// `hashes` are the records' event hashes (computed when they were
/// chained: not again here, on the single writer thread).
fn cut_into_chunks(
    work: &mut Work,
    origin: &OriginIdentity,
    (start, mut after): ((u64, Hash32), Hash32),
    records: Vec<EventRecord>,
    hashes: &[Hash32],
    bytes_target: usize,
    now_ms: i64,
) -> (u64, Hash32) {
    // Each chunk's vector made with room for as many events as the last
    // chunk held (the first for up to 64), not grown one doubling at a time.
    let mut room = 64;
    let mut current: Vec<EventRecord> = Vec::with_capacity(room.min(records.len()));
    let mut current_bytes = 0usize;
    let (mut chunk_seq, mut chunk_hash) = start;
    let n_records = records.len();
    debug_assert_eq!(records.len(), hashes.len());
    for (i, (rec, hash)) in records.into_iter().zip(hashes).enumerate() {
        chunk_seq += 1;
        chunk_hash = *hash;
        current_bytes += super::import::record_bytes(&rec);
        current.push(rec);
        if current_bytes >= bytes_target || i + 1 == n_records {
            let head = SignedHead::sign_after(
                &origin.key,
                (&origin.node_id, chunk_seq, chunk_hash),
                now_ms,
                after,
            );
            after = head.digest();
            room = current.len();
            let left = n_records - i - 1;
            let chunk = Chunk {
                origin: origin.node_id.clone(),
                events: std::mem::replace(&mut current, Vec::with_capacity(room.min(left))),
                head,
            };
            Writer::push_chunk(work, chunk, now_ms);
            current_bytes = 0;
        }
    }
    (chunk_seq, chunk_hash)
}
