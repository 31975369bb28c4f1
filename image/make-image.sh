#!/bin/bash
# make-image.sh: a BIOS-bootable GRUB (multiboot2) image of blimp, for hypervisors that boot a
# disk or a CD and cannot pass a kernel command line (vmd, VirtualBox, a plain `-hda`).
#
#   make-image.sh --app memhog --args "steps=alloc:64M,check:all" --format raw --out memhog.img
#   make-image.sh --menu --format iso --out blimp.iso      # what the build makes (build/blimp.iso)
#
#   --app NAME        the app the image runs (checked against the apps linked into the kernel)
#   --args "WORDS"    its arguments, as on the kernel command line (words split on spaces; a word
#                     may not hold a quote or a backslash)
#   --menu            instead of --app: a GRUB menu listing every app linked into the kernel
#                     (image/list-apps.py reads them from the image), hello the default entry
#   --timeout SEC     the menu's timeout (default 3; an --app image boots at once)
#   --format iso|raw  iso (default): a CD image (-cdrom, vmctl start -r, a VirtualBox DVD);
#                     raw: a disk image (-drive format=raw, vmctl start -d, VBoxManage
#                     convertfromraw). Both are the same hybrid image grub-mkrescue makes (El
#                     Torito for a CD, an MBR with GRUB's boot code for a disk); raw is padded to a
#                     whole MiB, the size unit disk tools expect.
#   --kernel FILE     the kernel (default build/blimp.elf)
#   --out FILE        the image to write
#
# Needs grub-mkrescue with the i386-pc platform, xorriso and mtools (Debian: grub-pc-bin
# grub-common xorriso mtools); no loop devices, no root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kernel=$here/../build/blimp.elf app="" args="" menu=0 format=iso out="" timeout=3

die() { echo "make-image.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --app) app=${2?}; shift 2 ;;
    --args) args=${2?}; shift 2 ;;
    --menu) menu=1; shift ;;
    --timeout) timeout=${2?}; shift 2 ;;
    --format) format=${2?}; shift 2 ;;
    --kernel) kernel=${2?}; shift 2 ;;
    --out) out=${2?}; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (--help)" ;;
  esac
done
[ -n "$out" ] || die "--out FILE is required"
[ -f "$kernel" ] || die "kernel $kernel not found (make build, or --kernel FILE)"
case $format in iso|raw) ;; *) die "--format must be iso or raw, not '$format'" ;; esac
[[ $timeout =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"
if [ "$menu" = 1 ]; then
  [ -z "$app$args" ] || die "--menu lists every app: no --app or --args with it"
elif [ -z "$app" ]; then
  die "--app NAME or --menu is required"
fi
[ -d /usr/lib/grub/i386-pc ] ||
  die "GRUB's i386-pc platform is missing (apt-get install grub-pc-bin)"
command -v grub-mkrescue >/dev/null ||
  die "grub-mkrescue not found (apt-get install grub-common xorriso mtools)"

apps=$("$here/list-apps.py" "$kernel")
names=$(cut -f1 <<<"$apps")

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/root/boot/grub"
cp "$kernel" "$dir/root/boot/blimp.elf"
cfg=$dir/root/boot/grub/grub.cfg
{
  echo "# Made by image/make-image.sh. Blimp writes to COM1; GRUB to COM1 and the screen."
  echo "serial --unit=0 --speed=115200"
  echo "terminal_input serial console"
  echo "terminal_output serial console"
} >"$cfg"

if [ "$menu" = 1 ]; then
  grep -qx hello <<<"$names" || die "the kernel has no hello app for the default entry"
  {
    echo "# Every app in the kernel (image/list-apps.py); 'e' edits an entry's command line."
    echo "set timeout=$timeout"
    echo "set default=hello"
    while IFS=$'\t' read -r name summary; do
      title="$name: ${summary//\'/}"
      echo "menuentry '$title' --id $name {"
      echo "  multiboot2 /boot/blimp.elf app=$name"
      echo "  boot"
      echo "}"
    done <<<"$apps"
  } >>"$cfg"
else
  grep -qxF -- "$app" <<<"$names" ||
    die "the kernel has no app '$app'; it has: $(tr '\n' ' ' <<<"$names")"
  line="app=$app"
  for word in $args; do
    [[ $word != *[\'\"\\]* ]] || die "argument '$word' holds a quote or a backslash"
    line+=" '$word'"
  done
  {
    echo "set timeout=0"
    echo "set timeout_style=hidden"
    echo "menuentry 'blimp $app' {"
    echo "  multiboot2 /boot/blimp.elf $line"
    echo "  boot"
    echo "}"
  } >>"$cfg"
fi

# i386-pc only: the image boots from BIOS (SeaBIOS) as a CD and as a disk.
grub-mkrescue -d /usr/lib/grub/i386-pc -o "$dir/image" "$dir/root" >"$dir/log" 2>&1 ||
  { cat "$dir/log" >&2; exit 1; }
if [ "$format" = raw ]; then
  # The hybrid image's MBR (boot signature 55 aa) is what a BIOS boots from a disk.
  [ "$(od -An -tx1 -j510 -N2 "$dir/image" | tr -d ' ')" = 55aa ] ||
    die "grub-mkrescue made no hybrid MBR: the image would not boot as a disk"
  size=$(stat -c %s "$dir/image")
  truncate -s $(((size + 1048575) / 1048576 * 1048576)) "$dir/image"
fi
mv "$dir/image" "$out"
