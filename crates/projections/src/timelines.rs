//! A household's visit timeline: `(occurred_ms, seq)` → quarantine status,
//! one entry per visit, kept compact.
//!
//! Every visit has to be kept — a correction may void any of them, and the
//! one before it then decides the household's status again — so this is
//! the projection's part that grows with the log (a `BTreeMap` of them
//! took ~19 bytes a visit: 47 MB live on the 10 M-event bench street).
//! Here the newest entries (`TAIL_MAX`, 256, at most) stay in a sorted
//! `Vec`, where a visit reported in about the order things happen lands;
//! older ones are packed into blocks of `BLOCK`–`BLOCK_MAX` entries, each
//! entry as its steps from the one before it (the occurred time's step
//! with the status in its low two bits, then the seq's zigzag step, both
//! LEB128) — on that street ~3 bytes a visit (7.3 MB of blocks), ~5 with
//! the blocks' headers.
//! A visit landing in a block (a late report, a correction of an old one)
//! is spliced in: the block is read up to its place and only the steps
//! around it are written again; a block past `BLOCK_MAX` is cut in two.
//!
//! Invariant: every key in `blocks` is smaller than every key in `tail`,
//! and blocks hold ascending, non-overlapping key ranges. Two timelines
//! are equal when they hold the same entries, however they are laid out.
//! The saved form is a map, the same bytes a `BTreeMap` would write.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `(occurred_ms, seq)`: a visit's place in its household's timeline.
pub(crate) type Key = (i64, u64);

/// Entries per block when the tail spills or a timeline is built whole.
const BLOCK: usize = 32;
/// A block that grows past this is cut in two.
const BLOCK_MAX: usize = 2 * BLOCK;
/// The tail spills its oldest `BLOCK` entries into a block beyond this:
/// large enough that the visits a household gets in a burst land in the
/// `Vec` whatever their order (a `Vec` insert costs about a B-tree's),
/// small beside a long history.
const TAIL_MAX: usize = 8 * BLOCK;

/// One household's visits.
#[derive(Clone, Default)]
pub(crate) struct Timeline {
    blocks: Vec<Block>,
    tail: Vec<(Key, u8)>,
}

/// Consecutive entries, packed.
#[derive(Clone)]
struct Block {
    first: Key,
    last: Key,
    len: u32,
    /// Each entry's steps from the one before it (the first's from
    /// itself: zero).
    bytes: Box<[u8]>,
}

/// An entry found in a block: where its steps are, and what they say.
#[derive(Clone, Copy)]
struct Slot {
    start: usize,
    end: usize,
    key: Key,
    status: u8,
}

impl Timeline {
    /// Sets the status of the visit at `key` (replacing any it had).
    pub(crate) fn insert(&mut self, key: Key, status: u8) {
        debug_assert!(status < 4, "a status is two bits");
        match self.block_of(key) {
            None => {
                match self.tail.binary_search_by(|(k, _)| k.cmp(&key)) {
                    Ok(i) => self.tail[i].1 = status,
                    Err(i) => self.tail.insert(i, (key, status)),
                }
                if self.tail.len() > TAIL_MAX {
                    self.blocks.push(Block::encode(&self.tail[..BLOCK]));
                    self.tail.drain(..BLOCK);
                }
            }
            Some(b) => {
                self.blocks[b].insert(key, status);
                if self.blocks[b].len as usize > BLOCK_MAX {
                    let entries: Vec<_> = self.blocks[b].iter().collect();
                    let (low, high) = entries.split_at(entries.len() / 2);
                    self.blocks[b] = Block::encode(low);
                    self.blocks.insert(b + 1, Block::encode(high));
                }
            }
        }
    }

    /// Removes the visit at `key`, if there is one.
    pub(crate) fn remove(&mut self, key: Key) {
        match self.block_of(key) {
            None => {
                if let Ok(i) = self.tail.binary_search_by(|(k, _)| k.cmp(&key)) {
                    self.tail.remove(i);
                }
            }
            Some(b) => {
                if self.blocks[b].remove(key) && self.blocks[b].len == 0 {
                    self.blocks.remove(b);
                }
            }
        }
    }

    /// The status of the latest visit strictly before `key`.
    pub(crate) fn last_before(&self, key: Key) -> Option<u8> {
        let i = self.tail.partition_point(|(k, _)| *k < key);
        if i > 0 {
            return Some(self.tail[i - 1].1);
        }
        let b = self.blocks.partition_point(|b| b.first < key);
        let block = self.blocks.get(b.checked_sub(1)?)?;
        let mut found = None;
        for (k, status) in block.iter() {
            if k >= key {
                break;
            }
            found = Some(status);
        }
        found
    }

    /// Every entry, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Key, u8)> + '_ {
        self.blocks
            .iter()
            .flat_map(Block::iter)
            .chain(self.tail.iter().copied())
    }

    /// The timeline holding `entries` (sorted by key, keys distinct).
    fn from_sorted(entries: Vec<(Key, u8)>) -> Self {
        // Whole blocks, leaving the tail between BLOCK / 2 and TAIL_MAX.
        let n = entries.len();
        let packed = if n > TAIL_MAX {
            (n - BLOCK / 2) / BLOCK * BLOCK
        } else {
            0
        };
        Self {
            blocks: entries[..packed].chunks(BLOCK).map(Block::encode).collect(),
            tail: entries[packed..].to_vec(),
        }
    }

    /// The block whose range `key` falls in or before, unless `key` is
    /// past every block (then it belongs to the tail).
    fn block_of(&self, key: Key) -> Option<usize> {
        if self.blocks.last()?.last < key {
            return None;
        }
        Some(self.blocks.partition_point(|b| b.last < key))
    }
}

impl Block {
    fn encode(entries: &[(Key, u8)]) -> Self {
        let mut bytes = Vec::with_capacity(entries.len() * 6);
        let mut prev = entries[0].0;
        for &(key, status) in entries {
            put_step(&mut bytes, prev, key, status);
            prev = key;
        }
        Self {
            first: entries[0].0,
            last: prev,
            len: entries.len() as u32,
            bytes: bytes.into_boxed_slice(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (Key, u8)> + '_ {
        self.slots().map(|s| (s.key, s.status))
    }

    /// Every entry with where its steps are, in key order.
    fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        let mut at = 0;
        let mut prev = self.first;
        std::iter::from_fn(move || {
            let slot = read_step(&self.bytes, at, prev)?;
            at = slot.end;
            prev = slot.key;
            Some(slot)
        })
    }

    /// The entry before the first with a key ≥ `key`, and that entry.
    fn find(&self, key: Key) -> (Option<Key>, Option<Slot>) {
        let mut before = None;
        for slot in self.slots() {
            if slot.key >= key {
                return (before, Some(slot));
            }
            before = Some(slot.key);
        }
        (before, None)
    }

    /// Sets `key`'s status in this block (`key` ≤ its last).
    fn insert(&mut self, key: Key, status: u8) {
        let (before, at) = self.find(key);
        let mut with = Vec::with_capacity(24);
        let base = before.unwrap_or(key);
        put_step(&mut with, base, key, status);
        let Some(at) = at else {
            // Past the last entry (a block is only given keys ≤ its
            // last, but the block stays right either way).
            self.splice(self.bytes.len()..self.bytes.len(), &with);
            self.last = key;
            self.len += 1;
            return;
        };
        if at.key == key {
            self.splice(at.start..at.end, &with);
            return;
        }
        // Before `at`: `at` now steps from `key`.
        put_step(&mut with, key, at.key, at.status);
        self.splice(at.start..at.end, &with);
        if before.is_none() {
            self.first = key;
        }
        self.len += 1;
    }

    /// Removes `key` from this block; whether it was there.
    fn remove(&mut self, key: Key) -> bool {
        let (before, at) = self.find(key);
        let Some(at) = at.filter(|s| s.key == key) else {
            return false;
        };
        let after = read_step(&self.bytes, at.end, at.key);
        self.len -= 1;
        let mut with = Vec::with_capacity(24);
        match (before, after) {
            (_, None) => {
                self.splice(at.start..at.end, &with);
                if let Some(b) = before {
                    self.last = b;
                }
            }
            (before, Some(next)) => {
                // The next entry now steps from the one before (or from
                // itself, as the new first).
                put_step(&mut with, before.unwrap_or(next.key), next.key, next.status);
                self.splice(at.start..next.end, &with);
                if before.is_none() {
                    self.first = next.key;
                }
            }
        }
        true
    }

    /// `bytes[range]` replaced with `with`, in an allocation of the exact size.
    fn splice(&mut self, range: std::ops::Range<usize>, with: &[u8]) {
        let mut bytes = Vec::with_capacity(self.bytes.len() - range.len() + with.len());
        bytes.extend_from_slice(&self.bytes[..range.start]);
        bytes.extend_from_slice(with);
        bytes.extend_from_slice(&self.bytes[range.end..]);
        self.bytes = bytes.into_boxed_slice();
    }
}

/// Writes `key`'s steps from `prev` (≤ `key`).
fn put_step(out: &mut Vec<u8>, prev: Key, key: Key, status: u8) {
    // Sorted, so the time's step is ≥ 0 and fits a u64 even across the
    // whole i64 range.
    let step = key.0.wrapping_sub(prev.0) as u64;
    put_leb(out, (u128::from(step) << 2) | u128::from(status & 3));
    let d = key.1.wrapping_sub(prev.1) as i64;
    put_leb(out, u128::from(((d << 1) ^ (d >> 63)) as u64));
}

/// Reads the entry whose steps from `prev` start at `bytes[at]`.
fn read_step(bytes: &[u8], mut at: usize, prev: Key) -> Option<Slot> {
    let start = at;
    if at >= bytes.len() {
        return None;
    }
    let v = get_leb(bytes, &mut at);
    let z = get_leb(bytes, &mut at) as u64;
    let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
    Some(Slot {
        start,
        end: at,
        key: (
            prev.0.wrapping_add((v >> 2) as u64 as i64),
            prev.1.wrapping_add(d as u64),
        ),
        status: (v & 3) as u8,
    })
}

fn put_leb(out: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads what [`put_leb`] wrote (the bytes are this module's own).
fn get_leb(bytes: &[u8], at: &mut usize) -> u128 {
    let mut v = 0u128;
    let mut shift = 0;
    loop {
        let b = bytes[*at];
        *at += 1;
        v |= u128::from(b & 0x7f) << shift;
        if b < 0x80 {
            return v;
        }
        shift += 7;
    }
}

impl PartialEq for Timeline {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl fmt::Debug for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Timeline {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Timeline {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Timeline;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a visit timeline: (occurred_ms, seq) -> status")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Timeline, A::Error> {
                // The hint comes from the file: bounded, not trusted.
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(entry) = map.next_entry::<Key, u8>()? {
                    entries.push(entry);
                }
                // Saved in key order; a hand-made file may not be. The
                // last status of a key wins, as a map would keep it.
                entries.sort_by_key(|(k, _)| *k);
                entries.dedup_by(|later, earlier| {
                    let same = later.0 == earlier.0;
                    if same {
                        earlier.1 = later.1;
                    }
                    same
                });
                Ok(Timeline::from_sorted(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(Key, u8),
        Remove(Key),
        RemoveNth(usize),
        /// A visit a little after the newest (or a little before it: the
        /// jitter of devices reporting), as most visits arrive.
        Next(i64, u64, u8),
    }

    /// Keys mostly near "now" and rising, some late, some far apart —
    /// the arrival patterns of visits, and the i64/u64 extremes.
    fn key() -> impl Strategy<Value = Key> {
        prop_oneof![
            8 => (0i64..400_000, 0u64..5_000),
            1 => (any::<i64>(), any::<u64>()),
            1 => (prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0)],
                  prop_oneof![Just(0u64), Just(u64::MAX)]),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (key(), 0u8..4).prop_map(|(k, s)| Op::Insert(k, s)),
            1 => key().prop_map(Op::Remove),
            2 => any::<usize>().prop_map(Op::RemoveNth),
            12 => (-2_000i64..20_000, 0u64..800, 0u8..4).prop_map(|(a, s, st)| Op::Next(a, s, st)),
        ]
    }

    fn check(t: &Timeline, model: &BTreeMap<Key, u8>, probes: &[Key]) {
        assert!(t.iter().eq(model.iter().map(|(k, s)| (*k, *s))));
        for p in probes.iter().chain(model.keys()) {
            let want = model.range(..*p).next_back().map(|(_, s)| *s);
            assert_eq!(t.last_before(*p), want, "last before {p:?}");
        }
        // The layout's invariant: blocks ascending, all below the tail.
        let keys: Vec<Key> = t.iter().map(|(k, _)| k).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for b in &t.blocks {
            let ks: Vec<Key> = b.iter().map(|(k, _)| k).collect();
            assert_eq!((ks[0], ks[ks.len() - 1]), (b.first, b.last));
            assert_eq!(ks.len(), b.len as usize);
            assert!(ks.len() <= BLOCK_MAX);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any sequence of inserts and removals leaves the same entries
        /// and answers as a `BTreeMap`, and the saved form is a
        /// `BTreeMap`'s, read back equal.
        #[test]
        fn behaves_as_a_sorted_map(
            ops in prop::collection::vec(op(), 0..2500),
            probes in prop::collection::vec(key(), 0..20),
        ) {
            let mut t = Timeline::default();
            let mut model = BTreeMap::new();
            for (i, op) in ops.iter().enumerate() {
                match *op {
                    Op::Insert(k, s) => {
                        t.insert(k, s);
                        model.insert(k, s);
                    }
                    Op::Remove(k) => {
                        t.remove(k);
                        model.remove(&k);
                    }
                    Op::Next(step, seq_step, st) => {
                        let (at, seq) = model.keys().next_back().copied().unwrap_or((0, 0));
                        let k = (at.saturating_add(step), seq.wrapping_add(seq_step));
                        t.insert(k, st);
                        model.insert(k, st);
                    }
                    Op::RemoveNth(n) => {
                        if let Some(k) = model.keys().nth(n % model.len().max(1)).copied() {
                            t.remove(k);
                            model.remove(&k);
                        }
                    }
                }
                if i % 97 == 0 {
                    check(&t, &model, &probes);
                }
            }
            check(&t, &model, &probes);
            let saved = rmp_serde::to_vec(&t).unwrap();
            prop_assert_eq!(&saved, &rmp_serde::to_vec(&model).unwrap());
            let back: Timeline = rmp_serde::from_slice(&saved).unwrap();
            check(&back, &model, &probes);
            prop_assert!(back == t);
        }
    }

    #[test]
    fn a_long_timeline_is_packed() {
        let mut t = Timeline::default();
        let mut model = BTreeMap::new();
        // A visit every ~16 s of occurred time, seqs a few hundred apart,
        // the order jittered as devices report it.
        for i in 0..10_000u64 {
            let at = 1_700_000_000_000 + (i as i64) * 16_000 - ((i * 7919) % 120_000) as i64;
            let k = (at, i * 400);
            t.insert(k, (i % 4) as u8);
            model.insert(k, (i % 4) as u8);
        }
        check(&t, &model, &[]);
        let packed: usize = t.blocks.iter().map(|b| b.bytes.len()).sum();
        let in_blocks = t.iter().count() - t.tail.len();
        assert!(t.tail.len() <= TAIL_MAX);
        assert!(
            packed <= in_blocks * 7,
            "{packed} bytes for {in_blocks} packed visits"
        );
    }

    #[test]
    fn a_hand_made_saved_map_out_of_order_reads_as_a_map() {
        let mut saved = Vec::new();
        rmp::encode::write_map_len(&mut saved, 3).unwrap();
        for ((at, seq), s) in [((5i64, 1u64), 1u8), ((1, 1), 2), ((5, 1), 3)] {
            rmp::encode::write_array_len(&mut saved, 2).unwrap();
            rmp::encode::write_sint(&mut saved, at).unwrap();
            rmp::encode::write_uint(&mut saved, seq).unwrap();
            rmp::encode::write_uint(&mut saved, u64::from(s)).unwrap();
        }
        let t: Timeline = rmp_serde::from_slice(&saved).unwrap();
        let model: BTreeMap<Key, u8> = rmp_serde::from_slice(&saved).unwrap();
        check(&t, &model, &[(0, 0), (9, 9)]);
    }
}
