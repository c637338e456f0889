#!/usr/bin/env bash
# The test command: installs what is missing, then format, lint and every test (real nats-server, real RocksDB).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
