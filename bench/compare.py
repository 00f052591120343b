#!/usr/bin/env python3
"""flint next to Firecracker, measured side by side on the same guest.

Both VMMs are driven the same way: started with Firecracker's command line
(`--api-sock PATH --id ID`; flint accepts it, see "Firecracker compatibility"
in the README) and configured through Firecracker's API, so one script drives
both. Runs are interleaved (flint, Firecracker, flint, ...) so machine noise
hits both alike. Each figure is printed as median (min-max) over its samples
for both VMMs, with the ratio of the medians flint/FC, which way it points
(every figure is "smaller is better": a ratio below 1 means flint is ahead)
and the goal from issue 15 ("<= 0.5": flint must take at most half).

Two phases:
  cheap (no guest; --runs, default 9, processes per VMM):
    start->API      process start -> the API socket answers GET / (ms)
    idle RSS        RSS of the process before anything is configured (KiB)
    GET / latency   one request per new connection, median of 200 per
                    process (us)
  guest (--boots, default 3, boots per VMM; a boot takes 30-90 s on an
  emulating host):
    InstanceStart   latency of PUT /actions InstanceStart (the call returns once
                    the vCPUs run: the VMM's share of "start -> first guest
                    instruction") (ms)
    boot->READY     process start -> the guest prints GUEST-READY (s; the
                    emulated guest kernel dominates here)
    VMM overhead    RSS minus the guest-memory mapping's resident pages, while a
                    256 MiB guest idles after GUEST-READY (KiB; from smaps)
    pause           latency of PATCH /vm Paused; --cycles pause/resume cycles
                    per boot (ms)
    snapshot        latency of PUT /snapshot/create (Full) of the paused guest
                    (ms)
    restore (File)  new process start -> PUT /snapshot/load with resume_vm
                    answered; --cycles restores per snapshot (ms)
    restore (Uffd)  the same with mem_backend Uffd, the example handler
                    (resources/uffd-handler, started first, not timed) serving
                    the memory file: the VMM's share of a lazy restore (ms)

More restore figures (another memory backend) plug in as functions in
RESTORES: each takes (binary, work, snap, mem, tag) and returns milliseconds;
add the figure's row to FIGURES.

--floor also times bench/floor_server.c (built with cc), a C program that
only binds the socket and answers GET / with a fixed 200, the same way: the
floor that process start, the kernel and this client put under the cheap
figures, whatever the VMM does.

--pin pins the cheap phase (VMM on the last CPU, this script on the first) so
the two do not fight for one core; guest boots are never pinned.
Without FC_BIN (path to a firecracker binary built from its public source)
only flint's figures are printed.

Usage: FC_BIN=/path/to/firecracker bench/compare.py [--flint PATH] [--uffd-handler PATH] [--runs N]
       [--boots N] [--cycles N] [--no-pin] [--only cheap|guest] [--smaps DIR]
"""
import argparse
import contextlib
import fcntl
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
# Guest boots on a shared host take this lock (as `flock /tmp/flint-e2e.lock`
# does for the end-to-end tests), one boot at a time.
BOOT_LOCK = os.environ.get("FLINT_E2E_LOCK", "/tmp/flint-e2e.lock")
# --smaps DIR: where guest_run copies each VMM's /proc/PID/smaps after GUEST-READY.
SMAPS_DIR = None
MEM_MIB = 256

# figure, unit, goal ratio flint/FC (smaller is better for every figure)
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


def order_list(binary):
    """The text-ordering list build.rs links `binary` with: one per link
    mode, since symbol hashes differ between them."""
    out = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True).stdout
    mode = "dynamic" if "INTERP" in out else "static"
    return os.path.join(REPO, "resources", "text-order", f"{mode}.txt")


def release_flint():
    """The release binary as shipped (scripts/build-release: static-pie),
    built when missing or stale (a no-op otherwise)."""
    return subprocess.run([os.path.join(REPO, "scripts", "build-release")], check=True,
                          capture_output=True, text=True).stdout.strip()


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


GET_ROOT = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def get_root_raw(path):
    """GET / on a new connection with as little client work as possible, so
    the figure is the VMM's (http.client costs more than the server here)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(GET_ROOT)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET /: {data[:80]!r}")


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

    def __init__(self, binary, work, name, cpu=None):
        # Pinned on its own CPU, the VMM is not slowed by a busy poll.
        self.poll = 0 if cpu is not None else 0.0002
        self.sock = os.path.join(work, f"{name}.sock")
        self.lines = []
        self.ready_at = None
        pre = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([binary, "--api-sock", self.sock, "--id", name],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, preexec_fn=pre)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            if self.ready_at is None and "GUEST-READY" in line:
                self.ready_at = time.perf_counter()
            self.lines.append(line)

    def wait_api(self, timeout=30):
        """Seconds from process start until GET / is answered."""
        deadline = time.perf_counter() + timeout
        while True:
            try:
                get_root_raw(self.sock)
                return time.perf_counter() - self.t0
            except (FileNotFoundError, ConnectionRefusedError, OSError):
                if time.perf_counter() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the API never answered")
                time.sleep(self.poll)

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


def cheap_run(binary, work, tag, pin):
    """One process: start->API, idle RSS, GET / latency."""
    cpus = sorted(os.sched_getaffinity(0))
    vmm = Vmm(binary, work, tag, cpu=cpus[-1] if pin and len(cpus) > 1 else None)
    try:
        fig = {"start->API": vmm.wait_api() * 1e3}
        time.sleep(0.05)
        fig["idle RSS"] = rss_kib(vmm.proc.pid)
        lat = [timed(lambda: get_root_raw(vmm.sock)) for _ in range(200)]
        fig["GET / latency"] = statistics.median(lat) * 1e6
    finally:
        vmm.stop()
    return {k: [v] for k, v in fig.items()}


def restore_file(binary, work, snap, mem, tag):
    """New process start -> snapshot loaded (File memory) and resumed, ms."""
    vmm = Vmm(binary, work, tag)
    try:
        vmm.wait_api()
        call(vmm.sock, "PUT", "/snapshot/load", {
            "snapshot_path": snap, "mem_backend": {"backend_type": "File", "backend_path": mem},
            "resume_vm": True})
        return (time.perf_counter() - vmm.t0) * 1e3
    finally:
        vmm.stop()


UFFD_HANDLER = os.path.join(REPO, "target", "release", "uffd-handler")


def restore_uffd(binary, work, snap, mem, tag):
    """New process start -> snapshot loaded (mem_backend Uffd) and resumed,
    ms, with the example handler serving `mem` (it speaks Firecracker's
    protocol, so it serves both VMMs; its start is not timed)."""
    handler_sock = os.path.join(work, f"{tag}-uffd.sock")
    handler = subprocess.Popen([UFFD_HANDLER, handler_sock, mem],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.perf_counter() + 30
        while not os.path.exists(handler_sock):
            if handler.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError("the uffd handler did not start")
            time.sleep(0.001)
        vmm = Vmm(binary, work, tag)
        try:
            vmm.wait_api()
            call(vmm.sock, "PUT", "/snapshot/load", {
                "snapshot_path": snap,
                "mem_backend": {"backend_type": "Uffd", "backend_path": handler_sock},
                "resume_vm": True})
            return (time.perf_counter() - vmm.t0) * 1e3
        finally:
            vmm.stop()
    finally:
        handler.kill()
        handler.wait()
        if os.path.exists(handler_sock):
            os.unlink(handler_sock)


# figure -> function(binary, work, snap, mem, tag) -> ms
RESTORES = {"restore (File)": restore_file, "restore (Uffd)": restore_uffd}


@contextlib.contextmanager
def boot_lock():
    """Hold the shared guest-boot lock (other engineers' tests boot guests too)."""
    with open(BOOT_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def guest_run(binary, kernel, initrd, work, tag, cycles):
    with boot_lock():
        return _guest_run(binary, kernel, initrd, work, tag, cycles)


def _guest_run(binary, kernel, initrd, work, tag, cycles):
    """One boot: InstanceStart, boot->READY, VMM overhead, `cycles` pauses,
    one full snapshot, `cycles` restores of it per restore figure."""
    fig = {}
    vmm = Vmm(binary, work, f"{tag}-a")
    snap = os.path.join(work, f"{tag}.vmstate")
    mem = os.path.join(work, f"{tag}.mem")
    try:
        try:
            vmm.wait_api()
            configure(vmm, kernel, initrd)
            fig["InstanceStart"] = [timed(lambda: call(
                vmm.sock, "PUT", "/actions", {"action_type": "InstanceStart"})) * 1e3]
            fig["boot->READY"] = [vmm.wait_ready()]
            time.sleep(1)
            pid = vmm.proc.pid
            fig["VMM overhead"] = [rss_kib(pid) - guest_mapping_rss_kib(pid, MEM_MIB)]
            if SMAPS_DIR:
                with open(f"/proc/{pid}/smaps") as src, \
                        open(os.path.join(SMAPS_DIR, f"{tag}.smaps"), "w") as dst:
                    dst.write(src.read())
            fig["pause"] = []
            for i in range(cycles):
                if i:
                    call(vmm.sock, "PATCH", "/vm", {"state": "Resumed"})
                    time.sleep(0.02)
                fig["pause"].append(
                    timed(lambda: call(vmm.sock, "PATCH", "/vm", {"state": "Paused"})) * 1e3)
            fig["snapshot"] = [timed(lambda: call(vmm.sock, "PUT", "/snapshot/create", {
                "snapshot_type": "Full", "snapshot_path": snap, "mem_file_path": mem})) * 1e3]
        finally:
            vmm.stop()
        for name, restore in RESTORES.items():
            # A socket name of its own per restore: Firecracker leaves its
            # socket behind at exit, and refuses to start on an existing one.
            kind = "uffd" if "Uffd" in name else "file"
            fig[name] = [restore(binary, work, snap, mem, f"{tag}-{kind}{i}")
                         for i in range(cycles)]
    finally:
        for path in (snap, mem):
            if os.path.exists(path):
                os.unlink(path)
    return fig


def direction(ratio):
    if ratio < 1:
        return f"flint {1 / ratio:.2f}x better"
    if ratio > 1:
        return f"flint {ratio:.2f}x worse"
    return "even"


def summary(values):
    return statistics.median(values), min(values), max(values)


def order_list_coverage(binary):
    """(names of `binary`'s text-ordering list that are text symbols of it,
    names listed, the list): the packing behind idle RSS and the running
    VMM's RSS only works for names that still exist, and Rust's symbol
    hashes change as crates change (after the merges of 2026-11-30 only 130
    of 429 were left: idle RSS +1 MiB)."""
    order = order_list(binary)
    try:
        with open(order) as f:
            wanted = {line.strip() for line in f if line.strip()}
        out = subprocess.run(["nm", "--defined-only", binary], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    have = {p[2] for p in (line.split() for line in out.splitlines())
            if len(p) == 3 and p[1] in "tT"}
    return len(wanted & have), len(wanted), os.path.relpath(order, REPO)


def report(results, fc, args):
    print(f"\nmedian (min-max); cheap figures over {args.runs} processes, guest figures over "
          f"{args.boots} boots ({args.cycles} pauses/restores each); interleaved; "
          f"{MEM_MIB} MiB guest; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("every figure: smaller is better; ratio = flint/FC medians, < 1 means flint ahead")
    header = f"{'figure':<16}{'flint':>30}"
    if fc:
        header += f"{'Firecracker':>30}{'flint/FC':>10}  {'which way':<22}goal"
    print(header)
    for name, unit, goal in FIGURES:
        if not results["flint"].get(name):
            continue
        med, lo, hi = summary(results["flint"][name])
        row = f"{name:<16}{med:>10.4g} ({lo:.4g}-{hi:.4g}) {unit:<3}".ljust(46)
        if fc and results["firecracker"].get(name):
            cmed, clo, chi = summary(results["firecracker"][name])
            ratio = med / cmed if cmed else float("inf")
            met = "met" if ratio <= goal else "NOT met"
            row += (f"{cmed:>10.4g} ({clo:.4g}-{chi:.4g}) {unit:<3}".ljust(30)
                    + f"{ratio:>10.2f}  {direction(ratio):<22}<= {goal} {met}")
        print(row)
    if results.get("floor"):
        print("floor (minimal C server, same client): " + ", ".join(
            f"{name} {statistics.median(results['floor'][name]):.4g} {unit}"
            for name, unit, _ in FIGURES if results["floor"].get(name)))
    coverage = order_list_coverage(args.flint)
    if coverage and coverage[0] < coverage[1] * 0.9:
        print(f"\nWARNING: only {coverage[0]} of the {coverage[1]} functions of "
              f"{coverage[2]} are in this flint binary: the list is stale "
              "(run bench/startup_order.py --flint BINARY) and RSS is measured without "
              "the packing")
    if not fc:
        print("\n(set FC_BIN=/path/to/firecracker for the side-by-side figures and ratios)")


def main():
    global UFFD_HANDLER, SMAPS_DIR
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flint", help="default: the release binary, scripts/build-release")
    ap.add_argument("--runs", type=int, default=9, help="processes per VMM, cheap figures")
    ap.add_argument("--boots", type=int, default=3, help="guest boots per VMM")
    ap.add_argument("--cycles", type=int, default=5,
                    help="pauses and restores per boot")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin the cheap phase to CPUs")
    ap.add_argument("--only", choices=["cheap", "guest"])
    ap.add_argument("--floor", action="store_true",
                    help="also time a minimal C server (the floor of the cheap figures)")
    ap.add_argument("--json", help="also write the raw samples here")
    ap.add_argument("--smaps", help="keep each VMM's smaps after GUEST-READY in this directory")
    ap.add_argument("--uffd-handler", default=UFFD_HANDLER)
    args = ap.parse_args()
    if args.flint is None:
        args.flint = release_flint()
    UFFD_HANDLER = args.uffd_handler
    SMAPS_DIR = args.smaps
    if SMAPS_DIR:
        os.makedirs(SMAPS_DIR, exist_ok=True)
    if not os.path.exists(UFFD_HANDLER):
        subprocess.run(["cargo", "build", "--release", "-p", "uffd-handler"], cwd=REPO, check=True)
    fc = os.environ.get("FC_BIN")
    if fc and not os.access(fc, os.X_OK):
        sys.exit(f"FC_BIN={fc} is not an executable")
    vmms = [("flint", args.flint)] + ([("firecracker", fc)] if fc else [])
    results = {name: {} for name, _ in vmms}
    floor_dir = tempfile.TemporaryDirectory(prefix="flint-floor-")
    if args.floor and args.only != "guest":
        floor = os.path.join(floor_dir.name, "floor")
        subprocess.run(["cc", "-O2", "-o", floor, os.path.join(REPO, "bench", "floor_server.c")],
                       check=True)
        cheap_vmms = vmms + [("floor", floor)]
        results["floor"] = {}
    else:
        cheap_vmms = vmms

    def add(name, fig, label):
        for k, v in fig.items():
            results[name].setdefault(k, []).extend(v)
        print(f"{label} {name}: " + ", ".join(
            f"{k} {statistics.median(v):.4g}" for k, v in fig.items()), flush=True)

    own_cpus = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="flint-compare-") as work:
        if args.only != "guest":
            cpus = sorted(own_cpus)
            if args.pin and len(cpus) > 1:
                os.sched_setaffinity(0, {cpus[0]})
            try:
                for i in range(args.runs):
                    for name, binary in cheap_vmms:
                        add(name, cheap_run(binary, work, f"{name}{i}", args.pin), f"run {i + 1}")
            finally:
                os.sched_setaffinity(0, own_cpus)
        if args.only != "cheap" and args.boots > 0:
            guest = guest_dir()
            kernel, initrd = os.path.join(guest, "vmlinux"), os.path.join(guest, "initramfs.cpio")
            for i in range(args.boots):
                for name, binary in vmms:
                    add(name, guest_run(binary, kernel, initrd, work, f"{name}b{i}", args.cycles),
                        f"boot {i + 1}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    report(results, fc, args)
    floor_dir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
