//! The `client_id` index of an origin: a phone's retried post is answered
//! with the event it already made — forever — at far less than one sled
//! key per event (sled's per-key cost capped commits at ~64k events/s
//! when every event had its own key).
//!
//! A small log-structured merge index beside the log:
//!
//! - **recent** — the origin's events after `indexed_upto`, in memory
//!   (`client_id → seq, hash`). They cost no index writes: the
//!   log holds their client ids, and an open reads them back from the log
//!   tail (at most `flush_entries` plus one commit's events).
//! - **runs** — when recent reaches `flush_entries`, that commit writes it
//!   as a run: `(h, seq)` pairs sorted by `h` (the first 8 bytes of
//!   BLAKE3(client id), big-endian), in blocks of at most
//!   [`BLOCK_PAIRS`] pairs (7 KiB, one sled key each). `fanout` runs of one
//!   tier are merged into one run of the next tier, a slice of the hash
//!   space at a time within the commits that follow (a few slices per
//!   commit), so no commit carries a large merge. Each event is rewritten
//!   about once per tier: log_fanout(events / flush_entries) times.
//! - **filter** — a Bloom filter of every indexed `h`, in memory (about
//!   2.5 bytes per event), built when the writer starts. A client id never
//!   seen (the common case) reads no run.
//!
//! A candidate pair is confirmed by reading the event at its seq from the
//! log and comparing the client id, so neither a 64-bit collision nor a
//! false positive ever decides. Whether a post that reuses a held id is a
//! retry or other content is decided by the two events' content
//! fingerprints, worked out only then: the held event's from where it is
//! held (this commit's work or the log, `Writer::held_fingerprint`), the
//! post's from its prepared fields. Every index write is part of a commit's
//! atomic batch, with the state record `j` (runs, merges in progress,
//! `indexed_upto`): after a crash the index is exactly as of the last
//! durable commit and a merge resumes at its next slice.

mod filter;
mod ids;
mod meta;

use gridsync_model::{Chunk, EventRecord, Hash32};

use crate::kv::{Kv, KvWrite};
use crate::layout;
use crate::read::{chunk_holding, origin_chunks};
use crate::recover::corrupt;
use crate::StoreError;
use filter::Filter;
pub(crate) use ids::ClientIds;
use meta::{Merge, Meta, Run};

/// seq and hash of an event, by its client id. Its content fingerprint is
/// worked out only when a post reuses the id ([`record_fingerprint`]).
pub(crate) type ClientEntry = (u64, Hash32);

/// Pairs per block: 448 × 16 bytes = 7 KiB, the log's fragment bound
/// (larger sled values risk its unsynced blob files).
pub(crate) const BLOCK_PAIRS: usize = layout::FRAGMENT_BYTES_MAX / 16;

/// How the client-id index is shaped (the defaults suit every node; tests
/// make them small to exercise flushes and merges).
#[derive(Clone, Copy, Debug)]
pub struct ClientIndexConfig {
    /// Recent entries kept in memory before they are written as a run.
    pub flush_entries: usize,
    /// Runs of one tier merged into one run of the next.
    pub fanout: usize,
    /// Pairs per merge slice (expected; the hash space is cut evenly).
    pub slice_pairs: u64,
}

impl Default for ClientIndexConfig {
    fn default() -> Self {
        Self {
            flush_entries: 16_384,
            fanout: 8,
            slice_pairs: 4096,
        }
    }
}

/// The index key of a client id (events being appended carry it,
/// [`PreparedEvent::client_key`](gridsync_model::ingest::PreparedEvent)).
pub(crate) use gridsync_model::ingest::client_key;

fn decode_block(v: &[u8]) -> Result<impl Iterator<Item = (u64, u64)> + '_, StoreError> {
    if v.is_empty() || !v.len().is_multiple_of(16) || v.len() / 16 > BLOCK_PAIRS {
        return Err(corrupt("malformed client-id index block"));
    }
    Ok(v.chunks_exact(16).map(|p| {
        (
            u64::from_be_bytes(p[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(p[8..].try_into().expect("8 bytes")),
        )
    }))
}

/// Writes sorted `pairs` as blocks of `run`.
fn write_blocks(run: u64, pairs: &[(u64, u64)], writes: &mut Vec<KvWrite>) {
    for block in pairs.chunks(BLOCK_PAIRS) {
        let mut v = Vec::with_capacity(block.len() * 16);
        for (h, seq) in block {
            v.extend_from_slice(&h.to_be_bytes());
            v.extend_from_slice(&seq.to_be_bytes());
        }
        let (h, seq) = block[0];
        writes.push((layout::client_block_key(run, h, seq), Some(v)));
    }
}

/// The pairs of `run` with `lo <= h < hi` (`hi` up to 2^64).
fn pairs_in_range(kv: &dyn Kv, run: u64, lo: u64, hi: u128) -> Result<Vec<(u64, u64)>, StoreError> {
    let prefix = layout::client_run_prefix(run);
    let start = layout::client_block_key(run, lo, 0);
    let within = |h: u64| h >= lo && u128::from(h) < hi;
    let mut out = Vec::new();
    // The block before `lo` may end inside the range.
    if let Some((_, v)) = kv.last_before(&prefix, &start)? {
        out.extend(decode_block(&v)?.filter(|(h, _)| within(*h)));
    }
    let mut from = start;
    // A lookup usually needs no block past `lo`: read one, then more.
    let mut want = 1;
    loop {
        let page = kv.scan(&from, &prefix, want)?;
        for (k, v) in &page {
            let (first, _) = layout::parse_client_block_key(k)
                .ok_or_else(|| corrupt("malformed client-id index key"))?;
            if u128::from(first) >= hi {
                return Ok(out);
            }
            out.extend(decode_block(v)?.filter(|(h, _)| within(*h)));
        }
        match page.last() {
            Some((k, _)) if page.len() == want => {
                from = k.clone();
                from.push(0);
                want = (want * 2).min(16);
            }
            _ => return Ok(out),
        }
    }
}

/// The `client_id` index of this node's own origin; owned by the log
/// writer (every lookup and write happens on its thread).
pub(crate) struct ClientIndex {
    origin: String,
    config: ClientIndexConfig,
    meta: Meta,
    /// Keyed by each id's `h` (the filter and the flush need it too).
    recent: ClientIds,
    filter: Filter,
}

/// What [`ClientIndex::open`] found, for the log line and metrics.
#[derive(Debug)]
pub(crate) struct IndexStats {
    pub runs: usize,
    pub indexed: u64,
    pub recent: usize,
    pub filter_bytes: usize,
    pub migrated: u64,
}

impl ClientIndex {
    /// Loads the index of `origin` (whose head is at `own_head`): its state,
    /// the recent entries from the log tail, and the filter from every run.
    /// A store of the earlier format (one `C` key per event) is migrated
    /// into one run first, in one commit.
    ///
    /// # Errors
    /// A malformed state or block, a state that claims more than the log
    /// holds, or a storage error.
    pub(crate) fn open(
        kv: &dyn Kv,
        origin: &str,
        own_head: u64,
        config: ClientIndexConfig,
    ) -> Result<(Self, IndexStats), StoreError> {
        let mut meta = match kv.get(layout::CLIENT_META_KEY)? {
            Some(v) => Meta::decode(&v)?,
            None => Meta::default(),
        };
        let migrated = migrate_legacy(kv, origin, own_head, &mut meta, config)?;
        if meta.indexed_upto > own_head {
            return Err(corrupt(format!(
                "the client-id index covers seq {} but the log of {origin} ends at {own_head}",
                meta.indexed_upto
            )));
        }
        let mut recent = ClientIds::default();
        let mut after = meta.indexed_upto;
        while after < own_head {
            let chunks = origin_chunks(kv, origin, after, own_head, 64, usize::MAX)?;
            if chunks.is_empty() {
                return Err(corrupt(format!(
                    "the log of {origin} has no event after seq {after} (head {own_head})"
                )));
            }
            for sc in chunks {
                for rec in &sc.chunk.events {
                    let (client_id, entry) = entry_of(rec).map_err(corrupt)?;
                    if entry.0 > after {
                        let h = client_key(&client_id);
                        recent.insert(client_id, h, entry);
                    }
                }
                after = sc.chunk.last_seq();
            }
        }
        let indexed: u64 = meta.runs.iter().map(|r| r.pairs).sum();
        let total = indexed + recent.len() as u64;
        let mut filter = Filter::with_capacity((total + total / 4).max(65_536));
        for run in &meta.runs {
            let prefix = layout::client_run_prefix(run.id);
            let mut from = prefix.to_vec();
            loop {
                let page = kv.scan(&from, &prefix, 256)?;
                for (_, v) in &page {
                    for (h, _) in decode_block(v)? {
                        filter.insert(h);
                    }
                }
                match page.last() {
                    Some((k, _)) if page.len() == 256 => {
                        from = k.clone();
                        from.push(0);
                    }
                    _ => break,
                }
            }
        }
        for (h, _) in recent.entries() {
            filter.insert(h);
        }
        let stats = IndexStats {
            runs: meta.runs.len(),
            indexed,
            recent: recent.len(),
            filter_bytes: filter.bytes(),
            migrated,
        };
        Ok((
            Self {
                origin: origin.to_owned(),
                config,
                meta,
                recent,
                filter,
            },
            stats,
        ))
    }

    /// The stored event with this client id (whose [`client_key`] is
    /// `h`), if any. A candidate from a run is checked against the event
    /// the log holds, read with the rest of its chunk into `read_back`
    /// (kept by the caller: a retried post's events are mostly in one
    /// chunk, and the caller reads the same event's content next).
    ///
    /// # Errors
    /// Storage errors, or a run naming an event the log does not hold.
    pub(crate) fn lookup(
        &self,
        kv: &dyn Kv,
        client_id: &str,
        h: u64,
        read_back: &mut Option<Chunk>,
    ) -> Result<Option<ClientEntry>, StoreError> {
        debug_assert_eq!(h, client_key(client_id));
        if let Some(e) = self.recent.get(client_id, h) {
            return Ok(Some(e));
        }
        if !self.filter.may_contain(h) {
            return Ok(None);
        }
        for run in &self.meta.runs {
            let end = u128::from(h) + 1;
            for (_, seq) in pairs_in_range(kv, run.id, h, end)? {
                let rec = own_event(kv, &self.origin, seq, read_back)?;
                let (stored_id, entry) = entry_of(rec).map_err(corrupt)?;
                if stored_id == client_id {
                    return Ok(Some(entry));
                }
            }
        }
        Ok(None)
    }

    /// Brings the filter's blocks for these keys into the caches, all at
    /// once, before they are looked up one by one ([`Filter::warm`]).
    pub(crate) fn warm(&self, hs: impl Iterator<Item = u64> + Clone) {
        self.filter.warm(hs);
    }

    /// Adds the writes of a commit that appends `added` (own events) and
    /// leaves the origin's head at `head_seq`: a run when recent is full,
    /// a few slices of the merges in progress, a few blocks of merged-away
    /// runs deleted, and the state record when it changed. The commit
    /// failing stops the store, so the state here may run ahead of it.
    ///
    /// # Errors
    /// Storage errors reading runs being merged.
    pub(crate) fn stage(
        &mut self,
        kv: &dyn Kv,
        added: ClientIds,
        head_seq: u64,
        writes: &mut Vec<KvWrite>,
    ) -> Result<(), StoreError> {
        let n_added = added.len() as u64;
        for (client_id, h, entry) in added.into_entries() {
            self.filter.insert(h);
            self.recent.insert(client_id, h, entry);
        }
        let before = self.meta.clone();
        // Merges read their inputs from the store, so they start and step
        // before this commit adds a run (whose blocks are only in `writes`).
        self.start_merges();
        // Twice the merge work an event needs per tier, spread over the
        // commits: merges keep pace with any commit size.
        let budget = (n_added.saturating_mul(8) / self.config.slice_pairs.max(1)).clamp(1, 16);
        self.step_merges(kv, budget, writes)?;
        if self.recent.len() >= self.config.flush_entries.max(1) {
            self.flush(head_seq, writes);
        }
        self.delete_dead(kv, writes)?;
        if self.meta != before {
            writes.push((layout::CLIENT_META_KEY.to_vec(), Some(self.meta.encode())));
        }
        Ok(())
    }

    /// Whether a commit without own events still has index work to do.
    pub(crate) fn busy(&self) -> bool {
        !self.meta.merges.is_empty() || !self.meta.dead.is_empty()
    }

    pub(crate) fn runs(&self) -> usize {
        self.meta.runs.len()
    }

    fn flush(&mut self, head_seq: u64, writes: &mut Vec<KvWrite>) {
        let mut pairs: Vec<(u64, u64)> = self
            .recent
            .entries()
            .map(|(h, (seq, ..))| (h, *seq))
            .collect();
        pairs.sort_unstable();
        let id = self.meta.next_run;
        self.meta.next_run += 1;
        write_blocks(id, &pairs, writes);
        self.meta.runs.push(Run {
            id,
            tier: 0,
            pairs: pairs.len() as u64,
        });
        self.meta.indexed_upto = head_seq;
        self.recent.clear();
    }

    /// Starts a merge at every tier holding `fanout` runs not already
    /// being merged (one merge per tier at a time).
    fn start_merges(&mut self) {
        let fanout = self.config.fanout.max(2);
        let tiers: Vec<u8> = {
            let mut t: Vec<u8> = self.meta.runs.iter().map(|r| r.tier).collect();
            t.sort_unstable();
            t.dedup();
            t
        };
        for tier in tiers {
            let out_tier = tier.saturating_add(1);
            if self.meta.merges.iter().any(|m| m.tier == out_tier) {
                continue;
            }
            let mut inputs: Vec<Run> = self
                .meta
                .runs
                .iter()
                .filter(|r| r.tier == tier)
                .copied()
                .collect();
            if inputs.len() < fanout {
                continue;
            }
            inputs.sort_by_key(|r| r.id);
            inputs.truncate(fanout);
            let pairs: u64 = inputs.iter().map(|r| r.pairs).sum();
            let output = self.meta.next_run;
            self.meta.next_run += 1;
            self.meta.merges.push(Merge {
                inputs: inputs.iter().map(|r| r.id).collect(),
                output,
                tier: out_tier,
                slices: pairs.div_ceil(self.config.slice_pairs.max(1)).max(1),
                done: 0,
                written: 0,
            });
        }
        self.meta.merges.sort_by_key(|m| m.tier);
    }

    /// Merges up to `budget` slices: one for every merge in progress, the
    /// rest to the lowest tiers first (small merges finish soon, so few
    /// runs wait at tier 0).
    fn step_merges(
        &mut self,
        kv: &dyn Kv,
        budget: u64,
        writes: &mut Vec<KvWrite>,
    ) -> Result<(), StoreError> {
        let mut left = budget.max(self.meta.merges.len() as u64);
        for i in 0..self.meta.merges.len() {
            merge_slice(kv, &mut self.meta.merges[i], writes)?;
            left -= 1;
        }
        for i in 0..self.meta.merges.len() {
            while left > 0 && self.meta.merges[i].done < self.meta.merges[i].slices {
                merge_slice(kv, &mut self.meta.merges[i], writes)?;
                left -= 1;
            }
        }
        let (finished, going): (Vec<Merge>, Vec<Merge>) = std::mem::take(&mut self.meta.merges)
            .into_iter()
            .partition(|m| m.done >= m.slices);
        self.meta.merges = going;
        for m in finished {
            self.meta.runs.retain(|r| !m.inputs.contains(&r.id));
            self.meta.runs.push(Run {
                id: m.output,
                tier: m.tier,
                pairs: m.written,
            });
            self.meta.dead.extend(m.inputs);
        }
        Ok(())
    }

    /// Deletes up to 64 blocks of merged-away runs.
    fn delete_dead(&mut self, kv: &dyn Kv, writes: &mut Vec<KvWrite>) -> Result<(), StoreError> {
        let mut left = 64usize;
        while left > 0 {
            let Some(&run) = self.meta.dead.first() else {
                break;
            };
            let prefix = layout::client_run_prefix(run);
            let page = kv.scan(&prefix, &prefix, left)?;
            let n = page.len();
            writes.extend(page.into_iter().map(|(k, _)| (k, None)));
            if n < left {
                self.meta.dead.remove(0);
            }
            left -= n;
        }
        Ok(())
    }
}

/// Merges the next slice of the hash space of `m`'s inputs into its output.
fn merge_slice(kv: &dyn Kv, m: &mut Merge, writes: &mut Vec<KvWrite>) -> Result<(), StoreError> {
    if m.done >= m.slices {
        return Ok(());
    }
    let span = (1u128 << 64).div_ceil(u128::from(m.slices));
    let lo = u128::from(m.done) * span;
    let hi = (lo + span).min(1u128 << 64);
    let lo = u64::try_from(lo).expect("below 2^64");
    let mut pairs = Vec::new();
    for input in &m.inputs {
        pairs.extend(pairs_in_range(kv, *input, lo, hi)?);
    }
    pairs.sort_unstable();
    pairs.dedup();
    write_blocks(m.output, &pairs, writes);
    m.written += pairs.len() as u64;
    m.done += 1;
    Ok(())
}

/// Own event `seq` of `origin` as the log holds it, from `read_back` (the
/// chunk last read for one), which is read anew when it does not hold it.
///
/// # Errors
/// Storage errors, or no such event in the log (what names it is
/// corrupt).
pub(crate) fn own_event<'c>(
    kv: &dyn Kv,
    origin: &str,
    seq: u64,
    read_back: &'c mut Option<Chunk>,
) -> Result<&'c EventRecord, StoreError> {
    if read_back.as_ref().is_none_or(|c| c.event(seq).is_none()) {
        *read_back = chunk_holding(kv, origin, seq)?;
    }
    read_back
        .as_ref()
        .and_then(|c| c.event(seq))
        .ok_or_else(|| {
            corrupt(format!(
                "the client-id index names seq {seq} of {origin}, which the log does not hold"
            ))
        })
}

/// The index entry of a stored own event: its client id, seq and hash.
pub(crate) fn entry_of(rec: &EventRecord) -> Result<(String, ClientEntry), String> {
    // Read in place: the whole decode (and the canonical check's encoding
    // again) was more than half of loading 16,000 recent entries at a
    // start (BENCHMARKS.md, "The client-id index's recent entries read in
    // place"), for two fields.
    let (seq, client_id) = gridsync_model::event::read_client(&rec.envelope)
        .ok_or_else(|| "an own event whose envelope is not format 1".to_string())?;
    let hash = gridsync_model::event::event_hash(&rec.envelope);
    Ok((client_id.to_owned(), (seq, hash)))
}

/// The content fingerprint of a held own event, to compare with a post
/// that reuses its client id; `None` when the content cannot be compared
/// (its personal part came back from a parent that never held it: a retry
/// with its client id is taken as a duplicate).
pub(crate) fn record_fingerprint(rec: &EventRecord) -> Result<Option<Hash32>, String> {
    // Read in place: decoding the envelope and encoding its data again
    // was most of a retried event's cost.
    let c = gridsync_model::event::read_content(&rec.envelope)
        .ok_or_else(|| "a stored envelope that is not format 1".to_string())?;
    if c.has_personal && rec.personal.is_none() {
        return Ok(None);
    }
    Ok(Some(gridsync_model::ingest::content_fingerprint(
        &c,
        rec.personal.as_ref(),
    )))
}

/// Moves an index of the earlier format (`C` origin client_id → seq ‖ …,
/// one key per event) into one run, deleting the old keys, in one commit.
fn migrate_legacy(
    kv: &dyn Kv,
    origin: &str,
    own_head: u64,
    meta: &mut Meta,
    config: ClientIndexConfig,
) -> Result<u64, StoreError> {
    let prefix = layout::client_key(origin, "");
    let mut pairs = Vec::new();
    let mut deletes = Vec::new();
    let mut from = prefix.clone();
    loop {
        let page = kv.scan(&from, &prefix, 4096)?;
        for (k, v) in &page {
            let client_id = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|_| corrupt("malformed client_id index key"))?;
            let seq = v
                .get(..8)
                .map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
                .ok_or_else(|| corrupt("malformed client_id index entry"))?;
            pairs.push((client_key(client_id), seq));
            deletes.push((k.clone(), None));
        }
        match page.last() {
            Some((k, _)) if page.len() == 4096 => {
                from = k.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    if pairs.is_empty() {
        return Ok(0);
    }
    pairs.sort_unstable();
    let n = pairs.len() as u64;
    // The tier whose runs are about this large, so merges treat it alike.
    let mut tier = 0u8;
    let mut size = config.flush_entries.max(1) as u64;
    while size < n && tier < 32 {
        size = size.saturating_mul(config.fanout.max(2) as u64);
        tier += 1;
    }
    let id = meta.next_run;
    meta.next_run += 1;
    meta.runs.push(Run { id, tier, pairs: n });
    // The earlier format indexed every event in its own commit.
    meta.indexed_upto = meta.indexed_upto.max(own_head);
    let mut writes = deletes;
    write_blocks(id, &pairs, &mut writes);
    writes.push((layout::CLIENT_META_KEY.to_vec(), Some(meta.encode())));
    kv.commit(writes)?;
    tracing::info!(
        origin,
        events = n,
        "client-id index moved to the run format"
    );
    Ok(n)
}
