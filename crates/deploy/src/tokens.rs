//! Bearer tokens and roles: the format configs store them in.
//!
//! Tokens are 32 random bytes, hex, prefixed with their role for humans
//! (`gs-reporter-…`). Configs store only `blake3:<hex digest>`: the tokens
//! are high-entropy, so a fast hash is enough to make a leaked config useless
//! for logging in.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May post events to this community.
    Reporter,
    /// May read status and aggregates.
    Viewer,
    /// May read the event history.
    Auditor,
    /// Everything.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Reporter, Role::Viewer, Role::Auditor, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reporter => "reporter",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

/// One accepted token, as stored in a node config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub role: Role,
    /// `blake3:<hex>` of the token text.
    pub hash: String,
}

pub fn hash_token(token: &str) -> String {
    format!("blake3:{}", blake3::hash(token.as_bytes()).to_hex())
}

/// A fresh random token for `role`.
pub fn generate_token(role: Role, rng: &mut impl rand::RngCore) -> String {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    format!("gs-{}-{}", role.as_str(), hex::encode(b))
}

/// Looks up the role of a presented token. Digests are compared as
/// `blake3::Hash` values, whose equality is constant-time, and every entry
/// is compared (no early exit that would time which one matched).
pub fn role_of(tokens: &[TokenEntry], presented: &str) -> Option<Role> {
    token_of(tokens, presented).map(|(role, _)| role)
}

/// Like [`role_of`], with the index of the matching entry (which token it
/// is, for per-token limits).
pub fn token_of(tokens: &[TokenEntry], presented: &str) -> Option<(Role, usize)> {
    let h = blake3::hash(presented.as_bytes());
    let mut found = None;
    for (i, t) in tokens.iter().enumerate() {
        let stored = t
            .hash
            .strip_prefix("blake3:")
            .and_then(|hex| blake3::Hash::from_hex(hex).ok());
        if stored.is_some_and(|s| s == h) && found.is_none() {
            found = Some((t.role, i));
        }
    }
    found
}
