#!/usr/bin/env python3
"""Model-checks docs/page-states.pml with spin: the protocol must verify (assertions, no invalid
end state, LTL `settles` under weak fairness), and each deliberately broken variant must be
caught, so the properties are known to detect what they claim to.

    run_spin.py MODEL.pml WORKDIR       exit 0 ok, 1 failure, 77 spin/gcc missing
"""
import os
import re
import shutil
import subprocess
import sys


def pan(model, workdir, defines, safety):
    """Returns (errors, output) of one verification run."""
    tag = "_".join(d.lstrip("-D") for d in defines) or "protocol"
    d = os.path.join(workdir, f"{tag}-{'safety' if safety else 'ltl'}")
    os.makedirs(d, exist_ok=True)
    shutil.copy(model, os.path.join(d, "model.pml"))
    subprocess.run(["spin", *defines, "-a", "model.pml"], cwd=d, check=True,
                   capture_output=True, timeout=60)
    cflags = ["-O2", "-DNOCLAIM"] if safety else ["-O2"]
    subprocess.run(["gcc", *cflags, "-o", "pan", "pan.c"], cwd=d, check=True,
                   capture_output=True, timeout=120)
    # Depth: the two-CPU model's longest path is about 250k steps; a search cut at the limit
    # would verify only part of the state space, so a cut is an error below.
    args = ["./pan", "-m1000000"] + ([] if safety else ["-a", "-f"])
    out = subprocess.run(args, cwd=d, capture_output=True, text=True, timeout=300).stdout
    m = re.search(r"errors: (\d+)", out)
    if not m:
        raise RuntimeError(f"pan output not understood:\n{out}")
    if "max search depth too small" in out and int(m.group(1)) == 0:
        raise RuntimeError(f"pan cut the search at its depth limit (raise -m):\n{out}")
    return int(m.group(1)), out


def main():
    model, workdir = os.path.abspath(sys.argv[1]), sys.argv[2]
    if not shutil.which("spin") or not shutil.which("gcc"):
        print("SKIP: spin or gcc not installed (scripts/install-deps.sh installs spin)")
        return 77
    failed = False
    for defines, name in (([], "protocol"), (["-DTCG_SAME_TB"], "protocol under TCG (TCG_SAME_TB)")):
        for safety in (True, False):
            errors, out = pan(model, workdir, defines, safety)
            kind = "safety (assertions, end states)" if safety else "LTL settles (weak fairness)"
            states = re.search(r"(\d+) states, stored", out)
            print(f"{'ok  ' if errors == 0 else 'FAIL'} {name}, {kind}: {errors} errors, "
                  f"{states.group(1) if states else '?'} states")
            if errors:
                print(out)
                failed = True
    for variant in ("BUG_STORE", "BUG_FREE_STORE", "BUG_PCP_UNCLAIMED", "TCG_NONATOMIC"):
        e1, _ = pan(model, workdir, [f"-D{variant}"], True)
        e2, _ = pan(model, workdir, [f"-D{variant}"], False)
        caught = e1 > 0 or e2 > 0
        print(f"{'ok  ' if caught else 'FAIL'} variant {variant} is caught "
              f"(safety errors {e1}, LTL errors {e2})")
        failed |= not caught
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
