//! What an aggregator spends per event it receives from a child, stage by
//! stage, over 10,000 sample events (the realistic mix of
//! `gridsync_suite::sample_event`) as a community stores and sends them:
//! 250-event posts cut into ~32 KiB chunks, personal parts withheld, in
//! `batch` frames of at most 256 KiB (the defaults).
//!
//! Stages: the sender's part (reading the chunks back from a store and
//! encoding them as frames: the community's, whose chunks hold personal
//! parts to withhold — decoded and encoded again, as before, or withheld
//! on the stored bytes —, and an aggregator's forwarding the same chunks —
//! decoded and encoded again, as before, or as their stored bytes), the
//! frame's msgpack decode, each chunk's decode, its chain links and event
//! hashes (`Chunk::linked`), its head signature, the store's import (in
//! memory, and on sled without the final `fsync`), and the projection
//! (every event applied); also a lag report's receipt-time read, once per
//! chunk (`0d`, `0e`). Each reports time per 10,000 events;
//! `criterion`'s throughput line gives events/s. Apart from those, the
//! group `lag_report` times one batch's lag report at a street of 1,000
//! origins, from the child's reports to the parent's view of them: every
//! origin (built, encoded, decoded, compared with the last and copied, as
//! before `lag-changes-v1`) against the 50 that changed (built, encoded,
//! decoded, merged per origin); it prints both reports' sizes. And the
//! group `forward_one_event_chunks`: a street on sled holding 2,000
//! one-event chunks of a community that arrived one per push (phones
//! posting one at a time) reads them back for its parent as a sender
//! does (`Store::read_origin_encoded`, a batch at a time) — kept in packs
//! (the default) against each entry under its own key
//! (`pack_entry_bytes_max = 0`).
//!
//! `cargo bench --bench sync_stages`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::{SigningKey, VerifyingKey};
use gridsync_model::ingest::{parse_body, prepare, IngestContext, IngestLimits, PreparedEvent};
use gridsync_model::kinds::EventRef;
use gridsync_model::Chunk;
use gridsync_projections::{Projection, ProjectionConfig};
use gridsync_protocol::frame::Frame;
use gridsync_store::{Kv, MemKv, OriginIdentity, SledKv, Store, StoreConfig};
use serde_bytes::ByteBuf;

const POSTS: u64 = 40;
const BATCH: u64 = 250;
const EVENTS: u64 = POSTS * BATCH;
const BATCH_BYTES_MAX: usize = 256 * 1024;
const FRAME_BYTES_MAX: usize = 4 << 20;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[5; 32])
}

fn prepared(post: u64, limits: &IngestLimits) -> Vec<PreparedEvent> {
    let ctx = IngestContext {
        node_id: "c1",
        now_ms: 1_580_200_000_000,
        limits,
    };
    let events: Vec<serde_json::Value> = (0..BATCH)
        .map(|k| {
            let i = post * BATCH + k;
            gridsync_suite::sample_event(i, &format!("sync-{i}"))
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap();
    parse_body(&body, limits)
        .unwrap()
        .into_iter()
        .map(|v| prepare(v, &ctx, &|_: &EventRef| None, &mut rand::thread_rng()).unwrap())
        .collect()
}

fn store(kv: Arc<dyn Kv>, origin: bool) -> Store {
    let vk = key().verifying_key();
    Store::open(
        kv,
        StoreConfig::default(),
        origin.then(|| OriginIdentity {
            node_id: "c1".into(),
            key: key(),
        }),
        Arc::new(move |_: &str, _: u64| Some(vk)),
    )
    .unwrap()
}

/// The community's store holding the events, as `gridsync serve` would.
fn community(rt: &tokio::runtime::Runtime) -> Store {
    let limits = IngestLimits::default();
    let st = store(Arc::new(MemKv::new()), true);
    for post in 0..POSTS {
        rt.block_on(st.append(prepared(post, &limits), 1)).unwrap();
    }
    st
}

/// How a sender turns its stored chunks into what it sends.
#[derive(Clone, Copy, PartialEq)]
enum Send {
    /// Decoded, personal parts withheld, encoded again (a community's
    /// sender before it worked on the bytes; every sender before
    /// `Store::read_origin_encoded`).
    Decoded,
    /// The stored bytes with each personal part replaced by nil on the
    /// bytes (`Chunk::encoded_without_personal`: a community's sender).
    OnTheBytes,
    /// The stored bytes as they are (an aggregator's sender, for chunks
    /// without personal parts).
    Stored,
}

/// The frames a sender makes of its log, at most `BATCH_BYTES_MAX` a
/// frame, its chunks prepared as `how` says.
fn sender_frames(st: &Store, how: Send) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut after = 0;
    let mut id = 0;
    while after < EVENTS {
        let mut chunks = Vec::new();
        let mut bytes = 0;
        if how == Send::Decoded {
            for c in st.read_origin_bytes("c1", after, BATCH_BYTES_MAX).unwrap() {
                let mut c = c.chunk;
                for e in &mut c.events {
                    e.personal = None;
                }
                let enc = c.encode();
                bytes += enc.len();
                after = c.last_seq();
                chunks.push(ByteBuf::from(enc));
                if bytes >= BATCH_BYTES_MAX {
                    break;
                }
            }
        } else {
            for c in st
                .read_origin_encoded("c1", after, BATCH_BYTES_MAX)
                .unwrap()
            {
                let enc = if how == Send::Stored {
                    assert_eq!(Chunk::encoded_has_personal(&c.bytes), Some(false));
                    c.bytes
                } else {
                    Chunk::encoded_without_personal(c.bytes).unwrap()
                };
                bytes += enc.len();
                after = c.last_seq;
                chunks.push(ByteBuf::from(enc));
                if bytes >= BATCH_BYTES_MAX {
                    break;
                }
            }
        }
        id += 1;
        out.push(
            Frame::Batch {
                id,
                chunks,
                lag: Vec::new(),
            }
            .encode(),
        );
    }
    out
}

fn chunk_bytes(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .flat_map(|f| match Frame::decode(f, FRAME_BYTES_MAX).unwrap() {
            Frame::Batch { chunks, .. } => chunks.into_iter().map(ByteBuf::into_vec),
            _ => unreachable!("batch frames"),
        })
        .collect()
}

fn decoded(chunks: &[Vec<u8>]) -> Vec<Chunk> {
    chunks.iter().map(|b| Chunk::decode(b).unwrap()).collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let origin = community(&rt);
    let frames = sender_frames(&origin, Send::Decoded);
    // The same chunks either way (frames may be cut elsewhere: the store's
    // reads count their budgets differently).
    assert!(chunk_bytes(&sender_frames(&origin, Send::OnTheBytes)) == chunk_bytes(&frames));
    let chunks = chunk_bytes(&frames);
    let vk: VerifyingKey = key().verifying_key();
    println!(
        "{EVENTS} events in {} chunks, {} frames, {} bytes",
        chunks.len(),
        frames.len(),
        chunks.iter().map(Vec::len).sum::<usize>()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("sync_stages");
    group.sample_size(20);
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("0_sender_read_and_encode", |b| {
        b.iter(|| sender_frames(&origin, Send::Decoded));
    });
    group.bench_function("0c_sender_withholding_on_the_bytes", |b| {
        b.iter(|| sender_frames(&origin, Send::OnTheBytes));
    });
    // A lag report's read: when the oldest event the parent lacks was
    // received, asked once per chunk's first event (as an ack moves past
    // each chunk) — the chunk read and decoded, as before, or the time
    // read from the index and the entry's header.
    let firsts: Vec<u64> = origin
        .read_origin("c1", 0, usize::MAX)
        .unwrap()
        .iter()
        .map(|c| c.chunk.first_seq())
        .collect();
    for seq in &firsts {
        let decoded = origin.read_origin("c1", seq - 1, 1).unwrap()[0].received_at_ms;
        assert_eq!(origin.received_at("c1", *seq).unwrap(), Some(decoded));
    }
    group.bench_function("0d_receipt_times_chunk_decoded", |b| {
        b.iter(|| {
            for seq in &firsts {
                std::hint::black_box(origin.read_origin("c1", seq - 1, 1).unwrap());
            }
        });
    });
    group.bench_function("0e_receipt_times_from_entry_header", |b| {
        b.iter(|| {
            for seq in &firsts {
                std::hint::black_box(origin.received_at("c1", *seq).unwrap());
            }
        });
    });
    // A street holding the community's chunks as received (no personal
    // parts), forwarding them to its parent.
    let street = store(Arc::new(MemKv::new()), false);
    let linked: Vec<_> = decoded(&chunks)
        .into_iter()
        .map(|c| c.linked().unwrap())
        .collect();
    rt.block_on(async { street.submit_import(linked, 1).await.unwrap().await })
        .unwrap()
        .unwrap();
    assert_eq!(
        sender_frames(&street, Send::Stored),
        sender_frames(&street, Send::Decoded)
    );
    group.bench_function("0a_aggregator_sender_decode_and_encode", |b| {
        b.iter(|| sender_frames(&street, Send::Decoded));
    });
    group.bench_function("0b_aggregator_sender_stored_bytes", |b| {
        b.iter(|| sender_frames(&street, Send::Stored));
    });
    group.bench_function("1_frame_decode", |b| {
        b.iter(|| {
            for f in &frames {
                let Frame::Batch { chunks, .. } = Frame::decode(f, FRAME_BYTES_MAX).unwrap() else {
                    unreachable!()
                };
                std::hint::black_box(chunks);
            }
        });
    });
    group.bench_function("2_chunk_decode", |b| b.iter(|| decoded(&chunks)));
    group.bench_function("3_links_and_hashes", |b| {
        b.iter_batched(
            || decoded(&chunks),
            |cs| {
                cs.into_iter()
                    .map(|c| c.linked().unwrap())
                    .collect::<Vec<_>>()
            },
            BatchSize::LargeInput,
        )
    });
    let plain = decoded(&chunks);
    group.bench_function("4_head_signatures", |b| {
        b.iter(|| {
            for c in &plain {
                c.head.verify(&vk).unwrap();
            }
        })
    });
    let cfg = ProjectionConfig::new("Asia/Shanghai").unwrap();
    group.bench_function("5_projection_apply", |b| {
        b.iter(|| {
            let mut p = Projection::new(cfg.clone());
            for c in &plain {
                for e in &c.events {
                    p.apply(&e.envelope, &|_: &str, _: u64| None).unwrap();
                }
            }
            p
        })
    });
    let mut n = 0;
    for (name, sled) in [
        ("6_import_in_memory", false),
        ("7_import_sled_no_fsync", true),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let kv: Arc<dyn Kv> = if sled {
                        Arc::new(
                            SledKv::open(&dir.path().join(format!("s{n}")), 64 << 20)
                                .unwrap()
                                .unsafe_skip_fsync(),
                        )
                    } else {
                        Arc::new(MemKv::new())
                    };
                    let linked: Vec<_> = decoded(&chunks)
                        .into_iter()
                        .map(|c| c.linked().unwrap())
                        .collect();
                    (store(kv, false), linked)
                },
                |(st, linked)| {
                    // As the parent hands them over: one import per frame's
                    // worth of chunks.
                    let per_frame = chunks.len().div_ceil(frames.len());
                    let mut linked = linked;
                    while !linked.is_empty() {
                        let rest = linked.split_off(per_frame.min(linked.len()));
                        let rx = rt.block_on(st.submit_import(linked, 1)).unwrap();
                        rt.block_on(rx).unwrap().unwrap();
                        linked = rest;
                    }
                    st
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
    lag_report(c);
    forward_one_event_chunks(c);
    many_heads(c);
}

/// See the module comment.
fn lag_report(c: &mut Criterion) {
    use gridsync_protocol::LagReport;
    use std::collections::BTreeMap;
    const ORIGINS: usize = 1000;
    const CHANGED: usize = 50;
    let heads: Vec<(String, u64)> = (0..ORIGINS)
        .map(|i| (format!("d1-s1-c{i:04}"), 200 + i as u64))
        .collect();
    let report = |(origin, seq): &(String, u64)| LagReport {
        origin: origin.clone(),
        seq: *seq,
        oldest_missing_ms: Some(1_780_000_000_000),
    };
    let frame = |lag: Vec<LagReport>| Frame::Batch {
        id: 7,
        chunks: Vec::new(),
        lag,
    };
    let size = |n: usize| {
        frame(heads[..n].iter().map(report).collect())
            .encode()
            .len()
    };
    eprintln!(
        "lag report of a batch: {ORIGINS} origins {} bytes, {CHANGED} changed {} bytes, none {} bytes",
        size(ORIGINS),
        size(CHANGED),
        size(0)
    );
    let decode = |bytes: &[u8]| match Frame::decode(bytes, FRAME_BYTES_MAX).unwrap() {
        Frame::Batch { lag, .. } => lag,
        _ => unreachable!(),
    };
    let mut group = c.benchmark_group("lag_report");
    group.sample_size(50);
    let mut last: Vec<LagReport> = heads.iter().map(report).collect();
    last[0].seq -= 1;
    group.bench_function("every_origin", |b| {
        b.iter(|| {
            let sent = frame(heads.iter().map(report).collect()).encode();
            let lag = decode(&sent);
            if lag != last {
                std::hint::black_box(lag.clone());
            }
            lag
        });
    });
    let mut view: BTreeMap<String, LagReport> =
        heads.iter().map(|h| (h.0.clone(), report(h))).collect();
    group.bench_function("changed_only", |b| {
        b.iter(|| {
            let sent = frame(heads[..CHANGED].iter().map(report).collect()).encode();
            view.extend(decode(&sent).into_iter().map(|r| (r.origin.clone(), r)));
        });
    });
    group.finish();
}

/// A street's sender reading one-event chunks back for its parent, from
/// packs and from entries of their own.
fn forward_one_event_chunks(c: &mut Criterion) {
    const N: u64 = 2_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let limits = IngestLimits::default();
    let community = store(Arc::new(MemKv::new()), true);
    for i in 0..N {
        let mut one = prepared(i, &limits);
        one.truncate(1);
        rt.block_on(community.append(one, 1)).unwrap();
    }
    let chunks: Vec<Chunk> = community
        .read_log(0, N as usize)
        .unwrap()
        .into_iter()
        .map(|c| c.chunk)
        .collect();
    assert_eq!(chunks.len() as u64, N);
    let dir = tempfile::tempdir().unwrap();
    let vk = key().verifying_key();
    let street = |name: &str, pack_entry_bytes_max: usize| {
        let kv = SledKv::open(&dir.path().join(name), 64 << 20)
            .unwrap()
            .unsafe_skip_fsync();
        let st = Store::open(
            Arc::new(kv),
            StoreConfig {
                pack_entry_bytes_max,
                ..StoreConfig::default()
            },
            None,
            Arc::new(move |_: &str, _: u64| Some(vk)),
        )
        .unwrap();
        for c in &chunks {
            rt.block_on(st.import(vec![c.clone()], 1)).unwrap();
        }
        st
    };
    let forward = |st: &Store| {
        let (mut after, mut n) = (0, 0usize);
        loop {
            let batch = st
                .read_origin_encoded("c1", after, BATCH_BYTES_MAX)
                .unwrap();
            let Some(last) = batch.last() else { break };
            after = last.last_seq;
            n += batch.len();
        }
        assert_eq!(n as u64, N);
    };
    let mut group = c.benchmark_group("forward_one_event_chunks");
    group.sample_size(20);
    group.throughput(Throughput::Elements(N));
    for (name, bytes) in [
        ("packs", StoreConfig::default().pack_entry_bytes_max),
        ("entries_of_their_own", 0),
    ] {
        let st = street(name, bytes);
        group.bench_function(name, |b| b.iter(|| forward(&st)));
    }
    group.finish();
}

/// Signed heads checked one by one (`SignedHead::verify`, strict) against
/// in batches (`gridsync_model::chunk::failing_heads`, what an audit of
/// every signature uses): 1,024 heads of 4 origins, all valid. And the
/// floor of any batch check: each signature's `R` decompressed to a curve
/// point (a square root in the field, per signature; a batch equation
/// needs every `R` as a point, and the strict check instead pays a whole
/// double scalar multiplication) — nothing else of the verification.
fn many_heads(c: &mut Criterion) {
    use gridsync_model::SignedHead;
    const N: usize = 1_024;
    let keys: Vec<SigningKey> = (1..=4).map(|b| SigningKey::from_bytes(&[b; 32])).collect();
    let vks: Vec<VerifyingKey> = keys.iter().map(SigningKey::verifying_key).collect();
    let heads: Vec<SignedHead> = (0..N)
        .map(|i| SignedHead::sign(&keys[i % 4], &format!("c{}", i % 4), i as u64, [7; 32], 9))
        .collect();
    let pairs: Vec<(&SignedHead, &VerifyingKey)> = heads
        .iter()
        .enumerate()
        .map(|(i, h)| (h, &vks[i % 4]))
        .collect();
    let mut group = c.benchmark_group("many_heads");
    group.sample_size(20);
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("one_by_one_strict", |b| {
        b.iter(|| {
            for (h, k) in &pairs {
                h.verify(k).unwrap();
            }
        })
    });
    group.bench_function("batched", |b| {
        b.iter(|| assert!(gridsync_model::chunk::failing_heads(&pairs).is_empty()))
    });
    group.bench_function("floor_r_decompressed_only", |b| {
        b.iter(|| {
            for h in &heads {
                let mut r = [0; 32];
                r.copy_from_slice(&h.signature[..32]);
                let point = curve25519_dalek::edwards::CompressedEdwardsY(r).decompress();
                assert!(point.is_some());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
