#!/usr/bin/env bash
# Run every kapp test: installs what it needs, builds the workspace once, runs all tests.
# Usage (as root): tests/run.sh [extra nextest/cargo-test filters]
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-deps.sh
# One shared target dir outside the clone, so repeated runs (and CI) reuse RocksDB's C++.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/kapp/target}"
mkdir -p "$CARGO_TARGET_DIR"
# A one-shot build gains nothing from incremental data, and it grows by gigabytes a run.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Always the same package selection and profile: a different one re-unifies features and
# silently rebuilds RocksDB.
cargo build --workspace --tests --bins
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
