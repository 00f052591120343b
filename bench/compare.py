#!/usr/bin/env python3
"""flint next to Firecracker, measured side by side on the same guest.

Both VMMs are driven the same way: started with Firecracker's command line
(`--api-sock PATH --id ID`; flint accepts it, see "Firecracker compatibility"
in the README) and configured through Firecracker's API. Runs are interleaved
(flint, Firecracker, flint, ...) so machine noise hits both alike; each figure
is the median of --runs runs, printed for both with the ratio flint/FC and
the goal from issue 15 ("<= 0.5" means flint must take at most half).

Figures:
  start->API      process start -> the API socket answers GET / (ms)
  idle RSS        RSS of the process before anything is configured (KiB)
  GET / latency   one request per new connection, median of 200 (us)
  InstanceStart   latency of PUT /actions InstanceStart (the call returns once
                  the vCPUs run: the VMM's share of "start -> first guest
                  instruction") (ms)
  VMM overhead    RSS minus the guest-memory mapping's resident pages, while a
                  256 MiB guest idles after GUEST-READY (KiB; from smaps)
  pause           latency of PATCH /vm Paused (ms)
  snapshot        latency of PUT /snapshot/create (Full) of the paused guest (ms)
  restore (File)  new process start -> PUT /snapshot/load with resume_vm
                  answered (ms)
  restore (Uffd)  the same with mem_backend Uffd, the example handler
                  (resources/uffd-handler, started first, not timed) serving
                  the memory file: the VMM's share of a lazy restore (ms)
  boot->READY     process start -> the guest prints GUEST-READY (s; the
                  emulated guest kernel dominates here)

Without FC_BIN (path to a firecracker binary built from its public source)
only flint's figures are printed.

Usage: FC_BIN=/path/to/firecracker bench/compare.py [--flint PATH] [--uffd-handler PATH] [--runs N]
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEM_MIB = 256

# figure -> (unit, goal ratio flint/FC, True if smaller is better)
FIGURES = [
    ("start->API", "ms", 0.5),
    ("idle RSS", "KiB", 0.7),
    ("GET / latency", "us", 0.5),
    ("InstanceStart", "ms", 0.5),
    ("VMM overhead", "KiB", 0.7),
    ("pause", "ms", 0.2),
    ("snapshot", "ms", 0.7),
    ("restore (File)", "ms", 0.5),
    ("restore (Uffd)", "ms", 0.5),
    ("boot->READY", "s", 1.0),
]


def guest_dir():
    return subprocess.run([os.path.join(REPO, "scripts", "guest-dir")], check=True,
                          capture_output=True, text=True).stdout.strip()


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=120)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect(self.path)


def call(sock, method, path, body=None):
    conn = UnixHTTP(sock)
    data = json.dumps(body) if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    if resp.status >= 300:
        raise RuntimeError(f"{method} {path}: {resp.status} {text}")
    return text


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def guest_mapping_rss_kib(pid, mem_mib):
    """Resident KiB of the largest mapping of at least the guest's size (the
    guest RAM), from smaps."""
    best = 0
    size = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:") and size is not None and size >= mem_mib * 1024:
                best = max(best, int(line.split()[1]))
    return best


class Vmm:
    """One VMM process started with Firecracker's command line."""

    def __init__(self, binary, work, name):
        self.sock = os.path.join(work, f"{name}.sock")
        self.lines = []
        self.ready_at = None
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([binary, "--api-sock", self.sock, "--id", name],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            if self.ready_at is None and "GUEST-READY" in line:
                self.ready_at = time.perf_counter()
            self.lines.append(line)

    def wait_api(self, timeout=30):
        deadline = time.perf_counter() + timeout
        while True:
            try:
                call(self.sock, "GET", "/")
                return time.perf_counter() - self.t0
            except (FileNotFoundError, ConnectionRefusedError, OSError):
                if time.perf_counter() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the API never answered")
                time.sleep(0.0005)

    def wait_ready(self, timeout=600):
        deadline = time.perf_counter() + timeout
        while self.ready_at is None:
            if time.perf_counter() > deadline or self.proc.poll() is not None:
                raise RuntimeError("no GUEST-READY:\n" + "".join(self.lines[-20:]))
            time.sleep(0.05)
        return self.ready_at - self.t0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def configure(vmm, kernel, initrd):
    call(vmm.sock, "PUT", "/boot-source", {
        "kernel_image_path": kernel, "initrd_path": initrd,
        "boot_args": "console=ttyS0 reboot=k panic=-1 quiet guest_end=halt "
                     "noxsave clearcpuid=cx16,smap,fsgsbase,invpcid,pcid,rdrand,rdseed,"
                     "popcnt,rdtscp,rdpid"})
    call(vmm.sock, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": MEM_MIB})


def one_run(binary, kernel, initrd, work, tag):
    fig = {}
    vmm = Vmm(binary, work, f"{tag}-a")
    try:
        fig["start->API"] = vmm.wait_api() * 1e3
        fig["idle RSS"] = rss_kib(vmm.proc.pid)
        lat = sorted(timed(lambda: call(vmm.sock, "GET", "/")) for _ in range(200))
        fig["GET / latency"] = statistics.median(lat) * 1e6
        configure(vmm, kernel, initrd)
        fig["InstanceStart"] = timed(lambda: call(
            vmm.sock, "PUT", "/actions", {"action_type": "InstanceStart"})) * 1e3
        fig["boot->READY"] = vmm.wait_ready()
        time.sleep(1)
        fig["VMM overhead"] = rss_kib(vmm.proc.pid) - guest_mapping_rss_kib(vmm.proc.pid, MEM_MIB)
        fig["pause"] = timed(lambda: call(vmm.sock, "PATCH", "/vm", {"state": "Paused"})) * 1e3
        snap = os.path.join(work, f"{tag}.vmstate")
        mem = os.path.join(work, f"{tag}.mem")
        fig["snapshot"] = timed(lambda: call(vmm.sock, "PUT", "/snapshot/create", {
            "snapshot_type": "Full", "snapshot_path": snap, "mem_file_path": mem})) * 1e3
    finally:
        vmm.stop()
    restored = Vmm(binary, work, f"{tag}-b")
    try:
        restored.wait_api()
        call(restored.sock, "PUT", "/snapshot/load", {
            "snapshot_path": snap, "mem_backend": {"backend_type": "File", "backend_path": mem},
            "resume_vm": True})
        fig["restore (File)"] = (time.perf_counter() - restored.t0) * 1e3
    finally:
        restored.stop()
    try:
        fig["restore (Uffd)"] = restore_uffd(binary, work, tag, snap, mem)
    finally:
        for path in (snap, mem):
            if os.path.exists(path):
                os.unlink(path)
    return fig


UFFD_HANDLER = os.path.join(REPO, "target", "release", "uffd-handler")


def restore_uffd(binary, work, tag, snap, mem):
    """New process start -> PUT /snapshot/load (mem_backend Uffd, resume_vm)
    answered, in ms, with the example handler serving `mem` (it speaks
    Firecracker's protocol, so it serves both VMMs)."""
    handler_sock = os.path.join(work, f"{tag}-uffd.sock")
    handler = subprocess.Popen([UFFD_HANDLER, handler_sock, mem],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.perf_counter() + 30
        while not os.path.exists(handler_sock):
            if handler.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError("the uffd handler did not start")
            time.sleep(0.001)
        restored = Vmm(binary, work, f"{tag}-c")
        try:
            restored.wait_api()
            call(restored.sock, "PUT", "/snapshot/load", {
                "snapshot_path": snap,
                "mem_backend": {"backend_type": "Uffd", "backend_path": handler_sock},
                "resume_vm": True})
            return (time.perf_counter() - restored.t0) * 1e3
        finally:
            restored.stop()
    finally:
        handler.kill()
        handler.wait()
        if os.path.exists(handler_sock):
            os.unlink(handler_sock)


def main():
    global UFFD_HANDLER
    ap = argparse.ArgumentParser()
    ap.add_argument("--flint", default=os.path.join(REPO, "target", "release", "flint"))
    ap.add_argument("--uffd-handler", default=UFFD_HANDLER)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not os.path.exists(args.flint):
        subprocess.run(["cargo", "build", "--release", "--bin", "flint"], cwd=REPO, check=True)
    UFFD_HANDLER = args.uffd_handler
    if not os.path.exists(UFFD_HANDLER):
        subprocess.run(["cargo", "build", "--release", "-p", "uffd-handler"], cwd=REPO, check=True)
    fc = os.environ.get("FC_BIN")
    guest = guest_dir()
    kernel, initrd = os.path.join(guest, "vmlinux"), os.path.join(guest, "initramfs.cpio")
    vmms = [("flint", args.flint)] + ([("firecracker", fc)] if fc else [])
    results = {name: [] for name, _ in vmms}
    with tempfile.TemporaryDirectory(prefix="flint-compare-") as work:
        for i in range(args.runs):
            for name, binary in vmms:
                fig = one_run(binary, kernel, initrd, work, f"{name}{i}")
                results[name].append(fig)
                print(f"run {i + 1} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in fig.items()),
                      flush=True)
    print(f"\nmedians of {args.runs} interleaved runs, {MEM_MIB} MiB guest, "
          f"{time.strftime('%Y-%m-%d')}")
    header = f"{'figure':<16}{'flint':>12}"
    if fc:
        header += f"{'Firecracker':>14}{'flint/FC':>10}  goal   verdict"
    print(header)
    for name, unit, goal in FIGURES:
        f = statistics.median(r[name] for r in results["flint"])
        row = f"{name:<16}{f:>9.4g} {unit:<3}"
        if fc:
            c = statistics.median(r[name] for r in results["firecracker"])
            ratio = f / c if c else float("inf")
            verdict = "meets goal" if ratio <= goal else ("flint ahead" if ratio < 1 else "flint behind")
            row += f"{c:>10.4g} {unit:<3}{ratio:>9.2f}  <={goal:<4} {verdict}"
        print(row)
    if not fc:
        print("\n(set FC_BIN=/path/to/firecracker for the side-by-side figures and ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
