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
mod read;
mod report;
mod runs;

pub use report::{AuditReport, OriginReport, Problem};

use chain::Chain;
use entry::Examined;
use read::{examine_items, read_pages, Item};
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
        index_expected: index::Expected::default(),
    };
    for (_, refs) in references {
        for (origin, r) in refs.iter() {
            a.wanted.entry(origin.clone()).or_default().insert(r.seq);
        }
    }
    // The stored chunk index is read beside the log.
    let stored_index = std::thread::scope(|s| {
        let stored = s.spawn(|| index::read_stored(kv));
        a.read_log(kv, progress);
        stored.join().expect("the chunk index's reader panicked")
    });
    a.verify_held_heads();
    a.summarise_origins();
    a.check_heads_table(kv);
    a.check_index(kv, stored_index);
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
    index_expected: index::Expected,
}

impl Auditor<'_> {
    /// The log, entry by entry (reassembled from its fragments), tolerating
    /// damage: missing entries and stray fragments are problems, not stops.
    /// Three stages run at once: a reader thread reads pages, `threads`
    /// worker threads (started once) each check whole pages as they come,
    /// and this thread applies the checked pages in log order — linking
    /// chains, the chunk index's entries (`crate::pipeline`). No thread is
    /// started per page, and no core waits for a page's slowest share.
    fn read_log(&mut self, kv: &dyn Kv, progress: &dyn Fn(u64)) {
        let (topology, signatures) = (self.topology, self.signatures);
        crate::pipeline::in_order(
            self.threads,
            |send| read_pages(kv, send),
            |items: &Vec<Item>| examine_items(items, kv, topology, signatures),
            |items, examined| {
                self.apply_checked(items, examined);
                progress(self.report.events);
                true
            },
        );
    }

    /// A page checked by [`examine_items`], applied in log order.
    /// Only what it keeps is moved out of `examined` (a head that may end
    /// its run): the rest is freed by the worker that made it.
    fn apply_checked(&mut self, items: &[Item], examined: &mut [Examined]) {
        let mut examined = examined.iter_mut();
        for item in items {
            match item {
                Item::Problem(kind, offset, m) => {
                    self.report.problem(kind, None, None, *offset, m.clone());
                }
                Item::Entry(p) if !p.whole() => {
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
    fn apply_entry(&mut self, offset: u64, examined: &mut entry::Examined) {
        use gridsync_model::ChunkError as E;
        let c = match examined {
            entry::Examined::Undecodable(m) => {
                let m = std::mem::take(m);
                return self
                    .report
                    .problem("undecodable", None, None, Some(offset), m);
            }
            entry::Examined::Chunk(c) => c,
        };
        let (origin, first, last) = (c.origin.as_str(), c.first, c.last);
        self.index_expected.push(origin, last, offset, first);
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
            Err(e) => {
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
                digest: c.head_digest,
                alone: false,
            };
            self.hold_head(run, &linked);
        }
    }
}

/// The origin and seq an index or evidence key names.
fn origin_seq(key: &[u8]) -> (Option<String>, Option<u64>) {
    match layout::parse_origin_seq_key(key) {
        Some((origin, seq, _)) => (Some(origin), Some(seq)),
        None => (None, None),
    }
}
