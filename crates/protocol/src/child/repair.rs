//! The community's own chain after the handshake: agreeing with the
//! parent's copy, or pulling back what the parent holds and this node lost
//! (restored from an older backup), or finding the two differ.

use super::*;

impl super::ChildSession {
    /// Compares the parent's copy of this node's own chain (as an origin)
    /// with the local one: agree and stream, pull a lost tail back, or
    /// report two histories.
    pub(super) fn check_own_chain(
        &mut self,
        out: &mut Vec<Output>,
        heads: &[WireHead],
        log: &dyn LocalLog,
        now_ms: i64,
    ) {
        self.state = State::Streaming;
        let own = self.cfg.node_id.clone();
        self.refresh_heads(log);
        let local = self.heads.get(&own).copied().unwrap_or(0);
        let Some(theirs) = heads.iter().find(|h| h.origin == own) else {
            // The parent holds none of it (or this node is no origin).
            out.push(Output::OwnChain(OwnChain::Agrees));
            return;
        };
        let their_hash: Hash32 = theirs.hash.as_slice().try_into().unwrap_or([0xff; 32]);
        if theirs.seq <= local {
            let ours = log.hash_at(&own, theirs.seq);
            if ours == Some(their_hash) {
                out.push(Output::OwnChain(OwnChain::Agrees));
            } else {
                out.push(Output::OwnChain(OwnChain::Diverged {
                    seq: theirs.seq,
                    ours: ours.unwrap_or(ZERO_HASH),
                    theirs: their_hash,
                    evidence: None,
                }));
                // Send our version of that seq up: the parent keeps both as
                // evidence and refuses this origin.
                self.set_sent(own, theirs.seq - 1);
            }
            return;
        }
        let Some(local_hash) = log.hash_at(&own, local) else {
            self.close(out, format!("cannot read own event {own}/{local}"));
            return;
        };
        out.push(Output::OwnChain(OwnChain::Behind {
            local,
            parent: theirs.seq,
        }));
        self.state = State::Repairing;
        self.repair = Some(Repair {
            at: (local, local_hash),
            target: theirs.seq,
            fetch_sent_ms: None,
            importing: false,
        });
        self.fetch(out, now_ms);
    }

    fn fetch(&mut self, out: &mut Vec<Output>, now_ms: i64) {
        let Some(r) = self.repair.as_mut() else {
            return;
        };
        r.fetch_sent_ms = Some(now_ms);
        let after_seq = r.at.0;
        let origin = self.cfg.node_id.clone();
        self.send(out, Frame::Fetch { origin, after_seq }, now_ms);
    }

    /// Verifies a fetched piece of this node's own chain: it must continue
    /// the local chain and carry this node's signature.
    pub(super) fn on_fetched(
        &mut self,
        mut out: Vec<Output>,
        origin: &str,
        chunks: Vec<ByteBuf>,
        head: u64,
        now_ms: i64,
    ) -> Vec<Output> {
        let own = self.cfg.node_id.clone();
        let keys = gridsync_model::keys::KeyHistory {
            current: self.cfg.key.verifying_key(),
            previous: self.cfg.own_previous_keys.clone(),
        };
        let Some(r) = self.repair.as_mut() else {
            return self.fail(out, "fetched frame without a fetch".into());
        };
        if origin != own || r.fetch_sent_ms.is_none() || r.importing {
            return self.fail(out, format!("unexpected fetched frame for {origin}"));
        }
        r.fetch_sent_ms = None;
        r.target = r.target.max(head);
        let mut verified = Vec::new();
        let mut at = r.at;
        for bytes in chunks {
            match verify_fetched(&own, &keys, at, &bytes) {
                Ok((chunk, last_hash)) => {
                    at = (chunk.last_seq(), last_hash);
                    verified.push(chunk);
                }
                Err(FetchError::Fail(m)) => return self.fail(out, m),
                Err(FetchError::Diverged { theirs, chunk }) => {
                    // The parent's next event does not follow ours: the two
                    // copies differ at `at.0`. Nothing of ours goes up.
                    let (seq, ours) = at;
                    self.repair = None;
                    self.blocked.insert(
                        own,
                        format!("the parent's copy of this node's chain differs at seq {seq}"),
                    );
                    out.push(Output::OwnChain(OwnChain::Diverged {
                        seq,
                        ours,
                        theirs,
                        evidence: Some(chunk),
                    }));
                    self.state = State::Streaming;
                    return out;
                }
            }
        }
        let r = self.repair.as_mut().expect("checked above");
        if verified.is_empty() {
            if r.at.0 >= r.target {
                return self.finish_repair(out, now_ms);
            }
            let m = format!(
                "the parent reports seq {} of this origin but sent nothing after seq {}",
                r.target, r.at.0
            );
            return self.fail(out, m);
        }
        r.at = at;
        r.importing = true;
        out.push(Output::Import { chunks: verified });
        out
    }

    /// The chunks of the last `Output::Import` are durable in the local log.
    pub fn on_repaired(&mut self, log: &dyn LocalLog, now_ms: i64) -> Vec<Output> {
        let mut out = Vec::new();
        let Some(r) = self.repair.as_mut() else {
            return out;
        };
        if self.state != State::Repairing || !r.importing {
            return out;
        }
        r.importing = false;
        if r.at.0 >= r.target {
            out = self.finish_repair(out, now_ms);
            if self.state == State::Streaming {
                self.fill(&mut out, log, now_ms);
            }
            return out;
        }
        self.fetch(&mut out, now_ms);
        out
    }

    fn finish_repair(&mut self, mut out: Vec<Output>, now_ms: i64) -> Vec<Output> {
        let seq = self.repair.take().map_or(0, |r| r.at.0);
        self.state = State::Streaming;
        let own = self.cfg.node_id.clone();
        self.set_sent(own, seq);
        out.push(Output::OwnChain(OwnChain::Repaired { seq }));
        let _ = now_ms;
        out
    }
}

/// Why a chunk of this node's own chain fetched back from the parent was
/// not taken.
enum FetchError {
    /// It is not the next verified piece of this node's chain.
    Fail(String),
    /// It follows a different event than ours at the chain's end: the two
    /// copies differ (`theirs`: the `prev` it carries).
    Diverged { theirs: Hash32, chunk: Box<Chunk> },
}

/// Checks a fetched chunk: this node's, starting right after `at` (seq,
/// hash), linked inside, signed with the key this node held at its head.
/// Returns it with its last event's hash.
fn verify_fetched(
    own: &str,
    keys: &gridsync_model::keys::KeyHistory,
    at: (u64, Hash32),
    bytes: &[u8],
) -> Result<(Chunk, Hash32), FetchError> {
    let fail = |m: String| Err(FetchError::Fail(m));
    let chunk = match Chunk::decode(bytes) {
        Ok(c) if c.origin == own => c,
        Ok(c) => return fail(format!("fetched a chunk of {}", c.origin)),
        Err(e) => return fail(format!("fetched chunk: {e}")),
    };
    if chunk.first_seq() != at.0 + 1 {
        let m = format!(
            "fetched chunk starts at seq {}, expected {}",
            chunk.first_seq(),
            at.0 + 1
        );
        return fail(m);
    }
    match chunk.first_prev() {
        Ok(prev) if prev == at.1 => {}
        Ok(theirs) => {
            return Err(FetchError::Diverged {
                theirs,
                chunk: Box::new(chunk),
            })
        }
        Err(e) => return fail(format!("fetched chunk: {e}")),
    }
    let checked = chunk
        .check_links(at.0 + 1, &at.1)
        .and_then(|h| chunk.head.verify(&keys.at(chunk.last_seq())).map(|()| h));
    match checked {
        Ok(h) => {
            let last = *h.last().expect("chunks are non-empty");
            Ok((chunk, last))
        }
        Err(e) => fail(format!("fetched chunk does not verify: {e}")),
    }
}
