#!/usr/bin/env bash
# kapp's main job on this machine: `kapp up` runs the whole stack as one node (store,
# apiserver, scheduler, controllers, gitops, kubelet with real containers, nftables proxy,
# cluster DNS), each a supervised process, following a git repository made from
# examples/app (its path is printed: edit, commit, and the cluster follows). Ctrl-C stops
# it; running it again resumes; `kapp down` (`$CARGO_TARGET_DIR/debug/kapp down`) removes its
# bridge and nftables table. Arguments go to `kapp up` (see `kapp up --help`).
# Run as root on Debian 12; installs what it needs (Rust >= 1.85 must be there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tests/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/kapp/target}"
# The same package selection as the tests, so the two share one build.
cargo build --workspace --tests --bins
exec "$CARGO_TARGET_DIR/debug/kapp" up "$@"
