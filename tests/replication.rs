//! Real processes: a 3-level tree (1 district, 2 streets, 4 communities),
//! each node its own `gridsync serve`, with fault proxies between children
//! and parents that cut connections and hold partitions at random, while
//! events are posted at every community and the street and district
//! processes are `kill -9`ed and restarted. At the end the district's heads
//! equal every community's, and reading everything back from the district
//! shows each `(origin, seq)` exactly once with verifying chains
//! (DESIGN.md §3 invariants 1–3).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gridsync_suite::{provision_fast, sample_event, set_url, Server};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy that can cut every connection and refuse new ones for a
/// while (a partition).
struct FaultProxy {
    generation: Arc<AtomicU64>,
    blocked_until_ms: Arc<AtomicU64>,
    started: Instant,
}

impl FaultProxy {
    async fn start(upstream: String) -> (Self, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let generation = Arc::new(AtomicU64::new(0));
        let blocked_until_ms = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let (g, b) = (generation.clone(), blocked_until_ms.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if b.load(Ordering::Relaxed) > started.elapsed().as_millis() as u64 {
                    drop(inbound);
                    continue;
                }
                let my_gen = g.load(Ordering::Relaxed);
                let g = g.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let cut = async {
                        while g.load(Ordering::Relaxed) == my_gen {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy(&mut ri, &mut wo) => {}
                        _ = tokio::io::copy(&mut ro, &mut wi) => {}
                        () = cut => {}
                    }
                });
            }
        });
        (
            FaultProxy {
                generation,
                blocked_until_ms,
                started,
            },
            format!("http://{addr}"),
        )
    }

    fn cut(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    fn partition(&self, ms: u64) {
        self.blocked_until_ms.store(
            self.started.elapsed().as_millis() as u64 + ms,
            Ordering::Relaxed,
        );
        self.cut();
    }
}

async fn get(http: &reqwest::Client, url: &str, token: &str) -> Option<Value> {
    let r = http
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_converges_through_cuts_partitions_and_kill_9() {
    let seed: u64 = std::env::var("GRIDSYNC_REPL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("replay with GRIDSYNC_REPL_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let nodes = [
        ("district", None),
        ("s1", Some("district")),
        ("s2", Some("district")),
        ("s1-c1", Some("s1")),
        ("s1-c2", Some("s1")),
        ("s2-c1", Some("s2")),
        ("s2-c2", Some("s2")),
    ];
    let tree = provision_fast(dir.path(), &nodes);
    // Children reach each parent through a fault proxy.
    let mut proxies = Vec::new();
    for parent in ["district", "s1", "s2"] {
        let (proxy, url) = FaultProxy::start(tree.nodes[parent].listen.clone()).await;
        set_url(&tree.topology, parent, &url);
        proxies.push(proxy);
    }
    let mut servers: BTreeMap<&str, Server> = BTreeMap::new();
    for (id, _) in &nodes {
        servers.insert(id, Server::start(&tree.nodes[*id].config, &[]));
    }
    let communities = ["s1-c1", "s1-c2", "s2-c1", "s2-c2"];
    let stop = Arc::new(AtomicBool::new(false));
    let mut posters = Vec::new();
    for c in communities {
        let url = servers[c].url.clone();
        let token = tree.nodes[c].tokens.reporter.clone();
        let stop = stop.clone();
        posters.push(tokio::spawn(async move {
            let http = gridsync_suite::http_client();
            let mut acked = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let events: Vec<Value> = (0..20)
                    .map(|k| sample_event(i + k, &format!("{c}-{}", i + k)))
                    .collect();
                i += 20;
                let r = http
                    .post(format!("{url}/v1/events"))
                    .bearer_auth(&token)
                    .json(&json!({"events": events}))
                    .send()
                    .await;
                if let Ok(r) = r {
                    if let Ok(v) = r.json::<Value>().await {
                        if let Some(last) = v["results"].as_array().and_then(|a| a.last()) {
                            acked = acked.max(last["seq"].as_u64().unwrap());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            acked
        }));
    }

    // Chaos for a while.
    let chaos_until = Instant::now() + Duration::from_secs(12);
    let mut kills = 0;
    while Instant::now() < chaos_until {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..600))).await;
        match rng.gen_range(0..4) {
            0 => proxies[rng.gen_range(0..3)].cut(),
            1 => proxies[rng.gen_range(0..3)].partition(rng.gen_range(300..1500)),
            _ => {
                let victim = ["district", "s1", "s2"][rng.gen_range(0..3)];
                let config = tree.nodes[victim].config.clone();
                let mut s = servers.remove(victim).unwrap();
                tokio::task::spawn_blocking(move || s.kill9())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(rng.gen_range(50..500))).await;
                let s = tokio::task::spawn_blocking(move || Server::start(&config, &[]))
                    .await
                    .unwrap();
                servers.insert(victim, s);
                kills += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked: BTreeMap<&str, u64> = BTreeMap::new();
    for (c, p) in communities.iter().zip(posters) {
        acked.insert(c, p.await.unwrap());
    }
    eprintln!("chaos done: {kills} kills; acknowledged per community: {acked:?}");
    assert!(kills > 0);

    // Heal: wait until the district's heads equal every community's.
    let http = gridsync_suite::http_client();
    let district = &tree.nodes["district"];
    let mut community_heads = BTreeMap::new();
    for c in communities {
        let st = get(
            &http,
            &format!("{}/v1/status", servers[c].url),
            &tree.nodes[c].tokens.viewer,
        )
        .await
        .unwrap();
        let seq = st["heads"][c]["seq"].as_u64().unwrap();
        assert!(seq >= acked[c], "{c} lost acknowledged events");
        community_heads.insert(c.to_string(), (seq, st["heads"][c]["hash"].clone()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Value::Null;
    loop {
        if let Some(st) = get(
            &http,
            &format!("{}/v1/status", servers["district"].url),
            &district.tokens.viewer,
        )
        .await
        {
            let done = community_heads.iter().all(|(c, (seq, hash))| {
                st["heads"][c]["seq"].as_u64() == Some(*seq) && &st["heads"][c]["hash"] == hash
            });
            last = st;
            if done {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "district did not converge in 60 s: {last}\nwant {community_heads:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Children report no lag once converged.
    for child in last["children_status"].as_array().unwrap() {
        assert_eq!(child["lag_events"], 0, "{child}");
    }

    // Every (origin, seq) exactly once, chains intact, read from the district.
    for (c, (seq, _)) in &community_heads {
        let mut after = 0u64;
        let mut prev = "0".repeat(64);
        loop {
            let page = get(
                &http,
                &format!(
                    "{}/v1/events?origin={c}&after_seq={after}&limit=1000",
                    servers["district"].url
                ),
                &district.tokens.auditor,
            )
            .await
            .unwrap();
            for e in page["events"].as_array().unwrap() {
                assert_eq!(
                    e["seq"].as_u64().unwrap(),
                    after + 1,
                    "{c}: gap or duplicate after {after}"
                );
                assert_eq!(
                    e["prev"].as_str().unwrap(),
                    prev,
                    "{c}: chain broken at {}",
                    after + 1
                );
                prev = e["hash"].as_str().unwrap().to_owned();
                after += 1;
            }
            if page.get("next").is_none() {
                break;
            }
        }
        assert_eq!(after, *seq, "{c}: district holds {after} of {seq}");
    }
    // The district's numbers for a street equal the street's own (same heads).
    for street in ["s1", "s2"] {
        gridsync_suite::wait_projection_idle(&servers["district"].url, &district.tokens.viewer)
            .await;
        gridsync_suite::wait_projection_idle(
            &servers[street].url,
            &tree.nodes[street].tokens.viewer,
        )
        .await;
        let q = format!("/v1/aggregates?node={street}&from=2020-01-19&to=2020-01-29&depth=2");
        let at_district = get(
            &http,
            &format!("{}{q}", servers["district"].url),
            &district.tokens.viewer,
        )
        .await
        .unwrap();
        let at_street = get(
            &http,
            &format!("{}{q}", servers[street].url),
            &tree.nodes[street].tokens.viewer,
        )
        .await
        .unwrap();
        for key in ["days", "totals", "children", "state_hash"] {
            assert_eq!(
                at_district[key], at_street[key],
                "{street}: {key} differs between district and street"
            );
        }
        assert!(at_street["totals"]["entries"].as_i64().unwrap() > 0);
    }

    // A restart of the district verifies its whole log again.
    let config = district.config.clone();
    let mut s = servers.remove("district").unwrap();
    tokio::task::spawn_blocking(move || {
        assert!(s.terminate(), "clean shutdown");
        drop(Server::start(&config, &[]));
    })
    .await
    .unwrap();
}
