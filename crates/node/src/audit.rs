//! Auditor tools: verify a node's data without trusting the node, replay its
//! history, and compute what the aggregates were at a past moment.
//!
//! Everything here reads a [`Kv`] directly — never through `Store::open`,
//! which stops at the first problem — so one run reports every problem it
//! finds, with the origin and seq at fault. The CLI runs it on a copy of the
//! data directory, so the audited node's files are never modified.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use gridsync_model::{Chunk, Hash32, SignedHead, ZERO_HASH};
use gridsync_store::kv::Kv;
use gridsync_store::layout;
use serde::{Deserialize, Serialize};

use crate::topology::Topology;

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `gap`, `broken_chain`, `bad_signature`, `not_canonical`, `undecodable`,
    /// `foreign_origin`, `unknown_origin`, `duplicate`, `fork`, `heads_mismatch`,
    /// `index_mismatch`, `truncated`, `equivocation_evidence`, `missing_entry`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginReport {
    pub events: u64,
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    pub head_hash: String,
    pub problems: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    pub entries: u64,
    pub events: u64,
    pub origins: BTreeMap<String, OriginReport>,
    pub problems: Vec<Problem>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(
        &mut self,
        kind: &str,
        origin: Option<&str>,
        seq: Option<u64>,
        offset: Option<u64>,
        message: String,
    ) {
        if let Some(o) = origin {
            if let Some(r) = self.origins.get_mut(o) {
                r.problems += 1;
            }
        }
        self.problems.push(Problem {
            kind: kind.to_owned(),
            origin: origin.map(str::to_owned),
            seq,
            offset,
            message,
        });
    }
}

/// A head the auditor holds from elsewhere (the parent that acked it, the
/// origin itself, an earlier checkpoint): the log must reach it. The
/// `heads` of `/v1/status` have this shape (extra fields are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceHead {
    pub seq: u64,
    /// Hex hash of event `seq`.
    pub hash: String,
    /// With a signature, the reference itself is verified too.
    #[serde(default)]
    pub signed_at_ms: Option<i64>,
    #[serde(default)]
    pub signature: Option<String>,
}

/// `origin → head`: the `heads` object of `/v1/status` works as is.
pub type Reference = BTreeMap<String, ReferenceHead>;

/// Largest gap in an origin's seqs the audit pads to keep indexing by seq.
const GAP_FILL_MAX: u64 = 1 << 20;

struct Chain {
    seq: u64,
    hash: Hash32,
    /// Hash of every event seen, for checking references and overlaps.
    hashes: Vec<Hash32>,
    events: u64,
    first: Option<u64>,
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
    verify_with(kv, topology, node, &refs, None, progress)
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
    progress: &dyn Fn(u64),
) -> AuditReport {
    let mut report = AuditReport::default();
    let mut chains: BTreeMap<String, Chain> = BTreeMap::new();
    let mut index_expected: BTreeSet<(Vec<u8>, Vec<u8>)> = BTreeSet::new();
    // Origins ever below the node (a moved community's earlier history
    // stays in its former street's log).
    let subtree: Option<BTreeSet<String>> =
        node.map(|n| topology.historic_subtree(n).into_iter().collect());

    // The log, entry by entry, tolerating damage.
    let mut start = vec![layout::LOG];
    let mut expected_offset = 0u64;
    let mut current: Option<(u64, Vec<u8>, u16)> = None; // offset, bytes, parts
    let mut finish = |report: &mut AuditReport,
                      chains: &mut BTreeMap<String, Chain>,
                      offset: u64,
                      bytes: Vec<u8>| {
        report.entries += 1;
        check_entry(
            report,
            chains,
            &mut index_expected,
            topology,
            subtree.as_ref(),
            offset,
            &bytes,
        );
    };
    loop {
        let page = match kv.scan(&start, &[layout::LOG], 4096) {
            Ok(p) => p,
            Err(e) => {
                report.problem(
                    "undecodable",
                    None,
                    None,
                    None,
                    format!("cannot read the log: {e}"),
                );
                break;
            }
        };
        if page.is_empty() {
            break;
        }
        for (k, v) in &page {
            let Some((offset, part)) = layout::parse_log_key(k) else {
                report.problem("undecodable", None, None, None, "malformed log key".into());
                continue;
            };
            if part == 0 {
                if let Some((o, bytes, parts)) = current.take() {
                    let have = bytes.len();
                    if parts as usize > 1 && have == 0 {
                        report.problem(
                            "missing_entry",
                            None,
                            None,
                            Some(o),
                            "fragments missing".into(),
                        );
                    } else {
                        finish(&mut report, &mut chains, o, bytes);
                    }
                }
                if offset != expected_offset {
                    report.problem(
                        "missing_entry",
                        None,
                        None,
                        Some(expected_offset),
                        format!("log entries {expected_offset}..{offset} are missing"),
                    );
                }
                expected_offset = offset + 1;
                let parts = if v.len() >= 2 {
                    u16::from_be_bytes([v[0], v[1]])
                } else {
                    0
                };
                current = Some((offset, v.clone(), parts));
            } else {
                match current.as_mut() {
                    Some((o, bytes, _)) if *o == offset => bytes.extend_from_slice(v),
                    _ => report.problem(
                        "missing_entry",
                        None,
                        None,
                        Some(offset),
                        format!("fragment {part} without its entry"),
                    ),
                }
            }
        }
        let last = page.last().expect("non-empty").0.clone();
        start = last;
        start.push(0);
        progress(report.events);
    }
    if let Some((o, bytes, _)) = current.take() {
        finish(&mut report, &mut chains, o, bytes);
    }

    for (origin, c) in &chains {
        report.origins.insert(
            origin.clone(),
            OriginReport {
                events: c.events,
                first_seq: c.first,
                last_seq: c.seq,
                head_hash: hex::encode(c.hash),
                problems: 0,
            },
        );
    }
    let n_problems: HashMap<String, u64> = report
        .problems
        .iter()
        .filter_map(|p| p.origin.clone())
        .fold(HashMap::new(), |mut m, o| {
            *m.entry(o).or_insert(0) += 1;
            m
        });
    for (o, n) in n_problems {
        if let Some(r) = report.origins.get_mut(&o) {
            r.problems = n;
        }
    }

    // The heads table must say what the log says.
    match kv.scan(&[layout::HEAD], &[layout::HEAD], usize::MAX) {
        Ok(entries) => {
            let mut seen = BTreeSet::new();
            for (k, v) in entries {
                let origin = String::from_utf8_lossy(&k[1..]).into_owned();
                seen.insert(origin.clone());
                let parsed = (v.len() >= 40).then(|| {
                    (
                        u64::from_be_bytes(v[..8].try_into().expect("8")),
                        <[u8; 32]>::try_from(&v[8..40]).expect("32"),
                        SignedHead::decode(&v[40..]),
                    )
                });
                match (parsed, chains.get(&origin)) {
                    (Some((seq, hash, Ok(_))), Some(c)) if seq == c.seq && hash == c.hash => {}
                    (Some((seq, _, _)), Some(c)) => report.problem(
                        "heads_mismatch",
                        Some(&origin),
                        Some(seq),
                        None,
                        format!("the heads table says seq {seq} but the log's chain ends at seq {} (cut, altered or reordered)", c.seq),
                    ),
                    (Some((seq, _, _)), None) => report.problem(
                        "heads_mismatch",
                        Some(&origin),
                        Some(seq),
                        None,
                        format!("the heads table lists seq {seq} but the log holds no events of {origin}"),
                    ),
                    (None, _) => report.problem("heads_mismatch", Some(&origin), None, None, "malformed heads entry".into()),
                }
            }
            for (origin, c) in &chains {
                if !seen.contains(origin) {
                    report.problem(
                        "heads_mismatch",
                        Some(origin),
                        Some(c.seq),
                        None,
                        "the heads table lacks this origin".into(),
                    );
                }
            }
        }
        Err(e) => report.problem(
            "undecodable",
            None,
            None,
            None,
            format!("cannot read the heads table: {e}"),
        ),
    }
    // The chunk index must match the chunks.
    if let Ok(entries) = kv.scan(&[layout::INDEX], &[layout::INDEX], usize::MAX) {
        let found: BTreeSet<(Vec<u8>, Vec<u8>)> = entries.into_iter().collect();
        let parse = |k: &[u8]| match layout::parse_origin_seq_key(k) {
            Some((origin, seq, _)) => (Some(origin), Some(seq)),
            None => (None, None),
        };
        for (k, _) in found.difference(&index_expected) {
            let (origin, seq) = parse(k);
            report.problem(
                "index_mismatch",
                origin.as_deref(),
                seq,
                None,
                "the chunk index points at a log entry that does not hold this chunk (entries moved or altered)".into(),
            );
        }
        for (k, _) in index_expected.difference(&found) {
            let (origin, seq) = parse(k);
            report.problem(
                "index_mismatch",
                origin.as_deref(),
                seq,
                None,
                "the chunk index lacks this chunk".into(),
            );
        }
    }
    // Equivocation evidence the node recorded.
    let summary = [layout::EVIDENCE_SUMMARY];
    if let Ok(entries) = kv.scan(&summary, &summary, 10_000) {
        for (k, _) in entries {
            let (origin, seq) = match layout::parse_origin_seq_key(&k) {
                Some((o, s, _)) => (Some(o), Some(s)),
                None => (None, None),
            };
            report.problem(
                "equivocation_evidence",
                origin.as_deref(),
                seq,
                None,
                "the node holds evidence that this origin signed two different events at this seq"
                    .into(),
            );
        }
    }
    // References held elsewhere: the log must reach them, with the same hash.
    for (source, refs) in references {
        check_reference(
            &mut report,
            &chains,
            topology,
            subtree.as_ref(),
            source,
            refs,
        );
    }
    if let Some(n) = entries_expected {
        if report.entries < n {
            report.problem(
                "truncated",
                None,
                None,
                Some(report.entries),
                format!(
                    "the log has {} entries but the heads record says {n} (entries cut off)",
                    report.entries
                ),
            );
        }
    }
    report
}

fn check_reference(
    report: &mut AuditReport,
    chains: &BTreeMap<String, Chain>,
    topology: &Topology,
    subtree: Option<&BTreeSet<String>>,
    source: &str,
    refs: &Reference,
) {
    for (origin, r) in refs {
        if subtree.is_some_and(|s| !s.contains(origin)) {
            continue;
        }
        if let (Some(at), Some(sig)) = (r.signed_at_ms, &r.signature) {
            let ok = topology.key_at(origin, r.seq).is_some_and(|key| {
                let (Ok(hash), Ok(sig)) = (hex::decode(&r.hash), hex::decode(sig)) else {
                    return false;
                };
                let (Ok(hash), Ok(sig)) = (<[u8; 32]>::try_from(hash), <[u8; 64]>::try_from(sig))
                else {
                    return false;
                };
                SignedHead {
                    origin: origin.clone(),
                    seq: r.seq,
                    hash,
                    signed_at_ms: at,
                    signature: sig,
                }
                .verify(&key)
                .is_ok()
            });
            if !ok {
                report.problem(
                    "bad_signature",
                    Some(origin),
                    Some(r.seq),
                    None,
                    format!("{source}: the head's signature does not verify"),
                );
                continue;
            }
        }
        match chains.get(origin) {
            None => report.problem(
                "truncated",
                Some(origin),
                Some(r.seq),
                None,
                format!(
                    "{source} says {origin} reached seq {} but the log holds none of it",
                    r.seq
                ),
            ),
            Some(c) if c.seq < r.seq => report.problem(
                "truncated",
                Some(origin),
                Some(c.seq.saturating_add(1)),
                None,
                format!(
                    "the log stops at seq {} short of seq {} in {source} (events cut off)",
                    c.seq, r.seq
                ),
            ),
            Some(c) => {
                let ours = c
                    .hashes
                    .get(usize::try_from(r.seq).unwrap_or(usize::MAX).wrapping_sub(1))
                    .map(hex::encode);
                if ours.as_deref() != Some(r.hash.as_str()) {
                    report.problem(
                        "fork",
                        Some(origin),
                        Some(r.seq),
                        None,
                        format!("the event at seq {} differs from {source}", r.seq),
                    );
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_entry(
    report: &mut AuditReport,
    chains: &mut BTreeMap<String, Chain>,
    index_expected: &mut BTreeSet<(Vec<u8>, Vec<u8>)>,
    topology: &Topology,
    subtree: Option<&BTreeSet<String>>,
    offset: u64,
    bytes: &[u8],
) {
    if bytes.len() < 10 {
        report.problem(
            "undecodable",
            None,
            None,
            Some(offset),
            "entry header truncated".into(),
        );
        return;
    }
    let chunk = match Chunk::decode(&bytes[10..]) {
        Ok(c) => c,
        Err(e) => {
            report.problem(
                "undecodable",
                None,
                None,
                Some(offset),
                format!("log entry {offset}: {e}"),
            );
            return;
        }
    };
    let origin = chunk.origin.clone();
    index_expected.insert((
        layout::index_key(&origin, chunk.last_seq()),
        layout::index_value(offset, chunk.first_seq()),
    ));
    report.events += chunk.events.len() as u64;
    if let Some(s) = subtree {
        if !s.contains(&origin) {
            report.problem(
                "foreign_origin",
                Some(&origin),
                Some(chunk.first_seq()),
                Some(offset),
                format!("origin {origin} is not in the audited node's subtree"),
            );
        }
    }
    let Some(key) = topology.key_at(&origin, chunk.last_seq()) else {
        report.problem(
            "unknown_origin",
            Some(&origin),
            Some(chunk.first_seq()),
            Some(offset),
            format!("origin {origin} is not in the topology; its events cannot be verified"),
        );
        return;
    };
    let chain = chains.entry(origin.clone()).or_insert(Chain {
        seq: 0,
        hash: ZERO_HASH,
        hashes: Vec::new(),
        events: 0,
        first: None,
    });
    let first = chunk.first_seq();
    let prev = match chunk.first_prev() {
        Ok(p) => p,
        Err(e) => {
            report.problem(
                "undecodable",
                Some(&origin),
                Some(first),
                Some(offset),
                e.to_string(),
            );
            return;
        }
    };
    // The chunk must verify on its own: links, canonical envelopes, signature.
    let checked = chunk
        .check_links(first, &prev)
        .and_then(|h| chunk.head.verify(&key).map(|()| h));
    let hashes = match checked {
        Ok(h) => h,
        Err(e) => {
            let kind = match e {
                gridsync_model::ChunkError::BadSignature { .. } => "bad_signature",
                gridsync_model::ChunkError::Gap { .. } => "gap",
                gridsync_model::ChunkError::Envelope { .. } => "undecodable",
                _ => "broken_chain",
            };
            let seq = match &e {
                gridsync_model::ChunkError::Gap { expected, .. } => *expected,
                gridsync_model::ChunkError::BrokenChain { seq, .. }
                | gridsync_model::ChunkError::PersonalDigest { seq, .. }
                | gridsync_model::ChunkError::Envelope { seq, .. }
                | gridsync_model::ChunkError::BadSignature { seq, .. } => *seq,
                _ => chunk.last_seq(),
            };
            report.problem(
                kind,
                Some(&origin),
                Some(seq),
                Some(offset),
                format!("log entry {offset}: {e}"),
            );
            return;
        }
    };
    for (i, rec) in chunk.events.iter().enumerate() {
        if gridsync_model::Envelope::decode(&rec.envelope).is_err() {
            report.problem(
                "not_canonical",
                Some(&origin),
                Some(first + i as u64),
                Some(offset),
                "envelope is not in canonical form".into(),
            );
        }
    }
    if first <= chain.seq {
        let overlap_last = chunk.last_seq().min(chain.seq);
        let ours = chain.hashes.get(overlap_last as usize - 1).copied();
        let theirs = hashes.get((overlap_last - first) as usize).copied();
        let kind = if ours == theirs { "duplicate" } else { "fork" };
        report.problem(
            kind,
            Some(&origin),
            Some(first),
            Some(offset),
            format!(
                "log entry {offset} holds seqs {first}..{} again (the chain was already at {})",
                chunk.last_seq(),
                chain.seq
            ),
        );
        if chunk.last_seq() <= chain.seq {
            return;
        }
    } else if first > chain.seq.saturating_add(1) {
        report.problem(
            "gap",
            Some(&origin),
            Some(chain.seq.saturating_add(1)),
            Some(offset),
            format!(
                "seqs {}..{} are missing",
                chain.seq.saturating_add(1),
                first - 1
            ),
        );
    } else if prev != chain.hash {
        report.problem(
            "broken_chain",
            Some(&origin),
            Some(first),
            Some(offset),
            format!("seq {first} does not link to seq {}", chain.seq),
        );
    }
    // Resynchronise on this chunk so later damage is reported separately.
    for (i, h) in hashes.iter().enumerate() {
        let seq = first + i as u64;
        if seq > chain.seq {
            // A tampered seq far ahead (up to u64::MAX) must not make the
            // audit fill billions of placeholders: such a jump is reported
            // (as a gap) and its hashes are not kept.
            let gap = seq - 1 - (chain.hashes.len() as u64).min(seq - 1);
            if gap > GAP_FILL_MAX {
                continue;
            }
            while chain.hashes.len() as u64 + 1 < seq {
                chain.hashes.push(ZERO_HASH);
            }
            chain.hashes.push(*h);
            chain.events += 1;
        }
    }
    chain.first = Some(chain.first.map_or(first, |f| f.min(first)));
    chain.seq = chain.seq.max(chunk.last_seq());
    chain.hash = *hashes.last().expect("non-empty");
}

/// Copies a data directory (so the audited files are never touched).
///
/// # Errors
/// I/O errors.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
