//! Many signed heads verified at once, for an audit that checks every
//! stored signature: ed25519 batch verification (one multiscalar
//! multiplication for a batch) and, where a batch fails, each of its heads
//! on its own with `verify_strict`, so the heads named are exactly those
//! whose strict verification fails.
//!
//! What a passing batch proves. ed25519-dalek's `verify_batch` checks
//! `Σ zᵢ·(sᵢ·B − Rᵢ − kᵢ·Aᵢ) = 0` with 128-bit weights `zᵢ` drawn from a
//! transcript of every `kᵢ` and `sᵢ` in the batch, `kᵢ` hashed from the
//! signature's `R` bytes, the key and the message, and a non-canonical
//! `sᵢ` refused. A head verifying strictly has `sᵢ·B = Rᵢ + kᵢ·Aᵢ`. Any
//! change to stored bytes without the origin's secret key — the head's
//! fields (the message), `s` (the term gains `zᵢ·δ·B`, never zero: `zᵢ`
//! and `δ` are below the prime group order), `R` (`kᵢ` changes with its
//! bytes) — leaves a non-zero term of prime order, and several such terms
//! cancel only if the changes solve an equation through the transcript's
//! hash. So a batch fails whenever a byte was changed, as strict
//! verification does. Where the two differ is signatures only the key's
//! holder can make: one whose `R` is of small order, or carries a
//! small-order part, is refused by `verify_strict` and may pass a batch.
//! Nodes accept chunks only through `verify_strict`, and whoever holds the
//! key can as easily sign a strictly valid head, so an audit loses nothing
//! by it. Weak (small-order) keys, which would let anyone sign, never take
//! the batch path: they are refused, as `verify_strict` refuses them.

use ed25519_dalek::{Signature, VerifyingKey};

use super::SignedHead;

/// Heads per batch. Measured per head (`cargo bench --bench sync_stages --
/// many_heads`): strict one by one 37.5 µs; batches of 64 16.6 µs, 128
/// 15.4 µs, 256 14.2 µs, 1,024 12.6 µs (3×). A failing batch is halved
/// until the failures are found (see [`failing_heads`]), so a damaged log
/// pays a few batches more, not a thousand strict checks.
pub const HEADS_PER_BATCH: usize = 1024;

/// A failing part of a batch this small is checked head by head.
const STRICT_AT_MOST: usize = 64;

/// Indices (ascending) of the `heads` whose signature does not verify
/// under its key, as [`SignedHead::verify`] would find them. Each batch
/// of [`HEADS_PER_BATCH`] is verified at once; one that fails is halved
/// and each half verified again, down to 64 heads checked
/// one by one — and where both halves fail (failures are dense), each of
/// their heads is checked on its own at once. So one altered head in a
/// batch costs ~3 batches more, and a log of altered heads at most one
/// batch and its halves more than checking each head strictly.
pub fn failing_heads(heads: &[(&SignedHead, &VerifyingKey)]) -> Vec<usize> {
    let mut failing = Vec::new();
    for (n, batch) in heads.chunks(HEADS_PER_BATCH).enumerate() {
        if batch.len() > 1 && batch_passes(batch) {
            continue;
        }
        find_failing(batch, n * HEADS_PER_BATCH, &mut failing);
    }
    failing
}

/// The failing heads of `batch` (which failed as a whole), their indices
/// offset by `base`, in order.
fn find_failing(batch: &[(&SignedHead, &VerifyingKey)], base: usize, out: &mut Vec<usize>) {
    if batch.len() <= STRICT_AT_MOST {
        return strictly(batch, base, out);
    }
    let (a, b) = batch.split_at(batch.len() / 2);
    match (batch_passes(a), batch_passes(b)) {
        (false, true) => find_failing(a, base, out),
        (true, false) => find_failing(b, base + a.len(), out),
        // Both failing: dense failures. Both passing cannot follow from a
        // failing whole, except by a weak key's refusal: strictly decides.
        _ => strictly(batch, base, out),
    }
}

/// Each head of `batch` on its own, with `verify_strict`.
fn strictly(batch: &[(&SignedHead, &VerifyingKey)], base: usize, out: &mut Vec<usize>) {
    out.extend(
        batch
            .iter()
            .enumerate()
            .filter(|(_, (h, k))| h.verify(k).is_err())
            .map(|(i, _)| base + i),
    );
}

fn batch_passes(batch: &[(&SignedHead, &VerifyingKey)]) -> bool {
    if batch.iter().any(|(_, k)| k.is_weak()) {
        return false;
    }
    let messages: Vec<Vec<u8>> = batch.iter().map(|(h, _)| h.message()).collect();
    let messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let signatures: Vec<Signature> = batch
        .iter()
        .map(|(h, _)| Signature::from_bytes(&h.signature))
        .collect();
    let keys: Vec<VerifyingKey> = batch.iter().map(|(_, k)| **k).collect();
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
}

#[cfg(test)]
mod tests {
    use curve25519_dalek::constants::EIGHT_TORSION;
    use curve25519_dalek::edwards::CompressedEdwardsY;
    use ed25519_dalek::SigningKey;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The group order ℓ, little-endian.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    fn heads(n: usize, keys: &[SigningKey]) -> Vec<(SignedHead, VerifyingKey)> {
        (0..n)
            .map(|i| {
                let k = &keys[i % keys.len()];
                let origin = format!("c{}", i % keys.len());
                let h = SignedHead::sign(k, &origin, i as u64 + 1, [i as u8; 32], 7 + i as i64);
                (h, k.verifying_key())
            })
            .collect()
    }

    fn strict(heads: &[(SignedHead, VerifyingKey)]) -> Vec<usize> {
        (0..heads.len())
            .filter(|&i| heads[i].0.verify(&heads[i].1).is_err())
            .collect()
    }

    fn failing(heads: &[(SignedHead, VerifyingKey)]) -> Vec<usize> {
        let refs: Vec<_> = heads.iter().map(|(h, k)| (h, k)).collect();
        failing_heads(&refs)
    }

    /// Any stored byte of a head changed (its signature's `R` or `s`, or a
    /// signed field), in one head or several, in batches of every fill:
    /// the heads named are exactly those strict verification refuses.
    #[test]
    fn names_exactly_the_heads_strict_verification_refuses() {
        let keys: Vec<SigningKey> = (1..=3).map(|b| SigningKey::from_bytes(&[b; 32])).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for round in 0..60 {
            let n = rng.gen_range(1..2 * HEADS_PER_BATCH + 100);
            let mut hs = heads(n, &keys);
            for _ in 0..rng.gen_range(0..4) {
                let i = rng.gen_range(0..n);
                let h = &mut hs[i].0;
                match rng.gen_range(0..5) {
                    0 => h.signature[rng.gen_range(0..32)] ^= 1 << rng.gen_range(0..8),
                    1 => h.signature[32 + rng.gen_range(0..32)] ^= 1 << rng.gen_range(0..8),
                    2 => h.hash[rng.gen_range(0..32)] ^= 1,
                    3 => h.seq += 1,
                    _ => h.signed_at_ms -= 1,
                }
            }
            assert_eq!(failing(&hs), strict(&hs), "round {round}");
        }
        // Untouched heads all pass.
        assert!(failing(&heads(200, &keys)).is_empty());
    }

    /// `s + ℓ` (the same scalar, not in canonical form) and `R` moved by a
    /// point of order 8 (the forms batch equations are known to be lax
    /// about) are found in a batch of good heads.
    #[test]
    fn a_non_canonical_s_or_a_torsioned_r_is_found() {
        let keys = [SigningKey::from_bytes(&[4; 32])];
        let mut hs = heads(HEADS_PER_BATCH, &keys);
        let mut carry = 0u16;
        let sig = &mut hs[5].0.signature;
        for (b, l) in sig[32..].iter_mut().zip(L) {
            let v = u16::from(*b) + u16::from(l) + carry;
            *b = v as u8;
            carry = v >> 8;
        }
        let sig = &mut hs[9].0.signature;
        let r = CompressedEdwardsY(sig[..32].try_into().unwrap());
        let moved = r.decompress().unwrap() + EIGHT_TORSION[1];
        sig[..32].copy_from_slice(moved.compress().as_bytes());
        assert_eq!(strict(&hs), vec![5, 9]);
        assert_eq!(failing(&hs), vec![5, 9]);
    }

    /// A weak key (the identity point) with `R` the identity and `s = 0`
    /// satisfies the batch equation for any message; it must be refused as
    /// `verify_strict` refuses it, not waved through by the batch.
    #[test]
    fn a_weak_key_is_refused() {
        let keys = [SigningKey::from_bytes(&[6; 32])];
        let mut hs = heads(HEADS_PER_BATCH, &keys);
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = VerifyingKey::from_bytes(&identity).unwrap();
        for (h, k) in hs.iter_mut().skip(10).take(2) {
            h.signature = [0; 64];
            h.signature[0] = 1;
            *k = weak;
        }
        assert_eq!(strict(&hs), vec![10, 11]);
        assert_eq!(failing(&hs), vec![10, 11]);
    }
}
