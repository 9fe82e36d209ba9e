//! A node runs with glibc's allocator tuned for the store's write pattern
//! (`crates/gridsync/src/malloc_tuning.rs`: the binary re-executes itself
//! once with `GLIBC_TUNABLES`; BENCHMARKS.md, "glibc's allocator", for
//! what it buys). Proven on the serving process itself: the process the
//! test spawned (same pid: `exec` keeps it) is the one listening, and its
//! environment holds the tunables (an aggregator's with one allocator arena
//! per core) — unless the operator opted out or chose their own malloc
//! tunables, which are left exactly as given.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use gridsync_suite::{provision, Server};

/// What `malloc_tuning::TUNABLES` documents.
const TUNABLES: &str = "glibc.malloc.mmap_threshold=1048576:glibc.malloc.trim_threshold=8388608";

/// `GLIBC_TUNABLES` of a running process, if set. glibc, reading it at
/// start, ends each tunable with a NUL in place, so the entries after it
/// that name a tunable are joined back with `:` (which also shows glibc
/// read them).
fn tunables_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let entries: Vec<&str> = environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .collect();
    let at = entries
        .iter()
        .position(|kv| kv.starts_with("GLIBC_TUNABLES="))?;
    let mut parts = vec![&entries[at]["GLIBC_TUNABLES=".len()..]];
    parts.extend(
        entries[at + 1..]
            .iter()
            .take_while(|kv| kv.starts_with("glibc.")),
    );
    Some(parts.join(":"))
}

fn serving_with(config: &std::path::Path, env: &[(&str, &str)]) -> Option<String> {
    let mut server = Server::try_start_env(config, &[], env).unwrap();
    let got = tunables_of(server.child.id());
    server.kill9();
    got
}

#[test]
fn a_node_serves_with_the_allocator_tuned_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("s1", None), ("c1", Some("s1"))]);
    let config = &tree.nodes["c1"].config;

    // By default (whatever the test's own environment says).
    let neutral = [("GLIBC_TUNABLES", ""), ("GRIDSYNC_MALLOC_TUNING", "1")];
    assert_eq!(serving_with(config, &neutral).as_deref(), Some(TUNABLES));
    // An aggregator (a node with children) also gets one arena per core.
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        serving_with(&tree.nodes["s1"].config, &neutral),
        Some(format!("{TUNABLES}:glibc.malloc.arena_max={cores}"))
    );

    // Other glibc tunables are kept, ours added after them.
    let other = [
        ("GLIBC_TUNABLES", "glibc.pthread.rseq=1"),
        ("GRIDSYNC_MALLOC_TUNING", "1"),
    ];
    assert_eq!(
        serving_with(config, &other),
        Some(format!("glibc.pthread.rseq=1:{TUNABLES}"))
    );

    // Controls: the operator's own malloc tunables are not touched, and the
    // opt-out leaves glibc's defaults (so the checks above can fail).
    let own = [
        ("GLIBC_TUNABLES", "glibc.malloc.arena_max=4"),
        ("GRIDSYNC_MALLOC_TUNING", "1"),
    ];
    assert_eq!(
        serving_with(config, &own).as_deref(),
        Some("glibc.malloc.arena_max=4")
    );
    let off = [("GLIBC_TUNABLES", ""), ("GRIDSYNC_MALLOC_TUNING", "0")];
    assert_eq!(serving_with(config, &off).as_deref(), Some(""));
}
