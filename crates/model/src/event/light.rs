//! A small msgpack reader over borrowed bytes, for the hot paths that read
//! a few fields of an envelope without decoding the rest (the chain links
//! for `read_links`, the projection's fields in `gridsync-projections`). Every
//! function consumes one value from the front of the slice and answers
//! `None` when the bytes do not hold a value of that shape.

use rmp::Marker;

pub type R<'a> = &'a [u8];

fn take<'a>(rd: &mut R<'a>, n: usize) -> Option<&'a [u8]> {
    if rd.len() < n {
        return None;
    }
    let (head, rest) = rd.split_at(n);
    *rd = rest;
    Some(head)
}

fn be(rd: &mut R<'_>, n: usize) -> Option<u64> {
    Some(
        take(rd, n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
    )
}

pub fn marker(rd: &mut R<'_>) -> Option<Marker> {
    let b = *take(rd, 1)?.first()?;
    Some(Marker::from_u8(b))
}

/// A non-negative integer in any of msgpack's integer encodings.
pub fn uint(rd: &mut R<'_>) -> Option<u64> {
    match marker(rd)? {
        Marker::FixPos(v) => Some(u64::from(v)),
        Marker::U8 => be(rd, 1),
        Marker::U16 => be(rd, 2),
        Marker::U32 => be(rd, 4),
        Marker::U64 => be(rd, 8),
        _ => None,
    }
}

/// A string, checked to be UTF-8.
pub fn str<'a>(rd: &mut R<'a>) -> Option<&'a str> {
    std::str::from_utf8(str_bytes(rd)?).ok()
}

pub fn bin32(rd: &mut R<'_>) -> Option<Option<[u8; 32]>> {
    match marker(rd)? {
        Marker::Null => Some(None),
        Marker::Bin8 => {
            let n = be(rd, 1)? as usize;
            Some(Some(take(rd, n)?.try_into().ok()?))
        }
        _ => None,
    }
}

/// msgpack's `nil` marker.
pub const NIL: u8 = 0xc0;

/// Whether the next value is `nil` (consumed if so).
pub fn nil(rd: &mut R<'_>) -> bool {
    if rd.first() == Some(&NIL) {
        *rd = &rd[1..];
        true
    } else {
        false
    }
}

/// Any integer that fits an `i64`.
pub fn int(rd: &mut R<'_>) -> Option<i64> {
    match Marker::from_u8(*rd.first()?) {
        Marker::FixNeg(v) => {
            take(rd, 1)?;
            Some(i64::from(v))
        }
        Marker::I8 | Marker::I16 | Marker::I32 | Marker::I64 => {
            let n = match marker(rd)? {
                Marker::I8 => 1,
                Marker::I16 => 2,
                Marker::I32 => 4,
                _ => 8,
            };
            let raw = be(rd, n)?;
            let shift = 64 - 8 * n as u32;
            // Sign-extend the big-endian two's complement.
            #[allow(clippy::cast_possible_wrap)]
            Some(((raw << shift) as i64) >> shift)
        }
        _ => i64::try_from(uint(rd)?).ok(),
    }
}

/// A float, or an integer read as one (as serde reads an `f64`).
pub fn float(rd: &mut R<'_>) -> Option<f64> {
    match Marker::from_u8(*rd.first()?) {
        Marker::F32 => {
            take(rd, 1)?;
            let bits = u32::try_from(be(rd, 4)?).ok()?;
            Some(f64::from(f32::from_bits(bits)))
        }
        Marker::F64 => {
            take(rd, 1)?;
            Some(f64::from_bits(be(rd, 8)?))
        }
        Marker::U64 =>
        {
            #[allow(clippy::cast_precision_loss)]
            Some(uint(rd)? as f64)
        }
        #[allow(clippy::cast_precision_loss)]
        _ => Some(int(rd)? as f64),
    }
}

pub fn bool(rd: &mut R<'_>) -> Option<bool> {
    match marker(rd)? {
        Marker::True => Some(true),
        Marker::False => Some(false),
        _ => None,
    }
}

/// A map's entry count (its entries follow, key then value).
pub fn map_len(rd: &mut R<'_>) -> Option<usize> {
    match marker(rd)? {
        Marker::FixMap(n) => Some(usize::from(n)),
        Marker::Map16 => Some(be(rd, 2)? as usize),
        Marker::Map32 => Some(be(rd, 4)? as usize),
        _ => None,
    }
}

/// An array's item count (its items follow).
pub fn array_len(rd: &mut R<'_>) -> Option<usize> {
    match marker(rd)? {
        Marker::FixArray(n) => Some(usize::from(n)),
        Marker::Array16 => Some(be(rd, 2)? as usize),
        Marker::Array32 => Some(be(rd, 4)? as usize),
        _ => None,
    }
}

/// A string's bytes, not checked to be UTF-8 (for comparing a key
/// against known names).
pub fn str_bytes<'a>(rd: &mut R<'a>) -> Option<&'a [u8]> {
    let len = match marker(rd)? {
        Marker::FixStr(n) => usize::from(n),
        Marker::Str8 => be(rd, 1)? as usize,
        Marker::Str16 => be(rd, 2)? as usize,
        Marker::Str32 => be(rd, 4)? as usize,
        _ => return None,
    };
    take(rd, len)
}

/// A binary value's bytes (bin 8, 16 or 32).
pub fn bin<'a>(rd: &mut R<'a>) -> Option<&'a [u8]> {
    let len = match marker(rd)? {
        Marker::Bin8 => be(rd, 1)? as usize,
        Marker::Bin16 => be(rd, 2)? as usize,
        Marker::Bin32 => be(rd, 4)? as usize,
        _ => return None,
    };
    take(rd, len)
}

/// Skips one value of any type; depth-limited.
pub fn skip(rd: &mut R<'_>, depth: u32) -> Option<()> {
    if depth > 64 {
        return None;
    }
    let (items, bytes) = match marker(rd)? {
        Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
            (0, 0)
        }
        Marker::U8 | Marker::I8 => (0, 1),
        Marker::U16 | Marker::I16 => (0, 2),
        Marker::U32 | Marker::I32 | Marker::F32 => (0, 4),
        Marker::U64 | Marker::I64 | Marker::F64 => (0, 8),
        Marker::FixStr(n) => (0, usize::from(n)),
        Marker::Str8 | Marker::Bin8 => (0, be(rd, 1)? as usize),
        Marker::Str16 | Marker::Bin16 => (0, be(rd, 2)? as usize),
        Marker::Str32 | Marker::Bin32 => (0, be(rd, 4)? as usize),
        Marker::FixArray(n) => (usize::from(n), 0),
        Marker::Array16 => (be(rd, 2)? as usize, 0),
        Marker::Array32 => (be(rd, 4)? as usize, 0),
        Marker::FixMap(n) => (2 * usize::from(n), 0),
        Marker::Map16 => (2 * be(rd, 2)? as usize, 0),
        Marker::Map32 => (2 * be(rd, 4)? as usize, 0),
        _ => return None,
    };
    take(rd, bytes)?;
    for _ in 0..items {
        skip(rd, depth + 1)?;
    }
    Some(())
}
