#!/usr/bin/env python3
"""Bounded libFuzzer run of the guest-input decoders of the QEMU patch series.

Builds tests/fuzz/fuzz_blimp_{req,runs,pstate,remark,guard}.c against host/qemu/blimp-balloon-decode.c (the
same file QEMU compiles) with clang -fsanitize=fuzzer,address,undefined into BUILD_DIR/fuzz/,
seeds each corpus with valid requests, and runs each target for FUZZ_SECONDS (default 15).
Exit 0 pass, 77 skip (no clang / libFuzzer runtime), 1 a crash or assertion (the reproducer is
left in BUILD_DIR/fuzz/).
"""
import os
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from blimp_vm import Skip, TestRunner  # noqa: E402

TARGETS = ["req", "runs", "pstate", "remark", "guard"]
t = TestRunner()
t.option("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "15")))


def seeds(target):
    hdr = lambda t, c: struct.pack("<HHIQ", t, 0, c, 0)  # noqa: E731
    if target == "req":
        return [hdr(1, 1) + struct.pack("<QQQ", 0x400000, 65536, 0),
                hdr(2, 0),
                hdr(5, 1) + struct.pack("<QQQ", 0x500000, 65536, 0),
                hdr(3, 2) + struct.pack("<QIIQ", 0x2000, 1, 0, 0x1234) +
                struct.pack("<QIIQ", 0x2001, 64, 1, 0x5678),
                hdr(3, 2) + struct.pack("<QIIQ", 0x100, 8, 2, 0x9abc) +   # WRITABLE
                struct.pack("<QIIQ", 0x108, 4, 3, 0x5678),                # ZERO | WRITABLE
                hdr(4, 1) + struct.pack("<QII", 0x2000, 1, 0)]
    if target == "runs":
        return [struct.pack("<8I", 5, 6, 7, 1, 2, 100, 7, 8),
                struct.pack("<4I", 0xFFFFFFFF, 0xFFFFFFFE, 0, 1)]
    if target == "remark":
        # mode/gap/max-runs/stop, then hints (delta, npages, hash bits: 1 old set, 2 new set, x)
        return [bytes([0, 16, 0x85, 0]) + bytes([0, 1, 3, 0, 1, 1, 1, 0, 20, 4, 2, 0x10,
                                                  3, 2, 3, 0x21, 30, 8, 1, 0x33]),
                bytes([1, 0, 2, 3]) + bytes([5, 3, 1, 0xF1, 0, 2, 2, 0x01, 1, 1, 3, 0x70])]
    if target == "guard":
        # skip_lo, skip_len, first, count, count hi, finish/wrap, batch, claim_unused; states
        return [bytes([2, 1, 0, 12, 0, 1, 3, 1]) + bytes([1, 1, 0, 6, 1, 2, 3, 1, 5, 4, 1, 1]),
                bytes([0, 0, 4, 200, 1, 0, 7, 0]) + bytes([1, 6, 1, 0xF3, 3, 1, 1, 0] * 8)]
    return [bytes([3, 2, 0, 3, 0, 0, 0, 0]) + bytes([1, 1, 3, 0, 2, 0x81, 0x41, 0x7F, 3, 1]),
            bytes([0, 0, 8, 1, 2, 0, 0, 0]) + bytes([1] * 64)]


def fuzz(build, target):
    """Builds fuzz_blimp_TARGET and runs it for --seconds; AssertionError on a build failure or
    a finding, Skip without clang or libFuzzer."""
    clang = shutil.which("clang") or shutil.which("clang-14")
    if not clang:
        raise Skip("clang not installed (apt-get install clang)")
    seconds = t.options.seconds
    out = os.path.join(build, "fuzz")
    os.makedirs(out, exist_ok=True)
    dec = os.path.join(ROOT, "host", "qemu", "blimp-balloon-decode.c")
    src = os.path.join(ROOT, "tests", "fuzz", f"fuzz_blimp_{target}.c")
    exe = os.path.join(out, f"fuzz_blimp_{target}")
    cmd = [clang, "-g", "-O1", "-fsanitize=fuzzer,address,undefined",
           "-fno-sanitize-recover=undefined", "-I", os.path.dirname(dec), src, dec,
           "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        if "fuzzer" in r.stderr and ("cannot find" in r.stderr or "not found" in r.stderr):
            raise Skip(f"libFuzzer runtime missing ({r.stderr.strip()[:200]})")
        raise AssertionError(f"building {target}:\n{r.stderr[-2000:]}")
    corpus = os.path.join(out, f"corpus_{target}")
    os.makedirs(corpus, exist_ok=True)
    for i, s in enumerate(seeds(target)):
        with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
            f.write(s)
    run = ["timeout", "--kill-after=10", str(seconds + 60), exe,
           f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=1024",
           f"-artifact_prefix={out}/crash_{target}_", corpus]
    r = subprocess.run(run, capture_output=True, text=True)
    last = [ln for ln in r.stderr.splitlines() if ln.startswith("Done") or "#" in ln[:2]]
    if r.returncode != 0:
        raise AssertionError(f"fuzz_blimp_{target} exit {r.returncode}:\n{r.stderr[-3000:]}")
    print(f"  fuzz_blimp_{target}: {last[-1] if last else 'done'}", flush=True)


for target in TARGETS:
    def test(build, target=target):
        fuzz(build, target)
    test.__name__ = f"test_fuzz_{target}"
    t.test(test)


if __name__ == "__main__":
    t.main()
