#!/usr/bin/env bash
# `wharf sync` vs `skopeo sync`, 50 repositories sharing layers, registry to registry on
# loopback, side by side in one run:
#   - BENCH_REPOS generated 2-platform OCI indexes (linux/amd64, linux/arm64) tagged v1: every
#     platform of every image has the same BENCH_BASE_MIB MiB base layer, then one (odd images)
#     or two (even images) unique layers of BENCH_LAYER_KIB KiB, all random (incompressible);
#     loaded into a source CNCF distribution 2.8 (Debian's docker-registry) as app-01..NN
#     with `skopeo copy --all` from an OCI layout;
#   - each tool syncs all of them into its own fresh, empty distribution 2.8, under mirror/:
#       wharf sync --config sync.toml --json     (defaults.dest = "docker://DST/mirror",
#                                                 one [[images]] per repository, tags = ["v1"])
#       skopeo sync --all --src yaml --dest docker --dest-tls-verify=false sync.yaml DST/mirror
#                                                (the same repositories and tag)
#     then each tool again over its own result (incremental: nothing changed upstream).
# Every destination is checked: each mirror/app-NN:v1 serves the source's index digest.
# Bytes: wharf's --json bytes_copied (skopeo reports none); for both tools, what the source
# registry served and the destination received (the servers' /proc/PID/io wchar and rchar deltas:
# shows whether a shared layer moved once or once per repository), and what the destination
# stores (`du -sb` of its data directory). Repeated BENCH_RUNS times with fresh destinations (the
# order of the tools alternates); medians shown, with each tool's peak RSS.
#
# usage: bench/sync.sh [path-to-wharf-binary]     (default target/release/wharf, built with
#                                                  `cargo build --release -p wharf` if missing;
#                                                  without a `sync` command only skopeo runs)
# env:   BENCH_REPOS (default 50), BENCH_BASE_MIB (default 20), BENCH_LAYER_KIB (default 1024),
#        BENCH_RUNS (default 3), BENCH_SYNC_JOBS (wharf's defaults.jobs; default: wharf's own),
#        BENCH_COUNT_REQUESTS=1 (count the requests each registry answers, through distribution's
#        Prometheus counters, which cost it CPU: a separate run from the timed one),
#        TMPDIR
# The image generator is crates/wharf-testkit/examples/make-images.rs (built with
# `cargo build --release -p wharf-testkit --example make-images` if missing).
# MB = 1,000,000 bytes; MiB = 1,048,576 bytes. Everything listens on 127.0.0.1.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
bench_init "$@"   # cd to the repository root; sets WHARF_BIN

REPOS="${BENCH_REPOS:-50}"
BASE_MIB="${BENCH_BASE_MIB:-20}"
LAYER_KIB="${BENCH_LAYER_KIB:-1024}"
RUNS="${BENCH_RUNS:-3}"
NAME="app"   # one path component: skopeo sync (without --scoped) keeps only the last one
TAG="v1"
PREFIX="mirror"

need_tools docker-registry skopeo curl awk ss du
make_tmp wharf-bench-sync

mb() { awk -v b="$1" 'BEGIN { if (b == "" || b == "n/a") print "n/a"; else printf "%.1f", b / 1e6 }'; }

# Space: the layout, the source and two destinations (each about the distinct bytes).
check_space $(( BASE_MIB + REPOS * 2 * 2 * LAYER_KIB / 1024 + 16 ))

# --- binaries ---------------------------------------------------------------------------------
build_wharf_if_missing || true
RUN_WHARF=1
if [ ! -x "$WHARF_BIN" ]; then
    log "wharf binary $WHARF_BIN not available: measuring skopeo only"; RUN_WHARF=""
elif ! "$WHARF_BIN" sync --help >/dev/null 2>&1; then
    log "$WHARF_BIN has no sync command yet: measuring skopeo only"; RUN_WHARF=""
fi
build_make_images_if_missing

# --- registries -------------------------------------------------------------------------------
# Bytes a registry stores: blobs and manifests (repositories' link files are a few bytes each;
# upload directories left behind would count too).
stored_bytes() { du -sb "$TMP/$1/data" | cut -f1; }

# Every image at ADDR under PREFIX serves the source's index digest.
check_dest() { # label addr prefix
    local repo want got bad=0
    while IFS=$'\t' read -r ref want _; do
        [ "$ref" = total ] && continue
        repo="${ref%:*}"
        got="$(index_digest "$2" "$3${3:+/}$repo" "$TAG")"
        if [ "$got" != "$want" ]; then
            log "[$1] $3${3:+/}$repo:$TAG serves ${got:-nothing}, not $want"; bad=1
        fi
    done < "$TMP/images.tsv"
    [ "$bad" = 0 ] || exit 1
}

# Socket (and file) bytes a server process has read or written so far, from /proc/PID/io:
# the source's wchar counts what it served, the destination's rchar what it received.
io_bytes() { # name rchar|wchar
    awk -v k="$2:" '$1 == k { print $2 }' "/proc/${PIDS[$1]}/io"
}

LOAD_AT_START="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- the images in the source -----------------------------------------------------------------
log "generating $REPOS 2-platform images (shared ${BASE_MIB} MiB base, 1-2 x ${LAYER_KIB} KiB own layers)..."
"$MAKE_IMAGES" "$TMP/layout" --repos "$REPOS" --name "$NAME" --tag "$TAG" \
    --platforms linux/amd64,linux/arm64 --layers 1 --layers-alt 2 --layer-size "${LAYER_KIB}KiB" \
    --base-size "${BASE_MIB}MiB" > "$TMP/images.tsv"
DISTINCT_BYTES="$(awk '$1 == "total" { print $3 }' "$TMP/images.tsv")"
NAIVE_BYTES="$(awk '$1 != "total" { s += $3 } END { print s }' "$TMP/images.tsv")"
start_registry source distribution
SRC="$ADDR"
log "loading them into the source distribution on $SRC (skopeo copy --all, one per repository)..."
t0="$(now)"
while IFS=$'\t' read -r ref _ _; do
    [ "$ref" = total ] && continue
    skopeo copy --all --quiet --dest-tls-verify=false "oci:$TMP/layout:$ref" "docker://$SRC/$ref" >&2
done < "$TMP/images.tsv"
log "loaded in $(since "$t0") s"
check_dest source "$SRC" ""
rm -rf "$TMP/layout"

# --- the two configurations -------------------------------------------------------------------
write_configs() { # dest-addr
    {
        printf '[defaults]\ndest = "docker://%s/%s"\nsrc_tls_verify = false\ndest_tls_verify = false\n' \
            "$1" "$PREFIX"
        [ -z "${BENCH_SYNC_JOBS:-}" ] || printf 'jobs = %s\n' "$BENCH_SYNC_JOBS"
        while IFS=$'\t' read -r ref _ _; do
            [ "$ref" = total ] && continue
            printf '\n[[images]]\nsource = "docker://%s/%s"\ntags = ["%s"]\n' "$SRC" "${ref%:*}" "$TAG"
        done < "$TMP/images.tsv"
    } > "$TMP/sync.toml"
    {
        printf '%s:\n  tls-verify: false\n  images:\n' "$SRC"
        while IFS=$'\t' read -r ref _ _; do
            [ "$ref" = total ] && continue
            printf '    %s:\n      - "%s"\n' "${ref%:*}" "$TAG"
        done < "$TMP/images.tsv"
    } > "$TMP/sync.yaml"
}

declare -A T=() R=() OUT=() IN=() DU=() SENT=() SRC_REQ=() DST_REQ=() \
    CPU=() SRC_CPU=() DST_CPU=()   # "case run" -> seconds, peak RSS MiB, bytes, requests, CPU s

delta() { [ "$1" = n/a ] && echo n/a || echo $(( $2 - $1 )); } # before after

# One sync into the running destination, as case CASE of run RUN: time, peak RSS, bytes the
# source served and the destination received, what the destination stores; sent by wharf's JSON.
measure_sync() { # case run cmd...
    local c="$1" run="$2" src0 dst0 sreq0 dreq0 scpu0 dcpu0; shift 2
    src0="$(io_bytes source wchar)"; dst0="$(io_bytes dest rchar)"
    sreq0="$(requests_served source)"; dreq0="$(requests_served dest)"
    scpu0="$(server_cpu source)"; dcpu0="$(server_cpu dest)"
    timed "$TMP/$c.$run.out" "$@"
    CPU["$c $run"]="$CPU_S"
    SRC_CPU["$c $run"]="$(awk -v a="$scpu0" -v b="$(server_cpu source)" 'BEGIN { printf "%.2f", b - a }')"
    DST_CPU["$c $run"]="$(awk -v a="$dcpu0" -v b="$(server_cpu dest)" 'BEGIN { printf "%.2f", b - a }')"
    SRC_REQ["$c $run"]="$(delta "$sreq0" "$(requests_served source)")"
    DST_REQ["$c $run"]="$(delta "$dreq0" "$(requests_served dest)")"
    T["$c $run"]="$SECS"; R["$c $run"]="$RSS_MIB"
    OUT["$c $run"]=$(( $(io_bytes source wchar) - src0 ))
    IN["$c $run"]=$(( $(io_bytes dest rchar) - dst0 ))
    DU["$c $run"]="$(stored_bytes dest)"
    case "$c" in wharf*) SENT["$c $run"]="$(json_field "$TMP/$c.$run.out" bytes_copied)" ;; esac
    log "[$c] run $run: $SECS s, source served ${OUT["$c $run"]} B, destination received ${IN["$c $run"]} B${SENT["$c $run"]:+, bytes_copied ${SENT["$c $run"]}}, requests: source ${SRC_REQ["$c $run"]}, destination ${DST_REQ["$c $run"]}; CPU s: tool ${CPU["$c $run"]}, source ${SRC_CPU["$c $run"]}, destination ${DST_CPU["$c $run"]}"
}

run_sync() { # tool run
    local tool="$1" run="$2" dst
    start_registry dest distribution
    dst="$ADDR"
    write_configs "$dst"
    case "$tool" in
        wharf)
            measure_sync wharf "$run" "$WHARF_BIN" sync --config "$TMP/sync.toml" --json
            check_dest wharf "$dst" "$PREFIX"
            measure_sync wharf-again "$run" "$WHARF_BIN" sync --config "$TMP/sync.toml" --json
            ;;
        skopeo)
            measure_sync skopeo "$run" skopeo sync --all --src yaml --dest docker \
                --dest-tls-verify=false "$TMP/sync.yaml" "$dst/$PREFIX"
            check_dest skopeo "$dst" "$PREFIX"
            measure_sync skopeo-again "$run" skopeo sync --all --src yaml --dest docker \
                --dest-tls-verify=false "$TMP/sync.yaml" "$dst/$PREFIX"
            ;;
    esac
    drop_registry dest
}

TOOLS=(skopeo)
[ -z "$RUN_WHARF" ] || TOOLS=(wharf skopeo)
for run in $(seq 1 "$RUNS"); do
    if [ $((run % 2)) = 1 ]; then order=("${TOOLS[@]}"); else order=(); for ((i=${#TOOLS[@]}-1; i>=0; i--)); do order+=("${TOOLS[$i]}"); done; fi
    for tool in "${order[@]}"; do run_sync "$tool" "$run"; done
done

# --- report -----------------------------------------------------------------------------------
printf '\nSync benchmark: %s repositories x 1 tag, 2 platforms each, a shared %s MiB base layer and\n' "$REPOS" "$BASE_MIB"
printf '1-2 x %s KiB own layers per platform: %s MB distinct in the source (%s MB if each image were\n' \
    "$LAYER_KIB" "$(mb "$DISTINCT_BYTES")" "$(mb "$NAIVE_BYTES")"
printf 'counted alone); distribution 2.8 source and destinations, loopback, %s cores, %s, %s,\n' \
    "$(nproc)" "$( [ -n "$RUN_WHARF" ] && "$WHARF_BIN" --version || echo 'wharf: no sync')" "$(skopeo --version)"
printf 'median of %s runs; load average at start: %s; every index digest checked at the destination\n\n' \
    "$RUNS" "$LOAD_AT_START"
printf '%-36s %8s %8s %8s %8s %8s %7s %7s %6s %6s %6s %6s   %s\n' "sync" "median s" "sent" "src out" "dest in" \
    "stored" "src req" "dst req" "cpu" "src cpu" "dst cpu" "RSS" "all runs (s)"
line() { # label case
    printf '%-36s %8s %8s %8s %8s %8s %7s %7s %6s %6s %6s %6s   %s\n' "$1" "$(median_runs T "$2")" \
        "$(mb "$(median_runs SENT "$2")")" "$(mb "$(median_runs OUT "$2")")" \
        "$(mb "$(median_runs IN "$2")")" "$(mb "$(median_runs DU "$2")")" "$(median_runs SRC_REQ "$2")" \
        "$(median_runs DST_REQ "$2")" "$(median_runs CPU "$2")" "$(median_runs SRC_CPU "$2")" \
        "$(median_runs DST_CPU "$2")" "$(median_runs R "$2")" "$(all_runs "$2")"
}
if [ -n "$RUN_WHARF" ]; then
    line "wharf sync (first run)" wharf
    line "skopeo sync --all (first run)" skopeo
    line "wharf sync (again, nothing changed)" wharf-again
    line "skopeo sync --all (again)" skopeo-again
    printf '\nspeed-up, wharf vs skopeo: first run %sx, second run %sx\n' \
        "$(awk -v w="$(median_runs T wharf)" -v s="$(median_runs T skopeo)" 'BEGIN { printf "%.2f", s / w }')" \
        "$(awk -v w="$(median_runs T wharf-again)" -v s="$(median_runs T skopeo-again)" 'BEGIN { printf "%.2f", s / w }')"
else
    line "skopeo sync --all (first run)" skopeo
    line "skopeo sync --all (again)" skopeo-again
    printf '\nwharf: %s has no sync command; not measured\n' "$WHARF_BIN"
fi
printf 'MB (1e6 bytes): sent = wharf --json bytes_copied (skopeo reports none); src out / dest in = the\n'
printf 'source registry'"'"'s written / the destination'"'"'s read bytes (/proc/PID/io wchar / rchar: HTTP\n'
printf 'bodies and headers); stored = du -sb of the destination'"'"'s storage (directories included);\n'
printf 'src req / dst req = HTTP requests each registry answered (its Prometheus counters); cpu / src cpu /\n'
printf 'dst cpu = CPU seconds (user + system) of the syncing tool, the source and the destination registry\n'
