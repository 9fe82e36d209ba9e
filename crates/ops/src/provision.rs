//! `gridsync provision`: from an org tree to everything a deployment needs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use gridsync_deploy::config::{Limits, NodeConfig, StoreSettings};
use gridsync_deploy::tokens::{generate_token, hash_token, Role, TokenEntry};
use gridsync_deploy::topology::{default_timezone, Topology, TopologyFile, TopologyNode};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeFile {
    #[serde(default = "default_timezone")]
    timezone: String,
    node: Vec<TreeNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeNode {
    id: Spanned<String>,
    name: String,
    #[serde(default)]
    parent: Option<Spanned<String>>,
    listen: Spanned<String>,
    /// The node's public key, from `gridsync init` on its own machine:
    /// then no private key is made here.
    #[serde(default)]
    public_key: Option<Spanned<String>>,
    /// Send personal parts of events up to this node's parent (default:
    /// they stay at the community).
    #[serde(default)]
    forward_personal: bool,
}

/// Plaintext tokens of one node, written to `<id>/tokens.toml`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokensFile {
    pub reporter: String,
    pub viewer: String,
    pub auditor: String,
    pub admin: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProvisionError(pub String);

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// One node of a validated tree.
#[derive(Clone, Debug)]
pub struct PlannedNode {
    pub id: String,
    pub name: String,
    pub parent: Option<String>,
    pub listen: String,
    /// Born on the node's own machine (`gridsync init`): provision writes no
    /// private key for it.
    pub public_key: Option<ed25519_dalek::VerifyingKey>,
    /// `privacy.forward_personal` of its config.
    pub forward_personal: bool,
}

/// Parses and validates a tree file's text. Errors name the line at fault.
///
/// # Errors
/// Bad TOML, bad ids, duplicate ids or listen addresses, unknown parents,
/// cycles, or a listen address that is not `host:port`.
pub fn parse_tree(text: &str, file: &str) -> Result<(String, Vec<PlannedNode>), ProvisionError> {
    let tree: TreeFile =
        toml::from_str(text).map_err(|e| ProvisionError(format!("{file}: {e}")))?;
    if tree.node.is_empty() {
        return Err(ProvisionError(format!("{file}: no [[node]] entries")));
    }
    let at = |span: std::ops::Range<usize>| format!("{file}:{}", line_of(text, span.start));
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut listens: BTreeSet<String> = BTreeSet::new();
    for n in &tree.node {
        let id = n.id.get_ref();
        gridsync_model::ids::check_node_id(id)
            .map_err(|e| ProvisionError(format!("{}: {e}", at(n.id.span()))))?;
        if ids.insert(id.clone(), n.id.span().start).is_some() {
            return Err(ProvisionError(format!(
                "{}: duplicate node id {id:?}",
                at(n.id.span())
            )));
        }
        let listen = n.listen.get_ref();
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ProvisionError(format!(
                "{}: listen {listen:?} is not an ip:port address like 127.0.0.1:7400",
                at(n.listen.span())
            )));
        }
        if !listens.insert(listen.clone()) {
            return Err(ProvisionError(format!(
                "{}: listen address {listen:?} is used twice",
                at(n.listen.span())
            )));
        }
        if let Some(k) = &n.public_key {
            gridsync_model::keys::verifying_key_from_hex(k.get_ref()).map_err(|e| {
                ProvisionError(format!(
                    "{}: public_key of {id:?}: {e} (copy the line `gridsync init` printed)",
                    at(k.span())
                ))
            })?;
        }
    }
    let parent_of: BTreeMap<&str, Option<&Spanned<String>>> = tree
        .node
        .iter()
        .map(|n| (n.id.get_ref().as_str(), n.parent.as_ref()))
        .collect();
    for n in &tree.node {
        if let Some(p) = &n.parent {
            if !ids.contains_key(p.get_ref()) {
                return Err(ProvisionError(format!(
                    "{}: node {:?} names unknown parent {:?}",
                    at(p.span()),
                    n.id.get_ref(),
                    p.get_ref()
                )));
            }
        }
        let mut seen = BTreeSet::new();
        let mut cur = n.id.get_ref().as_str();
        while let Some(Some(p)) = parent_of.get(cur) {
            if !seen.insert(cur) {
                return Err(ProvisionError(format!(
                    "{}: node {:?} is part of a parent cycle",
                    at(n.id.span()),
                    n.id.get_ref()
                )));
            }
            cur = p.get_ref();
        }
    }
    let roots: Vec<&str> = tree
        .node
        .iter()
        .filter(|n| n.parent.is_none())
        .map(|n| n.id.get_ref().as_str())
        .collect();
    if roots.is_empty() {
        return Err(ProvisionError(format!(
            "{file}: no root node (a node without parent)"
        )));
    }
    let nodes = tree
        .node
        .into_iter()
        .map(|n| PlannedNode {
            id: n.id.into_inner(),
            name: n.name,
            parent: n.parent.map(Spanned::into_inner),
            listen: n.listen.into_inner(),
            public_key: n
                .public_key
                .and_then(|k| gridsync_model::keys::verifying_key_from_hex(k.get_ref()).ok()),
            forward_personal: n.forward_personal,
        })
        .collect();
    Ok((tree.timezone, nodes))
}

pub(crate) fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), ProvisionError> {
    let err = |e: std::io::Error| ProvisionError(format!("cannot write {}: {e}", path.display()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(())
}

/// How to provision.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProvisionOptions {
    /// Overwrite an earlier provisioning (its keys are replaced).
    pub force: bool,
    /// Make a private CA (`ca.crt`, `ca.key`; an existing one in `out` is
    /// kept) and a certificate per node, and give every node an `https`
    /// URL. Without it every config says `plain_http = true`.
    pub tls: bool,
}

/// Writes topology, configs, keys and tokens for every node of the tree in
/// `tree_path` into `out`. Refuses to overwrite an earlier provisioning
/// (its keys would be lost) unless `force`.
///
/// # Errors
/// Invalid tree (with the line at fault) or I/O problems.
pub fn provision(
    tree_path: &Path,
    out: &Path,
    opts: ProvisionOptions,
) -> Result<Topology, ProvisionError> {
    let text = std::fs::read_to_string(tree_path)
        .map_err(|e| ProvisionError(format!("cannot read {}: {e}", tree_path.display())))?;
    let (timezone, nodes) = parse_tree(&text, &tree_path.display().to_string())?;
    provision_nodes(&timezone, &nodes, out, opts)
}

/// The deployment's CA in `out`: the one already there, or a new one.
fn deployment_ca(out: &Path) -> Result<crate::certs::Ca, ProvisionError> {
    let (cert, key) = (out.join("ca.crt"), out.join("ca.key"));
    if cert.exists() || key.exists() {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| ProvisionError(format!("cannot read {}: {e}", p.display())))
        };
        return crate::certs::Ca::load(&read(&cert)?, &read(&key)?).map_err(|e| {
            ProvisionError(format!(
                "{} / {}: {e}; move them away to make a new CA",
                cert.display(),
                key.display()
            ))
        });
    }
    let ca = crate::certs::Ca::generate(&out.display().to_string()).map_err(ProvisionError)?;
    write_file(&cert, &ca.cert_pem, false)?;
    write_file(&key, &ca.key_pem, true)?;
    Ok(ca)
}

/// The node's certificate (and key, unless its key is born on its own
/// machine: then its request `tls/node.csr` is signed).
fn node_tls(
    ca: &crate::certs::Ca,
    n: &PlannedNode,
    dir: &Path,
) -> Result<gridsync_deploy::config::TlsSettings, ProvisionError> {
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir)
        .map_err(|e| ProvisionError(format!("cannot create {}: {e}", tls_dir.display())))?;
    let host = n
        .listen
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .map_err(|e| ProvisionError(format!("{}: listen {:?}: {e}", n.id, n.listen)))?;
    let hosts = vec![host];
    if n.public_key.is_some() {
        let csr_path = tls_dir.join("node.csr");
        let csr = std::fs::read_to_string(&csr_path).map_err(|e| {
            ProvisionError(format!(
                "node {:?} has its key born on its own machine, so its TLS key must be too: \
                 run `gridsync init --id {} --tls-host <its address>` there and copy the \
                 tls/node.csr it writes to {} ({e})",
                n.id,
                n.id,
                csr_path.display()
            ))
        })?;
        let cert = ca
            .sign_csr(&n.id, &csr, &hosts)
            .map_err(|e| ProvisionError(format!("{}: {e}", csr_path.display())))?;
        write_file(&tls_dir.join("node.crt"), &cert, false)?;
    } else {
        let (cert, key) = ca.node_cert(&n.id, &hosts).map_err(ProvisionError)?;
        write_file(&tls_dir.join("node.crt"), &cert, false)?;
        write_file(&tls_dir.join("node.key"), &key, true)?;
    }
    Ok(gridsync_deploy::config::TlsSettings {
        cert_file: "tls/node.crt".into(),
        key_file: "tls/node.key".into(),
    })
}

/// [`provision`] from an already parsed tree (used by `gridsync demo`).
///
/// # Errors
/// I/O problems, or an existing provisioning without `force`.
pub fn provision_nodes(
    timezone: &str,
    nodes: &[PlannedNode],
    out: &Path,
    opts: ProvisionOptions,
) -> Result<Topology, ProvisionError> {
    if out.join("topology.toml").exists() && !opts.force {
        return Err(ProvisionError(format!(
            "{} already holds a provisioned tree; re-provisioning would replace every node's key. \
             Choose another --out directory, or pass --force",
            out.display()
        )));
    }
    std::fs::create_dir_all(out)
        .map_err(|e| ProvisionError(format!("cannot create {}: {e}", out.display())))?;
    let mut rng = rand::rngs::OsRng;
    let ca = if opts.tls {
        Some(deployment_ca(out)?)
    } else {
        None
    };
    let mut topo_nodes = Vec::new();
    for n in nodes {
        let dir = out.join(&n.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ProvisionError(format!("cannot create {}: {e}", dir.display())))?;
        let public_key = match n.public_key {
            // Born on its own machine: no private key is made (or kept) here.
            Some(k) => {
                // A key already here (init run into this directory) must be
                // the one the tree names.
                let existing = std::fs::read_to_string(dir.join("node.key"))
                    .ok()
                    .and_then(|t| gridsync_model::keys::signing_key_from_hex(&t).ok());
                if existing.is_some_and(|e| e.verifying_key() != k) {
                    return Err(ProvisionError(format!(
                        "{}/node.key does not match the public_key the tree gives {:?}; \
                         fix the tree (copy what `gridsync init` printed) or move that key away",
                        dir.display(),
                        n.id
                    )));
                }
                k
            }
            None => {
                let key = gridsync_model::keys::generate(&mut rng);
                write_file(
                    &dir.join("node.key"),
                    &(gridsync_model::keys::signing_key_to_hex(&key) + "\n"),
                    true,
                )?;
                key.verifying_key()
            }
        };
        let tokens = TokensFile {
            reporter: generate_token(Role::Reporter, &mut rng),
            viewer: generate_token(Role::Viewer, &mut rng),
            auditor: generate_token(Role::Auditor, &mut rng),
            admin: generate_token(Role::Admin, &mut rng),
        };
        let token_entries = [
            (Role::Reporter, &tokens.reporter),
            (Role::Viewer, &tokens.viewer),
            (Role::Auditor, &tokens.auditor),
            (Role::Admin, &tokens.admin),
        ]
        .map(|(role, token)| TokenEntry {
            role,
            hash: hash_token(token),
        })
        .to_vec();
        let tokens_text = format!(
            "# Plaintext tokens of node {:?}. Hand each to the people of that role; the node stores only hashes.\n{}",
            n.id,
            toml::to_string(&tokens).map_err(|e| ProvisionError(e.to_string()))?
        );
        write_file(&dir.join("tokens.toml"), &tokens_text, true)?;
        let tls = match &ca {
            Some(ca) => Some(node_tls(ca, n, &dir)?),
            None => None,
        };
        let config = NodeConfig {
            id: n.id.clone(),
            listen: n.listen.clone(),
            data_dir: "data".into(),
            parent: n.parent.clone(),
            key_file: "node.key".into(),
            topology_file: "../topology.toml".into(),
            plain_http: tls.is_none(),
            tls,
            token: token_entries,
            limits: Limits::default(),
            store: StoreSettings::default(),
            sync: gridsync_deploy::config::SyncSettings::default(),
            projections: gridsync_deploy::config::ProjectionSettings::default(),
            privacy: gridsync_deploy::config::PrivacySettings {
                forward_personal: n.forward_personal,
            },
        };
        let config_text = format!(
            "# gridsync node {:?} ({}). Relative paths are relative to this file.\n{}",
            n.id,
            n.name,
            toml::to_string(&config).map_err(|e| ProvisionError(e.to_string()))?
        );
        write_file(&dir.join("config.toml"), &config_text, false)?;
        topo_nodes.push(TopologyNode {
            id: n.id.clone(),
            name: n.name.clone(),
            parent: n.parent.clone(),
            url: format!(
                "{}://{}",
                if ca.is_some() { "https" } else { "http" },
                n.listen
            ),
            public_key: gridsync_model::keys::verifying_key_to_hex(&public_key),
            previous_keys: Vec::new(),
            retired: false,
            former_parents: Vec::new(),
        });
    }
    let file = TopologyFile {
        timezone: timezone.to_owned(),
        ca_file: ca.as_ref().map(|_| "ca.crt".to_owned()),
        node: topo_nodes,
    };
    let text = file.to_text().map_err(|e| ProvisionError(e.0))?;
    write_file(&out.join("topology.toml"), &text, false)?;
    Topology::from_file(file).map_err(|e| ProvisionError(e.0))
}

/// Replaces a config file atomically (write beside it, fsync, rename).
pub(crate) fn replace_file(path: &Path, contents: &str) -> Result<(), ProvisionError> {
    let tmp = path.with_extension("toml.new");
    write_file(&tmp, contents, true)?;
    std::fs::rename(&tmp, path)
        .map_err(|e| ProvisionError(format!("cannot replace {}: {e}", path.display())))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TREE: &str = r#"timezone = "Asia/Shanghai"
[[node]]
id = "laoshan"
name = "崂山区"
listen = "127.0.0.1:7400"
[[node]]
id = "shazikou"
name = "沙子口街道"
parent = "laoshan"
listen = "127.0.0.1:7401"
[[node]]
id = "shazikou-c01"
name = "社区"
parent = "shazikou"
listen = "127.0.0.1:7402"
"#;

    #[test]
    fn writes_a_usable_deployment() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree.toml");
        std::fs::write(&tree, TREE).unwrap();
        let out = dir.path().join("out");
        let topo = provision(&tree, &out, ProvisionOptions::default()).unwrap();
        assert!(topo.is_origin("shazikou-c01"));
        assert!(!topo.is_origin("shazikou"));
        assert_eq!(topo.subtree("laoshan").len(), 3);
        let cfg = NodeConfig::load(&out.join("shazikou-c01/config.toml")).unwrap();
        assert_eq!(cfg.parent.as_deref(), Some("shazikou"));
        assert_eq!(cfg.token.len(), 4);
        Topology::load(&cfg.topology_file).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("laoshan/node.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A second run without --force refuses to clobber the keys.
        assert!(provision(&tree, &out, ProvisionOptions::default())
            .unwrap_err()
            .0
            .contains("--force"));
    }

    #[test]
    fn errors_name_the_line() {
        let dup = TREE.replace("id = \"shazikou-c01\"", "id = \"shazikou\"");
        assert!(
            parse_tree(&dup, "t").unwrap_err().0.starts_with("t:12:"),
            "{}",
            parse_tree(&dup, "t").unwrap_err()
        );
        let unknown = TREE.replace("parent = \"laoshan\"", "parent = \"nowhere\"");
        let e = parse_tree(&unknown, "t").unwrap_err().0;
        assert!(e.starts_with("t:9:") && e.contains("unknown parent"), "{e}");
        let listen = TREE.replace("127.0.0.1:7402", "127.0.0.1:7401");
        assert!(parse_tree(&listen, "t").unwrap_err().0.starts_with("t:15:"));
        let cycle = TREE.replace(
            "name = \"崂山区\"",
            "name = \"x\"\nparent = \"shazikou-c01\"",
        );
        let e = parse_tree(&cycle, "t").unwrap_err().0;
        assert!(e.contains("cycle") || e.contains("no root"), "{e}");
    }
}
