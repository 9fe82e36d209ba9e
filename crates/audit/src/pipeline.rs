//! Three stages at once over a sequence of pages: one thread reads them,
//! a pool of worker threads checks or renders whole pages as they come,
//! and the calling thread applies them in the order they were read — so
//! what is applied does not depend on the number of workers or on which
//! finishes first. `audit verify` and `audit replay` run on it. A panic
//! in any stage ends every stage and is raised to the caller; none leaves
//! another waiting forever.
//!
//! What a page and its check's result hold is freed by the thread that
//! made it: once applied, a page goes back to the reader with its token,
//! and the result to the worker that made it. Freed by the applier, every
//! allocation of a worker's (an audit's are several a chunk) took the
//! lock of that worker's allocator arena while the worker allocated from
//! it (BENCHMARKS.md, "The chunk index compared by digests; pages and
//! results freed where they were made").

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Mutex;

/// Pages read but not yet applied, at most, with `threads` workers: a
/// page is read only against a token, given back once it is applied.
pub(crate) fn in_flight_max(threads: usize) -> usize {
    2 * threads.max(1) + 2
}

/// Runs `read` on a thread of its own, handing each page it produces to
/// `send` (which says `false` once nothing more is wanted: `read` should
/// then return); `threads` workers run `check` on the pages; `apply` gets
/// each page and its check's result on this thread, in read order, and
/// says whether to go on (`false` stops every stage). What `apply` leaves
/// of them is dropped on the thread that made it (the reader, the worker).
/// Returns what `read` returned.
///
/// # Panics
/// When `read`, `check` or `apply` panics (after every stage has ended).
pub(crate) fn in_order<P: Send, R: Send, T: Send>(
    threads: usize,
    read: impl FnOnce(&mut dyn FnMut(P) -> bool) -> T + Send,
    check: impl Fn(&P) -> R + Sync,
    mut apply: impl FnMut(&P, &mut R) -> bool,
) -> T {
    let threads = threads.max(1);
    let in_flight = in_flight_max(threads);
    // Unbounded, so the reader never waits on a worker that is gone: the
    // tokens bound what it holds.
    let (page_tx, page_rx) = mpsc::channel::<(u64, P)>();
    let page_rx = Mutex::new(page_rx);
    let check = &check;
    std::thread::scope(|s| {
        // Made inside the scope: should this thread panic, dropping them
        // stops the reader (no token) and so the workers (no page, nowhere
        // to send), and the scope can end. A token carries an applied page
        // back to the reader, to be dropped there.
        let (token_tx, token_rx) = mpsc::sync_channel::<Option<P>>(in_flight);
        for _ in 0..in_flight {
            token_tx.send(None).expect("room for every token");
        }
        let (done_tx, done_rx) = mpsc::channel::<(u64, usize, P, Option<R>)>();
        let reader = s.spawn(move || {
            let mut n = 0u64;
            read(&mut |page| {
                // The applied page the token brings is dropped here.
                let sent = token_rx.recv().is_ok() && page_tx.send((n, page)).is_ok();
                n += 1;
                sent
            })
        });
        // Each worker's applied results come back to it on a channel of
        // its own (at most `in_flight` results are out at once).
        let mut spent_txs = Vec::with_capacity(threads);
        for w in 0..threads {
            let (page_rx, done_tx) = (&page_rx, done_tx.clone());
            let (spent_tx, spent_rx) = mpsc::channel::<R>();
            spent_txs.push(spent_tx);
            s.spawn(move || loop {
                // Results applied since this worker's last page, dropped
                // where they were made.
                while spent_rx.try_recv().is_ok() {}
                // A poisoned lock (a worker panicked holding it) ends this
                // worker too.
                let next = page_rx.lock().map(|rx| rx.recv());
                let Ok(Ok((n, page))) = next else { break };
                let checked =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&page)));
                let failed = checked.is_err();
                if done_tx.send((n, w, page, checked.ok())).is_err() || failed {
                    break;
                }
            });
        }
        drop(done_tx);
        let mut waiting: BTreeMap<u64, (usize, P, R)> = BTreeMap::new();
        let mut next = 0u64;
        let mut stopped = false;
        'pages: for (n, w, page, checked) in &done_rx {
            let checked = checked.expect("an audit worker panicked");
            waiting.insert(n, (w, page, checked));
            while let Some((w, page, mut checked)) = waiting.remove(&next) {
                let go_on = apply(&page, &mut checked);
                // Back to where each was made (a worker that is gone
                // leaves its result to be dropped here).
                let _ = spent_txs[w].send(checked);
                if !go_on {
                    stopped = true;
                    break 'pages;
                }
                next += 1;
                // Never blocks: at most `in_flight` tokens exist.
                let _ = token_tx.send(Some(page));
            }
        }
        // Every worker is gone (the reader ended, or panicked: raised by
        // the scope) and every page read was applied — or `apply` stopped:
        // without tokens and with nowhere to send, the others end too.
        assert!(
            stopped || waiting.is_empty(),
            "a page read was never checked"
        );
        drop((token_tx, done_rx, spent_txs));
        reader
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// `f` on a thread of its own; `Err` if it did not end within 60 s
    /// (a hang), else whether it panicked.
    fn ends(f: impl FnOnce() + Send + 'static) -> Result<bool, &'static str> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r.is_err());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| "the pipeline hung")
    }

    /// A check that takes a page-dependent while, so pages finish out of
    /// order.
    fn jitter(n: u64) {
        std::thread::sleep(Duration::from_micros((n * 7919) % 1500));
    }

    #[test]
    fn pages_are_applied_in_read_order_with_any_number_of_workers() {
        for threads in [1, 2, 3, 8] {
            let mut applied = Vec::new();
            in_order(
                threads,
                |send| {
                    for n in 0..300u64 {
                        assert!(send(n), "nothing stops the reading");
                    }
                },
                |n| {
                    jitter(*n);
                    n * 2
                },
                |n, doubled| {
                    assert_eq!(*doubled, n * 2);
                    applied.push(*n);
                    true
                },
            );
            assert_eq!(applied, (0..300).collect::<Vec<_>>(), "{threads} threads");
        }
    }

    /// Records whether it was dropped on a thread other than the one that
    /// made it.
    struct Tracked {
        made_on: std::thread::ThreadId,
        elsewhere: std::sync::Arc<AtomicUsize>,
    }

    impl Tracked {
        fn new(elsewhere: &std::sync::Arc<AtomicUsize>) -> Self {
            Self {
                made_on: std::thread::current().id(),
                elsewhere: elsewhere.clone(),
            }
        }
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            if std::thread::current().id() != self.made_on {
                self.elsewhere.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Applied pages go back to the reader and results to the worker that
    /// made them, to be dropped there; only those still on their way back
    /// when the stages end may be dropped elsewhere. (Dropped by the
    /// applier, all 300 of each were.)
    #[test]
    fn pages_and_results_are_dropped_where_they_were_made() {
        for threads in [1, 2, 3] {
            let pages = std::sync::Arc::new(AtomicUsize::new(0));
            let results = std::sync::Arc::new(AtomicUsize::new(0));
            let mut applied = 0;
            in_order(
                threads,
                |send| {
                    for n in 0..300u64 {
                        assert!(send((n, Tracked::new(&pages))));
                    }
                },
                |(n, _)| {
                    jitter(*n);
                    Tracked::new(&results)
                },
                |_, _| {
                    applied += 1;
                    true
                },
            );
            assert_eq!(applied, 300);
            let (pages, results) = (pages.load(Ordering::SeqCst), results.load(Ordering::SeqCst));
            let bound = in_flight_max(threads) + threads;
            assert!(
                pages <= bound,
                "{threads} threads: {pages} pages dropped elsewhere"
            );
            assert!(
                results <= bound,
                "{threads} threads: {results} results dropped elsewhere"
            );
        }
    }

    #[test]
    fn apply_saying_stop_ends_every_stage_and_nothing_is_applied_after() {
        for threads in [1, 3] {
            let r = ends(move || {
                let mut applied = 0u64;
                let read = in_order(
                    threads,
                    |send| (0u64..).take_while(|n| send(*n)).count(),
                    |n| jitter(*n),
                    |n, ()| {
                        assert!(*n <= 40, "page {n} applied after the stop");
                        applied += 1;
                        *n < 40
                    },
                );
                assert_eq!(applied, 41);
                // The reader stops within the pages it already had tokens for.
                assert!(read <= 41 + in_flight_max(threads), "{read} pages read");
            });
            assert_eq!(r, Ok(false), "{threads} threads: ended, no panic");
        }
    }

    #[test]
    fn pages_read_and_not_applied_stay_within_the_bound() {
        let threads = 2;
        let held = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        in_order(
            threads,
            |send| {
                for n in 0..200u64 {
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    send(n);
                }
            },
            |n| jitter(*n),
            |_, ()| {
                // A slow applier: the reader would run far ahead.
                std::thread::sleep(Duration::from_micros(300));
                held.fetch_sub(1, Ordering::SeqCst);
                true
            },
        );
        let most = most.load(Ordering::SeqCst);
        // The page being handed over when the reader waits for a token
        // counts too.
        assert!(most <= in_flight_max(threads) + 1, "{most} pages held");
        assert!(
            most >= in_flight_max(threads),
            "the reader ran ahead: {most}"
        );
    }

    #[test]
    fn a_panic_in_any_stage_ends_the_pipeline_and_is_raised() {
        for threads in [1, 3] {
            // A worker's check, the applier, the reader; each at page 40
            // of an endless read (it stops only when told to).
            for stage in ["check", "apply", "read"] {
                let read_stopped = std::sync::Arc::new(AtomicUsize::new(0));
                let stopped = read_stopped.clone();
                let r = ends(move || {
                    in_order(
                        threads,
                        |send| {
                            for n in 0u64.. {
                                assert!(!(stage == "read" && n == 40), "read fails");
                                if !send(n) {
                                    stopped.store(1, Ordering::SeqCst);
                                    return;
                                }
                            }
                        },
                        |n| {
                            assert!(!(stage == "check" && *n == 40), "check fails");
                            jitter(*n);
                        },
                        |n, ()| {
                            assert!(!(stage == "apply" && *n == 40), "apply fails");
                            true
                        },
                    );
                });
                assert_eq!(r, Ok(true), "{stage}, {threads} threads: raised, no hang");
                if stage != "read" {
                    assert_eq!(
                        read_stopped.load(Ordering::SeqCst),
                        1,
                        "{stage}: reading stopped"
                    );
                }
            }
        }
    }
}
