#!/usr/bin/env bash
# Build the anchor Linux guest: Debian 12's own kernel + its virtio_balloon module + busybox,
# in a small initramfs whose /init loads the modules by hand and runs a workload.
#
#   image/linux/build.sh BUILD_DIR
#     -> BUILD_DIR/linux-guest/vmlinuz
#     -> BUILD_DIR/linux-guest/initramfs.cpio.gz
#     -> BUILD_DIR/linux-guest/KERNEL_VERSION
#
# Only Debian's apt is used (apt-get download: the real linux-image-amd64 dependency and
# busybox-static). Idempotent: does nothing if the outputs exist and this script and init are
# unchanged (stamp).
set -euo pipefail

BUILD_DIR=${1:-build}
mkdir -p "$BUILD_DIR"
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
OUT="$BUILD_DIR/linux-guest"
DL="$OUT/debs"
log() { echo "[linux-guest] $*"; }
SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo

STAMP=$(cat "$HERE/build.sh" "$HERE/init" "$HERE/pstate_hammer.c" "$HERE/mm_scale.c" | sha256sum | cut -d' ' -f1)
if [[ -f "$OUT/vmlinuz" && -f "$OUT/initramfs.cpio.gz" && "$(cat "$OUT/stamp" 2>/dev/null)" == "$STAMP" ]]; then
    log "up to date ($OUT)"
    exit 0
fi
if ! command -v cpio >/dev/null; then
    log "installing cpio with apt"
    ${SUDO:-} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio >/dev/null
fi
for tool in cpio gzip dpkg-deb apt-get; do
    command -v $tool >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
mkdir -p "$DL"
cd "$DL"

# The meta package names the real kernel package; download that one.
if ! ls linux-image-amd64_*.deb >/dev/null 2>&1; then
    log "apt-get download linux-image-amd64"
    apt-get download -qq linux-image-amd64 2>/dev/null || apt-get download linux-image-amd64
fi
meta=$(ls linux-image-amd64_*.deb | head -1)
kpkg=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | grep -oE 'linux-image-[0-9][^ ]*' | head -1)
[[ -n "$kpkg" ]] || { echo "cannot find the kernel package behind $meta" >&2; exit 1; }
if ! ls "${kpkg}"_*.deb >/dev/null 2>&1; then
    log "apt-get download $kpkg"
    apt-get download -qq "$kpkg" 2>/dev/null || apt-get download "$kpkg"
fi
if ! ls busybox-static_*.deb >/dev/null 2>&1; then
    log "apt-get download busybox-static"
    apt-get download -qq busybox-static 2>/dev/null || apt-get download busybox-static
fi
kdeb=$(ls "${kpkg}"_*.deb | head -1)
bdeb=$(ls busybox-static_*.deb | head -1)

X="$OUT/extract"
rm -rf "$X" && mkdir -p "$X/k" "$X/b"
log "extracting $(basename "$kdeb")"
dpkg-deb -x "$kdeb" "$X/k"
dpkg-deb -x "$bdeb" "$X/b"
KVER=$(ls "$X/k/lib/modules" | head -1)
MODDIR="$X/k/lib/modules/$KVER"

# Resolve the module list (+ dependencies, in load order) from modules.dep when present,
# otherwise from each module's depends= modinfo field.
declare -A seen=()
order=()
moddep() {  # path of module (relative to MODDIR) for a name
    find "$MODDIR/kernel" -name "$1.ko*" | head -1 | sed "s#^$MODDIR/##"
}
deps_of() {
    local rel=$1 line
    if [[ -f "$MODDIR/modules.dep" ]]; then
        line=$(grep -E "^$rel:" "$MODDIR/modules.dep" | cut -d: -f2-)
        for d in $line; do echo "$d"; done
    else
        local dl
        dl=$(strings "$MODDIR/$rel" | grep -E '^depends=' | head -1 | cut -d= -f2 | tr ',' ' ')
        for d in $dl; do moddep "$d"; done
    fi
}
add_mod() {
    local rel=$1
    [[ -n "${seen[$rel]:-}" ]] && return
    seen[$rel]=1
    # modules.dep lists all deps transitively; recurse anyway for the fallback path.
    for d in $(deps_of "$rel" | tac); do add_mod "$d"; done
    order+=("$rel")
}
for m in virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio virtio_balloon; do
    rel=$(moddep "$m")
    if [[ -z "$rel" ]]; then
        # built in (=y) in this kernel: nothing to load
        grep -qE "/$m.ko" "$MODDIR/modules.builtin" 2>/dev/null && log "$m is built in" || log "$m not found (built in?)"
        continue
    fi
    add_mod "$rel"
done

R="$X/root"
mkdir -p "$R"/{bin,sbin,proc,sys,dev,tmp,etc,lib/modules,root}
cp "$X/b/bin/busybox" "$R/bin/busybox"
for a in sh mount umount insmod cat echo sleep dd rm free grep awk sync poweroff reboot mkdir \
         ls head tail tr cut sed seq date uname mknod; do
    ln -sf busybox "$R/bin/$a"
done
: > "$R/lib/modules/load-order"
for rel in "${order[@]}"; do
    base=$(basename "$rel")
    case "$base" in
        *.ko.xz) xz -dc "$MODDIR/$rel" > "$R/lib/modules/${base%.xz}"; base=${base%.xz} ;;
        *.ko.zst) zstd -qdc "$MODDIR/$rel" > "$R/lib/modules/${base%.zst}"; base=${base%.zst} ;;
        *) cp "$MODDIR/$rel" "$R/lib/modules/$base" ;;
    esac
    echo "$base" >> "$R/lib/modules/load-order"
done
log "modules: $(tr '\n' ' ' < "$R/lib/modules/load-order")"
install -m 755 "$HERE/init" "$R/init"
# The page-state protocol hammer (guest half, via /dev/mem), static so it needs no libc.
if command -v gcc >/dev/null && gcc -static -O2 -Wall -o "$R/bin/pstate-hammer" \
        "$HERE/pstate_hammer.c" 2>"$X/hammer.log"; then
    log "built pstate-hammer"
else
    log "pstate-hammer not built (no gcc / static libc): $(head -3 "$X/hammer.log" 2>/dev/null)"
fi
# The allocator scaling anchor (bench/mm/smp_scaling.py), static for the same reason.
if command -v gcc >/dev/null && gcc -static -O2 -Wall -o "$R/bin/mm-scale" \
        "$HERE/mm_scale.c" 2>"$X/mm-scale.log"; then
    log "built mm-scale"
else
    log "mm-scale not built (no gcc / static libc): $(head -3 "$X/mm-scale.log" 2>/dev/null)"
fi
echo "$KVER" > "$R/etc/kernel-version"

cp "$X/k/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) > "$OUT/initramfs.cpio.gz"
echo "$KVER" > "$OUT/KERNEL_VERSION"
rm -rf "$X"
echo "$STAMP" > "$OUT/stamp"
log "done: $OUT/vmlinuz ($KVER), $OUT/initramfs.cpio.gz ($(du -k "$OUT/initramfs.cpio.gz" | cut -f1) KiB)"
