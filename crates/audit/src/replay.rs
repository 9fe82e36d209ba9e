//! `audit replay`: the history as JSON lines, from a data directory (a log
//! that passed `Store::open`'s full check) or from a running node
//! ([`crate::remote`]). One filter serves both, applied after verification
//! so that a filter can never hide a gap.

use std::collections::BTreeSet;
use std::io::Write;

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

/// Threads turning pages into JSON lines; the pages read and not yet
/// written are bounded ([`crate::pipeline`]), so memory does not grow
/// with the log.
const RENDERING: usize = 2;

/// Writes every event of `store`'s log that `filter` keeps to `out` as
/// JSON lines (the `/v1/events` shape), in log order. Three stages run at
/// once ([`crate::pipeline`]): a thread reads pages, [`RENDERING`] threads
/// decode and render them, and this thread writes them in log order. A
/// failed write (the reader of `out` went away) ends the replay quietly.
///
/// # Errors
/// Storage errors or an event that does not decode.
pub fn replay_local(
    store: &Store,
    filter: &EventFilter,
    with_personal: bool,
    out: &mut dyn Write,
) -> Result<(), String> {
    let (mut failed, mut gone) = (None, false);
    let read = crate::pipeline::in_order(
        RENDERING,
        |send| read_pages(store, send),
        |page: &Vec<StoredChunk>| render(page, filter, with_personal),
        |_, rendered| match rendered {
            Err(e) => {
                failed = Some(std::mem::take(e));
                false
            }
            Ok(bytes) => {
                gone = out.write_all(bytes).is_err();
                !gone
            }
        },
    );
    match failed {
        Some(e) => Err(e),
        // The output went away: nothing more to say to it.
        None if gone => Ok(()),
        None => read,
    }
}

/// Reads the log a page at a time and hands each to `send`; stops at the
/// end, at an error (returned) or when `send` says to.
fn read_pages(store: &Store, send: &mut dyn FnMut(Vec<StoredChunk>) -> bool) -> Result<(), String> {
    let mut offset = 0;
    loop {
        let entries = store.read_log(offset, PAGE).map_err(|e| e.to_string())?;
        let Some(last) = entries.last() else {
            return Ok(());
        };
        offset = last.offset + 1;
        if !send(entries) {
            return Ok(());
        }
    }
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
