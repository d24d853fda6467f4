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
#        TMPDIR
# The image generator is crates/wharf-testkit/examples/make-images.rs (built with
# `cargo build --release -p wharf-testkit --example make-images` if missing).
# MB = 1,000,000 bytes; MiB = 1,048,576 bytes. Everything listens on 127.0.0.1.
set -euo pipefail

if [ "$#" -gt 0 ]; then WHARF_ARG="$(readlink -m -- "$1")"; fi
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

REPOS="${BENCH_REPOS:-50}"
BASE_MIB="${BENCH_BASE_MIB:-20}"
LAYER_KIB="${BENCH_LAYER_KIB:-1024}"
RUNS="${BENCH_RUNS:-3}"
WHARF_BIN="${WHARF_ARG:-target/release/wharf}"
MAKE_IMAGES="target/release/examples/make-images"
INDEX_TYPE="application/vnd.oci.image.index.v1+json"
NAME="app"   # one path component: skopeo sync (without --scoped) keeps only the last one
TAG="v1"
PREFIX="mirror"

for c in docker-registry skopeo curl awk ss du; do
    command -v "$c" >/dev/null || { echo "bench needs $c (run .ci/run to install)" >&2; exit 1; }
done
TIME_BIN=""
[ -x /usr/bin/time ] && TIME_BIN=/usr/bin/time

TMP="$(mktemp -d "${TMPDIR:-/tmp}/wharf-bench-sync.XXXXXX")"
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
mb() { awk -v b="$1" 'BEGIN { if (b == "" || b == "n/a") print "n/a"; else printf "%.1f", b / 1e6 }'; }
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

# Space: the layout, the source and two destinations (each about the distinct bytes).
distinct_mib=$(( BASE_MIB + REPOS * 2 * 2 * LAYER_KIB / 1024 + 16 ))
need_kib=$(( (distinct_mib * 5 + 256) * 1024 ))
have_kib="$(df -Pk "$TMP" | awk 'NR == 2 { print $4 }')"
if [ "$have_kib" -lt "$need_kib" ]; then
    log "not enough space in $TMP: need $((need_kib / 1024)) MiB, have $((have_kib / 1024)) MiB"
    exit 1
fi

# --- binaries ---------------------------------------------------------------------------------
if [ ! -x "$WHARF_BIN" ]; then
    if [ -z "${WHARF_ARG:-}" ] && [ -f crates/wharf/Cargo.toml ]; then
        log "building wharf (cargo build --release -p wharf)..."
        cargo build --release -p wharf >&2 || true
    fi
fi
RUN_WHARF=1
if [ ! -x "$WHARF_BIN" ]; then
    log "wharf binary $WHARF_BIN not available: measuring skopeo only"; RUN_WHARF=""
elif ! "$WHARF_BIN" sync --help >/dev/null 2>&1; then
    log "$WHARF_BIN has no sync command yet: measuring skopeo only"; RUN_WHARF=""
fi
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

# Starts a distribution 2.8 named NAME on a free port with its storage in $TMP/NAME; sets ADDR.
start_distribution() { # name
    local name="$1" dir="$TMP/$1" port attempt rc
    # A free port can be taken by someone else before the server binds it: retry.
    for attempt in 1 2 3 4 5; do
        rm -rf "$dir"; mkdir -p "$dir"
        port="$(free_port)"
        ADDR="127.0.0.1:$port"
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

# Bytes a registry stores: blobs and manifests (repositories' link files are a few bytes each;
# upload directories left behind would count too).
stored_bytes() { du -sb "$TMP/$1/data" | cut -f1; }

index_digest() { # addr repo
    curl -sS -I --max-time 30 -H "Accept: $INDEX_TYPE" "http://$1/v2/$2/manifests/$TAG" \
        | awk 'tolower($1) == "docker-content-digest:" { print $2 }' | tr -d '\r'
}

# Every image at ADDR under PREFIX serves the source's index digest.
check_dest() { # label addr prefix
    local repo want got bad=0
    while IFS=$'\t' read -r ref want _; do
        [ "$ref" = total ] && continue
        repo="${ref%:*}"
        got="$(index_digest "$2" "$3${3:+/}$repo")"
        if [ "$got" != "$want" ]; then
            log "[$1] $3${3:+/}$repo:$TAG serves ${got:-nothing}, not $want"; bad=1
        fi
    done < "$TMP/images.tsv"
    [ "$bad" = 0 ] || exit 1
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

# Socket (and file) bytes a server process has read or written so far, from /proc/PID/io:
# the source's wchar counts what it served, the destination's rchar what it received.
io_bytes() { # name rchar|wchar
    awk -v k="$2:" '$1 == k { print $2 }' "/proc/${PIDS[$1]}/io"
}

json_field() { # file field  -> the first number of that name (the report's top level)
    tr -d '\n' < "$1" | grep -o "\"$2\"[[:space:]]*:[[:space:]]*[0-9]*" | head -n 1 | grep -o '[0-9]*$'
}

LOAD_AT_START="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- the images in the source -----------------------------------------------------------------
log "generating $REPOS 2-platform images (shared ${BASE_MIB} MiB base, 1-2 x ${LAYER_KIB} KiB own layers)..."
"$MAKE_IMAGES" "$TMP/layout" --repos "$REPOS" --name "$NAME" --tag "$TAG" \
    --platforms linux/amd64,linux/arm64 --layers 1 --layers-alt 2 --layer-size "${LAYER_KIB}KiB" \
    --base-size "${BASE_MIB}MiB" > "$TMP/images.tsv"
DISTINCT_BYTES="$(awk '$1 == "total" { print $3 }' "$TMP/images.tsv")"
NAIVE_BYTES="$(awk '$1 != "total" { s += $3 } END { print s }' "$TMP/images.tsv")"
start_distribution source
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

declare -A T=() R=() OUT=() IN=() DU=() SENT=()   # "case run" -> seconds, peak RSS MiB, bytes

# One sync into the running destination, as case CASE of run RUN: time, peak RSS, bytes the
# source served and the destination received, what the destination stores; sent by wharf's JSON.
measure_sync() { # case run cmd...
    local c="$1" run="$2" src0 dst0; shift 2
    src0="$(io_bytes source wchar)"; dst0="$(io_bytes dest rchar)"
    timed "$TMP/$c.$run.out" "$@"
    T["$c $run"]="$SECS"; R["$c $run"]="$RSS_MIB"
    OUT["$c $run"]=$(( $(io_bytes source wchar) - src0 ))
    IN["$c $run"]=$(( $(io_bytes dest rchar) - dst0 ))
    DU["$c $run"]="$(stored_bytes dest)"
    case "$c" in wharf*) SENT["$c $run"]="$(json_field "$TMP/$c.$run.out" bytes_copied)" ;; esac
    log "[$c] run $run: $SECS s, source served ${OUT["$c $run"]} B, destination received ${IN["$c $run"]} B${SENT["$c $run"]:+, bytes_copied ${SENT["$c $run"]}}"
}

run_sync() { # tool run
    local tool="$1" run="$2" dst
    start_distribution dest
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
col() { # array key -> median over runs, or n/a
    local arr="$1" key="$2" r v vals=()
    for r in $(seq 1 "$RUNS"); do
        eval "v=\"\${$arr[\"$key \$r\"]:-}\""
        [ -n "$v" ] && [ "$v" != n/a ] && vals+=("$v")
    done
    [ "${#vals[@]}" -gt 0 ] || { echo n/a; return; }
    median "${vals[@]}"
}
all_runs() {
    local r out=""
    for r in $(seq 1 "$RUNS"); do out+="${out:+ }${T["$1 $r"]:-n/a}"; done
    echo "$out"
}

printf '\nSync benchmark: %s repositories x 1 tag, 2 platforms each, a shared %s MiB base layer and\n' "$REPOS" "$BASE_MIB"
printf '1-2 x %s KiB own layers per platform: %s MB distinct in the source (%s MB if each image were\n' \
    "$LAYER_KIB" "$(mb "$DISTINCT_BYTES")" "$(mb "$NAIVE_BYTES")"
printf 'counted alone); distribution 2.8 source and destinations, loopback, %s cores, %s, %s,\n' \
    "$(nproc)" "$( [ -n "$RUN_WHARF" ] && "$WHARF_BIN" --version || echo 'wharf: no sync')" "$(skopeo --version)"
printf 'median of %s runs; load average at start: %s; every index digest checked at the destination\n\n' \
    "$RUNS" "$LOAD_AT_START"
printf '%-36s %8s %8s %8s %8s %8s %6s   %s\n' "sync" "median s" "sent" "src out" "dest in" "stored" "RSS" "all runs (s)"
line() { # label case
    printf '%-36s %8s %8s %8s %8s %8s %6s   %s\n' "$1" "$(col T "$2")" "$(mb "$(col SENT "$2")")" \
        "$(mb "$(col OUT "$2")")" "$(mb "$(col IN "$2")")" "$(mb "$(col DU "$2")")" "$(col R "$2")" \
        "$(all_runs "$2")"
}
if [ -n "$RUN_WHARF" ]; then
    line "wharf sync (first run)" wharf
    line "skopeo sync --all (first run)" skopeo
    line "wharf sync (again, nothing changed)" wharf-again
    line "skopeo sync --all (again)" skopeo-again
    printf '\nspeed-up, wharf vs skopeo: first run %sx, second run %sx\n' \
        "$(awk -v w="$(col T wharf)" -v s="$(col T skopeo)" 'BEGIN { printf "%.2f", s / w }')" \
        "$(awk -v w="$(col T wharf-again)" -v s="$(col T skopeo-again)" 'BEGIN { printf "%.2f", s / w }')"
else
    line "skopeo sync --all (first run)" skopeo
    line "skopeo sync --all (again)" skopeo-again
    printf '\nwharf: %s has no sync command; not measured\n' "$WHARF_BIN"
fi
printf 'MB (1e6 bytes): sent = wharf --json bytes_copied (skopeo reports none); src out / dest in = the\n'
printf 'source registry'"'"'s written / the destination'"'"'s read bytes (/proc/PID/io wchar / rchar: HTTP\n'
printf 'bodies and headers); stored = du -sb of the destination'"'"'s storage (directories included)\n'
