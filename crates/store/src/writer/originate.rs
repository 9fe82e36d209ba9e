//! Events created at this origin: numbered, chained, cut into signed
//! chunks, and their `client_id`s indexed so a retried post is answered
//! with the event it already made (exactly once).

use super::*;

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
        let failed = 'numbering: {
            for (index, mut ev) in events.into_iter().enumerate() {
                // Already taken: in this commit, earlier in this request,
                // or stored.
                let h = ev.client_key;
                debug_assert_eq!(h, client_key(&ev.client_id));
                let existing = match work.clients.get(&ev.client_id, h) {
                    found @ Some(_) => found,
                    None => match self.lookup_client(&ev.client_id, h) {
                        Ok(e) => e,
                        Err(e) => break 'numbering Some(AppendError::from(e)),
                    },
                };
                if let Some((s, h, fp)) = existing {
                    if fp != ev.fingerprint && fp != UNKNOWN_FINGERPRINT {
                        break 'numbering Some(AppendError::ClientIdReused {
                            index,
                            client_id: ev.client_id,
                            seq: s,
                        });
                    }
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
                    .insert(ev.client_id, h, (seq, hash, ev.fingerprint));
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

    /// The stored event of this origin with `client_id` (whose
    /// [`client_key`] is `h`). The index is loaded by the writer thread
    /// before its first commit.
    fn lookup_client(&self, client_id: &str, h: u64) -> Result<Option<ClientEntry>, StoreError> {
        match &self.clients {
            Some(index) => index.lookup(self.shared.kv.as_ref(), client_id, h),
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
