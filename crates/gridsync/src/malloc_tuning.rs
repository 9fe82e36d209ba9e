//! glibc's allocator tuned for the store's write pattern: the process
//! re-executes itself once, at the very start, with two `GLIBC_TUNABLES`
//! set.
//!
//! Why: sled allocates a fresh 512 KiB I/O buffer for every log segment it
//! fills and frees it on its I/O thread. With glibc's defaults such a buffer
//! is either mapped and unmapped each time or, once the dynamic threshold
//! has moved, handed back to the kernel when the heap's top is trimmed —
//! either way the next one is fresh pages, so every 4 KiB the store writes
//! costs a page fault and a zeroed page on top of the copy. `perf` of an
//! aggregator catching up put ~35 % of its log writer thread in the
//! kernel's `clear_page` (BENCHMARKS.md, "glibc's allocator"). With
//! `mmap_threshold` at 1 MiB the buffers come from the heap, and with
//! `trim_threshold` at 8 MiB a freed one stays there for the next (at most
//! 8 MiB of free heap top kept per arena).
//!
//! The tunables can only be read by glibc when the process starts, and
//! `mallopt` would need `unsafe` (forbidden in this workspace), so the
//! binary execs itself with the variable added; `exec` keeps the process
//! id, the arguments and the rest of the environment. Skipped when
//! `GLIBC_TUNABLES` already names a `glibc.malloc.` tunable (the operator's
//! own choice, or the exec already happened), when
//! `GRIDSYNC_MALLOC_TUNING=0`, and on targets without glibc.

/// The tunables added (see the module comment).
pub const TUNABLES: &str =
    "glibc.malloc.mmap_threshold=1048576:glibc.malloc.trim_threshold=8388608";

/// What [`apply`] did, reported once logging is set up.
#[derive(Debug)]
pub enum Tuning {
    /// This process runs with [`TUNABLES`] (it re-executed itself).
    Applied,
    /// Left as it was, and why.
    Skipped(&'static str),
    /// The re-exec failed (the process goes on with glibc's defaults).
    Failed(String),
}

/// The environment value to exec with, or why not to.
fn wanted(current: Option<&str>, opt_out: Option<&str>) -> Result<String, &'static str> {
    if opt_out == Some("0") {
        return Err("GRIDSYNC_MALLOC_TUNING=0");
    }
    match current {
        Some(v) if v.contains(TUNABLES) => Err("applied"),
        Some(v) if v.contains("glibc.malloc.") => Err("GLIBC_TUNABLES already sets glibc.malloc"),
        Some(v) if !v.is_empty() => Ok(format!("{v}:{TUNABLES}")),
        _ => Ok(TUNABLES.to_owned()),
    }
}

/// Re-executes this binary with [`TUNABLES`] unless it should not (see the
/// module comment); returns only when it did not (or could not).
pub fn apply() -> Tuning {
    let current = std::env::var("GLIBC_TUNABLES").ok();
    let opt_out = std::env::var("GRIDSYNC_MALLOC_TUNING").ok();
    let value = match wanted(current.as_deref(), opt_out.as_deref()) {
        Ok(v) => v,
        Err("applied") => return Tuning::Applied,
        Err(why) => return Tuning::Skipped(why),
    };
    reexec(&value)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn reexec(value: &str) -> Tuning {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return Tuning::Failed(format!("cannot find this binary: {e}")),
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    // `exec` returns only on failure.
    let err = cmd.args(args).env("GLIBC_TUNABLES", value).exec();
    Tuning::Failed(err.to_string())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn reexec(_value: &str) -> Tuning {
    Tuning::Skipped("not a glibc target")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunables_are_added_once_and_never_over_the_operators() {
        assert_eq!(wanted(None, None).unwrap(), TUNABLES);
        assert_eq!(wanted(Some(""), None).unwrap(), TUNABLES);
        assert_eq!(
            wanted(Some("glibc.pthread.rseq=0"), None).unwrap(),
            format!("glibc.pthread.rseq=0:{TUNABLES}")
        );
        // Already exec'd: no second exec (no loop).
        assert_eq!(
            wanted(Some(&format!("x=1:{TUNABLES}")), None),
            Err("applied")
        );
        // The operator's own malloc tunables are left alone.
        assert!(wanted(Some("glibc.malloc.arena_max=2"), None).is_err());
        assert!(wanted(None, Some("0")).is_err());
        assert_eq!(wanted(None, Some("1")).unwrap(), TUNABLES);
    }
}
