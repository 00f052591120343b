#!/usr/bin/env python3
"""Regenerates resources/text-order/{static,dynamic}.txt (the one for the
binary given: static-pie or dynamically linked): the functions flint runs
from process start to an idle, answering API, then while it boots a guest
and runs it, which build.rs has the linker (rust-lld,
--symbol-ordering-file) pack together in that order, so that few pages of
the binary's text become resident (see the README's performance section):
the first part bounds idle RSS, the whole list the VMM's overhead while a
guest runs.

Runs the release binary under `valgrind --tool=callgrind` (apt-get install
valgrind), with --no-seccomp (valgrind cannot run seccomp(2)); the seccomp
filter code is added by name. Phase 1 sends the requests a client makes
before InstanceStart and dumps the profile; phase 2 (skipped with
--no-boot) boots the test guest (bench/compare.py's configuration, under
the shared boot lock) to GUEST-READY, pauses, resumes and snapshots it, and
dumps again. The function names that are text symbols of the binary are
kept in first-seen order, phase by phase.

Callgrind does not see everything a native run executes (libc's start-up
in the static binary, ifunc resolvers, code that only runs with seccomp),
so then come --fault-passes (default 4) native passes on the release
binary: perf samples every page fault of a run (start-up to an answered
GET /, then a boot unless --no-boot), the functions whose code pages
faulted and are not listed yet are added (start-up ones first in the
list, the running guest's last), the binary is rebuilt, and again until
no fault is in an unlisted function. --skip-callgrind starts from the
current list. (perf: apt-get install linux-perf.)

Usage: bench/startup_order.py [--flint PATH] [--no-boot] [--fault-passes N]
                              [--skip-callgrind]

The default binary is the release build as shipped (scripts/build-release,
static-pie); the list must come from the binary it is meant for, since
symbol hashes differ between the static and the dynamic build.
"""
import argparse
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

REPO = compare.REPO


def text_symbols(binary):
    out = subprocess.run(["nm", "--defined-only", binary], check=True, capture_output=True,
                         text=True).stdout
    return {p[2] for p in (line.split() for line in out.splitlines())
            if len(p) == 3 and p[1] in "tT"}


class Console:
    """The guest's serial output (flint's stdout), read on a thread."""

    def __init__(self, proc):
        self.ready = threading.Event()
        self.lines = []
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc):
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if "GUEST-READY" in line:
                self.ready.set()


def dump(proc, out, count):
    """Has callgrind write its profile so far (and reset its counts);
    waits until the `count`th dump file is there."""
    subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                   capture_output=True)
    deadline = time.time() + 60
    while len(glob.glob(out + ".*")) < count:
        if time.time() > deadline:
            sys.exit(f"callgrind wrote no dump {count}")
        time.sleep(0.2)
    time.sleep(1)


def boot_phase(sock, work, console):
    """What a running guest makes flint do: InstanceStart, the boot to
    GUEST-READY, some seconds of idle guest, pause/resume, a snapshot."""
    gdir = compare.guest_dir()
    compare.configure(sock_holder(sock), os.path.join(gdir, "vmlinux"),
                      os.path.join(gdir, "initramfs.cpio"))
    compare.call(sock, "PUT", "/actions", {"action_type": "InstanceStart"})
    if not console.ready.wait(900):
        sys.exit("no GUEST-READY under valgrind:\n" + "".join(console.lines[-20:]))
    time.sleep(5)
    for state in ("Paused", "Resumed", "Paused"):
        compare.call(sock, "PATCH", "/vm", {"state": state})
    compare.call(sock, "PUT", "/snapshot/create", {
        "snapshot_type": "Full", "snapshot_path": os.path.join(work, "vmstate"),
        "mem_file_path": os.path.join(work, "mem")})


def sock_holder(sock):
    """compare.configure takes a VMM; it only needs its socket."""
    return type("Sock", (), {"sock": sock})()


def fault_pass(binary, boot, work):
    """The functions (mangled names, first fault first) whose code pages a
    native run of `binary` faulted in: start-up to an answered GET /, and
    with `boot` a boot to GUEST-READY, a pause and a resume."""
    sock = os.path.join(work, "pf.sock")
    data = os.path.join(work, "pf.data")
    for path in (sock, data):
        if os.path.exists(path):
            os.unlink(path)
    rec = subprocess.Popen(["perf", "record", "-q", "-e", "page-faults", "-c", "1", "-d",
                            "-o", data, "--", binary, "--api-sock", sock, "--id", "faults"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                compare.get_root_raw(sock)
                break
            except OSError:
                if time.time() > deadline or rec.poll() is not None:
                    sys.exit("flint under perf never answered")
                time.sleep(0.01)
        if boot:
            console = Console(rec)
            with compare.boot_lock():
                gdir = compare.guest_dir()
                compare.configure(sock_holder(sock), os.path.join(gdir, "vmlinux"),
                                  os.path.join(gdir, "initramfs.cpio"))
                compare.call(sock, "PUT", "/actions", {"action_type": "InstanceStart"})
                if not console.ready.wait(600):
                    sys.exit("no GUEST-READY under perf")
                time.sleep(2)
                compare.call(sock, "PATCH", "/vm", {"state": "Paused"})
                compare.call(sock, "PATCH", "/vm", {"state": "Resumed"})
        time.sleep(0.3)
    finally:
        # perf stops the recording when its child ends.
        children = subprocess.run(["pgrep", "-P", str(rec.pid)], capture_output=True,
                                  text=True).stdout.split()
        for pid in children:
            os.kill(int(pid), signal.SIGINT)
        rec.wait()
    out = subprocess.run(["perf", "script", "--no-demangle", "-i", data, "-F", "addr,ip,sym"],
                         capture_output=True, text=True, check=True).stdout
    names = []
    for line in out.splitlines():
        f = line.split()
        # addr, its symbol, ip, its symbol: a fault on the code being run.
        if len(f) >= 4 and f[0] == f[2] and f[3] != "[unknown]":
            names.append(f[3])
    return list(dict.fromkeys(names))


def fault_passes(binary, dest, passes, boot):
    """Adds what native runs fault in to the list at `dest` (see the
    module's doc), rebuilding `binary` with scripts/build-release."""
    with tempfile.TemporaryDirectory(prefix="flint-faults-") as work:
        for n in range(passes):
            with open(dest) as f:
                order = [line.strip() for line in f if line.strip()]
            listed = set(order)
            start = [s for s in fault_pass(binary, False, work) if s not in listed]
            running = []
            if boot:
                running = [s for s in fault_pass(binary, True, work)
                           if s not in listed and s not in start]
            print(f"fault pass {n + 1}: {len(start)} start-up and {len(running)} run-time "
                  "functions not listed", flush=True)
            if not start and not running:
                return
            with open(dest, "w") as f:
                f.write("\n".join(start + order + running) + "\n")
            compare.release_flint()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flint", help="default: the release binary, scripts/build-release")
    ap.add_argument("--no-boot", action="store_true", help="only the start-up phase")
    ap.add_argument("--fault-passes", type=int, default=4,
                    help="native page-fault passes (release binary only)")
    ap.add_argument("--skip-callgrind", action="store_true",
                    help="start the fault passes from the current list")
    args = ap.parse_args()
    release = args.flint is None
    if release:
        args.flint = compare.release_flint()
    if not args.skip_callgrind:
        callgrind_list(args)
    if release and args.fault_passes:
        compare.release_flint()
        fault_passes(args.flint, compare.order_list(args.flint), args.fault_passes,
                     not args.no_boot)
    return 0


def callgrind_list(args):
    """The list from callgrind runs (start-up, then a running guest)."""
    with tempfile.TemporaryDirectory(prefix="flint-order-") as work:
        sock = os.path.join(work, "api.sock")
        out = os.path.join(work, "cg.out")
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--demangle=no",
                                 f"--callgrind-out-file={out}", args.flint,
                                 "--api-sock", sock, "--id", "order", "--no-seccomp"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        console = Console(proc)
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
            dump(proc, out, 1)
            if not args.no_boot:
                with compare.boot_lock():
                    boot_phase(sock, work, console)
                dump(proc, out, 2)
        finally:
            proc.kill()
            proc.wait()
        phases = []
        for path in sorted(glob.glob(out + ".*"), key=lambda p: int(p.rsplit(".", 1)[1])):
            with open(path) as f:
                phases.append([m.group(1) for m in
                               (re.match(r"c?fn=\(\d+\) (\S+)", line) for line in f) if m])
    text = text_symbols(args.flint)
    # Start-up, the seccomp filter code (start-up, but not seen without
    # seccomp), libc's string and memory routines (static build: glibc picks
    # one variant per CPU at start, and valgrind's CPU is not the real one,
    # so all of them; AVX-512/AVX2 ones first), then the running guest's.
    names = phases[0] + sorted(s for s in text if "seccomp" in s)
    variant = re.compile(r"^__(mem|str|stp|wmem|wcs|raw)\w*_(avx|evex|sse|erms)")
    names += sorted((s for s in text if variant.match(s)),
                    key=lambda s: (0 if "evex" in s or "avx512" in s else
                                   1 if "avx" in s else 2, s))
    for phase in phases[1:]:
        names += phase
    seen = set()
    order = []
    for name in names:
        if name in text and name not in seen:
            seen.add(name)
            order.append(name)
    dest = compare.order_list(args.flint)
    with open(dest, "w") as f:
        f.write("\n".join(order) + "\n")
    print(f"{len(order)} functions ({len(set(phases[0]) & text)} at start-up) -> {dest}")


if __name__ == "__main__":
    sys.exit(main())
