//! `gridsync-lazyfs MOUNTPOINT [--fsync-delay-ms=N]`: mounts an empty
//! [`gridsync_lazyfs::LazyFs`] (whose fsyncs take N ms, default 0) and
//! reads commands on stdin, one per line:
//!
//! * `cut` — power cut: drop every write not yet fsynced, and fail every
//!   write and fsync until `on`; answers `cut files=N bytes=N fsyncs=N`;
//! * `on` — the power comes back; answers `on`;
//! * `exit` (or end of input) — unmount and exit.
//!
//! Prints `mounted MOUNTPOINT` once the file system answers. Needs
//! `/dev/fuse` and root (it mounts with mount(2), no fusermount).

use std::io::{BufRead, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let usage =
        "usage: gridsync-lazyfs MOUNTPOINT [--fsync-delay-ms=N]   (then `cut` or `exit` on stdin)";
    let Some(mountpoint) = std::env::args_os().nth(1) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let mut delay_ms = 0u64;
    for arg in std::env::args().skip(2) {
        match arg.strip_prefix("--fsync-delay-ms=").map(str::parse) {
            Some(Ok(ms)) => delay_ms = ms,
            _ => {
                eprintln!("{usage}");
                return ExitCode::from(2);
            }
        }
    }
    let fs = gridsync_lazyfs::LazyFs::with_fsync_delay(std::time::Duration::from_millis(delay_ms));
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
            "on" => {
                fs.power_on();
                let _ = writeln!(out, "on");
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
