#!/bin/sh
# The source-kernel test's schedule. It compiles Linux 6.1 from kernel-config/ and boots it,
# about 11 minutes on two cores, too long for every CI run. It runs when it is due:
#   - the files the kernel's build and boot depend on differ from those of its last
#     recorded pass (tests/data/kernel-test.record),
#   - Debian's linux-source-6.1 is another version than the recorded one, or
#   - the recorded pass is more than 7 days old.
# `kernel-test.sh due` prints why and exits 0 if it is due, 1 if not. `kernel-test.sh record`
# writes the record after a pass (scripts/test.sh does, when it ran the test). Commit the
# record: until then CI runs the test every time.
set -eu
cd "$(dirname "$0")/.."
record=tests/data/kernel-test.record

inputs() {
    find kernel-config recipes/source-kernel.toml board-profiles \
        crates/pipeline/src/stages/kernel_source.rs crates/pipeline/src/stages/kernel.rs \
        crates/pipeline/src/stages/initramfs.rs crates/pipeline/src/stages/esp.rs \
        crates/boot/src crates/recipe/src/kernel.rs tests/tests/kernel_source.rs \
        -type f -print | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-64
}

# The version apt would install (or has installed).
source_version() {
    v="$(dpkg-query -W -f '${Version}' linux-source-6.1 2>/dev/null || true)"
    if [ -z "$v" ]; then
        v="$(apt-cache policy linux-source-6.1 2>/dev/null | sed -n 's/^ *Candidate: //p')"
    fi
    echo "${v:-unknown}"
}

field() { sed -n "s/^$1 //p" "$record" 2>/dev/null; }

case "${1:-}" in
due)
    if [ ! -f "$record" ]; then
        echo "kernel test due: no recorded pass ($record)"
        exit 0
    fi
    if [ "$(inputs)" != "$(field inputs)" ]; then
        echo "kernel test due: its inputs changed since the pass recorded on $(field date)"
        exit 0
    fi
    if [ "$(source_version)" != "$(field linux-source)" ]; then
        echo "kernel test due: linux-source-6.1 is $(source_version), the recorded pass had $(field linux-source)"
        exit 0
    fi
    age=$(( ($(date -u +%s) - $(date -u -d "$(field date)" +%s)) / 86400 ))
    if [ "$age" -gt 7 ]; then
        echo "kernel test due: the recorded pass is $age days old"
        exit 0
    fi
    echo "kernel test not due: passed on $(field date) with these inputs and linux-source-6.1 $(field linux-source) ($(field seconds) s)"
    exit 1
    ;;
record)
    {
        echo "# The source-kernel test's last pass; scripts/kernel-test.sh reads it to know when it is due."
        echo "inputs $(inputs)"
        echo "linux-source $(source_version)"
        echo "date $(date -u +%Y-%m-%d)"
        echo "seconds ${2:-unknown}"
    } > "$record.tmp"
    mv "$record.tmp" "$record"
    ;;
*)
    echo "usage: scripts/kernel-test.sh due | record [seconds]" >&2
    exit 2
    ;;
esac
