//! The narrow storage trait the log is written against, and its in-memory
//! implementation (for the simulator and the model test).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

pub use crate::bodies::BodyFile;
use crate::StoreError;

/// One key/value write; `None` deletes (the log itself never deletes, but
/// the trait does not forbid it).
pub type KvWrite = (Vec<u8>, Option<Vec<u8>>);

/// One stored key/value pair.
pub type KvEntry = (Vec<u8>, Vec<u8>);

/// A stored value shared instead of copied out ([`Kv::scan_shared`]).
pub type SharedValue = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// An ordered byte-key store with atomic, durable batches.
///
/// Implementations guarantee: when [`Kv::commit`] returns `Ok`, every write
/// of the batch is durable and visible, all or none; after a crash a batch
/// is either wholly present or wholly absent.
pub trait Kv: Send + Sync + 'static {
    /// # Errors
    /// I/O or corruption in the backing store.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` entries with keys `>= start` that begin with `prefix`,
    /// in key order.
    ///
    /// # Errors
    /// I/O or corruption in the backing store.
    fn scan(&self, start: &[u8], prefix: &[u8], limit: usize) -> Result<Vec<KvEntry>, StoreError>;

    /// [`Kv::scan`] with each value shared rather than copied: what a
    /// reader handing whole pages of values to other threads takes (the
    /// audit reads every byte of a multi-gigabyte log once). The default
    /// wraps [`Kv::scan`]'s copies.
    ///
    /// # Errors
    /// I/O or corruption in the backing store.
    fn scan_shared(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, SharedValue)>, StoreError> {
        Ok(self
            .scan(start, prefix, limit)?
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v) as SharedValue))
            .collect())
    }

    /// Every entry with a key `>= start` that begins with `prefix`, in key
    /// order, handed to `each` as read — nothing copied or collected —
    /// until it returns `false`: what a reader of millions of small entries
    /// takes (the audit's chunk index). The default pages through
    /// [`Kv::scan`].
    ///
    /// # Errors
    /// I/O or corruption in the backing store (entries before it were
    /// handed to `each`).
    fn visit(
        &self,
        start: &[u8],
        prefix: &[u8],
        each: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut start = start.to_vec();
        loop {
            let page = self.scan(&start, prefix, 4096)?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            start.clone_from(last);
            start.push(0);
            for (k, v) in &page {
                if !each(k, v) {
                    return Ok(());
                }
            }
        }
    }

    /// The entry with the greatest key beginning with `prefix`.
    ///
    /// # Errors
    /// I/O or corruption in the backing store.
    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<KvEntry>, StoreError>;

    /// The entry with the greatest key below `key` that begins with
    /// `prefix`.
    ///
    /// # Errors
    /// I/O or corruption in the backing store.
    fn last_before(&self, prefix: &[u8], key: &[u8]) -> Result<Option<KvEntry>, StoreError>;

    /// Applies the batch atomically and makes it durable before returning
    /// — and, first, whatever was appended to [`Kv::bodies`] since the
    /// last commit, so that no pointer the batch writes is durable before
    /// its body.
    ///
    /// # Errors
    /// The batch may or may not be durable; the caller must treat this as
    /// fatal and stop acknowledging.
    fn commit(&self, batch: Vec<KvWrite>) -> Result<CommitTimings, StoreError>;

    /// The file beside the store that holds the log's large entries
    /// (`bodies.rs`), when this store keeps one. The default keeps none:
    /// every entry stays in keys, as fragments (the in-memory store).
    fn bodies(&self) -> Option<&BodyFile> {
        None
    }
}

/// How long the parts of a commit took, for metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct CommitTimings {
    pub apply_s: f64,
    pub flush_s: f64,
    pub fsync_s: f64,
}

/// A `BTreeMap` behind a mutex. Commits are atomic and "durable" for the
/// life of the value; clones share the map, so a simulated restart reopens
/// a store over the same `MemKv`.
#[derive(Clone, Default)]
pub struct MemKv {
    map: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl MemKv {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every entry (for tests that tamper with a store).
    pub fn dump(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.map.lock().expect("memkv lock").clone()
    }
}

impl Kv for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map.lock().expect("memkv lock").get(key).cloned())
    }

    fn scan(&self, start: &[u8], prefix: &[u8], limit: usize) -> Result<Vec<KvEntry>, StoreError> {
        let map = self.map.lock().expect("memkv lock");
        Ok(map
            .range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<KvEntry>, StoreError> {
        let map = self.map.lock().expect("memkv lock");
        Ok(map
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .last()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn last_before(&self, prefix: &[u8], key: &[u8]) -> Result<Option<KvEntry>, StoreError> {
        let map = self.map.lock().expect("memkv lock");
        Ok(map
            .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(key)))
            .next_back()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn commit(&self, batch: Vec<KvWrite>) -> Result<CommitTimings, StoreError> {
        let mut map = self.map.lock().expect("memkv lock");
        for (k, v) in batch {
            match v {
                Some(v) => {
                    map.insert(k, v);
                }
                None => {
                    map.remove(&k);
                }
            }
        }
        Ok(CommitTimings::default())
    }
}
