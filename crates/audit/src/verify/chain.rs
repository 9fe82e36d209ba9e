//! One origin's chain as the audit rebuilds it from the log.

use gridsync_model::{Hash32, ZERO_HASH};

/// Largest gap in an origin's seqs the audit pads to keep indexing by seq.
const GAP_FILL_MAX: u64 = 1 << 20;

pub(super) struct Chain {
    pub seq: u64,
    pub hash: Hash32,
    /// Hash of every event seen, for checking references and overlaps.
    pub hashes: Vec<Hash32>,
    pub events: u64,
    pub first: Option<u64>,
}

impl Chain {
    pub(super) fn empty() -> Self {
        Self {
            seq: 0,
            hash: ZERO_HASH,
            hashes: Vec::new(),
            events: 0,
            first: None,
        }
    }

    /// Takes the seqs of a chunk starting at `first` beyond the chain's end.
    pub(super) fn extend(&mut self, first: u64, hashes: &[Hash32]) {
        for (i, h) in hashes.iter().enumerate() {
            let seq = first + i as u64;
            if seq > self.seq {
                // A tampered seq far ahead (up to u64::MAX) must not make the
                // audit fill billions of placeholders: such a jump is
                // reported (as a gap) and its hashes are not kept.
                let gap = seq - 1 - (self.hashes.len() as u64).min(seq - 1);
                if gap > GAP_FILL_MAX {
                    continue;
                }
                while (self.hashes.len() as u64) + 1 < seq {
                    self.hashes.push(ZERO_HASH);
                }
                self.hashes.push(*h);
                self.events += 1;
            }
        }
        let last = first + hashes.len() as u64 - 1;
        self.first = Some(self.first.map_or(first, |f| f.min(first)));
        self.seq = self.seq.max(last);
        self.hash = *hashes.last().expect("non-empty");
    }
}
