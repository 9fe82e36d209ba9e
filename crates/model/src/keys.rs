//! Node keys: ed25519, stored as hex.

use ed25519_dalek::{SigningKey, VerifyingKey};

/// Generates a fresh signing key from the given RNG.
pub fn generate(rng: &mut (impl rand::RngCore + rand::CryptoRng)) -> SigningKey {
    SigningKey::generate(rng)
}

/// Parses a 32-byte secret key written as 64 hex digits (surrounding
/// whitespace ignored).
///
/// # Errors
/// A message saying what the text should look like.
pub fn signing_key_from_hex(text: &str) -> Result<SigningKey, String> {
    let bytes = hex::decode(text.trim()).map_err(|e| format!("private key is not hex: {e}"))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "private key must be 32 bytes (64 hex digits)".to_owned())?;
    Ok(SigningKey::from_bytes(&arr))
}

/// Parses a public key written as 64 hex digits.
///
/// # Errors
/// A message saying what the text should look like.
pub fn verifying_key_from_hex(text: &str) -> Result<VerifyingKey, String> {
    let bytes = hex::decode(text.trim()).map_err(|e| format!("public key is not hex: {e}"))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "public key must be 32 bytes (64 hex digits)".to_owned())?;
    VerifyingKey::from_bytes(&arr)
        .map_err(|e| format!("public key is not a valid ed25519 point: {e}"))
}

pub fn signing_key_to_hex(key: &SigningKey) -> String {
    hex::encode(key.to_bytes())
}

pub fn verifying_key_to_hex(key: &VerifyingKey) -> String {
    hex::encode(key.to_bytes())
}

/// A node's public keys over time. A chunk whose signed head is at seq
/// `s` verifies with the first `previous` key whose `until_seq >= s`, else
/// with `current`; the node proves itself (sync handshakes) with `current`
/// only. So a rotated-out key keeps its old chunks verifiable but can
/// neither extend the chain nor open a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyHistory {
    pub current: VerifyingKey,
    /// `(until_seq, key)`, `until_seq` strictly increasing.
    pub previous: Vec<(u64, VerifyingKey)>,
}

impl KeyHistory {
    pub fn single(current: VerifyingKey) -> Self {
        Self {
            current,
            previous: Vec::new(),
        }
    }

    /// The key that signs a chunk whose head is at `head_seq`.
    pub fn at(&self, head_seq: u64) -> VerifyingKey {
        self.previous
            .iter()
            .find(|(until, _)| head_seq <= *until)
            .map_or(self.current, |(_, k)| *k)
    }
}
