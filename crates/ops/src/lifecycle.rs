//! A node's life after provisioning, as edits of the topology file that
//! never invalidate history already held by ancestors:
//!
//! - **rotate a key** (`gridsync topology rotate-key`): the node gets a new
//!   key from its next seq onward; the old one stays in `previous_keys`
//!   with the last seq it signed, so old chunks keep verifying everywhere,
//!   while the old key can neither extend the chain nor open a session.
//! - **retire a node** (`gridsync topology retire`): its keys and history
//!   stay; its parent refuses its connections and it does not start.
//! - **move a node** (`gridsync topology move`): a new parent; the old one
//!   is kept in `former_parents`, so the old parent's log still audits
//!   clean. The node resumes from its new parent's heads (the new parent
//!   receives everything it lacks, the district what it lacks).
//!
//! Every edit is validated as a whole topology before it is written
//! (atomically), and then the file must reach every node that verifies the
//! edited node — its ancestors — which load it at their next start.

use std::path::Path;

use crate::provision::{replace_file, write_file, ProvisionError};
use gridsync_deploy::config::NodeConfig;
use gridsync_deploy::topology::{PreviousKey, Topology, TopologyFile};

fn err(m: impl Into<String>) -> ProvisionError {
    ProvisionError(m.into())
}

fn read_topology(path: &Path) -> Result<TopologyFile, ProvisionError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read topology {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| err(format!("topology {} is not valid: {e}", path.display())))
}

/// Validates `file` as a whole and replaces `path` with it atomically.
fn write_topology(path: &Path, file: &TopologyFile) -> Result<Topology, ProvisionError> {
    let topo = Topology::from_file(file.clone()).map_err(|e| err(e.0))?;
    let text = file.to_text().map_err(|e| err(e.0))?;
    replace_file(path, &text)?;
    Ok(topo)
}

fn node_mut<'a>(
    file: &'a mut TopologyFile,
    id: &str,
    path: &Path,
) -> Result<&'a mut gridsync_deploy::topology::TopologyNode, ProvisionError> {
    file.node.iter_mut().find(|n| n.id == id).ok_or_else(|| {
        err(format!(
            "node {id:?} is not in the topology {}",
            path.display()
        ))
    })
}

/// What [`rotate_key`] did.
#[derive(Debug)]
pub struct Rotated {
    pub id: String,
    /// The last seq the old key signed (0: the node signed no chunks).
    pub until_seq: u64,
    pub public_key: String,
    /// Where the old private key was kept.
    pub old_key_file: std::path::PathBuf,
}

/// Gives the node of `config` a new key. The node must be stopped: its log
/// is opened to find the last seq its current key signed. Writes the new
/// key beside the old (`node.key.next`), records the rotation in the
/// topology the config names, then makes the new key `node.key` (the old
/// one is kept as `node.key.until-<seq>`).
///
/// # Errors
/// A running node (its log is locked), an unreadable log or topology, I/O.
pub fn rotate_key(config_path: &Path) -> Result<Rotated, ProvisionError> {
    let config = NodeConfig::load(config_path).map_err(|e| err(e.0))?;
    let topology = Topology::load(&config.topology_file).map_err(|e| err(e.0))?;
    let is_origin = topology.is_origin(&config.id);
    let until_seq = if is_origin {
        own_head(&config, &topology)?
    } else {
        0
    };
    let new_key = gridsync_model::keys::generate(&mut rand::rngs::OsRng);
    let next = config.key_file.with_extension("key.next");
    write_file(
        &next,
        &(gridsync_model::keys::signing_key_to_hex(&new_key) + "\n"),
        true,
    )?;
    let mut file = read_topology(&config.topology_file)?;
    let node = node_mut(&mut file, &config.id, &config.topology_file)?;
    let old_public = std::mem::replace(
        &mut node.public_key,
        gridsync_model::keys::verifying_key_to_hex(&new_key.verifying_key()),
    );
    // An aggregator signs no chunks: its old key verifies nothing later,
    // so it is simply replaced.
    if is_origin && until_seq > 0 {
        if node
            .previous_keys
            .last()
            .is_some_and(|p| p.until_seq >= until_seq)
        {
            return Err(err(format!(
                "the key of {} was already rotated at seq {until_seq}; post at least one \
                 event with the current key before rotating again",
                config.id
            )));
        }
        node.previous_keys.push(PreviousKey {
            public_key: old_public,
            until_seq,
        });
    }
    write_topology(&config.topology_file, &file)?;
    let old_key_file = config
        .key_file
        .with_extension(format!("key.until-{until_seq}"));
    std::fs::rename(&config.key_file, &old_key_file)
        .and_then(|()| std::fs::rename(&next, &config.key_file))
        .map_err(|e| {
            err(format!(
                "the topology names the new key but installing it failed ({e}): move {} to {}",
                next.display(),
                config.key_file.display()
            ))
        })?;
    Ok(Rotated {
        id: config.id,
        until_seq,
        public_key: gridsync_model::keys::verifying_key_to_hex(&new_key.verifying_key()),
        old_key_file,
    })
}

/// The durable head of the node's own chain, from its (stopped) log.
fn own_head(config: &NodeConfig, topology: &Topology) -> Result<u64, ProvisionError> {
    let kv = gridsync_store::SledKv::open(&config.data_dir, 16 * 1024 * 1024).map_err(|e| {
        err(format!(
            "cannot open the log in {} ({e}); stop the node before rotating its key",
            config.data_dir.display()
        ))
    })?;
    let topo = topology.clone();
    let store = gridsync_store::Store::open(
        std::sync::Arc::new(kv),
        gridsync_store::StoreConfig {
            heads_record: Some(config.data_dir.clone()),
            ..gridsync_store::StoreConfig::default()
        },
        None,
        std::sync::Arc::new(move |o: &str, seq: u64| topo.key_at(o, seq)),
    )
    .map_err(|e| {
        err(format!(
            "the log in {} does not open: {e}",
            config.data_dir.display()
        ))
    })?;
    let head = store.head(&config.id).map_or(0, |h| h.seq);
    store.close();
    Ok(head)
}

/// Marks `id` retired. Its children must have been moved or retired first.
///
/// # Errors
/// Unknown node, live children, I/O.
pub fn retire(topology_path: &Path, id: &str) -> Result<Topology, ProvisionError> {
    let mut file = read_topology(topology_path)?;
    let live_children: Vec<String> = file
        .node
        .iter()
        .filter(|n| n.parent.as_deref() == Some(id) && !n.retired)
        .map(|n| n.id.clone())
        .collect();
    if !live_children.is_empty() {
        return Err(err(format!(
            "node {id} still has children {live_children:?}: move or retire them first"
        )));
    }
    node_mut(&mut file, id, topology_path)?.retired = true;
    write_topology(topology_path, &file)
}

/// Moves `id` under `new_parent` (keeping the old parent in
/// `former_parents`); with `config`, the node's own config is updated too.
///
/// # Errors
/// Unknown nodes, a move into its own subtree, a retired parent, I/O.
pub fn move_node(
    topology_path: &Path,
    id: &str,
    new_parent: &str,
    config: Option<&Path>,
) -> Result<Topology, ProvisionError> {
    let mut file = read_topology(topology_path)?;
    let current = Topology::from_file(file.clone()).map_err(|e| err(e.0))?;
    if current.node(new_parent).is_none() {
        return Err(err(format!(
            "new parent {new_parent:?} is not in the topology"
        )));
    }
    if current.is_retired(new_parent) {
        return Err(err(format!("new parent {new_parent} is retired")));
    }
    if current.subtree(id).iter().any(|n| n == new_parent) {
        return Err(err(format!(
            "{new_parent} is {id} or below it: a node cannot move under itself"
        )));
    }
    let node = node_mut(&mut file, id, topology_path)?;
    let Some(old) = node.parent.replace(new_parent.to_owned()) else {
        return Err(err(format!("{id} is the root; it has no parent to change")));
    };
    if old == new_parent {
        return Err(err(format!("{id} is already under {new_parent}")));
    }
    if !node.former_parents.contains(&old) {
        node.former_parents.push(old);
    }
    if let Some(cfg) = config {
        let text = std::fs::read_to_string(cfg)
            .map_err(|e| err(format!("cannot read config {}: {e}", cfg.display())))?;
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| err(format!("config {} is not valid: {e}", cfg.display())))?;
        if table.get("id").and_then(|v| v.as_str()) != Some(id) {
            return Err(err(format!("{} is not the config of {id}", cfg.display())));
        }
        table.insert("parent".into(), new_parent.into());
        let topo = write_topology(topology_path, &file)?;
        replace_file(
            cfg,
            &toml::to_string(&table).map_err(|e| err(e.to_string()))?,
        )?;
        return Ok(topo);
    }
    write_topology(topology_path, &file)
}
