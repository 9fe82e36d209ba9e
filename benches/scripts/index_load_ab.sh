#!/usr/bin/env bash
# How long a community's log writer takes to load its client-id index at a
# start (the "client-id index loaded" log line's `seconds`), two gridsync
# binaries alternating: each run provisions a fresh community, posts
# EVENTS own events (4 clients x 250-event posts; below the index's 16,384
# the ids are all *recent*, read back from the log at every start), stops
# it and starts it RESTARTS times. Loopback only (127.0.0.1:18801).
#
#   benches/scripts/index_load_ab.sh PAIRS BIN_A BIN_B [EVENTS RESTARTS]
#
# Defaults: 16,000 events, 3 restarts a run. The last line gives each
# binary's median over all its starts.
set -euo pipefail
pairs=$1; a=$2; b=$3; events=${4:-16000}; restarts=${5:-3}
# shellcheck source=one_community.sh
. "$(dirname "$0")/one_community.sh"
run() {
  local bin=$1 d i seconds=""
  d=$(mktemp -d "$work/run.XXXX")
  "$bin" provision --tree "$work/tree.toml" --out "$d/deploy" > /dev/null
  serve "$bin" "$d"
  "$bin" load --tree "$d/deploy" --clients 4 --batch 250 --events "$events" --json > /dev/null 2>&1
  kill "$pid"; wait "$pid" 2> /dev/null || true
  for _ in $(seq "$restarts"); do
    serve "$bin" "$d"
    for i in $(seq 200); do
      grep -q "client-id index loaded" "$d/serve.log" && break
      sleep 0.05
    done
    seconds="$seconds $(sed 's/\x1b\[[0-9;]*m//g' "$d/serve.log" \
      | grep "client-id index loaded" | grep -o 'recent=[0-9]* .*seconds=[0-9.e-]*' \
      | sed 's/ .*seconds=/:/')"
    kill "$pid"; wait "$pid" 2> /dev/null || true
  done
  rm -rf "$d"
  echo "$seconds"
}
alternate "$pairs" "$a" "$b"
python3 - "$work/runs" <<'PY'
import statistics as st, sys
s = {"A": [], "B": []}
for line in open(sys.argv[1]):
    tag, *starts = line.split()
    s[tag] += [float(x.split(":")[1]) for x in starts]
if not s["A"] or not s["B"]:
    sys.exit("no start of one of the builds was timed (see the lines above)")
print(f"index loaded, median of {len(s['A'])} starts: A {st.median(s['A']) * 1e3:.1f} ms, "
      f"B {st.median(s['B']) * 1e3:.1f} ms")
PY
