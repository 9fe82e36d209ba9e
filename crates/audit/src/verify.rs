//! `audit verify`: a node's data checked without trusting the node.
//!
//! Everything here reads a [`Kv`] directly — never through `Store::open`,
//! which stops at the first problem — so one run reports every problem it
//! finds, with the origin and seq at fault. It runs on a copy of the data
//! directory ([`crate::data::open_copy`]), so the audited node's files are
//! never modified.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use gridsync_model::SignedHead;
use gridsync_store::kv::Kv;
use gridsync_store::{heads_file, layout};

use gridsync_deploy::topology::Topology;

use crate::reference::Reference;

mod chain;
mod entry;
mod index;
mod report;
mod runs;

pub use report::{AuditReport, OriginReport, Problem};

use chain::Chain;
use index::{IndexedChunk, OriginIds};
use runs::Run;

/// Which chunks' signatures an audit checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Signatures {
    /// Every chunk's own signed head: also finds an older head's signature
    /// bytes altered or swapped (what a parent re-fetching the log would
    /// refuse).
    #[default]
    All,
    /// The newest head of each unbroken run of an origin's chain (and of
    /// each key the topology gives it): every event of the run is hashed
    /// into that head through the links, so its one signature vouches for
    /// all of them — what `serve` checks beside its work.
    Newest,
}

/// How an audit runs: `threads` check entries in parallel (the report is
/// the same for any number) and which signatures it checks.
#[derive(Clone, Copy, Debug)]
pub struct How {
    pub threads: usize,
    pub signatures: Signatures,
}

impl Default for How {
    fn default() -> Self {
        Self {
            threads: threads(),
            signatures: Signatures::All,
        }
    }
}

/// Verifies everything in `kv` as the log of `node` (when given: origins
/// must be in its subtree), against `reference` heads when given.
pub fn verify(
    kv: &dyn Kv,
    topology: &Topology,
    node: Option<&str>,
    reference: Option<&Reference>,
    progress: &dyn Fn(u64),
) -> AuditReport {
    let refs: Vec<(&str, &Reference)> = reference
        .map(|r| ("the reference", r))
        .into_iter()
        .collect();
    verify_with(kv, topology, node, &refs, None, How::default(), progress)
}

/// [`verify`] for a data directory's database (`kv`, a copy of
/// `data_dir/db`): also held against the node's own heads record beside it
/// — the log must reach every head in it and hold as many entries (sled
/// may recover a damaged log to an earlier point without a word). A
/// damaged record is itself a problem (`heads_record_damaged`).
pub fn verify_data_dir(
    kv: &dyn Kv,
    data_dir: &Path,
    topology: &Topology,
    (node, reference): (Option<&str>, Option<&Reference>),
    how: How,
    progress: &dyn Fn(u64),
) -> AuditReport {
    let (record, damaged) = match heads_file::load(data_dir) {
        heads_file::Loaded::Absent => (None, None),
        heads_file::Loaded::Valid(r) => (Some(r), None),
        heads_file::Loaded::Damaged(m) => (None, Some(m)),
    };
    let record_ref = record.as_ref().map(crate::reference::from_heads_record);
    let mut refs: Vec<(&str, &Reference)> = Vec::new();
    if let Some(r) = reference {
        refs.push(("the reference", r));
    }
    if let Some(r) = &record_ref {
        refs.push(("the node's heads record", r));
    }
    let entries = record.as_ref().map(|r| r.next_offset);
    let mut report = verify_with(kv, topology, node, &refs, entries, how, progress);
    if let Some(m) = damaged {
        report.problem("heads_record_damaged", None, None, None, m);
    }
    report
}

/// What a log is held against: heads kept outside it (`(source, heads)`:
/// a parent's status, the node's own heads record, an auditor's checkpoint)
/// and, from the heads record, how many log entries it had.
///
/// Reference origins outside `node`'s subtree are not the audited node's
/// business and are skipped (a parent's status lists its whole subtree).
pub fn verify_with(
    kv: &dyn Kv,
    topology: &Topology,
    node: Option<&str>,
    references: &[(&str, &Reference)],
    entries_expected: Option<u64>,
    how: How,
    progress: &dyn Fn(u64),
) -> AuditReport {
    let mut a = Auditor {
        topology,
        threads: how.threads.max(1),
        signatures: how.signatures,
        runs: BTreeMap::new(),
        heads_to_verify: Vec::new(),
        // Origins ever below the node (a moved community's earlier history
        // stays in its former street's log).
        subtree: node.map(|n| topology.historic_subtree(n).into_iter().collect()),
        report: AuditReport::default(),
        chains: BTreeMap::new(),
        wanted: HashMap::new(),
        index_expected: Vec::new(),
        origins: OriginIds::default(),
    };
    for (_, refs) in references {
        for (origin, r) in refs.iter() {
            a.wanted.entry(origin.clone()).or_default().insert(r.seq);
        }
    }
    a.read_log(kv, progress);
    a.verify_held_heads();
    a.summarise_origins();
    a.check_heads_table(kv);
    a.check_index(kv);
    a.check_evidence(kv);
    for (source, refs) in references {
        a.check_reference(source, refs);
    }
    if let Some(n) = entries_expected {
        a.check_entry_count(n);
    }
    a.report
}

/// Threads an audit uses: one per core.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// One audit in progress.
struct Auditor<'a> {
    topology: &'a Topology,
    /// Threads checking entries (the machine's cores).
    threads: usize,
    signatures: Signatures,
    /// With [`Signatures::Newest`]: per origin, the newest head of the run
    /// of its chain being read.
    runs: BTreeMap<String, Run>,
    /// Heads that end a run (or stand alone), to verify after the log is
    /// read, in the order they were found.
    heads_to_verify: Vec<Run>,
    subtree: Option<BTreeSet<String>>,
    report: AuditReport,
    chains: BTreeMap<String, Chain>,
    /// Per origin, the seqs references name: their whole hashes are kept.
    wanted: HashMap<String, BTreeSet<u64>>,
    /// The chunk index the log implies, one entry per chunk.
    index_expected: Vec<IndexedChunk>,
    /// Origins named in the log or the index, by [`IndexedChunk`]'s id.
    origins: OriginIds,
}

/// What reading a page found, in log order: a whole entry or a problem
/// (kind, offset, message) with the reading itself.
enum Item {
    Entry(Pending),
    Problem(&'static str, Option<u64>, String),
}

/// A log entry being reassembled from its fragments.
struct Pending {
    offset: u64,
    bytes: Vec<u8>,
    parts: u16,
}

impl Auditor<'_> {
    /// The log, entry by entry (reassembled from its fragments), tolerating
    /// damage: missing entries and stray fragments are problems, not stops.
    /// A reader thread reads the next pages while each page read is checked
    /// by the worker threads and then applied in log order.
    fn read_log(&mut self, kv: &dyn Kv, progress: &dyn Fn(u64)) {
        // One page read ahead (bounded: memory holds at most three).
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Item>>(1);
        std::thread::scope(|s| {
            s.spawn(move || read_pages(kv, &tx));
            for items in rx {
                self.apply_items(items);
                progress(self.report.events);
            }
        });
    }

    /// A page's entries checked in parallel, then everything applied in
    /// log order.
    fn apply_items(&mut self, items: Vec<Item>) {
        let whole = |p: &Pending| !(p.parts > 1 && p.bytes.is_empty());
        let entries: Vec<(u64, &[u8])> = items
            .iter()
            .filter_map(|i| match i {
                Item::Entry(p) if whole(p) => Some((p.offset, &p.bytes[..])),
                _ => None,
            })
            .collect();
        let mut examined =
            entry::examine_all(&entries, self.topology, self.threads, self.signatures).into_iter();
        for item in &items {
            match item {
                Item::Problem(kind, offset, m) => {
                    self.report.problem(kind, None, None, *offset, m.clone());
                }
                Item::Entry(p) if !whole(p) => {
                    let m = "fragments missing".into();
                    self.report
                        .problem("missing_entry", None, None, Some(p.offset), m);
                }
                Item::Entry(p) => {
                    self.report.entries += 1;
                    let e = examined.next().expect("one result per entry");
                    self.apply_entry(p.offset, e);
                }
            }
        }
    }

    /// Per origin: events, seqs and head as the log has them.
    fn summarise_origins(&mut self) {
        let mut problems: HashMap<&str, u64> = HashMap::new();
        for o in self
            .report
            .problems
            .iter()
            .filter_map(|p| p.origin.as_deref())
        {
            *problems.entry(o).or_insert(0) += 1;
        }
        let origins = self.chains.iter().map(|(origin, c)| {
            let r = OriginReport {
                events: c.events,
                first_seq: c.first,
                last_seq: c.seq,
                head_hash: hex::encode(c.hash),
                problems: problems.get(origin.as_str()).copied().unwrap_or(0),
            };
            (origin.clone(), r)
        });
        self.report.origins = origins.collect();
    }

    /// The heads table must say what the log says.
    fn check_heads_table(&mut self, kv: &dyn Kv) {
        let entries = match kv.scan(&[layout::HEAD], &[layout::HEAD], usize::MAX) {
            Ok(e) => e,
            Err(e) => {
                let m = format!("cannot read the heads table: {e}");
                return self.report.problem("undecodable", None, None, None, m);
            }
        };
        let mut seen = BTreeSet::new();
        for (k, v) in entries {
            let origin = String::from_utf8_lossy(&k[1..]).into_owned();
            seen.insert(origin.clone());
            let parsed = (v.len() >= 40).then(|| {
                (
                    u64::from_be_bytes(v[..8].try_into().expect("8")),
                    <[u8; 32]>::try_from(&v[8..40]).expect("32"),
                    SignedHead::decode(&v[40..]).is_ok(),
                )
            });
            let message = match (parsed, self.chains.get(&origin)) {
                (Some((seq, hash, true)), Some(c)) if seq == c.seq && hash == c.hash => continue,
                (Some((seq, _, _)), Some(c)) => format!("the heads table says seq {seq} but the log's chain ends at seq {} (cut, altered or reordered)", c.seq),
                (Some((seq, _, _)), None) => format!("the heads table lists seq {seq} but the log holds no events of {origin}"),
                (None, _) => "malformed heads entry".into(),
            };
            let seq = parsed.map(|(seq, _, _)| seq);
            self.report
                .problem("heads_mismatch", Some(&origin), seq, None, message);
        }
        let missing: Vec<(String, u64)> = self
            .chains
            .iter()
            .filter(|(o, _)| !seen.contains(*o))
            .map(|(o, c)| (o.clone(), c.seq))
            .collect();
        for (origin, seq) in missing {
            let m = "the heads table lacks this origin".into();
            self.report
                .problem("heads_mismatch", Some(&origin), Some(seq), None, m);
        }
    }

    /// Equivocation evidence the node recorded.
    fn check_evidence(&mut self, kv: &dyn Kv) {
        let summary = [layout::EVIDENCE_SUMMARY];
        let Ok(entries) = kv.scan(&summary, &summary, 10_000) else {
            return;
        };
        for (k, _) in entries {
            let (origin, seq) = origin_seq(&k);
            let m =
                "the node holds evidence that this origin signed two different events at this seq"
                    .into();
            self.report
                .problem("equivocation_evidence", origin.as_deref(), seq, None, m);
        }
    }

    /// The log must reach every head held elsewhere, with the same hash.
    fn check_reference(&mut self, source: &str, refs: &Reference) {
        for (origin, r) in refs {
            if self.subtree.as_ref().is_some_and(|s| !s.contains(origin)) {
                continue;
            }
            if r.signed_by_origin(origin, self.topology) == Some(false) {
                let m = format!("{source}: the head's signature does not verify");
                self.report
                    .problem("bad_signature", Some(origin), Some(r.seq), None, m);
                continue;
            }
            let (kind, seq, message) = match self.chains.get(origin) {
                None => (
                    "truncated",
                    r.seq,
                    format!(
                        "{source} says {origin} reached seq {} but the log holds none of it",
                        r.seq
                    ),
                ),
                Some(c) if c.seq < r.seq => (
                    "truncated",
                    c.seq.saturating_add(1),
                    format!(
                        "the log stops at seq {} short of seq {} in {source} (events cut off)",
                        c.seq, r.seq
                    ),
                ),
                Some(c) => {
                    if c.kept.get(&r.seq).map(hex::encode).as_deref() == Some(r.hash.as_str()) {
                        continue;
                    }
                    (
                        "fork",
                        r.seq,
                        format!("the event at seq {} differs from {source}", r.seq),
                    )
                }
            };
            self.report
                .problem(kind, Some(origin), Some(seq), None, message);
        }
    }

    fn check_entry_count(&mut self, n: u64) {
        if self.report.entries < n {
            let m = format!(
                "the log has {} entries but the heads record says {n} (entries cut off)",
                self.report.entries
            );
            let at = Some(self.report.entries);
            self.report.problem("truncated", None, None, at, m);
        }
    }

    /// One log entry as examined on its own ([`entry::examine`]): counted,
    /// in the subtree, verified on its own (links, canonical envelopes,
    /// signature), then linked onto its origin's chain.
    fn apply_entry(&mut self, offset: u64, examined: entry::Examined) {
        use gridsync_model::ChunkError as E;
        let mut c = match examined {
            entry::Examined::Undecodable(m) => {
                return self
                    .report
                    .problem("undecodable", None, None, Some(offset), m);
            }
            entry::Examined::Chunk(c) => c,
        };
        let (origin, first, last) = (c.origin.as_str(), c.first, c.last);
        let id = self.origins.id(origin);
        self.index_expected.push((id, last, offset, first));
        self.report.events += c.events;
        if self.subtree.as_ref().is_some_and(|s| !s.contains(origin)) {
            let m = format!("origin {origin} is not in the audited node's subtree");
            self.report
                .problem("foreign_origin", Some(origin), Some(first), Some(offset), m);
        }
        let Some(checked) = &c.checked else {
            let m =
                format!("origin {origin} is not in the topology; its events cannot be verified");
            return self.report.problem(
                "unknown_origin",
                Some(origin),
                Some(first),
                Some(offset),
                m,
            );
        };
        // A verifiable origin is reported even if none of its chunks verify.
        if !self.chains.contains_key(origin) {
            self.chains.insert(origin.to_owned(), Chain::empty());
        }
        let (prev, hashes) = match checked {
            Ok(v) => v,
            Err(entry::Failure::FirstPrev(m)) => {
                return self.report.problem(
                    "undecodable",
                    Some(origin),
                    Some(first),
                    Some(offset),
                    m.clone(),
                );
            }
            Err(entry::Failure::Chunk(e)) => {
                let kind = match e {
                    E::BadSignature { .. } => "bad_signature",
                    E::Gap { .. } => "gap",
                    E::Envelope { .. } => "undecodable",
                    _ => "broken_chain",
                };
                let seq = match e {
                    E::Gap { expected, .. } => *expected,
                    E::BrokenChain { seq, .. }
                    | E::PersonalDigest { seq, .. }
                    | E::Envelope { seq, .. }
                    | E::BadSignature { seq, .. } => *seq,
                    _ => last,
                };
                let m = format!("log entry {offset}: {e}");
                return self
                    .report
                    .problem(kind, Some(origin), Some(seq), Some(offset), m);
            }
        };
        for seq in &c.not_canonical {
            let m = "envelope is not in canonical form".into();
            self.report
                .problem("not_canonical", Some(origin), Some(*seq), Some(offset), m);
        }
        let linked = self.link(origin, first, last, *prev, hashes, offset);
        if let Some((head, key)) = c.head.take() {
            let run = Run {
                from: first,
                offset,
                head,
                key,
            };
            self.hold_head(run, &linked);
        }
    }
}

/// Log keys read at a time: a page of packs holds up to ~19 entries a key
/// (~8 MB of entries at 1,024 keys), and up to three pages are in memory
/// at once (one applied, one queued, one being read).
const PAGE_KEYS: usize = 1024;

/// Reads the log page by page into [`Item`]s, in log order, and sends
/// each page's; stops at the log's end, at a read error (sent as a
/// problem), or when the receiver is gone.
fn read_pages(kv: &dyn Kv, tx: &std::sync::mpsc::SyncSender<Vec<Item>>) {
    let mut start = vec![layout::LOG];
    let mut expected_offset = 0u64;
    let mut current: Option<Pending> = None;
    let mut items = Vec::new();
    loop {
        let page = match kv.scan(&start, &[layout::LOG], PAGE_KEYS) {
            Ok(p) => p,
            Err(e) => {
                let m = format!("cannot read the log: {e}");
                items.push(Item::Problem("undecodable", None, m));
                break;
            }
        };
        let Some((last, _)) = page.last() else { break };
        start.clone_from(last);
        start.push(0);
        for (k, v) in page {
            let Some((offset, part)) = layout::parse_log_key(&k) else {
                let m = "malformed log key".into();
                items.push(Item::Problem("undecodable", None, m));
                continue;
            };
            if part > 0 {
                match current.as_mut() {
                    Some(p) if p.offset == offset => p.bytes.extend_from_slice(&v),
                    _ => items.push(Item::Problem(
                        "missing_entry",
                        Some(offset),
                        format!("fragment {part} without its entry"),
                    )),
                }
                continue;
            }
            if let Some(p) = current.take() {
                items.push(Item::Entry(p));
            }
            if layout::is_pack(&v) {
                // Several small entries in one value, each whole.
                let Some(entries) = layout::log_value_entries(&k, &v) else {
                    let m = "malformed pack of log entries".into();
                    items.push(Item::Problem("undecodable", Some(offset), m));
                    continue;
                };
                for (offset, range) in entries {
                    expect_offset(&mut items, &mut expected_offset, offset);
                    items.push(Item::Entry(Pending {
                        offset,
                        bytes: v[range].to_vec(),
                        parts: 1,
                    }));
                }
                continue;
            }
            expect_offset(&mut items, &mut expected_offset, offset);
            let parts = if v.len() >= 2 {
                u16::from_be_bytes([v[0], v[1]])
            } else {
                0
            };
            current = Some(Pending {
                offset,
                bytes: v,
                parts,
            });
        }
        if tx.send(std::mem::take(&mut items)).is_err() {
            return;
        }
    }
    items.extend(current.take().map(Item::Entry));
    let _ = tx.send(items);
}

/// The next entry read is `offset`: those skipped since the last one
/// are missing.
fn expect_offset(items: &mut Vec<Item>, expected: &mut u64, offset: u64) {
    if offset != *expected {
        items.push(Item::Problem(
            "missing_entry",
            Some(*expected),
            format!("log entries {expected}..{offset} are missing"),
        ));
    }
    *expected = offset + 1;
}

/// The origin and seq an index or evidence key names.
fn origin_seq(key: &[u8]) -> (Option<String>, Option<u64>) {
    match layout::parse_origin_seq_key(key) {
        Some((origin, seq, _)) => (Some(origin), Some(seq)),
        None => (None, None),
    }
}
