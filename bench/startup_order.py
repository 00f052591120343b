#!/usr/bin/env python3
"""Regenerates resources/startup-text-order.txt: the functions flint runs
from process start to an idle, answering API, which build.rs has the linker
(rust-lld, --symbol-ordering-file) pack together so that few pages of the
binary's text become resident (see the README's performance section).

Runs the release binary under `valgrind --tool=callgrind` (apt-get install
valgrind), with --no-seccomp (valgrind cannot run seccomp(2)); the seccomp
filter code is added by name. Sends the requests a client makes before
InstanceStart, dumps the profile and keeps the function names that are text
symbols of the binary, in first-seen order.

Usage: bench/startup_order.py [--flint target/release/flint]
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

REPO = compare.REPO


def text_symbols(binary):
    out = subprocess.run(["nm", "--defined-only", binary], check=True, capture_output=True,
                         text=True).stdout
    return {p[2] for p in (line.split() for line in out.splitlines())
            if len(p) == 3 and p[1] in "tT"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flint", default=os.path.join(REPO, "target", "release", "flint"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="flint-order-") as work:
        sock = os.path.join(work, "api.sock")
        out = os.path.join(work, "cg.out")
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--demangle=no",
                                 f"--callgrind-out-file={out}", args.flint,
                                 "--api-sock", sock, "--id", "order", "--no-seccomp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 120
            while not os.path.exists(sock):
                if time.time() > deadline or proc.poll() is not None:
                    sys.exit("flint under valgrind never opened its API socket")
                time.sleep(0.2)
            time.sleep(1)
            for _ in range(3):
                compare.get_root_raw(sock)
            compare.call(sock, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 256})
            compare.call(sock, "GET", "/machine-config")
            compare.call(sock, "GET", "/vm/config")
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                           capture_output=True)
            time.sleep(2)
        finally:
            proc.kill()
            proc.wait()
        names = []
        for path in sorted(glob.glob(out + "*")):
            with open(path) as f:
                for line in f:
                    m = re.match(r"c?fn=\(\d+\) (\S+)", line)
                    if m:
                        names.append(m.group(1))
    text = text_symbols(args.flint)
    seen = set()
    order = []
    for name in names + sorted(s for s in text if "seccomp" in s):
        if name in text and name not in seen:
            seen.add(name)
            order.append(name)
    dest = os.path.join(REPO, "resources", "startup-text-order.txt")
    with open(dest, "w") as f:
        f.write("\n".join(order) + "\n")
    print(f"{len(order)} functions -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
