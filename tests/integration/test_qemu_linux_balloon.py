#!/usr/bin/env python3
"""Cross-validation: Debian's Linux guest with its own virtio_balloon driver behaves the same on
stock QEMU 7.2 and on Blimp's patched QEMU (extensions off, and coalesce-discard on).

For each QEMU configuration: boot, read the negotiated balloon features, collect guest stats,
free page reporting (QEMU RSS falls after the guest frees memory), inflate (guest MemFree falls,
query-balloon reaches the target, BALLOON_CHANGE arrives), deflate. Then compare: same features,
same set of stats, every step passed everywhere. On the patched QEMU also check the discard
counters of x-blimp-balloon-info (one discard per page with coalescing off, far fewer with it on;
the same for the deflate's MADV_WILLNEED calls),
and that with every extension property on the standard guest negotiates exactly the same
features and never touches the extension queue.

Exit 0 pass, 77 skip (patched QEMU or Linux guest not built, no stock QEMU), 1 fail.
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from blimp_vm import STOCK_QEMU, Skip, TestRunner, check, require_patched_qemu  # noqa: E402
from linux_guest import LinuxGuest, GuestError, guest_files  # noqa: E402

t = TestRunner()

MEM_MB = 512
FILL_MB = 192
TARGET_MB = 256
BALLOON = "free-page-reporting=on,deflate-on-oom=on"
UNSET = (1 << 64) - 1


def run_one(label, qemu, build_dir, extra):
    res = {"label": label, "errors": []}
    err = res["errors"].append
    g = LinuxGuest(qemu, build_dir, mem_mb=MEM_MB, balloon=BALLOON + extra, name=label,
                   timeout_s=400)
    try:
        g.start(ready_timeout=240)
        m = g.wait_for(r"BLIMP-LINUX: balloon \S+ features=(\d+)", 5, since_last=False)
        res["features"] = m.group(1)

        # --- stats ---
        q = g.qmp
        path = "/machine/peripheral/balloon0"
        q.execute("qom-set", path=path, property="guest-stats-polling-interval", value=1)
        stats = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = q.execute("qom-get", path=path, property="guest-stats")
            if st["last-update"] and st["stats"].get("stat-total-memory", UNSET) != UNSET:
                stats = st["stats"]
                break
            time.sleep(0.5)
        if stats is None:
            err("no guest stats within 30s")
            res["stat_keys"] = []
        else:
            res["stat_keys"] = sorted(k for k, v in stats.items() if v != UNSET)
            tot = stats["stat-total-memory"] >> 20
            if not (MEM_MB * 0.7 <= tot <= MEM_MB):
                err(f"stat-total-memory {tot} MiB implausible")

        # --- free page reporting ---
        time.sleep(3)
        r0 = g.rss_kib()
        g.command(f"fill {FILL_MB}", r"BLIMP-LINUX: done fill", timeout=120)
        r1 = g.rss_kib()
        g.command("drop", r"BLIMP-LINUX: done drop", timeout=60)
        r2 = r1
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            time.sleep(1)
            r2 = g.rss_kib()
            if r1 - r2 >= (FILL_MB * 1024) // 2:
                break
        res["rss"] = (r0, r1, r2)
        res["reported_mib"] = (r1 - r2) // 1024
        if r1 - r0 < (FILL_MB * 1024) // 2:
            err(f"fill did not grow QEMU RSS ({r0} -> {r1} KiB)")
        if r1 - r2 < (FILL_MB * 1024) // 2:
            err(f"free page reporting returned only {(r1 - r2) // 1024} MiB of {FILL_MB} MiB")

        # --- inflate / deflate ---
        free0 = g.meminfo()["MemFree"]
        q.events()
        t_in = g.balloon_target(TARGET_MB, timeout=120)
        ev = q.wait_event("BALLOON_CHANGE", timeout=10)
        if ev is None:
            err("no BALLOON_CHANGE event on inflate")
        free1 = g.meminfo()["MemFree"]
        res["inflate_s"] = t_in
        res["memfree_drop_mib"] = (free0 - free1) // 1024
        if (free0 - free1) // 1024 < (MEM_MB - TARGET_MB) * 0.8:
            err(f"guest MemFree fell by {(free0 - free1) // 1024} MiB only on inflate")
        res["deflate_s"] = g.balloon_target(MEM_MB, timeout=120)
        free2 = g.meminfo()["MemFree"]
        if (free2 - free1) // 1024 < (MEM_MB - TARGET_MB) * 0.8:
            err(f"guest MemFree rose by {(free2 - free1) // 1024} MiB only on deflate")

        # --- patched-only counters ---
        if qemu != STOCK_QEMU:
            info = q.execute("x-blimp-balloon-info")
            res["info"] = info
            pages = (MEM_MB - TARGET_MB) * 256
            if info["pstate-registered"] or info["hints"] or info["req-ok"]:
                err("a standard guest used the Blimp extensions?")
            if info["inflate-pfns"] != pages:
                err(f"inflate-pfns {info['inflate-pfns']} != {pages}")
            if info["discard-pages"] != pages:
                err(f"discard-pages {info['discard-pages']} != {pages}")
            if info["coalesce-discard"]:
                if info["discard-calls"] > pages // 8:
                    err(f"coalescing made {info['discard-calls']} calls for {pages} pages")
            elif info["discard-calls"] != pages:
                err(f"stock path made {info['discard-calls']} calls for {pages} pages")
            # deflate (host/qemu patch 5): every page back, hinted once, nothing rejected
            if info["deflate-pfns"] != pages or info["deflate-bad-pfns"]:
                err(f"deflate-pfns {info['deflate-pfns']} (bad {info['deflate-bad-pfns']}) "
                    f"!= {pages}")
            if info["willneed-pages"] != pages:
                err(f"willneed-pages {info['willneed-pages']} != {pages}")
            if info["coalesce-discard"]:
                if info["willneed-calls"] > pages // 8:
                    err(f"coalescing made {info['willneed-calls']} WILLNEED calls for {pages} "
                        "pages")
            elif info["willneed-calls"] != pages:
                err(f"stock path made {info['willneed-calls']} WILLNEED calls for {pages} pages")
    except GuestError as e:
        err(str(e))
    finally:
        rc = g.stop()
        res["exit"] = rc
    if rc not in (0, None):
        err(f"QEMU exit status {rc}")
    return res


@t.test
def test_linux_guest_same_on_stock_and_patched_qemu(build):
    if not os.access(STOCK_QEMU, os.X_OK):
        raise Skip(f"no stock QEMU at {STOCK_QEMU}")
    patched = require_patched_qemu(build)
    if not guest_files(build):
        raise Skip(f"Linux guest not built (image/linux/build.sh {build})")

    runs = [run_one("stock", STOCK_QEMU, build, ""),
            run_one("patched", patched, build, ""),
            run_one("patched-coalesce", patched, build, ",coalesce-discard=on"),
            # every extension on: a standard guest must not notice (bits 56/57 not accepted,
            # blimpq after the standard queues)
            run_one("patched-all", patched, build, ",coalesce-discard=on,page-states=on,"
                    "page-states-interval-ms=500,share-hints=on")]
    failures = []
    for r in runs:
        print(f"[{r['label']}] features={r.get('features')} stats={len(r.get('stat_keys', []))} "
              f"reported={r.get('reported_mib')}MiB rss={r.get('rss')} "
              f"inflate={r.get('inflate_s', 0):.2f}s deflate={r.get('deflate_s', 0):.2f}s "
              f"memfree-drop={r.get('memfree_drop_mib')}MiB")
        if r.get("info"):
            i = r["info"]
            print(f"    x-blimp-balloon-info: inflate-pfns={i['inflate-pfns']} "
                  f"discard-calls={i['discard-calls']} discard-pages={i['discard-pages']} "
                  f"deflate-pfns={i['deflate-pfns']} willneed-calls={i['willneed-calls']} "
                  f"bad-pfns={i['bad-pfns']} pstate-registered={i['pstate-registered']} "
                  f"hints={i['hints']}")
        for e in r["errors"]:
            print(f"  FAIL [{r['label']}]: {e}")
            failures.append(f"[{r['label']}] {e}")
    base = runs[0]
    for r in runs[1:]:
        if r.get("features") != base.get("features"):
            failures.append(f"features differ: stock {base.get('features')} vs {r['label']} "
                            f"{r.get('features')}")
        if r.get("stat_keys") != base.get("stat_keys"):
            failures.append(f"stats differ: stock {base.get('stat_keys')} vs {r['label']} "
                            f"{r.get('stat_keys')}")
    check(not failures, "; ".join(failures))


if __name__ == "__main__":
    t.main()
