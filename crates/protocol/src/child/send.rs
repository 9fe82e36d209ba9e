//! What the child sends: batches of the chunks its parent lacks, read from
//! the log, and with each batch the lag report (per origin, what the
//! parent lacks and since when; only the origins whose report changed when
//! the parent speaks `lag-changes-v1`).

use super::*;

impl super::ChildSession {
    /// What the parent lacks, per origin: every origin, or — when the
    /// parent keeps each origin's latest report (`lag-changes-v1`) — only
    /// those whose report changed since the one last sent in this session.
    /// What this returns is sent.
    pub fn lag(&mut self, log: &dyn LocalLog) -> Vec<LagReport> {
        let heads = log.heads();
        self.lag_of(&heads, log)
    }

    /// [`ChildSession::lag`] for heads already read.
    fn lag_of(&mut self, heads: &[(String, u64)], log: &dyn LocalLog) -> Vec<LagReport> {
        let mut reports = Vec::new();
        for (origin, seq) in heads {
            let acked = self.acked.get(origin).copied().unwrap_or(0);
            let oldest_missing_ms = (*seq > acked)
                .then(|| self.received_at(log, origin, acked + 1))
                .flatten();
            if self.lag_changes_only {
                let now = (*seq, oldest_missing_ms);
                match self.lag_sent.get_mut(origin) {
                    Some(sent) if *sent == now => continue,
                    Some(sent) => *sent = now,
                    None => {
                        self.lag_sent.insert(origin.clone(), now);
                    }
                }
            }
            reports.push(LagReport {
                origin: origin.clone(),
                seq: *seq,
                oldest_missing_ms,
            });
        }
        reports
    }

    /// When this node received `origin`'s event `seq` (remembered per
    /// origin; an unreadable one is asked again next time).
    fn received_at(&mut self, log: &dyn LocalLog, origin: &str, seq: u64) -> Option<i64> {
        if let Some((s, at)) = self.oldest_missing.get(origin) {
            if *s == seq {
                return Some(*at);
            }
        }
        let at = log.received_at(origin, seq)?;
        self.oldest_missing.insert(origin.to_owned(), (seq, at));
        Some(at)
    }

    /// Sends batches while the window has room and there is something new.
    pub(super) fn fill(&mut self, out: &mut Vec<Output>, log: &dyn LocalLog, now_ms: i64) {
        if self.inflight.len() >= self.cfg.window_batches.max(1) {
            return;
        }
        // Read once for every batch this call sends (and their lag
        // reports): a commit after this read calls `fill` again.
        let all = log.heads();
        let heads: Vec<&(String, u64)> = all
            .iter()
            .filter(|(o, _)| !self.blocked.contains_key(o))
            .collect();
        if heads.is_empty() {
            return;
        }
        while self.inflight.len() < self.cfg.window_batches.max(1) {
            let mut chunks: Vec<ByteBuf> = Vec::new();
            let mut tips: Vec<(String, u64)> = Vec::new();
            let mut bytes = 0usize;
            // Round-robin over origins so one busy origin cannot starve others.
            let n = heads.len();
            for k in 0..n {
                if bytes >= self.cfg.batch_bytes_max {
                    break;
                }
                let (origin, head) = heads[(self.rr_cursor + k) % n];
                let sent = self.sent.get(origin).copied().unwrap_or(0);
                if *head <= sent {
                    continue;
                }
                let budget = self.cfg.batch_bytes_max - bytes;
                let mut last = sent;
                // This origin's chunks not yet pushed, to be joined, and
                // about the size of the chunk they join into.
                let (mut run, mut joined_bytes) = (Vec::new(), 0);
                for stored in log.encoded_chunks_after(origin, sent, budget) {
                    // Never past the head read above: what lies beyond is
                    // not known to be durable.
                    if stored.last_seq > *head || stored.last_seq <= last {
                        if stored.last_seq > *head {
                            break;
                        }
                        continue;
                    }
                    // Nothing to trim: the stored bytes as they are (most
                    // chunks an aggregator forwards), or with each personal
                    // part replaced by nil on the bytes (a community's own
                    // chunks). Otherwise decoded, trimmed, encoded again.
                    let stored_bytes = if stored.first_seq != last + 1 {
                        Err(stored.bytes)
                    } else if self.cfg.forward_personal {
                        Ok(stored.bytes)
                    } else {
                        Chunk::encoded_without_personal(stored.bytes)
                    };
                    let enc = match stored_bytes {
                        Ok(bytes) => bytes,
                        Err(bytes) => {
                            let Some(c) = Chunk::decode(&bytes)
                                .ok()
                                .and_then(|c| c.suffix_after(last))
                            else {
                                break; // unreadable: the store reports it
                            };
                            if c.first_seq() != last + 1 {
                                break; // a hole in the local log
                            }
                            let mut c = c;
                            if !self.cfg.forward_personal {
                                for e in &mut c.events {
                                    e.personal = None;
                                }
                            }
                            c.encode()
                        }
                    };
                    // Consecutive chunks go up joined while the joined
                    // chunk and the next fit the join limit: one head for
                    // the parent to verify and store instead of one per
                    // chunk (phones' posts).
                    if run.is_empty() || joined_bytes + enc.len() > self.cfg.join_bytes_max {
                        push_joined(&mut chunks, std::mem::take(&mut run));
                        joined_bytes = enc.len();
                    } else {
                        joined_bytes += Chunk::encoded_events_len(&enc).unwrap_or(enc.len());
                    }
                    last = stored.last_seq;
                    bytes += enc.len();
                    run.push(enc);
                    if bytes >= self.cfg.batch_bytes_max {
                        break;
                    }
                }
                push_joined(&mut chunks, run);
                if last > sent {
                    self.sent.insert(origin.clone(), last);
                    tips.push((origin.clone(), last));
                }
            }
            self.rr_cursor = (self.rr_cursor + 1) % n;
            if chunks.is_empty() {
                return;
            }
            let id = self.next_batch_id;
            self.next_batch_id += 1;
            let lag = self.lag_of(&all, log);
            self.inflight.push_back(InFlight {
                id,
                sent_at_ms: now_ms,
                tips,
            });
            self.send(out, Frame::Batch { id, chunks, lag }, now_ms);
        }
    }
}

/// Pushes a run of one origin's consecutive chunks as one chunk
/// ([`Chunk::encoded_joined`]), or as they are when it is a single chunk
/// or they cannot be joined.
fn push_joined(chunks: &mut Vec<ByteBuf>, run: Vec<Vec<u8>>) {
    if run.len() > 1 {
        let parts: Vec<&[u8]> = run.iter().map(Vec::as_slice).collect();
        if let Some(joined) = Chunk::encoded_joined(&parts) {
            chunks.push(ByteBuf::from(joined));
            return;
        }
    }
    chunks.extend(run.into_iter().map(ByteBuf::from));
}
