//! A chunk as stored, read without decoding it: what a sender forwards
//! unchanged.

use super::Chunk;
use crate::event::light;

/// A chunk as stored: its encoding ([`Chunk::encode`]) and the seqs it
/// holds, read from the index without decoding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedChunk {
    pub first_seq: u64,
    pub last_seq: u64,
    pub bytes: Vec<u8>,
}

impl From<&Chunk> for EncodedChunk {
    /// The chunk encoded, as a store would hold it.
    fn from(c: &Chunk) -> Self {
        Self {
            first_seq: c.first_seq(),
            last_seq: c.last_seq(),
            bytes: c.encode(),
        }
    }
}

impl Chunk {
    /// Whether an encoded chunk carries any event's personal part, read
    /// without decoding it (`None`: not a chunk of that shape). A sender
    /// that withholds personal parts forwards the stored bytes unchanged
    /// when there are none.
    pub fn encoded_has_personal(bytes: &[u8]) -> Option<bool> {
        personal_spans(bytes).map(|s| !s.is_empty())
    }

    /// The encoding of this chunk with every event's personal part
    /// withheld — what [`Chunk::encode`] gives after setting each
    /// `personal` to `None` —, made on the bytes: each personal part is
    /// replaced by `nil` and the rest copied (arrays count elements, not
    /// bytes, so nothing else changes). The bytes come back as they are
    /// when there is nothing to withhold. A community's sender withholds
    /// its own chunks' personal parts this way instead of decoding and
    /// encoding them again.
    ///
    /// # Errors
    /// The bytes, unchanged, when they are not a chunk of that shape.
    pub fn encoded_without_personal(bytes: Vec<u8>) -> Result<Vec<u8>, Vec<u8>> {
        let Some(spans) = personal_spans(&bytes) else {
            return Err(bytes);
        };
        if spans.is_empty() {
            return Ok(bytes);
        }
        let cut: usize = spans.iter().map(|(a, b)| b - a).sum();
        let mut out = Vec::with_capacity(bytes.len() - cut + spans.len());
        let mut at = 0;
        for (start, end) in spans {
            out.extend_from_slice(&bytes[at..start]);
            out.push(light::NIL);
            at = end;
        }
        out.extend_from_slice(&bytes[at..]);
        Ok(out)
    }

    /// The bytes an encoded chunk's events take — what it adds to a chunk
    /// it is joined onto ([`Chunk::encoded_joined`]) —, or `None` when the
    /// bytes are not a chunk of that shape.
    pub fn encoded_events_len(bytes: &[u8]) -> Option<usize> {
        parts(bytes).map(|p| p.events.len())
    }

    /// The encodings of consecutive chunks of one origin joined into one
    /// chunk: every chunk's events in turn, closed by the last one's head
    /// — what [`Chunk::encode`] gives for that chunk —, made on the bytes
    /// (each walked once; nothing decoded or re-encoded but the event
    /// count). Each chunk must continue the one before it (the caller
    /// reads them so): the last signed head then covers every event
    /// through the links, and the earlier heads add nothing a verifier
    /// needs. A sender joins the one-event chunks of phones' posts this
    /// way, so its parent verifies, stores and forwards one signature per
    /// ~32 KiB.
    ///
    /// `None` when there are none, when one is not a chunk of that shape,
    /// or when their origins differ.
    pub fn encoded_joined(chunks: &[&[u8]]) -> Option<Vec<u8>> {
        let parts: Vec<Parts> = chunks.iter().map(|b| parts(b)).collect::<Option<_>>()?;
        let (first, last) = (chunks.first()?, chunks.last()?);
        let origin = &first[parts[0].origin.clone()];
        if chunks
            .iter()
            .zip(&parts)
            .any(|(b, p)| &b[p.origin.clone()] != origin)
        {
            return None;
        }
        let n = u32::try_from(parts.iter().map(|p| p.count).sum::<usize>()).ok()?;
        let mut out = Vec::with_capacity(chunks.iter().map(|b| b.len()).sum());
        out.extend_from_slice(&first[..parts[0].origin.end]);
        rmp::encode::write_array_len(&mut out, n).expect("vec write");
        for (b, p) in chunks.iter().zip(&parts) {
            out.extend_from_slice(&b[p.events.clone()]);
        }
        let head = parts.last().expect("as many parts as chunks").events.end;
        out.extend_from_slice(&last[head..]);
        Some(out)
    }
}

/// Byte ranges of an encoded chunk's parts.
struct Parts {
    /// The origin string (after the array and format markers).
    origin: std::ops::Range<usize>,
    count: usize,
    /// The events, after their array's length; the head follows to the end.
    events: std::ops::Range<usize>,
}

/// An encoded chunk's parts, or `None` when the bytes are not a chunk of
/// that shape.
fn parts(bytes: &[u8]) -> Option<Parts> {
    walk(bytes, |rd| light::skip(rd, 0))
}

/// Walks an encoded chunk — `[format, origin, [event…], head]`, nothing
/// after — handing `event` the reader at each event (it must read the
/// whole event); `None` when the bytes are not a chunk of that shape.
fn walk(bytes: &[u8], mut event: impl FnMut(&mut light::R<'_>) -> Option<()>) -> Option<Parts> {
    let mut rd: light::R<'_> = bytes;
    let at = |rd: &light::R<'_>| bytes.len() - rd.len();
    if light::array_len(&mut rd)? != 4 {
        return None;
    }
    light::uint(&mut rd)?; // format
    let origin_start = at(&rd);
    light::str_bytes(&mut rd)?;
    let origin = origin_start..at(&rd);
    let count = light::array_len(&mut rd)?;
    let events_start = at(&rd);
    for _ in 0..count {
        event(&mut rd)?;
    }
    let events = events_start..at(&rd);
    light::skip(&mut rd, 0)?; // head
    rd.is_empty().then_some(Parts {
        origin,
        count,
        events,
    })
}

/// Where each event's personal part lies in an encoded chunk (byte ranges,
/// in order; none for events without one), or `None` when the bytes are
/// not a chunk of that shape (a prefix, trailing bytes, another layout).
fn personal_spans(bytes: &[u8]) -> Option<Vec<(usize, usize)>> {
    let at = |rd: &light::R<'_>| bytes.len() - rd.len();
    let mut spans = Vec::new();
    walk(bytes, |rd| {
        if light::array_len(rd)? != 2 {
            return None;
        }
        light::skip(rd, 0)?; // envelope
        if !light::nil(rd) {
            let start = at(rd);
            light::skip(rd, 0)?;
            spans.push((start, at(rd)));
        }
        Some(())
    })?;
    Some(spans)
}
