#!/usr/bin/env bash
# Builds a small two-layer OCI image layout from the host's static busybox, offline, with umoci.
#
#   scripts/busybox-image.sh OUT_LAYOUT_DIR [TAG]      (TAG defaults to "latest")
#
# Layer 1: /bin/busybox plus one symlink per applet (`busybox --list`), /etc/passwd and /etc/group
#          (root + nobody), /tmp (1777), /www/index.html and /www/old.html.
# Layer 2: removes /www/old.html (an OCI whiteout `www/.wh.old.html`) and adds /etc/motd.
# Config:  Env PATH=/usr/sbin:/usr/bin:/sbin:/bin, Cmd ["sh"], WorkingDir /.
#
# The layout can be pushed to a local registry with
#   skopeo copy --dest-tls-verify=false oci:OUT_LAYOUT_DIR:TAG docker://127.0.0.1:PORT/library/busybox:TAG
# Needs: umoci, a static busybox (Debian's busybox-static: /usr/bin/busybox, override with $BUSYBOX), root
# (umoci keeps file ownership). If OUT_LAYOUT_DIR already is an OCI layout the image is added under TAG.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 OUT_LAYOUT_DIR [TAG]" >&2
    exit 2
fi
out=$1
tag=${2:-latest}
busybox=${BUSYBOX:-/usr/bin/busybox}

command -v umoci >/dev/null || { echo "$0: umoci is not installed" >&2; exit 1; }
[ -x "$busybox" ] || { echo "$0: $busybox not found (apt-get install busybox-static)" >&2; exit 1; }
if ldd "$busybox" >/dev/null 2>&1; then
    echo "$0: $busybox is dynamically linked; a static busybox is needed" >&2
    exit 1
fi

case $(uname -m) in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    armv7l) arch=arm ;;
    *) arch=$(uname -m) ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/busybox-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ ! -f "$out/oci-layout" ]; then
    mkdir -p "$(dirname "$out")"
    umoci init --layout "$out"
fi
image="$out:$tag"

# Layer 1: busybox and its applets.
umoci new --image "$image"
umoci unpack --image "$image" "$work/b1" >/dev/null
root1=$work/b1/rootfs
mkdir -p "$root1"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,www,root,proc,sys,dev}
chmod 1777 "$root1/tmp"
chmod 700 "$root1/root"
install -m 0755 "$busybox" "$root1/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$root1/bin/$applet" ] || ln -s busybox "$root1/bin/$applet"
done
cat > "$root1/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$root1/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo "hello from the skiff busybox image" > "$root1/www/index.html"
echo "this file is removed by the second layer" > "$root1/www/old.html"
umoci repack --image "$image" "$work/b1" >/dev/null

umoci config --image "$image" \
    --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    --config.cmd sh \
    --config.workingdir / \
    --os linux --architecture "$arch" >/dev/null

# Layer 2: a whiteout and a new file.
umoci unpack --image "$image" "$work/b2" >/dev/null
rm "$work/b2/rootfs/www/old.html"
echo "welcome to skiff (layer 2)" > "$work/b2/rootfs/etc/motd"
umoci repack --image "$image" "$work/b2" >/dev/null

umoci gc --layout "$out"
echo "built $image"
