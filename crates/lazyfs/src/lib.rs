//! An in-memory FUSE file system that models a disk with a volatile write
//! cache, for power-loss tests (in the style of LazyFS).
//!
//! * Every file has the bytes a reader sees (`current`) and the bytes that
//!   would survive a power cut (`durable`). A write changes `current` only;
//!   `fsync`/`fdatasync` of the file copies what was written since (and the
//!   file's size) to `durable`.
//! * [`LazyFs::power_cut`] throws away everything not fsynced: each file
//!   goes back to its durable bytes and size.
//! * `sync_file_range`, which sled's `flush()` uses, never reaches a FUSE
//!   file system (the kernel sends no request for it), so it protects
//!   nothing here — exactly as on a real disk with a volatile cache.
//! * Namespace operations (create, mkdir, rename, unlink) are kept at once,
//!   like a journaling file system that commits metadata promptly; only file
//!   data and sizes are lost. This is more lenient than LazyFS's strictest
//!   mode, and says so.
//! * Files are opened with `FOPEN_DIRECT_IO` and attributes are never
//!   cached, so the kernel's page cache cannot hand back bytes the "disk"
//!   has forgotten.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Nothing is cached by the kernel: after a power cut sizes change.
const TTL: Duration = Duration::ZERO;

enum Content {
    File {
        current: Vec<u8>,
        durable: Vec<u8>,
        /// Byte ranges written since the last fsync.
        dirty: Vec<(usize, usize)>,
    },
    Dir {
        children: BTreeMap<OsString, u64>,
        parent: u64,
    },
}

struct Node {
    content: Content,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
}

impl Node {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, size, nlink) = match &self.content {
            Content::File { current, .. } => (FileType::RegularFile, current.len() as u64, 1),
            Content::Dir { .. } => (FileType::Directory, 0, 2),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm: self.perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

#[derive(Default)]
struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    fsyncs: u64,
    /// The power is off: every write and fsync fails (nothing a dying
    /// process does after the cut may become durable).
    off: bool,
    /// Power cuts so far (an fsync that spans one makes nothing durable).
    epoch: u64,
}

/// Counters reported after a power cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files that lost unsynced data.
    pub files: u64,
    /// Bytes written but never fsynced, now gone.
    pub bytes: u64,
    /// fsyncs served since the previous cut.
    pub fsyncs: u64,
}

/// Cheap to clone: clones share the file system (mount one, keep one to
/// cut the power).
#[derive(Clone)]
pub struct LazyFs {
    state: Arc<Mutex<State>>,
    /// How long an fsync takes (a real disk's flush is milliseconds; a
    /// power cut meanwhile loses what it was making durable).
    fsync_delay: Duration,
}

impl Default for LazyFs {
    fn default() -> Self {
        Self::new()
    }
}

impl LazyFs {
    /// An empty file system whose fsyncs take `fsync_delay`.
    pub fn with_fsync_delay(fsync_delay: Duration) -> Self {
        Self {
            fsync_delay,
            ..Self::new()
        }
    }

    pub fn new() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            1,
            Node {
                content: Content::Dir {
                    children: BTreeMap::new(),
                    parent: 1,
                },
                perm: 0o755,
                uid: 0,
                gid: 0,
                mtime: SystemTime::now(),
            },
        );
        Self {
            state: Arc::new(Mutex::new(State {
                nodes,
                next_ino: 2,
                fsyncs: 0,
                off: false,
                epoch: 0,
            })),
            fsync_delay: Duration::ZERO,
        }
    }

    /// The power comes back: writes and fsyncs work again.
    pub fn power_on(&self) {
        self.state.lock().expect("lock").off = false;
    }

    /// The power fails: every file goes back to what was last fsynced, and
    /// until [`LazyFs::power_on`] every write and fsync fails, so nothing
    /// the processes still running do reaches the disk (kill them, then
    /// power on).
    pub fn power_cut(&self) -> CutReport {
        let mut st = self.state.lock().expect("lock");
        st.off = true;
        st.epoch += 1;
        let mut report = CutReport {
            fsyncs: std::mem::take(&mut st.fsyncs),
            ..CutReport::default()
        };
        for node in st.nodes.values_mut() {
            if let Content::File {
                current,
                durable,
                dirty,
            } = &mut node.content
            {
                if current != durable {
                    report.files += 1;
                    report.bytes += dirty.iter().map(|(_, n)| *n as u64).sum::<u64>();
                    *current = durable.clone();
                }
                dirty.clear();
            }
        }
        report
    }
}

impl State {
    fn child(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        match self.nodes.get(&parent).map(|n| &n.content) {
            Some(Content::Dir { children, .. }) => children.get(name).copied().ok_or(Errno::ENOENT),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn children_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get_mut(&dir).map(|n| &mut n.content) {
            Some(Content::Dir { children, .. }) => Ok(children),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn add(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        content: Content,
        mode: u32,
    ) -> Result<(u64, FileAttr), Errno> {
        if self.child(parent, name).is_ok() {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let node = Node {
            content,
            perm: u16::try_from(mode & 0o7777).unwrap_or(0o644),
            uid: req.uid(),
            gid: req.gid(),
            mtime: SystemTime::now(),
        };
        let attr = node.attr(ino);
        self.nodes.insert(ino, node);
        self.children_mut(parent)?.insert(name.to_owned(), ino);
        Ok((ino, attr))
    }
}

fn file_flags() -> FopenFlags {
    FopenFlags::FOPEN_DIRECT_IO
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let st = self.state.lock().expect("lock");
        match st.child(parent.0, name) {
            Ok(ino) => reply.entry(&TTL, &st.nodes[&ino].attr(ino), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.state.lock().expect("lock");
        match st.nodes.get(&ino.0) {
            Some(n) => reply.attr(&TTL, &n.attr(ino.0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.state.lock().expect("lock");
        if st.off {
            return reply.error(Errno::EIO);
        }
        let Some(node) = st.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(m) = mode {
            node.perm = u16::try_from(m & 0o7777).unwrap_or(node.perm);
        }
        if let Some(u) = uid {
            node.uid = u;
        }
        if let Some(g) = gid {
            node.gid = g;
        }
        if let Some(size) = size {
            match &mut node.content {
                Content::File { current, .. } => {
                    // The new size becomes durable with the next fsync.
                    current.resize(usize::try_from(size).unwrap_or(usize::MAX), 0);
                }
                Content::Dir { .. } => return reply.error(Errno::EISDIR),
            }
            node.mtime = SystemTime::now();
        }
        reply.attr(&TTL, &node.attr(ino.0));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.state.lock().expect("lock");
        if st.off {
            return reply.error(Errno::EIO);
        }
        let content = Content::Dir {
            children: BTreeMap::new(),
            parent: parent.0,
        };
        match st.add(req, parent.0, name, content, mode) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.state.lock().expect("lock");
        if st.off {
            return reply.error(Errno::EIO);
        }
        let content = Content::File {
            current: Vec::new(),
            durable: Vec::new(),
            dirty: Vec::new(),
        };
        match st.add(req, parent.0, name, content, mode) {
            Ok((_, attr)) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), file_flags()),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.state.lock().expect("lock");
        if st.off {
            return reply.error(Errno::EIO);
        }
        let ino = match st.child(parent.0, name) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        if matches!(st.nodes[&ino].content, Content::Dir { .. }) {
            return reply.error(Errno::EISDIR);
        }
        // The inode stays while handles may still use it (small, tests only).
        match st.children_mut(parent.0) {
            Ok(c) => {
                c.remove(name);
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.state.lock().expect("lock");
        if st.off {
            return reply.error(Errno::EIO);
        }
        let ino = match st.child(parent.0, name) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        match &st.nodes[&ino].content {
            Content::Dir { children, .. } if !children.is_empty() => {
                return reply.error(Errno::ENOTEMPTY)
            }
            Content::Dir { .. } => {}
            Content::File { .. } => return reply.error(Errno::ENOTDIR),
        }
        st.nodes.remove(&ino);
        match st.children_mut(parent.0) {
            Ok(c) => {
                c.remove(name);
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.state.lock().expect("lock");
        if st.off {
            return reply.error(Errno::EIO);
        }
        let ino = match st.child(parent.0, name) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        if let Ok(target) = st.child(newparent.0, newname) {
            if let Some(Content::Dir { children, .. }) = st.nodes.get(&target).map(|n| &n.content) {
                if !children.is_empty() {
                    return reply.error(Errno::ENOTEMPTY);
                }
            }
        }
        if let Err(e) = st.children_mut(parent.0).map(|c| c.remove(name)) {
            return reply.error(e);
        }
        match st.children_mut(newparent.0) {
            Ok(c) => {
                c.insert(newname.to_owned(), ino);
            }
            Err(e) => return reply.error(e),
        }
        if let Some(Node {
            content: Content::Dir { parent: p, .. },
            ..
        }) = st.nodes.get_mut(&ino)
        {
            *p = newparent.0;
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let st = self.state.lock().expect("lock");
        match st.nodes.get(&ino.0).map(|n| &n.content) {
            Some(Content::File { .. }) => reply.opened(FileHandle(0), file_flags()),
            Some(Content::Dir { .. }) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let st = self.state.lock().expect("lock");
        if st.off {
            return reply.error(Errno::EIO);
        }
        match st.nodes.get(&ino.0).map(|n| &n.content) {
            Some(Content::File { current, .. }) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(current.len());
                let end = start.saturating_add(size as usize).min(current.len());
                reply.data(&current[start..end]);
            }
            Some(Content::Dir { .. }) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.state.lock().expect("lock");
        if st.off {
            return reply.error(Errno::EIO);
        }
        let Some(node) = st.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Content::File { current, dirty, .. } = &mut node.content else {
            return reply.error(Errno::EISDIR);
        };
        let Ok(start) = usize::try_from(offset) else {
            return reply.error(Errno::EFBIG);
        };
        let end = start + data.len();
        if current.len() < end {
            current.resize(end, 0);
        }
        current[start..end].copy_from_slice(data);
        dirty.push((start, data.len()));
        node.mtime = SystemTime::now();
        reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The disk takes its time; a power cut meanwhile makes nothing of
        // it durable.
        let epoch = self.state.lock().expect("lock").epoch;
        if !self.fsync_delay.is_zero() {
            std::thread::sleep(self.fsync_delay);
        }
        let mut st = self.state.lock().expect("lock");
        if st.off || st.epoch != epoch {
            return reply.error(Errno::EIO);
        }
        st.fsyncs += 1;
        if let Some(Node {
            content:
                Content::File {
                    current,
                    durable,
                    dirty,
                },
            ..
        }) = st.nodes.get_mut(&ino.0)
        {
            durable.resize(current.len(), 0);
            for (start, len) in dirty.drain(..) {
                let end = (start + len).min(current.len());
                if start < end {
                    durable[start..end].copy_from_slice(&current[start..end]);
                }
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.state.lock().expect("lock");
        let Some(Content::Dir { children, parent }) = st.nodes.get(&ino.0).map(|n| &n.content)
        else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut entries: Vec<(u64, FileType, OsString)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (*parent, FileType::Directory, "..".into()),
        ];
        for (name, child) in children {
            let kind = match st.nodes.get(child).map(|n| &n.content) {
                Some(Content::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            entries.push((*child, kind, name.clone()));
        }
        for (i, (child, kind, name)) in entries
            .into_iter()
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace operations are kept at once (see the module docs).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 22, 1 << 21, 1 << 21, 1 << 20, 1 << 19, 4096, 255, 4096);
    }
}

/// A running `gridsync-lazyfs` process mounted at a directory, for tests:
/// [`Mount::cut`] cuts the power; dropping it unmounts.
pub struct Mount {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    path: std::path::PathBuf,
}

impl Mount {
    /// Starts `bin` (the `gridsync-lazyfs` binary) on `path` (created if
    /// missing) and waits until it is mounted.
    ///
    /// # Errors
    /// FUSE is not usable here (no `/dev/fuse`, not root, no mount
    /// permission): the message says which.
    pub fn start(bin: &std::path::Path, path: &std::path::Path) -> Result<Self, String> {
        Self::start_with(bin, path, Duration::ZERO)
    }

    /// [`Mount::start`] with fsyncs that take `fsync_delay` (like a real
    /// disk, which widens the moments a power cut can catch).
    ///
    /// # Errors
    /// As [`Mount::start`].
    pub fn start_with(
        bin: &std::path::Path,
        path: &std::path::Path,
        fsync_delay: Duration,
    ) -> Result<Self, String> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        if !std::path::Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse does not exist (no FUSE on this machine)".into());
        }
        std::fs::create_dir_all(path).map_err(|e| format!("create {}: {e}", path.display()))?;
        let mut child = Command::new(bin)
            .arg(path)
            .arg(format!("--fsync-delay-ms={}", fsync_delay.as_millis()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx2.send(format!("stderr: {l}"));
            }
        });
        let stdin = child.stdin.take();
        let mut m = Self {
            child,
            stdin,
            lines,
            path: path.to_owned(),
        };
        match m.next_line(Duration::from_secs(20)) {
            Some(l) if l.starts_with("mounted") => Ok(m),
            other => {
                let _ = m.child.kill();
                let _ = m.child.wait();
                Err(format!(
                    "gridsync-lazyfs did not mount {}: {}",
                    path.display(),
                    other.unwrap_or_else(|| "no answer".into())
                ))
            }
        }
    }

    fn next_line(&self, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("stderr: ") => {
                    if !l.contains("[Not Implemented]") {
                        eprintln!("gridsync-lazyfs {l}");
                    }
                }
                Ok(l) => return Some(l),
                Err(_) => return None,
            }
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Cuts the power: every write not fsynced is gone, and writes and
    /// fsyncs fail until [`Mount::power_on`] (kill the processes using the
    /// mount in between, as a power cut would).
    ///
    /// # Panics
    /// When the file system process does not answer.
    pub fn cut(&mut self) -> CutReport {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("running");
        writeln!(stdin, "cut").expect("lazyfs takes commands");
        stdin.flush().expect("lazyfs takes commands");
        let line = self
            .next_line(Duration::from_secs(20))
            .expect("lazyfs answers a cut");
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                .unwrap_or_else(|| panic!("lazyfs answered {line:?}"))
        };
        CutReport {
            files: field("files"),
            bytes: field("bytes"),
            fsyncs: field("fsyncs"),
        }
    }

    /// The power comes back.
    ///
    /// # Panics
    /// When the file system process does not answer.
    pub fn power_on(&mut self) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("running");
        writeln!(stdin, "on").expect("lazyfs takes commands");
        stdin.flush().expect("lazyfs takes commands");
        let line = self
            .next_line(Duration::from_secs(20))
            .expect("lazyfs answers");
        assert_eq!(line, "on", "lazyfs answered {line:?}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Whether tests that need FUSE must run (CI) or may skip with a warning.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
