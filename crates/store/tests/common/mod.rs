//! What the store's tests share.

use gridsync_model::ingest::{prepare, IngestContext, IngestLimits, PreparedEvent};
use gridsync_model::kinds::EventRef;
use serde_json::json;

/// A household visit posted to `origin`, prepared as ingest would.
pub fn visit(origin: &str, client_id: &str, note: &str) -> PreparedEvent {
    let limits = IngestLimits::default();
    let ctx = IngestContext {
        node_id: origin,
        now_ms: 1_580_200_000_000,
        limits: &limits,
    };
    let v = json!({
        "kind": "visit", "occurred_at": "2020-01-28T09:30:00+08:00",
        "grid": "g1", "recorded_by": "w1", "client_id": client_id,
        "data": {"household": "h1", "method": "phone", "quarantine": "ongoing", "note": note}
    });
    prepare(v, &ctx, &|_: &EventRef| None, &mut rand::thread_rng()).expect("valid event")
}
