#!/bin/bash
# Benchmark (issue 9): kvcache throughput and hit rate across VMs under hangar's idle-tax policy
# vs the same VMs with static memory limits adding up to the same budget.
#
#   bench/hangar/kvcache_policy_vs_static.sh [BUILD] [VMS] [BUDGET_MIB] [SECONDS] [SCENARIO]
#
# SCENARIO uniform: every VM runs the same kvcache (keys=150000, 600 MiB of values: more than any
#                   VM has), so the best split is the even one a static limit already gives.
# SCENARIO skewed:  kv1 runs that big kvcache, the others a small one (keys=5000, 20 MiB), so a
#                   static split strands memory in the small guests that the big one could use.
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
SCENARIO=${5:-uniform}
case $SCENARIO in uniform|skewed) ;; *) echo "unknown scenario $SCENARIO (uniform, skewed)" >&2; exit 2;; esac
HANGAR=${HANGAR:-$BUILD/host/hangar/hangar}
# The patched QEMU publishes the guests' reclaim counters (patch 4), which tell the policy a
# cache is in use; with QEMU=stock the policy sees every cache as idle memory.
QEMU=${QEMU:-patched}
KERNEL=${KERNEL:-$BUILD/blimp.elf}
OUT=$(mktemp -d /tmp/hangar-bench-XXXXXX)
[ -x "$HANGAR" ] || { echo "$HANGAR not built" >&2; exit 2; }

run() {  # label memory_mib policy
  local label=$1 mem=$2 policy=$3 vms=()
  for i in $(seq 1 "$VMS"); do
    local keys=150000
    [ "$SCENARIO" = skewed ] && [ "$i" -gt 1 ] && keys=5000
    vms+=(--vm "name=kv$i,app=kvcache,memory=${mem}M,args=\"keys=$keys duration=${SECS}s report=5s seed=$i\"")
  done
  "$HANGAR" run --kernel "$KERNEL" --qemu "$QEMU" --policy "$policy" --budget "${BUDGET}M" --status off \
      --run-dir "$OUT/$label" --csv "$OUT/$label.csv" --plot "$OUT/$label.png" "${vms[@]}" \
      > "$OUT/$label.out" 2> "$OUT/$label.err" || true
  python3 - "$OUT/$label" "$label" "$BUDGET" "$OUT/$label.csv" <<'PY'
import csv, json, re, sys
d, label, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = json.load(open(f"{d}/summary.json"))
# ops per QEMU CPU-second: the machine is shared (TCG, 2 cores), so ops/s mostly measures how
# much CPU a VM got; the work per CPU-second shows what the cache saved.
for v in s["vms"]:
    log = open(v["serial_log"], errors="replace").read()
    m = re.search(r"kvcache: done ops=(\d+) hit_rate=([0-9.]+) ops_per_s=(\d+)", log)
    if not m:
        print(f"{label:8s} {v['name']:5s} no result ({v.get('outcome', '')})")
        continue
    ops, hit, ops_s = int(m.group(1)), float(m.group(2)), int(m.group(3))
    cpu = v.get("qemu_cpu_seconds")
    per_cpu = f"{ops / cpu:9.0f}" if cpu else "      n/a"
    print(f"{label:8s} {v['name']:5s} hit_rate {hit:.3f}  ops/s {ops_s:7d}  ops per QEMU CPU-s {per_cpu}"
          f"  smallest guest {v.get('min_balloon_actual_bytes', 0) >> 20} MiB"
          f"  peak RSS {v.get('peak_rss_bytes', 0) >> 20} MiB")
peak = sum(v.get('peak_rss_bytes', 0) for v in s['vms']) >> 20
print(f"{label:8s} peak RSS sum {peak} MiB (budget {budget} MiB of guest memory), exit {s['exit_status']}")
rows = list(csv.DictReader(open(sys.argv[4])))
if label == "dynamic" and not any(r["guest_available_bytes"] or r["guest_free_bytes"] for r in rows):
    print("dynamic  WARNING: no guest ever reported stats, so the policy never inflated anyone "
          f"(peak RSS {peak} MiB vs budget {budget} MiB): this comparison is not valid")
PY
}

run dynamic $((2 * BUDGET / VMS)) idle-tax
run static $((BUDGET / VMS)) none
echo "results, CSVs and plots in $OUT"
