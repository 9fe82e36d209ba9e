//! A child's batch: each chunk authenticated (subtree, chain links,
//! signature), linked to the origin's tip, and the new part persisted; an
//! origin whose chunk fails is refused alone, a gap ends the session.

use super::*;

impl super::ParentSession {
    /// Verifies a batch chunk by chunk. A chunk that cannot be read, or a
    /// gap (a lost batch), ends the session (`rejected`; the next session
    /// resumes from our heads); a chunk that fails a check of its origin —
    /// not in the child's subtree, unknown, bad signature, broken chain,
    /// equivocation — refuses only that origin for the rest of the session
    /// (`origin_refused`, with evidence for an equivocation) and the other
    /// origins' chunks go on.
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_batch(
        &mut self,
        mut out: Vec<Output>,
        child: &str,
        id: u64,
        chunks: Vec<ByteBuf>,
        topo: &dyn TopologyView,
        log: &dyn StoredLog,
        now_ms: i64,
    ) -> Vec<Output> {
        let read = match self.read_batch(&mut out, child, chunks, topo, log) {
            Ok(r) => r,
            Err((code, m)) => return self.reject(out, id, code, m, now_ms),
        };
        for (origin, seq, code, message) in read.refusals {
            let refused = Frame::OriginRefused {
                id,
                origin: origin.clone(),
                seq,
                code: code.as_str().into(),
                message: message.clone(),
            };
            self.send(&mut out, refused, now_ms);
            out.push(Output::Rejected { code, message });
            self.refused.insert(origin, code);
        }
        self.tips.extend(read.tips);
        // What each accepted chunk adds to `pending` is released from it
        // once the batch is durable.
        let mut released = Vec::with_capacity(read.new_pending.len());
        for (origin, first, hashes) in read.new_pending {
            released.push((origin.clone(), hashes.len()));
            self.pending.entry(origin).or_default().push(first, hashes);
        }
        let ack_now = self.cfg.bug_ack_before_durable;
        self.awaiting.push_back(Awaiting {
            id,
            touched: read.touched,
            released,
            acked_early: ack_now,
        });
        if read.accepted.is_empty() {
            // Nothing new: acknowledge in order once earlier batches are.
            self.flush_acks(&mut out, log, now_ms, None);
        } else {
            if ack_now {
                self.send_ack(&mut out, id, now_ms);
            }
            out.push(Output::Persist {
                batch: id,
                chunks: read.accepted,
            });
        }
        out
    }

    /// Reads a batch chunk by chunk against the tips it moves (committed
    /// to `self` only once the whole batch is read). A malformed chunk or a
    /// gap (the session's fault — a lost frame — not the origin's) ends the
    /// session; other refusals stop only that origin.
    fn read_batch(
        &self,
        out: &mut Vec<Output>,
        child: &str,
        chunks: Vec<ByteBuf>,
        topo: &dyn TopologyView,
        log: &dyn StoredLog,
    ) -> Result<BatchRead, (RejectCode, String)> {
        let mut r = BatchRead::default();
        let decoded = chunks
            .iter()
            .map(|bytes| Chunk::decode(bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| (RejectCode::Malformed, e.to_string()))?;
        drop(chunks);
        let signatures = self.check_signatures(&decoded, child, topo);
        for (chunk, signature) in decoded.into_iter().zip(signatures) {
            let origin = chunk.origin.clone();
            if self.refused.contains_key(&origin) || r.refusals.iter().any(|x| x.0 == origin) {
                continue;
            }
            let tip = r
                .tips
                .get(&origin)
                .or_else(|| self.tips.get(&origin))
                .copied()
                .or_else(|| log.head(&origin))
                .unwrap_or((0, ZERO_HASH));
            // The refusal, and the chunk when it was authentic (an
            // equivocation's evidence).
            let (refusal, theirs) = match authenticate(chunk, child, topo, signature) {
                Err(refusal) => (refusal, None),
                Ok(linked) => match self.check_chunk(&linked, tip, log) {
                    Ok(None) => continue,
                    Ok(Some(after)) => {
                        r.accept(linked, after);
                        continue;
                    }
                    Err(refusal) => (refusal, Some(linked)),
                },
            };
            if refusal.code == RejectCode::Gap {
                return Err((RejectCode::Gap, refusal.message));
            }
            // Evidence is kept only with the head's own signature checked
            // (one vouched for by a later head would need that head too).
            let theirs = theirs.filter(|t| {
                signature != Some(Signature::Vouched)
                    || topo
                        .key_at(&origin, t.chunk().last_seq())
                        .is_some_and(|key| t.chunk().head.verify(&key).is_ok())
            });
            if let (Some((seq, ours)), Some(theirs)) = (refusal.fork, theirs) {
                out.push(Output::Equivocation {
                    origin: origin.clone(),
                    seq,
                    ours,
                    theirs: theirs.into_chunk(),
                });
            }
            r.refusals
                .push((origin, refusal.seq, refusal.code, refusal.message));
        }
        Ok(r)
    }

    /// Each chunk's head signature, checked before the chunks are read in
    /// order so that a head can lean on a later one: a chunk whose next
    /// chunk of the same origin in this batch carries a head that names
    /// this chunk's head (`after`, [`gridsync_model::SignedHead::follows`]) under the same
    /// key, and whose own signature held (checked or so vouched for), is
    /// vouched for byte for byte without a check of its own — the rule the
    /// store's recovery walk and the audit apply to stored heads. A post
    /// its origin cut into two chunks (~32 KiB and the rest) then costs the
    /// parent one ed25519 check, not two. `None`: not looked at here (an
    /// origin refused earlier, not in the child's subtree or unknown);
    /// [`authenticate`] refuses or checks it as before.
    fn check_signatures(
        &self,
        chunks: &[Chunk],
        child: &str,
        topo: &dyn TopologyView,
    ) -> Vec<Option<Signature>> {
        let mut out = vec![None; chunks.len()];
        // Per origin, the index of its next chunk in the batch (walking
        // back) and that chunk's key.
        let mut later: HashMap<&str, (usize, VerifyingKey)> = HashMap::new();
        for (i, chunk) in chunks.iter().enumerate().rev() {
            let origin = chunk.origin.as_str();
            if self.refused.contains_key(origin) || !topo.in_subtree(child, origin) {
                continue;
            }
            let Some(key) = topo.key_at(origin, chunk.last_seq()) else {
                continue;
            };
            let vouched = later.get(origin).is_some_and(|&(j, later_key)| {
                later_key == key
                    && out[j].is_some_and(Signature::holds)
                    && chunks[j].head.follows(&chunk.head)
            });
            out[i] = Some(if vouched {
                Signature::Vouched
            } else if chunk.head.verify(&key).is_ok() {
                Signature::Checked
            } else {
                Signature::Bad
            });
            later.insert(origin, (i, key));
        }
        out
    }

    /// Checks an authentic chunk against the held chain (`tip`: the head
    /// including accepted, not yet durable batches). `Ok(None)`: wholly
    /// held already (identical); `Ok(Some(after))`: new after seq `after`.
    fn check_chunk(
        &self,
        linked: &LinkedChunk,
        (tip_seq, tip_hash): (u64, Hash32),
        log: &dyn StoredLog,
    ) -> Result<Option<u64>, Refusal> {
        let chunk = linked.chunk();
        let origin = chunk.origin.as_str();
        let (first, last) = (chunk.first_seq(), chunk.last_seq());
        let (first_prev, hashes_in) = (linked.prev(), linked.hashes());
        if first > tip_seq.saturating_add(1) {
            let m = format!(
                "origin {origin}: expected seq {}, got {first} (gap)",
                tip_seq.saturating_add(1)
            );
            return Err(Refusal::new(RejectCode::Gap, first, m));
        }
        let fork = |seq: u64, ours: Hash32, m: String| Refusal {
            code: RejectCode::Equivocation,
            seq,
            message: m,
            fork: Some((seq, ours)),
        };
        if last <= tip_seq {
            // Entirely known: a duplicate if identical.
            let theirs = *hashes_in.last().expect("chunks are non-empty");
            let Some(ours) = self.known_hash(log, origin, last) else {
                let m = format!("cannot read {origin}/{last}");
                return Err(Refusal::new(RejectCode::Protocol, last, m));
            };
            if ours != theirs {
                let m = format!(
                    "origin {origin} seq {last}: a different event than the one held (equivocation)"
                );
                return Err(fork(last, ours, m));
            }
            return Ok(None);
        }
        if first <= tip_seq {
            let idx = usize::try_from(tip_seq - first).expect("fits");
            if hashes_in[idx] != tip_hash {
                let m = format!(
                    "origin {origin} seq {tip_seq}: a different event than the one held (equivocation)"
                );
                return Err(fork(tip_seq, tip_hash, m));
            }
        } else if first_prev != tip_hash {
            // first == tip_seq + 1
            if tip_seq == 0 {
                let m = format!("origin {origin} seq 1 has a non-zero prev");
                return Err(Refusal::new(RejectCode::BrokenChain, first, m));
            }
            let m = format!(
                "origin {origin}: seq {first} does not follow the held seq {tip_seq} (equivocation)"
            );
            return Err(fork(tip_seq, tip_hash, m));
        }
        Ok(Some(tip_seq))
    }
}

/// What reading one batch found, before any of it is committed.
#[derive(Default)]
struct BatchRead {
    /// New chunks (trimmed to what is new), to persist.
    accepted: Vec<LinkedChunk>,
    /// Per origin touched: its last seq and hash in this batch.
    touched: Vec<(String, u64, Hash32)>,
    /// Tips as they will be if this batch is accepted.
    tips: HashMap<String, (u64, Hash32)>,
    /// Per accepted chunk: origin, first new seq, the new events' hashes.
    new_pending: Vec<(String, u64, Vec<Hash32>)>,
    /// `(origin, seq, code, message)` of origins refused in this batch.
    refusals: Vec<(String, u64, RejectCode, String)>,
}

impl BatchRead {
    /// Takes a verified chunk's events after seq `after`.
    fn accept(&mut self, linked: LinkedChunk, after: u64) {
        let origin = linked.chunk().origin.clone();
        let last = linked.chunk().last_seq();
        let new = linked.into_suffix_after(after).expect("last > after");
        let new_from = new.chunk().first_seq();
        self.new_pending
            .push((origin.clone(), new_from, new.hashes().to_vec()));
        let last_hash = *new.hashes().last().expect("non-empty");
        self.tips.insert(origin.clone(), (last, last_hash));
        self.touched.retain(|(o, _, _)| *o != origin);
        self.touched.push((origin, last, last_hash));
        self.accepted.push(new);
    }
}

/// A chunk head's signature as [`ParentSession::check_signatures`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signature {
    /// Verified (`verify_strict`).
    Checked,
    /// Named by a later head of the batch whose signature held.
    Vouched,
    /// Did not verify.
    Bad,
}

impl Signature {
    fn holds(self) -> bool {
        self != Signature::Bad
    }
}

/// Whether `chunk` may come from `child` and is authentic: its origin is
/// in the child's subtree and known, its chain links hold inside it and
/// the origin's signature on its head verifies (or `signature` already
/// says how it stands). Returns it linked (the first event's `prev` and
/// every event's hash, for the store too).
fn authenticate(
    chunk: Chunk,
    child: &str,
    topo: &dyn TopologyView,
    signature: Option<Signature>,
) -> Result<LinkedChunk, Refusal> {
    let origin = chunk.origin.as_str();
    let (first, last) = (chunk.first_seq(), chunk.last_seq());
    if !topo.in_subtree(child, origin) {
        let m = format!("origin {origin} is not in the subtree of {child}");
        return Err(Refusal::new(RejectCode::ForeignOrigin, first, m));
    }
    let Some(key) = topo.key_at(origin, last) else {
        let m = format!("origin {origin} is unknown");
        return Err(Refusal::new(RejectCode::ForeignOrigin, first, m));
    };
    // (Content is decoded where it is used.)
    chunk
        .linked()
        .and_then(|linked| {
            let head = &linked.chunk().head;
            match signature {
                Some(s) if s.holds() => {}
                Some(_) => {
                    return Err(gridsync_model::ChunkError::BadSignature {
                        origin: head.origin.clone(),
                        seq: head.seq,
                    })
                }
                None => head.verify(&key)?,
            }
            Ok(linked)
        })
        .map_err(|e| {
            let code = match e {
                gridsync_model::ChunkError::BadSignature { .. } => RejectCode::BadSignature,
                _ => RejectCode::BrokenChain,
            };
            Refusal::new(code, first, e.to_string())
        })
}
