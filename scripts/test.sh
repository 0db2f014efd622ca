#!/bin/sh
# The whole test suite, from a fresh Debian bookworm machine (as root): tools, formatting,
# lints, unit tests and the integration tests that build images and boot them in QEMU (TCG).
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace -- --test-threads=2
