//! The fields of a stored envelope the metrics read, borrowed from its
//! bytes and read with a small msgpack reader (`gridsync_model::event::
//! light`) instead of serde: the projection runs for every event at every
//! node, and serde's generic decode (field names matched as UTF-8 strings,
//! every skipped field decoded, a ~250-byte value moved through each
//! layer) was most of its cost (`cargo bench --bench sync_stages`).
//!
//! The reader takes the canonical shapes the origin's ingest writes: the
//! 14-item envelope array, `data` a map with string keys, `target`,
//! `replacement` and each item maps (serde would also have read an array
//! there as the fields by position; the kinds' schemas allow only objects,
//! so no ingested event holds one). A field the
//! metrics read that has another type, a repeated key, or bytes that end
//! early make the event undecodable (counted as unprojected), as serde's
//! decode did; fields the metrics do not read are skipped whatever they
//! hold. `tests` compares it with a serde decode of the same fields.

use gridsync_model::event::light::{self, R};

/// A quantity of a delivery's items.
#[derive(Clone, Copy, Default)]
pub(crate) struct ItemLite {
    pub qty: u64,
}

/// A correction's target.
#[derive(Clone, Copy, Default)]
pub(crate) struct TargetLite<'a> {
    pub origin: &'a str,
    pub seq: u64,
}

/// The fields of `data` the metrics read (all kinds), borrowed.
#[derive(Clone, Default)]
pub(crate) struct DataLite<'a> {
    pub decision: Option<&'a str>,
    pub from_region: Option<&'a str>,
    pub celsius: Option<f64>,
    pub action: Option<&'a str>,
    pub method: Option<&'a str>,
    pub household: Option<&'a str>,
    pub quarantine: Option<&'a str>,
    pub quarantined: Option<bool>,
    pub items: Option<Vec<ItemLite>>,
    pub target: Option<TargetLite<'a>>,
    pub replacement: Option<Box<DataLite<'a>>>,
}

/// What the projection reads of an envelope.
pub(crate) struct EnvLite<'a> {
    pub origin: &'a str,
    pub seq: u64,
    pub kind: &'a str,
    pub schema: u32,
    pub occurred_ms: i64,
    pub recorded_ms: i64,
    pub data: DataLite<'a>,
}

/// The keys of `data` the metrics read, in the order `DataLite::read`
/// matches them.
const DATA_KEYS: [&[u8]; 11] = [
    b"decision",
    b"from_region",
    b"celsius",
    b"action",
    b"method",
    b"household",
    b"quarantine",
    b"quarantined",
    b"items",
    b"target",
    b"replacement",
];

/// Nesting allowed for `replacement` inside `replacement`.
const DEPTH_MAX: u32 = 16;

/// When the event occurred (unix ms), read where the field lies: the
/// envelope's shape up to it is checked, nothing after it.
pub(crate) fn occurred_ms(bytes: &[u8]) -> Option<i64> {
    let mut rd: R<'_> = bytes;
    if light::array_len(&mut rd)? != 14 {
        return None;
    }
    u8::try_from(light::uint(&mut rd)?).ok()?; // format
    light::str(&mut rd)?; // origin
    light::uint(&mut rd)?; // seq
    light::str(&mut rd)?; // kind
    light::uint(&mut rd)?; // schema
    light::int(&mut rd)
}

impl<'a> EnvLite<'a> {
    /// `None` when the bytes are not an envelope of that shape.
    pub fn read(bytes: &'a [u8]) -> Option<Self> {
        let mut rd: R<'a> = bytes;
        if light::array_len(&mut rd)? != 14 {
            return None;
        }
        u8::try_from(light::uint(&mut rd)?).ok()?; // format
        let origin = light::str(&mut rd)?;
        let seq = light::uint(&mut rd)?;
        let kind = light::str(&mut rd)?;
        let schema = u32::try_from(light::uint(&mut rd)?).ok()?;
        let occurred_ms = light::int(&mut rd)?;
        light::skip(&mut rd, 0)?; // offset
        let recorded_ms = light::int(&mut rd)?;
        for _ in 0..4 {
            light::skip(&mut rd, 0)?; // grid, recorded_by, client_id, prev
        }
        let data = DataLite::read(&mut rd, 0)?;
        light::skip(&mut rd, 0)?; // personal digest
        rd.is_empty().then_some(Self {
            origin,
            seq,
            kind,
            schema,
            occurred_ms,
            recorded_ms,
            data,
        })
    }
}

/// `nil` as `None`, else the value `read` takes.
fn opt<'a, T>(rd: &mut R<'a>, read: impl FnOnce(&mut R<'a>) -> Option<T>) -> Option<Option<T>> {
    if light::nil(rd) {
        Some(None)
    } else {
        read(rd).map(Some)
    }
}

/// Marks key `bit` of a map as read: a repeated key makes the map
/// undecodable (as serde's derived decode refuses it).
fn first(seen: &mut u16, bit: u16) -> Option<()> {
    if *seen & bit != 0 {
        return None;
    }
    *seen |= bit;
    Some(())
}

impl<'a> DataLite<'a> {
    fn read(rd: &mut R<'a>, depth: u32) -> Option<Self> {
        if depth > DEPTH_MAX {
            return None;
        }
        let mut d = DataLite::default();
        let mut seen = 0u16;
        for _ in 0..light::map_len(rd)? {
            let key = light::str_bytes(rd)?;
            let Some(bit) = DATA_KEYS.iter().position(|k| *k == key) else {
                light::skip(rd, 0)?;
                continue;
            };
            first(&mut seen, 1 << bit)?;
            match bit {
                0 => d.decision = opt(rd, light::str)?,
                1 => d.from_region = opt(rd, light::str)?,
                2 => d.celsius = opt(rd, light::float)?,
                3 => d.action = opt(rd, light::str)?,
                4 => d.method = opt(rd, light::str)?,
                5 => d.household = opt(rd, light::str)?,
                6 => d.quarantine = opt(rd, light::str)?,
                7 => d.quarantined = opt(rd, light::bool)?,
                8 => d.items = opt(rd, read_items)?,
                9 => d.target = opt(rd, read_target)?,
                _ => {
                    d.replacement = opt(rd, |rd| DataLite::read(rd, depth + 1).map(Box::new))?;
                }
            }
        }
        Some(d)
    }
}

fn read_items(rd: &mut R<'_>) -> Option<Vec<ItemLite>> {
    let n = light::array_len(rd)?;
    // Each item takes at least one byte: a count beyond the bytes left is
    // not trusted for the allocation.
    let mut items = Vec::with_capacity(n.min(rd.len()));
    for _ in 0..n {
        let mut item = ItemLite::default();
        let mut seen = 0u16;
        for _ in 0..light::map_len(rd)? {
            if light::str_bytes(rd)? == b"qty" {
                first(&mut seen, 1)?;
                item.qty = light::uint(rd)?;
            } else {
                light::skip(rd, 0)?;
            }
        }
        items.push(item);
    }
    Some(items)
}

fn read_target<'a>(rd: &mut R<'a>) -> Option<TargetLite<'a>> {
    let mut t = TargetLite::default();
    let mut seen = 0u16;
    for _ in 0..light::map_len(rd)? {
        match light::str_bytes(rd)? {
            b"origin" => {
                first(&mut seen, 1)?;
                t.origin = light::str(rd)?;
            }
            b"seq" => {
                first(&mut seen, 2)?;
                t.seq = light::uint(rd)?;
            }
            _ => light::skip(rd, 0)?,
        }
    }
    Some(t)
}

#[cfg(test)]
mod tests;
