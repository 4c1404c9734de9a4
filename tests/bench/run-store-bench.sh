#!/usr/bin/env bash
# Store benchmark: kapp's replicated store against etcd 3.4, side by side, on loopback.
#
#   tests/bench/run-store-bench.sh            # full run: 1 and 3 members x 1 and 256 clients, 10 s phases
#   tests/bench/run-store-bench.sh --quick    # smoke test: 1 member, 1 s phases
#   tests/bench/run-store-bench.sh --seconds 30 --members 3 --clients 1,64,256
#
# Every argument goes to the benchmark binary (`kapp-bench-store --help`). Installs what it
# needs from Debian, builds kapp and the benchmark in the RELEASE profile (the first release
# build compiles RocksDB's C++: ~15 min on 2 cores), runs, and writes the table to
# tests/bench/results/store.md.
#
# Environment:
#   CARGO_TARGET_DIR   target directory (default: /var/cache/kapp/target, shared with the team)
#   BENCH_PROFILE      release (default) or dev: dev is only for checking the script works;
#                      its numbers say nothing about performance (the report says so too).
#   BENCH_OUT          results file (default: tests/bench/results/store.md; with dev profile
#                      the default is tests/bench/results/store-dev.md so it never overwrites
#                      release results)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/kapp/target}"
profile="${BENCH_PROFILE:-release}"

# --- packages -------------------------------------------------------------------------------
# etcd 3.4 to compare against; libclang-dev for rocksdb's bindgen; libseccomp-dev because the
# workspace's build needs it too; procps for kill(1); util-linux for findmnt-like tools.
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
dpkg -s libseccomp-dev >/dev/null 2>&1 || need+=(libseccomp-dev)
command -v kill >/dev/null 2>&1 || need+=(procps)
if ((${#need[@]})); then
    echo "installing: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Debian's etcd-server package may start a system etcd (on 2379); the benchmark uses its own
# free ports and data directories, so that one is left alone.

# --- build ----------------------------------------------------------------------------------
cd "$repo"
case "$profile" in
    release)
        cargo build --release -p kapp -p kapp-bench
        bindir="$CARGO_TARGET_DIR/release"
        default_out="$here/results/store.md"
        ;;
    dev)
        # The team's usual dev build (whole workspace, so features unify as always).
        cargo build --workspace --tests
        bindir="$CARGO_TARGET_DIR/debug"
        default_out="$here/results/store-dev.md"
        ;;
    *)
        echo "BENCH_PROFILE must be release or dev" >&2
        exit 2
        ;;
esac
out="${BENCH_OUT:-$default_out}"
mkdir -p "$(dirname "$out")"

# --- run ------------------------------------------------------------------------------------
export KAPP_BENCH_COMMAND="tests/bench/run-store-bench.sh${*:+ $*}${BENCH_PROFILE:+ (BENCH_PROFILE=$BENCH_PROFILE)}"
# Bound the whole run even if something hangs: generous for the default 8 cells.
timeout --signal=TERM --kill-after=30 3600 \
    "$bindir/kapp-bench-store" --kapp "$bindir/kapp" --work-dir /var/tmp --out "$out" "$@"
