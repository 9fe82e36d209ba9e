//! A chunk read in place: its envelopes and personal parts borrowed from
//! the stored bytes instead of copied out one allocation each. What an
//! audit needs of every entry of a log (origin, seqs, links, head,
//! envelope bytes), at a fraction of [`super::Chunk::decode`]'s
//! allocations; the same checks of the container's shape.

use super::links::{first_seq_of, links_with};
use super::{checked_head, head_of, ChunkError, ChunkRef, SignedHead};
use crate::event::{personal_digest, EnvelopeError, EnvelopeLinks};
use crate::Hash32;

/// A decoded chunk borrowing its events from the bytes it was read from.
#[derive(Debug)]
pub struct ChunkView<'a> {
    pub origin: &'a str,
    pub events: Vec<RecordView<'a>>,
    pub head: SignedHead,
}

/// One event of a [`ChunkView`]: its envelope bytes and, if held, its
/// personal part (salt, canonical map bytes).
#[derive(Debug)]
pub struct RecordView<'a> {
    pub envelope: &'a [u8],
    pub personal: Option<(&'a [u8; 16], &'a [u8])>,
}

impl<'a> ChunkView<'a> {
    /// Reads the container in place. Checks shape only, as
    /// [`super::Chunk::decode`] does — and one thing more: byte strings
    /// must be msgpack binary or string values, as every store writes
    /// them; an envelope written as an array of integers, which
    /// `Chunk::decode` takes, is refused here (an altered container).
    ///
    /// # Errors
    /// When the bytes are not a format-1 chunk.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, ChunkError> {
        match Self::read_plain(bytes) {
            Some(view) => Ok(view),
            None => Self::decode_by_serde(bytes),
        }
    }

    /// [`Self::decode`] by serde alone: what decides every container the
    /// plain reading does not take.
    pub(super) fn decode_by_serde(bytes: &'a [u8]) -> Result<Self, ChunkError> {
        let w: ChunkRef<'a> =
            rmp_serde::from_slice(bytes).map_err(|e| ChunkError::Decode(e.to_string()))?;
        let head = checked_head(w.0, w.1, w.2.len(), || w.3.into_head())?;
        let events =
            w.2.into_iter()
                .map(|r| {
                    let personal = match r.1 {
                        None => None,
                        Some(p) => {
                            let salt: &[u8] = p.0;
                            let salt = salt
                                .try_into()
                                .map_err(|_| ChunkError::Decode("salt is not 16 bytes".into()))?;
                            Some((salt, &p.1[..]))
                        }
                    };
                    Ok(RecordView {
                        envelope: &r.0[..],
                        personal,
                    })
                })
                .collect::<Result<_, ChunkError>>()?;
        Ok(Self {
            origin: w.1,
            events,
            head,
        })
    }

    /// The container in the form every store writes it — arrays of their
    /// exact lengths, byte strings as msgpack binary, nothing after it —
    /// read with the borrowed reader, several times cheaper than serde
    /// (the audit reads every chunk of a log). `None` for anything else,
    /// and for a chunk that fails a check: [`Self::decode`] then leaves it
    /// to serde, so what is accepted and how a chunk is refused stay
    /// serde's.
    pub(super) fn read_plain(bytes: &'a [u8]) -> Option<Self> {
        use crate::event::light;
        use rmp::Marker;
        let mut rd: light::R<'a> = bytes;
        if light::marker(&mut rd)? != Marker::FixArray(4) {
            return None;
        }
        let format = u8::try_from(light::uint(&mut rd)?).ok()?;
        let origin = light::str(&mut rd)?;
        let n = light::array_len(&mut rd)?;
        // Each record takes 3 bytes at least: a claimed count beyond what
        // the bytes hold reserves nothing.
        let mut events = Vec::with_capacity(n.min(rd.len() / 3));
        for _ in 0..n {
            if light::marker(&mut rd)? != Marker::FixArray(2) {
                return None;
            }
            let envelope = light::bin(&mut rd)?;
            let personal = if light::nil(&mut rd) {
                None
            } else {
                if light::marker(&mut rd)? != Marker::FixArray(2) {
                    return None;
                }
                let salt: &[u8; 16] = light::bin(&mut rd)?.try_into().ok()?;
                Some((salt, light::bin(&mut rd)?))
            };
            events.push(RecordView { envelope, personal });
        }
        let with_after = match light::marker(&mut rd)? {
            Marker::FixArray(5) => false,
            Marker::FixArray(6) => true,
            _ => return None,
        };
        let head_origin = light::str(&mut rd)?;
        let seq = light::uint(&mut rd)?;
        let hash = light::bin(&mut rd)?;
        let signed_at_ms = light::int(&mut rd)?;
        let signature = light::bin(&mut rd)?;
        let after = if with_after {
            Some(light::bin(&mut rd)?)
        } else {
            None
        };
        if !rd.is_empty() {
            return None;
        }
        let fields = (seq, hash, signed_at_ms, signature);
        let head = || head_of(head_origin.to_owned(), fields, after);
        let head = checked_head(format, origin, events.len(), head).ok()?;
        Some(Self {
            origin,
            events,
            head,
        })
    }

    /// As [`super::Chunk::first_seq`].
    pub fn first_seq(&self) -> u64 {
        first_seq_of(&self.head, self.events.len())
    }

    pub fn last_seq(&self) -> u64 {
        self.head.seq
    }

    /// As [`super::Chunk::event`].
    pub fn event(&self, seq: u64) -> Option<&RecordView<'a>> {
        let i = usize::try_from(seq.checked_sub(self.first_seq())?).ok()?;
        self.events.get(i)
    }

    /// As [`super::Chunk::check_links`] from the first event's own `prev`
    /// (what [`super::Chunk::first_prev`] reads), each envelope's links read by `read`
    /// (an audit reads them with [`crate::event::canonical_check::canonical_links`],
    /// one walk for links and form). Returns that `prev` and the hashes.
    ///
    /// # Errors
    /// The first problem found; an envelope `read` refuses is
    /// [`ChunkError::Envelope`] at its seq.
    pub fn check_own_links(
        &self,
        read: impl FnMut(&'a [u8]) -> Result<EnvelopeLinks<'a>, EnvelopeError>,
    ) -> Result<(Hash32, Vec<Hash32>), ChunkError> {
        let first_seq = self.first_seq();
        links_with(
            self.origin,
            &self.head,
            self.linkable(),
            first_seq,
            None,
            read,
        )
    }

    /// Each event's envelope and, where its personal part is held, that
    /// part's digest: what the links are checked from.
    fn linkable(&self) -> impl ExactSizeIterator<Item = (&'a [u8], Option<Hash32>)> + '_ {
        self.events.iter().map(|r| {
            let digest = r.personal.map(|(salt, bytes)| personal_digest(salt, bytes));
            (r.envelope, digest)
        })
    }
}
