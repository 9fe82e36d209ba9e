//! Mutual authentication proofs.
//!
//! A proof is an ed25519 signature over
//! `"gridsync/sync-auth/v2\0" ‖ msgpack [role, signer, peer, peer's nonce, channel]`
//! where role is `"parent"` or `"child"`. Binding both ids and the role
//! stops a proof from being replayed to another node, in the other
//! direction, or (fresh nonces) in a later session. `channel` is keying
//! material exported from the TLS session the proof travels in (RFC 5705,
//! as RFC 9266 uses it for SCRAM; empty on plain connections): a man in the
//! middle who terminates TLS on both sides has two different sessions, so
//! proofs relayed from one to the other fail — even when his certificate
//! is trusted.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

pub const AUTH_DOMAIN: &[u8] = b"gridsync/sync-auth/v2\0";

fn message(role: &str, signer: &str, peer: &str, nonce: &[u8], channel: &[u8]) -> Vec<u8> {
    let mut m = AUTH_DOMAIN.to_vec();
    rmp::encode::write_array_len(&mut m, 5).expect("vec write");
    rmp::encode::write_str(&mut m, role).expect("vec write");
    rmp::encode::write_str(&mut m, signer).expect("vec write");
    rmp::encode::write_str(&mut m, peer).expect("vec write");
    rmp::encode::write_bin(&mut m, nonce).expect("vec write");
    rmp::encode::write_bin(&mut m, channel).expect("vec write");
    m
}

pub fn prove(
    key: &SigningKey,
    role: &str,
    signer: &str,
    peer: &str,
    peer_nonce: &[u8],
    channel: &[u8],
) -> [u8; 64] {
    key.sign(&message(role, signer, peer, peer_nonce, channel))
        .to_bytes()
}

pub fn check(
    key: &VerifyingKey,
    role: &str,
    signer: &str,
    peer: &str,
    my_nonce: &[u8],
    channel: &[u8],
    proof: &[u8],
) -> bool {
    let Ok(sig) = <[u8; 64]>::try_from(proof) else {
        return false;
    };
    key.verify_strict(
        &message(role, signer, peer, my_nonce, channel),
        &Signature::from_bytes(&sig),
    )
    .is_ok()
}

/// Domain of a nudge: a parent that has just started telling a child to
/// retry its connection now rather than at the end of its backoff.
pub const NUDGE_DOMAIN: &[u8] = b"gridsync/sync-nudge/v1\0";

fn nudge_message(parent: &str, child: &str, at_ms: i64) -> Vec<u8> {
    let mut m = NUDGE_DOMAIN.to_vec();
    rmp::encode::write_array_len(&mut m, 3).expect("vec write");
    rmp::encode::write_str(&mut m, parent).expect("vec write");
    rmp::encode::write_str(&mut m, child).expect("vec write");
    rmp::encode::write_sint(&mut m, at_ms).expect("vec write");
    m
}

/// The parent's signature on a nudge to `child` sent at `at_ms`.
pub fn sign_nudge(key: &SigningKey, parent: &str, child: &str, at_ms: i64) -> [u8; 64] {
    key.sign(&nudge_message(parent, child, at_ms)).to_bytes()
}

/// Whether a nudge is `parent`'s, meant for `child`, and sent within
/// `window_ms` of `now_ms` (either way: clocks differ). A nudge carries
/// no data and only moves a retry earlier, so replay within the window
/// is harmless; the signature keeps strangers from using children to
/// hammer their parent.
pub fn check_nudge(
    key: &VerifyingKey,
    parent: &str,
    child: &str,
    at_ms: i64,
    signature: &[u8],
    now_ms: i64,
    window_ms: i64,
) -> bool {
    let Ok(sig) = <[u8; 64]>::try_from(signature) else {
        return false;
    };
    at_ms.abs_diff(now_ms) <= window_ms.unsigned_abs()
        && key
            .verify_strict(
                &nudge_message(parent, child, at_ms),
                &Signature::from_bytes(&sig),
            )
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nudge_verifies_only_for_its_parent_child_and_time() {
        let parent = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let vk = parent.verifying_key();
        let sig = sign_nudge(&parent, "s1", "c1", 1_000_000);
        let check = |key: &VerifyingKey, p: &str, c: &str, at: i64, sig: &[u8], now: i64| {
            check_nudge(key, p, c, at, sig, now, 60_000)
        };
        assert!(check(&vk, "s1", "c1", 1_000_000, &sig, 1_000_000));
        // Either side of the window, within it.
        assert!(check(&vk, "s1", "c1", 1_000_000, &sig, 1_060_000));
        assert!(check(&vk, "s1", "c1", 1_000_000, &sig, 940_000));
        assert!(!check(&vk, "s1", "c1", 1_000_000, &sig, 1_060_001));
        assert!(!check(&vk, "s1", "c1", 1_000_000, &sig, 939_999));
        // Another child, parent, time or key; a cut signature.
        assert!(!check(&vk, "s1", "c2", 1_000_000, &sig, 1_000_000));
        assert!(!check(&vk, "s2", "c1", 1_000_000, &sig, 1_000_000));
        assert!(!check(&vk, "s1", "c1", 1_000_001, &sig, 1_000_000));
        assert!(!check(
            &other.verifying_key(),
            "s1",
            "c1",
            1_000_000,
            &sig,
            1_000_000
        ));
        assert!(!check(&vk, "s1", "c1", 1_000_000, &sig[..63], 1_000_000));
        // Not a sync-auth proof either way.
        let proof = prove(&parent, "parent", "s1", "c1", &[], &[]);
        assert!(!check(&vk, "s1", "c1", 1_000_000, &proof, 1_000_000));
    }
}
