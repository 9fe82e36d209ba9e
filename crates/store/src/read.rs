//! Reading the log: what a reader may see (only durable commits), log
//! entries in order, an origin's chunks from a seq, one event; and the
//! same reads on the key/value store for the writer and the open checks.

use super::*;
use crate::entries::{self, assemble_bytes, received_at_of, EntryReader, ENTRY_HEADER_BYTES};
use crate::kv::Kv;
use crate::recover::corrupt;
use gridsync_model::chunk::EncodedChunk;
use gridsync_model::event::event_hash;
use gridsync_model::{Chunk, Hash32};

impl Store {
    /// Every origin's highest seq that readers may see: the durable heads
    /// (with the planted bug `unsafe_read_uncommitted`, whatever the live
    /// key/value store shows, applied or not — what the sender read before
    /// the fix).
    ///
    /// # Errors
    /// Storage errors (planted-bug mode only).
    pub fn readable_heads(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let durable = self.head_positions();
        if !self.read_uncommitted {
            return Ok(durable.into_iter().map(|(o, seq, _)| (o, seq)).collect());
        }
        let mut origins: Vec<String> = durable.into_iter().map(|(o, _, _)| o).collect();
        if let Some(own) = &self.origin {
            if !origins.contains(own) {
                origins.push(own.clone());
            }
        }
        let mut out = Vec::new();
        for o in origins {
            let last = self.shared.kv.last_with_prefix(&layout::index_prefix(&o))?;
            if let Some((k, _)) = last {
                if let Some((_, seq, _)) = layout::parse_origin_seq_key(&k) {
                    out.push((o, seq));
                }
            }
        }
        Ok(out)
    }

    /// The next log offset that is not durable yet: readers stop before it.
    fn durable_end(&self) -> u64 {
        if self.read_uncommitted {
            return u64::MAX;
        }
        *self.shared.committed.borrow()
    }

    /// The highest seq of `origin` that is durable here (0 if none).
    fn durable_seq(&self, origin: &str) -> u64 {
        if self.read_uncommitted {
            return u64::MAX;
        }
        self.head(origin).map_or(0, |h| h.seq)
    }

    /// Reads up to `max_entries` log entries starting at `offset`, in log
    /// order, never past the last durable commit: sled shows an applied
    /// batch to readers before its flush and fsync return, and nothing may
    /// be forwarded, counted or served that a crash could still take back.
    /// Does not verify signatures (the log was verified on open and every
    /// entry was verified or created by this node).
    ///
    /// # Errors
    /// Storage errors, or an entry that does not decode.
    pub fn read_log(
        &self,
        offset: u64,
        max_entries: usize,
    ) -> Result<Vec<StoredChunk>, StoreError> {
        self.read_durable_entries(offset, max_entries, assemble_bytes)
    }

    /// [`Store::read_log`] with each chunk left encoded, as stored (a
    /// fold reads the events in place: decoding every event into its own
    /// allocations and freeing them was ~40 % of a node's projection
    /// work). Never past the last durable commit.
    ///
    /// # Errors
    /// Storage errors, or an entry without its header.
    pub fn read_log_encoded(
        &self,
        offset: u64,
        max_entries: usize,
    ) -> Result<Vec<EncodedEntry>, StoreError> {
        self.read_durable_entries(offset, max_entries, entries::encoded_entry)
    }

    /// Up to `max_entries` entries from `offset`, each made by `make`,
    /// never past the last durable commit.
    fn read_durable_entries<T>(
        &self,
        offset: u64,
        max_entries: usize,
        make: impl Fn(u64, &[u8]) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let end = self.durable_end();
        if offset >= end {
            return Ok(Vec::new());
        }
        let max = usize::try_from(end - offset).map_or(max_entries, |n| n.min(max_entries));
        entries::read_entries_as(self.shared.kv.as_ref(), offset, max, make)
    }

    /// Reads the durable chunks of `origin` that hold seqs `> after_seq`,
    /// in seq order, at most `max_chunks` (never past the origin's durable
    /// head: see [`Store::read_log`]).
    ///
    /// # Errors
    /// Storage errors.
    pub fn read_origin(
        &self,
        origin: &str,
        after_seq: u64,
        max_chunks: usize,
    ) -> Result<Vec<StoredChunk>, StoreError> {
        self.read_durable_chunks(origin, after_seq, max_chunks, usize::MAX)
    }

    /// Like [`Store::read_origin`], but stops once the chunks read hold
    /// `bytes_max` bytes of events (at least one chunk if any): what a
    /// sender needs for one batch, however large the stored chunks are.
    ///
    /// # Errors
    /// Storage errors.
    pub fn read_origin_bytes(
        &self,
        origin: &str,
        after_seq: u64,
        bytes_max: usize,
    ) -> Result<Vec<StoredChunk>, StoreError> {
        self.read_durable_chunks(origin, after_seq, bytes_max / 1024 + 1, bytes_max)
    }

    /// [`Store::read_origin_bytes`] without decoding: each chunk's stored
    /// encoding and its seqs (from the index), for a sender that forwards
    /// chunks unchanged.
    ///
    /// # Errors
    /// Storage errors.
    pub fn read_origin_encoded(
        &self,
        origin: &str,
        after_seq: u64,
        bytes_max: usize,
    ) -> Result<Vec<EncodedChunk>, StoreError> {
        let durable = self.durable_seq(origin);
        if after_seq >= durable {
            return Ok(Vec::new());
        }
        let kv = self.shared.kv.as_ref();
        let max_chunks = bytes_max / 1024 + 1;
        let mut entries = EntryReader::default();
        let read = |offset, first_seq, last_seq| {
            let mut bytes = indexed_entry(&mut entries, kv, offset)?;
            bytes.drain(..ENTRY_HEADER_BYTES);
            let n = bytes.len();
            let chunk = EncodedChunk {
                first_seq,
                last_seq,
                bytes,
            };
            Ok((chunk, n))
        };
        origin_entries(kv, origin, after_seq, durable, max_chunks, bytes_max, read)
    }

    /// When this node received event `seq` of `origin` (the receipt time
    /// of the log entry holding it), if that entry is durable: from the
    /// index and the entry's first fragment (or its pack), nothing decoded
    /// — what a lag report asks for an origin whose acknowledgement moved.
    ///
    /// # Errors
    /// The index or the entry is damaged.
    pub fn received_at(&self, origin: &str, seq: u64) -> Result<Option<i64>, StoreError> {
        let durable = self.durable_seq(origin);
        if seq == 0 || seq > durable {
            return Ok(None);
        }
        let kv = self.shared.kv.as_ref();
        let Some(offset) = entry_holding(kv, origin, seq, durable)? else {
            return Ok(None);
        };
        let first = entries::entry_start(kv, offset)?.ok_or_else(|| missing_entry(offset))?;
        Ok(Some(received_at_of(offset, &first)?))
    }

    fn read_durable_chunks(
        &self,
        origin: &str,
        after_seq: u64,
        max_chunks: usize,
        bytes_max: usize,
    ) -> Result<Vec<StoredChunk>, StoreError> {
        let durable = self.durable_seq(origin);
        if after_seq >= durable {
            return Ok(Vec::new());
        }
        let kv = self.shared.kv.as_ref();
        origin_chunks(kv, origin, after_seq, durable, max_chunks, bytes_max)
    }

    /// Kind and schema version of the event `r`, if the store holds it:
    /// from memory for this origin's recent events, else from the log (as
    /// [`Store::find_event`]).
    ///
    /// # Errors
    /// As [`Store::find_event`].
    pub fn kind_of(&self, r: &EventRef) -> Result<Option<(String, u32)>, StoreError> {
        if let Some((kind, schema)) = self
            .shared
            .recent
            .read()
            .expect("lock")
            .get(&r.origin, r.seq)
        {
            return Ok(Some((kind.to_owned(), schema)));
        }
        Ok(self
            .find_event(r)?
            .map(|(e, _)| (e.envelope.kind, e.envelope.schema)))
    }

    /// Finds one event and its personal part.
    ///
    /// # Errors
    /// Storage errors or an entry that does not decode.
    pub fn find_event(
        &self,
        r: &EventRef,
    ) -> Result<Option<(VerifiedEvent, EventRecord)>, StoreError> {
        let Some(head) = self.head(&r.origin) else {
            return Ok(None);
        };
        if r.seq == 0 || r.seq > head.seq {
            return Ok(None);
        }
        let bound = self.durable_seq(&r.origin);
        let Some(rec) = record_at(self.shared.kv.as_ref(), &r.origin, r.seq, bound)? else {
            return Ok(None);
        };
        let envelope = gridsync_model::Envelope::decode(&rec.envelope)
            .map_err(|e| StoreError::Corrupt(format!("event {}/{}: {e}", r.origin, r.seq)))?;
        let hash = gridsync_model::event::event_hash(&rec.envelope);
        Ok(Some((VerifiedEvent { envelope, hash }, rec)))
    }
}

/// The chunks of `origin` holding seqs `> after_seq`, in seq order, at
/// most `max_chunks`, from the index: `(last_seq, log offset, first_seq)`
/// each (an index entry names one chunk, or the chunks one pack holds).
fn index_after(
    kv: &dyn Kv,
    origin: &str,
    after_seq: u64,
    max_chunks: usize,
) -> Result<Vec<(u64, u64, u64)>, StoreError> {
    let prefix = layout::index_prefix(origin);
    let mut start = layout::index_key(origin, after_seq.saturating_add(1));
    let mut out = Vec::new();
    while out.len() < max_chunks {
        let page = kv.scan(&start, &prefix, max_chunks - out.len())?;
        let Some((last, _)) = page.last() else { break };
        start.clone_from(last);
        start.push(0);
        let full = page.len() == max_chunks - out.len();
        for (k, v) in &page {
            let chunks =
                layout::index_chunks(k, v).ok_or_else(|| corrupt("malformed index entry"))?;
            out.extend(chunks.into_iter().filter(|c| c.0 > after_seq));
        }
        if !full {
            break;
        }
    }
    out.truncate(max_chunks);
    Ok(out)
}

/// The chunks of `origin` holding seqs `> after_seq`, in seq order, at
/// most `max_chunks`, none ending past `max_last_seq`, and no more once
/// those read hold `bytes_max` bytes of events.
pub(crate) fn origin_chunks(
    kv: &dyn Kv,
    origin: &str,
    after_seq: u64,
    max_last_seq: u64,
    max_chunks: usize,
    bytes_max: usize,
) -> Result<Vec<StoredChunk>, StoreError> {
    let mut entries = EntryReader::default();
    let read = |offset, _, _| {
        let bytes = indexed_entry(&mut entries, kv, offset)?;
        let c = assemble_bytes(offset, &bytes)?;
        let n = c.chunk.events.iter().map(|e| e.envelope.len()).sum();
        Ok((c, n))
    };
    origin_entries(
        kv,
        origin,
        after_seq,
        max_last_seq,
        max_chunks,
        bytes_max,
        read,
    )
}

/// The chunks of `origin` holding seqs `> after_seq` and ending at or
/// before `max_last_seq`, in seq order, at most `max_chunks`, stopping
/// once they hold `bytes_max` bytes (at least one chunk if any): each read
/// by `read` from its index entry (log offset, first seq, last seq), which
/// also says how many bytes it counts.
fn origin_entries<T>(
    kv: &dyn Kv,
    origin: &str,
    after_seq: u64,
    max_last_seq: u64,
    max_chunks: usize,
    bytes_max: usize,
    mut read: impl FnMut(u64, u64, u64) -> Result<(T, usize), StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for (last_seq, offset, first_seq) in index_after(kv, origin, after_seq, max_chunks)? {
        if bytes >= bytes_max {
            break;
        }
        if last_seq > max_last_seq {
            break;
        }
        let (chunk, n) = read(offset, first_seq, last_seq)?;
        bytes += n;
        out.push(chunk);
    }
    Ok(out)
}

fn missing_entry(offset: u64) -> StoreError {
    corrupt(format!("index points at missing log entry {offset}"))
}

/// Log entry `offset`, which the index names, put together from its
/// fragments or taken from its pack (receipt time first, then the chunk's
/// bytes), read through `entries` (which keeps the last pack it read).
fn indexed_entry(
    entries: &mut EntryReader,
    kv: &dyn Kv,
    offset: u64,
) -> Result<Vec<u8>, StoreError> {
    entries
        .entry(kv, offset)?
        .ok_or_else(|| missing_entry(offset))
}

/// Event `seq` of `origin` (envelope and personal part) in the chunk the
/// index names for it, if that chunk ends at or before `max_last_seq`;
/// only that event is decoded (a chunk may hold hundreds).
fn record_at(
    kv: &dyn Kv,
    origin: &str,
    seq: u64,
    max_last_seq: u64,
) -> Result<Option<gridsync_model::EventRecord>, StoreError> {
    match entry_holding(kv, origin, seq, max_last_seq)? {
        Some(offset) => record_in_entry(kv, offset, seq),
        None => Ok(None),
    }
}

/// The log offset of the chunk the index names for event `seq` of
/// `origin` (the first ending at or after it), if that chunk ends at or
/// before `max_last_seq`.
fn entry_holding(
    kv: &dyn Kv,
    origin: &str,
    seq: u64,
    max_last_seq: u64,
) -> Result<Option<u64>, StoreError> {
    if seq == 0 {
        return Ok(None);
    }
    let Some(&(last_seq, offset, _)) = index_after(kv, origin, seq - 1, 1)?.first() else {
        return Ok(None);
    };
    Ok((last_seq <= max_last_seq).then_some(offset))
}

/// Hash of event `seq` of `origin` as the log holds it (durably).
pub(crate) fn hash_in_log(
    kv: &dyn Kv,
    origin: &str,
    seq: u64,
) -> Result<Option<Hash32>, StoreError> {
    Ok(record_at(kv, origin, seq, u64::MAX)?.map(|r| event_hash(&r.envelope)))
}

/// The chunk of `origin` the log holds event `seq` in (decoded whole:
/// what reads several of its events needs, reading and checking the
/// entry once).
pub(crate) fn chunk_holding(
    kv: &dyn Kv,
    origin: &str,
    seq: u64,
) -> Result<Option<Chunk>, StoreError> {
    match entry_holding(kv, origin, seq, u64::MAX)? {
        Some(offset) => {
            let bytes = indexed_entry(&mut EntryReader::default(), kv, offset)?;
            Ok(Some(assemble_bytes(offset, &bytes)?.chunk))
        }
        None => Ok(None),
    }
}

pub(crate) fn event_in_chunk(c: &Chunk, seq: u64) -> Option<Hash32> {
    c.event(seq).map(|rec| event_hash(&rec.envelope))
}

/// Event `seq` from log entry `offset`, decoding only that event of the
/// chunk (`None` if the entry does not hold it).
fn record_in_entry(
    kv: &dyn Kv,
    offset: u64,
    seq: u64,
) -> Result<Option<gridsync_model::EventRecord>, StoreError> {
    let bytes = indexed_entry(&mut EntryReader::default(), kv, offset)?;
    Chunk::record_at(&bytes[ENTRY_HEADER_BYTES..], seq)
        .map_err(|e| corrupt(format!("log entry {offset}: {e}")))
}
