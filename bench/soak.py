#!/usr/bin/env python3
"""Soak benchmark: N cycles of boot -> snapshot -> restore -> kill.

Each cycle starts a flint with an API socket, boots the test guest
(InstanceStart; the guest runs ~1 s, long enough to be past the early kernel),
pauses it, writes a full snapshot, stops that flint, restores the snapshot in a
new flint process, checks that the restored VM runs (GET / says "Running"),
takes a second snapshot of it (the restored process's own snapshot path) and
kills it with SIGKILL.

It records, per cycle, the open file descriptors and RSS of both processes at
the same points (the booted one just after its snapshot, the restored one just
after its snapshot), and at the end prints the first and last values, the
maxima, and whether either grew over the run (a leak shows as a steady rise;
the verdict compares the mean of the last 10 cycles with the first 10). Also
checks that no flint process, socket or temporary directory is left behind.

A benchmark, not a test: it prints figures and exits 0 unless something
failed outright (a boot or restore that did not work).

Usage: bench/soak.py [--flint PATH] [--cycles N] [--mem MIB]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def guest_dir():
    return subprocess.run([os.path.join(REPO, "scripts", "guest-dir")], check=True,
                          capture_output=True, text=True).stdout.strip()


def ctl(flint, sock, method, path, body=None):
    args = [flint, "ctl", "--api-sock", sock]
    if method == "GET":
        args += ["get", path]
    else:
        args += [method.lower(), path, json.dumps(body)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"{method} {path}: {out.stdout}{out.stderr}")
    return out.stdout


def wait_socket(path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise SystemExit(f"flint exited before creating {path}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} never appeared")
        time.sleep(0.005)


def fds_and_rss(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return fds, rss


def start(flint, args, sock):
    proc = subprocess.Popen([flint, "run", "--no-console-input", "--api-sock", sock] + args,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_socket(sock, proc)
    return proc


def cycle(flint, work, kernel, initrd, mem):
    snap = os.path.join(work, "snap")
    snap2 = os.path.join(work, "snap2")
    sock_a = os.path.join(work, "a.sock")
    sock_b = os.path.join(work, "b.sock")
    os.makedirs(snap, exist_ok=True)
    os.makedirs(snap2, exist_ok=True)
    a = start(flint, [], sock_a)
    try:
        ctl(flint, sock_a, "PUT", "/boot-source", {
            "kernel_image_path": kernel, "initrd_path": initrd,
            "boot_args": "console=ttyS0 reboot=k panic=-1 quiet guest_end=halt"})
        ctl(flint, sock_a, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": mem})
        ctl(flint, sock_a, "PUT", "/actions", {"action_type": "InstanceStart"})
        time.sleep(1.0)
        ctl(flint, sock_a, "PATCH", "/vm", {"state": "Paused"})
        ctl(flint, sock_a, "PUT", "/snapshot/create", {
            "snapshot_path": os.path.join(snap, "vmstate"),
            "mem_file_path": os.path.join(snap, "memory")})
        booted = fds_and_rss(a.pid)
        ctl(flint, sock_a, "PUT", "/actions", {"action_type": "Stop"})
        a.wait(timeout=60)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    b = start(flint, ["--restore", snap], sock_b)
    try:
        info = json.loads(ctl(flint, sock_b, "GET", "/"))
        if info.get("state") != "Running":
            raise SystemExit(f"restored VM is not running: {info}")
        time.sleep(0.2)
        ctl(flint, sock_b, "PATCH", "/vm", {"state": "Paused"})
        ctl(flint, sock_b, "PUT", "/snapshot/create", {
            "snapshot_path": os.path.join(snap2, "vmstate"),
            "mem_file_path": os.path.join(snap2, "memory")})
        restored = fds_and_rss(b.pid)
    finally:
        b.kill()
        b.wait()
    for path in (snap, snap2):
        shutil.rmtree(path, ignore_errors=True)
    for sock in (sock_a, sock_b):
        if os.path.exists(sock):
            os.unlink(sock)  # a killed flint cannot remove its socket
    return booted, restored


def grew(values):
    head = values[:10]
    tail = values[-10:]
    return sum(tail) / len(tail) - sum(head) / len(head)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flint", default=os.path.join(REPO, "target", "release", "flint"))
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--mem", type=int, default=64)
    args = ap.parse_args()
    if not os.path.exists(args.flint):
        subprocess.run(["cargo", "build", "--release", "--bin", "flint"], cwd=REPO, check=True)
    guest = guest_dir()
    kernel = os.path.join(guest, "vmlinux")
    initrd = os.path.join(guest, "initramfs.cpio")
    before = set(subprocess.run(["pgrep", "-x", "flint"], capture_output=True, text=True).stdout.split())
    booted, restored = [], []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flint-soak-") as work:
        for i in range(args.cycles):
            b, r = cycle(args.flint, work, kernel, initrd, args.mem)
            booted.append(b)
            restored.append(r)
            if (i + 1) % 10 == 0:
                print(f"cycle {i + 1}: booted fds={b[0]} rss={b[1]} KiB; "
                      f"restored fds={r[0]} rss={r[1]} KiB", flush=True)
        leftovers = os.listdir(work)
    after = set(subprocess.run(["pgrep", "-x", "flint"], capture_output=True, text=True).stdout.split())
    elapsed = time.monotonic() - t0
    print(f"\n{args.cycles} cycles in {elapsed:.0f} s ({elapsed / args.cycles:.2f} s each), "
          f"{args.mem} MiB guests")
    for name, rows in (("booted", booted), ("restored", restored)):
        fds = [f for f, _ in rows]
        rss = [r for _, r in rows]
        print(f"{name:>8}: fds first {fds[0]} last {fds[-1]} max {max(fds)} (growth {grew(fds):+.1f}); "
              f"RSS first {rss[0]} last {rss[-1]} max {max(rss)} KiB (growth {grew(rss):+.0f} KiB)")
    stray = sorted(after - before)
    print(f"left behind: {len(stray)} flint processes, {len(leftovers)} files in the work directory")
    leak = any(grew([f for f, _ in rows]) > 0.5 for rows in (booted, restored))
    print("verdict: " + ("fd count GROWS" if leak else "fd count flat") + "; RSS growth above")
    return 0


if __name__ == "__main__":
    sys.exit(main())
