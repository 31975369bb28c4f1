#!/bin/bash
# Fails when a tracked C/C++ file differs from what clang-format makes of it (the style of the
# nearest .clang-format: the root's, host/hangar's; host/qemu's disables formatting). Run by CTest
# as lint.format; `make format` fixes what it reports.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.c' '*.cpp' '*.h')
bad=()
for f in "${files[@]}"; do
  if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then bad+=("$f"); fi
done
if [ ${#bad[@]} -ne 0 ]; then
  echo "format drift in ${#bad[@]} of ${#files[@]} files (make format fixes them):"
  printf '  %s\n' "${bad[@]}"
  exit 1
fi
echo "format: ${#files[@]} files as clang-format makes them"
