#!/usr/bin/env bash
# Build Blimp's patched QEMU from Debian 12's QEMU 7.2 source.
#
#   host/qemu/build.sh BUILD_DIR        -> BUILD_DIR/qemu/qemu-system-x86_64
#
# Steps (each printed):
#   1. install the build dependencies with apt when missing;
#   2. `apt-get source qemu` once into BUILD_DIR/qemu/src through scripts/deb-source.sh (which
#      first adds a deb-src entry mirroring the configured Debian suites when apt has none;
#      Debian's own patches applied by dpkg-source), kept pristine as BUILD_DIR/qemu/src/pristine;
#   3. apply host/qemu/patches in `series` order to a work tree (only files touched by the
#      previous or current series are restored from pristine, so rebuilds are incremental);
#   4. configure (once) and ninja-build qemu-system-x86_64.
# Idempotent: a stamp holds the sha256 of series + patches + the extra sources + this script;
# nothing happens when it matches and the binary exists. Set JOBS to change -j (default 2).
set -euo pipefail

BUILD_DIR=${1:-build}
mkdir -p "$BUILD_DIR"
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
OUT="$BUILD_DIR/qemu"
SRC="$OUT/src"
JOBS=${JOBS:-2}
log() { echo "[qemu-build] $*"; }

mkdir -p "$OUT"

# ---- stamp -------------------------------------------------------------------------------
series_hash() {
    (
        cd "$HERE"
        cat series
        while read -r p; do
            case "$p" in ''|'#'*) continue ;; esac
            cat "patches/$p"
        done < series
        cat blimp-balloon-decode.c blimp-balloon-decode.h build.sh 2>/dev/null || true
    ) | sha256sum | cut -d' ' -f1
}
HASH=$(series_hash)
if [[ -x "$OUT/qemu-system-x86_64" && -f "$OUT/stamp" && "$(cat "$OUT/stamp")" == "$HASH" ]]; then
    log "up to date ($OUT/qemu-system-x86_64, series ${HASH:0:12})"
    exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# ---- 1. build deps -----------------------------------------------------------------------
DEPS=(libglib2.0-dev libpixman-1-dev libfdt-dev meson ninja-build dpkg-dev pkg-config
      python3 gcc make flex bison zlib1g-dev libseccomp-dev)
missing=()
for d in "${DEPS[@]}"; do
    dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d")
done
if ((${#missing[@]})); then
    log "installing build deps: ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# ---- 2. source (scripts/deb-source.sh adds a deb-src entry to apt when there is none) -------
mkdir -p "$SRC"
if [[ ! -d "$SRC/pristine" ]]; then
    log "apt-get source qemu (into $SRC)"
    d=$("$HERE/../../scripts/deb-source.sh" qemu "$SRC")
    mv "$d" "$SRC/pristine"
fi

# ---- 3. patch ----------------------------------------------------------------------------
WORK="$SRC/work"
touched_files() {   # files named in a list of patch files (the +++ side), one per line
    for p in "$@"; do
        [[ -f "$p" ]] && grep -E '^\+\+\+ ' "$p" | awk '{print $2}' | sed -E 's#^[ab]/##'
    done | sort -u
}
if [[ ! -d "$WORK" ]]; then
    log "creating work tree from pristine source"
    cp -a "$SRC/pristine" "$WORK"
    # Debian's orig tarball strips the prebuilt edk2 firmware; do not let meson unpack it.
    sed -i -E 's/^([[:space:]]*)unpack_edk2_blobs = bzip2\.found\(\)/\1unpack_edk2_blobs = false/' \
        "$WORK/meson.build"
    mkdir -p "$SRC/applied"
fi
grep -q 'unpack_edk2_blobs = false' "$WORK/meson.build" || {
    echo "could not disable edk2 blob unpacking in meson.build" >&2; exit 1; }

mapfile -t NEW_PATCHES < <(grep -vE '^[[:space:]]*(#|$)' "$HERE/series" | sed "s#^#$HERE/patches/#")
mapfile -t OLD_PATCHES < <(ls "$SRC/applied"/*.patch 2>/dev/null || true)
mapfile -t FILES < <(touched_files "${OLD_PATCHES[@]}" "${NEW_PATCHES[@]}")
for f in "${FILES[@]}"; do
    [[ -n "$f" ]] || continue
    if [[ -f "$SRC/pristine/$f" ]]; then
        cp "$SRC/pristine/$f" "$WORK/$f"         # fresh mtime: ninja recompiles it
    else
        rm -f "$WORK/$f"                          # created by a patch
    fi
done
rm -f "$SRC/applied"/*.patch
for p in "${NEW_PATCHES[@]}"; do
    log "applying $(basename "$p")"
    patch -d "$WORK" -p1 --quiet --forward --no-backup-if-mismatch < "$p"
    cp "$p" "$SRC/applied/"
done

# The guest-input decoders live in host/qemu/ (shared with tests/fuzz/); copy them into the
# tree, only when they differ so ninja does not rebuild needlessly.
for f in blimp-balloon-decode.c blimp-balloon-decode.h; do
    cmp -s "$HERE/$f" "$WORK/hw/virtio/$f" || cp "$HERE/$f" "$WORK/hw/virtio/$f"
done

# ---- 4. configure + build ----------------------------------------------------------------
BLD="$SRC/build"
# Firmware (SeaBIOS, option ROMs) comes from Debian's packages, as for the stock binary.
CONF_ARGS=(--target-list=x86_64-softmmu --without-default-features --enable-tcg --enable-kvm
           --enable-fdt=system --enable-seccomp --disable-docs --disable-install-blobs --disable-werror
           --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu)
if [[ ! -f "$BLD/build.ninja" || "$(cat "$BLD/configure.args" 2>/dev/null)" != "${CONF_ARGS[*]}" ]]; then
    log "configure ${CONF_ARGS[*]}"
    rm -rf "$BLD"
    mkdir -p "$BLD"
    (cd "$BLD" && "$WORK/configure" "${CONF_ARGS[@]}" >"$BLD/configure.log" 2>&1) || {
        tail -40 "$BLD/configure.log" >&2; echo "configure failed" >&2; exit 1; }
    echo "${CONF_ARGS[*]}" > "$BLD/configure.args"
fi
log "ninja -j$JOBS qemu-system-x86_64 (a clean build takes a few minutes on 2 cores)"
start=$(date +%s)
ninja -C "$BLD" -j"$JOBS" qemu-system-x86_64 | \
    awk '/^\[[0-9]+\/[0-9]+\]/ { n++; if (n % 200 == 0) print "[qemu-build]  " $1; next }
         { print (length($0) > 300 ? substr($0, 1, 300) " ..." : $0) }'
test "${PIPESTATUS[0]}" -eq 0
log "built in $(( $(date +%s) - start ))s"
cp "$BLD/qemu-system-x86_64" "$OUT/qemu-system-x86_64.tmp"
mv "$OUT/qemu-system-x86_64.tmp" "$OUT/qemu-system-x86_64"
echo "$HASH" > "$OUT/stamp"
log "done: $OUT/qemu-system-x86_64 (series ${HASH:0:12})"
