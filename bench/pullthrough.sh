#!/usr/bin/env bash
# Pull-through of a 1 GiB blob: Wharf (`[[upstreams]]` with proxy_tags) vs CNCF distribution 2.8
# in proxy mode (`proxy: remoteurl:`), side by side on loopback, in front of the same upstream
# (a plain distribution 2.8 holding the blob):
#   - cold: the first GET of the blob through the proxy (fetched upstream, streamed, stored);
#   - warm: a second GET (served from the proxy's own storage);
#   - for each, time to first byte (curl's time_starttransfer) and total time, and the
#     proxy's peak RSS (VmHWM) over both;
#   - the upstream's own figures for the same GET, as the reference.
# Each proxy runs alone (one after the other) with fresh storage for every run.
#
# usage: bench/pullthrough.sh [path-to-wharf-binary]  (default target/release/wharf, built with
#                                                      `cargo build --release -p wharf` when
#                                                      missing; skipped if unavailable)
# env:   BENCH_BLOB_MIB (default 1024), BENCH_RUNS (default 3), TMPDIR
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
bench_init "$@"   # cd to the repository root; sets WHARF_BIN

BLOB_MIB="${BENCH_BLOB_MIB:-1024}"
RUNS="${BENCH_RUNS:-3}"
BLOB_BYTES=$((BLOB_MIB * 1024 * 1024))

need_tools docker-registry curl openssl awk ss
make_tmp wharf-pullthrough
# The upstream's copy, the blob file, one proxy's copy (plus Wharf's spool) at a time.
check_space "$BLOB_MIB"

RUN_WHARF=1
build_wharf_if_missing || RUN_WHARF=""
[ -x "$WHARF_BIN" ] || RUN_WHARF=""
[ -n "$RUN_WHARF" ] || log "wharf binary $WHARF_BIN not available: measuring distribution only"

vm() { awk -v k="$2:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; } # pid field → MiB

# --- the upstream and its blob ----------------------------------------------------------------
log "generating a ${BLOB_MIB} MiB random blob..."
head -c "$BLOB_BYTES" /dev/urandom > "$TMP/blob"
DIGEST="sha256:$(openssl dgst -sha256 -r "$TMP/blob" | cut -d' ' -f1)"
start_registry upstream distribution
UPSTREAM="$ADDR"
log "pushing it to the upstream ($UPSTREAM)..."
loc="$(curl -sS -o /dev/null -D - -X POST "http://$UPSTREAM/v2/vendor/big/blobs/uploads/" \
    | awk 'tolower($1) == "location:" { print $2 }' | tr -d '\r')"
case "$loc" in /*) loc="http://$UPSTREAM$loc" ;; esac
case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
code="$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/octet-stream' \
    -T "$TMP/blob" "$loc${sep}digest=$DIGEST")"
[ "$code" = 201 ] || { log "upstream blob PUT answered $code"; exit 1; }
rm -f "$TMP/blob"

# GET the blob; prints "TTFB TOTAL" (seconds) after checking the status and the size.
get_blob() { # addr label
    local out code ttfb total size
    out="$(curl -sS -o /dev/null --max-time 900 \
        -w '%{http_code} %{time_starttransfer} %{time_total} %{size_download}' \
        "http://$1/v2/vendor/big/blobs/$DIGEST")"
    read -r code ttfb total size <<<"$out"
    [ "$code" = 200 ] && [ "$size" = "$BLOB_BYTES" ] \
        || { log "[$2] blob GET answered $code with $size bytes"; return 1; }
    echo "$ttfb $total"
}

# A distribution 2.8 pull-through cache of the upstream (its storage fresh in $TMP/NAME).
start_distribution_proxy() { # name
    local name="$1" dir="$TMP/$1" port attempt
    for attempt in 1 2 3 4 5; do
        rm -rf "$dir"; mkdir -p "$dir"
        port="$(free_port)"; ADDR="127.0.0.1:$port"
        cat > "$dir/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $ADDR
  secret: wharf-bench
proxy:
  remoteurl: http://$UPSTREAM
EOF
        # shellcheck disable=SC2046 # one word per -u option, by design
        env $(env | awk -F= '/^REGISTRY_/ { printf "-u %s ", $1 }') \
            docker-registry serve "$dir/config.yml" > "$dir/log" 2>&1 &
        PIDS[$name]=$!
        rc=0; wait_ready "$name" "$ADDR" || rc=$?
        [ "$rc" = 0 ] && return 0
        [ "$rc" != 2 ] || unset "PIDS[$name]"
        [ "$rc" = 2 ] && [ "$attempt" != 5 ] || { tail -n 30 "$dir/log" >&2; exit 1; }
    done
}

start_wharf_proxy() { # name
    mkdir -p "$TMP/$1-conf"
    cat > "$TMP/$1-conf/wharf.toml" <<EOF
[[upstreams]]
pattern = "vendor/**"
url = "docker://$UPSTREAM/vendor"
proxy_tags = true
EOF
    start_registry "$1" wharf --config "$TMP/$1-conf/wharf.toml"
}

declare -A T COLD_TTFB COLD_TOTAL WARM_TTFB WARM_TOTAL RSS
measure() { # kind run
    local kind="$1" run="$2" name="$1-$2" out
    case "$kind" in
        distribution) start_distribution_proxy "$name" ;;
        wharf) start_wharf_proxy "$name" ;;
        upstream) ADDR="$UPSTREAM" ;;
    esac
    log "[$kind run $run] cold GET..."
    out="$(get_blob "$ADDR" "$kind")" || exit 1
    read -r "COLD_TTFB[$kind $run]" "COLD_TOTAL[$kind $run]" <<<"$out"
    log "[$kind run $run] warm GET..."
    out="$(get_blob "$ADDR" "$kind")" || exit 1
    read -r "WARM_TTFB[$kind $run]" "WARM_TOTAL[$kind $run]" <<<"$out"
    if [ "$kind" != upstream ]; then
        RSS["$kind $run"]="$(vm "${PIDS[$name]}" VmHWM)"
        drop_registry "$name"
        rm -rf "$TMP/$name-conf"
    fi
    # Let the page cache settle between measurements: each proxy starts from the same state.
    sync
}

KINDS=(upstream distribution)
[ -z "$RUN_WHARF" ] || KINDS+=(wharf)
for run in $(seq 1 "$RUNS"); do
    for kind in "${KINDS[@]}"; do measure "$kind" "$run"; done
done

# --- report -----------------------------------------------------------------------------------
ms() { awk -v s="$1" 'BEGIN { if (s == "n/a") print "n/a"; else printf "%.0f", s * 1000 }'; }
row() { # label array
    local line="| $1 |" kind
    for kind in "${KINDS[@]}"; do
        if [ "$2" = RSS ] && [ "$kind" = upstream ]; then line+=" – |"; continue; fi
        if [ "$2" = RSS ]; then line+=" $(median_runs "$2" "$kind") |"; else line+=" $(ms "$(median_runs "$2" "$kind")") |"; fi
    done
    echo "$line"
}
runs() { # array
    local line="" kind r v
    for kind in "${KINDS[@]}"; do
        line+="$kind:"
        for r in $(seq 1 "$RUNS"); do eval "v=\"\${$1[\"$kind \$r\"]:-n/a}\""; line+=" $(ms "$v")"; done
        line+="; "
    done
    echo "$line"
}
echo "Pull-through of a ${BLOB_MIB} MiB blob, median of $RUNS runs (ms; RSS in MiB)"
echo
header="| metric |"; sep="| --- |"
for kind in "${KINDS[@]}"; do
    case "$kind" in
        upstream) header+=" upstream direct |" ;;
        distribution) header+=" distribution 2.8 proxy |" ;;
        wharf) header+=" Wharf pull-through |" ;;
    esac
    sep+=" ---: |"
done
echo "$header"; echo "$sep"
row "cold: time to first byte" COLD_TTFB
row "cold: total" COLD_TOTAL
row "warm: time to first byte" WARM_TTFB
row "warm: total" WARM_TOTAL
row "proxy peak RSS (MiB)" RSS
echo
echo "every run, cold total (ms): $(runs COLD_TOTAL)"
echo "every run, cold TTFB (ms): $(runs COLD_TTFB)"
