#!/bin/sh
# Fuzzes kiln's parsers of untrusted bytes with AFL++ through cargo-afl, on the stable
# toolchain: scripts/fuzz.sh [TARGET...]   (default: every target of fuzz/src/targets.rs)
# KILN_FUZZ_EXECS (default 2000000) executions per target; findings in fuzz/findings/.
# A crash found is copied to fuzz/crashes/<target>/, which the suite replays
# (tests/tests/fuzz_corpus.rs) once the parser is fixed.
set -eu
cd "$(dirname "$0")/../fuzz"
if ! command -v cargo-afl >/dev/null 2>&1; then
    cargo install --locked cargo-afl
fi
# AFL++'s runtime for this rustc (once; "already built" is not an error).
cargo afl config --build >/dev/null 2>&1 || true
cargo afl build --release --bins
[ -d corpus/payload ] || cargo run --release --bin seeds
execs=${KILN_FUZZ_EXECS:-2000000}
targets=${*:-"payload gpt env_block channel_index image_format elf"}
for t in $targets; do
    out="findings/$t"
    mkdir -p findings
    # Resume where an earlier run stopped.
    input=corpus/$t
    [ -d "$out/default/queue" ] && input=-
    # No core-dump handler in containers; no CPU frequency tuning; plain log output.
    AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 \
        AFL_NO_AFFINITY=1 \
        cargo afl fuzz -i "$input" -o "$out" -E "$execs" -t 2000 -- "target/release/$t" \
        > "findings/$t.log" 2>&1 || { tail -20 "findings/$t.log"; exit 1; }
    stats="$out/default/fuzzer_stats"
    done_=$(awk -F' *: *' '$1=="execs_done"{print $2}' "$stats")
    crashes=$(awk -F' *: *' '$1=="saved_crashes"{print $2}' "$stats")
    hangs=$(awk -F' *: *' '$1=="saved_hangs"{print $2}' "$stats")
    edges=$(awk -F' *: *' '$1=="edges_found"{print $2}' "$stats")
    echo "fuzz $t: $done_ executions, $edges edges, $crashes crashes, $hangs hangs"
    if [ "$crashes" != 0 ]; then
        mkdir -p "crashes/$t"
        cp "$out"/default/crashes/id:* "crashes/$t/" 2>/dev/null || true
    fi
done
