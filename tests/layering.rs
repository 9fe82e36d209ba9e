//! The crate graph of ARCHITECTURE.md ("Boundaries"), checked: each crate's
//! normal dependencies (transitive, from `cargo tree`) may include only the
//! workspace crates below it and none of the outside crates it must not
//! know about. A new `use` of a forbidden crate fails here, not in review.

use std::collections::BTreeSet;

/// No runtime or storage: the pure crates.
const RUNTIME: &[&str] = &["tokio", "mio", "sled"];
/// Servers, clients and TLS.
const NETWORK: &[&str] = &["axum", "hyper", "tungstenite", "reqwest", "rustls"];
/// Serving websockets (the audit may be an HTTP client, never a server).
const SERVING: &[&str] = &["axum", "tungstenite"];
const HTTP_CLIENT: &[&str] = &["reqwest"];
const CERT_GENERATOR: &[&str] = &["rcgen"];
/// Libraries have `thiserror` enums; `anyhow` is the CLI's.
const ANYHOW: &[&str] = &["anyhow"];

/// One crate's place: the workspace crates it may depend on (every other
/// `gridsync*` crate is forbidden: those above it and those beside it),
/// and the outside crates it may never reach, even transitively.
struct Rule {
    krate: &'static str,
    may_use: &'static [&'static str],
    never: &'static [&'static [&'static str]],
}

const RULES: &[Rule] = &[
    // Pure: no I/O, no runtime, no storage, no other workspace crate.
    Rule {
        krate: "gridsync-model",
        may_use: &[],
        never: &[RUNTIME, NETWORK, ANYHOW],
    },
    // Sans IO: the state machines see no sockets, clock or storage.
    Rule {
        krate: "gridsync-protocol",
        may_use: &["gridsync-model"],
        never: &[RUNTIME, NETWORK, ANYHOW],
    },
    // The deployment's files: parsing and validation, nothing running.
    Rule {
        krate: "gridsync-deploy",
        may_use: &["gridsync-model"],
        never: &[RUNTIME, NETWORK, CERT_GENERATOR, ANYHOW],
    },
    // The log: storage, no HTTP, no topology, no protocol.
    Rule {
        krate: "gridsync-store",
        may_use: &["gridsync-model"],
        never: &[NETWORK, ANYHOW],
    },
    // Folds of the log rolled up through the tree: no network, no protocol.
    Rule {
        krate: "gridsync-projections",
        may_use: &["gridsync-model", "gridsync-store", "gridsync-deploy"],
        never: &[NETWORK, ANYHOW],
    },
    // The offline audit trusts nothing of the node it audits: never the
    // runtime, the tooling or the sync protocol (an HTTP client for
    // `replay --url` only).
    Rule {
        krate: "gridsync-audit",
        may_use: &[
            "gridsync-model",
            "gridsync-store",
            "gridsync-deploy",
            "gridsync-projections",
        ],
        never: &[SERVING, CERT_GENERATOR, ANYHOW],
    },
    // The node core: never the HTTP front above it, the CLI, the tooling or
    // the audit, never an HTTP client library or a certificate generator.
    Rule {
        krate: "gridsync-node",
        may_use: &[
            "gridsync-model",
            "gridsync-protocol",
            "gridsync-deploy",
            "gridsync-store",
            "gridsync-projections",
        ],
        never: &[HTTP_CLIENT, CERT_GENERATOR, ANYHOW],
    },
    // The HTTP front: above the node core, below the tooling and the CLI.
    Rule {
        krate: "gridsync-server",
        may_use: &[
            "gridsync-model",
            "gridsync-protocol",
            "gridsync-deploy",
            "gridsync-store",
            "gridsync-projections",
            "gridsync-node",
        ],
        never: &[HTTP_CLIENT, CERT_GENERATOR, ANYHOW],
    },
    // Tooling sits above the runtime, below the CLI.
    Rule {
        krate: "gridsync-ops",
        may_use: &[
            "gridsync-model",
            "gridsync-protocol",
            "gridsync-deploy",
            "gridsync-store",
            "gridsync-projections",
            "gridsync-node",
            "gridsync-server",
        ],
        never: &[HTTP_CLIENT, ANYHOW],
    },
    // Test tool only: nothing of gridsync.
    Rule {
        krate: "gridsync-lazyfs",
        may_use: &[],
        never: &[],
    },
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

/// What of `deps` the rule forbids.
fn violations(rule: &Rule, deps: &BTreeSet<String>) -> Vec<String> {
    let workspace = deps
        .iter()
        .filter(|d| d.starts_with("gridsync") && !rule.may_use.contains(&d.as_str()))
        .cloned();
    let outside = rule
        .never
        .iter()
        .flat_map(|group| group.iter())
        .filter(|f| deps.contains(**f))
        .map(|f| (*f).to_owned());
    workspace.chain(outside).collect()
}

#[test]
fn every_crate_keeps_to_its_layer() {
    let mut broken = Vec::new();
    for rule in RULES {
        let krate = rule.krate;
        let deps = normal_deps(krate);
        assert!(
            !deps.is_empty() || krate == "gridsync-lazyfs",
            "sanity: {krate} lists dependencies"
        );
        let forbidden_workspace = deps
            .iter()
            .filter(|d| d.starts_with("gridsync") && !rule.may_use.contains(&d.as_str()));
        let forbidden_outside = rule
            .never
            .iter()
            .flat_map(|group| group.iter())
            .filter(|f| deps.contains(**f));
        for f in forbidden_workspace
            .map(String::as_str)
            .chain(forbidden_outside.copied())
        {
            broken.push(format!("{krate} depends on {f}"));
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
    // And the rules catch what they forbid: the CLI's dependencies break
    // the node's rule on workspace crates and outside crates alike.
    let node_rule = RULES.iter().find(|r| r.krate == "gridsync-node").unwrap();
    let found = violations(node_rule, &normal_deps("gridsync"));
    for f in [
        "gridsync-server",
        "gridsync-audit",
        "gridsync-ops",
        "anyhow",
        "rcgen",
    ] {
        assert!(found.iter().any(|v| v == f), "{f} not caught: {found:?}");
    }
}
