#!/bin/bash
# Benchmark (issue 9): kvcache throughput and hit rate across VMs under hangar's idle-tax policy
# vs the same VMs with static memory limits adding up to the same budget.
#
#   bench/hangar/kvcache_policy_vs_static.sh [BUILD] [VMS] [BUDGET_MIB] [SECONDS]
#
# Dynamic: VMS guests of 2*BUDGET/VMS MiB each, ballooned under BUDGET by hangar.
# Static:  VMS guests of BUDGET/VMS MiB each, policy none.
# Prints one line per VM and run: ops, hit rate, ops/s (from the guests' "kvcache: done" lines),
# and the peak QEMU RSS sum. Not a test: run it alone (it is CPU-bound, TCG).
set -euo pipefail
BUILD=${1:-build}
VMS=${2:-3}
BUDGET=${3:-768}
SECS=${4:-60}
HANGAR=${HANGAR:-$BUILD/host/hangar/hangar}
KERNEL=${KERNEL:-$BUILD/blimp.elf}
OUT=$(mktemp -d /tmp/hangar-bench-XXXXXX)
[ -x "$HANGAR" ] || { echo "$HANGAR not built" >&2; exit 2; }

run() {  # label memory_mib policy
  local label=$1 mem=$2 policy=$3 vms=()
  for i in $(seq 1 "$VMS"); do
    vms+=(--vm "name=kv$i,app=kvcache,memory=${mem}M,args=\"keys=150000 duration=${SECS}s report=5s seed=$i\"")
  done
  "$HANGAR" run --kernel "$KERNEL" --qemu stock --policy "$policy" --budget "${BUDGET}M" --status off \
      --run-dir "$OUT/$label" --csv "$OUT/$label.csv" --plot "$OUT/$label.png" "${vms[@]}" \
      > "$OUT/$label.out" 2> "$OUT/$label.err" || true
  for i in $(seq 1 "$VMS"); do
    printf '%-8s kv%-3s %s\n' "$label" "$i" "$(grep -h 'kvcache: done' "$OUT/$label/kv$i.serial.log" || echo 'no result')"
  done
  python3 - "$OUT/$label/summary.json" "$label" "$BUDGET" "$OUT/$label.csv" <<'PY'
import csv, json, sys
s = json.load(open(sys.argv[1]))
peak = sum(v.get('peak_rss_bytes', 0) for v in s['vms']) >> 20
print(f"{sys.argv[2]:8s} peak RSS sum {peak} MiB, exit {s['exit_status']}")
rows = list(csv.DictReader(open(sys.argv[4])))
if sys.argv[2] == "dynamic" and not any(r["guest_available_bytes"] or r["guest_free_bytes"] for r in rows):
    print("dynamic  WARNING: no guest ever reported stats, so the policy never inflated anyone "
          f"(peak RSS {peak} MiB vs budget {sys.argv[3]} MiB): this comparison is not valid")
PY
}

run dynamic $((2 * BUDGET / VMS)) idle-tax
run static $((BUDGET / VMS)) none
echo "results, CSVs and plots in $OUT"
