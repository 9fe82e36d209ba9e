//! `audit project`: the aggregates as they were at a past moment, folded
//! from a verified copy of the log by the same fold and roll-up the node
//! serves its live aggregates with (so `state_hash` values compare).

use gridsync_deploy::topology::Topology;
use gridsync_projections::fold::fold_as_of;
use gridsync_projections::rollup::{answer, AggregatesResponse, RangeQuery};
use gridsync_projections::ProjectionConfig;
use gridsync_store::Store;

use crate::AuditError;

/// Longest range of days an as-of answer spans.
const DAYS_MAX: i32 = 366;

/// The aggregates of node `at` (default: the topology's root) as of
/// `as_of_ms`: by event time, or with `known_at` by what this log had
/// committed by then.
///
/// # Errors
/// `Problems` when the log cannot be folded; `Unreadable` for a bad time
/// zone in the topology or a question the tree cannot answer.
pub fn project(
    store: &Store,
    topology: &Topology,
    as_of_ms: i64,
    known_at: bool,
    at: Option<&str>,
    q: &RangeQuery,
) -> Result<AggregatesResponse, AuditError> {
    let cfg = ProjectionConfig::new(&topology.timezone).map_err(AuditError::Unreadable)?;
    let p = fold_as_of(store, cfg, as_of_ms, known_at)
        .map_err(|e| AuditError::Problems(e.to_string()))?;
    let root = at.map(str::to_owned).unwrap_or_else(|| {
        topology
            .nodes()
            .find(|n| n.parent.is_none())
            .map(|n| n.id.clone())
            .unwrap_or_default()
    });
    answer(topology, &root, &p, q, as_of_ms, DAYS_MAX)
        .map_err(|e| AuditError::Unreadable(e.to_string()))
}
