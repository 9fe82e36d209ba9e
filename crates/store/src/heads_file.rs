//! The heads record: each node's latest signed heads and log length, kept
//! in two small files *beside* its sled directory (`<data>.heads.a` and
//! `<data>.heads.b`), outside the log they describe.
//!
//! A hash chain proves what it holds was not altered, but not that its tail
//! is all there: sled, finding a damaged record, recovers to the last good
//! point without complaint, and a data directory restored from an older
//! backup is a shorter, perfectly valid log. The record says how much this
//! node held; a store holding less is refused on open, naming each origin
//! and the seqs missing, and `gridsync audit verify` reports it as
//! truncation.
//!
//! Writes alternate between the two files, each fully rewritten and
//! fdatasynced, with a generation number and a BLAKE3 checksum: a write
//! torn by a crash (or a flipped byte) spoils one file, never both, and the
//! newest valid one is used. A file not there yet is created whole (written
//! as `<file>.new`, synced, renamed): the first record has no older one
//! beside it to fall back on. It is written after the sled commit it
//! describes is durable, so it never claims more than the log holds.
//!
//! Format: `GSHEADS1 ‖ generation:u64 ‖ written_at_ms:i64 ‖
//! next_offset:u64 ‖ events:u64 ‖ n:u32 ‖ n × (len:u16 ‖ signed head) ‖
//! blake3(all before):32`, integers big-endian.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use gridsync_model::SignedHead;

const MAGIC: &[u8; 8] = b"GSHEADS1";

/// What a node held at its last recorded commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeadsRecord {
    pub generation: u64,
    pub written_at_ms: i64,
    /// Log entries (the next offset).
    pub next_offset: u64,
    pub events: u64,
    /// Per origin: its latest signed head.
    pub heads: BTreeMap<String, SignedHead>,
}

impl HeadsRecord {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + self.heads.len() * 140);
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.generation.to_be_bytes());
        v.extend_from_slice(&self.written_at_ms.to_be_bytes());
        v.extend_from_slice(&self.next_offset.to_be_bytes());
        v.extend_from_slice(&self.events.to_be_bytes());
        v.extend_from_slice(
            &u32::try_from(self.heads.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for h in self.heads.values() {
            let b = h.encode();
            v.extend_from_slice(&u16::try_from(b.len()).unwrap_or(u16::MAX).to_be_bytes());
            v.extend_from_slice(&b);
        }
        let sum = blake3::hash(&v);
        v.extend_from_slice(sum.as_bytes());
        v
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let body = bytes.get(..bytes.len().checked_sub(32)?)?;
        if blake3::hash(body).as_bytes() != &bytes[body.len()..] || !body.starts_with(MAGIC) {
            return None;
        }
        let mut at = MAGIC.len();
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = body.get(at..at + n)?;
            at += n;
            Some(s)
        };
        let u64_of = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        let generation = u64_of(take(8)?);
        let written_at_ms = i64::from_be_bytes(take(8)?.try_into().ok()?);
        let next_offset = u64_of(take(8)?);
        let events = u64_of(take(8)?);
        let n = u32::from_be_bytes(take(4)?.try_into().ok()?);
        let mut heads = BTreeMap::new();
        for _ in 0..n {
            let len = usize::from(u16::from_be_bytes(take(2)?.try_into().ok()?));
            let h = SignedHead::decode(take(len)?).ok()?;
            heads.insert(h.origin.clone(), h);
        }
        (at == body.len()).then_some(Self {
            generation,
            written_at_ms,
            next_offset,
            events,
            heads,
        })
    }
}

/// The two files of a data directory's heads record.
pub fn paths(data_dir: &Path) -> [PathBuf; 2] {
    let name = data_dir
        .file_name()
        .map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    ["a", "b"].map(|slot| data_dir.with_file_name(format!("{name}.heads.{slot}")))
}

/// What was found beside a data directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// No record files (a node that never committed, or one from before
    /// records were kept).
    Absent,
    Valid(HeadsRecord),
    /// Record files exist but none is valid.
    Damaged(String),
}

/// Reads the newest valid record beside `data_dir`.
pub fn load(data_dir: &Path) -> Loaded {
    let mut best: Option<HeadsRecord> = None;
    let mut seen = Vec::new();
    for p in paths(data_dir) {
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        seen.push(p.display().to_string());
        if let Some(r) = HeadsRecord::decode(&bytes) {
            if best.as_ref().is_none_or(|b| r.generation > b.generation) {
                best = Some(r);
            }
        }
    }
    match best {
        Some(r) => Loaded::Valid(r),
        None if seen.is_empty() => Loaded::Absent,
        None => Loaded::Damaged(format!(
            "the heads record beside the data directory is damaged ({} do not verify)",
            seen.join(", ")
        )),
    }
}

/// Writes records, alternating between the two files.
pub struct HeadsWriter {
    paths: [PathBuf; 2],
    files: [Option<File>; 2],
    generation: u64,
}

impl HeadsWriter {
    /// Continues after `last` (the generation loaded at open, if any).
    pub fn new(data_dir: &Path, last_generation: u64) -> Self {
        Self {
            paths: paths(data_dir),
            files: [None, None],
            generation: last_generation,
        }
    }

    /// Writes `record` (its generation is assigned here) durably.
    ///
    /// # Errors
    /// I/O errors: the caller treats them like a failed commit.
    pub fn write(&mut self, record: &mut HeadsRecord) -> std::io::Result<()> {
        self.write_stepping(record, |_| Ok(()))
    }

    /// [`Self::write`], calling `step` at each point a crash could stop it
    /// (tests make `step` fail there to see what a crash leaves behind).
    fn write_stepping(
        &mut self,
        record: &mut HeadsRecord,
        mut step: impl FnMut(Step) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.generation += 1;
        record.generation = self.generation;
        let slot = usize::from(self.generation % 2 == 1);
        let bytes = record.encode();
        if self.files[slot].is_none() {
            let path = &self.paths[slot];
            if !path.exists() {
                self.files[slot] = Some(create_whole(path, &bytes, step)?);
                return Ok(());
            }
            let f = OpenOptions::new().write(true).truncate(false).open(path)?;
            self.files[slot] = Some(f);
        }
        // The other file holds the previous generation, complete: a crash
        // tearing this rewrite loses only the newest record.
        let f = self.files[slot].as_mut().expect("opened above");
        std::os::unix::fs::FileExt::write_all_at(f, &bytes, 0)?;
        step(Step::Written)?;
        f.set_len(bytes.len() as u64)?;
        f.flush()?;
        f.sync_data()
    }
}

/// Creates `path` holding `bytes`, whole or not at all: a new node's first
/// record has no older one beside it, and a crash tearing it in place would
/// leave a node that refuses to start (its record "damaged"). Written
/// beside as `<path>.new`, synced, renamed over, the directory synced.
fn create_whole(
    path: &Path,
    bytes: &[u8],
    mut step: impl FnMut(Step) -> std::io::Result<()>,
) -> std::io::Result<File> {
    let mut new = path.as_os_str().to_owned();
    new.push(".new");
    let new = PathBuf::from(new);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&new)?;
    step(Step::Created)?;
    f.write_all(bytes)?;
    step(Step::Written)?;
    f.sync_all()?;
    std::fs::rename(&new, path)?;
    step(Step::Renamed)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
    Ok(f)
}

/// Where a write of the record can be stopped by a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Created,
    Written,
    Renamed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> HeadsRecord {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let mut heads = BTreeMap::new();
        for o in ["c1", "c2"] {
            heads.insert(o.to_owned(), SignedHead::sign(&key, o, n, [n as u8; 32], 7));
        }
        HeadsRecord {
            generation: 0,
            written_at_ms: 5,
            next_offset: n,
            events: n * 3,
            heads,
        }
    }

    #[test]
    fn newest_valid_record_wins_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert_eq!(load(&data), Loaded::Absent);
        let mut w = HeadsWriter::new(&data, 0);
        for n in 1..=5 {
            w.write(&mut record(n)).unwrap();
        }
        let Loaded::Valid(r) = load(&data) else {
            panic!()
        };
        assert_eq!((r.generation, r.next_offset), (5, 5));
        // Spoil the newest file: the older one is used.
        let [a, b] = paths(&data);
        let newest = if std::fs::read(&a).unwrap() == record_bytes(5) {
            &a
        } else {
            &b
        };
        let mut bytes = std::fs::read(newest).unwrap();
        bytes[20] ^= 1;
        std::fs::write(newest, &bytes).unwrap();
        let Loaded::Valid(r) = load(&data) else {
            panic!()
        };
        assert_eq!(r.generation, 4);
        // Both spoiled: damaged, not absent.
        let other = if newest == &a { &b } else { &a };
        std::fs::write(other, b"junk").unwrap();
        assert!(matches!(load(&data), Loaded::Damaged(_)));
        // A writer that continues counts on from the loaded generation.
        let mut w = HeadsWriter::new(&data, 4);
        w.write(&mut record(6)).unwrap();
        let Loaded::Valid(r) = load(&data) else {
            panic!()
        };
        assert_eq!((r.generation, r.next_offset), (5, 6));
    }

    /// A crash at any point of any write leaves the previous record (or,
    /// before the first one completes, none): never a record that stops
    /// the node from starting. The first write is the one at stake: no
    /// older file stands beside it.
    #[test]
    fn a_crash_during_a_write_leaves_the_record_before_it() {
        for crash_in in 1..=3u64 {
            for at in [Step::Created, Step::Written, Step::Renamed] {
                let dir = tempfile::tempdir().unwrap();
                let data = dir.path().join("data");
                let mut w = HeadsWriter::new(&data, 0);
                for n in 1..crash_in {
                    w.write(&mut record(n)).unwrap();
                }
                let crash = |s: Step| {
                    if s == at {
                        Err(std::io::Error::other("crash"))
                    } else {
                        Ok(())
                    }
                };
                // Written in place (the file exists) there is no Created
                // or Renamed step: the write completes.
                let crashed = w.write_stepping(&mut record(crash_in), crash).is_err();
                let got = match load(&data) {
                    Loaded::Absent => 0,
                    Loaded::Valid(r) => r.generation,
                    Loaded::Damaged(m) => {
                        panic!("crash at {at:?} in write {crash_in}: {m}")
                    }
                };
                // Once the whole record stands under its name (renamed, or
                // rewritten in place) a process crash keeps it; a power
                // loss before the sync may not (then the one before).
                let in_place = crash_in == 3;
                let done = !crashed || at == Step::Renamed || (in_place && at == Step::Written);
                let want = if done { crash_in } else { crash_in - 1 };
                assert_eq!(got, want, "crash at {at:?} in write {crash_in}");
                // The node goes on from what it found.
                let mut w = HeadsWriter::new(&data, got);
                w.write(&mut record(9)).unwrap();
                let Loaded::Valid(r) = load(&data) else {
                    panic!("after a crash at {at:?} in write {crash_in}")
                };
                assert_eq!((r.generation, r.next_offset), (got + 1, 9));
            }
        }
    }

    fn record_bytes(n: u64) -> Vec<u8> {
        let mut r = record(n);
        r.generation = n;
        r.encode()
    }
}
