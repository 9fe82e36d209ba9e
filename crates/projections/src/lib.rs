//! Projections: deterministic folds over the log.
//!
//! State is kept per **origin × local day × metric** and rolled up through
//! the topology at query time, so a community, a street or the district get
//! the same numbers from any node that holds the same heads. Each origin's
//! events are applied in seq order (the log guarantees it); origins are
//! independent, so how their events interleave cannot change a number.
//!
//! Days are local days in the configured time zone, bucketed by
//! `occurred_at`: a late event changes the past day it belongs to. A
//! `correction` removes its target's current contribution (`void`) or swaps
//! it for the replacement's (`replace`).
//!
//! Decoding reads only what the metrics need, borrowing from the stored
//! bytes (no `serde_json::Value`), which is what makes rebuilds fast.

pub mod fold;
mod lite;
pub mod rollup;
pub mod snapshot;
mod timelines;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use lite::{DataLite, EnvLite};
use timelines::Timeline;

/// Metric names, in the order of [`Counts`].
pub const METRICS: [&str; 16] = [
    "entries",
    "entries_admitted",
    "entries_turned_back",
    "entries_referred",
    "entries_flagged",
    "temperatures",
    "fevers",
    "referrals",
    "visits",
    "visits_in_person",
    "visits_phone",
    "households_visited",
    "deliveries",
    "deliveries_quarantined",
    "items_delivered",
    "households_quarantined",
];

/// Local days [`Projection::day_cached`] keeps.
const DAY_CACHE: usize = 8;

const ENTRIES: usize = 0;
const ADMITTED: usize = 1;
const TURNED_BACK: usize = 2;
const ENTRY_REFERRED: usize = 3;
const FLAGGED: usize = 4;
const TEMPERATURES: usize = 5;
const FEVERS: usize = 6;
const REFERRALS: usize = 7;
const VISITS: usize = 8;
const IN_PERSON: usize = 9;
const PHONE: usize = 10;
/// Derived at query time: distinct households visited that day.
pub const HOUSEHOLDS_VISITED: usize = 11;
const DELIVERIES: usize = 12;
const DELIVERIES_QUARANTINED: usize = 13;
const ITEMS: usize = 14;
/// Derived at query time: households under home quarantine at day's end.
pub const HOUSEHOLDS_QUARANTINED: usize = 15;

/// One day's metrics, indexed like [`METRICS`].
pub type Counts = [i64; 16];

/// A local day: days since 1970-01-01 in the configured zone.
pub type Day = i32;

/// Whether event `seq` of `origin` is the next after `applied` (`true`),
/// was applied already (`false`: a replay, ignored), or leaves a gap (an
/// error).
fn comes_next(origin: &str, applied: u64, seq: u64) -> Result<bool, ProjectionError> {
    if seq <= applied {
        return Ok(false);
    }
    if seq != applied + 1 {
        return Err(ProjectionError::OutOfOrder {
            origin: origin.to_owned(),
            expected: applied + 1,
            got: seq,
        });
    }
    Ok(true)
}

#[derive(Clone, Debug)]
pub struct ProjectionConfig {
    pub timezone: jiff::tz::TimeZone,
    /// A reading at or above this is a fever.
    pub fever_celsius: f64,
    /// `from_region` prefixes that flag an entry (default: 湖北).
    pub flagged_region_prefixes: Vec<String>,
}

impl ProjectionConfig {
    /// # Errors
    /// When the zone name is unknown.
    pub fn new(timezone: &str) -> Result<Self, String> {
        let timezone = jiff::tz::TimeZone::get(timezone)
            .map_err(|e| format!("time zone {timezone:?}: {e}"))?;
        Ok(Self {
            timezone,
            fever_celsius: 37.3,
            flagged_region_prefixes: vec!["湖北".to_owned()],
        })
    }

    /// The local day of a unix-ms instant.
    pub fn day_of(&self, unix_ms: i64) -> Day {
        let offset_ms = jiff::Timestamp::from_millisecond(unix_ms)
            .map(|ts| i64::from(self.timezone.to_offset(ts).seconds()) * 1000)
            .unwrap_or(0);
        i32::try_from((unix_ms + offset_ms).div_euclid(86_400_000)).unwrap_or(0)
    }

    /// The instant (unix ms) local day `day` begins.
    pub fn day_start_ms(&self, day: Day) -> i64 {
        let date = day_to_date(day);
        date.to_zoned(self.timezone.clone())
            .map(|z| z.timestamp().as_millisecond())
            .unwrap_or(i64::from(day) * 86_400_000)
    }
}

/// `YYYY-MM-DD` → day number.
///
/// # Errors
/// When the text is not a date.
pub fn parse_day(s: &str) -> Result<Day, String> {
    let d: jiff::civil::Date = s
        .parse()
        .map_err(|e| format!("{s:?} is not a date like 2020-01-28 ({e})"))?;
    let epoch = jiff::civil::date(1970, 1, 1);
    let span = epoch
        .until((jiff::Unit::Day, d))
        .map_err(|e| e.to_string())?;
    Ok(span.get_days())
}

fn day_to_date(day: Day) -> jiff::civil::Date {
    jiff::civil::date(1970, 1, 1)
        .checked_add(jiff::Span::new().days(i64::from(day)))
        .unwrap_or(jiff::civil::date(1970, 1, 1))
}

/// Day number → `YYYY-MM-DD`.
pub fn format_day(day: Day) -> String {
    day_to_date(day).to_string()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProjectionError {
    #[error("event does not decode: {0}")]
    Decode(String),
    #[error("origin {origin}: got seq {got} but {expected} was expected (events must come in seq order)")]
    OutOfOrder {
        origin: String,
        expected: u64,
        got: u64,
    },
}

/// Quarantine status codes kept per household visit.
const Q_NONE: u8 = 0;
const Q_STARTED: u8 = 1;
const Q_ONGOING: u8 = 2;
const Q_ENDED: u8 = 3;

/// Up to four metric increments, without a heap allocation per event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Deltas {
    items: [(usize, i64); 4],
    len: usize,
}

impl Deltas {
    fn push(&mut self, d: (usize, i64)) {
        self.items[self.len] = d;
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = &(usize, i64)> {
        self.items[..self.len].iter()
    }
}

/// What one event adds to its origin's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Effect {
    day: Day,
    deltas: Deltas,
    /// `(household, status, occurred_ms)` of a visit.
    visit: Option<(String, u8, i64)>,
}

#[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OriginState {
    applied_seq: u64,
    newest_recorded_ms: i64,
    daily: BTreeMap<Day, Counts>,
    /// Per day: household → visits that day (for distinct counts).
    visited: BTreeMap<Day, HashMap<String, u32>>,
    /// Per household: `(occurred_ms, seq)` → quarantine status of each
    /// visit, packed (`timelines.rs`).
    status: HashMap<String, Timeline>,
    /// Corrected events: their current effect (`None` once voided).
    overrides: HashMap<u64, Option<Effect>>,
    /// Events that did not decode or are of kinds this build does not project.
    unprojected: u64,
}

/// Looks up the envelope bytes of an earlier event (a correction's target).
pub type TargetLookup<'a> = &'a dyn Fn(&str, u64) -> Option<Vec<u8>>;

/// The projection of a node's log.
#[derive(Clone, Debug)]
pub struct Projection {
    cfg: ProjectionConfig,
    origins: BTreeMap<String, OriginState>,
    /// `(start_ms, end_ms, day)` of the last local days computed (a log
    /// caught up after an outage interleaves several days).
    day_cache: [(i64, i64, Day); DAY_CACHE],
    /// The slot the next day computed replaces.
    day_cache_next: usize,
}

impl Projection {
    pub fn new(cfg: ProjectionConfig) -> Self {
        Self {
            cfg,
            origins: BTreeMap::new(),
            day_cache: [(0, 0, 0); DAY_CACHE],
            day_cache_next: 0,
        }
    }

    pub fn config(&self) -> &ProjectionConfig {
        &self.cfg
    }

    /// Whether two projections hold the same state (every origin's counts,
    /// visit timelines, corrections and applied seq), whatever their
    /// settings' identity.
    pub fn same_state(&self, other: &Projection) -> bool {
        self.origins == other.origins
    }

    /// Highest seq of `origin` applied.
    pub fn applied_seq(&self, origin: &str) -> u64 {
        self.origins.get(origin).map_or(0, |o| o.applied_seq)
    }

    /// `(applied seq, newest recorded_at ms)` per origin.
    pub fn coverage(&self) -> BTreeMap<String, (u64, i64)> {
        self.origins
            .iter()
            .map(|(k, o)| (k.clone(), (o.applied_seq, o.newest_recorded_ms)))
            .collect()
    }

    fn effect(
        &self,
        kind: &str,
        schema: u32,
        data: &DataLite<'_>,
        day: Day,
        occurred_ms: i64,
    ) -> Option<Effect> {
        if schema != 1 {
            return None;
        }
        let mut deltas = Deltas::default();
        let mut visit = None;
        match kind {
            "entry" => {
                deltas.push((ENTRIES, 1));
                match data.decision {
                    Some("admitted") => deltas.push((ADMITTED, 1)),
                    Some("turned_back") => deltas.push((TURNED_BACK, 1)),
                    Some("referred") => {
                        deltas.push((ENTRY_REFERRED, 1));
                        deltas.push((REFERRALS, 1));
                    }
                    _ => {}
                }
                if let Some(r) = data.from_region {
                    if self
                        .cfg
                        .flagged_region_prefixes
                        .iter()
                        .any(|p| r.starts_with(p.as_str()))
                    {
                        deltas.push((FLAGGED, 1));
                    }
                }
            }
            "temperature" => {
                deltas.push((TEMPERATURES, 1));
                if data.celsius.is_some_and(|c| c >= self.cfg.fever_celsius) {
                    deltas.push((FEVERS, 1));
                }
                if data.action == Some("referred") {
                    deltas.push((REFERRALS, 1));
                }
            }
            "visit" => {
                deltas.push((VISITS, 1));
                match data.method {
                    Some("in_person") => deltas.push((IN_PERSON, 1)),
                    Some("phone") => deltas.push((PHONE, 1)),
                    _ => {}
                }
                let status = match data.quarantine {
                    Some("started") => Q_STARTED,
                    Some("ongoing") => Q_ONGOING,
                    Some("ended") => Q_ENDED,
                    _ => Q_NONE,
                };
                if let Some(h) = data.household {
                    visit = Some((h.to_owned(), status, occurred_ms));
                }
            }
            "delivery" => {
                deltas.push((DELIVERIES, 1));
                if data.quarantined == Some(true) {
                    deltas.push((DELIVERIES_QUARANTINED, 1));
                }
                let qty: u64 = data.items.iter().flatten().map(|i| i.qty).sum();
                deltas.push((ITEMS, i64::try_from(qty).unwrap_or(i64::MAX)));
            }
            _ => return None,
        }
        Some(Effect { day, deltas, visit })
    }

    fn apply_effect(state: &mut OriginState, seq: u64, e: &Effect, sign: i64) {
        let counts = state.daily.entry(e.day).or_insert([0; 16]);
        for (m, d) in e.deltas.iter() {
            counts[*m] += sign * d;
        }
        if let Some((h, status, at)) = &e.visit {
            let day = state.visited.entry(e.day).or_default();
            // Looked up before inserting: a household seen before (most
            // visits) costs no copy of its id.
            if !day.contains_key(h.as_str()) {
                day.insert(h.clone(), 0);
            }
            let n = day.get_mut(h.as_str()).expect("inserted above");
            if sign > 0 {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    day.remove(h);
                }
            }
            if !state.status.contains_key(h.as_str()) {
                state.status.insert(h.clone(), Timeline::default());
            }
            let timeline = state.status.get_mut(h.as_str()).expect("inserted above");
            if sign > 0 {
                timeline.insert((*at, seq), *status);
            } else {
                timeline.remove((*at, seq));
            }
        }
    }

    /// Applies the next event of its origin (envelope bytes as stored).
    /// Seqs already applied are ignored; a gap is an error.
    ///
    /// # Errors
    /// Out-of-order seqs. An event that does not decode is counted as
    /// unprojected, not an error.
    pub fn apply(
        &mut self,
        envelope: &[u8],
        lookup: TargetLookup<'_>,
    ) -> Result<(), ProjectionError> {
        // One decode gives origin, seq and the fields the metrics read; only
        // an envelope that does not decode that way is read for its links.
        let decoded = EnvLite::read(envelope);
        let (origin, seq) = match &decoded {
            Some(env) => (env.origin, env.seq),
            None => {
                let links = gridsync_model::event::read_links(envelope)
                    .map_err(|e| ProjectionError::Decode(e.to_string()))?;
                (links.origin, links.seq)
            }
        };
        // What a plain event counts (`None` for a correction or an
        // envelope that did not decode), worked out before the origin's
        // state is borrowed.
        let plain = match &decoded {
            Some(env) if env.kind != "correction" => {
                let day = self.day_cached(env.occurred_ms);
                Some(self.effect(env.kind, env.schema, &env.data, day, env.occurred_ms))
            }
            _ => None,
        };
        // One lookup of a known origin (three before: at a street of 1,000
        // children comparing origin names down the map was ~5 % of its CPU
        // in their catch-up); a new origin is added at its first event.
        let state = match self.origins.get_mut(origin) {
            Some(state) => state,
            None => {
                if !comes_next(origin, 0, seq)? {
                    return Ok(());
                }
                self.origins.entry(origin.to_owned()).or_default()
            }
        };
        if !comes_next(origin, state.applied_seq, seq)? {
            return Ok(());
        }
        state.applied_seq = seq;
        match (decoded, plain) {
            (Some(env), Some(effect)) => {
                state.newest_recorded_ms = state.newest_recorded_ms.max(env.recorded_ms);
                match effect {
                    Some(e) => Self::apply_effect(state, seq, &e, 1),
                    None => state.unprojected += 1,
                }
            }
            (Some(env), None) => {
                // A correction reads the projection while it changes the
                // origin's state: taken out meanwhile.
                state.newest_recorded_ms = state.newest_recorded_ms.max(env.recorded_ms);
                let mut state = self.origins.remove(origin).expect("looked up above");
                self.apply_correction(&mut state, &env, lookup);
                self.origins.insert(origin.to_owned(), state);
            }
            (None, _) => state.unprojected += 1,
        }
        Ok(())
    }

    /// Marks the next event of its origin as seen without counting it (an
    /// as-of projection leaving out an event that had not occurred yet).
    ///
    /// # Errors
    /// Undecodable links or out-of-order seqs.
    pub fn skip(&mut self, envelope: &[u8]) -> Result<(), ProjectionError> {
        let links = gridsync_model::event::read_links(envelope)
            .map_err(|e| ProjectionError::Decode(e.to_string()))?;
        let state = self.origins.entry(links.origin.to_owned()).or_default();
        if comes_next(links.origin, state.applied_seq, links.seq)? {
            state.applied_seq = links.seq;
        }
        Ok(())
    }

    /// [`ProjectionConfig::day_of`] with a cache of the last
    /// [`DAY_CACHE`] local days seen: events mostly fall on a few days.
    fn day_cached(&mut self, unix_ms: i64) -> Day {
        if let Some(&(_, _, day)) = self
            .day_cache
            .iter()
            .find(|(start, end, _)| unix_ms >= *start && unix_ms < *end)
        {
            return day;
        }
        let day = self.cfg.day_of(unix_ms);
        let (start, end) = (self.cfg.day_start_ms(day), self.cfg.day_start_ms(day + 1));
        if unix_ms >= start && unix_ms < end {
            self.day_cache[self.day_cache_next] = (start, end, day);
            self.day_cache_next = (self.day_cache_next + 1) % DAY_CACHE;
        }
        day
    }

    fn apply_correction(
        &self,
        state: &mut OriginState,
        env: &EnvLite<'_>,
        lookup: TargetLookup<'_>,
    ) {
        let Some(target) = &env.data.target else {
            state.unprojected += 1;
            return;
        };
        if target.origin != env.origin || target.seq >= env.seq {
            state.unprojected += 1;
            return;
        }
        // The target's current effect: an earlier correction's, or its own.
        let Some(bytes) = lookup(target.origin, target.seq) else {
            state.unprojected += 1;
            return;
        };
        let Some(t) = EnvLite::read(&bytes) else {
            state.unprojected += 1;
            return;
        };
        let target_day = self.cfg.day_of(t.occurred_ms);
        let current = match state.overrides.get(&target.seq) {
            Some(o) => o.clone(),
            None => self.effect(t.kind, t.schema, &t.data, target_day, t.occurred_ms),
        };
        if let Some(c) = &current {
            Self::apply_effect(state, target.seq, c, -1);
        }
        // `replace` carries a replacement; `void` does not.
        let new = env
            .data
            .replacement
            .as_deref()
            .and_then(|r| self.effect(t.kind, t.schema, r, target_day, t.occurred_ms));
        if let Some(n) = &new {
            Self::apply_effect(state, target.seq, n, 1);
        }
        state.overrides.insert(target.seq, new);
    }

    /// Metrics per day `from..=to`, summed over `origins`.
    pub fn query(&self, origins: &[String], from: Day, to: Day) -> Vec<(Day, Counts)> {
        let mut out = Vec::new();
        for day in from..=to {
            let mut c: Counts = [0; 16];
            let end_ms = self.cfg.day_start_ms(day + 1);
            for o in origins {
                let Some(s) = self.origins.get(o) else {
                    continue;
                };
                if let Some(d) = s.daily.get(&day) {
                    for (i, v) in d.iter().enumerate() {
                        c[i] += v;
                    }
                }
                c[HOUSEHOLDS_VISITED] += s.visited.get(&day).map_or(0, |m| m.len() as i64);
                c[HOUSEHOLDS_QUARANTINED] += s
                    .status
                    .values()
                    .filter(|t| {
                        t.last_before((end_ms, 0))
                            .is_some_and(|st| st == Q_STARTED || st == Q_ONGOING)
                    })
                    .count() as i64;
            }
            out.push((day, c));
        }
        out
    }

    /// Events applied but not projected (unknown kinds or undecodable).
    pub fn unprojected(&self) -> u64 {
        self.origins.values().map(|o| o.unprojected).sum()
    }

    /// A digest of everything the projection would answer for `origins`
    /// over `from..=to`: two nodes (or auditors) with equal hashes agree.
    pub fn state_hash(&self, origins: &[String], from: Day, to: Day) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"gridsync/projection/v1\0");
        for (day, counts) in self.query(origins, from, to) {
            h.update(&day.to_be_bytes());
            for c in counts {
                h.update(&c.to_be_bytes());
            }
        }
        h.finalize().to_hex().to_string()
    }
}
