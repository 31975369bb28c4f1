#!/usr/bin/env python3
"""hangar end to end on stock QEMU (-accel tcg): a fleet whose VMs exit, a QEMU killed with -9, an
orderly stop on SIGINT/SIGTERM with KSM settings put back, metrics files, and bad input (config,
QEMU path, QEMU arguments, unknown app). Each test reads the run's summary.json and checks that no
QEMU of the run is left behind.

    python3 tests/integration/test_hangar.py --build-dir build [-k name]

The hangar binary is BUILD/host/hangar/hangar (or $HANGAR), the kernel BUILD/blimp.elf (or
$BLIMP_KERNEL). Skips (77) when either is missing."""
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import STOCK_QEMU as QEMU, BlimpVM, Skip, TestRunner, VMError, check  # noqa: E402
from hangar import HangarRun, find_hangar, qemu_pids_of  # noqa: E402

t = TestRunner()


def tools(build):
    hangar, kernel = find_hangar(build)
    if not os.access(QEMU, os.X_OK):
        raise Skip(f"{QEMU} missing")
    return hangar, kernel


def available_apps(build):
    """The guest's app list, from its 'unknown app' message."""
    _, kernel = tools(build)
    with BlimpVM(build, app="__list__", memory="64M", qemu=QEMU, kernel=kernel, limit=60,
                 accel="tcg", name="app-list") as vm:
        try:
            vm.wait_exit(90)
        except VMError:
            pass            # the list is what matters, not how the guest said it
        out = vm.serial
    return set(re.findall(r"^\s{2}(\S+)\s", out, re.M))


def long_lived_vm(build, name, machine="microvm"):
    """A VM that stays up until hangar stops it: app=idle once it exists, a paused hello before."""
    if "idle" in available_apps(build):
        return f"name={name},app=idle,machine={machine}"
    return f"name={name},app=hello,machine={machine},start=paused"


def Run(build, args, limit=240, qemu="stock"):
    """hangar run in the background with its own run directory, always bounded by a timeout."""
    hangar, kernel = tools(build)
    return HangarRun(hangar, kernel, ["--status", "plain", "--interval", "500ms", *args], qemu=qemu,
                     limit=limit)


@t.test
def test_three_vms_exit_and_statuses_reported(build):
    with Run(build, ["--vm", "name=a,app=hello", "--vm", "name=b,app=hello,machine=q35",
                     "--vm", "name=c,app=hello,args=\"greeting=hi\""]) as r:
        rc = r.wait()
        s, vms = r.summary()
        check(rc == 0, f"exit {rc}\n{r.stderr()}")
        for name in "abc":
            check(vms[name]["outcome"] == "exited" and vms[name]["guest_status"] == 0, vms[name])
        check("vm b: guest exited with status 0" in r.stderr(), r.stderr())
        with open(vms["c"]["serial_log"]) as f:
            check("argv[1] = greeting=hi" in f.read(), "argument not passed to the app")


@t.test
def test_vcpus_passed_and_every_cpu_used(build):
    """`vcpus=N` starts the VM with N vCPUs (issue 17): the guest brings both up and memhog's two
    workers allocate, fill, verify and free on them."""
    with Run(build, ["--vm", "name=duo,app=memhog,machine=q35,vcpus=2,"
                     "args=\"threads=2 steps=alloc:64M,check:all,free:all\""]) as r:
        rc = r.wait()
        s, vms = r.summary()
        check(rc == 0 and vms["duo"]["ok"], f"exit {rc}: {vms.get('duo')}\n{r.stderr()}")
        with open(vms["duo"]["serial_log"]) as f:
            out = f.read()
        check(re.search(r"^smp: 2 of 2 CPUs online", out, re.M), f"not 2 CPUs online\n{out}")
        check("memhog: 2 threads, on cpus 0,1" in out and "memhog: done" in out,
              f"memhog did not run on both CPUs\n{out}")


@t.test
def test_unknown_app_reported_others_complete(build):
    with Run(build, ["--vm", "name=good1,app=hello", "--vm", "name=bad,app=nope",
                     "--vm", "name=good2,app=hello,machine=pc"]) as r:
        rc = r.wait()
        s, vms = r.summary()
        check(rc == 1, f"exit {rc} (want 1: a VM failed)\n{r.stderr()}")
        check(vms["bad"]["outcome"] == "unknown-app", vms["bad"])
        check("unknown app 'nope'" in vms["bad"]["detail"], vms["bad"])
        check("vm bad: unknown app" in r.stderr(), r.stderr())
        check(vms["good1"]["ok"] and vms["good2"]["ok"], s)


@t.test
def test_killed_qemu_reported_others_continue(build):
    specs = [long_lived_vm(build, n) for n in ("a", "b", "c")]
    with Run(build, [a for s in specs for a in ("--vm", s)] + ["--duration", "120s"]) as r:
        pids = {}
        for name in "abc":
            m = r.wait_for(rf"vm {name}: started QEMU pid (\d+)")
            pids[name] = int(m.group(1))
        # Wait until hangar manages all three (QMP up), then kill one behind its back.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
                re.search(rf"^{n}\s+(running|paused)", r.stdout(), re.M) for n in "abc"):
            time.sleep(0.2)
        os.kill(pids["b"], signal.SIGKILL)
        r.wait_for(r"vm b: QEMU was killed by signal 9")
        # QEMU turns SIGTERM into a clean exit 0: still not a guest powering off.
        os.kill(pids["c"], signal.SIGTERM)
        r.wait_for(r"vm c: QEMU was killed by signal 15")
        time.sleep(1.5)
        check(os.path.exists(f"/proc/{pids['a']}"), f"a died with b and c\n{r.stderr()}")
        check(r.proc.poll() is None, f"hangar stopped when one VM died\n{r.stderr()}")
        r.proc.send_signal(signal.SIGINT)
        rc = r.wait(timeout=60)
        s, vms = r.summary()
        check(rc == 1, f"exit {rc} (want 1: a VM was killed)\n{r.stderr()}")
        check(vms["b"]["outcome"] == "killed" and vms["b"]["signal"] == 9, vms["b"])
        check(vms["c"]["outcome"] == "killed" and vms["c"]["signal"] == 15, vms["c"])
        check(vms["a"]["outcome"] == "stopped", s)
        check("received SIGINT" in s["stop_reason"], s["stop_reason"])
        check(not os.path.exists(f"/proc/{pids['a']}"), "a still running")


def fake_ksm(tmp):
    d = os.path.join(tmp, "ksm")
    os.makedirs(d)
    values = {"run": "0", "pages_to_scan": "100", "sleep_millisecs": "20", "pages_shared": "0",
              "pages_sharing": "0", "full_scans": "0", "advisor_mode": "[none] scan-time"}
    for k, v in values.items():
        with open(os.path.join(d, k), "w") as f:
            f.write(v + "\n")
    return d, values


def read_ksm(d, keys):
    out = {}
    for k in keys:
        with open(os.path.join(d, k)) as f:
            out[k] = f.read().strip()
    return out


@t.test
def test_sigterm_stops_cleanly_and_restores_ksm(build):
    tmp = tempfile.mkdtemp(prefix="hangar-ksm-")
    try:
        ksm_dir, before = fake_ksm(tmp)
        csv = os.path.join(tmp, "m.csv")
        png = os.path.join(tmp, "m.png")
        with Run(build, ["--vm", long_lived_vm(build, "a"), "--vm", long_lived_vm(build, "b", "q35"),
                         "--ksm", "blind", "--ksm-pages-to-scan", "5000", "--ksm-sysfs", ksm_dir,
                         "--budget", "400M", "--csv", csv, "--plot", png,
                         "--duration", "120s"]) as r:
            r.wait_for(r"KSM blind")
            during = read_ksm(ksm_dir, before)
            check(during["run"] == "1" and during["pages_to_scan"] == "5000", during)
            check(os.path.exists(os.path.join(r.run_dir, "ksm-saved.json")), "no KSM save file")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and r.stdout().count("\nb ") + r.stdout().startswith("b ") < 2:
                time.sleep(0.2)
            r.proc.send_signal(signal.SIGTERM)
            rc = r.wait(timeout=60)
            s, vms = r.summary()
            check(rc == 128 + signal.SIGTERM, f"exit {rc}\n{r.stderr()}")
            check(all(v["outcome"] == "stopped" for v in vms.values()), s)
            check(s["ksm"]["restored"], s["ksm"])
            check(read_ksm(ksm_dir, before) == before, f"KSM not restored: {read_ksm(ksm_dir, before)}")
            check(not os.path.exists(os.path.join(r.run_dir, "ksm-saved.json")), "save file left")
            with open(csv) as f:
                rows = f.read().splitlines()
            header = rows[0].split(",")
            check(header[:4] == ["time_s", "vm", "pid", "state"] and "rss_bytes" in header, header)
            vm_col, rss_col = header.index("vm"), header.index("rss_bytes")
            for name in "ab":
                mine = [row.split(",") for row in rows[1:] if row.split(",")[vm_col] == name]
                check(mine and any(c[rss_col] for c in mine), f"no RSS rows for {name}")
            # Stock QEMU has no page ages: the measured columns exist and stay empty.
            for col in ("measured_working_set_bytes", "measured_idle_bytes"):
                i = header.index(col)
                check(all(not row.split(",")[i] for row in rows[1:]), f"{col} filled on stock QEMU")
            check(os.path.getsize(png) > 1000 if shutil.which("gnuplot") else True, "plot missing")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@t.test
def test_bad_config_is_a_clear_error(build):
    hangar, kernel = tools(build)
    tmp = tempfile.mkdtemp(prefix="hangar-cfg-")
    try:
        cases = [
            ('{"vms": [ {"name": "a", }', "not valid JSON"),
            ('{"vms": [{"name": "a", "memroy": "1G"}]}', 'unknown key "memroy" (did you mean "memory"?)'),
            ('{"vms": [{"name": "a", "memory": "lots"}]}', "vms[0].memory: invalid size"),
            ('{"vms": [{"name": "a"}, {"name": "a"}]}', "duplicate name"),
            ('{"vms": [{"name": "a", "machine": "virt"}]}', "unknown machine"),
            ('{"budget": "1M", "vms": [{"name": "a"}]}', "below the VMs' floors"),
        ]
        for text, want in cases:
            path = os.path.join(tmp, "fleet.json")
            with open(path, "w") as f:
                f.write(text)
            p = subprocess.run([hangar, "run", "--config", path, "--kernel", kernel, "--qemu", "stock",
                                "--run-dir", os.path.join(tmp, "run")],
                               capture_output=True, text=True, timeout=60)
            check(p.returncode == 2, f"{text}: exit {p.returncode}\n{p.stderr}")
            check(want in p.stderr, f"{text}: want {want!r} in\n{p.stderr}")
            check("fleet.json" in p.stderr or "duplicate" in p.stderr or "floors" in p.stderr, p.stderr)
            check(not os.path.exists(os.path.join(tmp, "run")), "a run was started for a bad config")
        p = subprocess.run([hangar, "run", "--vm", "name=a,colour=red", "--kernel", kernel],
                           capture_output=True, text=True, timeout=60)
        check(p.returncode == 2 and 'unknown key "colour"' in p.stderr, p.stderr)
        p = subprocess.run([hangar, "run", "--bogus-flag"], capture_output=True, text=True, timeout=60)
        check(p.returncode == 2, p.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@t.test
def test_qemu_that_cannot_start(build):
    hangar, kernel = tools(build)
    # A bad path: every VM fails to start, with the reason.
    tmp = tempfile.mkdtemp(prefix="hangar-qemu-")
    try:
        p = subprocess.run([hangar, "run", "--vm", "name=a", "--vm", "name=b", "--kernel", kernel,
                            "--qemu", "/nonexistent/qemu", "--run-dir", os.path.join(tmp, "run")],
                           capture_output=True, text=True, timeout=60)
        check(p.returncode == 1, f"exit {p.returncode}\n{p.stderr}")
        check("cannot execute /nonexistent/qemu: No such file or directory" in p.stderr, p.stderr)
        with open(os.path.join(tmp, "run", "summary.json")) as f:
            s = json.load(f)
        check(all(v["outcome"] == "failed-to-start" for v in s["vms"]), s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Bad QEMU arguments for one VM: QEMU's own message, the others run to completion.
    with Run(build, ["--vm", "name=ok1", "--vm", "name=broken,qemu_args=-no-such-option",
                     "--vm", "name=ok2"]) as r:
        rc = r.wait()
        s, vms = r.summary()
        check(rc == 1, f"exit {rc}\n{r.stderr()}")
        check(vms["broken"]["outcome"] == "qemu-error", vms["broken"])
        check("no-such-option" in vms["broken"]["detail"], vms["broken"])
        check(vms["ok1"]["ok"] and vms["ok2"]["ok"], s)


@t.test
def test_budget_below_total_apps_complete(build):
    """Three VMs whose RAM adds up to more than the budget: the policy brings the balloon targets
    under it, every app completes, integrity sees zero mismatches."""
    if not {"integrity", "idle"} <= available_apps(build):
        raise Skip("needs the integrity and idle apps")
    budget = 800 << 20
    tmp = tempfile.mkdtemp(prefix="hangar-budget-")
    try:
        csv = os.path.join(tmp, "m.csv")
        with Run(build, ["--vm", 'name=i1,app=integrity,memory=384M,args="size=64M duration=20s"',
                         "--vm", 'name=i2,app=integrity,memory=384M,machine=q35,args="size=128M duration=20s"',
                         "--vm", 'name=idle1,app=idle,memory=384M,args="duration=20s"',
                         "--budget", "800M", "--csv", csv]) as r:
            rc = r.wait()
            s, vms = r.summary()
            check(rc == 0, f"exit {rc}\n{r.stderr()}")
            for name in ("i1", "i2"):
                with open(vms[name]["serial_log"]) as f:
                    out = f.read()
                check("integrity: PASS: 0 mismatches" in out, f"{name}: {out[-2000:]}")
            rows = [line.split(",") for line in open(csv).read().splitlines()]
            col = {name: i for i, name in enumerate(rows[0])}
            by_time = {}
            for row in rows[1:]:
                by_time.setdefault(row[col["time_s"]], {})[row[col["vm"]]] = row
            under = [t for t, vs in by_time.items() if len(vs) == 3 and all(v[col["balloon_target_bytes"]] for v in vs.values())
                     and sum(int(v[col["balloon_target_bytes"]]) for v in vs.values()) <= budget]
            check(under, f"the targets of the three VMs never fitted the budget\n{r.stderr()}")
            check(any(v.get("min_balloon_actual_bytes", 384 << 20) < (384 << 20) for v in vms.values()),
                  f"no guest was ever inflated\n{r.stderr()}")
            # Stock QEMU: the working set is total - available, as it always was.
            check(re.search(r"vm \S+: balloon \S+ MiB \(working set \d", r.stderr())
                  and "measured from page ages" not in r.stderr(), r.stderr())
            check(all(not row[col["measured_idle_bytes"]] for row in rows[1:]), "measured idle on stock QEMU")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@t.test
def test_demo_host_memory_comes_back_under_the_budget(build):
    """`make run`'s fleet (bench/hangar/demo.json), on the QEMU it names: the apps use more
    memory than the budget, the fleet's RSS climbs past it and comes back, every app finishes
    clean, and the summary and plot tell it."""
    demo = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "hangar", "demo.json")
    with open(demo) as f:
        budget = 448 << 20
        check('"budget": "448M"' in f.read(), "the demo's budget changed: update this test")
    with Run(build, ["--config", demo], qemu="auto", limit=300) as r:
        rc = r.wait()
        s, vms = r.summary()
        check(rc == 0, f"exit {rc}\n{r.stderr()}")
        want = {"cache": "kvcache: done", "batch": "memhog: done",
                "checker": "integrity: PASS: 0 mismatches"}
        for name, line in want.items():
            with open(vms[name]["serial_log"]) as f:
                out = f.read()
            check(line in out, f"{name}: no '{line}':\n{out[-2000:]}")
        h = s.get("host_memory")
        check(h, f"no host_memory in the summary: {s}")
        mib = lambda b: b >> 20  # noqa: E731
        print(f"  host memory: peak {mib(h['peak_rss_bytes'])} MiB at {h['peak_s']:.0f} s, "
              f"{mib(h['end_rss_bytes'])} MiB at {h['end_s']:.0f} s, {mib(h['returned_bytes'])} MiB "
              f"back; guest memory at the end {mib(h['end_guest_memory_bytes'])} MiB", flush=True)
        check(h["vms"] == 3, f"not every VM ran at once: {h}")
        check(h["peak_rss_bytes"] > budget, f"the apps never used more than the budget: {h}")
        check("rss_within_budget_s" in h, f"RSS never came back under the budget: {h}")
        # The budget is a goal for guest memory (a guest under pressure may be given a little
        # more; one run ended at 464 MiB), and RSS also holds each QEMU's own ~30-40 MiB.
        check(h["end_guest_memory_bytes"] <= budget + (64 << 20), f"the balloons did not bring "
              f"the guests near the budget: {h}")
        check(h["end_rss_bytes"] <= budget + 3 * (64 << 20), f"RSS stayed far above the budget: {h}")
        check(h["returned_bytes"] >= 100 << 20, f"little host memory came back: {h}")
        plot = os.path.join(r.run_dir, "hangar-demo.png")
        check(os.path.getsize(plot) > 0 and os.path.exists(plot + ".fleet.dat"),
              f"no plot with the fleet's RSS in {r.run_dir}")


# A stand-in for QEMU that speaks QMP badly on purpose; its mode comes from the kernel command
# line (-append "app=... qmp=MODE"), so one fleet can mix behaviours. It exits like a guest
# returning 0 (isa-debug-exit status 1) after a few seconds, or 0 on "quit".
FAKE_QEMU = r"""#!/usr/bin/env python3
import json, os, re, socket, sys, time
argv = sys.argv
mode = re.search(r"qmp=(\w+)", argv[argv.index("-append") + 1]).group(1)
if "-qmp" in argv:
    path = re.match(r"unix:([^,]+)", argv[argv.index("-qmp") + 1]).group(1)
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
else:  # hangar's listening socket, handed over as -chardev socket,fd=N
    fd = int(re.search(r"fd=(\d+)", argv[argv.index("-chardev") + 1]).group(1))
    srv = socket.socket(fileno=fd)
srv.settimeout(30)
conn, _ = srv.accept()
f = conn.makefile("rwb", buffering=0)
def send(obj):
    f.write((json.dumps(obj) + "\r\n").encode())
if mode != "garbage":
    # What a guest that ran leaves behind: output on its serial port.
    serial = argv[argv.index("-serial") + 1][len("file:"):]
    if serial.startswith("/dev/fdset/"):
        serial = int(re.search(r"fd=(\d+)", argv[argv.index("-add-fd") + 1]).group(1))
    open(serial, "w").write("fake guest running\\n")
if mode == "silent":
    time.sleep(30)
    sys.exit(1)
send({"QMP": {"version": {}, "capabilities": []}})
deadline = time.monotonic() + 4
conn.settimeout(0.2)
while time.monotonic() < deadline:
    try:
        line = f.readline()
    except (socket.timeout, TimeoutError):
        continue
    if not line:
        break
    msg = json.loads(line)
    cmd, mid = msg.get("execute"), msg.get("id")
    if cmd == "qmp_capabilities":
        send({"return": {}, "id": mid})
        if mode == "garbage":
            f.write(b"this is not QMP\r\n")
    elif cmd == "quit":
        send({"return": {}, "id": mid})
        sys.exit(0)
    elif mode == "errors":
        send({"error": {"class": "GenericError", "desc": "fake failure of " + cmd}, "id": mid})
    else:
        send({"return": {"actual": 268435456} if cmd == "query-balloon" else {}, "id": mid})
sys.exit(1)
"""


@t.test
def test_qmp_errors_reported_vms_continue(build):
    tmp = tempfile.mkdtemp(prefix="hangar-fake-")
    os.chmod(tmp, 0o755)  # the fake QEMU runs as hangar's unprivileged QEMU user
    try:
        fake = os.path.join(tmp, "fake-qemu")
        with open(fake, "w") as f:
            f.write(FAKE_QEMU)
        os.chmod(fake, 0o755)
        args = ["--vm", "name=good,args=qmp=ok", "--vm", "name=erring,args=qmp=errors",
                "--vm", "name=garbled,args=qmp=garbage"]
        with Run(build, args, qemu=fake) as r:
            rc = r.wait()
            s, vms = r.summary()
            err = r.stderr()
            check(rc == 1, f"exit {rc} (want 1: garbled lost its QMP)\n{err}")
            check("vm erring: QMP: cont failed: GenericError: fake failure of cont" in err, err)
            check(vms["erring"]["ok"] and vms["erring"]["qmp_errors"], vms["erring"])
            check("vm garbled: QMP: QMP protocol error" in err, err)
            check(vms["garbled"]["outcome"] == "qemu-error" and not vms["garbled"]["ok"], vms["garbled"])
            check(vms["good"]["ok"] and not vms["good"]["qmp_errors"], vms["good"])
        # Only QMP errors, every VM fine: status 4.
        with Run(build, ["--vm", "name=erring,args=qmp=errors"], qemu=fake) as r:
            rc = r.wait()
            check(rc == 4, f"exit {rc} (want 4)\n{r.stderr()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def status_fields(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def stock_has_sandbox():
    return subprocess.run(["timeout", "20", QEMU, "-sandbox",
                           "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
                           "-version"], capture_output=True).returncode == 0


@t.test
def test_qemus_run_unprivileged_sandboxed_with_private_qmp(build):
    """hangar (root) starts every QEMU as an unprivileged user, under QEMU's seccomp sandbox when
    the binary has it; the QMP socket is 0600 in a 0700 root-owned run directory."""
    if os.geteuid() != 0:
        raise Skip("hangar drops privileges for QEMU only when it runs as root")
    import pwd
    try:
        want = pwd.getpwnam("blimp")
    except KeyError:
        want = pwd.getpwnam("nobody")
    sandbox = stock_has_sandbox()
    with Run(build, ["--vm", long_lived_vm(build, "a"), "--duration", "120s"]) as r:
        pid = int(r.wait_for(r"vm a: started QEMU pid (\d+)").group(1))
        r.wait_for(r"vm a: started QEMU pid \d+ \(.*as " + want.pw_name)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not re.search(r"^a\s+(running|paused)", r.stdout(), re.M):
            time.sleep(0.2)
        st = status_fields(pid)
        uids, gids = st["Uid"].split(), st["Gid"].split()
        check(uids == [str(want.pw_uid)] * 4, f"QEMU Uid {uids}, want {want.pw_uid} ({want.pw_name})")
        check(gids == [str(want.pw_gid)] * 4, f"QEMU Gid {gids}, want {want.pw_gid}")
        check("0" not in st["Groups"].split(), f"QEMU kept root's group: {st['Groups']}")
        check(int(st["CapEff"], 16) == 0, f"QEMU has capabilities {st['CapEff']}")
        if sandbox:
            check(st["Seccomp"].strip() == "2", f"QEMU not sandboxed: Seccomp {st['Seccomp']}")
            check("-sandbox" in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"), "no -sandbox")
        else:
            check("no seccomp sandbox" in r.stderr(), f"no warning about the missing sandbox\n{r.stderr()}")
        d = os.stat(r.run_dir)
        check(d.st_uid == 0 and (d.st_mode & 0o777) == 0o700, f"run dir mode {oct(d.st_mode)} uid {d.st_uid}")
        q = os.stat(os.path.join(r.run_dir, "a.qmp"))
        check(stat.S_ISSOCK(q.st_mode) and (q.st_mode & 0o777) == 0o600 and q.st_uid == 0,
              f"QMP socket mode {oct(q.st_mode)} uid {q.st_uid}")
        # The guest still runs and reports through QMP (the balloon works as the unprivileged user).
        r.proc.send_signal(signal.SIGTERM)
        rc = r.wait(timeout=60)
        s, vms = r.summary()
        check(rc == 128 + signal.SIGTERM and vms["a"]["outcome"] == "stopped", f"exit {rc}\n{r.stderr()}")
        print(f"  QEMU pid {pid}: uid {uids[0]} ({want.pw_name}), Seccomp {st['Seccomp']}, "
              f"socket {oct(q.st_mode & 0o777)}, run dir {oct(d.st_mode & 0o777)}", flush=True)


@t.test
def test_unsafe_run_dir_refused(build):
    hangar, kernel = tools(build)
    tmp = tempfile.mkdtemp(prefix="hangar-rundir-")
    try:
        def run(run_dir):
            return subprocess.run([hangar, "run", "--kernel", kernel, "--qemu", "stock", "--vm", "name=a",
                                   "--run-dir", run_dir], capture_output=True, text=True, timeout=60)
        open_dir = os.path.join(tmp, "open")
        os.mkdir(open_dir)
        os.chmod(open_dir, 0o777)
        link = os.path.join(tmp, "link")
        private = os.path.join(tmp, "private")
        os.mkdir(private, 0o700)
        os.symlink(private, link)
        for d, why in ((open_dir, "writable by everyone"), (link, "symlink")):
            p = run(d)
            check(p.returncode == 3, f"{d}: exit {p.returncode}\n{p.stderr}")
            check("unsafe run directory" in p.stderr and why in p.stderr, p.stderr)
            check("started QEMU" not in p.stderr, p.stderr)
        if os.geteuid() == 0:
            theirs = os.path.join(tmp, "theirs")
            os.mkdir(theirs, 0o700)
            os.chown(theirs, 65534, 65534)
            p = run(theirs)
            check(p.returncode == 3 and "owned by uid 65534" in p.stderr, f"exit {p.returncode}\n{p.stderr}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@t.test
def test_sighup_restores_ksm_and_sigkill_is_undone_by_the_next_run(build):
    hangar, kernel = tools(build)
    tmp = tempfile.mkdtemp(prefix="hangar-ksm-")
    try:
        ksm_dir, before = fake_ksm(tmp)
        ksm = ["--ksm", "blind", "--ksm-pages-to-scan", "5000", "--ksm-sysfs", ksm_dir]
        with Run(build, ["--vm", long_lived_vm(build, "a"), "--duration", "120s", *ksm]) as r:
            r.wait_for(r"KSM blind")
            r.wait_for(r"vm a: started QEMU pid")
            r.proc.send_signal(signal.SIGHUP)
            rc = r.wait(timeout=60)
            check(rc == 128 + signal.SIGHUP, f"exit {rc}\n{r.stderr()}")
            check(read_ksm(ksm_dir, before) == before, f"KSM not restored on SIGHUP: {read_ksm(ksm_dir, before)}")
        # SIGKILL: nothing runs in hangar, so the save file is what undoes it, at the next start.
        run_dir = os.path.join(tmp, "run")
        cmd = [hangar, "run", "--kernel", kernel, "--qemu", "stock", "--run-dir", run_dir, "--status", "off",
               "--vm", long_lived_vm(build, "a"), "--duration", "120s"]
        err = open(os.path.join(tmp, "err1.txt"), "w+")
        p = subprocess.Popen(cmd + ksm, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and "started QEMU" not in open(err.name).read():
                time.sleep(0.2)
            p.kill()
            p.wait()
            check(read_ksm(ksm_dir, ["pages_to_scan"])["pages_to_scan"] == "5000", "KSM not changed by the run")
            saved = os.path.join(run_dir, "ksm-saved.json")
            check(os.path.exists(saved), "no save file after SIGKILL")
            check((os.stat(saved).st_mode & 0o777) == 0o600, oct(os.stat(saved).st_mode))
            time.sleep(1)  # its QEMU dies with it (PR_SET_PDEATHSIG)
            check(not qemu_pids_of(run_dir), f"QEMU outlived a SIGKILLed hangar: {qemu_pids_of(run_dir)}")
            # The next hangar (this one leaves KSM alone) restores the stale save first.
            q = subprocess.run(cmd[:-4] + ["--vm", "name=b,app=hello", "--ksm-sysfs", ksm_dir],
                               capture_output=True, text=True, timeout=240)
            check(q.returncode == 0, f"exit {q.returncode}\n{q.stderr}")
            check("restored KSM settings left by pid" in q.stderr, q.stderr)
            check(read_ksm(ksm_dir, before) == before, f"stale save not restored: {read_ksm(ksm_dir, before)}")
            check(not os.path.exists(saved), "stale save file left")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            for pid in qemu_pids_of(run_dir):
                os.kill(pid, signal.SIGKILL)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    t.main()
