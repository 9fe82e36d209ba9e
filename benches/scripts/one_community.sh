# Sourced by the A/B scripts here: a scratch directory ($work, removed on
# exit), a one-community tree in it ($work/tree.toml, listening on
# 127.0.0.1:18801), and `serve BIN DIR [FLAGS…]`, which starts
# `BIN serve` on DIR's provisioned community (its log in DIR/serve.log),
# sets $pid and returns once the node answers /healthz; and `alternate`
# (below).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/tree.toml" <<'TOML'
timezone = "Asia/Shanghai"
[[node]]
id = "c1"
name = "Community 1"
listen = "127.0.0.1:18801"
TOML
serve() {
  local bin=$1 dir=$2 i
  shift 2
  "$bin" serve "$@" --config "$dir/deploy/c1/config.toml" > "$dir/serve.log" 2>&1 &
  pid=$!
  for i in $(seq 200); do
    curl -s -o /dev/null http://127.0.0.1:18801/healthz && return
    sleep 0.05
  done
  echo "the node did not come up: $(tail -3 "$dir/serve.log")" >&2
  exit 1
}
# `alternate PAIRS BIN_A BIN_B`: the sourcing script's `run BIN` for A, then
# for B, PAIRS times; each result printed as "A …" / "B …" and kept in
# $work/runs for the summary.
alternate() {
  local n=$1 a=$2 b=$3
  for _ in $(seq "$n"); do
    echo "A $(run "$a")" | tee -a "$work/runs"
    echo "B $(run "$b")" | tee -a "$work/runs"
  done
}
