//! Heads held outside the audited log — a parent's `/v1/status`, the node's
//! own heads record, an auditor's earlier checkpoint — and the check that an
//! origin really signed one.

use std::collections::BTreeMap;
use std::path::Path;

use gridsync_deploy::topology::Topology;
use gridsync_model::api::HeadView;
use gridsync_model::SignedHead;
use gridsync_store::heads_file::HeadsRecord;
use serde::{Deserialize, Serialize};

/// A head the auditor holds from elsewhere (the parent that acked it, the
/// origin itself, an earlier checkpoint): the log must reach it. The
/// `heads` of `/v1/status` have this shape (extra fields are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceHead {
    pub seq: u64,
    /// Hex hash of event `seq`.
    pub hash: String,
    /// With a signature, the reference itself is verified too.
    #[serde(default)]
    pub signed_at_ms: Option<i64>,
    #[serde(default)]
    pub signature: Option<String>,
    /// A v2 head's `after` (hex); absent for a v1 head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// `origin → head`: the `heads` object of `/v1/status` works as is.
pub type Reference = BTreeMap<String, ReferenceHead>;

impl ReferenceHead {
    /// Whether `origin` signed this head with the key it held at that seq:
    /// `None` for a head without a signature, `Some(false)` for one that
    /// does not verify (bad hex, unknown origin, wrong key or bytes).
    pub fn signed_by_origin(&self, origin: &str, topology: &Topology) -> Option<bool> {
        let (at, signature) = (self.signed_at_ms?, self.signature.as_deref()?);
        let head = (|| {
            Some(SignedHead {
                origin: origin.to_owned(),
                seq: self.seq,
                hash: hex::decode(&self.hash).ok()?.try_into().ok()?,
                signed_at_ms: at,
                signature: hex::decode(signature).ok()?.try_into().ok()?,
                after: match &self.after {
                    None => None,
                    Some(a) => Some(hex::decode(a).ok()?.try_into().ok()?),
                },
            })
        })();
        let key = topology.key_at(origin, self.seq);
        Some(matches!((head, key), (Some(h), Some(k)) if h.verify(&k).is_ok()))
    }
}

impl From<&HeadView> for ReferenceHead {
    fn from(h: &HeadView) -> Self {
        Self {
            seq: h.seq,
            hash: h.hash.clone(),
            signed_at_ms: Some(h.signed_at_ms),
            signature: Some(h.signature.clone()),
            after: h.after.clone(),
        }
    }
}

/// The node's own heads record (written beside its data directory with
/// every commit) as a reference.
pub fn from_heads_record(record: &HeadsRecord) -> Reference {
    record
        .heads
        .iter()
        .map(|(o, h)| {
            (
                o.clone(),
                ReferenceHead {
                    seq: h.seq,
                    hash: hex::encode(h.hash),
                    signed_at_ms: Some(h.signed_at_ms),
                    signature: Some(hex::encode(h.signature)),
                    after: h.after.map(hex::encode),
                },
            )
        })
        .collect()
}

/// Reads a reference file: a saved `/v1/status` answer (its `heads`) or a
/// bare `origin → head` object.
///
/// # Errors
/// Unreadable file, not JSON, or heads of the wrong shape (named).
pub fn load(path: &Path) -> Result<Reference, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    // A status answer without heads: one fetched with `?brief=true`.
    if v.get("heads").is_none() && v.get("log").is_some() && v.get("node").is_some() {
        return Err(format!(
            "{}: a brief /v1/status (no heads); save the node's full /v1/status (without ?brief=true) as the reference",
            path.display()
        ));
    }
    let heads = v.get("heads").cloned().unwrap_or(v);
    let map = heads
        .as_object()
        .ok_or_else(|| format!("{}: expected an object of heads", path.display()))?;
    let mut out = Reference::new();
    for (origin, h) in map {
        let r: ReferenceHead = serde_json::from_value(h.clone())
            .map_err(|e| format!("{}: head of {origin}: {e}", path.display()))?;
        out.insert(origin.clone(), r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::load;

    fn load_text(name: &str, text: &str) -> Result<usize, String> {
        let path = std::env::temp_dir().join(format!(
            "gridsync-reference-{}-{name}.json",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        let r = load(&path).map(|r| r.len());
        std::fs::remove_file(&path).unwrap();
        r
    }

    #[test]
    fn a_brief_status_is_refused_by_name_and_a_full_one_taken() {
        let brief = r#"{"node":"s1","log":{"chunks":3,"events":9},"children":[]}"#;
        let e = load_text("brief", brief).unwrap_err();
        assert!(e.contains("brief /v1/status"), "{e}");
        let full = r#"{"node":"s1","log":{"chunks":0,"events":0},"heads":{}}"#;
        assert_eq!(load_text("full", full), Ok(0));
        // A bare map of heads (no `heads` key) is still read as one.
        assert_eq!(load_text("bare", "{}"), Ok(0));
    }
}
