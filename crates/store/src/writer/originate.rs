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
        let origin_id = origin.node_id.clone();
        let start = self.head_of(work, &origin_id);
        let (mut seq, mut hash) = start;
        let mut records: Vec<EventRecord> = Vec::new();
        let mut added: Vec<(String, (u64, Hash32, Hash32))> = Vec::new();
        let mut results = Vec::with_capacity(events.len());
        for (index, ev) in events.into_iter().enumerate() {
            // Already taken: in this commit, earlier in this request, or
            // stored.
            let existing = match work.clients.get(&ev.client_id) {
                Some(p) => Some(*p),
                None => added
                    .iter()
                    .find(|(c, _)| *c == ev.client_id)
                    .map(|(_, p)| *p)
                    .map_or_else(
                        || self.lookup_client(&origin_id, &ev.client_id),
                        |p| Ok(Some(p)),
                    )?,
            };
            if let Some((s, h, fp)) = existing {
                if fp != ev.fingerprint && fp != UNKNOWN_FINGERPRINT {
                    return Err(AppendError::ClientIdReused {
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
            records.push(EventRecord {
                envelope,
                personal: ev.personal,
            });
            added.push((ev.client_id, (seq, hash, ev.fingerprint)));
            results.push(Appended {
                origin: origin_id.clone(),
                seq,
                hash,
                duplicate: false,
            });
        }
        if records.is_empty() {
            return Ok(results);
        }
        let end = cut_into_chunks(
            work,
            origin,
            start,
            records,
            self.config.chunk_bytes_target,
            now_ms,
        );
        debug_assert_eq!(end, (seq, hash));
        for (client_id, (s, h, fp)) in added {
            let mut v = Vec::with_capacity(72);
            v.extend_from_slice(&s.to_be_bytes());
            v.extend_from_slice(&h);
            v.extend_from_slice(&fp);
            work.writes
                .push((layout::client_key(&origin_id, &client_id), Some(v)));
            work.clients.insert(client_id, (s, h, fp));
        }
        Ok(results)
    }

    fn lookup_client(
        &self,
        origin: &str,
        client_id: &str,
    ) -> Result<Option<(u64, Hash32, Hash32)>, StoreError> {
        match self.shared.kv.get(&layout::client_key(origin, client_id))? {
            None => Ok(None),
            Some(v) => decode_client_value(&v).map(Some),
        }
    }
}

/// The canonical envelope of a prepared event at `seq` after `prev`.
fn envelope_of(ev: &PreparedEvent, origin: &str, seq: u64, prev: &Hash32, now_ms: i64) -> Vec<u8> {
    let digest = ev.personal.as_ref().map(|p| p.digest());
    EnvelopeHeader {
        origin,
        seq,
        kind: &ev.kind,
        schema: ev.schema,
        occurred_at: ev.occurred_at,
        recorded_at_ms: now_ms,
        grid: &ev.grid,
        recorded_by: &ev.recorded_by,
        client_id: &ev.client_id,
        prev,
        personal_digest: digest.as_ref(),
    }
    .encode_with_data(&ev.data)
}

/// Cuts an origin's new events (following `start`: seq, hash) into chunks
/// of about `bytes_target`, each closed by a head signed with the origin's
/// key, and adds them to the work; returns the last seq and hash.
fn cut_into_chunks(
    work: &mut Work,
    origin: &OriginIdentity,
    start: (u64, Hash32),
    records: Vec<EventRecord>,
    bytes_target: usize,
    now_ms: i64,
) -> (u64, Hash32) {
    let mut current: Vec<EventRecord> = Vec::new();
    let mut current_bytes = 0usize;
    let (mut chunk_seq, mut chunk_hash) = start;
    let n_records = records.len();
    for (i, rec) in records.into_iter().enumerate() {
        chunk_seq += 1;
        chunk_hash = event_hash(&rec.envelope);
        current_bytes +=
            rec.envelope.len() + rec.personal.as_ref().map_or(0, |p| p.bytes.len() + 24) + 8;
        current.push(rec);
        if current_bytes >= bytes_target || i + 1 == n_records {
            let head =
                SignedHead::sign(&origin.key, &origin.node_id, chunk_seq, chunk_hash, now_ms);
            let chunk = Chunk {
                origin: origin.node_id.clone(),
                events: std::mem::take(&mut current),
                head,
            };
            Writer::push_chunk(work, chunk, now_ms);
            current_bytes = 0;
        }
    }
    (chunk_seq, chunk_hash)
}

/// The fingerprint recorded for an event whose personal part this node got
/// back without (a retry with its client id is taken as a duplicate).
pub(super) const UNKNOWN_FINGERPRINT: Hash32 = [0xff; 32];

/// The client-id index entry of a stored event of this origin:
/// `(client_id, seq ‖ hash ‖ content fingerprint)`.
pub(super) fn client_entry(rec: &EventRecord) -> Result<(String, [u8; 72]), String> {
    let env = gridsync_model::Envelope::decode(&rec.envelope).map_err(|e| e.to_string())?;
    let fp = if env.personal_digest.is_some() && rec.personal.is_none() {
        // Pulled back from a parent that never held the personal part: the
        // content cannot be compared, only the client id.
        UNKNOWN_FINGERPRINT
    } else {
        gridsync_model::ingest::stored_fingerprint(&env, rec.personal.as_ref())
    };
    let mut v = [0u8; 72];
    v[..8].copy_from_slice(&env.seq.to_be_bytes());
    v[8..40].copy_from_slice(&event_hash(&rec.envelope));
    v[40..].copy_from_slice(&fp);
    Ok((env.client_id, v))
}

pub(super) fn decode_client_value(v: &[u8]) -> Result<(u64, Hash32, Hash32), StoreError> {
    if v.len() != 72 {
        return Err(corrupt("malformed client_id index entry"));
    }
    Ok((
        u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
        v[8..40].try_into().expect("32 bytes"),
        v[40..72].try_into().expect("32 bytes"),
    ))
}
