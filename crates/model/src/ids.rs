//! Node identifiers.

use std::fmt;

/// Longest node id accepted anywhere (topology, envelope, wire).
pub const NODE_ID_BYTES_MAX: usize = 64;

/// A node id: 1–64 characters of `a-z`, `0-9`, `-`, `_`, starting with a
/// letter or digit. Ids appear in sled keys and URLs, so the alphabet is kept
/// small and unambiguous.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    /// Checks `s` against the id alphabet.
    ///
    /// # Errors
    /// A message saying what is wrong with the id.
    pub fn parse(s: &str) -> Result<Self, String> {
        check_node_id(s)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Validates a node id without allocating.
///
/// # Errors
/// A message saying what is wrong with the id.
pub fn check_node_id(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > NODE_ID_BYTES_MAX {
        return Err(format!(
            "node id {s:?} must be 1 to {NODE_ID_BYTES_MAX} characters long"
        ));
    }
    let first_ok = s.as_bytes()[0].is_ascii_lowercase() || s.as_bytes()[0].is_ascii_digit();
    let all_ok = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !first_ok || !all_ok {
        return Err(format!(
            "node id {s:?} may use only a-z, 0-9, '-' and '_', and must start with a letter or digit"
        ));
    }
    Ok(())
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NodeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(NodeId::parse("shazikou-c01").is_ok());
        assert!(NodeId::parse("laoshan").is_ok());
        for bad in ["", "-x", "Upper", "a b", "a/b", &"x".repeat(65)] {
            assert!(NodeId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
