#!/bin/bash
# Boots blimp in QEMU with sane defaults and leaves with the app's exit status.
#
#   image/run.sh [options] [app-args...] [-- extra QEMU arguments]
#     --app NAME        app to run (default: hello)
#     --machine M       microvm (default), q35 or pc
#     --memory SIZE     guest RAM (default: 256M)
#     --accel A         tcg (default here), kvm, or auto (kvm when real hardware KVM is present)
#     --iso             boot build/blimp.iso through GRUB instead of -kernel (q35/pc only)
#     --build DIR       build directory (default: build)
#     --timeout SECS    kill QEMU after this long (default: 300)
#   Example: image/run.sh --app hello --machine q35 greeting=hi -- -device virtio-balloon-pci
#
# Exit status: the app's status; 124 if QEMU timed out; 125 if the guest faulted or panicked.
set -euo pipefail
app=hello machine=microvm memory=256M accel=tcg iso=0 build=build limit=300
app_args=() qemu_extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --app) app=$2; shift 2 ;;
    --machine) machine=$2; shift 2 ;;
    --memory) memory=$2; shift 2 ;;
    --accel) accel=$2; shift 2 ;;
    --iso) iso=1; shift ;;
    --build) build=$2; shift 2 ;;
    --timeout) limit=$2; shift 2 ;;
    --) shift; qemu_extra=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) app_args+=("$1"); shift ;;
  esac
done

kvm_usable() {
  [ -w /dev/kvm ] || { echo "no writable /dev/kvm"; return 1; }
  if grep -q '^kvm_pvm ' /proc/modules 2>/dev/null; then
    echo "/dev/kvm is kvm_pvm, a software nested hypervisor (ring-0 code is emulated and slower than TCG)"
    return 1
  fi
  return 0
}
case "$accel" in
  auto) if why=$(kvm_usable); then accel=kvm; else echo "run.sh: using TCG: $why" >&2; accel=tcg; fi ;;
  kvm) if ! why=$(kvm_usable); then echo "run.sh: warning: $why" >&2; fi ;;
  tcg) ;;
  *) echo "run.sh: --accel must be tcg, kvm or auto" >&2; exit 2 ;;
esac

qemu=(qemu-system-x86_64 -accel "$accel" -m "$memory" -display none -serial stdio -no-reboot
      -device isa-debug-exit,iobase=0xf4,iosize=0x04)
case "$machine" in
  microvm) qemu+=(-M microvm) ;;
  q35|pc) qemu+=(-M "$machine")
          [ "$iso" = 1 ] || qemu+=(-bios /usr/share/qemu/qboot.rom) ;;  # boots PVH in milliseconds
  *) echo "run.sh: unknown machine '$machine' (microvm, q35, pc)" >&2; exit 2 ;;
esac
if [ "$iso" = 1 ]; then
  [ "$machine" != microvm ] || { echo "run.sh: --iso needs --machine q35 or pc" >&2; exit 2; }
  [ -f "$build/blimp.iso" ] || { echo "run.sh: $build/blimp.iso not found (make build)" >&2; exit 2; }
  [ "$app" = hello ] && [ ${#app_args[@]} -eq 0 ] ||
    echo "run.sh: note: the ISO's GRUB menu fixes the command line to app=hello" >&2
  qemu+=(-cdrom "$build/blimp.iso")
else
  [ -f "$build/blimp.elf" ] || { echo "run.sh: $build/blimp.elf not found (make build)" >&2; exit 2; }
  qemu+=(-kernel "$build/blimp.elf" -append "app=$app ${app_args[*]}")
fi

set +e
timeout --foreground "$limit" "${qemu[@]}" "${qemu_extra[@]}"
rc=$?
set -e
if [ $rc -eq 124 ]; then echo "run.sh: QEMU killed after ${limit}s" >&2; exit 124; fi
# isa-debug-exit: QEMU's status is (app status << 1) | 1. Anything even is QEMU's own.
if [ $((rc & 1)) -eq 1 ]; then exit $((rc >> 1)); fi
echo "run.sh: QEMU exited with $rc without the guest reporting a status" >&2
exit $((rc == 0 ? 0 : 126))
