//! The aggregates answer for any node of the tree, rolled up from a
//! projection's per-origin counts through the topology. The node's live
//! `/v1/aggregates` and the auditor's `audit project` both answer with this
//! function, so their `state_hash` can be compared.

use std::collections::BTreeMap;

use gridsync_deploy::topology::Topology;
use serde::{Deserialize, Serialize};

use crate::{format_day, parse_day, Counts, Day, Projection, HOUSEHOLDS_QUARANTINED, METRICS};

/// What is asked: a node (default: the one answering) and a range of days.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeQuery {
    pub node: Option<String>,
    /// First day `YYYY-MM-DD` (default: `days` back from `to`).
    pub from: Option<String>,
    /// Last day (default: today).
    pub to: Option<String>,
    /// Levels of children to include (1 = direct children; at most 3).
    pub depth: Option<u8>,
    /// Without `from`: the last `days` days up to `to` (default 1).
    pub days: Option<i32>,
}

/// A question the tree cannot answer, with the API's error code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RollupError {
    /// `unknown_node` (404).
    #[error("{0}")]
    UnknownNode(String),
    /// `outside_subtree` or `invalid_query` (400).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
}

impl RollupError {
    fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DayMetrics {
    pub date: String,
    pub metrics: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeAggregates {
    pub node: String,
    pub name: String,
    pub days: Vec<DayMetrics>,
    /// Flow metrics summed over the range; `households_quarantined` (a
    /// state) as of the last day; `households_visited` summed per day.
    pub totals: BTreeMap<String, i64>,
    /// With `depth` > 1: this node's children, the same way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<NodeAggregates>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub origin: String,
    pub name: String,
    /// Highest seq of the origin the numbers include.
    pub seq: u64,
    /// Seconds since the newest included event was recorded at its origin.
    pub newest_event_age_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AggregatesResponse {
    pub node: String,
    pub name: String,
    pub timezone: String,
    pub from: String,
    pub to: String,
    pub days: Vec<DayMetrics>,
    pub totals: BTreeMap<String, i64>,
    pub children: Vec<NodeAggregates>,
    pub coverage: Vec<Coverage>,
    /// Digest of every number above for this node (see `audit project`).
    pub state_hash: String,
}

fn to_map(c: &Counts) -> BTreeMap<String, i64> {
    METRICS
        .iter()
        .zip(c)
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect()
}

fn node_aggregates(
    topo: &Topology,
    p: &Projection,
    node: &str,
    from: Day,
    to: Day,
) -> (NodeAggregates, Vec<String>) {
    let origins: Vec<String> = topo
        .subtree(node)
        .into_iter()
        .filter(|o| topo.is_origin(o))
        .collect();
    let rows = p.query(&origins, from, to);
    let mut totals: Counts = [0; 16];
    for (_, c) in &rows {
        for (i, v) in c.iter().enumerate() {
            totals[i] += v;
        }
    }
    if let Some((_, last)) = rows.last() {
        totals[HOUSEHOLDS_QUARANTINED] = last[HOUSEHOLDS_QUARANTINED];
    }
    let agg = NodeAggregates {
        node: node.to_owned(),
        name: topo.node(node).map(|n| n.name.clone()).unwrap_or_default(),
        days: rows
            .iter()
            .map(|(d, c)| DayMetrics {
                date: format_day(*d),
                metrics: to_map(c),
            })
            .collect(),
        totals: to_map(&totals),
        children: Vec::new(),
    };
    (agg, origins)
}

fn children_of(
    topo: &Topology,
    p: &Projection,
    node: &str,
    from: Day,
    to: Day,
    depth: u8,
) -> Vec<NodeAggregates> {
    topo.children(node)
        .iter()
        .map(|c| {
            let mut a = node_aggregates(topo, p, c, from, to).0;
            if depth > 1 {
                a.children = children_of(topo, p, c, from, to, depth - 1);
            }
            a
        })
        .collect()
}

/// The aggregates answer from any projection (a node's live one, or one an
/// auditor folded as of some moment): `root` is the node asking, `now_ms`
/// what "today" and ages are measured against.
///
/// # Errors
/// Unknown node, a node outside `root`'s subtree, bad dates.
pub fn answer(
    topo: &Topology,
    root: &str,
    p: &Projection,
    q: &RangeQuery,
    now_ms: i64,
    days_max: i32,
) -> Result<AggregatesResponse, RollupError> {
    let node = q.node.clone().unwrap_or_else(|| root.to_owned());
    if topo.node(&node).is_none() {
        return Err(RollupError::UnknownNode(format!(
            "node {node:?} is not in the topology"
        )));
    }
    if !topo.subtree(root).contains(&node) {
        return Err(RollupError::invalid(
            "outside_subtree",
            format!("node {node} is not in the subtree of {root}; ask a node above it"),
        ));
    }
    let (from, to) = day_range(q, p.config().day_of(now_ms), days_max)?;
    let (me, origins) = node_aggregates(topo, p, &node, from, to);
    let depth = q.depth.unwrap_or(1).clamp(1, 3);
    Ok(AggregatesResponse {
        name: me.name.clone(),
        node: me.node,
        timezone: topo.timezone.clone(),
        from: format_day(from),
        to: format_day(to),
        days: me.days,
        totals: me.totals,
        children: children_of(topo, p, &node, from, to, depth),
        coverage: coverage(topo, p, &origins, now_ms),
        state_hash: p.state_hash(&origins, from, to),
    })
}

/// The days asked for: `from..=to`, at most `days_max` of them.
fn day_range(q: &RangeQuery, today: Day, days_max: i32) -> Result<(Day, Day), RollupError> {
    let parse = |name: &str, v: &Option<String>| -> Result<Day, RollupError> {
        v.as_deref()
            .map(|s| {
                parse_day(s)
                    .map_err(|m| RollupError::invalid("invalid_query", format!("{name}: {m}")))
            })
            .transpose()
            .map(|d| d.unwrap_or(today))
    };
    let to = parse("to", &q.to)?;
    let from = match (&q.from, q.days) {
        (Some(_), _) => parse("from", &q.from)?,
        (None, Some(n)) if n >= 1 => to.saturating_sub(n - 1),
        (None, Some(_)) => {
            return Err(RollupError::invalid(
                "invalid_query",
                "days must be at least 1",
            ))
        }
        (None, None) => to,
    };
    if from > to || to.saturating_sub(from) >= days_max {
        return Err(RollupError::invalid(
            "invalid_query",
            format!("from must not be after to, and the range may span at most {days_max} days"),
        ));
    }
    Ok((from, to))
}

/// How far each origin's numbers reach, and how old its newest event is.
fn coverage(topo: &Topology, p: &Projection, origins: &[String], now_ms: i64) -> Vec<Coverage> {
    let cov = p.coverage();
    origins
        .iter()
        .map(|o| {
            let (seq, newest) = cov.get(o).copied().unwrap_or((0, 0));
            Coverage {
                origin: o.clone(),
                name: topo.node(o).map(|n| n.name.clone()).unwrap_or_default(),
                seq,
                newest_event_age_s: (seq > 0).then(|| (now_ms - newest).max(0) as f64 / 1000.0),
            }
        })
        .collect()
}
