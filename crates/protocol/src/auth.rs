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
