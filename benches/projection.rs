//! Projection rebuild throughput over 1,000,000 stored events, beside plain
//! decode throughput of the same events in the same run.
//!
//! The log (4 origins × 250,000 events, realistic kinds, ~30 events per
//! chunk) is written once into a sled store; then three passes read all of
//! it back: (1) read + chunk decode + each envelope's chain links,
//! (2) read + full canonical decode of every envelope (`serde_json` data),
//! (3) read + fold every event into a fresh projection (the rebuild a node
//! does on start and `gridsync rebuild` does offline), and (4) the node's
//! own `fold_log` three times.
//!
//! `cargo bench --bench projection` (`GRIDSYNC_BENCH_EVENTS`, default 1000000).

use std::sync::Arc;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use gridsync_model::Chunk;
use gridsync_projections::{Projection, ProjectionConfig};
use gridsync_store::{SledKv, Store, StoreConfig};

fn main() {
    let n_events: u64 = gridsync_suite::env_u64("GRIDSYNC_BENCH_EVENTS", 1_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let origins = ["c1", "c2", "c3", "c4"];
    let keys: Vec<SigningKey> = (0..4)
        .map(|i| SigningKey::from_bytes(&[i as u8 + 1; 32]))
        .collect();
    let vks: Vec<_> = keys.iter().map(SigningKey::verifying_key).collect();
    let kv: Arc<dyn gridsync_store::Kv> = Arc::new(SledKv::open(dir.path(), 256 << 20).unwrap());
    let store = Store::open(
        kv.clone(),
        StoreConfig::default(),
        None,
        Arc::new(move |o: &str, _: u64| origins.iter().position(|x| *x == o).map(|i| vks[i])),
    )
    .unwrap();
    let mut chains = gridsync_suite::SampleChains::new(
        origins
            .iter()
            .zip(&keys)
            .map(|(o, k)| ((*o).to_owned(), k.clone()))
            .collect(),
    );
    let per_origin = n_events / origins.len() as u64;
    let started = Instant::now();
    for o in 0..origins.len() {
        loop {
            let chunks: Vec<_> = (0..64)
                .map_while(|_| chains.next_chunk(o, 30, per_origin))
                .collect();
            if chunks.is_empty() {
                break;
            }
            rt.block_on(store.import(chunks, 1)).unwrap();
        }
    }
    let total = store.counts().events;
    eprintln!(
        "wrote {total} events in {} chunks in {:.1} s",
        store.counts().chunks,
        started.elapsed().as_secs_f64()
    );

    let pass = |name: &str, f: &mut dyn FnMut(&Chunk)| {
        let t = Instant::now();
        let mut offset = 0;
        loop {
            let entries = store.read_log(offset, 512).unwrap();
            if entries.is_empty() {
                break;
            }
            for e in &entries {
                f(&e.chunk);
            }
            offset = entries.last().unwrap().offset + 1;
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "{name}: {total} events in {s:.2} s = {:.0} events/s",
            total as f64 / s
        );
        total as f64 / s
    };
    let links = pass("read + chunk decode + chain links", &mut |c| {
        for r in &c.events {
            std::hint::black_box(gridsync_model::event::read_links(&r.envelope).unwrap());
        }
    });
    let full = pass("read + full canonical envelope decode", &mut |c| {
        for r in &c.events {
            std::hint::black_box(gridsync_model::Envelope::decode(&r.envelope).unwrap());
        }
    });
    let rss_mb = || gridsync_suite::rss_kib(std::process::id()) as f64 / 1024.0;
    let rss_before = rss_mb();
    let mut projection = Projection::new(ProjectionConfig::new("Asia/Shanghai").unwrap());
    let lookup = |_: &str, _: u64| None;
    let rebuild = pass("rebuild (read + fold into the projection)", &mut |c| {
        for r in &c.events {
            projection.apply(&r.envelope, &lookup).unwrap();
        }
    });
    println!(
        "rebuild / chain-links decode = {:.2}; rebuild / full decode = {:.2}; unprojected events: {}",
        rebuild / links,
        rebuild / full,
        projection.unprojected()
    );
    println!(
        "process RSS before the rebuild {rss_before:.0} MB, after {:.0} MB (the projection of {total} events, and the storage cache the reads filled)",
        rss_mb()
    );
    // The node's own fold (`fold_log`: its reads, its cut, its lookups),
    // three times into a fresh projection; the same state as above.
    let mut folds = Vec::new();
    for _ in 0..3 {
        let mut p = Projection::new(ProjectionConfig::new("Asia/Shanghai").unwrap());
        let t = Instant::now();
        gridsync_projections::fold::fold_log(
            &store,
            &mut p,
            0,
            gridsync_projections::fold::Cut::Everything,
            &|_| {},
        )
        .unwrap();
        folds.push(total as f64 / t.elapsed().as_secs_f64());
        assert!(p.same_state(&projection));
    }
    folds.sort_by(f64::total_cmp);
    println!(
        "fold_log (the node's rebuild): {:.0} / {:.0} / {:.0} events/s, median {:.0}",
        folds[0], folds[1], folds[2], folds[1]
    );

    // The projection saved beside the log, and a start resuming from it
    // (load + fold on; nothing was committed after it), three times.
    let snap_dir = tempfile::tempdir().unwrap();
    let file = snap_dir.path().join("data.projection");
    let end = *store.subscribe().borrow();
    let t = Instant::now();
    gridsync_projections::snapshot::save(&projection, end, &store, &file).unwrap();
    let save_s = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(&file).unwrap().len();
    // The projection's own size in memory: the RSS a loaded copy adds
    // (no log reads involved, so no storage cache in it).
    let before_copy = rss_mb();
    let copy = gridsync_projections::snapshot::load(
        &file,
        ProjectionConfig::new("Asia/Shanghai").unwrap(),
        &store,
    )
    .unwrap();
    println!(
        "a loaded copy of the projection adds {:.1} MB of RSS ({} events)",
        rss_mb() - before_copy,
        total
    );
    drop(copy);
    let mut resumes = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let cfg = ProjectionConfig::new("Asia/Shanghai").unwrap();
        let (mut resumed, from) = gridsync_projections::snapshot::load(&file, cfg, &store).unwrap();
        gridsync_projections::fold::fold_log(
            &store,
            &mut resumed,
            from,
            gridsync_projections::fold::Cut::Everything,
            &|_| {},
        )
        .unwrap();
        resumes.push(t.elapsed().as_secs_f64());
        assert!(resumed.same_state(&projection));
    }
    resumes.sort_by(f64::total_cmp);
    let resume_s = resumes[1];
    println!(
        "snapshot: {size} bytes, saved in {save_s:.2} s; resume from it: {:.3} / {:.3} / {:.3} s, median {resume_s:.3} s vs rebuild {:.2} s ({:.0}× faster)",
        resumes[0],
        resumes[1],
        resumes[2],
        total as f64 / rebuild,
        total as f64 / rebuild / resume_s
    );

    // Auditor passes over the same log: full verification (every chain
    // link, every chunk signature, canonical form of every envelope, heads
    // table, index), and replay (decode + JSON view + serialisation).
    let topo_file = gridsync_deploy::topology::TopologyFile {
        timezone: "Asia/Shanghai".into(),
        ca_file: None,
        node: origins
            .iter()
            .enumerate()
            .map(|(i, o)| gridsync_deploy::topology::TopologyNode {
                id: (*o).into(),
                name: (*o).into(),
                parent: None,
                url: format!("http://127.0.0.1:{}", 9000 + i),
                public_key: hex::encode(keys[i].verifying_key().to_bytes()),
                previous_keys: Vec::new(),
                retired: false,
                former_parents: Vec::new(),
            })
            .collect(),
    };
    let topo = gridsync_deploy::topology::Topology::from_file(topo_file).unwrap();
    let t = Instant::now();
    let report = gridsync_audit::verify::verify(kv.as_ref(), &topo, None, None, &|_| {});
    let s = t.elapsed().as_secs_f64();
    assert!(
        report.ok(),
        "{:?}",
        &report.problems[..report.problems.len().min(3)]
    );
    println!(
        "audit verify: {} events in {s:.2} s = {:.0} events/s",
        report.events,
        report.events as f64 / s
    );
    let mut sink = std::io::sink();
    let replay = pass("audit replay (decode + JSON view + serialise)", &mut |c| {
        for (ev, rec) in c.decode_events().unwrap().iter().zip(&c.events) {
            serde_json::to_writer(&mut sink, &gridsync_model::api::event_view(ev, rec, true))
                .unwrap();
        }
    });
    println!("replay / full decode = {:.2}", replay / full);
}
