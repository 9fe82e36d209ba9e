//! `gridsync-lazyfs MOUNTPOINT`: mounts an empty [`gridsync_lazyfs::LazyFs`]
//! and reads commands on stdin, one per line:
//!
//! * `cut` — power cut: drop every write not yet fsynced; answers
//!   `cut files=N bytes=N fsyncs=N`;
//! * `exit` (or end of input) — unmount and exit.
//!
//! Prints `mounted MOUNTPOINT` once the file system answers. Needs
//! `/dev/fuse` and root (it mounts with mount(2), no fusermount).

use std::io::{BufRead, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(mountpoint) = std::env::args_os().nth(1) else {
        eprintln!("usage: gridsync-lazyfs MOUNTPOINT   (then `cut` or `exit` on stdin)");
        return ExitCode::from(2);
    };
    let fs = gridsync_lazyfs::LazyFs::new();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("gridsync-lazyfs".into()),
        fuser::MountOption::RW,
    ];
    config.n_threads = Some(2);
    let session = match fuser::spawn_mount(fs.clone(), &mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "gridsync-lazyfs: cannot mount at {}: {e} (needs /dev/fuse and root)",
                std::path::Path::new(&mountpoint).display()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "mounted {}",
        std::path::Path::new(&mountpoint).display()
    );
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "cut" => {
                let r = fs.power_cut();
                let _ = writeln!(
                    out,
                    "cut files={} bytes={} fsyncs={}",
                    r.files, r.bytes, r.fsyncs
                );
                let _ = out.flush();
            }
            "exit" => break,
            "" => {}
            other => {
                let _ = writeln!(out, "error unknown command {other:?}");
                let _ = out.flush();
            }
        }
    }
    drop(session);
    ExitCode::SUCCESS
}
