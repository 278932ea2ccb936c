#!/usr/bin/env bash
# The test command: set-up (idempotent), then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/realm-db/target}"
bash scripts/setup.sh
# The store on its own first, resolved and built as a user without libtorch would build it;
# then the rest of the workspace, which so never builds against the store's `testing` hooks.
cargo test -p realm-storage --lib --bins --tests --examples "$@"
cargo test -p realm-storage --doc "$@"
cargo test --workspace --exclude realm-storage --lib --bins --tests --examples "$@"
cargo test --workspace --exclude realm-storage --doc "$@"
