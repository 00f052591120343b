#!/usr/bin/env python3
"""Boot benchmark for flint: prints medians over several runs.

Figures (all from outside the flint process, except where noted):
  * start -> first guest instruction: spawn of `flint run` until flint logs that
    vCPU 0 enters the guest (flint's own in-process figure is printed too);
  * VMM memory overhead: flint's RSS minus the resident pages of the guest-RAM
    mapping, from /proc/PID/smaps, sampled when the guest reports GUEST-READY;
  * start -> GUEST-READY: wall time until the guest's init prints its marker.

Reference on this machine (guest README / issue): Firecracker boots the same
guest to GUEST-READY in ~35 s; the ratio flint/Firecracker is printed against
that figure (override with --reference-ready-s).

Usage: bench/boot.py [--runs N] [--vcpus N] [--mem MIB] [--flint PATH]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def guest_dir():
    out = subprocess.run([os.path.join(REPO, "scripts", "guest-dir")], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def guest_ram_rss_kib(pid, mem_mib):
    """(total RSS, RSS of the guest RAM mapping) in KiB from /proc/PID/smaps."""
    total = guest = 0
    size = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                size = None
            elif line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
                total += rss
                if size == mem_mib * 1024:
                    guest += rss
    return total, guest


def one_run(flint, config_path, mem_mib):
    t0 = time.monotonic()
    proc = subprocess.Popen([flint, "run", "--no-console-input", "--config", config_path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = {}

    def read_stderr():
        for line in proc.stderr:
            m = re.search(r"vCPU 0 entering the guest ([0-9.]+) ms after flint started", line)
            if m and "first_entry_ms" not in result:
                result["first_entry_ms"] = (time.monotonic() - t0) * 1000
                result["first_entry_internal_ms"] = float(m.group(1))

    t = threading.Thread(target=read_stderr, daemon=True)
    t.start()
    for line in proc.stdout:
        if line.startswith("GUEST-READY"):
            result["ready_s"] = time.monotonic() - t0
            total, guest = guest_ram_rss_kib(proc.pid, mem_mib)
            result["rss_kib"] = total
            result["overhead_kib"] = total - guest
            break
    proc.terminate()
    proc.wait(timeout=60)
    t.join(timeout=5)
    if "ready_s" not in result:
        raise SystemExit(f"run failed: flint exited {proc.returncode} before GUEST-READY")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--mem", type=int, default=256)
    ap.add_argument("--flint", default=None, help="flint binary (default: build --release)")
    ap.add_argument("--reference-ready-s", type=float, default=35.0)
    args = ap.parse_args()

    flint = args.flint
    if flint is None:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
        flint = os.path.join(REPO, "target", "release", "flint")
    gdir = guest_dir()
    config = {
        "boot-source": {
            "kernel_image_path": os.path.join(gdir, "vmlinux"),
            "initrd_path": os.path.join(gdir, "initramfs.cpio"),
            "boot_args": "console=ttyS0 reboot=k panic=-1 quiet guest_end=halt",
        },
        "machine-config": {"vcpu_count": args.vcpus, "mem_size_mib": args.mem},
    }
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "vm.json")
        with open(path, "w") as f:
            json.dump(config, f)
        runs = []
        for i in range(args.runs):
            r = one_run(flint, path, args.mem)
            print(f"run {i + 1}: first instruction {r['first_entry_ms']:.1f} ms, "
                  f"GUEST-READY {r['ready_s']:.1f} s, VMM overhead {r['overhead_kib'] / 1024:.1f} MiB",
                  flush=True)
            runs.append(r)

    def med(key):
        return statistics.median(r[key] for r in runs)

    print(f"\nflint boot benchmark: {args.runs} runs, {args.vcpus} vCPU(s), {args.mem} MiB, vmlinux + initramfs.cpio")
    print(f"  start -> first guest instruction   median {med('first_entry_ms'):8.1f} ms "
          f"(in-process: {med('first_entry_internal_ms'):.1f} ms)")
    print(f"  VMM memory overhead (RSS - guest)  median {med('overhead_kib') / 1024:8.1f} MiB "
          f"(total RSS {med('rss_kib') / 1024:.1f} MiB)")
    print(f"  start -> GUEST-READY               median {med('ready_s'):8.1f} s")
    print(f"  ratio to Firecracker reference ({args.reference_ready_s:.0f} s)  {med('ready_s') / args.reference_ready_s:8.2f}x")


if __name__ == "__main__":
    sys.exit(main())
