#!/usr/bin/env python3
"""I/O benchmark for flint: virtio-blk and virtio-net throughput seen by a real guest.

Two boots of the test guest (vmlinux, ext4 root on virtio-blk, 1 vCPU, 256 MiB),
one after the other:

  1. block: a sparse raw image is the second drive (/dev/vdb). The guest times,
     with /proc/uptime read by the shell's `read` builtin (no process), a
     sequential O_DIRECT write of N MiB (`dd bs=1M oflag=direct conv=fsync`),
     a sequential O_DIRECT read of the same N MiB (`dd bs=1M iflag=direct`),
     and one `dd bs=4k iflag=direct` doing many 4 KiB reads at queue depth 1.
     Busybox dd prints no timing of its own (no FEATURE_DD_THIRD_STATUS_LINE),
     so every timed interval includes starting one dd process (0.3-0.6 s
     here): the median of 3 `dd count=0` runs on the same device (start, open,
     no I/O) is subtracted from each figure.
     The 4 KiB reads are at sequential offsets: busybox cannot seek between
     reads inside one process, and one dd per random read is dominated by the
     process start (measured: read-minus-baseline differences of -380..+390 ms
     around a ~10 ms read). flint serves every offset of the (host-cached)
     image alike and the guest does not merge O_DIRECT reads issued one at a
     time, so this is the random 4 KiB QD1 figure too. `--rand-ops K` still
     runs K single-dd random reads, each paired with a no-I/O dd, and prints
     the (noisy) result separately.
  2. network (root only): flint runs in a fresh network namespace with a tap,
     host 172.31.0.1, guest 172.31.0.2. Guest -> host: the guest pipes
     `dd if=/dev/zero bs=64k` into `nc`; a Python sink in the namespace times
     first byte -> last byte. Host -> guest: the guest runs `nc -l -p PORT
     >/dev/null`; a Python source connects, sends N MiB and times its first
     byte -> the guest's close (busybox nc exits when it reads EOF). The guest
     also pings the host 3 times first (round trip printed; the first packet,
     which waits for ARP, is left out of the median).

On a host whose KVM emulates guest kernel code (~1 us per instruction) every
figure is bound by the guest's CPU, not by flint or the host's storage:
nothing here asserts, it prints what it measured.

About 2 minutes with the defaults (8 MiB block, 1 MiB each way over TCP).

Usage: bench/io.py [--flint PATH] [--blk-mib N] [--net-mib N] [--seq4k-ops N]
                   [--rand-ops K] [--skip-net]
"""
import argparse
import json
import os
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOOT_TIMEOUT = 300  # s, to GUEST-READY on a slow emulating host
STEP_TIMEOUT = 600  # s, for any later marker
HOST_IP, GUEST_IP = "172.31.0.1", "172.31.0.2"
TX_PORT, RX_PORT = 5555, 5556
TAP = "flintio0"
MIB = 1 << 20
RTT_RE = re.compile(r"seq=\d+ ttl=\d+ time=([0-9.]+) ms")


def guest_dir():
    out = subprocess.run([os.path.join(REPO, "scripts", "guest-dir")], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def log(msg):
    print(msg, flush=True)


class Vm:
    """A running `flint run` whose console (stdout) lines are queued."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, errors="replace")
        self.lines = queue.Queue()
        self.console = []
        self.stderr = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.console.append(line)
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_for(self, prefix, timeout, skipped=None):
        """The next console line starting with `prefix`; the lines before it are
        consumed (and appended to `skipped` if given)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise RuntimeError(self.report(f"timed out waiting for {prefix!r}"))
            if line is None:
                self.lines.put(None)
                time.sleep(0.2)
                raise RuntimeError(self.report(f"flint ended before {prefix!r}"))
            if line.strip().startswith(prefix):
                return line.strip()
            if skipped is not None:
                skipped.append(line)

    def report(self, what):
        tail = "".join(self.console[-30:])
        err = "".join(self.stderr[-20:])
        return f"{what}\n--- console (last lines) ---\n{tail}\n--- flint stderr ---\n{err}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_config(d, gdir, root, boot_args, drives_extra=(), nics=()):
    config = {
        "boot-source": {
            "kernel_image_path": os.path.join(gdir, "vmlinux"),
            "boot_args": boot_args,
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
        "drives": [{"drive_id": "rootfs", "path_on_host": root, "is_root_device": True}]
        + list(drives_extra),
        "network-interfaces": list(nics),
    }
    path = os.path.join(d, "vm.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return path


def boot_args(script, extra=""):
    if '"' in script:
        raise SystemExit("internal error: the guest script must not contain double quotes")
    args = f'console=ttyS0 reboot=k panic=-1 quiet {extra} guest_cmd="{script}" guest_end=halt'
    # x86 COMMAND_LINE_SIZE is 2048; flint appends its own words (devices, root=, quirks).
    if len(args) > 1700:
        raise SystemExit(f"internal error: kernel command line too long ({len(args)} bytes)")
    return args


# The shell helper every guest script starts with: `u VAR` stores the guest's
# uptime in VAR using builtins only (no fork, so it costs next to nothing).
UPTIME_FN = "u() { read $1 x < /proc/uptime; }"
BASE_RUNS = 3


def blk_script(mib, rand_ops, seq4k_ops):
    blocks = mib * 256  # 4 KiB blocks written by the sequential write
    d = "/dev/vdb"
    steps = [
        UPTIME_FN,
        "echo IO start",
        # The cost of starting dd and opening the device, without I/O.
        f"i=0; while [ $i -lt {BASE_RUNS} ]; do "
        f"u a; dd if={d} of=/dev/null bs=4k count=0 iflag=direct 2>/dev/null; r=$?; u b; echo IO base $a $b $r; "
        "i=$((i+1)); done",
        # Sequential write, then read back, both O_DIRECT through 1 MiB requests.
        f"u a; dd if=/dev/zero of={d} bs=1M count={mib} oflag=direct conv=notrunc,fsync 2>/dev/null; r=$?; u b; echo IO seqwrite $a $b $r",
        f"u a; dd if={d} of=/dev/null bs=1M count={mib} iflag=direct 2>/dev/null; r=$?; u b; echo IO seqread $a $b $r",
        # Many 4 KiB O_DIRECT reads from one process (sequential offsets, QD1).
        f"u a; dd if={d} of=/dev/null bs=4k count={seq4k_ops} iflag=direct 2>/dev/null; r=$?; u b; echo IO seq4k $a $b $r",
    ]
    if rand_ops:
        # Random 4 KiB reads, one dd each, each paired with a no-I/O dd.
        steps.append(
            f"i=0; while [ $i -lt {rand_ops} ]; do "
            f"u a; dd if={d} of=/dev/null bs=4k count=0 iflag=direct 2>/dev/null; r=$?; u b; echo IO rbase $a $b $r; "
            f"s=$((RANDOM % {blocks})); "
            f"u a; dd if={d} of=/dev/null bs=4k count=1 skip=$s iflag=direct 2>/dev/null; r=$?; u b; echo IO rand $a $b $r; "
            "i=$((i+1)); done")
    steps.append("echo IO done")
    return "; ".join(steps)


def net_script(mib):
    count = mib * 16  # 64 KiB blocks
    steps = [
        UPTIME_FN,
        f"ping -c 3 -W 10 {HOST_IP}; echo IO ping $?",
        f"u a; dd if=/dev/zero bs=64k count={count} 2>/dev/null | nc {HOST_IP} {TX_PORT}; r=$?; u b; echo IO tx $a $b $r",
        # nc's stdin stays the (silent) console: with </dev/null busybox nc
        # would half-close the connection at once.
        f"echo IO rxready; u a; nc -l -p {RX_PORT} >/dev/null; r=$?; u b; echo IO rx $a $b $r",
        "echo IO done",
    ]
    return "; ".join(steps)


def parse_io(line):
    """'IO name t0 t1 rc' -> (name, seconds, rc)."""
    f = line.split()
    return f[1], float(f[3]) - float(f[2]), int(f[4])


def run_blk(flint, gdir, args):
    mib = args.blk_mib
    seq4k_ops = min(mib * 256, args.seq4k_ops)
    with tempfile.TemporaryDirectory(prefix="flint-io-") as d:
        root = os.path.join(d, "rootfs.ext4")
        shutil.copyfile(os.path.join(gdir, "rootfs.ext4"), root)
        data = os.path.join(d, "data.img")
        with open(data, "wb") as f:
            f.truncate(max(16, mib) * MIB)  # sparse
        script = blk_script(mib, args.rand_ops, seq4k_ops)
        config = write_config(d, gdir, root, boot_args(script),
                              drives_extra=[{"drive_id": "data", "path_on_host": data,
                                             "is_root_device": False}])
        rand = f", {args.rand_ops} x 4 KiB random" if args.rand_ops else ""
        log(f"block boot: {mib} MiB sequential, {seq4k_ops} x 4 KiB{rand} (booting, ~40 s)...")
        t0 = time.monotonic()
        vm = Vm([flint, "run", "--no-console-input", "--config", config])
        res = {"base": [], "rbase": [], "rand": []}
        try:
            vm.wait_for("GUEST-READY", BOOT_TIMEOUT)
            log(f"  GUEST-READY after {time.monotonic() - t0:.1f} s")
            vm.wait_for("IO start", STEP_TIMEOUT)
            while True:
                line = vm.wait_for("IO ", STEP_TIMEOUT)
                if line == "IO done":
                    break
                name, secs, rc = parse_io(line)
                if rc != 0:
                    raise RuntimeError(vm.report(f"guest dd failed in step {name}: {line}"))
                if name in ("base", "rbase", "rand"):
                    res[name].append(secs)
                else:
                    res[name] = secs
                    log(f"  {name}: {secs:.2f} s (guest uptime)")
            log(f"  dd start + open (no I/O): {', '.join(f'{t:.2f}' for t in res['base'])} s; "
                f"done after {time.monotonic() - t0:.1f} s")
        finally:
            vm.stop()
    res["seq4k_ops"] = seq4k_ops
    return res


def run_ns(ns, *cmd):
    subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, capture_output=True)


def start_helper(ns, *args):
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def helper_result(p, timeout):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise RuntimeError(f"host helper timed out: {err.strip()}")
    if p.returncode != 0:
        raise RuntimeError(f"host helper failed ({p.returncode}): {err.strip()}")
    return json.loads(out)


def run_net(flint, gdir, args):
    mib = args.net_mib
    ns = f"flint-io-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    helpers = []
    vm = None
    try:
        run_ns(ns, "ip", "tuntap", "add", "dev", TAP, "mode", "tap")
        run_ns(ns, "ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP)
        run_ns(ns, "ip", "link", "set", TAP, "up")
        run_ns(ns, "ip", "link", "set", "lo", "up")
        sink = start_helper(ns, "_sink", str(TX_PORT))
        helpers.append(sink)
        with tempfile.TemporaryDirectory(prefix="flint-io-") as d:
            root = os.path.join(d, "rootfs.ext4")
            shutil.copyfile(os.path.join(gdir, "rootfs.ext4"), root)
            args_ = boot_args(net_script(mib),
                              f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off guest_net=1")
            config = write_config(d, gdir, root, args_,
                                  nics=[{"iface_id": "eth0", "host_dev_name": TAP,
                                         "guest_mac": "06:00:ac:1f:00:02"}])
            log(f"network boot: {mib} MiB each way over TCP (booting, ~40 s)...")
            t0 = time.monotonic()
            vm = Vm(["ip", "netns", "exec", ns, flint, "run", "--no-console-input",
                     "--config", config])
            vm.wait_for("GUEST-READY", BOOT_TIMEOUT)
            log(f"  GUEST-READY after {time.monotonic() - t0:.1f} s")
            ping_out = []
            ping = vm.wait_for("IO ping", STEP_TIMEOUT, ping_out)
            if ping != "IO ping 0":
                log(f"  warning: guest ping of the host failed ({ping})")
            # Per-packet round trips; the first one includes ARP resolution.
            rtts = [float(m.group(1)) for m in map(RTT_RE.search, ping_out) if m]
            log(f"  guest->host ping round trips: {', '.join(f'{t:.1f} ms' for t in rtts) or 'none'}")
            tx_line = vm.wait_for("IO tx", STEP_TIMEOUT)
            name, tx_guest_s, rc = parse_io(tx_line)
            tx = helper_result(sink, 120)
            if rc != 0 or tx["bytes"] != mib * MIB:
                raise RuntimeError(vm.report(f"guest->host transfer: nc rc {rc}, "
                                             f"host received {tx['bytes']} of {mib * MIB} bytes"))
            tx["guest_s"] = tx_guest_s
            log(f"  guest->host: {tx['bytes']} bytes, host first->last byte {tx['seconds']:.2f} s, "
                f"guest dd|nc {tx_guest_s:.2f} s")
            vm.wait_for("IO rxready", STEP_TIMEOUT)
            source = start_helper(ns, "_source", GUEST_IP, str(RX_PORT), str(mib * MIB))
            helpers.append(source)
            rx = helper_result(source, STEP_TIMEOUT)
            _, rx_guest_s, rc = parse_io(vm.wait_for("IO rx", STEP_TIMEOUT))
            if rc != 0:
                raise RuntimeError(vm.report(f"guest nc -l failed with {rc}"))
            rx["guest_s"] = rx_guest_s
            log(f"  host->guest: {rx['bytes']} bytes, host first byte->guest close {rx['seconds']:.2f} s "
                f"(connect retries {rx['retries']})")
            vm.wait_for("IO done", STEP_TIMEOUT)
            log(f"  done after {time.monotonic() - t0:.1f} s")
    finally:
        if vm is not None:
            vm.stop()
        for p in helpers:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return {"tx": tx, "rx": rx, "rtts": rtts}


# ---------------------------------------------------------------- host helpers
# Run inside the namespace as `io.py _sink PORT` / `io.py _source IP PORT BYTES`;
# each prints one JSON object.

def helper_sink(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1)
    s.settimeout(STEP_TIMEOUT)
    c, _ = s.accept()
    c.settimeout(120)
    n = first_chunk = 0
    first = last = None
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        last = time.monotonic()
        if first is None:
            first, first_chunk = last, len(b)
        n += len(b)
    c.close()
    # The first chunk arrived at `first`: only the bytes after it took the time.
    secs = (last - first) if first is not None else 0.0
    print(json.dumps({"bytes": n, "seconds": secs, "timed_bytes": n - first_chunk}))


def helper_source(ip, port, total):
    deadline = time.monotonic() + 120
    retries = 0
    while True:
        try:
            c = socket.create_connection((ip, port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            retries += 1
            time.sleep(0.2)
    c.settimeout(STEP_TIMEOUT)
    buf = b"\0" * 65536
    t0 = time.monotonic()
    left = total
    while left:
        c.sendall(buf[:min(left, len(buf))])
        left -= min(left, len(buf))
    sent = time.monotonic()
    c.shutdown(socket.SHUT_WR)
    while c.recv(65536):
        pass  # busybox nc sends nothing; EOF means it read everything and exited
    end = time.monotonic()
    c.close()
    print(json.dumps({"bytes": total, "seconds": end - t0, "send_returned_s": sent - t0,
                      "retries": retries}))


# ---------------------------------------------------------------- main

def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_sink":
        return helper_sink(int(sys.argv[2]))
    if len(sys.argv) > 1 and sys.argv[1] == "_source":
        return helper_source(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flint", default=None, help="flint binary (default: build --release)")
    ap.add_argument("--blk-mib", type=int, default=8, help="MiB written and read sequentially (default 8)")
    ap.add_argument("--net-mib", type=int, default=1,
                    help="MiB sent each way over TCP (default 1: busybox nc moves ~40 KiB/s here)")
    ap.add_argument("--seq4k-ops", type=int, default=512,
                    help="4 KiB O_DIRECT reads done by one dd (default 512)")
    ap.add_argument("--rand-ops", type=int, default=0,
                    help="also K random 4 KiB reads, one dd process each (default 0: "
                         "the process start swamps the read, see above)")
    ap.add_argument("--skip-net", action="store_true", help="only the block boot")
    args = ap.parse_args()
    if args.blk_mib < 1 or args.net_mib < 1 or args.rand_ops < 0 or args.seq4k_ops < 1:
        ap.error("sizes and counts must be >= 1")

    flint = args.flint
    if flint is None:
        if subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO).returncode != 0:
            raise SystemExit("bench/io.py: cargo build --release failed (or pass --flint PATH)")
        flint = os.path.join(REPO, "target", "release", "flint")
    flint = os.path.abspath(flint)
    gdir = guest_dir()

    net = None
    net_note = None
    if args.skip_net:
        net_note = "skipped (--skip-net)"
    elif os.geteuid() != 0:
        net_note = "skipped (needs root for a network namespace and a tap)"
        log(f"network test {net_note}")

    blk = run_blk(flint, gdir, args)
    if net_note is None:
        try:
            net = run_net(flint, gdir, args)
        except (RuntimeError, subprocess.CalledProcessError) as e:
            if isinstance(e, subprocess.CalledProcessError):
                e = f"{' '.join(e.cmd)}: {e.stderr.strip() if e.stderr else e}"
            net_note = f"failed: {e}"
            log(f"network test {net_note}")

    # ---- figures
    base = statistics.median(blk["base"])
    pairs = [r - b for b, r in zip(blk["rbase"], blk["rand"])]

    def mibs(secs, mib):
        return mib / secs if secs > 0 else float("nan")

    w_raw, r_raw, s_raw = blk["seqwrite"], blk["seqread"], blk["seq4k"]
    w, r, s = w_raw - base, r_raw - base, s_raw - base

    print()
    print("flint I/O benchmark (guest: 1 vCPU, 256 MiB; host KVM emulates guest kernel code: "
          "figures are guest-CPU bound)")
    print(f"  virtio-blk sequential write   {mibs(w, args.blk_mib):.2f} MiB/s   "
          f"({args.blk_mib} MiB, O_DIRECT 1 MiB + fsync; {mibs(w_raw, args.blk_mib):.2f} MiB/s "
          f"incl. dd start)")
    print(f"  virtio-blk sequential read    {mibs(r, args.blk_mib):.2f} MiB/s   "
          f"({args.blk_mib} MiB, O_DIRECT 1 MiB; {mibs(r_raw, args.blk_mib):.2f} MiB/s incl. dd start)")
    print(f"  virtio-blk 4 KiB random read  {blk['seq4k_ops'] / s:.0f} IOPS   "
          f"({blk['seq4k_ops']} O_DIRECT reads, QD1, one dd: sequential offsets, see --help; "
          f"{blk['seq4k_ops'] / s_raw:.0f} IOPS incl. dd start)")
    if pairs:
        each = statistics.median(pairs)
        figure = f"{1 / each:.0f} IOPS" if each > 0 else "not resolvable"
        print(f"  4 KiB reads at random offsets {figure}   (one dd each: median of {len(pairs)} "
              f"read-minus-no-I/O-dd differences, which spread {min(pairs) * 1000:.0f}.."
              f"{max(pairs) * 1000:.0f} ms; {1 / statistics.median(blk['rand']):.2f} IOPS incl. dd start)")
    if net is not None:
        tx, rx = net["tx"], net["rx"]
        print(f"  virtio-net guest->host TCP    {mibs(tx['seconds'], tx['timed_bytes'] / MIB):.2f} MiB/s   "
              f"({tx['bytes'] / MIB:.0f} MiB, dd|nc in the guest, host first->last byte; "
              f"guest-side {mibs(tx['guest_s'], tx['bytes'] / MIB):.2f} MiB/s incl. process starts)")
        print(f"  virtio-net host->guest TCP    {mibs(rx['seconds'], rx['bytes'] / MIB):.2f} MiB/s   "
              f"({rx['bytes'] / MIB:.0f} MiB, nc -l in the guest, host first byte->guest close)")
        rtts = net["rtts"][1:] or net["rtts"]
        if rtts:
            print(f"  virtio-net ping round trip    {statistics.median(rtts):.1f} ms   "
                  f"(guest -> host, median of {len(rtts)}, first packet with ARP left out)")
    else:
        print(f"  virtio-net guest->host TCP    {net_note}")
        print(f"  virtio-net host->guest TCP    {net_note}")
    print(f"  (dd start + device open, subtracted above: median {base * 1000:.0f} ms over "
          f"{len(blk['base'])} runs; guest timer resolution 10 ms)")
    return 0 if net_note is None or net_note.startswith("skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
