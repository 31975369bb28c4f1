#!/bin/bash
# make-iso.sh KERNEL OUTPUT: a BIOS-bootable GRUB (multiboot2) ISO holding the kernel.
set -euo pipefail
kernel=$1 out=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/boot/grub"
cp "$kernel" "$dir/boot/blimp.elf"
cp "$(dirname "$0")/grub.cfg" "$dir/boot/grub/grub.cfg"
grub-mkrescue -o "$out" "$dir" >"$dir.log" 2>&1 || { cat "$dir.log" >&2; rm -f "$dir.log"; exit 1; }
rm -f "$dir.log"
