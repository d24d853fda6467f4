#!/usr/bin/env bash
# Small blobs on kept-alive connections: what every client pays for configs, signatures and
# small layers. GET of a 584-byte blob with wrk, one connection (-t1 -c1: latency) and 32
# (-t2 -c32: rate), HEAD of it, against CNCF distribution 2.8 and nginx serving a file of the
# same size (the reference), side by side in one run; Wharf on SQLite and, when PostgreSQL is
# reachable, on PostgreSQL.
#
# usage: bench/small.sh [path-to-wharf-binary]
# env:   BENCH_WRK_SECONDS (default 5), BENCH_AB_REQUESTS (default 50000), TMPDIR,
#        BENCH_POSTGRES (default postgres://postgres@127.0.0.1:5432/postgres: a database is made
#        there for the run and dropped after)
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
bench_init "$@"
WRK_SECONDS="${BENCH_WRK_SECONDS:-5}"
need_tools docker-registry curl wrk ab openssl awk ss nginx
AB_REQUESTS="${BENCH_AB_REQUESTS:-50000}"
run_ab() { # url [-i] [accept] -> rps
    timeout 120 ab -q -k -c 32 -n "$AB_REQUESTS" ${2:+"$2"} -H "Accept: ${3:-*/*}" "$1" 2>/dev/null \
        | awk '/^Requests per second:/ { printf "%.0f", $4 }'
}
make_tmp wharf-small-bench
build_wharf_if_missing

head -c 584 /dev/urandom > "$TMP/small"
DIGEST="$(file_digest "$TMP/small")"
# HEAD goes through ab (-k -i): wrk's parser waits for a body after a HEAD response on a
# kept-alive connection and counts nothing. ab is one thread, so GET is measured with it too:
# HEAD and GET are compared with the same client.
declare -A LAT1 RPS1 RPS32 TAG32 DIGEST32 AB_GET AB_HEAD AB_MHEAD
make_small_image
MANIFEST_DIGEST="$(file_digest "$TMP/img/manifest.json")"
run_wrk() { # url threads conns [accept] -> "latency_ms rps"
    local out
    out="$(timeout $((WRK_SECONDS + 30)) wrk -t"$2" -c"$3" -d"${WRK_SECONDS}s" --timeout 5s -H "Accept: ${4:-*/*}" "$1")"
    awk '/^    Latency/ { l = $2 } /^Requests\/sec:/ { r = $2 }
         END { if (l ~ /us$/) { sub(/us$/, "", l); l = l / 1000 } else if (l ~ /ms$/) { sub(/ms$/, "", l) } else if (l ~ /s$/) { sub(/s$/, "", l); l = l * 1000 }
               printf "%.3f %.0f", l, r }' <<<"$out"
}
measure_small() { # name url
    local out
    out="$(run_wrk "$2" 1 1)"; LAT1[$1]="${out% *}"; RPS1[$1]="${out#* }"
    out="$(run_wrk "$2" 2 32)"; RPS32[$1]="${out#* }"
    AB_GET[$1]="$(run_ab "$2")"
    AB_HEAD[$1]="$(run_ab "$2" -i)"
}

# Wharf on PostgreSQL too (what replicas run), when psql reaches BENCH_POSTGRES: in a database
# of its own, dropped at the end. On SQLite blob links and manifests are answered from memory
# until this process changes them; on PostgreSQL from a 200 ms lease per entry (other replicas
# may change them: see wharf-metadata's link_cache.rs and wharf-registry's cache.rs).
PG_ADMIN="${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}"
KINDS=(distribution wharf)
PG_DB="wharf_small_bench_$$"
if command -v psql >/dev/null && psql "$PG_ADMIN" -qAtc "CREATE DATABASE $PG_DB" >/dev/null 2>&1; then
    KINDS+=(wharf-pg)
    PG_URL="${PG_ADMIN%/*}/$PG_DB"
    trap 'cleanup; psql "$PG_ADMIN" -qAtc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1' EXIT
else
    log "PostgreSQL not reachable at $PG_ADMIN (BENCH_POSTGRES): measuring Wharf on SQLite only"
fi

for kind in "${KINDS[@]}"; do
    case "$kind" in
        wharf-pg) start_registry "$kind" wharf --database "$PG_URL" ;;
        *) start_registry "$kind" "$kind" ;;
    esac
    out="$(push_blob "$ADDR" bench "$TMP/small" "$DIGEST")"
    [ "${out%% *}" = 201 ] || { log "$kind: small blob PUT answered $out"; exit 1; }
    log "[$kind] small blob GETs..."
    measure_small "$kind" "http://$ADDR/v2/bench/blobs/$DIGEST"
    for f in config.json layer.tar.gz; do
        out="$(push_blob "$ADDR" bench "$TMP/img/$f" "$(file_digest "$TMP/img/$f")")"
        [ "${out%% *}" = 201 ] || { log "$kind: image blob PUT answered $out"; exit 1; }
    done
    [ "$(push_manifest "$ADDR" bench v1 "$TMP/img/manifest.json")" = 201 ] || { log "$kind: manifest PUT failed"; exit 1; }
    log "[$kind] manifest GETs by tag and by digest..."
    TAG32[$kind]="$(run_wrk "http://$ADDR/v2/bench/manifests/v1" 2 32 "$MANIFEST_TYPE")"; TAG32[$kind]="${TAG32[$kind]#* }"
    DIGEST32[$kind]="$(run_wrk "http://$ADDR/v2/bench/manifests/$MANIFEST_DIGEST" 2 32 "$MANIFEST_TYPE")"; DIGEST32[$kind]="${DIGEST32[$kind]#* }"
    AB_MHEAD[$kind]="$(run_ab "http://$ADDR/v2/bench/manifests/$MANIFEST_DIGEST" -i "$MANIFEST_TYPE")"
    stop_server "$kind"
done

# nginx, one process, serving the same bytes as a static file (and the manifest, for the rows
# below: one file either way).
mkdir -p "$TMP/nginx/www"; cp "$TMP/small" "$TMP/nginx/www/small"
start_nginx
log "[nginx] small file GETs..."
measure_small nginx "http://$NGINX_ADDR/small"
cp "$TMP/img/manifest.json" "$TMP/nginx/www/manifest"
TAG32[nginx]="$(run_wrk "http://$NGINX_ADDR/manifest" 2 32)"; TAG32[nginx]="${TAG32[nginx]#* }"
DIGEST32[nginx]="${TAG32[nginx]}"
AB_MHEAD[nginx]="$(run_ab "http://$NGINX_ADDR/manifest" -i)"
stop_server nginx

printf '\nSmall blob (584 B) on kept-alive connections, loopback, %s cores, %s\n\n' "$(nproc)" "$(date -u +%Y-%m-%dT%H:%MZ)"
COLUMNS_=("${KINDS[@]}" nginx)
printf '%-40s' metric; printf '%14s' "${COLUMNS_[@]}"; printf '\n'
for pair in "GET, 1 connection, mean latency (ms):LAT1" "GET, 1 connection (req/s):RPS1" \
            "GET, 32 connections (req/s):RPS32" "manifest GET by tag, 32 conns (req/s):TAG32" \
            "manifest GET by digest, 32 conns (req/s):DIGEST32" \
            "ab, blob GET, 32 conns (req/s):AB_GET" "ab, blob HEAD, 32 conns (req/s):AB_HEAD" \
            "ab, manifest HEAD by digest (req/s):AB_MHEAD"; do
    label="${pair%%:*}"; arr="${pair##*:}"
    printf '%-40s' "$label"
    for k in "${COLUMNS_[@]}"; do eval "printf '%14s' \"\${$arr[\$k]}\""; done
    printf '\n'
done
