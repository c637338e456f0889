#!/usr/bin/env bash
# The demo command: installs what is missing, builds, and runs `docket demo` (extra arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --quiet --bin docket
exec "$CARGO_TARGET_DIR/debug/docket" demo "$@"
