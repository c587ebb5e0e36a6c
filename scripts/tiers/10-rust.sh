#!/usr/bin/env bash
# Every Rust test of the workspace (unit, integration, doc), with nextest.
source "$(dirname "$0")/../lib/tier.sh"
cargo nextest run --workspace --all-targets --no-fail-fast
cargo test --workspace --doc
