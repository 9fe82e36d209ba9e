//! One log entry checked on its own — decoded, its chain links, its
//! signature, its envelopes' canonical form — on worker threads, in
//! parallel: nothing here depends on other entries. The auditor then
//! applies the results in log order ([`super::Auditor`]), so a report is
//! the same whatever the number of threads.

use ed25519_dalek::VerifyingKey;
use gridsync_deploy::topology::Topology;
use gridsync_model::chunk::ChunkView;
use gridsync_model::event::canonical_check::canonical_links;
use gridsync_model::event::read_links;
use gridsync_model::{ChunkError, Hash32, SignedHead};

use super::Signatures;

/// What one entry showed on its own.
pub(super) enum Examined {
    /// Not a chunk: the problem's message.
    Undecodable(String),
    Chunk(Box<ChunkFacts>),
}

pub(super) struct ChunkFacts {
    pub origin: String,
    pub first: u64,
    pub last: u64,
    pub events: u64,
    /// The chunk's first `prev` and every event's hash, after its links
    /// and its own signature were checked; or why not. `None`: the
    /// topology has no key for the chunk's head, nothing was checked.
    pub checked: Option<Result<(Hash32, Vec<Hash32>), ChunkError>>,
    /// Seqs whose envelopes are not in canonical form (checked only in a
    /// chunk that verified).
    pub not_canonical: Vec<u64>,
    /// A chunk whose links held: its head and the key it must verify
    /// under — a v1 head checked by [`examine_all`] with
    /// [`Signatures::All`] (and then `None`), else left to the auditor:
    /// verified if it ends its run of the chain, or (with
    /// [`Signatures::All`]) if the next head of the run does not name it.
    pub head: Option<(SignedHead, VerifyingKey)>,
    /// With [`Signatures::All`], a v2 head's [`SignedHead::digest`] (what
    /// the origin's next head names), computed here on the worker threads.
    pub head_digest: Option<Hash32>,
}

/// Entries of one read page checked; results in the entries' order. With
/// [`Signatures::All`] their signatures are then checked in a batch
/// ([`gridsync_model::chunk::failing_heads`]: the same heads fail as one
/// by one, in about a third of the time).
pub(super) fn examine_all(
    entries: &[(u64, &[u8])],
    topology: &Topology,
    signatures: Signatures,
) -> Vec<Examined> {
    let mut out: Vec<Examined> = entries
        .iter()
        .map(|(o, b)| examine(*o, b, topology))
        .collect();
    if signatures == Signatures::All {
        check_signatures(&mut out);
    }
    out
}

/// Every chunk whose links held and whose head is v1 has its head
/// verified; a head that fails makes its chunk `BadSignature`, as a chunk
/// failing its own check does. Those heads are dropped after: each was
/// checked on its own. v2 heads are left to the auditor, which verifies
/// each run's newest and hashes the heads it names (`runs.rs`).
fn check_signatures(out: &mut [Examined]) {
    let v1 = |c: &ChunkFacts| c.head.as_ref().is_some_and(|(h, _)| h.after.is_none());
    let mut facts: Vec<&mut ChunkFacts> = Vec::new();
    for e in out.iter_mut() {
        if let Examined::Chunk(c) = e {
            if v1(c) {
                facts.push(&mut **c);
            } else {
                c.head_digest = c.head.as_ref().map(|(h, _)| h.digest());
            }
        }
    }
    let heads: Vec<(&SignedHead, &VerifyingKey)> = facts
        .iter()
        .filter_map(|c| c.head.as_ref().map(|(h, k)| (h, k)))
        .collect();
    for i in gridsync_model::chunk::failing_heads(&heads) {
        let c = &mut facts[i];
        let (origin, seq) = (c.origin.clone(), c.last);
        c.checked = Some(Err(ChunkError::BadSignature { origin, seq }));
        c.not_canonical.clear();
    }
    for c in facts {
        c.head = None;
    }
}

/// `f` of each contiguous share of the items, one share per thread;
/// results in the items' order.
pub(super) fn parallel_shares<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&[T]) -> Vec<R> + Sync,
) -> Vec<R> {
    if threads <= 1 || items.len() < 2 {
        return f(items);
    }
    let per = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = items
            .chunks(per)
            .map(|part| s.spawn(move || f(part)))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("an audit worker panicked"))
            .collect()
    })
}

/// One entry (`bytes`: its header and chunk) at log `offset`: decoded,
/// its links and its envelopes' form checked; its signature is left to
/// the caller (the head and its key kept for it).
pub(super) fn examine(offset: u64, bytes: &[u8], topology: &Topology) -> Examined {
    // Read in place: the envelopes stay in the page's bytes.
    let chunk = match bytes.get(10..).map(ChunkView::decode) {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Examined::Undecodable(format!("log entry {offset}: {e}")),
        None => return Examined::Undecodable("entry header truncated".into()),
    };
    let (first, last) = (chunk.first_seq(), chunk.last_seq());
    let key = topology.key_at(chunk.origin, last);
    // One walk of each envelope reads its links and shows it canonical;
    // one it does not show canonical is read the plain way, and later
    // decoded (the decoder decides its form).
    let mut unsure: Vec<(u64, &[u8])> = Vec::new();
    let mut seq = first;
    let read = |envelope| {
        let links = canonical_links(envelope).map_or_else(
            || {
                unsure.push((seq, envelope));
                read_links(envelope)
            },
            Ok,
        );
        seq = seq.wrapping_add(1);
        links
    };
    let checked = key.is_some().then(|| chunk.check_own_links(read));
    let not_canonical = if matches!(checked, Some(Ok(_))) {
        unsure
            .into_iter()
            .filter(|(_, envelope)| gridsync_model::Envelope::decode(envelope).is_err())
            .map(|(seq, _)| seq)
            .collect()
    } else {
        Vec::new()
    };
    let events = chunk.events.len() as u64;
    let head = match (&checked, key) {
        (Some(Ok(_)), Some(key)) => Some((chunk.head, key)),
        _ => None,
    };
    Examined::Chunk(Box::new(ChunkFacts {
        origin: chunk.origin.to_owned(),
        first,
        last,
        events,
        checked,
        not_canonical,
        head,
        head_digest: None,
    }))
}
