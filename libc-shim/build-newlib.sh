#!/bin/bash
# Builds newlib (from Debian's newlib-source) for a freestanding x86_64 target with the host gcc,
# once, into the build tree. Usage: build-newlib.sh BUILD_DIR
# Output: BUILD_DIR/newlib/install/x86_64-elf/{include,lib}
set -euo pipefail
out=$(realpath -m "${1:?usage: build-newlib.sh BUILD_DIR}")/newlib
stamp="$out/install/.built"
[ -f "$stamp" ] && exit 0
tarball=$(ls /usr/src/newlib/newlib-*.tar.* 2>/dev/null | head -1 || true)
if [ -z "$tarball" ]; then
  echo "build-newlib: no newlib tarball in /usr/src/newlib (install Debian's newlib-source)" >&2
  exit 1
fi
rm -rf "$out/src" "$out/obj" "$out/install"
mkdir -p "$out/src" "$out/obj" "$out/install"
echo "build-newlib: unpacking $tarball"
tar -xf "$tarball" -C "$out/src"
srcdir=$(find "$out/src" -mindepth 1 -maxdepth 1 -type d | head -1)  # newlib-salsa/
# Freestanding, no PIC, no red zone (interrupts run on the same stack), and the underscore
# syscall names (_write, _sbrk, ...) that libc-shim/ provides.
flags="-O2 -g -ffreestanding -fno-pic -fno-pie -mno-red-zone -fno-stack-protector -UMISSING_SYSCALL_NAMES -DMALLOC_PROVIDED"
cd "$out/obj"
echo "build-newlib: configuring (log: $out/build.log)"
CC_FOR_TARGET=gcc AR_FOR_TARGET=ar AS_FOR_TARGET=as LD_FOR_TARGET=ld RANLIB_FOR_TARGET=ranlib \
  NM_FOR_TARGET=nm OBJDUMP_FOR_TARGET=objdump \
  CFLAGS_FOR_TARGET="$flags" \
  "$srcdir/configure" --target=x86_64-elf --prefix="$out/install" \
  --disable-newlib-supplied-syscalls --disable-multilib --disable-libgloss \
  --disable-nls --enable-newlib-io-long-long --enable-newlib-io-c99-formats \
  --disable-newlib-multithread >"$out/build.log" 2>&1
echo "build-newlib: building with $(nproc) jobs"
make -j"$(nproc)" all-target-newlib >>"$out/build.log" 2>&1 || { tail -30 "$out/build.log" >&2; exit 1; }
make install-target-newlib >>"$out/build.log" 2>&1 || { tail -30 "$out/build.log" >&2; exit 1; }
touch "$stamp"
echo "build-newlib: done"
