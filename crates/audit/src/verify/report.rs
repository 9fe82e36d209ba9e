//! What `audit verify` reports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `gap`, `broken_chain`, `bad_signature`, `not_canonical`, `undecodable`,
    /// `foreign_origin`, `unknown_origin`, `duplicate`, `fork`, `heads_mismatch`,
    /// `index_mismatch`, `truncated`, `equivocation_evidence`, `missing_entry`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginReport {
    pub events: u64,
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    pub head_hash: String,
    pub problems: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    pub entries: u64,
    pub events: u64,
    pub origins: BTreeMap<String, OriginReport>,
    pub problems: Vec<Problem>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub(super) fn problem(
        &mut self,
        kind: &str,
        origin: Option<&str>,
        seq: Option<u64>,
        offset: Option<u64>,
        message: String,
    ) {
        if let Some(o) = origin {
            if let Some(r) = self.origins.get_mut(o) {
                r.problems += 1;
            }
        }
        self.problems.push(Problem {
            kind: kind.to_owned(),
            origin: origin.map(str::to_owned),
            seq,
            offset,
            message,
        });
    }
}
