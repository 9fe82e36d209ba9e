//! The open-files limit raised for a process running nodes (`serve`,
//! `demo`, and tests and benches holding a thousand sockets): every child
//! link, HTTP client, sled file and log handle is a file descriptor, and a
//! stock Linux login
//! or service starts with a soft limit of 1,024 — a street with 1,000
//! children would run out (`accept` failing with "too many open files")
//! well before any of its own limits. `serve` raises the soft limit to the
//! hard one at start, as Go's runtime does for every program, and says
//! when even the hard limit is short of what its children need.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// What [`raise`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Raised {
    /// The soft limit went from the first value to the second.
    To(u64, u64),
    /// Already at the hard limit (or unlimited).
    Already(u64),
    /// The limit could not be set (the value it stays at, and why).
    Failed(u64, String),
}

/// Soft limit used when the hard limit is unlimited.
const UNLIMITED_SOFT: u64 = 1 << 20;

/// Raises the soft open-files limit to the hard one.
pub fn raise() -> Raised {
    let l = getrlimit(Resource::Nofile);
    let current = l.current.unwrap_or(u64::MAX);
    let target = l
        .maximum
        .unwrap_or(UNLIMITED_SOFT)
        .max(current.min(UNLIMITED_SOFT));
    if current >= target {
        return Raised::Already(current);
    }
    let new = Rlimit {
        current: Some(target),
        maximum: l.maximum,
    };
    match setrlimit(Resource::Nofile, new) {
        Ok(()) => Raised::To(current, target),
        Err(e) => Raised::Failed(current, e.to_string()),
    }
}

/// File descriptors a node with `children` children wants at least: a
/// link each, and as many again for handshakes, HTTP clients and files.
pub fn wanted(children: usize) -> u64 {
    (children as u64).saturating_mul(2).saturating_add(256)
}

/// Logs what [`raise`] did; warns when the limit is below `wanted` (for a
/// node, [`wanted`] of its children).
pub fn report(raised: &Raised, wanted: u64) {
    let limit = match raised {
        Raised::To(from, to) => {
            tracing::info!(from, to, "open-files limit raised to the hard limit");
            *to
        }
        Raised::Already(n) => *n,
        Raised::Failed(n, why) => {
            tracing::warn!(limit = n, why, "cannot raise the open-files limit");
            *n
        }
    };
    if limit < wanted {
        tracing::warn!(
            limit,
            wanted,
            "the open-files limit is low for the nodes this process runs: links will fail \
             with \"too many open files\"; raise the hard limit (LimitNOFILE= in a systemd \
             unit, `ulimit -Hn` for a shell)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A soft limit below the hard one is raised to it; at the hard limit
    /// nothing changes. (Control: the limit lowered and not raised again
    /// stays low — the first assertion.)
    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let l = getrlimit(Resource::Nofile);
        let hard = l.maximum.unwrap_or(UNLIMITED_SOFT);
        if hard <= 512 {
            return; // nothing to show on a machine this tight
        }
        let low = Rlimit {
            current: Some(512),
            maximum: l.maximum,
        };
        setrlimit(Resource::Nofile, low).unwrap();
        assert_eq!(getrlimit(Resource::Nofile).current, Some(512));
        assert_eq!(raise(), Raised::To(512, hard));
        assert_eq!(getrlimit(Resource::Nofile).current, Some(hard));
        assert_eq!(raise(), Raised::Already(hard));
        assert!(wanted(1000) > 2000);
    }
}
