#!/bin/sh
# Rewrites tests/data/golden/minimal.sha256: the SHA-256 of every file a build of
# recipes/minimal.toml for every platform gives (with the golden test's fixed key and stand-in
# agent), and the packages and host tools it was built with. Run it when a change is meant to
# alter the bytes kiln writes, or when the machine's packages moved on; say why in the commit.
set -eu
cd "$(dirname "$0")/.."
KILN_GOLDEN_UPDATE=1 cargo test --locked -p kiln-recipe --test identity
KILN_GOLDEN_UPDATE=1 cargo test --locked -p kiln-tests --test golden -- --nocapture
