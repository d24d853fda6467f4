#!/usr/bin/env bash
# Soak: for DURATION seconds per backend, several pushers of unique images (every fifth deleted
# by digest right after its push), pullers that check the digest of everything they read, and
# `wharf gc --grace 10s` in a loop, against one `wharf serve` on SQLite, then on PostgreSQL.
# Afterwards: every acknowledged image reads back (each manifest and blob hashes to its digest),
# `wharf fsck` is clean, no request got a 5xx; the server's RSS and peak RSS (VmHWM) after a
# fifth of the run and at the end show whether memory stays flat. Exits non-zero on any failure.
#
# usage: bench/soak.sh DURATION_SECONDS [path-to-wharf-binary]
#   env: SOAK_BACKENDS ("sqlite postgres"), SOAK_PUSHERS (3), SOAK_PULLERS (2),
#        SOAK_POSTGRES (postgres://postgres@127.0.0.1:5432), TMPDIR
set -euo pipefail
DURATION="${1:?usage: bench/soak.sh DURATION_SECONDS [path-to-wharf-binary]}"
shift
# shellcheck source=bench/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
bench_init "$@"
BACKENDS="${SOAK_BACKENDS:-sqlite postgres}"
PUSHERS="${SOAK_PUSHERS:-3}"
PULLERS="${SOAK_PULLERS:-2}"
PG="${SOAK_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
MANIFEST_TYPE="application/vnd.oci.image.manifest.v1+json"
need_tools curl openssl awk ss shuf psql
make_tmp wharf-soak
build_wharf_if_missing
FAILED=0

fail() { log "FAIL: $*"; echo "$*" >> "$TMP/failures"; }

# The status of one request, for the 5xx count (the server's /metrics counts them too).
record() { echo "$1" >> "$TMP/codes.$BASHPID"; }

pusher() { # id
    local id="$1" n=0 dir="$TMP/push$1" repo="soak/p$1" ld cd md out code
    mkdir -p "$dir"
    while [ "$(date +%s)" -lt "$END" ]; do
        n=$((n + 1))
        head -c 65536 /dev/urandom > "$dir/layer"
        ld="$(file_digest "$dir/layer")"
        printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]},"soak":"%s-%s"}' \
            "$ld" "$id" "$n" > "$dir/config"
        cd="$(file_digest "$dir/config")"
        printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
            "$MANIFEST_TYPE" "$cd" "$(file_size "$dir/config")" "$ld" "$(file_size "$dir/layer")" > "$dir/manifest"
        md="$(file_digest "$dir/manifest")"
        out="$(push_blob "$ADDR" "$repo" "$dir/layer" "$ld" || echo 000)"; record "${out%% *}"
        [ "${out%% *}" = 201 ] || continue
        out="$(push_blob "$ADDR" "$repo" "$dir/config" "$cd" || echo 000)"; record "${out%% *}"
        [ "${out%% *}" = 201 ] || continue
        code="$(push_manifest "$ADDR" "$repo" "t$n" "$dir/manifest" || echo 000)"; record "$code"
        [ "$code" = 201 ] || continue
        if [ $((n % 5)) = 0 ]; then
            code="$(curl -sS -o /dev/null --max-time 30 -X DELETE -w '%{http_code}' \
                "http://$ADDR/v2/$repo/manifests/$md" || echo 000)"; record "$code"
            [ "$code" = 202 ] || echo "delete $repo@$md answered $code" >> "$TMP/errors"
            echo x >> "$TMP/deleted.$id"
        else
            echo "$repo t$n $md $cd $ld" >> "$TMP/acked.$id"
        fi
    done
}

# GETs DIGEST (a manifest or a blob of REPO) and checks what came back hashes to it.
check_get() { # kind repo digest out
    local code
    code="$(curl -sS -o "$4" --max-time 60 -H "Accept: $MANIFEST_TYPE" -w '%{http_code}' \
        "http://$ADDR/v2/$2/$1/$3" || echo 000)"
    record "$code"
    if [ "$code" != 200 ]; then echo "GET $2/$1/$3 answered $code" >> "$TMP/errors"; return; fi
    [ "$(file_digest "$4")" = "$3" ] || echo "GET $2/$1/$3: content does not match its digest" >> "$TMP/errors"
}

puller() { # id
    local out="$TMP/pull$1" repo tag md cd ld
    while [ "$(date +%s)" -lt "$END" ]; do
        read -r repo tag md cd ld < <(cat "$TMP"/acked.* 2>/dev/null | shuf -n 1) || { sleep 0.2; continue; }
        check_get manifests "$repo" "$md" "$out"
        check_get blobs "$repo" "$cd" "$out"
        check_get blobs "$repo" "$ld" "$out"
        echo x >> "$TMP/pulls.$1"
    done
}

gc_loop() {
    while [ "$(date +%s)" -lt "$END" ]; do
        if "$WHARF_BIN" gc --grace 10s "${STORE_ARGS[@]}" >> "$TMP/gc.log" 2>&1; then
            echo ok >> "$TMP/gc.runs"
        else
            echo failed >> "$TMP/gc.runs"
        fi
        sleep 5
    done
}

# VmRSS and VmHWM of the server, in MiB, every 2 s: "seconds rss hwm".
sample_memory() { # pid
    local t0; t0="$(date +%s)"
    while [ "$(date +%s)" -lt "$END" ] && kill -0 "$1" 2>/dev/null; do
        echo "$(( $(date +%s) - t0 )) $(vm "$1" VmRSS) $(vm "$1" VmHWM)" >> "$TMP/memory"
        sleep 2
    done
}

soak() { # backend
    local backend="$1" db="" pid i n5xx requests
    rm -f "$TMP"/acked.* "$TMP"/deleted.* "$TMP"/codes.* "$TMP"/pulls.* "$TMP/errors" "$TMP/gc.runs" "$TMP/gc.log" "$TMP/memory"
    STORE_ARGS=(--data-dir "$TMP/wharf/data")
    if [ "$backend" = postgres ]; then
        db="wharf_soak_$$"
        psql "$PG/postgres" -q -c "CREATE DATABASE $db"
        STORE_ARGS+=(--database "$PG/$db")
        start_registry wharf wharf --database "$PG/$db"
    else
        start_registry wharf wharf
    fi
    pid="${PIDS[wharf]}"
    END=$(( $(date +%s) + DURATION ))
    log "[$backend] soaking for ${DURATION}s: $PUSHERS pushers, $PULLERS pullers, gc every 5 s..."
    local jobs=()
    for i in $(seq 1 "$PUSHERS"); do pusher "$i" & jobs+=($!); done
    for i in $(seq 1 "$PULLERS"); do puller "$i" & jobs+=($!); done
    gc_loop & jobs+=($!)
    sample_memory "$pid" & jobs+=($!)
    wait "${jobs[@]}"

    log "[$backend] reading every acknowledged image back..."
    local acked=0 repo tag md cd ld code
    while read -r repo tag md cd ld; do
        acked=$((acked + 1))
        code="$(curl -sS -o "$TMP/final" --max-time 60 -H "Accept: $MANIFEST_TYPE" -w '%{http_code}' \
            "http://$ADDR/v2/$repo/manifests/$tag" || echo 000)"
        record "$code"
        [ "$code" = 200 ] && [ "$(file_digest "$TMP/final")" = "$md" ] \
            || echo "$repo:$tag answered $code, or is no longer $md" >> "$TMP/errors"
        check_get manifests "$repo" "$md" "$TMP/final"
        check_get blobs "$repo" "$cd" "$TMP/final"
        check_get blobs "$repo" "$ld" "$TMP/final"
    done < <(cat "$TMP"/acked.* 2>/dev/null)
    curl -sS "http://$ADDR/metrics" > "$TMP/metrics"
    requests="$(awk '/^wharf_http_requests_total\{/ { s += $2 } END { printf "%d", s }' "$TMP/metrics")"
    n5xx="$(awk '/^wharf_http_requests_total\{.*status="5/ { s += $2 } END { printf "%d", s }' "$TMP/metrics")"
    local client5xx; client5xx="$(cat "$TMP"/codes.* | awk '$1 >= 500 || $1 == "000" { n++ } END { printf "%d", n }')"
    local fsck=clean
    if ! "$WHARF_BIN" fsck "${STORE_ARGS[@]}" > "$TMP/fsck.log" 2>&1; then fsck="NOT CLEAN"; fi
    local deleted; deleted="$(cat "$TMP"/deleted.* 2>/dev/null | wc -l)"
    local pulls; pulls="$(cat "$TMP"/pulls.* 2>/dev/null | wc -l)"
    local gc_ok gc_failed
    gc_ok="$(grep -c '^ok' "$TMP/gc.runs" || true)"; gc_failed="$(grep -c '^failed' "$TMP/gc.runs" || true)"
    local warm end_rss
    warm="$(awk -v t=$((DURATION / 5)) '$1 >= t { print $2 " " $3; exit }' "$TMP/memory")"
    end_rss="$(tail -n 1 "$TMP/memory" | awk '{ print $2 " " $3 }')"
    stop_server wharf

    echo "== $backend, ${DURATION}s, wharf $WHARF_BIN"
    echo "images acknowledged and kept: $acked (deleted by digest: $deleted)"
    echo "requests: $requests; 5xx: $n5xx (server) / $client5xx (client-side 5xx or transport errors)"
    echo "pulls checked during the run: $pulls; gc runs: $gc_ok ok, $gc_failed failed"
    echo "RSS / peak RSS (MiB) at $((DURATION / 5))s: ${warm:-n/a}; at the end: ${end_rss:-n/a}"
    echo "fsck: $fsck"
    if [ -s "$TMP/errors" ]; then
        echo "errors: $(wc -l < "$TMP/errors") (first 10 below)"; head -n 10 "$TMP/errors"
    else
        echo "errors: none; every acknowledged image read back and matched its digests"
    fi
    if [ -s "$TMP/errors" ] || [ "$n5xx" != 0 ] || [ "$client5xx" != 0 ] || [ "$fsck" != clean ] \
        || [ "$gc_failed" != 0 ] || [ "$acked" = 0 ]; then
        FAILED=1
        tail -n 20 "$TMP/wharf/log" "$TMP/gc.log" "$TMP/fsck.log" >&2 || true
    fi
    if [ -n "$db" ]; then psql "$PG/postgres" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"; fi
    rm -rf "$TMP/wharf"
}

for backend in $BACKENDS; do soak "$backend"; done
exit "$FAILED"
