#!/usr/bin/env bash
# The test command: set-up (idempotent), then every test of the workspace.
#
# Tests run under the release profile, the one scripts/main.sh builds the binary with, so the
# two commands share every dependency artifact and RocksDB's C++ is compiled once, optimized
# (selections differ in features, but librocksdb-sys's build-script run is one unit for all
# of them).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/realm-db/target}"
bash scripts/setup.sh
# The store on its own first, resolved and built as a user without libtorch would build it;
# then the rest of the workspace, which so never builds against the store's `testing` hooks.
cargo test --release -p realm-storage --lib --bins --tests --examples "$@"
cargo test --release -p realm-storage --doc "$@"
cargo test --release --workspace --exclude realm-storage --lib --bins --tests --examples "$@"
cargo test --release --workspace --exclude realm-storage --doc "$@"
