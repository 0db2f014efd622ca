#!/bin/sh
# Builds kiln (target/release/kiln) and the static kiln-agent it puts into images
# (target/x86_64-unknown-linux-gnu/release/kiln-agent, where kiln looks for it).
set -eu
cd "$(dirname "$0")/.."
cargo build --release --locked -p kiln-cli
# crt-static only through --target, so build scripts and proc-macros stay dynamic.
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p kiln-agent --target x86_64-unknown-linux-gnu
