#!/usr/bin/env bash
# Developer helper: regenerate patches/NNNN-*.patch from a git checkout of the QEMU tree in
# which each Blimp patch is one commit (the decoder files are excluded: build.sh copies them).
#   host/qemu/mkpatch.sh DEV_REPO BASE_COMMIT COMMIT OUT.patch
set -euo pipefail
repo=$1 base=$2 commit=$3 out=$4
{
    git -C "$repo" log -1 --format='From: %an <%ae>%nSubject: [PATCH] %s%n%n%b' "$commit"
    echo "---"
    git -C "$repo" diff --stat "$base" "$commit" -- . ':!hw/virtio/blimp-balloon-decode.c' ':!hw/virtio/blimp-balloon-decode.h'
    echo
    git -C "$repo" diff "$base" "$commit" -- . ':!hw/virtio/blimp-balloon-decode.c' ':!hw/virtio/blimp-balloon-decode.h'
} > "$out"
echo "wrote $out"
