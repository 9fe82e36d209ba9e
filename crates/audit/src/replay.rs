//! `audit replay`: the history as JSON lines, from a data directory (a log
//! that passed `Store::open`'s full check) or from a running node
//! ([`crate::remote`]). One filter serves both, applied after verification
//! so that a filter can never hide a gap.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender};

use gridsync_model::api::{event_view, EventView};
use gridsync_model::time_fmt::parse_rfc3339_ms;
use gridsync_store::{Store, StoredChunk};

/// Which events are printed. Time bounds are unix ms, `from` inclusive and
/// `to` exclusive.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub origin: Option<String>,
    /// Only these origins (a node's subtree, resolved from the topology).
    pub origins: Option<BTreeSet<String>>,
    pub kind: Option<String>,
    pub from_seq: Option<u64>,
    pub to_seq: Option<u64>,
    pub occurred_from: Option<i64>,
    pub occurred_to: Option<i64>,
    pub recorded_from: Option<i64>,
    pub recorded_to: Option<i64>,
}

impl EventFilter {
    /// Whether an origin's events may be printed at all.
    pub fn keeps_origin(&self, origin: &str) -> bool {
        self.origin.as_deref().is_none_or(|o| o == origin)
            && self.origins.as_ref().is_none_or(|s| s.contains(origin))
    }

    /// Whether one event is printed.
    pub fn keep(
        &self,
        origin: &str,
        kind: &str,
        seq: u64,
        occurred_ms: i64,
        recorded_ms: i64,
    ) -> bool {
        let within = |t: i64, from: Option<i64>, to: Option<i64>| {
            from.is_none_or(|f| t >= f) && to.is_none_or(|e| t < e)
        };
        self.keeps_origin(origin)
            && self.kind.as_deref().is_none_or(|k| k == kind)
            && self.from_seq.is_none_or(|s| seq >= s)
            && self.to_seq.is_none_or(|s| seq <= s)
            && within(occurred_ms, self.occurred_from, self.occurred_to)
            && within(recorded_ms, self.recorded_from, self.recorded_to)
    }

    /// [`Self::keep`] for an event as the API shows it.
    pub fn keep_view(&self, v: &EventView) -> bool {
        let ms = |t: &str| parse_rfc3339_ms(t).map_or(0, |(ms, _)| ms);
        self.keep(
            &v.origin,
            &v.kind,
            v.seq,
            ms(&v.occurred_at),
            ms(&v.recorded_at),
        )
    }
}

/// Log entries read per storage call (chunks are cut near 32 KiB, so a
/// page holds about 2 MiB at most).
const PAGE: usize = 64;

/// Threads turning pages into JSON lines, each with one page waiting and
/// one rendered: bounded, so memory does not grow with the log.
const RENDERING: usize = 2;

/// Writes every event of `store`'s log that `filter` keeps to `out` as
/// JSON lines (the `/v1/events` shape), in log order. Three stages run at
/// once: a thread reads pages and hands them in turn to [`RENDERING`]
/// threads that decode and render them, and this thread takes the
/// rendered pages in the same turn and writes them. A failed write (the
/// reader of `out` went away) ends the replay quietly.
///
/// # Errors
/// Storage errors or an event that does not decode.
pub fn replay_local(
    store: &Store,
    filter: &EventFilter,
    with_personal: bool,
    out: &mut dyn Write,
) -> Result<(), String> {
    std::thread::scope(|s| {
        let (pages, rendered): (Vec<_>, Vec<_>) = (0..RENDERING)
            .map(|_| {
                let (page_tx, page_rx) = sync_channel::<Vec<StoredChunk>>(1);
                let (done_tx, done_rx) = sync_channel(1);
                s.spawn(move || {
                    for page in page_rx {
                        if done_tx.send(render(&page, filter, with_personal)).is_err() {
                            return;
                        }
                    }
                });
                (page_tx, done_rx)
            })
            .unzip();
        let reader = s.spawn(move || read_pages(store, &pages));
        // Page `i` went to renderer `i % RENDERING`: taken back in that
        // turn, the pages come out in log order. A renderer with nothing
        // more means the reader stopped: no page follows.
        let (mut failed, mut gone) = (None, false);
        for done in (0..).map(|i| rendered[i % RENDERING].recv()) {
            match done {
                Err(_) => break,
                Ok(Err(e)) => {
                    failed = Some(e);
                    break;
                }
                Ok(Ok(bytes)) => {
                    if out.write_all(&bytes).is_err() {
                        gone = true;
                        break;
                    }
                }
            }
        }
        // Dropping the renderers' outputs (a stop) ends them, and so the
        // reader, at their next page.
        drop(rendered);
        let read = reader.join().expect("the replay's reader panicked");
        match failed {
            Some(e) => Err(e),
            // The output went away: nothing more to say to it.
            None if gone => Ok(()),
            None => read,
        }
    })
}

/// Reads the log a page at a time and hands page `i` to renderer `i %
/// RENDERING`; stops at the end, at an error (returned) or when a renderer
/// is gone.
fn read_pages(store: &Store, renderers: &[SyncSender<Vec<StoredChunk>>]) -> Result<(), String> {
    let mut offset = 0;
    for i in 0.. {
        let entries = store.read_log(offset, PAGE).map_err(|e| e.to_string())?;
        let Some(last) = entries.last() else { break };
        offset = last.offset + 1;
        if renderers[i % renderers.len()].send(entries).is_err() {
            break;
        }
    }
    Ok(())
}

/// The JSON lines of a page's events that `filter` keeps.
fn render(
    entries: &[StoredChunk],
    filter: &EventFilter,
    with_personal: bool,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for c in entries.iter().map(|e| &e.chunk) {
        if !filter.keeps_origin(&c.origin) {
            continue;
        }
        let events = c.decode_events().map_err(|e| e.to_string())?;
        for (ev, rec) in events.iter().zip(&c.events) {
            let env = &ev.envelope;
            let keep = filter.keep(
                &c.origin,
                &env.kind,
                env.seq,
                env.occurred_at.unix_ms,
                env.recorded_at_ms,
            );
            if keep {
                serde_json::to_writer(&mut out, &event_view(ev, rec, with_personal))
                    .map_err(|e| e.to_string())?;
                out.push(b'\n');
            }
        }
    }
    Ok(out)
}
