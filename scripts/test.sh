#!/usr/bin/env bash
# The whole test suite: what the README's test command runs and CI runs.
# Release mode, because the Raft simulation runs thousands of seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --release "$@"
