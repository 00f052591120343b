#!/usr/bin/env python3
"""API benchmark for flint: prints medians.

  * process start -> API socket accepting connections (median of --runs, >= 20);
  * flint's idle RSS before any VM is booted;
  * GET / round-trip latency over one keep-alive connection (median and p99).

Usage: bench/api.py [--runs N] [--requests N] [--flint PATH]
"""
import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_and_wait(flint, sock):
    t0 = time.monotonic()
    proc = subprocess.Popen([flint, "run", "--no-console-input", "--api-sock", sock],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(sock)
            elapsed = time.monotonic() - t0
            s.close()
            return proc, elapsed
        except OSError:
            s.close()
            if proc.poll() is not None:
                raise SystemExit("flint exited before its API socket accepted")
            if time.monotonic() - t0 > 10:
                raise SystemExit("API socket did not come up in 10 s")
            time.sleep(0.0002)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--flint", default=None)
    args = ap.parse_args()
    flint = args.flint
    if flint is None:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "flint"], cwd=REPO, check=True)
        flint = os.path.join(REPO, "target", "release", "flint")

    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "api.sock")
        starts, rss = [], []
        for _ in range(max(args.runs, 1)):
            proc, elapsed = start_and_wait(flint, sock)
            starts.append(elapsed * 1000)
            time.sleep(0.05)
            rss.append(rss_kib(proc.pid))
            proc.terminate()
            proc.wait(timeout=10)

        proc, _ = start_and_wait(flint, sock)
        try:
            conn = UnixHTTPConnection(sock)
            lat = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                lat.append((time.perf_counter() - t0) * 1e6)
                if resp.status != 200:
                    raise SystemExit(f"GET / answered {resp.status}")
            conn.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    lat.sort()
    print(f"flint API benchmark ({flint})")
    print(f"  process start -> API socket accepting  median {statistics.median(starts):7.2f} ms  (min {min(starts):.2f}, {len(starts)} runs)")
    print(f"  idle RSS before boot                   median {statistics.median(rss) / 1024:7.2f} MiB")
    print(f"  GET / round trip (keep-alive)          median {statistics.median(lat):7.1f} us  p99 {lat[int(len(lat) * 0.99) - 1]:.1f} us  ({len(lat)} requests)")


if __name__ == "__main__":
    sys.exit(main())
