//! Test helpers shared by the protocol's integration tests.

use gridsync_model::event::{event_hash, EnvelopeHeader, OccurredAt};
use gridsync_model::{EventRecord, Hash32};

/// `origin`'s visit events `seqs`, chained after `prev`: each occurred at
/// `base_ms + seq` and was recorded at `recorded_at_ms`. Returns them and
/// the last one's hash.
pub fn visit_events(
    origin: &str,
    seqs: std::ops::RangeInclusive<u64>,
    mut prev: Hash32,
    base_ms: i64,
    recorded_at_ms: i64,
) -> (Vec<EventRecord>, Hash32) {
    let mut out = Vec::new();
    for seq in seqs {
        let data = gridsync_model::canonical::to_canonical(
            &serde_json::json!({"household": format!("h{seq}"), "method": "phone", "quarantine": "none"}),
        );
        let bytes = EnvelopeHeader {
            origin,
            seq,
            kind: "visit",
            schema: 1,
            occurred_at: OccurredAt {
                unix_ms: base_ms + seq as i64,
                offset_min: 480,
            },
            recorded_at_ms,
            grid: "g",
            recorded_by: "w",
            client_id: &format!("k{seq}"),
            prev: &prev,
            personal_digest: None,
        }
        .encode_with_data(&data);
        prev = event_hash(&bytes);
        out.push(EventRecord {
            envelope: bytes,
            personal: None,
        });
    }
    (out, prev)
}
