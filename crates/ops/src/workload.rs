//! Realistic field events, as grid workers' phones and forms post them:
//! checkpoint entries (persons and vehicles, a few from Hubei, some turned
//! back or referred), temperature readings (about 2 % fevers), household
//! visits (quarantines starting, going on and ending), deliveries to
//! quarantined households, the odd late event and correction. Used by
//! `gridsync demo` and `gridsync load`.

use std::collections::{BTreeMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

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
    /// Per community: recent (seq, kind, data) for corrections.
    recent: BTreeMap<String, VecDeque<(u64, String, Value)>>,
    quarantined: BTreeMap<String, Vec<String>>,
    n: u64,
    /// Prefix of every `client_id` (unique per run).
    tag: String,
}

impl Workload {
    pub fn new(seed: u64, tag: &str) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            recent: BTreeMap::new(),
            quarantined: BTreeMap::new(),
            n: 0,
            tag: tag.to_owned(),
        }
    }

    /// One of `items`, at random.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.gen_range(0..items.len())]
    }

    /// Remembers that `event` was stored as `seq` at `community`, so later
    /// corrections can target it.
    pub fn stored(&mut self, community: &str, seq: u64, event: &Value) {
        let q = self.recent.entry(community.to_owned()).or_default();
        if event["kind"] != "correction" {
            q.push_back((
                seq,
                event["kind"].as_str().unwrap_or("").to_owned(),
                event["data"].clone(),
            ));
        }
        if q.len() > RECENT_KEPT {
            q.pop_front();
        }
    }

    fn person(&mut self) -> Value {
        let name = format!(
            "{}{}",
            SURNAMES[self.rng.gen_range(0..SURNAMES.len())],
            GIVEN[self.rng.gen_range(0..GIVEN.len())]
        );
        json!({"name": name, "phone": format!("1{:010}", self.rng.gen_range(3_000_000_000u64..9_999_999_999))})
    }

    /// One realistic event for `community`, as a device would post it.
    pub fn event(&mut self, community: &str) -> Value {
        self.n += 1;
        let now = system_now_ms();
        let late = self.rng.gen_bool(0.03);
        let at = if late {
            now - self.rng.gen_range(3_600_000..30 * 3_600_000)
        } else {
            now - self.rng.gen_range(0..120_000)
        };
        let occurred_at = gridsync_model::time_fmt::format_rfc3339_ms(at, 480);
        let household = format!("{community}-h{:03}", self.rng.gen_range(1..80));
        let roll: f64 = self.rng.gen();
        let recent_len = self.recent.get(community).map_or(0, VecDeque::len);
        let (kind, data) = if roll < 0.02 && recent_len > 0 {
            let q = &self.recent[community];
            let (seq, kind, data) = q[self.rng.gen_range(0..q.len())].clone();
            let mut d = json!({"target": {"origin": community, "seq": seq}, "reason": "登记有误"});
            if kind != "correction" && self.rng.gen_bool(0.5) {
                d["action"] = json!("void");
            } else {
                d["action"] = json!("replace");
                let mut r = data.clone();
                if kind == "temperature" {
                    r["celsius"] = json!(36.6);
                    r["action"] = json!("none");
                }
                d["replacement"] = r;
            }
            ("correction", d)
        } else if roll < 0.37 {
            let hubei = self.rng.gen_bool(0.05);
            let subject = ["resident", "resident", "resident", "visitor", "vehicle"]
                [self.rng.gen_range(0..5)];
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
            let mut d = json!({
                "checkpoint": format!("{community}-cp{}", self.rng.gen_range(1..4)),
                "direction": if self.rng.gen_bool(0.7) { "in" } else { "out" },
                "subject": subject, "person": self.person(),
                "from_region": from_region,
                "purpose": "返乡", "decision": decision,
                "celsius": (362 + self.rng.gen_range(0..10)) as f64 / 10.0,
            });
            if subject == "vehicle" {
                d["plate"] = json!(format!("鲁B{:05}", self.rng.gen_range(0..99999)));
            }
            ("entry", d)
        } else if roll < 0.72 {
            let fever = self.rng.gen_bool(0.02);
            let c = if fever {
                self.rng.gen_range(373..395)
            } else {
                self.rng.gen_range(358..372)
            } as f64
                / 10.0;
            (
                "temperature",
                json!({
                    "person": self.person(), "celsius": c,
                    "site": (["checkpoint", "home", "home", "clinic"][self.rng.gen_range(0..4)]),
                    "action": if fever { "referred" } else { "none" },
                }),
            )
        } else if roll < 0.92 {
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
            (
                "visit",
                json!({
                    "household": household, "method": if self.rng.gen_bool(0.6) { "in_person" } else { "phone" },
                    "residents": self.rng.gen_range(1..6), "symptoms": false, "quarantine": status,
                }),
            )
        } else {
            let quarantined = self
                .quarantined
                .get(community)
                .is_some_and(|q| !q.is_empty());
            let h = if quarantined {
                self.quarantined[community][0].clone()
            } else {
                household
            };
            let items: Vec<Value> = (0..self.rng.gen_range(1..4))
                .map(|_| json!({"item": ITEMS[self.rng.gen_range(0..ITEMS.len())], "qty": self.rng.gen_range(1..5)}))
                .collect();
            (
                "delivery",
                json!({"household": h, "items": items, "quarantined": quarantined}),
            )
        };
        json!({
            "kind": kind, "occurred_at": occurred_at, "grid": format!("g{:02}", self.rng.gen_range(1..12)),
            "recorded_by": format!("w{:03}", self.rng.gen_range(1..40)), "client_id": format!("{}-{community}-{}", self.tag, self.n),
            "data": data,
        })
    }
}
