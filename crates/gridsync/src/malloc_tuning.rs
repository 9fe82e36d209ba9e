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
//! An aggregator (a node with children in the topology) also gets
//! `arena_max` = its cores. glibc gives each thread that allocates its own
//! arena, up to 8 per core, and each keeps freed memory for reuse; a
//! street whose sessions hand CPU-heavy frames to fresh threads
//! (`block_in_place`) while 1,000 children catch up ended the burst with
//! ~55 MB more RSS than its live heap. One arena per core: the street's
//! RSS after that burst median 163.9 → 136.9 MB over thirteen pairs, and
//! no slower (BENCHMARKS.md, "One allocator arena per core at an
//! aggregator"). Not at a community: its HTTP ingest parses posts on many
//! threads at once, and with 2 arenas it took ~10 % fewer events/s.
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

/// What to exec with: [`TUNABLES`], and for an aggregator one arena per
/// core (see the module comment).
pub fn tunables(aggregator: bool) -> String {
    if !aggregator {
        return TUNABLES.to_owned();
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    format!("{TUNABLES}:glibc.malloc.arena_max={cores}")
}

/// What [`apply`] did, reported once logging is set up.
#[derive(Debug)]
pub enum Tuning {
    /// This process runs with [`TUNABLES`] (it re-executed itself), and
    /// these.
    Applied(String),
    /// Left as it was, and why.
    Skipped(&'static str),
    /// The re-exec failed (the process goes on with glibc's defaults).
    Failed(String),
}

/// The environment value to exec with (`want`: what [`tunables`] gives,
/// asked only when an exec is due), or why not to.
fn wanted(
    current: Option<&str>,
    opt_out: Option<&str>,
    want: impl FnOnce() -> String,
) -> Result<String, &'static str> {
    if opt_out == Some("0") {
        return Err("GRIDSYNC_MALLOC_TUNING=0");
    }
    match current {
        Some(v) if v.contains(TUNABLES) => Err("applied"),
        Some(v) if v.contains("glibc.malloc.") => Err("GLIBC_TUNABLES already sets glibc.malloc"),
        Some(v) if !v.is_empty() => Ok(format!("{v}:{}", want())),
        _ => Ok(want()),
    }
}

/// Re-executes this binary with what `want` gives (from [`tunables`];
/// not called in the process that already runs with them) unless it should
/// not (see the module comment); returns only when it did not (or could
/// not).
pub fn apply(want: impl FnOnce() -> String) -> Tuning {
    let current = std::env::var("GLIBC_TUNABLES").ok();
    let opt_out = std::env::var("GRIDSYNC_MALLOC_TUNING").ok();
    let value = match wanted(current.as_deref(), opt_out.as_deref(), want) {
        Ok(v) => v,
        Err("applied") => return Tuning::Applied(current.unwrap_or_default()),
        Err(why) => return Tuning::Skipped(why),
    };
    reexec(&value)
}

/// Logs what [`apply`] did.
pub fn report(tuning: Tuning) {
    match tuning {
        Tuning::Failed(why) => {
            tracing::warn!(%why, "could not re-execute with glibc's allocator tuned; running with its defaults");
        }
        Tuning::Skipped(why) => tracing::debug!(why, "glibc's allocator left with its defaults"),
        Tuning::Applied(tunables) => tracing::debug!(tunables, "glibc's allocator tuned"),
    }
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
        fn wanted(current: Option<&str>, opt_out: Option<&str>) -> Result<String, &'static str> {
            super::wanted(current, opt_out, || TUNABLES.to_owned())
        }
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

    #[test]
    fn an_aggregator_gets_one_arena_per_core() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(tunables(false), TUNABLES);
        let agg = tunables(true);
        assert_eq!(agg, format!("{TUNABLES}:glibc.malloc.arena_max={cores}"));
        // Exec'd with it: applied, no second exec.
        assert_eq!(wanted(Some(&agg), None, || agg.clone()), Err("applied"));
    }
}
