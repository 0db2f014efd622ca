#!/bin/sh
# From a fresh Debian bookworm machine (as root) to a booted image: install the tools, build
# kiln, build recipes/minimal.toml, boot it headless in QEMU and stop at its ready line.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
target/release/kiln build recipes/minimal.toml --output out
target/release/kiln inspect out/minimal_image.bin
target/release/kiln run out/minimal_image.bin --snapshot --until-ready
