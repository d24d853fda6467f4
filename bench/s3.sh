#!/usr/bin/env bash
# Blobs on S3: Wharf vs CNCF distribution 2.8 (its `s3` driver), both on one Garage, side by
# side on loopback, then manifest GETs through nginx with one and with two Wharf replicas.
#   - push of a fresh random blob (POST + PUT ?digest=), MB/s, and the server's peak RSS;
#   - pull of that blob, MB/s (distribution with `redirect: disable`, Wharf without redirect:
#     both stream the bytes themselves);
#   - GET of a small image manifest with wrk (-t2 -c32), requests/s;
#   - through nginx round-robin: one replica, then two (PostgreSQL metadata, the same bucket).
#
# usage: bench/s3.sh [path-to-wharf-binary]
# env:   BENCH_BLOB_MIB (default 512), BENCH_WRK_SECONDS (default 10), TMPDIR,
#        WHARF_GARAGE (default: garage on PATH or /opt/wharf-tools/garage-2.5.0/bin/garage)
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
bench_init "$@"

BLOB_MIB="${BENCH_BLOB_MIB:-512}"
WRK_SECONDS="${BENCH_WRK_SECONDS:-10}"
BLOB_BYTES=$((BLOB_MIB * 1024 * 1024))
GARAGE="${WHARF_GARAGE:-$(command -v garage || echo /opt/wharf-tools/garage-2.5.0/bin/garage)}"
[ -x "$GARAGE" ] || { echo "bench needs garage (run .ci/run to install)" >&2; exit 1; }
need_tools docker-registry curl wrk openssl awk ss nginx psql
make_tmp wharf-s3-bench
check_space "$BLOB_MIB"
build_wharf_if_missing
make_small_image

# --- Garage: one node, buckets for each registry ----------------------------------------------
S3_PORT="$(free_port)"; RPC_PORT="$(free_port)"
mkdir -p "$TMP/garage"
cat > "$TMP/garage/garage.toml" <<EOT
metadata_dir = "$TMP/garage/meta"
data_dir = "$TMP/garage/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"
EOT
g() { RUST_LOG=error "$GARAGE" -c "$TMP/garage/garage.toml" "$@"; }
RUST_LOG=warn "$GARAGE" -c "$TMP/garage/garage.toml" server > "$TMP/garage/log" 2>&1 &
PIDS[garage]=$!
for _ in $(seq 1 100); do g status >/dev/null 2>&1 && break; sleep 0.2; done
node="$(g node id -q | cut -d@ -f1)"
g layout assign -z dc1 -c 10G "$node" >/dev/null
g layout apply --version 1 >/dev/null
key_json="$(g json-api CreateKey '{"name":"bench"}')"
KEY_ID="$(sed -n 's/.*"accessKeyId": *"\([^"]*\)".*/\1/p' <<<"$key_json" | head -n 1)"
KEY_SECRET="$(sed -n 's/.*"secretAccessKey": *"\([^"]*\)".*/\1/p' <<<"$key_json" | head -n 1)"
for b in distribution wharf; do
    g bucket create "$b" >/dev/null
    g bucket allow --read --write --owner "$b" --key "$KEY_ID" >/dev/null
done
ENDPOINT="http://127.0.0.1:$S3_PORT"
log "garage on $ENDPOINT"

wharf_storage() { # bucket prefix
    printf '[storage]\nkind = "s3"\nbucket = "%s"\nendpoint = "%s"\nregion = "garage"\nprefix = "%s"\naccess_key_id = "%s"\nsecret_access_key = "%s"\n' \
        "$1" "$ENDPOINT" "$2" "$KEY_ID" "$KEY_SECRET"
}

declare -A DIGEST
for n in distribution wharf; do
    head -c "$BLOB_BYTES" /dev/urandom > "$TMP/blob-$n"
    DIGEST[$n]="$(file_digest "$TMP/blob-$n")"
done

# --- distribution 2.8 on S3 --------------------------------------------------------------------
DIST_PORT="$(free_port)"; mkdir -p "$TMP/distribution"
cat > "$TMP/distribution/config.yml" <<EOT
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  s3:
    accesskey: $KEY_ID
    secretkey: $KEY_SECRET
    region: garage
    regionendpoint: $ENDPOINT
    bucket: distribution
    secure: false
    v4auth: true
    rootdirectory: /registry
  delete:
    enabled: true
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$DIST_PORT
  secret: wharf-bench
EOT
# shellcheck disable=SC2046
env $(env | awk -F= '/^REGISTRY_/ { printf "-u %s ", $1 }') \
    env -u AWS_CA_BUNDLE docker-registry serve "$TMP/distribution/config.yml" > "$TMP/distribution/log" 2>&1 &
PIDS[distribution]=$!
wait_ready distribution "127.0.0.1:$DIST_PORT" || { cat "$TMP/distribution/log" >&2; exit 1; }
measure distribution "127.0.0.1:$DIST_PORT"
stop_server distribution
rm -f "$TMP/blob-distribution"

# --- wharf on S3 (SQLite metadata: one replica) ------------------------------------------------
# (launch_registry gives each server a fresh $TMP/NAME: configs live beside it)
wharf_storage wharf single > "$TMP/wharf.toml"
start_registry wharf wharf --config "$TMP/wharf.toml"
measure wharf "$ADDR"
stop_server wharf
rm -f "$TMP/blob-wharf"

# --- manifest GETs through nginx: one, then two replicas on PostgreSQL ------------------------
DB="wharf_bench_$$"
psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $DB" >/dev/null
trap 'cleanup; psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
{ echo "database = \"postgres://postgres@127.0.0.1:5432/$DB\""; wharf_storage wharf replicas; } > "$TMP/replica.toml"
declare -A LB_RPS
REPLICA_ADDRS=()
for i in 1 2; do
    start_registry "replica$i" wharf --config "$TMP/replica.toml"
    REPLICA_ADDRS+=("$ADDR")
done
# Load the small image once, through the first replica.
for f in config.json layer.tar.gz; do
    out="$(push_blob "${REPLICA_ADDRS[0]}" bench "$TMP/img/$f" "$(file_digest "$TMP/img/$f")")"
    [ "${out%% *}" = 201 ] || { log "small blob PUT answered $out"; exit 1; }
done
[ "$(push_manifest "${REPLICA_ADDRS[0]}" bench v1 "$TMP/img/manifest.json")" = 201 ] || { log "manifest PUT failed"; exit 1; }
for count in 1 2; do
    port="$(free_port)"; d="$TMP/nginx$count"; mkdir -p "$d"
    servers=""
    for a in "${REPLICA_ADDRS[@]:0:$count}"; do servers+="server $a max_fails=0; "; done
    cat > "$d/nginx.conf" <<EOT
daemon off; worker_processes 2; pid $d/nginx.pid; error_log $d/error.log warn;
$( [ "$(id -u)" = 0 ] && echo "user root;" )
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $d/body; proxy_temp_path $d/proxy; fastcgi_temp_path $d/f; uwsgi_temp_path $d/u; scgi_temp_path $d/s;
  upstream wharf { $servers keepalive 64; }
  server {
    listen 127.0.0.1:$port;
    client_max_body_size 0; proxy_request_buffering off; proxy_buffering off;
    proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$http_host;
    location / { proxy_pass http://wharf; }
  }
}
EOT
    nginx -p "$d" -c "$d/nginx.conf" > "$d/log" 2>&1 &
    PIDS[nginx$count]=$!
    for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$port/v2/" && break; sleep 0.1; done
    out="$(timeout $((WRK_SECONDS + 30)) wrk -t2 -c32 -d"${WRK_SECONDS}s" --timeout 5s \
        -H "Accept: $MANIFEST_TYPE" "http://127.0.0.1:$port/v2/bench/manifests/v1")"
    LB_RPS[$count]="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")"
    stop_server "nginx$count"
done

# --- report -----------------------------------------------------------------------------------
printf '\nS3 benchmark (Garage 2.5, one node), %s MiB blob, loopback, %s cores, %s\n\n' "$BLOB_MIB" "$(nproc)" "$(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-36s%18s%18s\n' metric distribution wharf
for pair in "blob push (MB/s):PUSH" "blob pull (MB/s):PULL" "manifest GET (req/s, wrk -t2 -c32):RPS" \
            "  non-2xx responses:NON2XX" "peak RSS during push (MiB):RSS" "RSS before push (MiB):BASE_RSS"; do
    label="${pair%%:*}"; arr="${pair##*:}"
    eval "printf '%-36s%18s%18s\n' \"\$label\" \"\${$arr[distribution]}\" \"\${$arr[wharf]}\""
done
printf '\nmanifest GET through nginx (PostgreSQL + S3): 1 replica %s req/s, 2 replicas %s req/s\n' \
    "${LB_RPS[1]}" "${LB_RPS[2]}"
