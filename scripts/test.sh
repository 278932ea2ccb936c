#!/usr/bin/env bash
# The test command: set-up (idempotent), then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/realm-db/target}"
bash scripts/setup.sh
cargo test --workspace --lib --bins --tests --examples "$@"
cargo test --workspace --doc "$@"
