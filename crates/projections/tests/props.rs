//! Property tests: for random event sets with corrections and late events,
//! applied in random interleavings of origins, the incremental projection
//! equals a fresh rebuild and an independent oracle, and every rollup
//! equals the sum of its parts.

use std::collections::BTreeMap;

use gridsync_model::canonical::to_canonical;
use gridsync_model::event::{event_hash, EnvelopeHeader, OccurredAt};
use gridsync_model::ZERO_HASH;
use gridsync_projections::{
    Counts, Projection, ProjectionConfig, HOUSEHOLDS_QUARANTINED, HOUSEHOLDS_VISITED, METRICS,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const DAY0_MS: i64 = 1_579_968_000_000; // 2020-01-26T00:00:00+08:00 = 2020-01-25T16:00Z

#[derive(Clone, Debug)]
enum Gen {
    Entry {
        day: i64,
        decision: u8,
        hubei: bool,
    },
    Temp {
        day: i64,
        celsius10: i64,
        referred: bool,
    },
    Visit {
        day: i64,
        hour: i64,
        household: u8,
        q: u8,
        phone: bool,
    },
    Delivery {
        day: i64,
        qty: u64,
        quarantined: bool,
    },
    Void {
        back: usize,
    },
    Replace {
        back: usize,
        celsius10: i64,
        household: u8,
        q: u8,
    },
}

fn gen() -> impl Strategy<Value = Gen> {
    prop_oneof![
        (0i64..4, 0u8..3, any::<bool>()).prop_map(|(day, decision, hubei)| Gen::Entry {
            day,
            decision,
            hubei
        }),
        (0i64..4, 355i64..400, any::<bool>()).prop_map(|(day, celsius10, referred)| Gen::Temp {
            day,
            celsius10,
            referred
        }),
        (0i64..4, 0i64..24, 0u8..4, 0u8..4, any::<bool>()).prop_map(
            |(day, hour, household, q, phone)| Gen::Visit {
                day,
                hour,
                household,
                q,
                phone
            }
        ),
        (0i64..4, 1u64..5, any::<bool>()).prop_map(|(day, qty, quarantined)| Gen::Delivery {
            day,
            qty,
            quarantined
        }),
        (0usize..6).prop_map(|back| Gen::Void { back }),
        (0usize..6, 355i64..400, 0u8..4, 0u8..4).prop_map(|(back, celsius10, household, q)| {
            Gen::Replace {
                back,
                celsius10,
                household,
                q,
            }
        }),
    ]
}

/// (kind, data, occurred_ms, unused) of each posted event.
type Posted = (String, Value, i64, u32);

const Q: [&str; 4] = ["none", "started", "ongoing", "ended"];

/// (kind, data, occurred_ms) of one generated non-correction event.
fn plain(g: &Gen) -> Option<(&'static str, Value, i64)> {
    Some(match g {
        Gen::Entry {
            day,
            decision,
            hubei,
        } => (
            "entry",
            json!({"checkpoint": "cp", "direction": "in", "subject": "resident",
                   "from_region": if *hubei { "湖北省武汉市" } else { "山东省青岛市" },
                   "decision": (["admitted", "turned_back", "referred"][*decision as usize])}),
            DAY0_MS + day * 86_400_000 + 3_600_000,
        ),
        Gen::Temp {
            day,
            celsius10,
            referred,
        } => (
            "temperature",
            json!({"celsius": *celsius10 as f64 / 10.0, "site": "home", "action": if *referred { "referred" } else { "none" }}),
            DAY0_MS + day * 86_400_000 + 7_200_000,
        ),
        Gen::Visit {
            day,
            hour,
            household,
            q,
            phone,
        } => (
            "visit",
            json!({"household": format!("h{household}"), "method": if *phone { "phone" } else { "in_person" }, "quarantine": Q[*q as usize]}),
            DAY0_MS + day * 86_400_000 + hour * 3_600_000,
        ),
        Gen::Delivery {
            day,
            qty,
            quarantined,
        } => (
            "delivery",
            json!({"household": "h1", "items": [{"item": "面条", "qty": qty}], "quarantined": quarantined}),
            DAY0_MS + day * 86_400_000 + 3_000,
        ),
        _ => return None,
    })
}

/// Builds an origin's envelopes; corrections target an earlier
/// non-correction event `back` positions before (if any).
fn build(origin: &str, gens: &[Gen]) -> (Vec<Vec<u8>>, Vec<Posted>) {
    let mut prev = ZERO_HASH;
    let mut out = Vec::new();
    // Per seq: (kind, data, occurred_ms) as posted (corrections included).
    let mut posted: Vec<Posted> = Vec::new();
    for g in gens {
        let seq = out.len() as u64 + 1;
        let (kind, data, at) = match plain(g) {
            Some(x) => x,
            None => {
                let back = match g {
                    Gen::Void { back } | Gen::Replace { back, .. } => *back,
                    _ => unreachable!(),
                };
                let targets: Vec<u64> = posted
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.0 != "correction")
                    .map(|(i, _)| i as u64 + 1)
                    .collect();
                let Some(&target) = targets.iter().rev().nth(back % targets.len().max(1)) else {
                    continue;
                };
                let t = &posted[target as usize - 1];
                let replacement = match g {
                    Gen::Replace {
                        celsius10,
                        household,
                        q,
                        ..
                    } => Some(match t.0.as_str() {
                        "temperature" => {
                            json!({"celsius": *celsius10 as f64 / 10.0, "site": "clinic"})
                        }
                        "visit" => {
                            json!({"household": format!("h{household}"), "method": "phone", "quarantine": Q[*q as usize]})
                        }
                        _ => t.1.clone(),
                    }),
                    _ => None,
                };
                let mut d = json!({"target": {"origin": origin, "seq": target}, "action": if replacement.is_some() { "replace" } else { "void" }, "reason": "r"});
                if let Some(r) = replacement {
                    d["replacement"] = r;
                }
                ("correction", d, DAY0_MS + 5 * 86_400_000)
            }
        };
        let bytes = EnvelopeHeader {
            origin,
            seq,
            kind,
            schema: 1,
            occurred_at: OccurredAt {
                unix_ms: at,
                offset_min: 480,
            },
            recorded_at_ms: at,
            grid: "g",
            recorded_by: "w",
            client_id: &format!("k{seq}"),
            prev: &prev,
            personal_digest: None,
        }
        .encode_with_data(&to_canonical(&data));
        prev = event_hash(&bytes);
        out.push(bytes);
        posted.push((kind.to_owned(), data, at, 0));
    }
    (out, posted)
}

/// The oracle: apply corrections to a plain list, then count directly.
fn oracle(
    posted: &[Posted],
    cfg: &ProjectionConfig,
    days: std::ops::RangeInclusive<i32>,
) -> BTreeMap<i32, Counts> {
    let mut effective: Vec<Option<(String, Value, i64)>> = Vec::new();
    for (kind, data, at, _) in posted {
        if kind == "correction" {
            let t = data["target"]["seq"].as_u64().unwrap() as usize - 1;
            let replacement = data.get("replacement").cloned();
            effective.push(None);
            effective[t] = match (replacement, &effective[t]) {
                (Some(r), Some((k, _, a))) => Some((k.clone(), r, *a)),
                (Some(r), None) => {
                    let (k, _, a, _) = &posted[t];
                    Some((k.clone(), r, *a))
                }
                (None, _) => None,
            };
        } else {
            effective.push(Some((kind.clone(), data.clone(), *at)));
        }
    }
    let mut out: BTreeMap<i32, Counts> = days.clone().map(|d| (d, [0; 16])).collect();
    let mut visits: Vec<(i64, usize, String, String)> = Vec::new();
    let mut visited: BTreeMap<i32, std::collections::BTreeSet<String>> = BTreeMap::new();
    for (seq, e) in effective.iter().enumerate() {
        let Some((kind, d, at)) = e else { continue };
        let day = cfg.day_of(*at);
        let Some(c) = out.get_mut(&day) else { continue };
        let m = |name: &str| METRICS.iter().position(|x| *x == name).unwrap();
        match kind.as_str() {
            "entry" => {
                c[m("entries")] += 1;
                match d["decision"].as_str().unwrap() {
                    "admitted" => c[m("entries_admitted")] += 1,
                    "turned_back" => c[m("entries_turned_back")] += 1,
                    _ => {
                        c[m("entries_referred")] += 1;
                        c[m("referrals")] += 1;
                    }
                }
                if d["from_region"].as_str().unwrap().starts_with("湖北") {
                    c[m("entries_flagged")] += 1;
                }
            }
            "temperature" => {
                c[m("temperatures")] += 1;
                if d["celsius"].as_f64().unwrap() >= 37.3 {
                    c[m("fevers")] += 1;
                }
                if d.get("action").and_then(Value::as_str) == Some("referred") {
                    c[m("referrals")] += 1;
                }
            }
            "visit" => {
                c[m("visits")] += 1;
                c[m(if d["method"] == "phone" {
                    "visits_phone"
                } else {
                    "visits_in_person"
                })] += 1;
                let h = d["household"].as_str().unwrap().to_owned();
                visited.entry(day).or_default().insert(h.clone());
                visits.push((
                    *at,
                    seq + 1,
                    h,
                    d["quarantine"].as_str().unwrap().to_owned(),
                ));
            }
            "delivery" => {
                c[m("deliveries")] += 1;
                if d["quarantined"] == true {
                    c[m("deliveries_quarantined")] += 1;
                }
                c[m("items_delivered")] += d["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["qty"].as_i64().unwrap())
                    .sum::<i64>();
            }
            _ => {}
        }
    }
    for (day, c) in out.iter_mut() {
        c[HOUSEHOLDS_VISITED] = visited.get(day).map_or(0, |s| s.len() as i64);
        let end = cfg.day_start_ms(day + 1);
        let mut latest: BTreeMap<&str, (i64, usize, &str)> = BTreeMap::new();
        for (at, seq, h, q) in &visits {
            if *at < end {
                let e = latest.entry(h).or_insert((*at, *seq, q));
                if (*at, *seq) > (e.0, e.1) {
                    *e = (*at, *seq, q);
                }
            }
        }
        c[HOUSEHOLDS_QUARANTINED] = latest
            .values()
            .filter(|(_, _, q)| *q == "started" || *q == "ongoing")
            .count() as i64;
    }
    out
}

fn project(origins: &BTreeMap<String, Vec<Vec<u8>>>, order: &[usize]) -> Projection {
    let cfg = ProjectionConfig::new("Asia/Shanghai").unwrap();
    let mut p = Projection::new(cfg);
    let names: Vec<&String> = origins.keys().collect();
    let mut next: Vec<usize> = vec![0; names.len()];
    let lookup = |o: &str, s: u64| origins.get(o).and_then(|v| v.get(s as usize - 1)).cloned();
    for &i in order {
        let o = names[i % names.len()];
        let k = i % names.len();
        if let Some(bytes) = origins[o].get(next[k]) {
            p.apply(bytes, &lookup).unwrap();
            next[k] += 1;
        }
    }
    // Drain whatever the order did not reach.
    for (k, o) in names.iter().enumerate() {
        while let Some(bytes) = origins[*o].get(next[k]) {
            p.apply(bytes, &lookup).unwrap();
            next[k] += 1;
        }
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn incremental_equals_rebuild_and_oracle(
        a in prop::collection::vec(gen(), 0..40),
        b in prop::collection::vec(gen(), 0..40),
        c in prop::collection::vec(gen(), 0..40),
        order in prop::collection::vec(0usize..3, 0..200),
    ) {
        let mut origins = BTreeMap::new();
        let mut posted = BTreeMap::new();
        for (name, gens) in [("c1", &a), ("c2", &b), ("c3", &c)] {
            let (bytes, p) = build(name, gens);
            origins.insert(name.to_owned(), bytes);
            posted.insert(name.to_owned(), p);
        }
        let interleaved = project(&origins, &order);
        let rebuilt = project(&origins, &[]);
        let cfg = ProjectionConfig::new("Asia/Shanghai").unwrap();
        let (from, to) = (cfg.day_of(DAY0_MS) - 1, cfg.day_of(DAY0_MS) + 6);
        let all: Vec<String> = origins.keys().cloned().collect();
        prop_assert_eq!(interleaved.query(&all, from, to), rebuilt.query(&all, from, to));
        let mut sum: BTreeMap<i32, Counts> = BTreeMap::new();
        for o in &all {
            let one = interleaved.query(std::slice::from_ref(o), from, to);
            let want = oracle(&posted[o], &cfg, from..=to);
            for (day, counts) in &one {
                prop_assert_eq!(counts, &want[day], "origin {} day {}", o, day);
                let s = sum.entry(*day).or_insert([0; 16]);
                for i in 0..16 { s[i] += counts[i]; }
            }
        }
        let total: BTreeMap<i32, Counts> = interleaved.query(&all, from, to).into_iter().collect();
        prop_assert_eq!(total, sum);
    }
}

/// An event already applied is skipped without counting it again, and one
/// past a gap is refused naming what was expected — for a known origin
/// (the one-lookup path) and for one not seen yet alike.
#[test]
fn replays_are_skipped_and_gaps_refused() {
    let gens: Vec<Gen> = (0..4)
        .map(|d| Gen::Temp {
            day: d % 2,
            celsius10: 380,
            referred: false,
        })
        .collect();
    let (a, _) = build("a", &gens);
    let (b, _) = build("b", &gens);
    let lookup = |_: &str, _: u64| None;
    let cfg = ProjectionConfig::new("Asia/Shanghai").unwrap();
    let mut p = Projection::new(cfg);
    let all = || vec!["a".to_owned(), "b".to_owned()];
    p.apply(&a[0], &lookup).unwrap();
    p.apply(&a[1], &lookup).unwrap();
    let before = p.query(&all(), 0, 100_000);
    // Replays of a known origin's events: skipped, nothing counted twice.
    p.apply(&a[0], &lookup).unwrap();
    p.apply(&a[1], &lookup).unwrap();
    assert_eq!(p.query(&all(), 0, 100_000), before);
    assert_eq!(p.applied_seq("a"), 2);
    // A gap at a known origin, then at an unknown one: refused.
    let err = p.apply(&a[3], &lookup).unwrap_err().to_string();
    assert!(err.contains('3') && err.contains('4'), "{err}");
    let err = p.apply(&b[1], &lookup).unwrap_err().to_string();
    assert!(err.contains('1') && err.contains('2'), "{err}");
    assert_eq!(p.applied_seq("a"), 2);
    assert_eq!(p.applied_seq("b"), 0);
    assert_eq!(p.query(&all(), 0, 100_000), before);
    // In order, both go on.
    p.apply(&a[2], &lookup).unwrap();
    p.apply(&b[0], &lookup).unwrap();
    assert_eq!((p.applied_seq("a"), p.applied_seq("b")), (3, 1));
    assert_ne!(p.query(&all(), 0, 100_000), before);
}
