//! The topology: every node's id, display name, parent, URL and public key.
//! Written by `gridsync provision`, read by every node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use gridsync_model::ids::check_node_id;
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
    /// ed25519 public key, hex.
    pub public_key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    /// IANA zone that local days are counted in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    pub node: Vec<TopologyNode>,
}

pub fn default_timezone() -> String {
    "Asia/Shanghai".to_owned()
}

/// A validated topology.
#[derive(Clone, Debug)]
pub struct Topology {
    pub timezone: String,
    nodes: BTreeMap<String, TopologyNode>,
    keys: BTreeMap<String, VerifyingKey>,
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
        Self::from_file(file)
            .map_err(|e| TopologyError(format!("topology {}: {}", path.display(), e.0)))
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
            keys.insert(n.id.clone(), key);
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

    pub fn key(&self, id: &str) -> Option<VerifyingKey> {
        self.keys.get(id).copied()
    }

    pub fn children(&self, id: &str) -> &[String] {
        self.children.get(id).map_or(&[], Vec::as_slice)
    }

    /// A node without children creates events (a community).
    pub fn is_origin(&self, id: &str) -> bool {
        self.nodes.contains_key(id) && self.children(id).is_empty()
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
