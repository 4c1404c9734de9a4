#!/usr/bin/env bash
# `kapp up` benchmark: time from `kapp up` to a converged cluster (every example pod Ready,
# gitops applied, every Job finished, every running pod started by this run), cold (empty state directory: keys, image, store
# made from scratch) and warm (the same state again, as after Ctrl-C), and each service's
# resident memory at idle. Runs inside a network namespace of its own; writes
# tests/bench/results/up.md. Root, Debian 12.
#
#   tests/bench/run-up-bench.sh
#
# Environment: CARGO_TARGET_DIR (default /var/cache/kapp/target); BENCH_PROFILE release
# (default) or dev; BENCH_OUT (default tests/bench/results/up.md, up-dev.md for dev).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
tests/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/kapp/target}"
profile="${BENCH_PROFILE:-release}"
if [ "$profile" = release ]; then
  cargo build --release -p kapp -p kappctl --bins
  bin="$CARGO_TARGET_DIR/release"
  out="${BENCH_OUT:-$here/results/up.md}"
else
  cargo build --workspace --tests --bins
  bin="$CARGO_TARGET_DIR/debug"
  out="${BENCH_OUT:-$here/results/up-dev.md}"
fi
ns=kapp-upbench
state=/var/tmp/kapp-upbench
log=$(mktemp)
cleanup() {
  [ -n "${pid:-}" ] && kill -INT "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  nsenter --net=/run/netns/$ns "$bin/kapp" down --purge --state-dir "$state" --netns-prefix kub- >/dev/null 2>&1 || true
  ip netns del $ns 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT
ip netns del $ns 2>/dev/null || true
ip netns add $ns
rm -rf "$state"

run() { # run <label>: start kapp up, wait for convergence and the memory line, stop it
  : >"$log"
  nsenter --net=/run/netns/$ns "$bin/kapp" up --state-dir "$state" --netns-prefix kub- --interval 2 >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 1200); do
    grep -q "^memory (RSS/PSS MB)" "$log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "kapp up exited" >&2; exit 1; }
    sleep 0.25
  done
  grep -q "^memory (RSS/PSS MB)" "$log" || { cat "$log"; echo "kapp up did not converge" >&2; exit 1; }
  secs=$(sed -n 's/.*kapp up converged in \([0-9.]*\)s.*/\1/p' "$log" | head -1)
  mem=$(sed -n 's/^memory (RSS\/PSS MB): //p' "$log" | head -1)
  echo "$1: converged in ${secs}s; $mem"
  printf '| %s | %s | %s |\n' "$1" "$secs" "$mem" >>"$log.rows"
  kill -INT "$pid"; wait "$pid" || true; pid=
}
: >"$log.rows"
run cold
run warm
{
  echo "# kapp up: time to converged and memory at idle"
  echo
  echo "Command: \`tests/bench/run-up-bench.sh\` (profile: $profile), $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r)."
  echo "Converged = kappctl's view healthy (the example's pods Running and Ready), gitops applied a commit, every Job finished (the smoke Job fetches from the web Service by its DNS name), every running pod started by this run"
  echo "(\`kapp up\`'s own criterion). Cold = empty state directory (keys, example image, store made"
  echo "from scratch); warm = the same state again after Ctrl-C. Memory read from /proc 3 s after"
  echo "convergence: RSS (resident) / PSS (proportional: the pages of the one \`kapp\` binary that all"
  echo "services share are counted once in total, split between them). \"head stack\" = store +"
  echo "apiserver + scheduler + controllers + gitops; the goal applies to what they really take, PSS."
  echo
  echo "| run | seconds to converged | memory, RSS/PSS MB |"
  echo "| --- | --- | --- |"
  cat "$log.rows"
  echo
  echo "For scale (not measured here: k3s cannot be installed on this machine): k3s needs ~50 s to"
  echo "Ready and ~1.6 GB for its server. Goals: ≤ 10 s and ≤ 150 MB for the head stack."
} >"$out"
rm -f "$log.rows"
cat "$out"
