//! The topology: every node's id, display name, parent, URL and public key.
//! Written by `gridsync provision`, read by every node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use gridsync_model::ids::check_node_id;
use gridsync_model::keys::KeyHistory;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyNode {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Base URL where the node serves HTTP, e.g. `http://127.0.0.1:7401`.
    pub url: String,
    /// ed25519 public key, hex: the node's current key.
    pub public_key: String,
    /// Keys rotated out, oldest first: each verifies this origin's chunks
    /// up to `until_seq` (and after the one before it); `public_key` the
    /// later ones and the node's sync handshakes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_keys: Vec<PreviousKey>,
    /// A retired node: its history stays verifiable everywhere, but its
    /// parent refuses its connections and it does not start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retired: bool,
    /// Parents this node had before it was moved (oldest first): their
    /// logs keep its earlier history legitimately.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub former_parents: Vec<String>,
}

/// A rotated-out key of a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousKey {
    pub public_key: String,
    /// The last seq of this node's chain it signed.
    pub until_seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    /// IANA zone that local days are counted in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// The deployment's CA certificate (PEM file, relative to this file):
    /// children verify their parent's `https` certificate against it only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    pub node: Vec<TopologyNode>,
}

impl TopologyFile {
    /// The file's text, with the header every node's copy carries.
    ///
    /// # Errors
    /// Serialisation failed.
    pub fn to_text(&self) -> Result<String, TopologyError> {
        Ok(format!(
            "# gridsync topology: every node, its parent, URL and public key. Same file on every node.\n{}",
            toml::to_string(self).map_err(|e| TopologyError(e.to_string()))?
        ))
    }
}

pub fn default_timezone() -> String {
    "Asia/Shanghai".to_owned()
}

/// A validated topology.
#[derive(Clone, Debug)]
pub struct Topology {
    pub timezone: String,
    /// The CA certificate(s) of `ca_file`, PEM.
    pub ca_pem: Option<Vec<u8>>,
    nodes: BTreeMap<String, TopologyNode>,
    keys: BTreeMap<String, KeyHistory>,
    children: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TopologyError(pub String);

impl Topology {
    /// Reads and validates a topology file.
    ///
    /// # Errors
    /// Unreadable file, bad TOML, or an invalid tree (with the node at fault).
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TopologyError(format!("cannot read topology {}: {e}", path.display())))?;
        let file: TopologyFile = toml::from_str(&text)
            .map_err(|e| TopologyError(format!("topology {} is not valid: {e}", path.display())))?;
        let ca_pem = match &file.ca_file {
            None => None,
            Some(f) => {
                let p = path.parent().unwrap_or(Path::new(".")).join(f);
                Some(std::fs::read(&p).map_err(|e| {
                    TopologyError(format!(
                        "topology {}: cannot read its CA certificate {}: {e}",
                        path.display(),
                        p.display()
                    ))
                })?)
            }
        };
        let mut t = Self::from_file(file)
            .map_err(|e| TopologyError(format!("topology {}: {}", path.display(), e.0)))?;
        t.ca_pem = ca_pem;
        Ok(t)
    }

    /// Validates ids, parents (known, acyclic), keys and uniqueness.
    ///
    /// # Errors
    /// The first problem found.
    pub fn from_file(file: TopologyFile) -> Result<Self, TopologyError> {
        let mut nodes = BTreeMap::new();
        let mut keys = BTreeMap::new();
        let mut urls = BTreeSet::new();
        for n in &file.node {
            check_node_id(&n.id).map_err(TopologyError)?;
            if nodes.insert(n.id.clone(), n.clone()).is_some() {
                return Err(TopologyError(format!("node id {:?} appears twice", n.id)));
            }
            if !urls.insert(n.url.clone()) {
                return Err(TopologyError(format!(
                    "url {:?} appears twice (node {:?})",
                    n.url, n.id
                )));
            }
            let key = gridsync_model::keys::verifying_key_from_hex(&n.public_key)
                .map_err(|e| TopologyError(format!("node {:?}: {e}", n.id)))?;
            let mut history = KeyHistory::single(key);
            for p in &n.previous_keys {
                let k = gridsync_model::keys::verifying_key_from_hex(&p.public_key)
                    .map_err(|e| TopologyError(format!("node {:?}: previous key: {e}", n.id)))?;
                if history
                    .previous
                    .last()
                    .is_some_and(|(u, _)| *u >= p.until_seq)
                {
                    return Err(TopologyError(format!(
                        "node {:?}: previous_keys must be listed oldest first, until_seq increasing",
                        n.id
                    )));
                }
                history.previous.push((p.until_seq, k));
            }
            keys.insert(n.id.clone(), history);
        }
        for n in &file.node {
            if let Some(f) = n.former_parents.iter().find(|f| !nodes.contains_key(*f)) {
                return Err(TopologyError(format!(
                    "node {:?} names unknown former parent {f:?}",
                    n.id
                )));
            }
        }
        let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in &file.node {
            if let Some(p) = &n.parent {
                if !nodes.contains_key(p) {
                    return Err(TopologyError(format!(
                        "node {:?} names unknown parent {p:?}",
                        n.id
                    )));
                }
                children.entry(p.clone()).or_default().push(n.id.clone());
            }
        }
        for n in &file.node {
            let mut seen = BTreeSet::new();
            let mut at = n.id.as_str();
            while let Some(p) = nodes[at].parent.as_deref() {
                if !seen.insert(at) {
                    return Err(TopologyError(format!(
                        "node {:?} is part of a parent cycle",
                        n.id
                    )));
                }
                at = p;
            }
        }
        Ok(Self {
            timezone: file.timezone,
            ca_pem: None,
            nodes,
            keys,
            children,
        })
    }

    pub fn node(&self, id: &str) -> Option<&TopologyNode> {
        self.nodes.get(id)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &TopologyNode> {
        self.nodes.values()
    }

    /// The node's current key (its sync proofs, its newest chunks).
    pub fn key(&self, id: &str) -> Option<VerifyingKey> {
        self.keys.get(id).map(|k| k.current)
    }

    /// The key that signs `origin`'s chunk whose head is at `head_seq`.
    pub fn key_at(&self, origin: &str, head_seq: u64) -> Option<VerifyingKey> {
        self.keys.get(origin).map(|k| k.at(head_seq))
    }

    /// Every key of the node, over time.
    pub fn keys(&self, id: &str) -> Option<&KeyHistory> {
        self.keys.get(id)
    }

    /// A retired node may not connect or start; its history stays.
    pub fn is_retired(&self, id: &str) -> bool {
        self.nodes.get(id).is_some_and(|n| n.retired)
    }

    pub fn children(&self, id: &str) -> &[String] {
        self.children.get(id).map_or(&[], Vec::as_slice)
    }

    /// A node without children creates events (a community).
    pub fn is_origin(&self, id: &str) -> bool {
        self.nodes.contains_key(id) && self.children(id).is_empty()
    }

    /// `id` and every node that is or ever was below it (through
    /// `former_parents`): whose history `id`'s log may rightly hold.
    pub fn historic_subtree(&self, id: &str) -> Vec<String> {
        let mut out = vec![id.to_owned()];
        let mut i = 0;
        while i < out.len() {
            let at = out[i].clone();
            let mut next: Vec<String> = self.children(&at).to_vec();
            next.extend(
                self.nodes
                    .values()
                    .filter(|n| n.former_parents.contains(&at))
                    .map(|n| n.id.clone()),
            );
            for n in next {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
            i += 1;
        }
        out
    }

    /// `id` and every node below it.
    pub fn subtree(&self, id: &str) -> Vec<String> {
        let mut out = vec![id.to_owned()];
        let mut i = 0;
        while i < out.len() {
            let next: Vec<String> = self.children(&out[i]).to_vec();
            out.extend(next);
            i += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, parent: Option<&str>, key: u8) -> TopologyNode {
        TopologyNode {
            id: id.into(),
            name: id.into(),
            parent: parent.map(Into::into),
            url: format!("http://127.0.0.1:{}", 7000 + u16::from(key)),
            public_key: hex_key(key),
            previous_keys: Vec::new(),
            retired: false,
            former_parents: Vec::new(),
        }
    }

    fn hex_key(seed: u8) -> String {
        gridsync_model::keys::verifying_key_to_hex(
            &ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key(),
        )
    }

    fn file(nodes: Vec<TopologyNode>) -> TopologyFile {
        TopologyFile {
            timezone: default_timezone(),
            ca_file: None,
            node: nodes,
        }
    }

    #[test]
    fn keys_over_time_and_history_of_parents() {
        let mut c = node("c", Some("s2"), 3);
        c.previous_keys = vec![
            PreviousKey {
                public_key: hex_key(10),
                until_seq: 5,
            },
            PreviousKey {
                public_key: hex_key(11),
                until_seq: 9,
            },
        ];
        c.former_parents = vec!["s1".into()];
        let t = Topology::from_file(file(vec![
            node("d", None, 1),
            node("s1", Some("d"), 2),
            node("s2", Some("d"), 4),
            c.clone(),
        ]))
        .unwrap();
        let k = |seed: u8| ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
        assert_eq!(t.key_at("c", 1), Some(k(10)));
        assert_eq!(t.key_at("c", 5), Some(k(10)));
        assert_eq!(t.key_at("c", 6), Some(k(11)));
        assert_eq!(t.key_at("c", 9), Some(k(11)));
        assert_eq!(t.key_at("c", 10), Some(k(3)));
        assert_eq!(t.key("c"), Some(k(3)));
        assert!(!t.subtree("s1").contains(&"c".to_owned()));
        assert!(t.historic_subtree("s1").contains(&"c".to_owned()));
        assert!(t.historic_subtree("d").contains(&"c".to_owned()));

        // Out of order previous keys, an unknown former parent: refused.
        let mut bad = c.clone();
        bad.previous_keys.reverse();
        let e = Topology::from_file(file(vec![
            node("d", None, 1),
            node("s2", Some("d"), 4),
            bad,
        ]))
        .unwrap_err();
        assert!(e.0.contains("oldest first"), "{}", e.0);
        let mut bad = c;
        bad.former_parents = vec!["nowhere".into()];
        let e = Topology::from_file(file(vec![
            node("d", None, 1),
            node("s2", Some("d"), 4),
            bad,
        ]))
        .unwrap_err();
        assert!(e.0.contains("nowhere"), "{}", e.0);
    }
}
