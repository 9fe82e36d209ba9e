//! Fixed vectors: checked-in bytes and the hashes and signatures they must
//! produce. Any change to the canonical encoding, the hash domain or the
//! signed-head message fails here. `GRIDSYNC_BLESS=1` rewrites the file —
//! only do that for a deliberate, versioned format change.

use ed25519_dalek::SigningKey;
use gridsync_model::canonical::to_canonical;
use gridsync_model::chunk::SignedHead;
use gridsync_model::event::{event_hash, EnvelopeHeader, OccurredAt, Personal};
use gridsync_model::{Chunk, Envelope, EventRecord, ZERO_HASH};
use serde_json::{json, Value};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/v1.json");

fn build() -> Value {
    let key = SigningKey::from_bytes(&[1; 32]);
    let personal = Personal {
        salt: [0xab; 16],
        bytes: to_canonical(
            &json!({"person": {"name": "张三", "id_number": "370212199001011234", "phone": "13800000000"}}),
        ),
    };
    let specs = [
        (
            "temperature",
            json!({"celsius": 37.6, "site": "checkpoint", "action": "referred"}),
            Some(personal),
        ),
        (
            "visit",
            json!({"household": "h-0042", "method": "phone", "quarantine": "started", "residents": 3}),
            None,
        ),
    ];
    let mut prev = ZERO_HASH;
    let mut events = Vec::new();
    let mut records = Vec::new();
    for (i, (kind, data, personal)) in specs.into_iter().enumerate() {
        let seq = i as u64 + 1;
        let digest = personal.as_ref().map(Personal::digest);
        let bytes = EnvelopeHeader {
            origin: "wanggezhuang-c07",
            seq,
            kind,
            schema: 1,
            occurred_at: OccurredAt {
                unix_ms: 1_580_175_000_000 + seq as i64 * 60_000,
                offset_min: 480,
            },
            recorded_at_ms: 1_580_175_100_000,
            grid: "g03",
            recorded_by: "w017",
            client_id: &format!("phone-7-{seq}"),
            prev: &prev,
            personal_digest: digest.as_ref(),
        }
        .encode_with_data(&to_canonical(&data));
        let hash = event_hash(&bytes);
        events.push(json!({
            "envelope": hex::encode(&bytes),
            "personal_salt": personal.as_ref().map(|p| hex::encode(p.salt)),
            "personal": personal.as_ref().map(|p| hex::encode(&p.bytes)),
            "personal_digest": digest.map(hex::encode),
            "hash": hex::encode(hash),
        }));
        records.push(EventRecord {
            envelope: bytes,
            personal,
        });
        prev = hash;
    }
    let head = SignedHead::sign(&key, "wanggezhuang-c07", 2, prev, 1_580_175_100_500);
    let chunk = Chunk {
        origin: "wanggezhuang-c07".into(),
        events: records,
        head: head.clone(),
    };
    // The same chunk closed by a v2 head, as an origin's first (`after`
    // zeros), and that head's digest (what its next head signs).
    let head_v2 = SignedHead::sign_after(
        &key,
        ("wanggezhuang-c07", 2, prev),
        1_580_175_100_500,
        [0; 32],
    );
    let chunk_v2 = Chunk {
        head: head_v2.clone(),
        ..chunk.clone()
    };
    json!({
        "comment": "gridsync format-1 vectors: see crates/model/src/event.rs and chunk.rs for the layout",
        "head_v2_message": hex::encode(head_v2.message()),
        "head_v2_signature": hex::encode(head_v2.signature),
        "head_v2_digest": hex::encode(head_v2.digest()),
        "chunk_v2": hex::encode(chunk_v2.encode()),
        "signing_key_seed": hex::encode([1u8; 32]),
        "public_key": hex::encode(key.verifying_key().to_bytes()),
        "events": events,
        "head_message": hex::encode(SignedHead::signed_message("wanggezhuang-c07", 2, &prev, 1_580_175_100_500)),
        "head_signature": hex::encode(head.signature),
        "chunk": hex::encode(chunk.encode()),
    })
}

#[test]
fn format_v1_vectors_are_stable() {
    let built = build();
    if std::env::var_os("GRIDSYNC_BLESS").is_some() {
        std::fs::write(FILE, serde_json::to_string_pretty(&built).unwrap() + "\n").unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(FILE).unwrap()).unwrap();
    assert_eq!(
        built, stored,
        "the encoder no longer produces the checked-in bytes"
    );

    // And the checked-in bytes, read on their own, verify.
    let public =
        gridsync_model::keys::verifying_key_from_hex(stored["public_key"].as_str().unwrap())
            .unwrap();
    let chunk = Chunk::decode(&hex::decode(stored["chunk"].as_str().unwrap()).unwrap()).unwrap();
    let verified = chunk.verify(1, &ZERO_HASH, &public).unwrap();
    for (v, e) in verified.iter().zip(stored["events"].as_array().unwrap()) {
        assert_eq!(hex::encode(v.hash), e["hash"].as_str().unwrap());
        let bytes = hex::decode(e["envelope"].as_str().unwrap()).unwrap();
        assert_eq!(Envelope::decode(&bytes).unwrap().encode(), bytes);
    }
    assert_eq!(
        verified[0].envelope.data,
        json!({"action": "referred", "celsius": 37.6, "site": "checkpoint"})
    );
    assert_eq!(
        hex::encode(chunk.head.signature),
        stored["head_signature"].as_str().unwrap(),
        "ed25519 signatures are deterministic"
    );
    let v2 = Chunk::decode(&hex::decode(stored["chunk_v2"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(v2.verify(1, &ZERO_HASH, &public).unwrap().len(), 2);
    assert_eq!(v2.head.after, Some([0; 32]));
    assert_eq!(
        hex::encode(v2.head.digest()),
        stored["head_v2_digest"].as_str().unwrap()
    );
    // Withholding the personal part keeps the chunk verifiable.
    let mut withheld = chunk.clone();
    withheld.events[0].personal = None;
    withheld.verify(1, &ZERO_HASH, &public).unwrap();
}
