//! A parent checks one signature for a run of an origin's chunks in a
//! batch when each head names the one before it (`after`): the earlier
//! heads are vouched for, byte for byte, by the later head's signature.
//! These tests drive a [`ParentSession`] directly and prove that the rule
//! is applied (a chunk whose own signature is broken is accepted when a
//! verified later head of the same origin and key names it), and that it
//! is applied only then: a later head that names something else, does not
//! verify itself, or is signed under another key leaves the earlier chunk
//! to its own signature, which then refuses it.

mod common;

use ed25519_dalek::{SigningKey, VerifyingKey};
use gridsync_model::{Chunk, EventRecord, Hash32, SignedHead, ZERO_HASH};
use gridsync_protocol::{
    auth, Frame, Output, ParentConfig, ParentSession, StoredLog, TopologyView, PROTOCOL_VERSION,
};
use serde_bytes::ByteBuf;

const PARENT: &str = "street";
const CHILD: &str = "c1";
const NOW: i64 = 1_700_000_000_000;

struct Topo {
    parent_key: VerifyingKey,
    /// The child's keys: `(from head seq, key)`, oldest first.
    child_keys: Vec<(u64, VerifyingKey)>,
}

impl TopologyView for Topo {
    fn parent_of(&self, id: &str) -> Option<String> {
        (id == CHILD).then(|| PARENT.to_owned())
    }
    fn key(&self, id: &str) -> Option<VerifyingKey> {
        match id {
            PARENT => Some(self.parent_key),
            CHILD => self.child_keys.last().map(|k| k.1),
            _ => None,
        }
    }
    fn key_at(&self, origin: &str, head_seq: u64) -> Option<VerifyingKey> {
        (origin == CHILD).then(|| {
            self.child_keys
                .iter()
                .rev()
                .find(|(from, _)| *from <= head_seq)
                .map_or(self.child_keys[0].1, |k| k.1)
        })
    }
    fn in_subtree(&self, root: &str, node: &str) -> bool {
        root == node || (root == PARENT && node == CHILD)
    }
    fn subtree(&self, root: &str) -> Vec<String> {
        match root {
            PARENT => vec![PARENT.into(), CHILD.into()],
            CHILD => vec![CHILD.into()],
            _ => vec![],
        }
    }
}

/// The parent's log: empty.
struct Empty;

impl StoredLog for Empty {
    fn heads(&self) -> Vec<(String, u64, Hash32)> {
        Vec::new()
    }
    fn head(&self, _: &str) -> Option<(u64, Hash32)> {
        None
    }
    fn hash_at(&self, _: &str, _: u64) -> Option<Hash32> {
        None
    }
    fn chunks_after(&self, _: &str, _: u64, _: usize) -> Vec<Chunk> {
        Vec::new()
    }
}

/// Events `from..=to` of the child after `prev`, and the last one's hash.
fn events(from: u64, to: u64, prev: Hash32) -> (Vec<EventRecord>, Hash32) {
    common::visit_events(CHILD, from..=to, prev, NOW, NOW)
}

/// The child's chain cut into chunks of `per` events, each head signed by
/// `keys[i]` and naming the one before it, as an origin's writer does.
fn chain(keys: &[&SigningKey], per: u64) -> Vec<Chunk> {
    let (mut prev, mut after) = (ZERO_HASH, ZERO_HASH);
    let mut out = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let from = i as u64 * per + 1;
        let (evs, last) = events(from, from + per - 1, prev);
        let head = SignedHead::sign_after(key, (CHILD, from + per - 1, last), NOW, after);
        after = head.digest();
        prev = last;
        out.push(Chunk {
            origin: CHILD.into(),
            events: evs,
            head,
        });
    }
    out
}

/// The same head with its signature broken (what only the key's holder
/// could put under a later head that names it).
fn break_signature(chunk: &mut Chunk) {
    chunk.head.signature[10] ^= 0x40;
}

/// Signs `run[i]`'s head again with `key`, naming `run[i - 1]`'s head as
/// it now is.
fn name_previous(run: &mut [Chunk], i: usize, key: &SigningKey) {
    let (seq, hash) = (run[i].head.seq, run[i].head.hash);
    run[i].head = SignedHead::sign_after(key, (CHILD, seq, hash), NOW, run[i - 1].head.digest());
}

struct Setup {
    parent: ParentSession,
    topo: Topo,
}

/// A parent session with the child authenticated.
fn streaming(child_keys: Vec<(u64, VerifyingKey)>, child_key: &SigningKey) -> Setup {
    let parent_key = SigningKey::from_bytes(&[9; 32]);
    let topo = Topo {
        parent_key: parent_key.verifying_key(),
        child_keys,
    };
    let parent_nonce = [7; 32];
    let mut parent = ParentSession::new(
        ParentConfig {
            node_id: PARENT.into(),
            key: parent_key,
            heartbeat_ms: 10_000,
            idle_timeout_ms: 60_000,
            fetch_bytes_max: 1 << 20,
            batch_bytes_asked: None,
            channel_binding: Vec::new(),
            bug_ack_before_durable: false,
        },
        parent_nonce,
        NOW,
    );
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        node: CHILD.into(),
        parent: PARENT.into(),
        nonce: ByteBuf::from(vec![3; 32]),
        capabilities: vec![gridsync_protocol::CAPABILITY_HEADS_V2.into()],
    };
    let outs = parent.on_frame(hello, &topo, &Empty, NOW);
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Send(Frame::Challenge { .. }))),
        "{outs:?}"
    );
    let proof = auth::prove(child_key, "child", CHILD, PARENT, &parent_nonce, &[]);
    let outs = parent.on_frame(
        Frame::Auth {
            proof: ByteBuf::from(proof.to_vec()),
        },
        &topo,
        &Empty,
        NOW,
    );
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Send(Frame::Welcome { .. }))),
        "{outs:?}"
    );
    Setup { parent, topo }
}

/// What the parent made of one batch: the last seq of each chunk it
/// persists, and the codes of the origins it refused.
fn send_batch(s: &mut Setup, chunks: &[Chunk]) -> (Vec<u64>, Vec<String>) {
    let batch = Frame::Batch {
        id: 1,
        chunks: chunks.iter().map(|c| ByteBuf::from(c.encode())).collect(),
        lag: Vec::new(),
    };
    let outs = s.parent.on_frame(batch, &s.topo, &Empty, NOW);
    let mut persisted = Vec::new();
    let mut refused = Vec::new();
    for o in outs {
        match o {
            Output::Persist { chunks, .. } => {
                persisted.extend(chunks.iter().map(|c| c.chunk().last_seq()));
            }
            Output::Send(Frame::OriginRefused { code, .. }) => refused.push(code),
            Output::Send(Frame::Rejected { code, .. }) | Output::Close { reason: code } => {
                panic!("the batch was refused as a whole: {code}")
            }
            _ => {}
        }
    }
    (persisted, refused)
}

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

#[test]
fn an_intact_run_is_accepted() {
    let k = key(1);
    let mut s = streaming(vec![(0, k.verifying_key())], &k);
    let run = chain(&[&k, &k, &k], 4);
    assert_eq!(send_batch(&mut s, &run), (vec![4, 8, 12], vec![]));
}

/// The rule is used: the two earlier heads' own signatures are broken,
/// and the run is accepted on the newest head's signature, which names
/// the one before it, which names the first.
#[test]
fn heads_named_by_a_verified_later_head_are_not_checked_again() {
    let k = key(1);
    let mut s = streaming(vec![(0, k.verifying_key())], &k);
    let mut run = chain(&[&k, &k, &k], 4);
    // Broken after signing: the later heads name the broken bytes, as
    // they would only if the key's holder signed over them.
    break_signature(&mut run[0]);
    name_previous(&mut run, 1, &k);
    break_signature(&mut run[1]);
    name_previous(&mut run, 2, &k);
    assert_eq!(send_batch(&mut s, &run), (vec![4, 8, 12], vec![]));
}

/// Negative control: a broken head that the later head does not name (it
/// names the head as signed, before the break) is checked on its own and
/// refused with its origin.
#[test]
fn a_head_the_later_one_does_not_name_is_checked_on_its_own() {
    let k = key(1);
    let mut s = streaming(vec![(0, k.verifying_key())], &k);
    let mut run = chain(&[&k, &k], 4);
    break_signature(&mut run[0]);
    assert_eq!(
        send_batch(&mut s, &run),
        (vec![], vec!["bad_signature".to_owned()])
    );
}

/// Negative control: the later head names the broken one but does not
/// verify itself, so it vouches for nothing.
#[test]
fn a_later_head_that_does_not_verify_vouches_for_nothing() {
    let k = key(1);
    let mut s = streaming(vec![(0, k.verifying_key())], &k);
    let mut run = chain(&[&k, &k], 4);
    break_signature(&mut run[0]);
    name_previous(&mut run, 1, &key(2));
    assert_eq!(
        send_batch(&mut s, &run),
        (vec![], vec!["bad_signature".to_owned()])
    );
    // The same later head alone, intact before it: the earlier chunk is
    // accepted on its own signature and the later one refused.
    let mut s = streaming(vec![(0, k.verifying_key())], &k);
    let mut run = chain(&[&k, &k], 4);
    run[1].head.signature[3] ^= 1;
    assert_eq!(
        send_batch(&mut s, &run),
        (vec![4], vec!["bad_signature".to_owned()])
    );
}

/// Negative control: across a key rotation the head under the old key is
/// checked with it, whatever the new key's head names.
#[test]
fn a_head_under_an_earlier_key_is_checked_on_its_own() {
    let (old, new) = (key(1), key(2));
    let keys = vec![(0, old.verifying_key()), (5, new.verifying_key())];
    let mut s = streaming(keys.clone(), &new);
    let mut run = chain(&[&old, &new], 4);
    assert_eq!(send_batch(&mut s, &run), (vec![4, 8], vec![]));
    let mut s = streaming(keys, &new);
    break_signature(&mut run[0]);
    name_previous(&mut run, 1, &new);
    assert_eq!(
        send_batch(&mut s, &run),
        (vec![], vec!["bad_signature".to_owned()])
    );
}
