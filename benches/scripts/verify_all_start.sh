#!/bin/bash
# `gridsync serve --verify-all` of the street of each kept tree (see
# audit_formats.sh): the time the store reports for its whole-log check
# ("log verified on open … all_signatures=true elapsed_ms") and until
# /healthz answers. The trees' streets are started one at a time and
# stopped again; loopback only.
#
#   BIN=target/release/gridsync [ROUNDS=3] benches/scripts/verify_all_start.sh DIR/deploy…
set -u
BIN=${BIN:-target/release/gridsync}
for _ in $(seq "${ROUNDS:-3}"); do
  for T in "$@"; do
    port=$(grep -o 'listen = "127.0.0.1:[0-9]*"' "$T/s1/config.toml" | grep -o '[0-9]*"$' | tr -d '"')
    log=$(mktemp)
    start=$(date +%s.%N)
    "$BIN" serve --config "$T/s1/config.toml" --verify-all > "$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 6000); do
      curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break
      sleep 0.05
    done
    end=$(date +%s.%N)
    checked=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -o 'all_signatures=true elapsed_ms=[0-9]*' | head -1)
    echo "$T: listening after $(echo "$end - $start" | bc) s; $checked"
    kill "$pid"; wait "$pid" 2>/dev/null; rm -f "$log"
  done
done
