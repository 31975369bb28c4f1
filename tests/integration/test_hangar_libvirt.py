#!/usr/bin/env python3
"""hangar across hosts, on libvirt (docs/hangar.md, "Across hosts, on libvirt"). Two independent
libvirt daemons stand for two hosts, each with its own budget:

  - "sys": the system daemon (qemu:///system; started here when it is not running, and stopped
    again), one Blimp guest running kvcache in 384 MiB, budget 256 MiB; on the patched QEMU
    when it is built (blimp-patched.xml), whose extensions hangar finds and reads through
    libvirt's monitor passthrough;
  - "sess": an unprivileged user's session daemon (tests/lib/libvirt.py SessionLibvirtd; root
    reaches it through its socket), the anchor Linux guest (Debian's kernel, standard balloon
    driver, 384 MiB: 200 MiB written to tmpfs and deleted, so that free memory has been backed)
    and a second Blimp guest (kvcache, 384 MiB), budget 448 MiB;
  - a third host whose daemon does not exist, with one VM: it fails to attach, alone.

The domains are created in parallel (the system daemon takes about a minute before its QEMU
starts here, docs/libvirt.md). hangar then manages them through libvirt for 45 s; checked:

  - each host's guests are brought to its budget (balloon actual summed per host, from
    virsh dommemstat, within the budget) and each guest's QEMU RSS (libvirt's `rss`) falls;
  - the Linux guest, with a standard balloon only, is ballooned like the Blimp ones;
  - the unreachable host fails its own VM only (attach-failed, exit status 1), the rest run;
  - the CSV has rows for every attached VM with its host, RSS and balloon, one plot per host;
  - hangar leaves the domains running where its policy left them (it never stops a domain);
    the test destroys them afterwards.

--keep DIR copies the CSV, the plots and hangar's output there (docs/hangar.md's figures)."""
import csv
import os
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import Skip, TestRunner, check, find_patched_qemu  # noqa: E402
from hangar import HangarRun, find_hangar  # noqa: E402
from libvirt import BlimpDomain, Libvirtd, SessionLibvirtd  # noqa: E402
from linux_guest import guest_files  # noqa: E402

t = TestRunner()
t.option("--keep", default="", help="copy the run's CSV, plots and output to this directory")
MiB = 1 << 20
KVCACHE = ["keys=150000", "duration=1800s", "report=5s"]
SYS_BUDGET_MIB, SESS_BUDGET_MIB = 256, 448
RUN_S = 45


def create_all(domains):
    """virsh create for every domain at once (each daemon probes QEMU before its first start);
    the errors of any, raised."""
    errors = []

    def one(dom):
        try:
            took = dom.create()
            print(f"  {dom.name}: virsh create took {took:.0f} s", flush=True)
        except Exception as e:  # noqa: BLE001 - reported below, after every thread ended
            errors.append(f"{dom.name}: {e}")

    threads = [threading.Thread(target=one, args=(d,)) for d in domains]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    check(not errors, "; ".join(errors))


def linux_ready(dom, timeout=240):
    """Waits until the Linux guest answers on its console. QEMU drops what a pty console prints
    while nobody holds it open, and a command typed before /init reads the console is lost in
    part: so ask, and ask again, until it answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return dom.console("meminfo", r"BLIMP-LINUX: done meminfo", timeout=10)
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def host_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@t.test
def test_two_hosts_each_under_its_budget(build):
    hangar, _ = find_hangar(build)
    linux = guest_files(build)
    if not linux:
        raise Skip("the Linux anchor guest is not built (make linux-guest)")
    vmlinuz, initramfs = linux
    patched = find_patched_qemu(build)
    template = "blimp-patched.xml" if patched else "blimp-stock.xml"
    print(f"  host sys runs {template}", flush=True)
    with Libvirtd() as sysd, SessionLibvirtd() as sess:
        with BlimpDomain(build, template, "hl-blimp-sys", app="kvcache", args=KVCACHE,
                         memory_mib=384, emulator=patched, daemon=sysd) as blimp_sys, \
             BlimpDomain(build, "blimp-stock.xml", "hl-blimp-sess", app="kvcache", args=KVCACHE,
                         memory_mib=384, daemon=sess) as blimp_sess, \
             BlimpDomain(build, "linux-anchor.xml", "hl-linux", memory_mib=384, daemon=sess,
                         kernel=vmlinuz, initrd=initramfs,
                         cmdline="console=ttyS0 quiet panic=-1 blimp.workload=cmd") as lx:
            create_all([blimp_sys, blimp_sess, lx])
            for dom in (blimp_sys, blimp_sess):
                dom.wait_serial(r"kvcache: t=\S+ .* cache_mib=(3[0-9][0-9])", timeout=180)
            linux_ready(lx)
            lx.console("fill 200", r"BLIMP-LINUX: done fill 200")
            lx.console("drop", r"BLIMP-LINUX: done drop")
            before = {d.name: d.dommemstat() for d in (blimp_sys, blimp_sess, lx)}
            for name, st in before.items():
                print(f"  {name} before: actual {st['actual'] >> 10} MiB, rss {st['rss'] >> 10} "
                      f"MiB", flush=True)

            fleet = {
                "status": "plain", "duration": f"{RUN_S}s", "plot": "fleet.png",
                "hosts": [
                    {"name": "sys", "uri": sysd.uri, "budget": f"{SYS_BUDGET_MIB}M"},
                    {"name": "sess", "uri": sess.uri, "budget": f"{SESS_BUDGET_MIB}M"},
                    {"name": "down", "uri": "qemu+unix:///session?socket=/nonexistent/sock",
                     "budget": "256M"},
                ],
                "vms": [
                    {"name": "blimp-a", "host": "sys", "domain": blimp_sys.name},
                    {"name": "blimp-b", "host": "sess", "domain": blimp_sess.name},
                    {"name": "linux", "host": "sess", "domain": lx.name},
                    {"name": "ghost", "host": "down"},
                ],
            }
            import json
            cfg = os.path.join(blimp_sys.tmp, "fleet.json")
            with open(cfg, "w") as f:
                json.dump(fleet, f)
            with HangarRun(hangar, os.path.join(build, "blimp.elf"), ["--config", cfg],
                           csv=True, limit=RUN_S + 60) as run:
                rc = run.wait()
                err = run.stderr()
                summary, vms = run.summary()
                rows = host_rows(run.csv)
                plots = [os.path.join(run.run_dir, p) for p in
                         ("fleet.png", "fleet.sys.png", "fleet.sess.png")]
                if t.options.keep:
                    os.makedirs(t.options.keep, exist_ok=True)
                    for p in [run.csv, *plots]:
                        if os.path.exists(p):
                            shutil.copy(p, t.options.keep)
                    with open(os.path.join(t.options.keep, "hangar.out"), "w") as f:
                        f.write(err + run.stdout())
                print("\n".join("  | " + ln for ln in run.stdout().splitlines()[-12:]), flush=True)
                check(rc == 1, f"hangar exited {rc}, not 1 (the unreachable host's VM)\n{err}")
                check(vms["ghost"]["outcome"] == "attach-failed" and
                      "/nonexistent/sock" in vms["ghost"]["detail"], f"ghost: {vms['ghost']}")
                for name in ("blimp-a", "blimp-b", "linux"):
                    check(vms[name]["outcome"] == "detached", f"{name}: {vms[name]}\n{err}")
                    check(not vms[name]["qmp_errors"], f"{name}: libvirt errors "
                                                       f"{vms[name]['qmp_errors']}")
                check("attached to domain hl-linux on sess" in err and "standard balloon" in err,
                      err)
                # The patched QEMU is found, not assumed, and its extra stats (tags libvirt does
                # not pass on) reach the CSV through the monitor passthrough.
                if patched:
                    check("hl-blimp-sys on sys (qemu:///system, 384 MiB, patched QEMU" in err, err)
                    check(any(r["guest_alloc_stalls"] for r in rows if r["vm"] == "blimp-a"),
                          "blimp-a: no allocation-stall counts from the monitor in the CSV")
                for p in plots:
                    check(os.path.getsize(p) > 1000, f"{p} missing or empty")

            # The CSV: every attached VM, with its host, libvirt's RSS and the balloon.
            hosts = {"blimp-a": "sys", "blimp-b": "sess", "linux": "sess"}
            for name, host in hosts.items():
                mine = [r for r in rows if r["vm"] == name]
                check(len(mine) >= RUN_S - 10, f"{name}: {len(mine)} CSV rows")
                check(all(r["host"] == host for r in mine), f"{name}: host column not {host}")
                check(all(r["rss_bytes"] and r["balloon_actual_bytes"] for r in mine[1:]),
                      f"{name}: rows without RSS or balloon")
            check(not [r for r in rows if r["vm"] == "ghost"], "ghost has CSV rows")

            # hangar left the domains running, balloons where it set them; each host within
            # its budget, every guest's RSS down.
            after = {d.name: d.dommemstat() for d in (blimp_sys, blimp_sess, lx)}
            for d in (blimp_sys, blimp_sess, lx):
                check(d.running(), f"{d.name} is not running after hangar")
                a, b = after[d.name], before[d.name]
                print(f"  {d.name} after: actual {a['actual'] >> 10} MiB, rss {a['rss'] >> 10} "
                      f"MiB (rss {(b['rss'] - a['rss']) >> 10} MiB down)", flush=True)
                check(a["actual"] < b["actual"], f"{d.name}: balloon not inflated: {a}")
                check(b["rss"] - a["rss"] >= 64 << 10,
                      f"{d.name}: RSS fell by {(b['rss'] - a['rss']) >> 10} MiB only")
            # The policy's hysteresis (16 MiB per VM) is the tolerance.
            sys_actual = after[blimp_sys.name]["actual"] >> 10
            sess_actual = (after[blimp_sess.name]["actual"] + after[lx.name]["actual"]) >> 10
            check(sys_actual <= SYS_BUDGET_MIB + 16,
                  f"host sys: {sys_actual} MiB of guest memory, budget {SYS_BUDGET_MIB} MiB")
            check(sess_actual <= SESS_BUDGET_MIB + 32,
                  f"host sess: {sess_actual} MiB of guest memory, budget {SESS_BUDGET_MIB} MiB")
            check({h["name"] for h in summary.get("hosts", [])} == {"sys", "sess"},
                  f"summary hosts: {summary.get('hosts')}")


if __name__ == "__main__":
    t.main()
