//! The log's large entries, kept in one append-only file beside sled's
//! (`log-bodies` in the data directory), each named in sled by a small
//! **body pointer** under its log key.
//!
//! Why: an entry too large for a pack went into sled as 7 KiB fragments
//! (sled's unsynced blob files forbid larger values, `layout.rs`), and sled
//! wrote each of those bytes ~3.3 times (its log, then node rewrites and
//! segment cleaning) and spent ~0.8 µs of CPU per event doing so. Appended
//! to a file instead, each byte is written once and costs ~0.3 µs
//! (`cargo bench --bench log_beside_sled`; BENCHMARKS.md, "Log bodies
//! beside sled").
//!
//! Written past the page cache: a commit's entries are copied into a ring
//! of the last [`TAIL_BYTES`] appended (memory aligned to the disk's
//! blocks), and the commit writes them to the file with `O_DIRECT`, in
//! whole 4 KiB blocks — its last one padded with zeros, and written again,
//! whole, by the next commit. The readers that follow the writer (the
//! projector, the sender to the parent) read what was appended last from
//! that ring; older bodies are read from the file (`pread`, through the
//! page cache). Why: through the page cache, every 4 KiB appended was a
//! fresh page the kernel allocated, copied into and wrote back, and kept —
//! on this machine's virtual memory, where a fresh page costs 3–30 µs, the
//! largest part of a street's log writer while 1,000 children caught up
//! (BENCHMARKS.md, "Log bodies written past the page cache"). A file
//! system that refuses `O_DIRECT` (tmpfs, some FUSE ones) is written
//! through the page cache, the same bytes without the padding.
//!
//! Durability: the commit appends its entries here, `fdatasync`s this file,
//! and only then commits sled's batch — the pointers and the checkpoint
//! `K`, which records this file's length. So every pointer sled holds
//! points at bytes already durable, and at open the file is reconciled
//! with `K` ([`reconcile`]): bytes past `K`'s length are a commit that did
//! not happen (a crash between the append and sled's commit) and are cut
//! off (silently when they are only the zeros padding the last block: a
//! node stopped cleanly cuts them itself); a file shorter than `K` says
//! has lost committed entries (a data directory restored from copies of
//! different times, or damage) and the store refuses to open, saying so.
//! Rewriting the last block does not put committed bytes at risk: it
//! writes them again unchanged, and a disk writes a sector whole or not at
//! all — the same as the page cache's writeback of a partial page.
//!
//! A pointer is `0xFFFF ‖ received_at_ms:i64be ‖ position:u64be ‖
//! length:u32be ‖ checksum:16` (38 bytes; no fragment or pack begins with
//! `0xFFFF`), the checksum the first 16 bytes of the BLAKE3 hash of the
//! body, which is the whole entry as a one-fragment entry would be
//! (`parts:u16be = 1 ‖ received_at_ms ‖ chunk`). A body read back is
//! checked against it, so a damaged or mismatched file is reported as
//! such, never read as another chunk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use crate::recover::corrupt;
use crate::StoreError;

/// The file's name in the data directory.
pub const BODIES_FILE: &str = "log-bodies";

/// First two bytes of a body pointer.
const MARK: [u8; 2] = [0xFF, 0xFF];
const CHECKSUM_BYTES: usize = 16;
/// Length of a body pointer.
pub const POINTER_BYTES: usize = 2 + 8 + 8 + 4 + CHECKSUM_BYTES;

/// Whether a log value is a body pointer.
pub fn is_pointer(v: &[u8]) -> bool {
    v.len() == POINTER_BYTES && v[..2] == MARK
}

/// A body pointer's parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pointer {
    pub received_at_ms: i64,
    pub position: u64,
    pub length: u32,
    pub checksum: [u8; CHECKSUM_BYTES],
}

impl Pointer {
    pub fn decode(v: &[u8]) -> Option<Self> {
        if !is_pointer(v) {
            return None;
        }
        Some(Self {
            received_at_ms: i64::from_be_bytes(v[2..10].try_into().ok()?),
            position: u64::from_be_bytes(v[10..18].try_into().ok()?),
            length: u32::from_be_bytes(v[18..22].try_into().ok()?),
            checksum: v[22..].try_into().ok()?,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(POINTER_BYTES);
        v.extend_from_slice(&MARK);
        v.extend_from_slice(&self.received_at_ms.to_be_bytes());
        v.extend_from_slice(&self.position.to_be_bytes());
        v.extend_from_slice(&self.length.to_be_bytes());
        v.extend_from_slice(&self.checksum);
        v
    }

    /// The entry's header as a one-fragment entry has it (what a reader
    /// wanting only the receipt time needs).
    pub fn header(&self) -> Vec<u8> {
        crate::entries::entry_header(1, self.received_at_ms).to_vec()
    }
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_BYTES] {
    blake3::hash(body).as_bytes()[..CHECKSUM_BYTES]
        .try_into()
        .expect("16 bytes")
}

/// Bodies reach the file in whole blocks of this size, from memory
/// aligned to it, past the page cache (`O_DIRECT`) where the file system
/// allows; the last block of a commit is padded with zeros and written
/// again, whole, by the next.
pub const BLOCK_BYTES: usize = 4096;
/// The bytes appended last, kept in memory for the readers that follow the
/// writer (the projector, the sender to the parent): with the file written
/// past the page cache, they would otherwise read every body back from the
/// disk.
pub const TAIL_BYTES: usize = 8 << 20;
const TAIL_BLOCKS: u64 = (TAIL_BYTES / BLOCK_BYTES) as u64;
const BLOCK: u64 = BLOCK_BYTES as u64;

#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; BLOCK_BYTES]);

/// The ring of the bytes appended last: file block `b` is held in
/// `blocks[(b - base) % TAIL_BLOCKS]`, grown block by block as it fills
/// (memory is touched only as it is used).
struct Tail {
    blocks: Vec<Block>,
    /// The first block held (where the ring started at open).
    base: u64,
    /// Bytes before this were never held (the file's, before its last
    /// partial block at open).
    held_from: u64,
    /// End of the bytes copied in: `[end - TAIL_BYTES, end)` is held, less
    /// what lies before `held_from`.
    end: u64,
}

impl Tail {
    fn new(len: u64) -> Self {
        let base = len / BLOCK;
        Self {
            blocks: Vec::new(),
            base,
            held_from: base * BLOCK,
            end: base * BLOCK,
        }
    }

    /// The first byte still held: the newest block's slot was an older
    /// block's, whose bytes past `end`'s offset in it are gone (the
    /// padding zeroed them), so the window starts a whole lap before the
    /// newest block's end, not before `end`.
    fn window_start(&self) -> u64 {
        self.held_from
            .max((self.end.div_ceil(BLOCK) * BLOCK).saturating_sub(TAIL_BLOCKS * BLOCK))
    }

    /// The ring slot of file block `b` (grown to it: blocks are reached
    /// in order).
    fn slot(&mut self, b: u64) -> &mut Block {
        let i = usize::try_from((b - self.base) % TAIL_BLOCKS).expect("fits");
        while self.blocks.len() <= i {
            self.blocks.push(Block([0; BLOCK_BYTES]));
        }
        &mut self.blocks[i]
    }

    fn held(&self, b: u64) -> &Block {
        &self.blocks[usize::try_from((b - self.base) % TAIL_BLOCKS).expect("fits")]
    }

    /// Copies `bytes` in at `end` (the caller keeps what is not in the
    /// file yet within the ring).
    fn put(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (b, at) = (self.end / BLOCK, (self.end % BLOCK) as usize);
            let n = bytes.len().min(BLOCK_BYTES - at);
            self.slot(b).0[at..at + n].copy_from_slice(&bytes[..n]);
            self.end += n as u64;
            bytes = &bytes[n..];
        }
    }

    /// `out` filled with the held bytes at `position` (within the window).
    fn copy_out(&self, mut position: u64, out: &mut Vec<u8>, len: usize) {
        while out.len() < len {
            let (b, at) = (position / BLOCK, (position % BLOCK) as usize);
            let n = (len - out.len()).min(BLOCK_BYTES - at);
            out.extend_from_slice(&self.held(b).0[at..at + n]);
            position += n as u64;
        }
    }
}

/// The writing side of the file: only the log writer holds it.
struct Out {
    file: File,
    /// `file` was opened `O_DIRECT` (block-aligned writes only).
    direct: bool,
    /// Bytes `[0, written)` are in the file.
    written: u64,
    /// The file's length on disk (past `written` by the zeros padding the
    /// last block).
    physical: u64,
}

/// The open body file of a store: appended by the log writer alone, read
/// by any thread (the bytes appended last from memory, the rest with
/// `pread`).
pub struct BodyFile {
    /// For reads (through the page cache).
    reader: File,
    path: PathBuf,
    out: Mutex<Out>,
    tail: RwLock<Tail>,
    /// Bytes appended: where the next body goes.
    len: AtomicU64,
    /// Appended to since the last sync.
    dirty: AtomicBool,
    reads_held: AtomicU64,
    reads_file: AtomicU64,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

/// Opens `path` for writing past the page cache, or (a file system that
/// refuses `O_DIRECT`: tmpfs, some FUSE ones) through it.
fn open_out(path: &Path, try_direct: bool) -> Result<(File, bool), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    if try_direct {
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(i32::try_from(rustix::fs::OFlags::DIRECT.bits()).expect("a flag"))
            .open(path);
        if let Ok(f) = direct {
            return Ok((f, true));
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map(|f| (f, false))
        .map_err(|e| io_err("open", path, e))
}

impl BodyFile {
    /// Opens (creating it, durably, if absent) `dir`'s body file.
    ///
    /// # Errors
    /// When the file cannot be opened or created.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_as(dir, true)
    }

    /// [`BodyFile::open`], past the page cache only if `try_direct`.
    fn open_as(dir: &Path, try_direct: bool) -> Result<Self, StoreError> {
        let path = dir.join(BODIES_FILE);
        let created = !path.exists();
        let reader = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err("open", &path, e))?;
        if created {
            reader
                .sync_all()
                .and_then(|()| File::open(dir)?.sync_all())
                .map_err(|e| io_err("fsync new", &path, e))?;
        }
        let len = reader
            .metadata()
            .map_err(|e| io_err("stat", &path, e))?
            .len();
        let (file, direct) = open_out(&path, try_direct)?;
        let b = Self {
            reader,
            path,
            out: Mutex::new(Out {
                file,
                direct,
                written: len,
                physical: len,
            }),
            tail: RwLock::new(Tail::new(len)),
            len: AtomicU64::new(len),
            dirty: AtomicBool::new(false),
            reads_held: AtomicU64::new(0),
            reads_file: AtomicU64::new(0),
        };
        b.reset(len)?;
        Ok(b)
    }

    /// The file taken as `len` bytes long: its last partial block read
    /// into the tail (the next write rewrites that block whole).
    fn reset(&self, len: u64) -> Result<(), StoreError> {
        let start = len / BLOCK * BLOCK;
        let mut last = vec![0; (len - start) as usize];
        self.reader
            .read_exact_at(&mut last, start)
            .map_err(|e| io_err("read", &self.path, e))?;
        let mut out = self.out.lock().expect("lock");
        let mut tail = self.tail.write().expect("lock");
        *tail = Tail::new(len);
        tail.put(&last);
        out.written = len;
        self.len.store(len, Ordering::Release);
        Ok(())
    }

    /// Bytes in the file: where the next body goes.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Whether the file holds no bodies.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether bodies are written past the page cache (`O_DIRECT`).
    pub fn direct(&self) -> bool {
        self.out.lock().expect("lock").direct
    }

    /// Bodies read so far from memory (the tail) and from the file.
    pub fn reads(&self) -> (u64, u64) {
        (
            self.reads_held.load(Ordering::Relaxed),
            self.reads_file.load(Ordering::Relaxed),
        )
    }

    /// Appends `entry` (a whole one-fragment entry: header, then chunk)
    /// and returns its pointer. Not in the file, nor durable, until
    /// [`BodyFile::sync`] (or written early when the tail fills).
    ///
    /// # Errors
    /// A failed write (the file is then cut back at the next open).
    pub fn append(&self, entry: &[u8]) -> Result<Vec<u8>, StoreError> {
        let received_at_ms = entry
            .get(2..10)
            .map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| StoreError::Failed("a log entry without its header".into()))?;
        let length = u32::try_from(entry.len())
            .map_err(|_| StoreError::Failed("a log entry over 4 GiB".into()))?;
        let mut out = self.out.lock().expect("lock");
        // Where the ring ends, not `len`: an append that failed part-way
        // (a write error as the tail filled) left bytes no pointer names,
        // which the file keeps like padding.
        let position = self.tail.read().expect("lock").end;
        let mut rest = entry;
        while !rest.is_empty() {
            let end = self.tail.read().expect("lock").end;
            // What is not in the file yet must stay in the ring: the
            // block `written` falls in, and every byte after it.
            let unwritten = end - out.written / BLOCK * BLOCK;
            let room = TAIL_BLOCKS * BLOCK - unwritten;
            if room == 0 {
                self.write_out(&mut out, false)?;
                continue;
            }
            let n = usize::try_from(room).unwrap_or(usize::MAX).min(rest.len());
            self.tail.write().expect("lock").put(&rest[..n]);
            rest = &rest[n..];
        }
        self.len
            .store(position + u64::from(length), Ordering::Release);
        self.dirty.store(true, Ordering::Release);
        Ok(Pointer {
            received_at_ms,
            position,
            length,
            checksum: checksum(entry),
        }
        .encode())
    }

    /// Writes what is held and not yet in the file: every whole block, and
    /// with `all` the last partial one too (padded with zeros, or exactly
    /// the bytes when the file is written through the page cache).
    fn write_out(&self, out: &mut Out, all: bool) -> Result<(), StoreError> {
        if all && out.direct {
            // The padding: whatever an earlier lap left in the last block.
            let mut tail = self.tail.write().expect("lock");
            let end = tail.end;
            let at = (end % BLOCK) as usize;
            if at != 0 {
                tail.slot(end / BLOCK).0[at..].fill(0);
            }
        }
        let tail = self.tail.read().expect("lock");
        let end = tail.end;
        let (from, to) = if out.direct {
            let to = if all {
                end.div_ceil(BLOCK) * BLOCK
            } else {
                end / BLOCK * BLOCK
            };
            (out.written / BLOCK * BLOCK, to)
        } else {
            (out.written, if all { end } else { end / BLOCK * BLOCK })
        };
        if to <= from {
            return Ok(());
        }
        let mut at = from;
        while at < to {
            // At most 1,024 slices a call (IOV_MAX).
            let mut slices = Vec::with_capacity(64);
            let mut p = at;
            while p < to && slices.len() < 1024 {
                let (b, off) = (p / BLOCK, (p % BLOCK) as usize);
                let n = ((to - p) as usize).min(BLOCK_BYTES - off);
                slices.push(std::io::IoSlice::new(&tail.held(b).0[off..off + n]));
                p += n as u64;
            }
            let n = rustix::io::pwritev(&out.file, &slices, at);
            match n {
                Ok(0) => return Err(io_err("append to", &self.path, "wrote nothing")),
                Ok(n) => at += n as u64,
                Err(rustix::io::Errno::INVAL) if out.direct => {
                    // The file system took O_DIRECT at open but not for
                    // this write: write through the page cache from now.
                    drop(slices);
                    tracing::info!(file = %self.path.display(), "log bodies written through the page cache (O_DIRECT refused)");
                    let (file, direct) = open_out(&self.path, false)?;
                    out.file = file;
                    out.direct = direct;
                    drop(tail);
                    return self.write_out(out, all);
                }
                Err(e) => return Err(io_err("append to", &self.path, e)),
            }
        }
        out.written = end.min(to);
        out.physical = out.physical.max(to);
        Ok(())
    }

    /// Makes what was appended durable (written, then `fdatasync`), if
    /// anything was.
    ///
    /// # Errors
    /// A failed write or sync: the commit must not go ahead.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.write(true)
    }

    /// Writes what was appended to the file, and with `durable` makes it
    /// durable ([`BodyFile::sync`]); without, a crash may lose it (the
    /// unsafe modes that skip syncs: a store stopped cleanly still holds
    /// it).
    ///
    /// # Errors
    /// A failed write or sync: the commit must not go ahead.
    pub fn write(&self, durable: bool) -> Result<(), StoreError> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            let mut out = self.out.lock().expect("lock");
            let done = self.write_out(&mut out, true).and_then(|()| {
                if durable {
                    out.file
                        .sync_data()
                        .map_err(|e| io_err("fdatasync", &self.path, e))
                } else {
                    Ok(())
                }
            });
            if let Err(e) = done {
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Log entry `offset`'s bytes from the file, checked against its
    /// pointer `v`.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the pointer is malformed, the body
    /// lies past the file's end, or its bytes do not match the checksum.
    pub fn read(&self, offset: u64, v: &[u8]) -> Result<Vec<u8>, StoreError> {
        let p = Pointer::decode(v)
            .ok_or_else(|| corrupt(format!("log entry {offset}: malformed body pointer")))?;
        let end = p.position.saturating_add(u64::from(p.length));
        let file_len = self.len();
        if end > file_len {
            return Err(corrupt(format!(
                "log entry {offset}: its body ({} bytes at {}) lies past the end of {} ({file_len} bytes)",
                p.length,
                p.position,
                self.path.display()
            )));
        }
        let mut body = Vec::with_capacity(p.length as usize);
        {
            let tail = self.tail.read().expect("lock");
            if p.position >= tail.window_start() && end <= tail.end {
                tail.copy_out(p.position, &mut body, p.length as usize);
            }
        }
        if body.is_empty() && p.length > 0 {
            body.resize(p.length as usize, 0);
            self.reader
                .read_exact_at(&mut body, p.position)
                .map_err(|e| io_err("read", &self.path, e))?;
            self.reads_file.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reads_held.fetch_add(1, Ordering::Relaxed);
        }
        if checksum(&body) != p.checksum {
            return Err(corrupt(format!(
                "log entry {offset}: its body at {} in {} does not match its checksum (altered or damaged)",
                p.position,
                self.path.display()
            )));
        }
        Ok(body)
    }

    /// Cuts the file back to `len` bytes, durably (bodies of a commit that
    /// never happened, or the padding of its last block).
    fn truncate(&self, len: u64) -> Result<(), StoreError> {
        self.reader
            .set_len(len)
            .and_then(|()| self.reader.sync_all())
            .map_err(|e| io_err("truncate", &self.path, e))?;
        self.out.lock().expect("lock").physical = len;
        self.reset(len)
    }

    /// Reconciles the file with the length the last commit recorded
    /// (`committed`; `None` when no commit has recorded one, so no pointer
    /// exists): longer is cut back, shorter refuses the open.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the file is shorter than committed.
    pub fn reconcile(&self, committed: Option<u64>) -> Result<(), StoreError> {
        let committed = committed.unwrap_or(0);
        let len = self.len();
        if len < committed {
            return Err(corrupt(format!(
                "{} holds {len} bytes but the log's last commit wrote it up to {committed}: \
                 committed log entries are missing from it. It was damaged, or the data directory \
                 was put back together from copies taken at different times; restore the whole \
                 data directory from one copy taken while gridsync was stopped",
                self.path.display()
            )));
        }
        if len > committed {
            // Zeros up to the end of the last commit's block are its
            // padding (a node stopped without cutting it, or a crash).
            let padding = len <= committed.div_ceil(BLOCK) * BLOCK && {
                let mut extra = vec![0; (len - committed) as usize];
                self.reader.read_exact_at(&mut extra, committed).is_ok()
                    && extra.iter().all(|&b| b == 0)
            };
            if !padding {
                tracing::warn!(
                    file = %self.path.display(),
                    bytes = len - committed,
                    "cutting off log bodies no commit recorded (a crash between their write and the commit)"
                );
            }
            self.truncate(committed)?;
        }
        Ok(())
    }
}

impl Drop for BodyFile {
    /// The file left exactly as long as what was written to it, without
    /// the last block's padding (best effort: the next open cuts it off
    /// anyway).
    fn drop(&mut self) {
        let out = self
            .out
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if out.physical > out.written {
            let _ = self.reader.set_len(out.written);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// An entry of `len` bytes (at least a header's) of `rng`'s.
    fn entry(rng: &mut rand::rngs::StdRng, len: usize) -> Vec<u8> {
        let mut e = crate::entries::entry_header(1, 1_700_000_000_000).to_vec();
        e.resize(len.max(e.len()), 0);
        rng.fill(&mut e[10..]);
        e
    }

    fn size(rng: &mut rand::rngs::StdRng, i: usize) -> usize {
        if i.is_multiple_of(100) {
            return TAIL_BYTES + rng.gen_range(1..3 * BLOCK_BYTES);
        }
        match i % 7 {
            0 => BLOCK_BYTES * rng.gen_range(1..4),
            1 | 2 => rng.gen_range(10..600),
            _ => rng.gen_range(600..60_000),
        }
    }

    /// Every body reads back as appended — those appended last from
    /// memory, older ones from the file, ones larger than the tail from
    /// the file — and the file holds exactly the bodies (then only the
    /// zeros padding its last block, cut off at close), written past the
    /// page cache or through it alike.
    #[test]
    fn bodies_read_back_as_appended_from_memory_and_from_the_file() {
        for try_direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let b = BodyFile::open_as(dir.path(), try_direct).unwrap();
            if !try_direct {
                assert!(!b.direct());
            }
            let mut model = Vec::new();
            let mut kept = Vec::new();
            for i in 0..400 {
                let n = size(&mut rng, i);
                let e = entry(&mut rng, n);
                let p = b.append(&e).unwrap();
                model.extend_from_slice(&e);
                kept.push((p, e));
                if rng.gen_range(0..3) == 0 || i == 399 {
                    b.sync().unwrap();
                    let file = std::fs::read(dir.path().join(BODIES_FILE)).unwrap();
                    assert_eq!(file[..model.len()], model[..], "the file holds the bodies");
                    let pad = &file[model.len()..];
                    assert!(pad.len() < BLOCK_BYTES && pad.iter().all(|&x| x == 0));
                    assert!(b.direct() || pad.is_empty());
                    // Those the tail may still hold and the first it
                    // no longer does, while the writer goes on: the
                    // window's edge.
                    let edge = (model.len() as u64).saturating_sub(TAIL_BLOCKS * BLOCK + 2 * BLOCK);
                    for (p, e) in kept.iter().rev() {
                        assert_eq!(&b.read(0, p).unwrap(), e);
                        if Pointer::decode(p).unwrap().position < edge {
                            break;
                        }
                    }
                }
            }
            assert_eq!(b.len(), model.len() as u64);
            for (p, e) in &kept {
                assert_eq!(&b.read(0, p).unwrap(), e);
            }
            let (held, file) = b.reads();
            assert!(
                held > 0 && file > 0,
                "{held} from memory, {file} from the file"
            );
            drop(b);
            assert_eq!(
                std::fs::metadata(dir.path().join(BODIES_FILE))
                    .unwrap()
                    .len(),
                model.len() as u64,
                "the padding cut off at close"
            );
            // Reopened, the bodies read back, and more follow them.
            let b = BodyFile::open_as(dir.path(), try_direct).unwrap();
            b.reconcile(Some(model.len() as u64)).unwrap();
            for (p, e) in &kept {
                assert_eq!(&b.read(0, p).unwrap(), e);
            }
            let e = entry(&mut rng, 5000);
            let p = b.append(&e).unwrap();
            b.sync().unwrap();
            model.extend_from_slice(&e);
            let file = std::fs::read(dir.path().join(BODIES_FILE)).unwrap();
            assert_eq!(file[..model.len()], model[..]);
            assert_eq!(b.read(0, &p).unwrap(), e);
        }
    }

    /// A body at the far edge of what the tail holds — in the block whose
    /// slot the newest, partial block took over — reads back as it was
    /// appended, after the commit that padded that newest block.
    #[test]
    fn a_body_at_the_tails_far_edge_reads_back_after_a_padded_commit() {
        for try_direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let b = BodyFile::open_as(dir.path(), try_direct).unwrap();
            let first = entry(&mut rng, 1000);
            let edge = entry(&mut rng, 2000);
            b.append(&first).unwrap();
            let p = b.append(&edge).unwrap();
            b.sync().unwrap();
            // The tail then ends 500 bytes into its first block's slot
            // again: `edge` (bytes 1,000–3,000) is still held.
            let fill = entry(&mut rng, TAIL_BYTES + 500 - 3000);
            b.append(&fill).unwrap();
            b.sync().unwrap();
            assert_eq!(b.len(), TAIL_BLOCKS * BLOCK + 500);
            assert_eq!(b.read(0, &p).unwrap(), edge);
        }
    }

    /// The padding a crash leaves (no close to cut it) is cut at the next
    /// open; so are bodies no commit recorded.
    #[test]
    fn what_lies_past_the_last_commit_is_cut_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let e = entry(&mut rng, 1234);
        let b = BodyFile::open(dir.path()).unwrap();
        let p = b.append(&e).unwrap();
        b.sync().unwrap();
        let committed = b.len();
        // A crash: the padding stays (no close), then bodies of a commit
        // that never happened.
        std::mem::forget(b);
        for extra in [0usize, 700] {
            let b = BodyFile::open(dir.path()).unwrap();
            if extra > 0 {
                b.append(&entry(&mut rng, extra)).unwrap();
                b.sync().unwrap();
                std::mem::forget(b);
                continue;
            }
            b.reconcile(Some(committed)).unwrap();
            assert_eq!(b.len(), committed);
            assert_eq!(b.read(0, &p).unwrap(), e);
        }
        let b = BodyFile::open(dir.path()).unwrap();
        assert!(b.len() > committed);
        b.reconcile(Some(committed)).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join(BODIES_FILE))
                .unwrap()
                .len(),
            committed
        );
        assert_eq!(b.read(0, &p).unwrap(), e);
    }

    /// Readers reading committed bodies while the writer appends and
    /// laps the tail never see another body's bytes (every read is
    /// checked against its checksum).
    #[test]
    fn readers_racing_the_writer_read_only_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let b = std::sync::Arc::new(BodyFile::open(dir.path()).unwrap());
        let committed = std::sync::Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (b, committed, done) = (b.clone(), committed.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(r);
                    let mut n = 0u64;
                    while !done.load(Ordering::Acquire) {
                        let p = {
                            let c = committed.lock().unwrap();
                            if c.is_empty() {
                                continue;
                            }
                            // The newest ~12 MiB: across the tail's
                            // edge, where the writer laps it.
                            let back = rng.gen_range(0..c.len().min(280));
                            c[c.len() - 1 - back].clone()
                        };
                        b.read(0, &p).unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut appended = Vec::new();
        for i in 0..600 {
            let n = rng.gen_range(10..90_000);
            let e = entry(&mut rng, n);
            appended.push(b.append(&e).unwrap());
            if i % 4 == 3 {
                b.sync().unwrap();
                committed.lock().unwrap().append(&mut appended);
            }
        }
        done.store(true, Ordering::Release);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
    }
}
