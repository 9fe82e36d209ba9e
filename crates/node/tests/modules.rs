//! The module graphs inside the runtime crates (ARCHITECTURE.md, "Code
//! map"): read from the sources' `crate::` paths, neither `gridsync-node`
//! nor `gridsync-server` may have a cycle; the node's shared leaves (state,
//! auth, errors…) must not import the sync or opening code that uses them;
//! the server's handlers must not import the router or the accept loop.

use std::collections::{BTreeMap, BTreeSet};

/// Modules that everything may use and that use none of the runtime's
/// active parts.
const LEAVES: &[&str] = &[
    "auth",
    "error",
    "projector",
    "slots",
    "state",
    "sync_state",
    "tls",
];
/// The active parts a leaf may never import.
const ACTIVE: &[&str] = &["node", "sync"];
/// The server's handlers, and what composes them (which they never import).
const HANDLERS: &[&str] = &["events", "status", "aggregates"];
const COMPOSERS: &[&str] = &["http", "serve"];

/// `crate::x` references of one source file (use lines and paths, brace
/// groups included).
fn imports(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = src
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The module graph of the crate at `crates/<name>`.
fn graph(name: &str) -> BTreeMap<String, BTreeSet<String>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src");
    let mut g = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // A module is a file `x.rs` or a directory `x/` (all its files).
        let (name, files) = if path.is_dir() {
            let files: Vec<_> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("rs"))
                .collect();
            (
                path.file_name().unwrap().to_str().unwrap().to_owned(),
                files,
            )
        } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
            (
                path.file_stem().unwrap().to_str().unwrap().to_owned(),
                vec![path],
            )
        } else {
            continue;
        };
        if name == "lib" {
            continue;
        }
        let mut deps = BTreeSet::new();
        for f in files {
            deps.extend(imports(&std::fs::read_to_string(&f).unwrap()));
        }
        deps.remove(&name);
        g.insert(name, deps);
    }
    g
}

#[test]
fn the_module_graphs_have_no_cycle_and_leaves_stay_leaves() {
    let g = graph("node");
    for leaf in LEAVES {
        let deps = g.get(*leaf).unwrap_or_else(|| panic!("no module {leaf}"));
        for active in ACTIVE {
            assert!(
                !deps.contains(*active),
                "{leaf}.rs imports {active}: the shared leaves must not know their users"
            );
        }
    }
    let server = graph("server");
    for handler in HANDLERS {
        let deps = server
            .get(*handler)
            .unwrap_or_else(|| panic!("no module {handler}"));
        for composer in COMPOSERS {
            assert!(
                !deps.contains(*composer),
                "{handler}.rs imports {composer}: handlers must not know the router"
            );
        }
    }
    assert_acyclic(&g);
    assert_acyclic(&server);
}

fn assert_acyclic(g: &BTreeMap<String, BTreeSet<String>>) {
    // Depth-first search for a cycle.
    fn visit<'a>(
        n: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(i) = path.iter().position(|p| *p == n) {
            panic!("import cycle: {} -> {n}", path[i..].join(" -> "));
        }
        path.push(n);
        for d in g.get(n).into_iter().flatten() {
            if g.contains_key(d) {
                visit(d, g, path, done);
            }
        }
        path.pop();
        done.insert(n);
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        visit(n, g, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_reader_sees_imports() {
    // Negative control: the reader finds real edges, including brace
    // groups, so an empty graph cannot pass the test above.
    let g = graph("node");
    assert!(g["node"].contains("state") && g["node"].contains("projector"));
    assert!(g["sync"].contains("state"));
    let server = graph("server");
    assert!(server["serve"].contains("http") && server["http"].contains("events"));
    let found = imports("use crate::{alpha, beta::Gamma};\nlet x = crate::delta::f();");
    assert_eq!(
        found,
        ["alpha", "beta", "delta"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    );
}
