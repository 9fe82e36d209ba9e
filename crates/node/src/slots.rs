//! Counted slots per key — connections per IP address, requests in flight
//! per token: at most `max` at once for one key, each released when its
//! guard drops. A leaf.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

type Counts<K> = Arc<Mutex<HashMap<K, usize>>>;

/// How many slots each key holds now (keys at zero are forgotten, so the
/// map holds only keys in use).
#[derive(Debug)]
pub struct Slots<K: Hash + Eq>(Counts<K>);

impl<K: Hash + Eq> Default for Slots<K> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(HashMap::new())))
    }
}

/// One slot of one key; released on drop.
pub struct Slot<K: Hash + Eq> {
    counts: Counts<K>,
    key: Option<K>,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// A slot for `key`, unless it already holds `max`.
    pub fn try_take(&self, key: K, max: usize) -> Option<Slot<K>> {
        let mut m = self.0.lock().expect("lock");
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                m.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.0.clone(),
            key: Some(key),
        })
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut m = self.counts.lock().expect("lock");
        if let Some(n) = m.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_per_key_and_released_on_drop() {
        let s: Slots<u8> = Slots::default();
        let a = s.try_take(1, 2).unwrap();
        let _b = s.try_take(1, 2).unwrap();
        assert!(s.try_take(1, 2).is_none());
        assert!(s.try_take(2, 2).is_some(), "another key is not affected");
        drop(a);
        assert!(s.try_take(1, 2).is_some());
        assert!(s.try_take(3, 0).is_none());
        assert!(
            !s.0.lock().unwrap().contains_key(&3),
            "no empty entries kept"
        );
    }
}
