//! The crate graph of ARCHITECTURE.md ("Boundaries"), checked: each crate's
//! normal dependencies (transitive, from `cargo tree`) must not include
//! what it is forbidden to know about. A new `use` of a forbidden crate
//! fails here, not in review.

use std::collections::BTreeSet;

/// `(crate, forbidden dependencies)`: workspace crates it may not sit
/// above, and runtime, storage or network crates it may not touch.
const RULES: &[(&str, &[&str])] = &[
    // Pure: no I/O, no runtime, no storage, no other workspace crate.
    (
        "gridsync-model",
        &[
            "gridsync-protocol",
            "gridsync-deploy",
            "gridsync-store",
            "gridsync-projections",
            "gridsync-audit",
            "gridsync-node",
            "gridsync-server",
            "gridsync-ops",
            "gridsync",
            "tokio",
            "sled",
            "axum",
            "hyper",
            "tungstenite",
            "reqwest",
            "rustls",
            "anyhow",
        ],
    ),
    // Sans IO: the state machines see no sockets, clock or storage.
    (
        "gridsync-protocol",
        &[
            "gridsync-deploy",
            "gridsync-store",
            "gridsync-projections",
            "gridsync-audit",
            "gridsync-node",
            "gridsync-server",
            "gridsync-ops",
            "gridsync",
            "tokio",
            "mio",
            "sled",
            "axum",
            "hyper",
            "tungstenite",
            "reqwest",
            "rustls",
            "anyhow",
        ],
    ),
    // The deployment's files: parsing and validation, nothing running.
    (
        "gridsync-deploy",
        &[
            "gridsync-protocol",
            "gridsync-store",
            "gridsync-projections",
            "gridsync-audit",
            "gridsync-node",
            "gridsync-server",
            "gridsync-ops",
            "gridsync",
            "tokio",
            "sled",
            "axum",
            "hyper",
            "tungstenite",
            "reqwest",
            "rustls",
            "rcgen",
            "anyhow",
        ],
    ),
    // The log: storage, no HTTP, no topology, no protocol.
    (
        "gridsync-store",
        &[
            "gridsync-protocol",
            "gridsync-deploy",
            "gridsync-projections",
            "gridsync-audit",
            "gridsync-node",
            "gridsync-server",
            "gridsync-ops",
            "gridsync",
            "axum",
            "hyper",
            "tungstenite",
            "reqwest",
            "rustls",
            "anyhow",
        ],
    ),
    // Folds of the log rolled up through the tree: no network, no protocol.
    (
        "gridsync-projections",
        &[
            "gridsync-protocol",
            "gridsync-audit",
            "gridsync-node",
            "gridsync-server",
            "gridsync-ops",
            "gridsync",
            "axum",
            "hyper",
            "tungstenite",
            "reqwest",
            "rustls",
            "anyhow",
        ],
    ),
    // The offline audit trusts nothing of the node it audits: never the
    // runtime, the tooling or the sync protocol (an HTTP client for
    // `replay --url` only).
    (
        "gridsync-audit",
        &[
            "gridsync-protocol",
            "gridsync-node",
            "gridsync-server",
            "gridsync-ops",
            "gridsync",
            "axum",
            "tungstenite",
            "rcgen",
            "anyhow",
        ],
    ),
    // The node core: never the HTTP front above it, the CLI, the tooling or
    // the audit, never an HTTP client library or a certificate generator.
    (
        "gridsync-node",
        &[
            "gridsync",
            "gridsync-server",
            "gridsync-ops",
            "gridsync-audit",
            "gridsync-lazyfs",
            "reqwest",
            "rcgen",
            "anyhow",
        ],
    ),
    // The HTTP front: above the node core, below the tooling and the CLI.
    (
        "gridsync-server",
        &[
            "gridsync",
            "gridsync-ops",
            "gridsync-audit",
            "gridsync-lazyfs",
            "reqwest",
            "rcgen",
            "anyhow",
        ],
    ),
    // Tooling sits above the runtime, below the CLI.
    (
        "gridsync-ops",
        &[
            "gridsync",
            "gridsync-audit",
            "gridsync-lazyfs",
            "reqwest",
            "anyhow",
        ],
    ),
    // Test tool only: nothing of gridsync.
    (
        "gridsync-lazyfs",
        &[
            "gridsync-model",
            "gridsync-protocol",
            "gridsync-deploy",
            "gridsync-store",
            "gridsync-projections",
            "gridsync-audit",
            "gridsync-node",
            "gridsync-server",
            "gridsync-ops",
            "gridsync",
        ],
    ),
];

fn normal_deps(krate: &str) -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            krate,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {krate} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1) // the crate itself
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn every_crate_keeps_to_its_layer() {
    let mut broken = Vec::new();
    for (krate, forbidden) in RULES {
        let deps = normal_deps(krate);
        assert!(
            !deps.is_empty() || *krate == "gridsync-lazyfs",
            "sanity: {krate} lists dependencies"
        );
        for f in *forbidden {
            if deps.contains(*f) {
                broken.push(format!("{krate} depends on {f}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "layering broken (see ARCHITECTURE.md Boundaries):\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_checker_sees_real_dependencies() {
    // Negative control: the node does depend on the store and tokio, and
    // the CLI on the node; a checker that saw nothing would pass anything.
    let node = normal_deps("gridsync-node");
    for d in [
        "gridsync-store",
        "gridsync-protocol",
        "gridsync-deploy",
        "tokio",
        "sled",
        "axum",
    ] {
        assert!(node.contains(d), "gridsync-node should list {d}: {node:?}");
    }
    assert!(normal_deps("gridsync").contains("gridsync-node"));
    assert!(normal_deps("gridsync-audit").contains("gridsync-store"));
    assert!(normal_deps("gridsync-ops").contains("rcgen"));
    assert!(normal_deps("gridsync-server").contains("gridsync-node"));
    assert!(normal_deps("gridsync").contains("anyhow"));
}
