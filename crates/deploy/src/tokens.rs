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

/// A node's accepted tokens with their digests parsed once, when the
/// config is loaded, not on every request.
#[derive(Clone, Debug)]
pub struct TokenTable {
    entries: Vec<(Role, blake3::Hash)>,
}

impl TokenTable {
    /// The table of a config's `[[token]]` entries.
    ///
    /// # Errors
    /// An entry whose `hash` is not `blake3:` and 64 hex digits, naming it.
    pub fn new(tokens: &[TokenEntry]) -> Result<Self, String> {
        let entries = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.hash
                    .strip_prefix("blake3:")
                    .and_then(|hex| blake3::Hash::from_hex(hex).ok())
                    .map(|h| (t.role, h))
                    .ok_or_else(|| {
                        format!(
                            "[[token]] entry {} ({}): hash must be \"blake3:\" and 64 hex digits, \
                             as `gridsync provision` and `gridsync init` write it (hash_token)",
                            i + 1,
                            t.role.as_str()
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// The role of a presented token. Digests are compared as
    /// `blake3::Hash` values, whose equality is constant-time, and every
    /// entry is compared (no early exit that would time which one matched).
    pub fn role_of(&self, presented: &str) -> Option<Role> {
        self.token_of(presented).map(|(role, _)| role)
    }

    /// Like [`TokenTable::role_of`], with the index of the matching entry
    /// (which token it is, for per-token limits).
    pub fn token_of(&self, presented: &str) -> Option<(Role, usize)> {
        let h = blake3::hash(presented.as_bytes());
        let mut found = None;
        for (i, (role, stored)) in self.entries.iter().enumerate() {
            if *stored == h && found.is_none() {
                found = Some((*role, i));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_finds_each_token_and_no_other() {
        let mut rng = rand::thread_rng();
        let tokens: Vec<String> = Role::ALL
            .iter()
            .map(|r| generate_token(*r, &mut rng))
            .collect();
        let entries: Vec<TokenEntry> = Role::ALL
            .iter()
            .zip(&tokens)
            .map(|(role, t)| TokenEntry {
                role: *role,
                hash: hash_token(t),
            })
            .collect();
        let table = TokenTable::new(&entries).unwrap();
        for (i, (role, t)) in Role::ALL.iter().zip(&tokens).enumerate() {
            assert_eq!(table.token_of(t), Some((*role, i)));
        }
        assert_eq!(table.role_of("gs-admin-0000"), None);
        assert_eq!(
            table.role_of(&entries[0].hash),
            None,
            "the digest is not the token"
        );
    }

    #[test]
    fn a_malformed_digest_is_refused_naming_its_entry() {
        let good = TokenEntry {
            role: Role::Viewer,
            hash: hash_token("gs-viewer-x"),
        };
        for bad in ["sha256:00", "blake3:zz", "blake3:", &good.hash[7..]] {
            let entries = [
                good.clone(),
                TokenEntry {
                    role: Role::Reporter,
                    hash: bad.to_owned(),
                },
            ];
            let e = TokenTable::new(&entries).unwrap_err();
            assert!(e.contains("entry 2 (reporter)"), "{bad}: {e}");
        }
    }
}
