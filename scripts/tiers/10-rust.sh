#!/usr/bin/env bash
# Every Rust test of the workspace (unit, integration, doc), with nextest.
set -euo pipefail
cd "$STARLING_ROOT"
cargo nextest run --workspace --all-targets --no-fail-fast
cargo test --workspace --doc
