#!/usr/bin/env bash
# SQLite for the guest (and the Linux anchor's speedtest1), from Debian 12's `sqlite3` source
# package (3.40.1; upstream https://sqlite.org, public domain). Nothing of SQLite is kept in this
# repository: the source is fetched at build time with `apt-get source sqlite3`
# (scripts/deb-source.sh, cached in BUILD_DIR/sqlite/src), and the amalgamation is generated
# from it with SQLite's own tool/mksqlite3c.tcl (needs tclsh; `make sqlite3.c` in its build tree).
#
#   apps/sqlite/build-sqlite.sh BUILD_DIR
#     -> BUILD_DIR/sqlite/sqlite3.c, sqlite3.h   (the amalgamation)
#        BUILD_DIR/sqlite/speedtest1.c            (test/speedtest1.c, SQLite's benchmark)
# Idempotent: nothing happens when the outputs exist (delete BUILD_DIR/sqlite to refetch).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:?usage: build-sqlite.sh BUILD_DIR}
mkdir -p "$build/sqlite"
out=$(cd "$build/sqlite" && pwd)
log() { echo "[sqlite] $*"; }

if [[ -f "$out/sqlite3.c" && -f "$out/sqlite3.h" && -f "$out/speedtest1.c" ]]; then
    exit 0
fi
command -v tclsh >/dev/null || { echo "[sqlite] tclsh missing (apt-get install tcl)" >&2; exit 1; }

src=$("$root/scripts/deb-source.sh" sqlite3 "$out/src")
log "source: $src ($(cat "$src/VERSION"))"
amalg="$out/amalgamation"
rm -rf "$amalg"
mkdir -p "$amalg"
log "generating the amalgamation (configure + make sqlite3.c; log: $amalg/build.log)"
(cd "$amalg" && "$src/configure" --disable-tcl --disable-readline >build.log 2>&1 &&
    make sqlite3.c >>build.log 2>&1) || { tail -30 "$amalg/build.log" >&2; exit 1; }
cp "$src/test/speedtest1.c" "$out/speedtest1.c.tmp"
cp "$amalg/sqlite3.h" "$out/sqlite3.h.tmp"
cp "$amalg/sqlite3.c" "$out/sqlite3.c.tmp"
for f in speedtest1.c sqlite3.h sqlite3.c; do mv "$out/$f.tmp" "$out/$f"; done
rm -rf "$amalg"
log "done: $out/sqlite3.c ($(wc -l < "$out/sqlite3.c") lines), speedtest1.c"
