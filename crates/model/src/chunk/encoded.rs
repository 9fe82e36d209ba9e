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

impl Chunk {
    /// Whether an encoded chunk carries any event's personal part, read
    /// without decoding it (`None`: not a chunk of that shape). A sender
    /// that withholds personal parts forwards the stored bytes unchanged
    /// when there are none.
    pub fn encoded_has_personal(bytes: &[u8]) -> Option<bool> {
        let mut rd: light::R<'_> = bytes;
        if light::array_len(&mut rd)? != 4 {
            return None;
        }
        light::uint(&mut rd)?; // format
        light::str_bytes(&mut rd)?; // origin
        let mut any = false;
        for _ in 0..light::array_len(&mut rd)? {
            if light::array_len(&mut rd)? != 2 {
                return None;
            }
            light::skip(&mut rd, 0)?; // envelope
            if !light::nil(&mut rd) {
                light::skip(&mut rd, 0)?;
                any = true;
            }
        }
        light::skip(&mut rd, 0)?; // head
        rd.is_empty().then_some(any)
    }
}
