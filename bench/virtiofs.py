#!/usr/bin/env python3
"""Sequential read of a 16 MiB file in the guest: virtio-fs (virtiofsd) vs virtio-blk.

One boot of the test guest (vmlinux + initramfs, 1 vCPU, 256 MiB) with
  * a virtio-fs share (virtiofsd --cache auto, on a temp dir) holding a
    16 MiB file of random bytes, mounted at /mnt, and
  * a second drive (/dev/vda, raw image) holding the same 16 MiB.
The guest times, with /proc/uptime read by the shell's `read` builtin (no
process), `dd bs=1M` of the file through virtio-fs and of the device through
virtio-blk (both cold: first read after boot, through the page cache as an
application would), each minus a `dd count=0` on the same source (busybox dd
start-up costs 0.3-0.6 s here). Prints MiB/s for both and the ratio.

On a host whose KVM emulates guest kernel code, both figures are bound by the
guest's CPU (FUSE request handling vs. block layer), not by flint, virtiofsd
or the host's disk: nothing here asserts.

Usage: bench/virtiofs.py [--flint PATH] [--virtiofsd PATH] [--mib N]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 900


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flint", default=os.path.join(REPO, "target/release/flint"))
    ap.add_argument("--virtiofsd", default=shutil.which("virtiofsd")
                    or os.path.expanduser("~/.cargo/bin/virtiofsd"))
    ap.add_argument("--mib", type=int, default=16)
    args = ap.parse_args()
    guest = os.environ.get("FLINT_GUEST_DIR", os.path.join(REPO, "../shared/guest"))
    tmp = tempfile.mkdtemp(prefix="flint-vfs-bench-")
    daemon = None
    try:
        share = os.path.join(tmp, "share")
        os.mkdir(share)
        data = os.urandom(args.mib << 20)
        with open(os.path.join(share, "big"), "wb") as f:
            f.write(data)
        image = os.path.join(tmp, "blk.img")
        with open(image, "wb") as f:
            f.write(data)
        del data
        sock = os.path.join(tmp, "vfs.sock")
        daemon = subprocess.Popen([args.virtiofsd, "--socket-path", sock, "--shared-dir", share,
                                   "--sandbox", "none", "--log-level", "error"])
        for _ in range(600):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        n = args.mib
        timed = lambda tag, src, count: (
            f"read a _ < /proc/uptime; busybox dd if={src} of=/dev/null bs=1M count={count} 2>/dev/null; "
            f"read b _ < /proc/uptime; echo {tag} $a $b")
        script = "; ".join([
            "busybox mkdir -p /mnt",
            "busybox mount -t virtiofs vol0 /mnt",
            timed("T-FS-BASE", "/mnt/big", 0),
            timed("T-FS", "/mnt/big", n),
            timed("T-BLK-BASE", "/dev/vda", 0),
            timed("T-BLK", "/dev/vda", n),
        ])
        config = {
            "boot-source": {
                "kernel_image_path": os.path.join(guest, "vmlinux"),
                "initrd_path": os.path.join(guest, "initramfs.cpio"),
                "boot_args": f'console=ttyS0 reboot=k panic=-1 guest_cmd="{script}"',
            },
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
            "drives": [{"drive_id": "data", "path_on_host": image,
                        "is_root_device": False, "is_read_only": True}],
            "fs": [{"tag": "vol0", "socket": sock}],
        }
        cfg = os.path.join(tmp, "vm.json")
        with open(cfg, "w") as f:
            json.dump(config, f)
        out = subprocess.run([args.flint, "run", "--config", cfg, "--no-console-input"],
                             capture_output=True, text=True, timeout=TIMEOUT).stdout
        t = {}
        for m in re.finditer(r"^(T-[A-Z-]+) ([\d.]+) ([\d.]+)", out, re.M):
            t[m.group(1)] = float(m.group(3)) - float(m.group(2))
        if len(t) != 4:
            sys.exit("missing timings; console:\n" + out[-3000:])
        fs = n / max(t["T-FS"] - t["T-FS-BASE"], 0.01)
        blk = n / max(t["T-BLK"] - t["T-BLK-BASE"], 0.01)
        print(f"sequential read of {n} MiB (cold, bs=1M):")
        print(f"  virtio-fs : {fs:8.2f} MiB/s  ({t['T-FS']:.2f} s, dd start {t['T-FS-BASE']:.2f} s)")
        print(f"  virtio-blk: {blk:8.2f} MiB/s  ({t['T-BLK']:.2f} s, dd start {t['T-BLK-BASE']:.2f} s)")
        print(f"  ratio fs/blk: {fs / blk:.2f}")
    finally:
        if daemon:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
