//! What the child sends: batches of the chunks its parent lacks, read from
//! the log, and with each batch the lag report (per origin, what the
//! parent lacks and since when; only the origins whose report changed when
//! the parent speaks `lag-changes-v1`).

use std::ops::Bound;

use super::*;

impl super::ChildSession {
    /// What the parent lacks, per origin: every origin, or — when the
    /// parent keeps each origin's latest report (`lag-changes-v1`) — only
    /// those whose report changed since the one last sent in this session.
    /// What this returns is sent.
    pub fn lag(&mut self, log: &dyn LocalLog) -> Vec<LagReport> {
        self.refresh_heads(log);
        self.lag_of(log)
    }

    /// Takes what moved in the local heads since they were last read
    /// ([`LocalLog::heads_since`]): each moved origin may have events to
    /// send and a lag report to renew.
    pub(super) fn refresh_heads(&mut self, log: &dyn LocalLog) {
        let moved = log.heads_since(self.heads_stamp);
        if moved.full {
            let held: BTreeSet<&str> = moved.heads.iter().map(|(o, _)| o.as_str()).collect();
            self.heads.retain(|o, _| held.contains(o.as_str()));
            self.sendable.retain(|o| held.contains(o.as_str()));
            self.lag_dirty.retain(|o| held.contains(o.as_str()));
        }
        for (origin, seq) in moved.heads {
            if self.heads.get(&origin) == Some(&seq) {
                continue;
            }
            self.sendable.insert(origin.clone());
            self.lag_dirty.insert(origin.clone());
            self.heads.insert(origin, seq);
        }
        self.heads_stamp = moved.stamp;
    }

    /// `sent` of `origin` set (the repair of this node's own chain moves
    /// it either way): it may have events to send.
    pub(super) fn set_sent(&mut self, origin: String, seq: u64) {
        self.sendable.insert(origin.clone());
        self.sent.insert(origin, seq);
    }

    /// The lag reports due, for the heads last read: with
    /// `lag_changes_only`, those of the origins whose head or
    /// acknowledgement moved since and whose report differs from the one
    /// sent; else every origin's.
    fn lag_of(&mut self, log: &dyn LocalLog) -> Vec<LagReport> {
        let dirty = std::mem::take(&mut self.lag_dirty);
        let origins: Vec<String> = if self.lag_changes_only {
            dirty.into_iter().collect()
        } else {
            self.heads.keys().cloned().collect()
        };
        let mut reports = Vec::new();
        for origin in origins {
            let Some(&seq) = self.heads.get(&origin) else {
                continue;
            };
            let acked = self.acked.get(&origin).copied().unwrap_or(0);
            let oldest_missing_ms = if seq > acked {
                let at = self.received_at(log, &origin, acked + 1);
                if at.is_none() {
                    // Unreadable now: asked again with the next report.
                    self.lag_dirty.insert(origin.clone());
                }
                at
            } else {
                None
            };
            if self.lag_changes_only {
                let now = (seq, oldest_missing_ms);
                match self.lag_sent.get_mut(&origin) {
                    Some(sent) if *sent == now => continue,
                    Some(sent) => *sent = now,
                    None => {
                        self.lag_sent.insert(origin.clone(), now);
                    }
                }
            }
            reports.push(LagReport {
                origin,
                seq,
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
        self.refresh_heads(log);
        while self.inflight.len() < self.cfg.window_batches.max(1) {
            let mut chunks: Vec<ByteBuf> = Vec::new();
            let mut tips: Vec<(String, u64)> = Vec::new();
            // Origins with nothing (more) to send, dropped from `sendable`.
            let mut drained: Vec<String> = Vec::new();
            let mut first: Option<String> = None;
            let mut bytes = 0usize;
            // Round-robin over origins so one busy origin cannot starve
            // others: each batch starts after the origin the last began
            // with.
            let start = self.rr_next.as_str();
            let order = self
                .sendable
                .range::<str, _>((Bound::Included(start), Bound::Unbounded))
                .chain(
                    self.sendable
                        .range::<str, _>((Bound::Unbounded, Bound::Excluded(start))),
                );
            for origin in order {
                if bytes >= self.batch_bytes_max {
                    break;
                }
                let head = self.heads.get(origin).copied().unwrap_or(0);
                let sent = self.sent.get(origin).copied().unwrap_or(0);
                if head <= sent || self.blocked.contains_key(origin) {
                    drained.push(origin.clone());
                    continue;
                }
                first.get_or_insert_with(|| origin.clone());
                let budget = self.batch_bytes_max - bytes;
                let mut last = sent;
                // This origin's chunks not yet pushed, to be joined, and
                // about the size of the chunk they join into.
                let (mut run, mut joined_bytes) = (Vec::new(), 0);
                for stored in log.encoded_chunks_after(origin, sent, budget) {
                    // Never past the head read above: what lies beyond is
                    // not known to be durable.
                    if stored.last_seq > head || stored.last_seq <= last {
                        if stored.last_seq > head {
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
                    if bytes >= self.batch_bytes_max {
                        break;
                    }
                }
                push_joined(&mut chunks, run);
                if last > sent {
                    tips.push((origin.clone(), last));
                    if last >= head {
                        drained.push(origin.clone());
                    }
                }
            }
            for o in drained {
                self.sendable.remove(&o);
            }
            for (o, last) in &tips {
                self.sent.insert(o.clone(), *last);
            }
            if let Some(first) = first {
                // The least origin after `first`.
                self.rr_next = first + "\0";
            }
            if chunks.is_empty() {
                return;
            }
            let id = self.next_batch_id;
            self.next_batch_id += 1;
            let lag = self.lag_of(log);
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
