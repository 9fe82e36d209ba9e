//! Realistic field events, as grid workers' phones and forms post them:
//! checkpoint entries (persons and vehicles, a few from Hubei, some turned
//! back or referred), temperature readings (about 2 % fevers), household
//! visits (quarantines starting, going on and ending), deliveries to
//! quarantined households, the odd late event and correction. Used by
//! `gridsync demo` and `gridsync load`.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use gridsync_node::state::system_now_ms;

const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "孙", "于",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "秀英", "敏", "静", "强", "磊", "军", "洋", "勇", "艳", "杰", "涛", "明",
];
const ITEMS: &[&str] = &["面条", "牛奶", "熟食", "饼干", "蔬菜", "大米", "鸡蛋"];

/// Recent events kept per community for corrections.
pub const RECENT_KEPT: usize = 20;

/// Makes events; remembers recent ones per community to correct them.
pub struct Workload {
    rng: StdRng,
    /// Per community: recent (seq, kind, data as JSON text) for corrections.
    recent: BTreeMap<String, VecDeque<(u64, String, String)>>,
    quarantined: BTreeMap<String, Vec<String>>,
    n: u64,
    /// Prefix of every `client_id` (unique per run).
    tag: String,
    /// The minute (unix ms ÷ 60,000) of the last `occurred_at` written,
    /// and its text up to the seconds.
    minute: Option<(i64, String)>,
}

/// What [`Workload::write_event`] wrote: the event's kind and where its
/// `data` object sits in the buffer (for [`Workload::stored`]).
#[derive(Clone, Debug)]
pub struct Written {
    pub kind: &'static str,
    pub data: Range<usize>,
}

/// Appends `s` as a JSON string (escaped as JSON requires). Most strings
/// here need no escape and are copied as they are: the generator shares
/// the machine with the node it loads, so its own CPU per event counts.
fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s) {
        serde_json::to_writer(&mut *out, s).expect("a string serialises into a Vec");
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether JSON needs any byte of `s` escaped.
fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Appends `parts` followed by `n` in decimal as one JSON string, without
/// building it first when no part needs an escape.
fn string_with_number(out: &mut Vec<u8>, parts: &[&str], n: u64) {
    if parts.iter().any(|p| needs_escape(p)) {
        string(out, &format!("{}{n}", parts.concat()));
        return;
    }
    out.push(b'"');
    for p in parts {
        out.extend_from_slice(p.as_bytes());
    }
    int(out, n);
    out.push(b'"');
}

/// Appends `n` in decimal, zero-padded to `width` digits.
fn padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    let mut m = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    let start = i.min(digits.len() - width.min(digits.len()));
    out.extend_from_slice(&digits[start..]);
}

/// Appends an unsigned integer.
fn int(out: &mut Vec<u8>, n: u64) {
    padded(out, n, 1);
}

/// Appends tenths as a decimal (`362` → `36.2`), as a JSON number.
fn tenths(out: &mut Vec<u8>, t: u64) {
    int(out, t / 10);
    out.push(b'.');
    out.push(b'0' + (t % 10) as u8);
}

impl Workload {
    pub fn new(seed: u64, tag: &str) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            recent: BTreeMap::new(),
            quarantined: BTreeMap::new(),
            n: 0,
            tag: tag.to_owned(),
            minute: None,
        }
    }

    /// One of `items`, at random.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.gen_range(0..items.len())]
    }

    /// Remembers that an event of `kind` with `data` (its JSON text) was
    /// stored as `seq` at `community`, so later corrections can target it.
    pub fn stored(&mut self, community: &str, seq: u64, kind: &str, data: &[u8]) {
        let q = self.recent.entry(community.to_owned()).or_default();
        if kind != "correction" {
            q.push_back((
                seq,
                kind.to_owned(),
                String::from_utf8_lossy(data).into_owned(),
            ));
        }
        if q.len() > RECENT_KEPT {
            q.pop_front();
        }
    }

    fn person(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"name\":\"");
        out.extend_from_slice(SURNAMES[self.rng.gen_range(0..SURNAMES.len())].as_bytes());
        out.extend_from_slice(GIVEN[self.rng.gen_range(0..GIVEN.len())].as_bytes());
        out.extend_from_slice(b"\",\"phone\":\"1");
        let phone = self.rng.gen_range(3_000_000_000u64..9_999_999_999);
        padded(out, phone, 10);
        out.extend_from_slice(b"\"}");
    }

    /// One realistic event for `community` as a JSON value (`gridsync
    /// demo`; the text [`Workload::write_event`] writes, parsed).
    pub fn event(&mut self, community: &str) -> Value {
        let mut out = Vec::with_capacity(512);
        self.write_event(community, &mut out);
        serde_json::from_slice(&out).expect("the generator writes JSON")
    }

    /// Appends one realistic event for `community`, as a device would post
    /// it, to `out` as a JSON object.
    pub fn write_event(&mut self, community: &str, out: &mut Vec<u8>) -> Written {
        self.n += 1;
        let now = system_now_ms();
        let late = self.rng.gen_bool(0.03);
        let at = if late {
            now - self.rng.gen_range(3_600_000..30 * 3_600_000)
        } else {
            now - self.rng.gen_range(0..120_000)
        };
        out.extend_from_slice(b"{\"occurred_at\":\"");
        self.write_time(at, out);
        out.extend_from_slice(b"\",\"grid\":\"g");
        padded(out, self.rng.gen_range(1..12), 2);
        out.extend_from_slice(b"\",\"recorded_by\":\"w");
        padded(out, self.rng.gen_range(1..40), 3);
        out.extend_from_slice(b"\",\"client_id\":");
        string_with_number(out, &[&self.tag, "-", community, "-"], self.n);
        let household = format!("{community}-h{:03}", self.rng.gen_range(1..80));
        let roll: f64 = self.rng.gen();
        let recent_len = self.recent.get(community).map_or(0, VecDeque::len);
        let kind = if roll < 0.02 && recent_len > 0 {
            "correction"
        } else if roll < 0.37 {
            "entry"
        } else if roll < 0.72 {
            "temperature"
        } else if roll < 0.92 {
            "visit"
        } else {
            "delivery"
        };
        // `kind` before `data`, as a client serialising `EventInput`
        // writes them: the node reads `data` into its kind's type as it
        // meets it (in any other order it reads it twice).
        out.extend_from_slice(b",\"kind\":");
        string(out, kind);
        out.extend_from_slice(b",\"data\":");
        let start = out.len();
        match kind {
            "correction" => self.correction(community, out),
            "entry" => self.entry(community, out),
            "temperature" => self.temperature(out),
            "visit" => self.visit(community, household, out),
            _ => self.delivery(community, household, out),
        }
        let data = start..out.len();
        out.push(b'}');
        Written { kind, data }
    }

    /// Writes `unix_ms` as RFC 3339 at +08:00 with milliseconds: the
    /// date, hour and minute formatted once a minute, the rest here.
    fn write_time(&mut self, unix_ms: i64, out: &mut Vec<u8>) {
        const OFFSET_MIN: i16 = 480;
        let minute = unix_ms.div_euclid(60_000);
        if self.minute.as_ref().is_none_or(|(m, _)| *m != minute) {
            let whole = gridsync_model::time_fmt::format_rfc3339_ms(minute * 60_000, OFFSET_MIN);
            // `YYYY-MM-DDTHH:MM:` of the minute's own text (the whole of
            // it for a time RFC 3339 cannot write, which the node refuses).
            let prefix = whole.get(..17).unwrap_or(&whole).to_owned();
            self.minute = Some((minute, prefix));
        }
        let (_, prefix) = self.minute.as_ref().expect("set above");
        out.extend_from_slice(prefix.as_bytes());
        let ms = unix_ms.rem_euclid(60_000) as u64;
        padded(out, ms / 1000, 2);
        out.push(b'.');
        padded(out, ms % 1000, 3);
        out.extend_from_slice(b"+08:00");
    }

    fn correction(&mut self, community: &str, out: &mut Vec<u8>) {
        let q = &self.recent[community];
        let (seq, kind, data) = q[self.rng.gen_range(0..q.len())].clone();
        out.extend_from_slice(b"{\"target\":{\"origin\":");
        string(out, community);
        out.extend_from_slice(b",\"seq\":");
        int(out, seq);
        out.extend_from_slice("},\"reason\":\"登记有误\",\"action\":".as_bytes());
        // Recent events are never corrections (`stored` keeps none).
        if self.rng.gen_bool(0.5) {
            out.extend_from_slice(b"\"void\"}");
            return;
        }
        out.extend_from_slice(b"\"replace\",\"replacement\":");
        if kind == "temperature" {
            // The reading corrected to a normal one.
            let mut r: Value = serde_json::from_str(&data).expect("stored data is JSON");
            r["celsius"] = Value::from(36.6);
            r["action"] = Value::from("none");
            serde_json::to_writer(&mut *out, &r).expect("a value serialises into a Vec");
        } else {
            out.extend_from_slice(data.as_bytes());
        }
        out.push(b'}');
    }

    fn entry(&mut self, community: &str, out: &mut Vec<u8>) {
        let hubei = self.rng.gen_bool(0.05);
        let subject =
            ["resident", "resident", "resident", "visitor", "vehicle"][self.rng.gen_range(0..5)];
        let decision = if hubei && self.rng.gen_bool(0.5) {
            "referred"
        } else if self.rng.gen_bool(0.08) {
            "turned_back"
        } else {
            "admitted"
        };
        let from_region = if hubei {
            "湖北省武汉市"
        } else {
            ["山东省青岛市", "山东省青岛市", "山东省济南市", "北京市"][self.rng.gen_range(0..4)]
        };
        out.extend_from_slice(b"{\"checkpoint\":");
        let cp = self.rng.gen_range(1..4);
        string_with_number(out, &[community, "-cp"], cp);
        out.extend_from_slice(b",\"direction\":");
        string(out, if self.rng.gen_bool(0.7) { "in" } else { "out" });
        out.extend_from_slice(b",\"subject\":");
        string(out, subject);
        out.extend_from_slice(b",\"person\":");
        self.person(out);
        out.extend_from_slice(b",\"from_region\":");
        string(out, from_region);
        out.extend_from_slice(",\"purpose\":\"返乡\",\"decision\":".as_bytes());
        string(out, decision);
        out.extend_from_slice(b",\"celsius\":");
        tenths(out, 362 + self.rng.gen_range(0..10));
        if subject == "vehicle" {
            out.extend_from_slice(",\"plate\":\"鲁B".as_bytes());
            padded(out, self.rng.gen_range(0..99999), 5);
            out.push(b'"');
        }
        out.push(b'}');
    }

    fn temperature(&mut self, out: &mut Vec<u8>) {
        let fever = self.rng.gen_bool(0.02);
        let c = if fever {
            self.rng.gen_range(373..395)
        } else {
            self.rng.gen_range(358..372)
        };
        out.extend_from_slice(b"{\"person\":");
        self.person(out);
        out.extend_from_slice(b",\"celsius\":");
        tenths(out, c);
        out.extend_from_slice(b",\"site\":");
        string(
            out,
            ["checkpoint", "home", "home", "clinic"][self.rng.gen_range(0..4)],
        );
        out.extend_from_slice(b",\"action\":");
        string(out, if fever { "referred" } else { "none" });
        out.push(b'}');
    }

    fn visit(&mut self, community: &str, household: String, out: &mut Vec<u8>) {
        let q = self.quarantined.entry(community.to_owned()).or_default();
        let status = if q.contains(&household) {
            if self.rng.gen_bool(0.1) {
                q.retain(|h| *h != household);
                "ended"
            } else {
                "ongoing"
            }
        } else if self.rng.gen_bool(0.06) {
            q.push(household.clone());
            "started"
        } else {
            "none"
        };
        out.extend_from_slice(b"{\"household\":");
        string(out, &household);
        out.extend_from_slice(b",\"method\":");
        string(
            out,
            if self.rng.gen_bool(0.6) {
                "in_person"
            } else {
                "phone"
            },
        );
        out.extend_from_slice(b",\"residents\":");
        int(out, self.rng.gen_range(1..6));
        out.extend_from_slice(b",\"symptoms\":false,\"quarantine\":");
        string(out, status);
        out.push(b'}');
    }

    fn delivery(&mut self, community: &str, household: String, out: &mut Vec<u8>) {
        let first = self
            .quarantined
            .get(community)
            .and_then(|q| q.first())
            .cloned();
        let quarantined = first.is_some();
        out.extend_from_slice(b"{\"household\":");
        string(out, &first.unwrap_or(household));
        out.extend_from_slice(b",\"items\":[");
        for i in 0..self.rng.gen_range(1..4) {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"item\":");
            string(out, ITEMS[self.rng.gen_range(0..ITEMS.len())]);
            out.extend_from_slice(b",\"qty\":");
            int(out, self.rng.gen_range(1..5));
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"quarantined\":");
        out.extend_from_slice(if quarantined { b"true" } else { b"false" });
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridsync_model::ingest::{prepare_body, IngestContext, IngestLimits, TargetInfo};

    /// The hand-written pieces write what the general ones would: padded
    /// digits as `format!` pads them, strings as serde_json writes them
    /// (escaped where JSON needs it), and `occurred_at` texts that parse
    /// back to the same instant at +08:00, across minute boundaries and
    /// back and forth in time (the minute's text is cached).
    #[test]
    fn the_hand_written_pieces_write_what_the_general_ones_would() {
        for (n, w) in [
            (0, 2),
            (7, 2),
            (11, 2),
            (5, 3),
            (39, 3),
            (42, 5),
            (99_998, 5),
        ] {
            let mut out = Vec::new();
            padded(&mut out, n, w);
            assert_eq!(out, format!("{n:0w$}").into_bytes());
        }
        let mut out = Vec::new();
        padded(&mut out, 3_000_000_000, 10);
        assert_eq!(out, b"3000000000");
        for s in [
            "in",
            "湖北省武汉市",
            "c-2",
            "a\"b",
            "back\\slash",
            "tab\there",
            "",
        ] {
            let mut out = Vec::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
        for parts in [&["t", "-", "c-2", "-"][..], &["a\"b", "-cp"][..]] {
            let mut out = Vec::new();
            string_with_number(&mut out, parts, 42);
            let whole = format!("{}42", parts.concat());
            assert_eq!(out, serde_json::to_vec(&whole).unwrap(), "{whole:?}");
        }
        let mut w = Workload::new(1, "t");
        let base = 1_765_000_000_000i64;
        for at in [
            base,
            base + 59_999,
            base + 60_000,
            base - 1,
            base + 1,
            base - 30 * 3_600_000,
            base + 123_456,
        ] {
            let mut out = Vec::new();
            w.write_time(at, &mut out);
            let text = String::from_utf8(out).unwrap();
            let parsed = gridsync_model::time_fmt::parse_rfc3339_ms(&text).unwrap();
            assert_eq!(parsed, (at, 480), "{text}");
        }
    }

    /// Every generated event is one a node accepts (the server's own
    /// parse, schema check and correction-target check, on bodies built the
    /// way `gridsync load` builds them), the mix is the documented one, and
    /// each `Written` range is exactly the event's `data`.
    #[test]
    fn what_it_writes_is_accepted_and_the_mix_is_realistic() {
        let mut w = Workload::new(7, "t");
        let limits = IngestLimits::default();
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        // What each community holds: seq → kind.
        let mut held: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
        let communities = ["c1", "c-2"];
        let mut total = 0;
        for round in 0..400 {
            let c = communities[round % 2];
            let mut body = b"{\"events\":[".to_vec();
            let mut written = Vec::new();
            for i in 0..50 {
                if i > 0 {
                    body.push(b',');
                }
                let start = body.len();
                let wr = w.write_event(c, &mut body);
                let one: Value = serde_json::from_slice(&body[start..]).expect("one event");
                let data: Value = serde_json::from_slice(&body[wr.data.clone()]).expect("data");
                assert_eq!(one["data"], data, "the range is the data");
                assert_eq!(one["kind"], wr.kind);
                written.push(wr);
            }
            body.extend_from_slice(b"]}");
            let ctx = IngestContext {
                node_id: c,
                now_ms: system_now_ms(),
                limits: &limits,
            };
            let log = held.entry(c.to_owned()).or_default();
            let lookup = |r: &gridsync_model::kinds::EventRef| {
                (r.origin == c)
                    .then(|| log.get(r.seq as usize - 1))
                    .flatten()
                    .map(|k| TargetInfo {
                        kind: (*k).to_owned(),
                        schema: 1,
                    })
            };
            let prepared = prepare_body(&body, &ctx, &lookup, &mut rand::rngs::OsRng)
                .unwrap_or_else(|e| panic!("refused: {e:?}\n{}", String::from_utf8_lossy(&body)));
            assert_eq!(prepared.len(), 50);
            for wr in written {
                log.push(wr.kind);
                let seq = log.len() as u64;
                w.stored(c, seq, wr.kind, &body[wr.data]);
                *kinds.entry(wr.kind).or_default() += 1;
                total += 1;
            }
        }
        let share = |k: &str| kinds.get(k).copied().unwrap_or(0) as f64 / total as f64;
        // Draws: 2 % corrections, then 35 / 35 / 20 / 8 % of the kinds.
        for (k, want) in [
            ("correction", 0.02),
            ("entry", 0.35),
            ("temperature", 0.35),
            ("visit", 0.20),
            ("delivery", 0.08),
        ] {
            assert!(
                (share(k) - want).abs() < 0.02,
                "{k}: {} of {total}",
                share(k)
            );
        }
    }
}
