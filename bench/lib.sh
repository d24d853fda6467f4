# shellcheck shell=bash
# Helpers shared by bench/registry.sh, bench/copy.sh and bench/sync.sh. Sourced, not run: each
# script sets `set -euo pipefail` first, then
#     . "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
# Everything here only defines functions and a few globals; nothing starts until called.
# Globals it owns: WHARF_ARG, WHARF_BIN (bench_init), TMP (make_tmp), PIDS (servers started),
# ADDR (launch_registry / start_registry), SECS and RSS_MIB (timed), MAKE_IMAGES, INDEX_TYPE.
# Those it reads from the script: RUNS and the array T (median_runs, all_runs).

INDEX_TYPE="application/vnd.oci.image.index.v1+json"
declare -A PIDS=()   # name -> pid of the servers this script started (stopped on exit)
declare -A METRICS=()   # name -> Prometheus URL of a registry this script started

# --- setup ------------------------------------------------------------------------------------

# The scripts work from the repository root (target/, crates/). A wharf path given relative to
# the caller's directory is resolved before the cd so that it still works after it; without
# one, WHARF_BIN is the release build.
bench_init() { # script-args...
    if [ "$#" -gt 0 ]; then WHARF_ARG="$(readlink -m -- "$1")"; fi
    cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
    WHARF_BIN="${WHARF_ARG:-target/release/wharf}"
}

# Fails with a hint, before anything is started, when a command the script calls is missing.
need_tools() { # command...
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null || { echo "bench needs $c (run .ci/run to install)" >&2; exit 1; }
    done
}

# Creates the run's scratch directory TMP ($TMPDIR/PREFIX.XXXXXX) and makes sure that, however
# the script ends (error, ^C, kill), the servers it started are stopped and TMP is removed.
make_tmp() { # prefix
    TMP="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

cleanup() {
    local n
    for n in "${!PIDS[@]}"; do stop_server "$n"; done
    rm -rf "$TMP"
}

# Fails early rather than filling the disk halfway through: the scripts hold at most about five
# copies of their data (DATA_MIB) at once, plus some slack; each call says which copies.
check_space() { # data-mib
    local need_kib have_kib
    need_kib=$(( ($1 * 5 + 256) * 1024 ))
    have_kib="$(df -Pk "$TMP" | awk 'NR == 2 { print $4 }')"
    if [ "$have_kib" -lt "$need_kib" ]; then
        log "not enough space in $TMP: need $((need_kib / 1024)) MiB, have $((have_kib / 1024)) MiB"
        exit 1
    fi
}

# Builds the default wharf binary when it is missing; a path given on the command line is never
# built. Returns cargo's failure: each script decides whether it can go on without wharf.
build_wharf_if_missing() {
    [ ! -x "$WHARF_BIN" ] || return 0
    if [ -z "${WHARF_ARG:-}" ] && [ -f crates/wharf/Cargo.toml ]; then
        log "building wharf (cargo build --release -p wharf)..."
        cargo build --release -p wharf >&2
    fi
}

# The generator of the test images (OCI layouts of random layers) that copy.sh and sync.sh load
# into their source registry; built when missing.
MAKE_IMAGES="target/release/examples/make-images"
build_make_images_if_missing() {
    if [ ! -x "$MAKE_IMAGES" ]; then
        log "building the image generator (cargo build --release -p wharf-testkit --example make-images)..."
        cargo build --release -p wharf-testkit --example make-images >&2
    fi
}

# --- output and arithmetic --------------------------------------------------------------------

# Progress goes to stderr, so that stdout carries only the report.
log() { printf '%s\n' "$*" >&2; }
now() { date +%s.%N; }
# Seconds since T0 (a `now`), to 1/100 s.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# MB/s (1e6 bytes) of BYTES in SECONDS, rounded; n/a for no time.
mbps() { awk -v b="$1" -v t="$2" 'BEGIN { if (t > 0) printf "%.0f", b / t / 1e6; else print "n/a" }'; }
# The middle value (the mean of the two middle ones for an even count); n/a for none.
median() { # numbers...
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Repeated measurements are kept in associative arrays keyed "CASE RUN" (RUN = 1..$RUNS).
# The median of one case over the runs, leaving out runs without a value (or n/a).
median_runs() { # array case
    local arr="$1" key="$2" r v vals=()
    for r in $(seq 1 "$RUNS"); do
        eval "v=\"\${$arr[\"$key \$r\"]:-}\""
        [ -n "$v" ] && [ "$v" != n/a ] && vals+=("$v")
    done
    [ "${#vals[@]}" -gt 0 ] || { echo n/a; return; }
    median "${vals[@]}"
}

# Every run's seconds (array T) of one case, for the report's last column.
all_runs() { # case
    local r out=""
    for r in $(seq 1 "$RUNS"); do out+="${out:+ }${T["$1 $r"]:-n/a}"; done
    echo "$out"
}

# The first number named FIELD in a JSON file (wharf --json reports keep theirs at the top).
json_field() { # file field
    tr -d '\n' < "$1" | grep -o "\"$2\"[[:space:]]*:[[:space:]]*[0-9]*" | head -n 1 | grep -o '[0-9]*$'
}

# Runs a command under /usr/bin/time (peak RSS, CPU time) with its output in a file; sets SECS,
# RSS_MIB and CPU_S (user + system seconds; both n/a without /usr/bin/time). A failing command
# ends the script with its output's tail.
timed() { # logfile cmd...
    local logf="$1" t0; shift
    t0="$(now)"
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f '%M %U %S' -o "$logf.rss" "$@" > "$logf" 2> "$logf.err" || {
            log "failed: $*"; tail -n 30 "$logf" "$logf.err" >&2; exit 1; }
        RSS_MIB="$(awk '{ v = $1 } END { printf "%.0f", v / 1024 }' "$logf.rss")"
        CPU_S="$(awk '{ v = $2 + $3 } END { printf "%.2f", v }' "$logf.rss")"
    else
        "$@" > "$logf" 2> "$logf.err" || { log "failed: $*"; tail -n 30 "$logf" "$logf.err" >&2; exit 1; }
        RSS_MIB="n/a"; CPU_S="n/a"
    fi
    SECS="$(since "$t0")"
}

# CPU seconds (user + system) server NAME has used so far.
server_cpu() { # name
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/${PIDS[$1]}/stat"
}

# --- registries -------------------------------------------------------------------------------

# A random port nobody listens on right now (it can still be taken before the server binds it:
# start_registry retries).
free_port() {
    local p i
    for i in $(seq 1 100); do
        # $(free_port) runs in a subshell that inherits RANDOM's state: two calls in a row would
        # draw the same number without the subshell's own pid in the mix.
        p=$((20000 + (RANDOM + BASHPID * 7 + i) % 40000))
        if [ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; then echo "$p"; return; fi
    done
    log "no free port found"; exit 1
}

# Starts registry NAME on a free port of 127.0.0.1 with its storage, config and log in a fresh
# $TMP/NAME, records its pid in PIDS[NAME] and sets ADDR; does not wait for it to answer.
#   distribution: CNCF distribution 2.8 (Debian's docker-registry): filesystem storage, deletes
#                 on, no background upload purging, only errors logged; with
#                 BENCH_COUNT_REQUESTS=1 also Prometheus metrics on a second port (they cost
#                 distribution some CPU per request, so timing runs leave them off);
#   wharf:        `wharf serve` with its defaults, plus any further ARGS.
launch_registry() { # name kind [wharf-serve-args...]
    local name="$1" kind="$2" dir="$TMP/$1" port; shift 2
    rm -rf "$dir"; mkdir -p "$dir"
    port="$(free_port)"
    ADDR="127.0.0.1:$port"
    case "$kind" in
        distribution)
            local debug=""
            if [ "${BENCH_COUNT_REQUESTS:-0}" = 1 ]; then
                local debug_port; debug_port="$(free_port)"
                METRICS[$name]="http://127.0.0.1:$debug_port/metrics"
                debug="$(printf '  debug:\n    addr: 127.0.0.1:%s\n    prometheus:\n      enabled: true\n      path: /metrics' "$debug_port")"
            fi
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
$debug
EOF
            # distribution maps REGISTRY_* variables onto its config: keep them out.
            # shellcheck disable=SC2046 # one word per -u option, by design
            env $(env | awk -F= '/^REGISTRY_/ { printf "-u %s ", $1 }') \
                docker-registry serve "$dir/config.yml" > "$dir/log" 2>&1 &
            ;;
        wharf)
            METRICS[$name]="http://$ADDR/metrics"
            "$WHARF_BIN" serve --addr "$ADDR" --data-dir "$dir/data" "$@" > "$dir/log" 2>&1 & ;;
        *) log "unknown registry kind $kind"; exit 1 ;;
    esac
    PIDS[$name]=$!
}

# Starts nginx, one process, serving the files in $TMP/nginx/www on a free port of 127.0.0.1 (the
# reference for static files), with any further http-level directives; records its pid in
# PIDS[nginx] and sets NGINX_ADDR once it answers.
start_nginx() { # [http-directives]
    local d="$TMP/nginx" port
    port="$(free_port)"; mkdir -p "$d/www"
    cat > "$d/nginx.conf" <<EOT
daemon off; master_process off; pid $d/nginx.pid; error_log $d/error.log warn;
events { worker_connections 1024; }
http { access_log off; ${1:-} client_body_temp_path $d/b; proxy_temp_path $d/p; fastcgi_temp_path $d/f; uwsgi_temp_path $d/u; scgi_temp_path $d/s;
  server { listen 127.0.0.1:$port; root $d/www; } }
EOT
    nginx -p "$d" -c "$d/nginx.conf" > "$d/log" 2>&1 &
    PIDS[nginx]=$!
    NGINX_ADDR="127.0.0.1:$port"
    for _ in $(seq 1 50); do curl -s -o /dev/null "http://$NGINX_ADDR/" && return 0; sleep 0.1; done
    log "nginx did not answer on $NGINX_ADDR"; exit 1
}

# Waits up to 30 s for registry NAME to answer GET /v2/ with 200. Returns 2 when the process has
# exited (and is reaped), 1 on the timeout (it is left running, in PIDS, for the caller).
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

# launch_registry + wait_ready; a server that exits at start (most likely its port was taken
# meanwhile) is retried on another port, up to 5 times. Any other failure ends the script.
start_registry() { # name kind [wharf-serve-args...]
    local name="$1" attempt rc
    for attempt in 1 2 3 4 5; do
        launch_registry "$@"
        rc=0; wait_ready "$name" "$ADDR" || rc=$?
        [ "$rc" = 0 ] && return 0
        [ "$rc" != 2 ] || unset "PIDS[$name]"   # exited and reaped; a hung one stays for cleanup
        if [ "$rc" != 2 ] || [ "$attempt" = 5 ]; then
            log "$name did not start on $ADDR (attempt $attempt); its log:"; tail -n 30 "$TMP/$name/log" >&2; exit 1
        fi
        log "$name exited at start on $ADDR; trying another port"
    done
}

stop_server() { # name
    local pid="${PIDS[$1]:-}"
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        unset "PIDS[$1]"
    fi
}

# HTTP requests registry NAME has answered so far (its own Prometheus counters; the scrapes of
# this function are not among them: distribution serves them on its debug port, and Wharf counts
# /metrics as "other", left out here); n/a for distribution without BENCH_COUNT_REQUESTS=1.
requests_served() { # name
    [ -n "${METRICS[$1]:-}" ] || { echo n/a; return; }
    curl -sS --max-time 10 "${METRICS[$1]}" \
        | awk '/^(registry|wharf)_http_requests_total/ && !/endpoint="other"/ { s += $NF } END { print s + 0 }'
}

# Stops registry NAME and frees its storage (the next measurement gets a fresh one).
drop_registry() { # name
    stop_server "$1"
    rm -rf "${TMP:?}/$1"
}

# The digest a registry serves for REPO:TAG when asked for an OCI index: what a copy must keep.
index_digest() { # addr repo tag
    curl -sS -I --max-time 30 -H "Accept: $INDEX_TYPE" "http://$1/v2/$2/manifests/$3" \
        | awk 'tolower($1) == "docker-content-digest:" { print $2 }' | tr -d '\r'
}

# --- blob and manifest requests ---------------------------------------------------------------

# POST an upload, then PUT the whole file with ?digest=. Prints "HTTP_CODE SECONDS" of the PUT.
push_blob() { # addr repo file digest
    local addr="$1" repo="$2" file="$3" digest="$4" loc sep
    loc="$(curl -sS -o /dev/null -D - --max-time 30 -X POST "http://$addr/v2/$repo/blobs/uploads/" \
        | awk 'tolower($1) == "location:" { print $2 }' | tr -d '\r')"
    [ -n "$loc" ] || { log "upload POST to $addr answered no Location"; return 1; }
    case "$loc" in /*) loc="http://$addr$loc" ;; esac
    case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
    curl -sS -o /dev/null --max-time 900 -H 'Expect:' -H 'Content-Type: application/octet-stream' \
        -T "$file" -w '%{http_code} %{time_total}' "$loc${sep}digest=$digest"
}

push_manifest() { # addr repo tag file
    curl -sS -o /dev/null --max-time 30 -X PUT -H "Content-Type: $MANIFEST_TYPE" \
        --data-binary "@$4" -w '%{http_code}' "http://$1/v2/$2/manifests/$3"
}

vm() { awk -v k="$2:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; } # pid field → MiB

file_digest() { echo "sha256:$(openssl dgst -sha256 -r "$1" | cut -d' ' -f1)"; }
file_size() { stat -c %s "$1"; }

# A small single-platform image in $TMP/img: config.json, layer.tar.gz, manifest.json (OCI);
# sets cfg_digest and layer_digest.
MANIFEST_TYPE="application/vnd.oci.image.manifest.v1+json"
make_small_image() {
    mkdir -p "$TMP/img/rootfs"
    echo "wharf bench" > "$TMP/img/rootfs/hello"
    tar -C "$TMP/img/rootfs" --owner=0 --group=0 --mtime=@0 -cf "$TMP/img/layer.tar" hello
    gzip -n -c "$TMP/img/layer.tar" > "$TMP/img/layer.tar.gz"
    diff_id="sha256:$(openssl dgst -sha256 -r "$TMP/img/layer.tar" | cut -d' ' -f1)"
    printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
        "$diff_id" > "$TMP/img/config.json"
    cfg_digest="$(file_digest "$TMP/img/config.json")"
    layer_digest="$(file_digest "$TMP/img/layer.tar.gz")"
    printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
        "$MANIFEST_TYPE" "$cfg_digest" "$(file_size "$TMP/img/config.json")" \
        "$layer_digest" "$(file_size "$TMP/img/layer.tar.gz")" > "$TMP/img/manifest.json"
}

# One registry's figures, in arrays keyed by its name: push and pull of the blob
# $TMP/blob-NAME (digest DIGEST[NAME], BLOB_BYTES long), the server's RSS before and at its peak
# during the push, and wrk's manifest GETs of the small image for WRK_SECONDS.
declare -A PUSH PULL RPS RSS BASE_RSS NON2XX RSS_END

measure() { # name addr  (the registry started under that name)
    local name="$1" addr="$2" out code secs
    BASE_RSS[$name]="$(vm "${PIDS[$name]}" VmRSS)"
    log "[$name] pushing ${BLOB_MIB} MiB blob..."
    out="$(push_blob "$addr" bench "$TMP/blob-$name" "${DIGEST[$name]}")"
    read -r code secs <<<"$out"
    [ "$code" = 201 ] || { log "[$name] blob PUT answered $code"; return 1; }
    PUSH[$name]="$(mbps "$BLOB_BYTES" "$secs")"
    RSS[$name]="$(vm "${PIDS[$name]}" VmHWM)"

    log "[$name] pulling it..."
    out="$(curl -sS -L -o /dev/null --max-time 900 -w '%{http_code} %{time_total} %{size_download}' \
        "http://$addr/v2/bench/blobs/${DIGEST[$name]}")"
    read -r code secs size <<<"$out"
    [ "$code" = 200 ] && [ "$size" = "$BLOB_BYTES" ] \
        || { log "[$name] blob GET answered $code with $size bytes"; return 1; }
    PULL[$name]="$(mbps "$BLOB_BYTES" "$secs")"

    log "[$name] manifest GETs with wrk for ${WRK_SECONDS}s..."
    for f in config.json layer.tar.gz; do
        out="$(push_blob "$addr" bench "$TMP/img/$f" "$(file_digest "$TMP/img/$f")")"
        [ "${out%% *}" = 201 ] || { log "[$name] small blob PUT answered $out"; return 1; }
    done
    code="$(push_manifest "$addr" bench v1 "$TMP/img/manifest.json")"
    [ "$code" = 201 ] || { log "[$name] manifest PUT answered $code"; return 1; }
    out="$(timeout $((WRK_SECONDS + 30)) wrk -t2 -c32 -d"${WRK_SECONDS}s" --timeout 5s \
        -H "Accept: $MANIFEST_TYPE" "http://$addr/v2/bench/manifests/v1")"
    RPS[$name]="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")"
    NON2XX[$name]="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")"
    NON2XX[$name]="${NON2XX[$name]:-0}"
    # The peak over everything above: the push, the pull, and 32 connections of GETs.
    RSS_END[$name]="$(vm "${PIDS[$name]}" VmHWM)"
}

