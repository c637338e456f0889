#!/usr/bin/env bash
# The demo command: installs what is missing, builds, and runs `docket demo` (extra arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# The same build as the tests (`cargo test` builds the binary too, with the same features),
# so running the demo and then the tests compiles RocksDB and DataFusion once, not twice.
cargo test --workspace --no-run --quiet
exec "$CARGO_TARGET_DIR/debug/docket" demo "$@"
