//! HTTP ingest throughput: an in-process community node on 127.0.0.1 and
//! concurrent clients posting batches of events (JSON), every event durable
//! before its reply. Client and server share the machine's cores.
//!
//! `cargo bench --bench ingest_http`

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gridsync_ops::provision::{provision_nodes, PlannedNode};

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn body(batch: usize) -> Vec<u8> {
    let events: Vec<serde_json::Value> = (0..batch)
        .map(|_| {
            let i = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            gridsync_suite::sample_event(i, &format!("http-{i}"))
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nodes = [PlannedNode {
        id: "c1".into(),
        name: "c1".into(),
        parent: None,
        listen: "127.0.0.1:1".into(),
        public_key: None,
        forward_personal: false,
    }];
    provision_nodes("Asia/Shanghai", &nodes, dir.path(), Default::default()).unwrap();
    let config =
        gridsync_deploy::config::NodeConfig::load(&dir.path().join("c1/config.toml")).unwrap();
    let tokens: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.path().join("c1/tokens.toml")).unwrap())
            .unwrap();
    let token = tokens["reporter"].as_str().unwrap().to_owned();
    let (url, _guard) = rt.block_on(async {
        let state =
            gridsync_node::node::open_node(config, &gridsync_node::node::OpenOptions::default())
                .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/events", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(gridsync_server::serve(state, listener, async {
            let _ = rx.await;
        }));
        (url, tx)
    });

    let mut group = c.benchmark_group("http_ingest");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for (clients, batch) in [(1usize, 100usize), (4, 100), (8, 250), (8, 1000)] {
        let requests_per_client = 4;
        group.throughput(Throughput::Elements(
            (clients * batch * requests_per_client) as u64,
        ));
        group.bench_function(format!("clients_{clients}/batch_{batch}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let bodies: Vec<Vec<Vec<u8>>> = (0..clients)
                        .map(|_| (0..requests_per_client).map(|_| body(batch)).collect())
                        .collect();
                    let started = Instant::now();
                    rt.block_on(async {
                        let mut tasks = Vec::new();
                        for mine in bodies {
                            let url = url.clone();
                            let token = token.clone();
                            tasks.push(tokio::spawn(async move {
                                let http = gridsync_suite::http_client();
                                for b in mine {
                                    let r = http
                                        .post(&url)
                                        .bearer_auth(&token)
                                        .body(b)
                                        .send()
                                        .await
                                        .unwrap();
                                    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
                                }
                            }));
                        }
                        for t in tasks {
                            t.await.unwrap();
                        }
                    });
                    total += started.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
