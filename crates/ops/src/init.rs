//! What happens on a node's own machine or to one node's files after
//! provisioning: `gridsync init` (its signing key, its TLS key and
//! certificate request) and `gridsync token rotate | revoke`.

use std::path::Path;

use crate::provision::{replace_file, write_file, ProvisionError};
use gridsync_deploy::tokens::{generate_token, hash_token, Role, TokenEntry};

/// Edits the `[[token]]` entries of a node config: drops every token of
/// `role` and, with `new_token`, adds it; records the plaintext (or the
/// revocation) in `tokens.toml` beside the config. The node reads its
/// tokens at start: restart it to apply. Returns how many were dropped.
fn edit_tokens(
    config: &Path,
    role: Role,
    new_token: Option<&str>,
) -> Result<usize, ProvisionError> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| ProvisionError(format!("cannot read {}: {e}", config.display())))?;
    let mut table: toml::Table = toml::from_str(&text)
        .map_err(|e| ProvisionError(format!("{} is not a node config: {e}", config.display())))?;
    let entries: Vec<TokenEntry> = table
        .get("token")
        .cloned()
        .map(|v| v.try_into())
        .transpose()
        .map_err(|e| ProvisionError(format!("{}: [[token]]: {e}", config.display())))?
        .unwrap_or_default();
    let before = entries.len();
    let mut kept: Vec<TokenEntry> = entries.into_iter().filter(|t| t.role != role).collect();
    let dropped = before - kept.len();
    if let Some(t) = new_token {
        kept.push(TokenEntry {
            role,
            hash: hash_token(t),
        });
    }
    table.insert(
        "token".into(),
        toml::Value::try_from(&kept).map_err(|e| ProvisionError(e.to_string()))?,
    );
    let out = toml::to_string(&table).map_err(|e| ProvisionError(e.to_string()))?;
    replace_file(config, &out)?;
    let tokens_path = config.with_file_name("tokens.toml");
    if let Ok(text) = std::fs::read_to_string(&tokens_path) {
        if let Ok(mut tokens) = toml::from_str::<toml::Table>(&text) {
            let value =
                new_token.map_or_else(|| "(revoked)".to_owned(), std::borrow::ToOwned::to_owned);
            tokens.insert(role.as_str().into(), toml::Value::String(value));
            let body = toml::to_string(&tokens).map_err(|e| ProvisionError(e.to_string()))?;
            replace_file(
                &tokens_path,
                &format!("# Plaintext tokens of this node; the node stores only hashes.\n{body}"),
            )?;
        }
    }
    Ok(dropped)
}

/// Gives `role` a new token (every older token of that role stops working
/// once the node restarts). Returns the new token.
///
/// # Errors
/// The config cannot be read or written.
pub fn rotate_token(config: &Path, role: Role) -> Result<String, ProvisionError> {
    let token = generate_token(role, &mut rand::rngs::OsRng);
    edit_tokens(config, role, Some(&token))?;
    Ok(token)
}

/// Removes every token of `role`. Returns how many there were.
///
/// # Errors
/// The config cannot be read or written.
pub fn revoke_tokens(config: &Path, role: Role) -> Result<usize, ProvisionError> {
    edit_tokens(config, role, None)
}

/// `gridsync init`: makes this machine's node key in `dir/node.key` (mode
/// 0600) and returns the public key, to be put in the tree file. Refuses to
/// replace an existing key unless `force` (its log would no longer verify).
///
/// # Errors
/// An existing key without `force`, or I/O problems.
pub fn init_key(id: &str, dir: &Path, force: bool) -> Result<String, ProvisionError> {
    gridsync_model::ids::check_node_id(id).map_err(|e| ProvisionError(format!("--id: {e}")))?;
    let path = dir.join("node.key");
    if path.exists() && !force {
        return Err(ProvisionError(format!(
            "{} already exists; a new key would make this node's log unverifiable. \
             Keep it, or pass --force if the node has never served",
            path.display()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| ProvisionError(format!("cannot create {}: {e}", dir.display())))?;
    if path.exists() {
        std::fs::remove_file(&path)
            .map_err(|e| ProvisionError(format!("cannot replace {}: {e}", path.display())))?;
    }
    let key = gridsync_model::keys::generate(&mut rand::rngs::OsRng);
    write_file(
        &path,
        &(gridsync_model::keys::signing_key_to_hex(&key) + "\n"),
        true,
    )?;
    Ok(gridsync_model::keys::verifying_key_to_hex(
        &key.verifying_key(),
    ))
}

/// `gridsync init --tls-host`: makes this node's TLS key in `dir/tls/` and
/// a certificate request for it (`tls/node.csr`) that `provision --tls`
/// signs; the key never leaves this machine. Returns the request's path.
///
/// # Errors
/// An existing TLS key without `force`, a bad host, or I/O problems.
pub fn init_tls(
    id: &str,
    dir: &Path,
    hosts: &[String],
    force: bool,
) -> Result<std::path::PathBuf, ProvisionError> {
    let tls_dir = dir.join("tls");
    let key_path = tls_dir.join("node.key");
    if key_path.exists() && !force {
        return Err(ProvisionError(format!(
            "{} already exists; keep it (its certificate would stop matching), or pass --force",
            key_path.display()
        )));
    }
    std::fs::create_dir_all(&tls_dir)
        .map_err(|e| ProvisionError(format!("cannot create {}: {e}", tls_dir.display())))?;
    if key_path.exists() {
        std::fs::remove_file(&key_path)
            .map_err(|e| ProvisionError(format!("cannot replace {}: {e}", key_path.display())))?;
    }
    let (csr, key) = crate::certs::node_request(id, hosts).map_err(ProvisionError)?;
    write_file(&key_path, &key, true)?;
    let csr_path = tls_dir.join("node.csr");
    write_file(&csr_path, &csr, false)?;
    Ok(csr_path)
}
