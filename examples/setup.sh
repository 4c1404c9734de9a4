# Sourced by the example scripts: install what building needs, build kapp (the same
# package selection as the tests, so the cache is shared), and make a fresh state
# directory. Sets $kapp and $state; takes the default state directory as $1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tests/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/kapp/target}"
cargo build --workspace --tests --bins
kapp="$CARGO_TARGET_DIR/debug/kapp"
state="${KAPP_STATE:-$1}"
rm -rf "$state" && mkdir -p "$state"
