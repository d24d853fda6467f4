#!/bin/sh
# Build Wharf's OCI image from scratch with buildah: the wharf binary, the shared libraries
# `ldd` lists for it (and the dynamic loader), an empty data directory. Nothing else: no shell,
# no package manager. TLS roots are compiled into the binary (rustls with webpki roots).
#
#   dist/build-image.sh BINARY [IMAGE] [DESTINATION]
#
#   BINARY       the wharf binary (target/release/wharf)
#   IMAGE        the local image name [default: localhost/wharf:latest]
#   DESTINATION  if given, `buildah push` the image there, e.g.
#                docker://registry.example.org/tools/wharf:1.0
#
# BUILDAH_OPTS is put before every buildah subcommand (e.g. private storage:
# "--storage-driver vfs --root DIR/root --runroot DIR/run"); PUSH_OPTS before the push's
# arguments (e.g. "--tls-verify=false" for a plain-HTTP registry).
#
# The image runs `wharf serve --addr 0.0.0.0:5000 --data-dir /var/lib/wharf` as uid 65532;
# mount a volume on /var/lib/wharf, and a config with `--config` after the image name.
set -eu

if [ $# -lt 1 ] || [ $# -gt 3 ]; then
    echo "usage: $0 BINARY [IMAGE] [DESTINATION]" >&2
    exit 2
fi
bin=$1
image=${2:-localhost/wharf:latest}
dest=${3:-}
[ -x "$bin" ] || { echo "$0: $bin is not an executable file" >&2; exit 1; }

b() {
    # shellcheck disable=SC2086 # BUILDAH_OPTS is a list of words
    buildah ${BUILDAH_OPTS:-} "$@"
}

work=$(mktemp -d)
ctr=
cleanup() {
    [ -n "$ctr" ] && b rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

ctr=$(b from --quiet scratch)
b copy --quiet "$ctr" "$bin" /wharf

# Every library the binary links, at the path the loader looks for it (symlinks resolved:
# the image holds the file under that name). `linux-vdso` is the kernel's and has no path.
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u >"$work/libs"
[ -s "$work/libs" ] || echo "$0: $bin links no shared library (static build)" >&2
while read -r lib; do
    b copy --quiet "$ctr" "$(readlink -f "$lib")" "$lib"
done <"$work/libs"

# /var/lib root's, the data directory the service user's, /tmp for anyone (sticky). As tar
# archives, which keep modes and owners exactly (buildah copy does not set a directory's mode).
mkdir -p "$work/root/tmp" "$work/root/var/lib/wharf"
chmod 0755 "$work/root/var" "$work/root/var/lib" "$work/root/var/lib/wharf"
chmod 1777 "$work/root/tmp"
tar -C "$work/root" --numeric-owner --owner=0 --group=0 --no-recursion -cf "$work/dirs.tar" tmp var var/lib
tar -C "$work/root" --numeric-owner --owner=65532 --group=65532 --no-recursion -cf "$work/data.tar" var/lib/wharf
b add --quiet "$ctr" "$work/dirs.tar" /
b add --quiet "$ctr" "$work/data.tar" /

b config \
    --entrypoint '["/wharf","serve"]' \
    --cmd '["--addr","0.0.0.0:5000","--data-dir","/var/lib/wharf"]' \
    --port 5000/tcp \
    --volume /var/lib/wharf \
    --workingdir /var/lib/wharf \
    --user 65532:65532 \
    --env WHARF_LOG=info \
    --label org.opencontainers.image.title=wharf \
    --label org.opencontainers.image.description="Wharf: a container registry and mirror that keeps multi-arch indexes intact" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    "$ctr"
b commit --quiet --format oci --rm "$ctr" "$image" >/dev/null
ctr=
echo "built $image" >&2

if [ -n "$dest" ]; then
    # shellcheck disable=SC2086
    b push --quiet ${PUSH_OPTS:-} "$image" "$dest"
    echo "pushed $image to $dest" >&2
fi
