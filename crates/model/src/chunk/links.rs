//! A chunk's links checked — origin, consecutive seqs, `prev` links,
//! personal digests, the head naming the last event — whether its events
//! are held ([`super::Chunk`]) or borrowed ([`super::ChunkView`]).

use super::{event_hash, ChunkError, Hash32, SignedHead};
use crate::event::{EnvelopeError, EnvelopeLinks};

/// The first seq of a chunk of `n_events` closed by `head`: `decode`
/// guarantees 1 ≤ events ≤ head.seq; written so that no input (head.seq =
/// u64::MAX included) can overflow.
pub(super) fn first_seq_of(head: &SignedHead, n_events: usize) -> u64 {
    head.seq.saturating_sub((n_events as u64).saturating_sub(1))
}

/// The links of a chunk's events (envelope bytes and, where the personal
/// part is held, its digest) checked from `first_seq` and `prev`: origin,
/// consecutive seqs, `prev` links, personal digests, and that the head
/// names the last event. Returns the events' hashes. Shared by [`super::Chunk`]
/// and [`super::ChunkView`].
pub(super) fn links_of<'e>(
    origin: &str,
    head: &SignedHead,
    events: impl ExactSizeIterator<Item = (&'e [u8], Option<Hash32>)>,
    first_seq: u64,
    prev: &Hash32,
) -> Result<Vec<Hash32>, ChunkError> {
    let read = crate::event::read_links;
    links_with(origin, head, events, first_seq, Some(prev), read).map(|(_, hashes)| hashes)
}

/// [`links_of`] with each envelope's links read by `read`, and from the
/// first event's own `prev` when `prev` is `None`. Returns that `prev` and
/// the events' hashes.
pub(super) fn links_with<'e>(
    origin: &str,
    head: &SignedHead,
    events: impl ExactSizeIterator<Item = (&'e [u8], Option<Hash32>)>,
    first_seq: u64,
    prev: Option<&Hash32>,
    mut read: impl FnMut(&'e [u8]) -> Result<EnvelopeLinks<'e>, EnvelopeError>,
) -> Result<(Hash32, Vec<Hash32>), ChunkError> {
    let mut out = Vec::with_capacity(events.len());
    let mut first_prev = prev.copied();
    let mut expected_prev = first_prev.unwrap_or_default();
    // Wrapping, so that no seq (u64::MAX included) can overflow: a wrap
    // shows as a gap below.
    let mut last_seq = first_seq.wrapping_sub(1);
    for (envelope, personal_digest) in events {
        let expected_seq = last_seq.wrapping_add(1);
        let links = read(envelope).map_err(|source| ChunkError::Envelope {
            origin: origin.to_owned(),
            seq: expected_seq,
            source,
        })?;
        if first_prev.is_none() {
            first_prev = Some(links.prev);
            expected_prev = links.prev;
        }
        if links.origin != origin {
            return Err(ChunkError::OriginMismatch {
                chunk_origin: origin.to_owned(),
                event_origin: links.origin.to_owned(),
                seq: expected_seq,
            });
        }
        if links.seq != expected_seq {
            return Err(ChunkError::Gap {
                origin: origin.to_owned(),
                expected: expected_seq,
                found: links.seq,
            });
        }
        if links.prev != expected_prev {
            return Err(ChunkError::BrokenChain {
                origin: origin.to_owned(),
                seq: links.seq,
            });
        }
        if personal_digest.is_some() && links.personal_digest != personal_digest {
            return Err(ChunkError::PersonalDigest {
                origin: origin.to_owned(),
                seq: links.seq,
            });
        }
        expected_prev = event_hash(envelope);
        last_seq = expected_seq;
        out.push(expected_prev);
    }
    if head.origin != origin || head.seq != last_seq || head.hash != expected_prev {
        return Err(ChunkError::HeadMismatch {
            origin: origin.to_owned(),
            head_seq: head.seq,
            last_seq,
        });
    }
    let first_prev = first_prev.ok_or_else(|| ChunkError::Empty(origin.to_owned()))?;
    Ok((first_prev, out))
}

/// The `prev` of a chunk's first event (`first`: its envelope).
pub(super) fn first_prev_of(
    origin: &str,
    first: Option<&[u8]>,
    first_seq: u64,
) -> Result<Hash32, ChunkError> {
    let first = first.ok_or_else(|| ChunkError::Empty(origin.to_owned()))?;
    crate::event::read_links(first)
        .map(|l| l.prev)
        .map_err(|source| ChunkError::Envelope {
            origin: origin.to_owned(),
            seq: first_seq,
            source,
        })
}
