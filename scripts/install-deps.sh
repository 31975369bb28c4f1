#!/bin/bash
# Installs what building and testing Blimp needs, from Debian's packages, when it is missing.
# Fast when everything is there: it only calls apt-get for packages dpkg does not know.
set -euo pipefail
packages=(
  cmake ninja-build g++ make python3 git
  qemu-system-x86 qemu-system-data qemu-utils  # QEMU 7.2 and its firmware (qboot.rom)
  newlib-source                                 # the C library, built into build/newlib
  libxxhash-dev                                 # XXH3 page hashes (header-only)
  googletest libgtest-dev                       # host unit tests
  grub-pc-bin grub-common xorriso mtools        # blimp.iso
  spin                                          # the page-state protocol's model checker
  nlohmann-json3-dev libcli11-dev               # hangar
  gnuplot-nox                                   # experiment plots
  clang-format                                  # the style check (lint.format)
  libvirt-daemon-system libvirt-clients         # image/libvirt, integration.libvirt
  libvirt-dev pkg-config                        # hangar's libvirt back end (libvirt_domain.h)
  tcl                                           # SQLite's amalgamation generator (apps/sqlite)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
