#!/usr/bin/env bash
# Wharf vs CNCF distribution 2.8 (Debian's docker-registry), side by side on loopback:
#   - monolithic push of a fresh random blob (POST + PUT ?digest=), MB/s, and the server's
#     peak RSS (VmHWM) during it;
#   - pull of that blob, MB/s;
#   - GET of a small image manifest with wrk (-t2 -c32), requests/s;
#   - the machine's limits in the same run: openssl sha256 of the blob, dd write with fsync.
# Each registry runs alone (one after the other) and receives a blob it has never seen.
#
# usage: bench/registry.sh [path-to-wharf-binary]     (default target/release/wharf, built
#                                                      with `cargo build --release -p wharf`
#                                                      when missing; skipped if unavailable)
# env:   BENCH_BLOB_MIB (default 1024), BENCH_WRK_SECONDS (default 10), TMPDIR
# MB = 1,000,000 bytes; MiB = 1,048,576 bytes.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
bench_init "$@"   # cd to the repository root; sets WHARF_BIN

BLOB_MIB="${BENCH_BLOB_MIB:-1024}"
WRK_SECONDS="${BENCH_WRK_SECONDS:-10}"
BLOB_BYTES=$((BLOB_MIB * 1024 * 1024))


need_tools docker-registry curl wrk openssl dd awk ss
make_tmp wharf-bench

# Free space: two blobs, one stored copy at a time (plus its upload), the dd file.
check_space "$BLOB_MIB"

# --- the wharf binary --------------------------------------------------------------------------
RUN_WHARF=1
build_wharf_if_missing || RUN_WHARF=""
[ -x "$WHARF_BIN" ] || RUN_WHARF=""
[ -n "$RUN_WHARF" ] || log "wharf binary $WHARF_BIN not available: measuring distribution only"

# --- test data and machine limits -------------------------------------------------------------
log "generating ${BLOB_MIB} MiB random blobs..."
head -c "$BLOB_BYTES" /dev/urandom > "$TMP/blob-distribution"
[ -z "$RUN_WHARF" ] || head -c "$BLOB_BYTES" /dev/urandom > "$TMP/blob-wharf"

declare -A DIGEST
t0="$(now)"
DIGEST[distribution]="sha256:$(openssl dgst -sha256 -r "$TMP/blob-distribution" | cut -d' ' -f1)"
t1="$(now)"
SHA_MBPS="$(mbps "$BLOB_BYTES" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")"
[ -z "$RUN_WHARF" ] || DIGEST[wharf]="sha256:$(openssl dgst -sha256 -r "$TMP/blob-wharf" | cut -d' ' -f1)"

log "measuring dd write with fsync..."
t0="$(now)"
dd if=/dev/zero of="$TMP/dd" bs=1M count="$BLOB_MIB" conv=fsync status=none
t1="$(now)"
rm -f "$TMP/dd"
DD_MBPS="$(mbps "$BLOB_BYTES" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")"

make_small_image

# --- distribution 2.8 -------------------------------------------------------------------------
# Each registry gets one attempt (start_registry's retries are left out here): a failed start
# is reported as it is.
launch_registry distribution distribution
DIST_ADDR="$ADDR"
log "starting docker-registry on $DIST_ADDR"
wait_ready distribution "$DIST_ADDR" \
    || { [ "$?" != 2 ] || log "server exited at start"; cat "$TMP/distribution/log" >&2; exit 1; }
measure distribution "$DIST_ADDR"
stop_server distribution
rm -rf "$TMP/distribution/data" "$TMP/blob-distribution"

# --- wharf ------------------------------------------------------------------------------------
names=(distribution)
if [ -n "$RUN_WHARF" ]; then
    launch_registry wharf wharf
    WHARF_ADDR="$ADDR"
    log "starting $WHARF_BIN serve on $WHARF_ADDR"
    if wait_ready wharf "$WHARF_ADDR" && measure wharf "$WHARF_ADDR"; then
        names+=(wharf)
    else
        log "wharf run failed; its log:"; tail -n 50 "$TMP/wharf/log" >&2 || true
    fi
    stop_server wharf
fi

# --- report -----------------------------------------------------------------------------------
limit=$(( SHA_MBPS < DD_MBPS ? SHA_MBPS : DD_MBPS ))
printf '\nRegistry benchmark, %s MiB blob, loopback, %s cores, %s\n' "$BLOB_MIB" "$(nproc)" "$(date -u +%Y-%m-%dT%H:%MZ)"
printf 'machine limits: sha256 (openssl) %s MB/s, dd write+fsync %s MB/s (slower: %s MB/s)\n\n' \
    "$SHA_MBPS" "$DD_MBPS" "$limit"
printf '%-34s' "metric"; for n in "${names[@]}"; do printf '%18s' "$n"; done; printf '\n'
row() { # label array
    local label="$1" arr="$2" n
    printf '%-34s' "$label"
    for n in "${names[@]}"; do eval "printf '%18s' \"\${$arr[$n]}\""; done
    printf '\n'
}
row "blob push (MB/s)" PUSH
declare -A PUSH_PCT
for n in "${names[@]}"; do PUSH_PCT[$n]="$(awk -v p="${PUSH[$n]}" -v l="$limit" 'BEGIN { printf "%.0f%%", 100 * p / l }')"; done
row "blob push / slower limit" PUSH_PCT
row "blob pull (MB/s)" PULL
declare -A PULL_X
for n in "${names[@]}"; do PULL_X[$n]="$(awk -v p="${PULL[$n]}" -v d="${PULL[distribution]:-0}" 'BEGIN { if (d > 0) printf "%.2fx", p / d; else print "n/a" }')"; done
row "blob pull / distribution's" PULL_X
row "manifest GET (req/s, wrk -t2 -c32)" RPS
row "  non-2xx responses" NON2XX
row "peak RSS during push (MiB)" RSS
row "peak RSS, push + pull + GETs (MiB)" RSS_END
row "RSS before push (MiB)" BASE_RSS
