#!/usr/bin/env bash
# Blob pulls, Wharf vs CNCF distribution 2.8 vs nginx (the same file, sendfile on), side by side
# in one run: one curl at a time (median of BENCH_RUNS), then BENCH_PARALLEL curls at once
# (aggregate MB/s), and the CPU seconds each server spent per GB served. One stream on loopback
# is bounded by the client and the loopback path, not by the server, so the parallel row and the
# CPU column are the ones that tell the servers apart. The blob is in the page cache for all
# three (each server has just stored or read it).
#
# usage: bench/pull.sh [path-to-wharf-binary]
# env:   BENCH_BLOB_MIB (default 512), BENCH_RUNS (default 5), BENCH_PARALLEL (default 4), TMPDIR
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
bench_init "$@"
BLOB_MIB="${BENCH_BLOB_MIB:-512}"
RUNS="${BENCH_RUNS:-5}"
PARALLEL="${BENCH_PARALLEL:-4}"
BLOB_BYTES=$((BLOB_MIB * 1024 * 1024))
need_tools docker-registry curl nginx openssl awk ss
make_tmp wharf-pull-bench
check_space $((BLOB_MIB * 4))
build_wharf_if_missing

head -c "$BLOB_BYTES" /dev/urandom > "$TMP/blob"
DIGEST="$(file_digest "$TMP/blob")"
HZ="$(getconf CLK_TCK)"
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # utime + stime of a process

declare -A ONE PAR CPU
pull_once() { # url -> seconds
    local out code secs size
    out="$(curl -sS -o /dev/null --max-time 300 -w '%{http_code} %{time_total} %{size_download}' "$1")"
    read -r code secs size <<<"$out"
    [ "$code" = 200 ] && [ "$size" = "$BLOB_BYTES" ] || { log "GET $1 answered $code with $size bytes"; exit 1; }
    echo "$secs"
}
measure_pulls() { # name pid url
    local name="$1" pid="$2" url="$3" i t0 c0 c1 secs=()
    pull_once "$url" >/dev/null # warm: the server's first read comes from the page cache too
    for i in $(seq 1 "$RUNS"); do secs+=("$(pull_once "$url")"); done
    ONE[$name]="$(mbps "$BLOB_BYTES" "$(median "${secs[@]}")")"
    c0="$(cpu_ticks "$pid")"; t0="$(now)"
    local pids=()
    for i in $(seq 1 "$PARALLEL"); do pull_once "$url" > "$TMP/par.$i" & pids+=($!); done
    wait "${pids[@]}" # not a bare wait: the servers are children of this shell too
    PAR[$name]="$(mbps $((BLOB_BYTES * PARALLEL)) "$(since "$t0")")"
    c1="$(cpu_ticks "$pid")"
    CPU[$name]="$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v b=$((BLOB_BYTES * PARALLEL)) 'BEGIN { printf "%.2f", t / hz / (b / 1e9) }')"
    log "[$name] one stream ${ONE[$name]} MB/s, $PARALLEL at once ${PAR[$name]} MB/s, ${CPU[$name]} CPU s/GB"
}

for kind in distribution wharf; do
    start_registry "$kind" "$kind"
    out="$(push_blob "$ADDR" bench "$TMP/blob" "$DIGEST")"
    [ "${out%% *}" = 201 ] || { log "$kind: blob PUT answered $out"; exit 1; }
    measure_pulls "$kind" "${PIDS[$kind]}" "http://$ADDR/v2/bench/blobs/$DIGEST"
    drop_registry "$kind"
done

mkdir -p "$TMP/nginx/www"; mv "$TMP/blob" "$TMP/nginx/www/blob"
start_nginx "sendfile on;"
measure_pulls nginx "${PIDS[nginx]}" "http://$NGINX_ADDR/blob"

printf '\nBlob pull, %s MiB, loopback, %s cores, %s\n\n' "$BLOB_MIB" "$(nproc)" "$(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-40s %14s %14s %14s\n' metric distribution wharf nginx
printf '%-40s %14s %14s %14s\n' "one curl (MB/s, median of $RUNS)" "${ONE[distribution]}" "${ONE[wharf]}" "${ONE[nginx]}"
printf '%-40s %14s %14s %14s\n' "$PARALLEL curls at once (MB/s, total)" "${PAR[distribution]}" "${PAR[wharf]}" "${PAR[nginx]}"
printf '%-40s %14s %14s %14s\n' "server CPU per GB served (s)" "${CPU[distribution]}" "${CPU[wharf]}" "${CPU[nginx]}"
printf '%-40s %14s %14s %14s\n' "one curl / distribution's" 1.00x \
    "$(awk -v a="${ONE[wharf]}" -v b="${ONE[distribution]}" 'BEGIN { printf "%.2fx", a / b }')" \
    "$(awk -v a="${ONE[nginx]}" -v b="${ONE[distribution]}" 'BEGIN { printf "%.2fx", a / b }')"
printf '%-40s %14s %14s %14s\n' "$PARALLEL at once / distribution's" 1.00x \
    "$(awk -v a="${PAR[wharf]}" -v b="${PAR[distribution]}" 'BEGIN { printf "%.2fx", a / b }')" \
    "$(awk -v a="${PAR[nginx]}" -v b="${PAR[distribution]}" 'BEGIN { printf "%.2fx", a / b }')"
