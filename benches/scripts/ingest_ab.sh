#!/usr/bin/env bash
# Batched ingest at one community, two gridsync binaries in alternating
# pairs: events/s from `gridsync load`, the server's CPU per event, and
# the log writer thread's CPU per event (every event passes through that
# one thread). Loopback only (127.0.0.1:18801); a fresh provisioned
# community per run.
#
#   benches/scripts/ingest_ab.sh PAIRS BIN_A BIN_B [CLIENTS BATCH EVENTS]
#
# Defaults: 4 clients x 250-event posts, 600,000 events a run. Extra
# `gridsync serve` flags for both: SERVE_ARGS="…". Each run prints a line
# ("A …" / "B …"); the last lines summarise the pairs: the medians, and
# B ÷ A pair by pair (median, range, how many pairs B was faster in).
set -euo pipefail
pairs=$1; a=$2; b=$3; clients=${4:-4}; batch=${5:-250}; events=${6:-600000}
# shellcheck source=one_community.sh
. "$(dirname "$0")/one_community.sh"
ticks() { awk '{print $14+$15}' "$1"; }
run() {
  local bin=$1 d
  d=$(mktemp -d "$work/run.XXXX")
  "$bin" provision --tree "$work/tree.toml" --out "$d/deploy" > /dev/null
  # shellcheck disable=SC2086
  serve "$bin" "$d" ${SERVE_ARGS:-}
  local writer="" t
  for t in /proc/$pid/task/*; do
    [ "$(cat "$t/comm")" = gridsync-log-wr ] && writer=$t
  done
  local s0 w0 s1 w1
  s0=$(ticks /proc/$pid/stat); w0=$(ticks "$writer/stat")
  "$bin" load --tree "$d/deploy" --clients "$clients" --batch "$batch" --events "$events" --json \
    > "$d/load.json" 2> /dev/null
  s1=$(ticks /proc/$pid/stat); w1=$(ticks "$writer/stat")
  kill "$pid"; wait "$pid" 2> /dev/null || true
  python3 - "$d/load.json" "$events" $((s1 - s0)) $((w1 - w0)) <<'PY'
import json, sys
s = open(sys.argv[1]).read()
r = json.loads(s[s.index("{"):])
n = int(sys.argv[2])
print(f"{r['events_per_s']:.0f} events/s, ack p99 {r['ack_ms']['p99']:.1f} ms, "
      f"server {int(sys.argv[3]) * 1e4 / n:.2f} us/event, writer thread {int(sys.argv[4]) * 1e4 / n:.2f} us/event")
PY
  rm -rf "$d"
}
alternate "$pairs" "$a" "$b"
python3 - "$work/runs" <<'PY'
import re, statistics as st, sys
runs = {"A": [], "B": []}
for line in open(sys.argv[1]):
    m = re.match(r"([AB]) (\d+) events/s.*server ([\d.]+) us/event, writer thread ([\d.]+)", line)
    if m:
        runs[m[1]].append((int(m[2]), float(m[3]), float(m[4])))
a, b = runs["A"], runs["B"]
if not a or not b:
    sys.exit("no pair of runs completed (see the lines above)")
ratios = [y[0] / x[0] for x, y in zip(a, b)]
med = lambda rs, i: st.median(r[i] for r in rs)
print(f"{len(ratios)} pairs: events/s median A {med(a, 0):.0f}, B {med(b, 0):.0f}; "
      f"B / A pair by pair median {st.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}), "
      f"B faster in {sum(r > 1 for r in ratios)} of {len(ratios)}")
print(f"server us/event median A {med(a, 1):.2f}, B {med(b, 1):.2f}; "
      f"writer thread us/event median A {med(a, 2):.2f}, B {med(b, 2):.2f}")
PY
