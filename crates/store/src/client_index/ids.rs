//! Client ids in memory (a commit's, and the index's recent ones), keyed by
//! the 64-bit index key each id already has ([`super::client_key`],
//! worked out where the event was prepared) rather than by the string:
//! the writer's thread hashed every id's text again for each of the two
//! maps an event passes through.
//!
//! The key is a BLAKE3 prefix, so two ids share one only by a 64-bit
//! collision: never expected, and still handled — the later id goes to a
//! map by its text, searched only when it is not empty. The map by key
//! hashes the key with foldhash, seeded per map: an id is chosen by
//! whoever posts, and crowding one bucket would need many ids sharing
//! all 64 bits of a BLAKE3 prefix, not a few bits of an unseeded hash.

use std::collections::HashMap;

use super::ClientEntry;

type Seeded = foldhash::fast::RandomState;

#[derive(Clone, Default)]
pub(crate) struct ClientIds {
    by_key: HashMap<u64, (String, ClientEntry), Seeded>,
    /// Ids whose key an earlier id holds in `by_key`.
    clashes: HashMap<String, (ClientEntry, u64), Seeded>,
}

impl ClientIds {
    /// The entry of `id`, whose key is `h`.
    pub(crate) fn get(&self, id: &str, h: u64) -> Option<ClientEntry> {
        match self.by_key.get(&h) {
            Some((held, entry)) if held == id => Some(*entry),
            _ if !self.clashes.is_empty() => self.clashes.get(id).map(|(e, _)| *e),
            _ => None,
        }
    }

    /// Sets the entry of `id`, whose key is `h`. An id is held once,
    /// in one of the two maps.
    pub(crate) fn insert(&mut self, id: String, h: u64, entry: ClientEntry) {
        match self.by_key.get_mut(&h) {
            Some((held, e)) if *held == id => *e = entry,
            Some(_) => {
                self.clashes.insert(id, (entry, h));
            }
            None => {
                // The id it clashed with may have gone (`retain`).
                if !self.clashes.is_empty() {
                    self.clashes.remove(&id);
                }
                self.by_key.insert(h, (id, entry));
            }
        }
    }

    /// Keeps the ids whose entry `keep` says to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&ClientEntry) -> bool) {
        self.by_key.retain(|_, (_, e)| keep(e));
        self.clashes.retain(|_, (e, _)| keep(e));
    }

    pub(crate) fn len(&self) -> usize {
        self.by_key.len() + self.clashes.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_key.is_empty() && self.clashes.is_empty()
    }

    pub(crate) fn reserve(&mut self, n: usize) {
        self.by_key.reserve(n);
    }

    pub(crate) fn clear(&mut self) {
        self.by_key.clear();
        self.clashes.clear();
    }

    /// Every id's key and entry, in no order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (u64, &ClientEntry)> {
        self.by_key
            .iter()
            .map(|(h, (_, e))| (*h, e))
            .chain(self.clashes.values().map(|(e, h)| (*h, e)))
    }

    /// Every id with its key and entry, in no order.
    pub(crate) fn into_entries(self) -> impl Iterator<Item = (String, u64, ClientEntry)> {
        self.by_key
            .into_iter()
            .map(|(h, (id, e))| (id, h, e))
            .chain(self.clashes.into_iter().map(|(id, (e, h))| (id, h, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> ClientEntry {
        (seq, [seq as u8; 32])
    }

    /// Ids are told apart by their text, not their key: two ids given one
    /// key (a 64-bit collision, made here by passing it) each keep their
    /// own entry, an id set again takes its new entry, and every id is
    /// listed once.
    #[test]
    fn ids_sharing_a_key_keep_their_own_entries() {
        let mut ids = ClientIds::default();
        ids.insert("a".into(), 7, entry(1));
        ids.insert("b".into(), 7, entry(2));
        ids.insert("c".into(), 9, entry(3));
        assert_eq!(ids.get("a", 7), Some(entry(1)));
        assert_eq!(ids.get("b", 7), Some(entry(2)));
        assert_eq!(ids.get("c", 9), Some(entry(3)));
        assert_eq!(ids.get("d", 7), None, "a key held, the id not");
        assert_eq!(ids.get("d", 8), None);
        ids.insert("b".into(), 7, entry(4));
        ids.insert("a".into(), 7, entry(5));
        assert_eq!(ids.get("a", 7), Some(entry(5)));
        assert_eq!(ids.get("b", 7), Some(entry(4)));
        assert_eq!(ids.len(), 3);
        let mut keys: Vec<(u64, u64)> = ids.entries().map(|(h, e)| (h, e.0)).collect();
        keys.sort_unstable();
        assert_eq!(keys, vec![(7, 4), (7, 5), (9, 3)]);
        let mut all: Vec<(String, u64, u64)> = ids
            .clone()
            .into_entries()
            .map(|(id, h, e)| (id, h, e.0))
            .collect();
        all.sort();
        assert_eq!(
            all,
            vec![("a".into(), 7, 5), ("b".into(), 7, 4), ("c".into(), 9, 3)]
        );
        // The id holding the key goes; the one that clashed with it is
        // still found, and set again stays one id.
        ids.retain(|e| e.0 != 5);
        assert_eq!(ids.get("a", 7), None);
        assert_eq!(ids.get("b", 7), Some(entry(4)));
        ids.insert("b".into(), 7, entry(6));
        assert_eq!(ids.get("b", 7), Some(entry(6)));
        assert_eq!(ids.len(), 2);
        ids.clear();
        assert!(ids.is_empty());
        assert_eq!(ids.get("b", 7), None);
    }
}
