#!/usr/bin/env python3
"""Snapshot, restore and live-migration benchmark for flint (256 MiB guest).

Boots the test guest (initramfs, 256 MiB, dirty-page tracking on) through
flint's API, then measures, printing the figures:
  * full snapshot: create time (API call), state size, memory file size and
    the disk space it really uses (it is sparse);
  * diff snapshot after ~2 s more of guest activity: create time and size;
  * restore in a new process, lazily mapped and copied: process start ->
    vCPUs running again (external), and flint's own figure;
  * live migration over a Unix socket: total time and downtime (flint's log).

Usage: bench/snapshot.py [--flint PATH] [--mem MIB]
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def guest_dir():
    return subprocess.run([os.path.join(REPO, "scripts", "guest-dir")], check=True,
                          capture_output=True, text=True).stdout.strip()


class Flint:
    def __init__(self, flint, args, sock):
        self.sock = sock
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([flint, "run", "--no-console-input", "--api-sock", sock] + args,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out, self.err = [], []
        self.events = {}
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True).start()

    def _pump(self, stream, into):
        for line in stream:
            into.append(line)
            for key in ("GUEST-READY", "restored VM resumed", "incoming migration complete", "migration to"):
                if key in line and key not in self.events:
                    self.events[key] = (time.monotonic(), line)

    def wait_event(self, key, timeout=600):
        deadline = time.monotonic() + timeout
        while key not in self.events:
            if self.proc.poll() is not None and key not in self.events:
                raise SystemExit(f"flint exited waiting for {key!r}:\n{''.join(self.err[-20:])}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timeout waiting for {key!r}")
            time.sleep(0.01)
        return self.events[key]

    def wait_socket(self):
        while not os.path.exists(self.sock):
            time.sleep(0.001)

    def call(self, method, path, body=None):
        args = [FLINT, "ctl", "--api-sock", self.sock]
        if method == "GET":
            args += ["get", path]
        else:
            args += [method.lower(), path, json.dumps(body)]
        t0 = time.monotonic()
        out = subprocess.run(args, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{method} {path}: {out.stdout}{out.stderr}")
        return time.monotonic() - t0

    def kill(self):
        self.proc.kill()
        self.proc.wait()


def disk_usage(path):
    st = os.stat(path)
    return st.st_size, st.st_blocks * 512


def mib(n):
    return n / (1 << 20)


def main():
    global FLINT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flint", default=None)
    ap.add_argument("--mem", type=int, default=256)
    args = ap.parse_args()
    FLINT = args.flint
    if FLINT is None:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "flint"], cwd=REPO, check=True)
        FLINT = os.path.join(REPO, "target", "release", "flint")
    gdir = guest_dir()
    work = tempfile.mkdtemp(prefix="flint-snapbench-")
    try:
        vm = Flint(FLINT, [], os.path.join(work, "a.sock"))
        vm.wait_socket()
        vm.call("PUT", "/boot-source", {
            "kernel_image_path": os.path.join(gdir, "vmlinux"),
            "initrd_path": os.path.join(gdir, "initramfs.cpio"),
            "boot_args": "console=ttyS0 reboot=k panic=-1 quiet guest_end=halt"})
        vm.call("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": args.mem, "track_dirty_pages": True})
        vm.call("PUT", "/actions", {"action_type": "InstanceStart"})
        vm.wait_event("GUEST-READY")
        time.sleep(1)

        full = os.path.join(work, "full")
        os.makedirs(full)
        vm.call("PATCH", "/vm", {"state": "Paused"})
        t_full = vm.call("PUT", "/snapshot/create", {"snapshot_path": f"{full}/vmstate", "mem_file_path": f"{full}/memory"})
        vm.call("PATCH", "/vm", {"state": "Resumed"})
        time.sleep(2)
        diff = os.path.join(work, "diff")
        os.makedirs(diff)
        vm.call("PATCH", "/vm", {"state": "Paused"})
        t_diff = vm.call("PUT", "/snapshot/create", {"snapshot_path": f"{diff}/vmstate", "mem_file_path": f"{diff}/memory", "snapshot_type": "Diff"})
        vm.kill()

        restores = {}
        for mode, extra in (("lazy (MAP_PRIVATE)", []), ("copy", ["--copy-memory"])):
            r = Flint(FLINT, ["--restore", full] + extra, os.path.join(work, f"r{len(restores)}.sock"))
            when, line = r.wait_event("restored VM resumed")
            internal = re.search(r"resumed (\d+) ms", line)
            restores[mode] = ((when - r.t0) * 1000, int(internal.group(1)) if internal else -1)
            if mode == "copy":
                source = r
            else:
                r.kill()

        # Live migration of the restored (copy) VM to a new process.
        dest_addr = f"unix:{work}/mig.sock"
        key = f"{work}/migrate.key"
        with open(key, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        dest = Flint(FLINT, ["--migrate-listen", dest_addr, "--migrate-key", key], os.path.join(work, "dest.sock"))
        while not os.path.exists(f"{work}/mig.sock"):
            time.sleep(0.001)
        source.call("PUT", "/migrate", {"destination": dest_addr, "key_path": key})
        _, line = source.wait_event("migration to")
        dest.wait_event("incoming migration complete")
        m = re.search(r"(\d+) rounds, ([0-9.]+) MiB of memory.*total (\d+) ms, downtime (\d+) ms", line)
        dest.kill()
        source.proc.wait(timeout=30)

        fs_size, fs_used = disk_usage(f"{full}/memory")
        ds_size, ds_used = disk_usage(f"{diff}/memory")
        print(f"flint snapshot benchmark: {args.mem} MiB guest, 1 vCPU, idle after GUEST-READY")
        print(f"  full snapshot create         {t_full * 1000:8.0f} ms  (state {os.path.getsize(full + '/vmstate') / 1024:.1f} KiB, memory {mib(fs_size):.0f} MiB file, {mib(fs_used):.1f} MiB on disk)")
        print(f"  diff snapshot create (2 s)   {t_diff * 1000:8.0f} ms  (memory {mib(ds_used):.2f} MiB on disk)")
        for mode, (ext, internal) in restores.items():
            print(f"  restore, {mode:20s} {ext:8.1f} ms  process start -> vCPUs running (flint: {internal} ms from load start)")
        if m:
            print(f"  live migration (unix socket) {m.group(3):>8s} ms  total, downtime {m.group(4)} ms, {m.group(1)} rounds, {m.group(2)} MiB sent")
        print("  (create times include the flint ctl process; the state file is CRC64-checked on load)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
