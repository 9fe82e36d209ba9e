//! Golden encodings of every frame (a format change fails here; bless a
//! deliberate one with `GRIDSYNC_BLESS=1`), decode limits, and the proof
//! that this crate stays free of I/O runtimes and storage engines.

use gridsync_protocol::{Frame, FrameError, LagReport, WireHead, PROTOCOL_VERSION};
use serde_bytes::ByteBuf;

fn frames() -> Vec<(&'static str, Frame)> {
    let b = |n: usize, v: u8| ByteBuf::from(vec![v; n]);
    vec![
        (
            "hello",
            Frame::Hello {
                version: PROTOCOL_VERSION,
                node: "s1-c1".into(),
                parent: "s1".into(),
                nonce: b(32, 1),
                capabilities: vec!["chunks-v1".into()],
            },
        ),
        (
            "challenge",
            Frame::Challenge {
                version: PROTOCOL_VERSION,
                node: "s1".into(),
                nonce: b(32, 2),
                proof: b(64, 3),
                capabilities: vec!["chunks-v1".into()],
            },
        ),
        ("auth", Frame::Auth { proof: b(64, 4) }),
        (
            "welcome",
            Frame::Welcome {
                heads: vec![WireHead {
                    origin: "s1-c1".into(),
                    seq: 42,
                    hash: b(32, 5),
                }],
                batch_bytes_max: None,
            },
        ),
        (
            "welcome_with_batch_limit",
            Frame::Welcome {
                heads: vec![],
                batch_bytes_max: Some(64 * 1024),
            },
        ),
        (
            "refused",
            Frame::Refused {
                code: "not_a_child".into(),
                message: "node x is not a child of s1".into(),
            },
        ),
        (
            "batch",
            Frame::Batch {
                id: 7,
                chunks: vec![b(10, 6)],
                lag: vec![LagReport {
                    origin: "s1-c1".into(),
                    seq: 50,
                    oldest_missing_ms: Some(1_580_175_000_000),
                }],
            },
        ),
        (
            "ack",
            Frame::Ack {
                id: 7,
                heads: vec![WireHead {
                    origin: "s1-c1".into(),
                    seq: 50,
                    hash: b(32, 7),
                }],
            },
        ),
        (
            "rejected",
            Frame::Rejected {
                id: 7,
                code: "gap".into(),
                message: "expected seq 51".into(),
            },
        ),
        (
            "origin_refused",
            Frame::OriginRefused {
                id: 7,
                origin: "s2-c1".into(),
                seq: 51,
                code: "foreign_origin".into(),
                message: "origin s2-c1 is not in the subtree of s1".into(),
            },
        ),
        (
            "fetch",
            Frame::Fetch {
                origin: "s1-c1".into(),
                after_seq: 40,
            },
        ),
        (
            "fetched",
            Frame::Fetched {
                origin: "s1-c1".into(),
                chunks: vec![b(10, 8)],
                head: 42,
            },
        ),
        ("ping", Frame::Ping { lag: vec![] }),
        ("pong", Frame::Pong),
    ]
}

#[test]
fn golden_frame_encodings() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/frames.txt");
    let mut text =
        String::from("# name hex(msgpack) — protocol version 2; see schemas/sync-frames.md\n");
    for (name, f) in frames() {
        let bytes = f.encode();
        assert_eq!(
            Frame::decode(&bytes, 1 << 20).unwrap(),
            f,
            "{name} round-trips"
        );
        text.push_str(&format!("{name} {}\n", hex::encode(bytes)));
    }
    if std::env::var_os("GRIDSYNC_BLESS").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(path).unwrap(),
        text,
        "frame encoding changed"
    );
}

#[test]
fn decode_refuses_oversized_and_garbage() {
    let big = Frame::Batch {
        id: 1,
        chunks: vec![ByteBuf::from(vec![0; 2000])],
        lag: vec![],
    }
    .encode();
    assert!(matches!(
        Frame::decode(&big, 1000),
        Err(FrameError::TooLarge(_, 1000))
    ));
    for garbage in [
        &[][..],
        &[0xc1],
        &[0x93, 1, 2, 3],
        &[0x81, 0xa4, b't', b'y', b'p', b'e', 0xa3, b'z', b'z', b'z'],
    ] {
        assert!(
            matches!(Frame::decode(garbage, 1000), Err(FrameError::Malformed(_))),
            "{garbage:?}"
        );
    }
}

/// The protocol crate is pure: no tokio, no sled, no sockets.
#[test]
fn protocol_crate_has_no_runtime_or_storage_dependencies() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "gridsync-protocol",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    for forbidden in ["tokio ", "sled ", "mio ", "axum ", "tungstenite "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "gridsync-protocol depends on {forbidden}:\n{tree}"
        );
    }
    assert!(
        tree.lines().any(|l| l.starts_with("gridsync-model ")),
        "sanity: the tree lists dependencies"
    );
}

/// A welcome asking for smaller batches is still a welcome to a child of an
/// older build (frames are maps; it skips the field it does not know), and
/// a welcome without the field reads as asking nothing.
#[test]
fn a_batch_limit_in_the_welcome_is_skipped_by_older_children() {
    #[derive(serde::Deserialize, Debug)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum OlderFrame {
        Welcome { heads: Vec<WireHead> },
    }
    let head = WireHead {
        origin: "s1-c1".into(),
        seq: 7,
        hash: ByteBuf::from(vec![1; 32]),
    };
    let asked = Frame::Welcome {
        heads: vec![head.clone()],
        batch_bytes_max: Some(32 * 1024),
    }
    .encode();
    let OlderFrame::Welcome { heads } =
        rmp_serde::from_slice(&asked).expect("older child reads it");
    assert_eq!(heads, vec![head.clone()]);
    // Asking nothing encodes as before the field existed (the golden
    // "welcome" above pins those bytes): an older parent's welcome.
    let older = Frame::Welcome {
        heads: vec![head.clone()],
        batch_bytes_max: None,
    }
    .encode();
    match Frame::decode(&older, 1 << 20).expect("an older parent's welcome") {
        Frame::Welcome {
            heads,
            batch_bytes_max,
        } => {
            assert_eq!(heads, vec![head]);
            assert_eq!(batch_bytes_max, None);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        gridsync_protocol::child::batch_limit(256 * 1024, None),
        256 * 1024
    );
    assert_eq!(
        gridsync_protocol::child::batch_limit(256 * 1024, Some(32 * 1024)),
        32 * 1024
    );
    assert_eq!(
        gridsync_protocol::child::batch_limit(16 * 1024, Some(32 * 1024)),
        16 * 1024
    );
    assert_eq!(gridsync_protocol::child::batch_limit(16 * 1024, Some(0)), 1);
}
