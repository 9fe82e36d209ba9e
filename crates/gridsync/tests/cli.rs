//! The command line as a user meets it. (Having integration tests here also
//! makes `cargo test --workspace` build the real `gridsync` binary into
//! `target/<profile>/`, which the multi-process tests in `tests/` run.)

use std::process::Command;

fn gridsync() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gridsync"))
}

#[test]
fn help_lists_every_command() {
    let out = gridsync().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in [
        "init",
        "provision",
        "serve",
        "demo",
        "load",
        "token",
        "topology",
        "rebuild",
        "audit",
    ] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
    let out = gridsync().args(["audit", "--help"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in ["verify", "replay", "project"] {
        assert!(text.contains(cmd), "audit --help lacks {cmd}:\n{text}");
    }
}

#[test]
fn user_errors_are_explained_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree.toml");
    std::fs::write(
        &tree,
        "[[node]]\nid = \"a\"\nname = \"A\"\nlisten = \"127.0.0.1:7400\"\n[[node]]\nid = \"b\"\nname = \"B\"\nparent = \"nowhere\"\nlisten = \"127.0.0.1:7401\"\n",
    )
    .unwrap();
    let out = gridsync()
        .args(["provision", "--tree"])
        .arg(&tree)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(":8:") && err.contains("unknown parent"),
        "{err}"
    );
    let out = gridsync()
        .args(["serve", "--config", "/nonexistent/config.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("cannot read config"));
    let out = gridsync().args(["demo", "--rate", "-5"]).output().unwrap();
    assert!(!out.status.success());
}
