#!/usr/bin/env bash
# `wharf copy` vs `skopeo copy`, registry to registry on loopback, side by side in one run:
#   - a generated 4-platform OCI index (4 platforms x BENCH_LAYERS layers x BENCH_LAYER_MIB MiB
#     of random, incompressible data; ~300 MiB by default) is loaded into a source CNCF
#     distribution 2.8 (Debian's docker-registry) with `skopeo copy --all` from an OCI layout;
#   - full copy, each tool into its own fresh, empty distribution 2.8 (the strict destination):
#       wharf copy --all-platforms docker://SRC/bench/app:v1 docker://DST/bench/app:v1
#       skopeo copy --all --src-tls-verify=false --dest-tls-verify=false (same refs)
#     and the same two into a fresh, empty Wharf (`wharf serve`, default policy);
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

if [ "$#" -gt 0 ]; then WHARF_ARG="$(readlink -m -- "$1")"; fi
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

LAYER_MIB="${BENCH_LAYER_MIB:-25}"
LAYERS="${BENCH_LAYERS:-3}"
RUNS="${BENCH_RUNS:-3}"
WHARF_BIN="${WHARF_ARG:-target/release/wharf}"
MAKE_IMAGES="target/release/examples/make-images"
INDEX_TYPE="application/vnd.oci.image.index.v1+json"
REPO="bench/app"
TAG="v1"

for c in docker-registry skopeo curl awk ss sha256sum; do
    command -v "$c" >/dev/null || { echo "bench needs $c (run .ci/run to install)" >&2; exit 1; }
done
TIME_BIN=""
[ -x /usr/bin/time ] && TIME_BIN=/usr/bin/time

TMP="$(mktemp -d "${TMPDIR:-/tmp}/wharf-bench-copy.XXXXXX")"
declare -A PIDS=()   # name -> pid of the servers this script started
stop_server() { # name
    local pid="${PIDS[$1]:-}"
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        unset "PIDS[$1]"
    fi
}
cleanup() {
    local n
    for n in "${!PIDS[@]}"; do stop_server "$n"; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
mbps() { awk -v b="$1" -v t="$2" 'BEGIN { if (t > 0) printf "%.0f", b / t / 1e6; else print "n/a" }'; }
median() { # numbers...
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 40000))
        if [ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; then echo "$p"; return; fi
    done
    log "no free port found"; exit 1
}

# Space: the layout, the source, and at most two destinations at a time, plus uploads.
image_mib=$((4 * LAYERS * LAYER_MIB))
need_kib=$(( (image_mib * 5 + 256) * 1024 ))
have_kib="$(df -Pk "$TMP" | awk 'NR == 2 { print $4 }')"
if [ "$have_kib" -lt "$need_kib" ]; then
    log "not enough space in $TMP: need $((need_kib / 1024)) MiB, have $((have_kib / 1024)) MiB"
    exit 1
fi

# --- binaries ---------------------------------------------------------------------------------
if [ ! -x "$WHARF_BIN" ]; then
    if [ -z "${WHARF_ARG:-}" ] && [ -f crates/wharf/Cargo.toml ]; then
        log "building wharf (cargo build --release -p wharf)..."
        cargo build --release -p wharf >&2
    fi
    [ -x "$WHARF_BIN" ] || { log "wharf binary $WHARF_BIN not available"; exit 1; }
fi
"$WHARF_BIN" copy --help >/dev/null 2>&1 || { log "$WHARF_BIN has no copy command"; exit 1; }
if [ ! -x "$MAKE_IMAGES" ]; then
    log "building the image generator (cargo build --release -p wharf-testkit --example make-images)..."
    cargo build --release -p wharf-testkit --example make-images >&2
fi

# --- registries -------------------------------------------------------------------------------
wait_ready() { # name addr
    for _ in $(seq 1 300); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$2/v2/" || true)" = 200 ]; then
            return 0
        fi
        kill -0 "${PIDS[$1]}" 2>/dev/null || { wait "${PIDS[$1]}" 2>/dev/null || true; return 2; }
        sleep 0.1
    done
    log "$1 did not answer GET /v2/ on $2 within 30 s"; return 1
}

# Starts a registry named NAME (distribution | wharf | wharf-sparse) on a free port with its
# storage in $TMP/NAME; sets ADDR.
start_registry() { # name kind
    local name="$1" kind="$2" dir="$TMP/$1" port attempt rc
    # A free port can be taken by someone else before the server binds it: retry.
    for attempt in 1 2 3 4 5; do
        rm -rf "$dir"; mkdir -p "$dir"
        port="$(free_port)"
        ADDR="127.0.0.1:$port"
        case "$kind" in
            distribution)
                cat > "$dir/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $ADDR
  secret: wharf-bench
EOF
                # distribution maps REGISTRY_* variables onto its config: keep them out.
                env $(env | awk -F= '/^REGISTRY_/ { printf "-u %s ", $1 }') \
                    docker-registry serve "$dir/config.yml" > "$dir/log" 2>&1 &
                ;;
            wharf) "$WHARF_BIN" serve --addr "$ADDR" --data-dir "$dir/data" > "$dir/log" 2>&1 & ;;
            wharf-sparse)
                "$WHARF_BIN" serve --addr "$ADDR" --data-dir "$dir/data" --index-policy sparse \
                    > "$dir/log" 2>&1 & ;;
            *) log "unknown registry kind $kind"; exit 1 ;;
        esac
        PIDS[$name]=$!
        rc=0; wait_ready "$name" "$ADDR" || rc=$?
        [ "$rc" = 0 ] && return 0
        unset "PIDS[$name]"
        if [ "$rc" != 2 ] || [ "$attempt" = 5 ]; then
            log "$name did not start on $ADDR (attempt $attempt); its log:"; tail -n 30 "$dir/log" >&2; exit 1
        fi
        log "$name exited at start on $ADDR; trying another port"
    done
}

drop_registry() { # name
    stop_server "$1"
    rm -rf "${TMP:?}/$1"
}

index_digest() { # addr  -> the digest the registry serves for $REPO:$TAG
    curl -sS -I --max-time 30 -H "Accept: $INDEX_TYPE" "http://$1/v2/$REPO/manifests/$TAG" \
        | awk 'tolower($1) == "docker-content-digest:" { print $2 }' | tr -d '\r'
}

# Runs a command under /usr/bin/time (peak RSS) with its output in a file; sets SECS and RSS_MIB.
timed() { # logfile cmd...
    local logf="$1" t0; shift
    t0="$(now)"
    if [ -n "$TIME_BIN" ]; then
        "$TIME_BIN" -f '%M' -o "$logf.rss" "$@" > "$logf" 2> "$logf.err" || {
            log "failed: $*"; tail -n 30 "$logf" "$logf.err" >&2; exit 1; }
        RSS_MIB="$(awk '{ v = $1 } END { printf "%.0f", v / 1024 }' "$logf.rss")"
    else
        "$@" > "$logf" 2> "$logf.err" || { log "failed: $*"; tail -n 30 "$logf" "$logf.err" >&2; exit 1; }
        RSS_MIB="n/a"
    fi
    SECS="$(since "$t0")"
}

LOAD_AT_START="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- the image in the source ------------------------------------------------------------------
log "generating a 4-platform image: $LAYERS x ${LAYER_MIB} MiB random layers per platform..."
"$MAKE_IMAGES" "$TMP/layout" --name "$REPO" --tag "$TAG" --layers "$LAYERS" \
    --layer-size "${LAYER_MIB}MiB" > "$TMP/images.tsv"
SRC_DIGEST="$(awk -v r="$REPO:$TAG" '$1 == r { print $2 }' "$TMP/images.tsv")"
IMAGE_BYTES="$(awk -v r="$REPO:$TAG" '$1 == r { print $3 }' "$TMP/images.tsv")"
start_registry source distribution
SRC="$ADDR"
log "loading it into the source distribution on $SRC (skopeo copy --all)..."
skopeo copy --all --quiet --dest-tls-verify=false "oci:$TMP/layout:$REPO:$TAG" \
    "docker://$SRC/$REPO:$TAG" >&2
[ "$(index_digest "$SRC")" = "$SRC_DIGEST" ] || { log "source does not serve $SRC_DIGEST"; exit 1; }
rm -rf "$TMP/layout"

declare -A T=() R=()   # "case run" -> seconds / peak RSS MiB
JOBS_FLAG=()
[ -z "${BENCH_JOBS:-}" ] || JOBS_FLAG=(--jobs "$BENCH_JOBS")

run_copy() { # case run dest-kind tool
    local case="$1" run="$2" kind="$3" tool="$4" got
    start_registry dest "$kind"
    local dst="$ADDR"
    case "$tool" in
        wharf)
            timed "$TMP/$case.$run.log" "$WHARF_BIN" copy --all-platforms "${JOBS_FLAG[@]}" \
                --src-tls-verify=false --dest-tls-verify=false \
                "docker://$SRC/$REPO:$TAG" "docker://$dst/$REPO:$TAG" ;;
        skopeo)
            timed "$TMP/$case.$run.log" skopeo copy --all --src-tls-verify=false --dest-tls-verify=false \
                "docker://$SRC/$REPO:$TAG" "docker://$dst/$REPO:$TAG" ;;
    esac
    got="$(index_digest "$dst")"
    [ "$got" = "$SRC_DIGEST" ] || { log "[$case] destination serves ${got:-nothing}, not $SRC_DIGEST"; exit 1; }
    T["$case $run"]="$SECS"; R["$case $run"]="$RSS_MIB"
    log "[$case] run $run: $SECS s, peak RSS $RSS_MIB MiB"
    drop_registry dest
}

CASES=(wharf-dist skopeo-dist wharf-wharf skopeo-wharf)
for run in $(seq 1 "$RUNS"); do
    if [ $((run % 2)) = 1 ]; then order=(wharf skopeo); else order=(skopeo wharf); fi
    for kind in distribution wharf; do
        for tool in "${order[@]}"; do
            case "$kind" in distribution) c="$tool-dist" ;; wharf) c="$tool-wharf" ;; esac
            run_copy "$c" "$run" "$kind" "$tool"
        done
    done
done

# --- partial copy: two platforms into a sparse Wharf ------------------------------------------
declare -A PARTIAL_COPIED=() PARTIAL_FILTERED=()
json_field() { # file field  -> the first top-level number of that name
    tr -d '\n' < "$1" | grep -o "\"$2\"[[:space:]]*:[[:space:]]*[0-9]*" | head -n 1 | grep -o '[0-9]*$'
}
for run in $(seq 1 "$RUNS"); do
    start_registry dest wharf-sparse
    dst="$ADDR"
    timed "$TMP/partial.$run.log" "$WHARF_BIN" copy --platform linux/amd64 --platform linux/arm64 \
        "${JOBS_FLAG[@]}" --json --src-tls-verify=false --dest-tls-verify=false \
        "docker://$SRC/$REPO:$TAG" "docker://$dst/$REPO:$TAG"
    got="$(index_digest "$dst")"
    [ "$got" = "$SRC_DIGEST" ] || { log "[partial] destination serves ${got:-nothing}, not $SRC_DIGEST"; exit 1; }
    T["partial $run"]="$SECS"; R["partial $run"]="$RSS_MIB"
    PARTIAL_COPIED[$run]="$(json_field "$TMP/partial.$run.log" bytes_copied)"
    PARTIAL_FILTERED[$run]="$(json_field "$TMP/partial.$run.log" bytes_filtered)"
    log "[partial] run $run: $SECS s, copied ${PARTIAL_COPIED[$run]} B, filtered ${PARTIAL_FILTERED[$run]} B"
    if [ "$run" = 1 ]; then
        # The same command again: nothing should move.
        timed "$TMP/partial-again.log" "$WHARF_BIN" copy --platform linux/amd64 --platform linux/arm64 \
            --json --src-tls-verify=false --dest-tls-verify=false \
            "docker://$SRC/$REPO:$TAG" "docker://$dst/$REPO:$TAG"
        AGAIN_SECS="$SECS"
        AGAIN_COPIED="$(json_field "$TMP/partial-again.log" bytes_copied)"
        log "[partial] again: $AGAIN_SECS s, copied $AGAIN_COPIED B"
    fi
    drop_registry dest
done

# --- report -----------------------------------------------------------------------------------
med() { # case -> median seconds
    local r vals=()
    for r in $(seq 1 "$RUNS"); do vals+=("${T["$1 $r"]}"); done
    median "${vals[@]}"
}
medrss() {
    local r vals=()
    for r in $(seq 1 "$RUNS"); do vals+=("${R["$1 $r"]}"); done
    [ "${vals[0]}" = n/a ] && { echo n/a; return; }
    median "${vals[@]}"
}
all_runs() {
    local r out=""
    for r in $(seq 1 "$RUNS"); do out+="${out:+ }${T["$1 $r"]}"; done
    echo "$out"
}

printf '\nCopy benchmark: one OCI index, 4 platforms x %s layers x %s MiB random (%s bytes, %s MB),\n' \
    "$LAYERS" "$LAYER_MIB" "$IMAGE_BYTES" "$(awk -v b="$IMAGE_BYTES" 'BEGIN { printf "%.0f", b / 1e6 }')"
printf 'source distribution 2.8, loopback, %s cores, %s, %s, median of %s runs\n' \
    "$(nproc)" "$("$WHARF_BIN" --version 2>/dev/null || echo wharf)" "$(skopeo --version)" "$RUNS"
printf 'load average at start: %s; index digest %s (checked at every destination)\n\n' \
    "$LOAD_AT_START" "$SRC_DIGEST"
printf '%-46s %9s %7s %10s   %s\n' "copy" "median s" "MB/s" "RSS (MiB)" "all runs (s)"
line() { # label case bytes
    local m; m="$(med "$2")"
    printf '%-46s %9s %7s %10s   %s\n' "$1" "$m" "$(mbps "$3" "$m")" "$(medrss "$2")" "$(all_runs "$2")"
}
line "wharf copy --all-platforms  -> distribution" wharf-dist "$IMAGE_BYTES"
line "skopeo copy --all           -> distribution" skopeo-dist "$IMAGE_BYTES"
line "wharf copy --all-platforms  -> wharf" wharf-wharf "$IMAGE_BYTES"
line "skopeo copy --all           -> wharf" skopeo-wharf "$IMAGE_BYTES"
line "wharf copy 2 of 4 platforms -> wharf sparse" partial "${PARTIAL_COPIED[1]}"
printf '\n'
printf 'speed-up, wharf vs skopeo, into distribution: %sx; into wharf: %sx\n' \
    "$(awk -v w="$(med wharf-dist)" -v s="$(med skopeo-dist)" 'BEGIN { printf "%.2f", s / w }')" \
    "$(awk -v w="$(med wharf-wharf)" -v s="$(med skopeo-wharf)" 'BEGIN { printf "%.2f", s / w }')"
printf 'partial copy (linux/amd64 + linux/arm64): bytes_copied %s, bytes_filtered %s (MB/s over bytes_copied);\n' \
    "${PARTIAL_COPIED[1]}" "${PARTIAL_FILTERED[1]}"
printf '  the same command again: %s s, bytes_copied %s. skopeo: no platform subset that keeps the digest.\n' \
    "$AGAIN_SECS" "$AGAIN_COPIED"
