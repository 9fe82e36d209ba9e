//! The visit timelines read back from a saved projection, built whole.
//!
//! A timeline (`(occurred_ms, seq)` → quarantine status, one entry per
//! visit) is the projection's largest part at rest. serde fills a
//! `BTreeMap` one insert at a time, which leaves its nodes about half
//! full; `BTreeMap::from_iter` builds it from the sorted entries with full
//! nodes — the same map in about half the memory. The saved format is
//! unchanged (a map of maps).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// One household's timeline.
pub(crate) type Timeline = BTreeMap<(i64, u64), u8>;

/// A timeline read as a whole before its map is built.
struct Whole(Timeline);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Whole;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a visit timeline: (occurred_ms, seq) -> status")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Whole, A::Error> {
                // The hint comes from the file: bounded, not trusted.
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(entry) = map.next_entry::<(i64, u64), u8>()? {
                    entries.push(entry);
                }
                Ok(Whole(entries.into_iter().collect()))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// `#[serde(deserialize_with)]` of the per-household timelines.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<HashMap<String, Timeline>, D::Error> {
    let whole: HashMap<String, Whole> = HashMap::deserialize(d)?;
    Ok(whole.into_iter().map(|(h, t)| (h, t.0)).collect())
}
