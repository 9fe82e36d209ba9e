//! A verified chunk linked onto its origin's chain, and which heads an
//! audit then verifies: the newest of each unbroken run of the chain (per
//! key), and every head beside the chain — with
//! [`super::Signatures::Newest`], and with [`super::Signatures::All`] for
//! v2 heads, where a head the next one names by its digest is vouched for
//! by it (every byte, its signature included) and any other is verified
//! on its own.

use gridsync_model::{Hash32, SignedHead};

use super::{Auditor, Chain};

/// The newest head of a run of one origin's chain: seqs `from..=head.seq`,
/// each linked to the next, all vouched for by this head's signature.
pub(super) struct Run {
    pub from: u64,
    pub offset: u64,
    pub head: SignedHead,
    pub key: ed25519_dalek::VerifyingKey,
    /// With [`super::Signatures::All`], the head's digest (v2 heads).
    pub digest: Option<Hash32>,
    /// Verified on its own: no later head names it (with
    /// [`super::Signatures::All`]).
    pub alone: bool,
}

/// How a verified chunk met its origin's chain ([`Auditor::link`]).
#[derive(PartialEq, Eq)]
pub(super) enum Linked {
    /// It continues the chain where it ended.
    Continues,
    /// It extends the chain, which resynchronised on it (a gap, a broken
    /// link, an overlap reaching past the end).
    Resynced,
    /// It holds nothing beyond the chain's end (a duplicate or a fork).
    Stale,
}

impl Auditor<'_> {
    /// Links a verified chunk (seqs `first..=last`) onto its origin's chain:
    /// an overlap is a `duplicate` or a `fork`, a jump a `gap`, a wrong
    /// `prev` a `broken_chain`. The chain resynchronises on the chunk
    /// either way, so later damage is reported separately.
    pub(super) fn link(
        &mut self,
        origin: &str,
        first: u64,
        last: u64,
        prev: Hash32,
        hashes: &[Hash32],
        offset: u64,
    ) -> Linked {
        if !self.chains.contains_key(origin) {
            self.chains.insert(origin.to_owned(), Chain::empty());
        }
        let chain = self.chains.get_mut(origin).expect("inserted above");
        let problem = if first <= chain.seq {
            let overlap_last = last.min(chain.seq);
            let ours = chain.prefixes.get(overlap_last as usize - 1).copied();
            let theirs = hashes
                .get((overlap_last - first) as usize)
                .map(super::chain::prefix);
            let kind = if ours == theirs { "duplicate" } else { "fork" };
            let m = format!(
                "log entry {offset} holds seqs {first}..{last} again (the chain was already at {})",
                chain.seq
            );
            Some((kind, first, m))
        } else if first > chain.seq.saturating_add(1) {
            let from = chain.seq.saturating_add(1);
            Some((
                "gap",
                from,
                format!("seqs {from}..{} are missing", first - 1),
            ))
        } else if prev != chain.hash {
            Some((
                "broken_chain",
                first,
                format!("seq {first} does not link to seq {}", chain.seq),
            ))
        } else {
            None
        };
        let stale = last <= chain.seq;
        if !stale {
            chain.extend(first, hashes, self.wanted.get(origin));
        }
        let linked = match (stale, &problem) {
            (true, _) => Linked::Stale,
            (false, None) => Linked::Continues,
            (false, Some(_)) => Linked::Resynced,
        };
        if let Some((kind, seq, m)) = problem {
            self.report
                .problem(kind, Some(origin), Some(seq), Some(offset), m);
        }
        linked
    }

    /// A verified chunk's head either becomes the newest of its origin's
    /// run (the one before it is vouched for by it through the links) or
    /// ends the run, whose head is then queued. With
    /// [`super::Signatures::All`] the head it replaces must also be named
    /// by it (`after`), or is queued to be verified on its own.
    pub(super) fn hold_head(&mut self, run: Run, linked: &Linked) {
        if *linked == Linked::Stale {
            // Beside the chain: its head vouches only for itself.
            return self.heads_to_verify.push(run);
        }
        let all = self.signatures == super::Signatures::All;
        // In place: one lookup a chunk, no key allocated unless the origin
        // is new.
        match self.runs.get_mut(&run.head.origin) {
            Some(held) if *linked == Linked::Continues && held.key == run.key => {
                let from = held.from;
                let named = !all || held.digest.is_some_and(|d| run.head.after == Some(d));
                let earlier = std::mem::replace(held, Run { from, ..run });
                if !named {
                    self.heads_to_verify.push(Run {
                        alone: true,
                        ..earlier
                    });
                }
            }
            Some(held) => {
                let ended = std::mem::replace(held, run);
                self.heads_to_verify.push(ended);
            }
            None => {
                self.runs.insert(run.head.origin.clone(), run);
            }
        }
    }

    /// The heads queued by [`Self::hold_head`] and each run's newest,
    /// verified by the worker threads in batches; one that does not verify leaves its
    /// whole run unvouched for.
    pub(super) fn verify_held_heads(&mut self) {
        let mut runs = std::mem::take(&mut self.heads_to_verify);
        runs.extend(std::mem::take(&mut self.runs).into_values());
        let ok = super::entry::parallel_shares(&runs, self.threads, |share| {
            let heads: Vec<_> = share.iter().map(|r| (&r.head, &r.key)).collect();
            let mut ok = vec![true; share.len()];
            for i in gridsync_model::chunk::failing_heads(&heads) {
                ok[i] = false;
            }
            ok
        });
        for (r, ok) in runs.iter().zip(ok) {
            if ok {
                continue;
            }
            let (origin, seq) = (&r.head.origin, r.head.seq);
            let m = if r.alone {
                format!(
                    "log entry {}: {}",
                    r.offset,
                    gridsync_model::ChunkError::BadSignature {
                        origin: origin.clone(),
                        seq
                    }
                )
            } else if self.signatures == super::Signatures::All {
                format!(
                    "log entry {}: the signature of {origin}'s head at seq {seq} does not verify, so neither seqs {}..={seq} nor the earlier heads it names are vouched for by {origin}",
                    r.offset, r.from
                )
            } else {
                format!(
                    "log entry {}: the signature of {origin}'s head at seq {seq} does not verify, so seqs {}..={seq} are not vouched for by {origin} (audit verify --signatures all names each chunk at fault)",
                    r.offset, r.from
                )
            };
            self.report
                .problem("bad_signature", Some(origin), Some(seq), Some(r.offset), m);
        }
    }
}
