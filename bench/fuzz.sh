#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo-fuzz, nightly) for SECONDS each, one after the
# other, from the committed seeds (fuzz/corpus/<target>/) plus what earlier runs found
# (fuzz/work/<target>/, not committed). A crash stops the script with the target's output and
# the input under fuzz/artifacts/<target>/: turn it into a unit test beside the parser.
# Prints one line per target: seconds run, executions, corpus size.
#
# usage: bench/fuzz.sh [SECONDS] [TARGET...]      env: FUZZ_RSS_MB (default 2048)
# needs: rustup's nightly toolchain and `cargo install cargo-fuzz --locked`
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
SECONDS_EACH="${1:-60}"
shift || true
command -v cargo-fuzz >/dev/null || { echo "bench/fuzz.sh needs cargo-fuzz: cargo install cargo-fuzz --locked" >&2; exit 1; }
cd fuzz
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else mapfile -t TARGETS < <(cargo +nightly fuzz list); fi
cargo +nightly fuzz build -O
printf '%-12s %8s %12s %8s\n' target seconds execs corpus
for t in "${TARGETS[@]}"; do
    mkdir -p "work/$t" "corpus/$t"
    log="work/$t.log"
    start=$(date +%s)
    if ! cargo +nightly fuzz run -O "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz target $t failed: see fuzz/$log and fuzz/artifacts/$t/" >&2
        exit 1
    fi
    # libFuzzer's own count ("Done N runs in S second(s)"), else the wall clock.
    ran=$(awk '/^Done [0-9]+ runs in/ { print $5 }' "$log")
    ran="${ran:-$(( $(date +%s) - start ))}"
    execs=$(awk '/stat::number_of_executed_units/ { s += $2 } END { print s + 0 }' "$log")
    printf '%-12s %8s %12s %8s\n' "$t" "$ran" "$execs" "$(ls "work/$t" | wc -l)"
done
