#!/bin/bash
# The full audit of two 10 M-event street logs, identical but for their
# signed heads (BENCHMARKS.md, "Signed heads chained"), written by
#   GRIDSYNC_BENCH_EVENTS=10000000 GRIDSYNC_BENCH_KEEP=1 GRIDSYNC_BENCH_STARTS=0 \
#   GRIDSYNC_BENCH_AUDITS=0 [GRIDSYNC_BENCH_HEADS=v1] cargo bench --bench big_start
# (each prints "keeping the tree in DIR"). Per round, in turn: BASE (another
# build, optional) on the v2 log; BIN on the v2 log; BIN with
# --signatures newest on the v2 log; BIN on the v1 log.
#
#   V2=DIR/deploy V1=DIR/deploy BIN=target/release/gridsync [BASE=/path/to/gridsync] \
#     [ROUNDS=3] benches/scripts/audit_formats.sh
set -u
BIN=${BIN:-target/release/gridsync}
run() { # binary tree signatures label
  out=$( { /usr/bin/time -f "maxrss_kb=%M" "$1" audit verify --node s1 --signatures "$3" \
    --data "$2/s1/data" --topology "$2/topology.toml"; } 2>&1 )
  echo "$4: $(echo "$out" | grep -o 'verified in .*directory)') $(echo "$out" | grep -o 'maxrss_kb=.*') $(echo "$out" | grep -c '^OK') OK"
}
for _ in $(seq "${ROUNDS:-3}"); do
  if [ -n "${BASE:-}" ]; then run "$BASE" "$V2" all "base v2 all"; fi
  run "$BIN" "$V2" all "v2 all"
  run "$BIN" "$V2" newest "v2 newest"
  run "$BIN" "$V1" all "v1 all"
done
