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
//! Durability: the commit appends its entries here, `fdatasync`s this file,
//! and only then commits sled's batch — the pointers and the checkpoint
//! `K`, which records this file's length. So every pointer sled holds
//! points at bytes already durable, and at open the file is reconciled
//! with `K` ([`reconcile`]): bytes past `K`'s length are a commit that did
//! not happen (a crash between the append and sled's commit) and are cut
//! off; a file shorter than `K` says has lost committed entries (a data
//! directory restored from copies of different times, or damage) and the
//! store refuses to open, saying so.
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

/// The open body file of a store: appended by the log writer alone, read
/// by any thread (`pread`).
pub struct BodyFile {
    file: File,
    path: PathBuf,
    /// Bytes in the file: where the next body goes.
    len: AtomicU64,
    /// Appended to since the last sync.
    dirty: AtomicBool,
}

impl BodyFile {
    /// Opens (creating it, durably, if absent) `dir`'s body file.
    ///
    /// # Errors
    /// When the file cannot be opened or created.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(BODIES_FILE);
        let created = !path.exists();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Io(format!("open {}: {e}", path.display())))?;
        if created {
            file.sync_all()
                .and_then(|()| File::open(dir)?.sync_all())
                .map_err(|e| StoreError::Io(format!("fsync new {}: {e}", path.display())))?;
        }
        let len = file
            .metadata()
            .map_err(|e| StoreError::Io(format!("stat {}: {e}", path.display())))?
            .len();
        Ok(Self {
            file,
            path,
            len: AtomicU64::new(len),
            dirty: AtomicBool::new(false),
        })
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Whether the file holds no bodies.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `entry` (a whole one-fragment entry: header, then chunk)
    /// and returns its pointer. Not durable until [`BodyFile::sync`].
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
        let position = self.len();
        self.file
            .write_all_at(entry, position)
            .map_err(|e| StoreError::Io(format!("append to {}: {e}", self.path.display())))?;
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

    /// Makes what was appended durable (`fdatasync`), if anything was.
    ///
    /// # Errors
    /// A failed sync: the commit must not go ahead.
    pub fn sync(&self) -> Result<(), StoreError> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.file.sync_data() {
                self.dirty.store(true, Ordering::Release);
                return Err(StoreError::Io(format!(
                    "fdatasync {}: {e}",
                    self.path.display()
                )));
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
        let mut body = vec![0; p.length as usize];
        self.file
            .read_exact_at(&mut body, p.position)
            .map_err(|e| StoreError::Io(format!("read {}: {e}", self.path.display())))?;
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
    /// never happened).
    fn truncate(&self, len: u64) -> Result<(), StoreError> {
        self.file
            .set_len(len)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| StoreError::Io(format!("truncate {}: {e}", self.path.display())))?;
        self.len.store(len, Ordering::Release);
        Ok(())
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
            tracing::warn!(
                file = %self.path.display(),
                bytes = len - committed,
                "cutting off log bodies no commit recorded (a crash between their write and the commit)"
            );
            self.truncate(committed)?;
        }
        Ok(())
    }
}
