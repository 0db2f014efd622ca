#!/bin/sh
# The whole test suite, from a fresh Debian bookworm machine (as root): tools, formatting,
# lints, unit tests and the integration tests that build images and boot them in QEMU (TCG).
# KILN_KERNEL_TESTS=1 adds the slow test that builds a kernel from source and boots it
# (KILN_KERNEL_TESTS=auto, what .ci/run sets: when scripts/kernel-test.sh says it is due).
set -eu
cd "$(dirname "$0")/.."
# One-shot builds: incremental state would only take disk space (gigabytes of it).
export CARGO_INCREMENTAL=0
scripts/install-deps.sh
# KILN_KERNEL_TESTS=auto (what .ci/run sets): the kernel test runs if it is due, decided once
# apt's lists are fresh.
if [ "${KILN_KERNEL_TESTS:-0}" = auto ]; then
    if scripts/kernel-test.sh due; then
        KILN_KERNEL_TESTS=1 scripts/install-deps.sh >/dev/null
        KILN_KERNEL_TESTS=1
    else
        KILN_KERNEL_TESTS=0
    fi
fi
# Images, payloads and their copies need several GiB: show what there is, for when it runs out.
df -h . | sed 's/^/disk: /'
trap 'du -sh target/kiln-test target/debug target/release 2>/dev/null | sed "s/^/disk used: /"' EXIT
scripts/build.sh
# One id for this run: the tests' shared fixtures are built once per run, from a stage cache
# emptied at the run's start (the downloaded packages are kept).
KILN_TEST_RUN="$(cat /proc/sys/kernel/random/uuid)"
export KILN_TEST_RUN
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace -- --test-threads=2
# The slow crash test (kill -9 of a seven-platform build at 20 random points and at every
# failpoint, about 80 min on two cores), when asked for.
if [ "${KILN_CRASH_TESTS:-0}" = 1 ]; then
    cargo test --locked -p kiln-tests --test crash -- --ignored
fi
# The slow kernel test (a kernel built from linux-source-6.1, then booted), when asked for;
# .ci/run asks when scripts/kernel-test.sh says it is due. A pass is recorded.
if [ "${KILN_KERNEL_TESTS:-0}" = 1 ]; then
    start=$(date +%s)
    cargo test --locked -p kiln-tests --test kernel_source -- --ignored
    scripts/kernel-test.sh record $(( $(date +%s) - start ))
fi
