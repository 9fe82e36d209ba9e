//! Chunks: a run of consecutive events of one origin closed by a signed head.
//!
//! A chunk is the unit of signing, storage and transfer. Its container is a
//! msgpack array `[1, origin, [record…], head]` where a record is
//! `[envelope bytes (bin), nil | [salt (bin 16), personal bytes (bin)]]` and
//! the head is `[origin, seq, hash (bin 32), signed_at_ms, signature (bin
//! 64), after (bin 32)]` — `after` only in a v2 head; a v1 head (builds
//! before 2026-12-05) has the first five.
//!
//! The container itself is not hashed or signed: what is protected is each
//! envelope's bytes (hashed, chained through `prev`) and the head, whose
//! signature covers
//! `"gridsync/head/v2\0" ‖ msgpack [origin, seq, hash (bin 32), signed_at_ms, after (bin 32)]`
//! (v1: `"gridsync/head/v1\0" ‖ msgpack [origin, seq, hash, signed_at_ms]`).
//! `after` is the [`SignedHead::digest`] of the origin's previous signed
//! head (zeros for its first): heads chain as events do, so one verified
//! signature vouches for every earlier head's bytes it links to — an
//! audit of every stored byte hashes the older heads instead of verifying
//! each signature (ARCHITECTURE.md, Decisions: "Signed heads chained").
//! So any contiguous run of a chunk's events ending at the head can be cut
//! out and sent on with the same head, and personal parts can be dropped,
//! without touching a signed byte.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::Deserialize;

use crate::event::{event_hash, Envelope, EnvelopeError, Hash32, Personal};

/// Domain-separation prefix of a v1 signed head (no `after`).
pub const HEAD_SIGNATURE_DOMAIN: &[u8] = b"gridsync/head/v1\0";
/// Domain-separation prefix of a v2 signed head (with `after`).
pub const HEAD_V2_SIGNATURE_DOMAIN: &[u8] = b"gridsync/head/v2\0";
/// Domain-separation prefix of a head's digest ([`SignedHead::digest`]).
pub const HEAD_DIGEST_DOMAIN: &[u8] = b"gridsync/head-digest/v1\0";
/// The only chunk container format so far.
pub const CHUNK_FORMAT: u8 = 1;

/// One event as stored: the exact envelope bytes and, unless withheld, the
/// personal fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    pub envelope: Vec<u8>,
    pub personal: Option<Personal>,
}

/// An origin's chain head signed with the origin's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHead {
    pub origin: String,
    pub seq: u64,
    pub hash: Hash32,
    pub signed_at_ms: i64,
    pub signature: [u8; 64],
    /// v2: the [`SignedHead::digest`] of the origin's previous signed head
    /// (zeros for its first), signed with the rest. `None`: a v1 head.
    pub after: Option<Hash32>,
}

impl SignedHead {
    /// The exact bytes a v1 head's signature covers.
    pub fn signed_message(origin: &str, seq: u64, hash: &Hash32, signed_at_ms: i64) -> Vec<u8> {
        Self::message_of(origin, seq, hash, signed_at_ms, None)
    }

    /// The exact bytes this head's signature covers (v1 or v2).
    pub fn message(&self) -> Vec<u8> {
        Self::message_of(
            &self.origin,
            self.seq,
            &self.hash,
            self.signed_at_ms,
            self.after.as_ref(),
        )
    }

    fn message_of(
        origin: &str,
        seq: u64,
        hash: &Hash32,
        signed_at_ms: i64,
        after: Option<&Hash32>,
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(HEAD_V2_SIGNATURE_DOMAIN.len() + 100 + origin.len());
        let (domain, fields) = match after {
            None => (HEAD_SIGNATURE_DOMAIN, 4),
            Some(_) => (HEAD_V2_SIGNATURE_DOMAIN, 5),
        };
        m.extend_from_slice(domain);
        rmp::encode::write_array_len(&mut m, fields).expect("vec write");
        rmp::encode::write_str(&mut m, origin).expect("vec write");
        rmp::encode::write_uint(&mut m, seq).expect("vec write");
        rmp::encode::write_bin(&mut m, hash).expect("vec write");
        rmp::encode::write_sint(&mut m, signed_at_ms).expect("vec write");
        if let Some(a) = after {
            rmp::encode::write_bin(&mut m, a).expect("vec write");
        }
        m
    }

    /// A v1 head (no `after`), as builds before 2026-12-05 signed: what
    /// tests of older logs and of mixed logs use.
    pub fn sign(key: &SigningKey, origin: &str, seq: u64, hash: Hash32, signed_at_ms: i64) -> Self {
        Self::signed(key, origin, seq, hash, signed_at_ms, None)
    }

    /// A v2 head following the origin's previous head, whose
    /// [`SignedHead::digest`] is `after` (zeros for the origin's first):
    /// what an origin signs.
    pub fn sign_after(
        key: &SigningKey,
        (origin, seq, hash): (&str, u64, Hash32),
        signed_at_ms: i64,
        after: Hash32,
    ) -> Self {
        Self::signed(key, origin, seq, hash, signed_at_ms, Some(after))
    }

    fn signed(
        key: &SigningKey,
        origin: &str,
        seq: u64,
        hash: Hash32,
        signed_at_ms: i64,
        after: Option<Hash32>,
    ) -> Self {
        let sig = key.sign(&Self::message_of(
            origin,
            seq,
            &hash,
            signed_at_ms,
            after.as_ref(),
        ));
        Self {
            origin: origin.to_owned(),
            seq,
            hash,
            signed_at_ms,
            signature: sig.to_bytes(),
            after,
        }
    }

    /// BLAKE3 over a domain prefix and the head's encoding — every field,
    /// the signature and `after` included: what the origin's next v2 head
    /// signs as its `after`. A head whose digest a verified head names is
    /// vouched for, byte for byte, without verifying its own signature.
    pub fn digest(&self) -> Hash32 {
        // One per stored head in a full audit: the domain and the encoding
        // written on the stack and hashed in one call (the incremental
        // hasher's call per field cost more than the hashing). A head of
        // any node id (≤ 64 bytes) fits; a longer origin, which no valid
        // node has, is streamed into the hasher.
        let mut buf = [0u8; 256];
        let (domain, rest) = buf.split_at_mut(HEAD_DIGEST_DOMAIN.len());
        domain.copy_from_slice(HEAD_DIGEST_DOMAIN);
        let room = rest.len();
        let mut w: &mut [u8] = rest;
        if self.try_encode_into(&mut w).is_ok() {
            let used = room - w.len();
            return *blake3::hash(&buf[..HEAD_DIGEST_DOMAIN.len() + used]).as_bytes();
        }
        let mut h = blake3::Hasher::new();
        h.update(HEAD_DIGEST_DOMAIN);
        self.encode_into(&mut h);
        *h.finalize().as_bytes()
    }

    /// Whether this (v2) head names `earlier` as the head before it.
    pub fn follows(&self, earlier: &SignedHead) -> bool {
        self.after.is_some_and(|a| a == earlier.digest())
    }

    /// Strict ed25519 verification (rejects malleable and small-order forms).
    ///
    /// # Errors
    /// [`ChunkError::BadSignature`] when the signature does not verify.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), ChunkError> {
        let msg = self.message();
        key.verify_strict(&msg, &Signature::from_bytes(&self.signature))
            .map_err(|_| ChunkError::BadSignature {
                origin: self.origin.clone(),
                seq: self.seq,
            })
    }

    /// Into a writer that cannot fail (a `Vec`, a hasher).
    fn encode_into<W: std::io::Write>(&self, w: &mut W) {
        self.try_encode_into(w).expect("vec write");
    }

    fn try_encode_into<W: std::io::Write>(
        &self,
        w: &mut W,
    ) -> Result<(), rmp::encode::ValueWriteError> {
        let fields = if self.after.is_some() { 6 } else { 5 };
        rmp::encode::write_array_len(w, fields)?;
        rmp::encode::write_str(w, &self.origin)?;
        rmp::encode::write_uint(w, self.seq)?;
        rmp::encode::write_bin(w, &self.hash)?;
        rmp::encode::write_sint(w, self.signed_at_ms)?;
        rmp::encode::write_bin(w, &self.signature)?;
        if let Some(a) = &self.after {
            rmp::encode::write_bin(w, a)?;
        }
        Ok(())
    }

    /// Standalone encoding (used for the `heads` index).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(140);
        self.encode_into(&mut w);
        w
    }

    /// # Errors
    /// When the bytes are not an encoded head.
    pub fn decode(bytes: &[u8]) -> Result<Self, ChunkError> {
        let w: HeadWire =
            rmp_serde::from_slice(bytes).map_err(|e| ChunkError::Decode(e.to_string()))?;
        w.into_head()
    }
}

/// A head as encoded: five fields (v1) or six (v2, `after` last).
#[derive(Deserialize)]
struct HeadWire(
    String,
    u64,
    serde_bytes::ByteBuf,
    i64,
    serde_bytes::ByteBuf,
    #[serde(default)] Option<serde_bytes::ByteBuf>,
);

impl HeadWire {
    fn into_head(self) -> Result<SignedHead, ChunkError> {
        head_of(
            self.0,
            (self.1, &self.2, self.3, &self.4),
            self.5.as_ref().map(|a| a.as_slice()),
        )
    }
}

/// [`HeadWire`] borrowed from the bytes: no allocation per field where a
/// chunk is read in place (`ChunkView`, `record_at`).
#[derive(Deserialize)]
struct HeadRef<'a>(
    &'a str,
    u64,
    #[serde(borrow)] &'a serde_bytes::Bytes,
    i64,
    #[serde(borrow)] &'a serde_bytes::Bytes,
    #[serde(default, borrow)] Option<&'a serde_bytes::Bytes>,
);

impl HeadRef<'_> {
    fn into_head(self) -> Result<SignedHead, ChunkError> {
        head_of(
            self.0.to_owned(),
            (self.1, self.2, self.3, self.4),
            self.5.map(|a| &a[..]),
        )
    }
}

/// A head from its decoded fields, their lengths checked.
fn head_of(
    origin: String,
    (seq, hash, signed_at_ms, signature): (u64, &[u8], i64, &[u8]),
    after: Option<&[u8]>,
) -> Result<SignedHead, ChunkError> {
    Ok(SignedHead {
        origin,
        seq,
        hash: hash
            .try_into()
            .map_err(|_| ChunkError::Decode("head hash is not 32 bytes".into()))?,
        signed_at_ms,
        signature: signature
            .try_into()
            .map_err(|_| ChunkError::Decode("head signature is not 64 bytes".into()))?,
        after: after
            .map(|a| {
                a.try_into()
                    .map_err(|_| ChunkError::Decode("head's after is not 32 bytes".into()))
            })
            .transpose()?,
    })
}

#[derive(Deserialize)]
struct PersonalWire(serde_bytes::ByteBuf, serde_bytes::ByteBuf);

#[derive(Deserialize)]
struct RecordWire(serde_bytes::ByteBuf, Option<PersonalWire>);

#[derive(Deserialize)]
struct ChunkWire(u8, String, Vec<RecordWire>, HeadWire);

/// A record borrowed from the chunk's bytes (no copy per event).
#[derive(Deserialize)]
struct RecordRef<'a>(
    #[serde(borrow)] &'a serde_bytes::Bytes,
    #[serde(borrow)] Option<PersonalRef<'a>>,
);

#[derive(Deserialize)]
struct PersonalRef<'a>(
    #[serde(borrow)] &'a serde_bytes::Bytes,
    #[serde(borrow)] &'a serde_bytes::Bytes,
);

#[derive(Deserialize)]
struct ChunkRef<'a>(
    u8,
    &'a str,
    #[serde(borrow)] Vec<RecordRef<'a>>,
    #[serde(borrow)] HeadRef<'a>,
);

/// The head of a decoded container once its shape is checked: format 1,
/// at least one event, a head seq that leaves room for all of them.
fn checked_head(
    format: u8,
    origin: &str,
    n_events: usize,
    head: impl FnOnce() -> Result<SignedHead, ChunkError>,
) -> Result<SignedHead, ChunkError> {
    if format != CHUNK_FORMAT {
        return Err(ChunkError::Format(format));
    }
    if n_events == 0 {
        return Err(ChunkError::Empty(origin.to_owned()));
    }
    let head = head()?;
    if head.seq < n_events as u64 {
        return Err(ChunkError::Decode(
            "head seq is lower than the number of events".into(),
        ));
    }
    Ok(head)
}

fn personal_of(salt: &[u8], bytes: &[u8]) -> Result<Personal, ChunkError> {
    Ok(Personal {
        salt: salt
            .try_into()
            .map_err(|_| ChunkError::Decode("salt is not 16 bytes".into()))?,
        bytes: bytes.to_vec(),
    })
}

/// A run of consecutive events of one origin and the signed head that closes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub origin: String,
    pub events: Vec<EventRecord>,
    pub head: SignedHead,
}

/// An event whose bytes decoded and whose place in its chain was checked.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedEvent {
    pub envelope: Envelope,
    pub hash: Hash32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("chunk is not decodable: {0}")]
    Decode(String),
    #[error("chunk format {0} is not supported (this build reads format 1)")]
    Format(u8),
    #[error("chunk of origin {0} holds no events")]
    Empty(String),
    #[error("event {origin}/{seq}: {source}")]
    Envelope {
        origin: String,
        seq: u64,
        source: EnvelopeError,
    },
    #[error("chunk of origin {chunk_origin} holds an event of origin {event_origin} (seq {seq})")]
    OriginMismatch {
        chunk_origin: String,
        event_origin: String,
        seq: u64,
    },
    #[error("origin {origin}: expected seq {expected}, found {found} (gap or reordering)")]
    Gap {
        origin: String,
        expected: u64,
        found: u64,
    },
    #[error("origin {origin} seq {seq}: prev does not match the hash of seq {prev_seq}", prev_seq = seq - 1)]
    BrokenChain { origin: String, seq: u64 },
    #[error("origin {origin} seq {seq}: personal fields do not match the digest in the envelope")]
    PersonalDigest { origin: String, seq: u64 },
    #[error("origin {origin}: signed head (seq {head_seq}) does not match the chunk's last event (seq {last_seq})")]
    HeadMismatch {
        origin: String,
        head_seq: u64,
        last_seq: u64,
    },
    #[error("origin {origin} seq {seq}: head signature does not verify with the origin's key")]
    BadSignature { origin: String, seq: u64 },
}

impl Chunk {
    pub fn first_seq(&self) -> u64 {
        links::first_seq_of(&self.head, self.events.len())
    }

    pub fn last_seq(&self) -> u64 {
        self.head.seq
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(self.encoded_len_hint());
        self.encode_into(&mut w);
        w
    }

    /// About the length of [`Chunk::encode`]'s bytes (a capacity to reserve).
    pub fn encoded_len_hint(&self) -> usize {
        64 + self
            .events
            .iter()
            .map(|e| e.envelope.len() + 64)
            .sum::<usize>()
    }

    /// Appends the encoding to `w` (after, say, a log entry's header, so
    /// that the chunk's bytes are not copied again behind it).
    pub fn encode_into(&self, w: &mut Vec<u8>) {
        rmp::encode::write_array_len(w, 4).expect("vec write");
        rmp::encode::write_uint(w, u64::from(CHUNK_FORMAT)).expect("vec write");
        rmp::encode::write_str(w, &self.origin).expect("vec write");
        let n = u32::try_from(self.events.len()).expect("chunk event count fits u32");
        rmp::encode::write_array_len(w, n).expect("vec write");
        for e in &self.events {
            rmp::encode::write_array_len(w, 2).expect("vec write");
            rmp::encode::write_bin(w, &e.envelope).expect("vec write");
            match &e.personal {
                None => {
                    rmp::encode::write_nil(w).expect("vec write");
                }
                Some(p) => {
                    rmp::encode::write_array_len(w, 2).expect("vec write");
                    rmp::encode::write_bin(w, &p.salt).expect("vec write");
                    rmp::encode::write_bin(w, &p.bytes).expect("vec write");
                }
            }
        }
        self.head.encode_into(w);
    }

    /// Decodes the container. Checks shape only; [`Chunk::verify`] checks content.
    ///
    /// # Errors
    /// When the bytes are not a format-1 chunk.
    pub fn decode(bytes: &[u8]) -> Result<Self, ChunkError> {
        let w: ChunkWire =
            rmp_serde::from_slice(bytes).map_err(|e| ChunkError::Decode(e.to_string()))?;
        let head = checked_head(w.0, &w.1, w.2.len(), || w.3.into_head())?;
        let mut events = Vec::with_capacity(w.2.len());
        for r in w.2 {
            let personal = match r.1 {
                None => None,
                Some(p) => Some(personal_of(&p.0, &p.1)?),
            };
            events.push(EventRecord {
                envelope: r.0.into_vec(),
                personal,
            });
        }
        Ok(Chunk {
            origin: w.1,
            events,
            head,
        })
    }

    /// Event `seq` of an encoded chunk, copying only that event: what
    /// [`Chunk::decode`] would give as `events[seq - first_seq]`, with the
    /// same checks of the container's shape (`None` when the chunk does
    /// not hold `seq`). A correction's target or a retried post's stored
    /// event is one event of a chunk that may hold hundreds.
    ///
    /// # Errors
    /// When the bytes are not a format-1 chunk.
    pub fn record_at(bytes: &[u8], seq: u64) -> Result<Option<EventRecord>, ChunkError> {
        let w: ChunkRef<'_> =
            rmp_serde::from_slice(bytes).map_err(|e| ChunkError::Decode(e.to_string()))?;
        let head = checked_head(w.0, w.1, w.2.len(), || w.3.into_head())?;
        let first = head.seq - (w.2.len() as u64 - 1);
        if seq < first || seq > head.seq {
            return Ok(None);
        }
        let r = &w.2[usize::try_from(seq - first).expect("below the event count")];
        let personal = match &r.1 {
            None => None,
            Some(p) => Some(personal_of(p.0, p.1)?),
        };
        Ok(Some(EventRecord {
            envelope: r.0.to_vec(),
            personal,
        }))
    }

    /// Decodes every envelope and checks the chain: origin, consecutive seqs
    /// from `first_seq`, `prev` links starting from `prev`, personal digests,
    /// and that the head names the last event. Does not check the signature
    /// (see [`Chunk::verify`]).
    ///
    /// # Errors
    /// The first problem found.
    pub fn check_chain(
        &self,
        first_seq: u64,
        prev: &Hash32,
    ) -> Result<Vec<VerifiedEvent>, ChunkError> {
        let hashes = self.check_links(first_seq, prev)?;
        self.events
            .iter()
            .zip(hashes)
            .enumerate()
            .map(|(i, (rec, hash))| {
                let envelope =
                    Envelope::decode(&rec.envelope).map_err(|source| ChunkError::Envelope {
                        origin: self.origin.clone(),
                        seq: first_seq + i as u64,
                        source,
                    })?;
                Ok(VerifiedEvent { envelope, hash })
            })
            .collect()
    }

    /// Event `seq` of this chunk, if it holds it.
    pub fn event(&self, seq: u64) -> Option<&EventRecord> {
        let i = usize::try_from(seq.checked_sub(self.first_seq())?).ok()?;
        self.events.get(i)
    }

    /// How many of this chunk's events are at or before `seq` (which is
    /// below the last seq).
    fn events_through(&self, seq: u64) -> usize {
        usize::try_from((seq + 1).saturating_sub(self.first_seq())).expect("fits usize")
    }

    /// The events after `seq` with the same head (`None` if none are left).
    /// Verifiable given the hash of event `seq`.
    pub fn suffix_after(&self, seq: u64) -> Option<Chunk> {
        if seq >= self.last_seq() {
            return None;
        }
        Some(Chunk {
            origin: self.origin.clone(),
            events: self.events[self.events_through(seq)..].to_vec(),
            head: self.head.clone(),
        })
    }

    /// [`Chunk::suffix_after`] without copying the events it keeps.
    pub fn into_suffix_after(mut self, seq: u64) -> Option<Chunk> {
        if seq >= self.last_seq() {
            return None;
        }
        let skip = self.events_through(seq);
        self.events.drain(..skip);
        Some(self)
    }

    /// Checks the chain like [`Chunk::check_chain`] but reads only each
    /// envelope's links (origin, seq, prev, personal digest) instead of
    /// decoding it: the replication path's verification, where authenticity
    /// is what matters. Returns the events' hashes.
    ///
    /// # Errors
    /// The first problem found.
    pub fn check_links(&self, first_seq: u64, prev: &Hash32) -> Result<Vec<Hash32>, ChunkError> {
        let events = self.events.iter().map(|rec| {
            (
                &rec.envelope[..],
                rec.personal.as_ref().map(Personal::digest),
            )
        });
        links::links_of(&self.origin, &self.head, events, first_seq, prev)
    }

    /// The `prev` of the chunk's first event.
    ///
    /// # Errors
    /// When the first envelope does not parse.
    pub fn first_prev(&self) -> Result<Hash32, ChunkError> {
        let first = self.events.first().map(|r| &r.envelope[..]);
        links::first_prev_of(&self.origin, first, self.first_seq())
    }

    /// Decodes the events of a chunk this node already verified (read back
    /// from its own log): checks the chain within the chunk, starting from
    /// the first event's own `prev`.
    ///
    /// # Errors
    /// The first problem found.
    pub fn decode_events(&self) -> Result<Vec<VerifiedEvent>, ChunkError> {
        let first = self
            .events
            .first()
            .ok_or_else(|| ChunkError::Empty(self.origin.clone()))?;
        let env = Envelope::decode(&first.envelope).map_err(|source| ChunkError::Envelope {
            origin: self.origin.clone(),
            seq: self.first_seq(),
            source,
        })?;
        self.check_chain(self.first_seq(), &env.prev)
    }

    /// [`Chunk::check_chain`] plus the head signature under `key`.
    ///
    /// # Errors
    /// The first problem found.
    pub fn verify(
        &self,
        first_seq: u64,
        prev: &Hash32,
        key: &VerifyingKey,
    ) -> Result<Vec<VerifiedEvent>, ChunkError> {
        let events = self.check_chain(first_seq, prev)?;
        self.head.verify(key)?;
        Ok(events)
    }

    /// The chunk with its chain links checked from its first event's own
    /// `prev` ([`Chunk::check_links`]) and every event's hash kept, so that
    /// whoever takes it next (the store's writer) need not read and hash
    /// the events again.
    ///
    /// # Errors
    /// The first problem found.
    pub fn linked(self) -> Result<LinkedChunk, ChunkError> {
        let prev = self.first_prev()?;
        let hashes = self.check_links(self.first_seq(), &prev)?;
        Ok(LinkedChunk {
            chunk: self,
            prev,
            hashes,
        })
    }
}

/// A chunk whose links were checked ([`Chunk::linked`]): each event's
/// origin, seq, `prev` and personal digest follow from the one before,
/// and the head closes the last. Only `linked` makes one, and the chunk
/// cannot be changed through it, so `prev` and `hashes` are the chunk's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedChunk {
    chunk: Chunk,
    prev: Hash32,
    hashes: Vec<Hash32>,
}

impl LinkedChunk {
    pub fn chunk(&self) -> &Chunk {
        &self.chunk
    }

    pub fn into_chunk(self) -> Chunk {
        self.chunk
    }

    /// The `prev` of the first event.
    pub fn prev(&self) -> Hash32 {
        self.prev
    }

    /// Every event's hash, in order.
    pub fn hashes(&self) -> &[Hash32] {
        &self.hashes
    }

    /// [`Chunk::into_suffix_after`], its hashes and `prev` with it.
    pub fn into_suffix_after(self, seq: u64) -> Option<LinkedChunk> {
        let skip = self.chunk.events_through(seq);
        let chunk = self.chunk.into_suffix_after(seq)?;
        let mut hashes = self.hashes;
        let prev = hashes.drain(..skip).next_back().unwrap_or(self.prev);
        Some(LinkedChunk {
            chunk,
            prev,
            hashes,
        })
    }
}

mod encoded;
mod links;
pub use encoded::EncodedChunk;
mod many;
pub use many::{failing_heads, HEADS_PER_BATCH};
mod view;
pub use view::{ChunkView, RecordView};

#[cfg(test)]
mod tests;
