#!/usr/bin/env bash
# `wharf copy` vs `skopeo copy`, registry to registry on loopback, side by side in one run:
#   - a generated 4-platform OCI index (4 platforms x BENCH_LAYERS layers x BENCH_LAYER_MIB MiB
#     of random, incompressible data; ~300 MiB by default) is loaded into a source CNCF
#     distribution 2.8 (Debian's docker-registry) with `skopeo copy --all` from an OCI layout;
#   - full copy, each tool into its own fresh, empty distribution 2.8 (the strict destination):
#       wharf copy --all-platforms docker://SRC/bench/app:v1 docker://DST/bench/app:v1
#       skopeo copy --all --src-tls-verify=false --dest-tls-verify=false (same refs)
#     and the same two into a fresh, empty Wharf (`wharf serve`, default policy);
#   - Wharf to Wharf, as issue 9 states its 3x target: the same image in a source `wharf serve`,
#     each tool into a fresh, empty Wharf;
#   - a partial copy, `wharf copy --platform linux/amd64 --platform linux/arm64 --json` into a
#     fresh Wharf with `--index-policy sparse` (index digest kept). skopeo has no equivalent
#     that keeps the digest (`--multi-arch index-only` needs a registry that takes a sparse
#     index, and copies no platform), so only Wharf's time and bytes are shown.
# Every copy is checked: the destination serves the source's index digest. Each measurement is
# repeated BENCH_RUNS times with fresh destinations (the order of the tools alternates); the
# table shows the median time, MB/s over the image's bytes, and the copying tool's peak RSS.
#
# usage: bench/copy.sh [path-to-wharf-binary]     (default target/release/wharf, built with
#                                                  `cargo build --release -p wharf` if missing)
# env:   BENCH_LAYER_MIB (default 25), BENCH_LAYERS (default 3), BENCH_RUNS (default 3),
#        BENCH_JOBS (wharf --jobs; default: wharf's own), TMPDIR
# The image generator is crates/wharf-testkit/examples/make-images.rs (built with
# `cargo build --release -p wharf-testkit --example make-images` if missing).
# MB = 1,000,000 bytes; MiB = 1,048,576 bytes. Everything listens on 127.0.0.1.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
bench_init "$@"   # cd to the repository root; sets WHARF_BIN

LAYER_MIB="${BENCH_LAYER_MIB:-25}"
LAYERS="${BENCH_LAYERS:-3}"
RUNS="${BENCH_RUNS:-3}"
REPO="bench/app"
TAG="v1"

need_tools docker-registry skopeo curl awk ss sha256sum
make_tmp wharf-bench-copy

# Space: the layout, the two sources, and at most two destinations at a time, plus uploads.
check_space $((4 * LAYERS * LAYER_MIB))

# --- binaries ---------------------------------------------------------------------------------
build_wharf_if_missing
[ -x "$WHARF_BIN" ] || { log "wharf binary $WHARF_BIN not available"; exit 1; }
"$WHARF_BIN" copy --help >/dev/null 2>&1 || { log "$WHARF_BIN has no copy command"; exit 1; }
build_make_images_if_missing

LOAD_AT_START="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- the image in the source ------------------------------------------------------------------
log "generating a 4-platform image: $LAYERS x ${LAYER_MIB} MiB random layers per platform..."
"$MAKE_IMAGES" "$TMP/layout" --name "$REPO" --tag "$TAG" --layers "$LAYERS" \
    --layer-size "${LAYER_MIB}MiB" > "$TMP/images.tsv"
SRC_DIGEST="$(awk -v r="$REPO:$TAG" '$1 == r { print $2 }' "$TMP/images.tsv")"
IMAGE_BYTES="$(awk -v r="$REPO:$TAG" '$1 == r { print $3 }' "$TMP/images.tsv")"
# Starts registry NAME of KIND with the image in it (loaded by skopeo from the layout); sets ADDR.
start_source() { # name kind
    start_registry "$1" "$2"
    log "loading it into the source $2 on $ADDR (skopeo copy --all)..."
    skopeo copy --all --quiet --dest-tls-verify=false "oci:$TMP/layout:$REPO:$TAG" \
        "docker://$ADDR/$REPO:$TAG" >&2
    [ "$(index_digest "$ADDR" "$REPO" "$TAG")" = "$SRC_DIGEST" ] \
        || { log "the source $2 does not serve $SRC_DIGEST"; exit 1; }
}
declare -A SOURCE_ADDR=()
start_source source distribution
SOURCE_ADDR[source]="$ADDR"
start_source wsource wharf
SOURCE_ADDR[wsource]="$ADDR"
rm -rf "$TMP/layout"

declare -A T=() R=() CPU=() SRC_CPU=() DST_CPU=()   # "case run" -> seconds / peak RSS MiB / CPU s
JOBS_FLAG=()
[ -z "${BENCH_JOBS:-}" ] || JOBS_FLAG=(--jobs "$BENCH_JOBS")

run_copy() { # case run source-name dest-kind tool
    local case="$1" run="$2" source="$3" kind="$4" tool="$5" got scpu0
    local src="${SOURCE_ADDR[$source]}"
    start_registry dest "$kind"
    local dst="$ADDR"
    scpu0="$(server_cpu "$source")"
    case "$tool" in
        wharf)
            timed "$TMP/$case.$run.log" "$WHARF_BIN" copy --all-platforms "${JOBS_FLAG[@]}" \
                --src-tls-verify=false --dest-tls-verify=false \
                "docker://$src/$REPO:$TAG" "docker://$dst/$REPO:$TAG" ;;
        skopeo)
            timed "$TMP/$case.$run.log" skopeo copy --all --src-tls-verify=false --dest-tls-verify=false \
                "docker://$src/$REPO:$TAG" "docker://$dst/$REPO:$TAG" ;;
    esac
    got="$(index_digest "$dst" "$REPO" "$TAG")"
    [ "$got" = "$SRC_DIGEST" ] || { log "[$case] destination serves ${got:-nothing}, not $SRC_DIGEST"; exit 1; }
    T["$case $run"]="$SECS"; R["$case $run"]="$RSS_MIB"; CPU["$case $run"]="$CPU_S"
    SRC_CPU["$case $run"]="$(awk -v a="$scpu0" -v b="$(server_cpu "$source")" 'BEGIN { printf "%.2f", b - a }')"
    DST_CPU["$case $run"]="$(server_cpu dest)"
    log "[$case] run $run: $SECS s, peak RSS $RSS_MIB MiB, CPU s tool ${CPU["$case $run"]}" \
        "source ${SRC_CPU["$case $run"]} destination ${DST_CPU["$case $run"]}"
    drop_registry dest
}

for run in $(seq 1 "$RUNS"); do
    if [ $((run % 2)) = 1 ]; then order=(wharf skopeo); else order=(skopeo wharf); fi
    for path in dist-dist dist-wharf wharf-wharf; do
        for tool in "${order[@]}"; do
            case "$path" in
                dist-dist) run_copy "$tool-dist" "$run" source distribution "$tool" ;;
                dist-wharf) run_copy "$tool-wharf" "$run" source wharf "$tool" ;;
                wharf-wharf) run_copy "$tool-w2w" "$run" wsource wharf "$tool" ;;
            esac
        done
    done
done

# --- partial copy: two platforms into a sparse Wharf ------------------------------------------
declare -A PARTIAL_COPIED=() PARTIAL_FILTERED=()
for run in $(seq 1 "$RUNS"); do
    start_registry dest wharf --index-policy sparse
    dst="$ADDR"
    timed "$TMP/partial.$run.log" "$WHARF_BIN" copy --platform linux/amd64 --platform linux/arm64 \
        "${JOBS_FLAG[@]}" --json --src-tls-verify=false --dest-tls-verify=false \
        "docker://${SOURCE_ADDR[source]}/$REPO:$TAG" "docker://$dst/$REPO:$TAG"
    got="$(index_digest "$dst" "$REPO" "$TAG")"
    [ "$got" = "$SRC_DIGEST" ] || { log "[partial] destination serves ${got:-nothing}, not $SRC_DIGEST"; exit 1; }
    T["partial $run"]="$SECS"; R["partial $run"]="$RSS_MIB"
    PARTIAL_COPIED[$run]="$(json_field "$TMP/partial.$run.log" bytes_copied)"
    PARTIAL_FILTERED[$run]="$(json_field "$TMP/partial.$run.log" bytes_filtered)"
    log "[partial] run $run: $SECS s, copied ${PARTIAL_COPIED[$run]} B, filtered ${PARTIAL_FILTERED[$run]} B"
    if [ "$run" = 1 ]; then
        # The same command again: nothing should move.
        timed "$TMP/partial-again.log" "$WHARF_BIN" copy --platform linux/amd64 --platform linux/arm64 \
            --json --src-tls-verify=false --dest-tls-verify=false \
            "docker://${SOURCE_ADDR[source]}/$REPO:$TAG" "docker://$dst/$REPO:$TAG"
        AGAIN_SECS="$SECS"
        AGAIN_COPIED="$(json_field "$TMP/partial-again.log" bytes_copied)"
        log "[partial] again: $AGAIN_SECS s, copied $AGAIN_COPIED B"
    fi
    drop_registry dest
done

# --- report -----------------------------------------------------------------------------------
printf '\nCopy benchmark: one OCI index, 4 platforms x %s layers x %s MiB random (%s bytes, %s MB),\n' \
    "$LAYERS" "$LAYER_MIB" "$IMAGE_BYTES" "$(awk -v b="$IMAGE_BYTES" 'BEGIN { printf "%.0f", b / 1e6 }')"
printf 'sources distribution 2.8 and wharf serve, loopback, %s cores, %s, %s, median of %s runs\n' \
    "$(nproc)" "$("$WHARF_BIN" --version 2>/dev/null || echo wharf)" "$(skopeo --version)" "$RUNS"
printf 'load average at start: %s; index digest %s (checked at every destination)\n\n' \
    "$LOAD_AT_START" "$SRC_DIGEST"
printf '%-46s %9s %7s %10s %6s %8s %8s   %s\n' "copy" "median s" "MB/s" "RSS (MiB)" "cpu" "src cpu" \
    "dst cpu" "all runs (s)"
line() { # label case bytes
    local m; m="$(median_runs T "$2")"
    printf '%-46s %9s %7s %10s %6s %8s %8s   %s\n' "$1" "$m" "$(mbps "$3" "$m")" "$(median_runs R "$2")" \
        "$(median_runs CPU "$2")" "$(median_runs SRC_CPU "$2")" "$(median_runs DST_CPU "$2")" "$(all_runs "$2")"
}
line "wharf copy --all-platforms  -> distribution" wharf-dist "$IMAGE_BYTES"
line "skopeo copy --all           -> distribution" skopeo-dist "$IMAGE_BYTES"
line "wharf copy --all-platforms  -> wharf" wharf-wharf "$IMAGE_BYTES"
line "skopeo copy --all           -> wharf" skopeo-wharf "$IMAGE_BYTES"
line "wharf copy --all-platforms  wharf -> wharf" wharf-w2w "$IMAGE_BYTES"
line "skopeo copy --all           wharf -> wharf" skopeo-w2w "$IMAGE_BYTES"
line "wharf copy 2 of 4 platforms -> wharf sparse" partial "${PARTIAL_COPIED[1]}"
printf '\n'
speedup() { awk -v w="$(median_runs T "wharf-$1")" -v s="$(median_runs T "skopeo-$1")" 'BEGIN { printf "%.2f", s / w }'; }
printf 'speed-up, wharf vs skopeo, distribution -> distribution: %sx; distribution -> wharf: %sx; wharf -> wharf: %sx\n' \
    "$(speedup dist)" "$(speedup wharf)" "$(speedup w2w)"
printf 'partial copy (linux/amd64 + linux/arm64): bytes_copied %s, bytes_filtered %s (MB/s over bytes_copied);\n' \
    "${PARTIAL_COPIED[1]}" "${PARTIAL_FILTERED[1]}"
printf '  the same command again: %s s, bytes_copied %s. skopeo: no platform subset that keeps the digest.\n' \
    "$AGAIN_SECS" "$AGAIN_COPIED"
