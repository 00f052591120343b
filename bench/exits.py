#!/usr/bin/env python3
"""Where a boot's VM exits go, flint next to Firecracker: counts, not times.

On an emulating host the guest kernel dominates boot->GUEST-READY, and wall
time is noisy; what the VMM changes is how often the guest leaves KVM for
it (a port-I/O exit costs ~11 us here). This boots each VMM once the way
bench/compare.py does (Firecracker's command line and API, the same kernel,
initramfs and command line), from InstanceStart to GUEST-READY, and counts
with `perf` the KVM tracepoints system-wide (boots hold the shared e2e lock,
so the VMM's guest is the only one running; a VMM's vCPU threads start
after a per-process `perf` would have attached):

  kvm_userspace_exit  exits KVM hands to the VMM (KVM_RUN returns)
  kvm_pio, kvm_mmio   port and MMIO accesses (in-kernel or not)

plus the port-I/O accesses by port range (serial, i8042, PCI probes,
...), from `perf record -e kvm:kvm_pio`. Needs root and tracefs (mounted
here if missing). Boots take the shared e2e lock.

Usage: FC_BIN=/path/to/firecracker bench/exits.py [--flint PATH]
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the shared VMM driver)

EVENTS = ["kvm:kvm_userspace_exit", "kvm:kvm_pio", "kvm:kvm_mmio"]

# Port ranges worth naming in the breakdown.
PORTS = [
    (0x3F8, 0x3FF, "COM1 (console)"),
    (0x2F8, 0x2FF, "COM2"),
    (0x060, 0x064, "i8042"),
    (0x070, 0x071, "RTC/CMOS"),
    (0x040, 0x043, "PIT"),
    (0x020, 0x021, "PIC master"),
    (0x0A0, 0x0A1, "PIC slave"),
    (0xCF8, 0xCFF, "PCI config"),
    (0x080, 0x080, "POST/delay (0x80)"),
]


def port_name(port):
    for lo, hi, name in PORTS:
        if lo <= port <= hi:
            return name
    return f"port {port:#x}"


def ensure_tracefs():
    if not os.path.isdir("/sys/kernel/tracing/events/kvm"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=False)


def boot_counting(binary, kernel, initrd, work, tag):
    """One boot; (event counts, PIO accesses by port name)."""
    with compare.boot_lock():
        vmm = compare.Vmm(binary, work, tag)
        try:
            vmm.wait_api()
            compare.configure(vmm, kernel, initrd)
            stat_out = os.path.join(work, f"{tag}.stat")
            rec_out = os.path.join(work, f"{tag}.data")
            stat = subprocess.Popen(["perf", "stat", "-x,", "-o", stat_out, "-e", ",".join(EVENTS),
                                     "-a"], stderr=subprocess.DEVNULL)
            rec = subprocess.Popen(["perf", "record", "-q", "-o", rec_out, "-e", "kvm:kvm_pio",
                                    "-a"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            compare.call(vmm.sock, "PUT", "/actions", {"action_type": "InstanceStart"})
            seconds = vmm.wait_ready()
            for p in (stat, rec):
                p.send_signal(2)
                p.wait()
        finally:
            vmm.stop()
    counts = {}
    with open(stat_out) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) > 2 and fields[2] in EVENTS:
                counts[fields[2]] = int(fields[0]) if fields[0].isdigit() else 0
    ports = collections.Counter()
    script = subprocess.run(["perf", "script", "-i", rec_out], capture_output=True, text=True)
    for line in script.stdout.splitlines():
        m = re.search(r"pio_(read|write) at 0x([0-9a-f]+)", line)
        if m:
            ports[port_name(int(m.group(2), 16))] += 1
    return counts, ports, seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flint", help="default: the release binary, scripts/build-release")
    args = ap.parse_args()
    if args.flint is None:
        args.flint = compare.release_flint()
    ensure_tracefs()
    gdir = compare.guest_dir()
    kernel, initrd = os.path.join(gdir, "vmlinux"), os.path.join(gdir, "initramfs.cpio")
    vmms = [("flint", args.flint)]
    if os.environ.get("FC_BIN"):
        vmms.append(("firecracker", os.environ["FC_BIN"]))
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name, binary in vmms:
            results[name] = boot_counting(binary, kernel, initrd, work, name)
    names = [n for n, _ in vmms]
    print(f"{'':28}" + "".join(f"{n:>14}" for n in names) + ("    ratio" if len(names) == 2 else ""))
    rows = [(e.split(":")[1], lambda r, e=e: r[0].get(e, 0)) for e in EVENTS]
    all_ports = sorted({p for r in results.values() for p in r[1]},
                       key=lambda p: -max(r[1].get(p, 0) for r in results.values()))
    rows += [(f"  pio {p}", lambda r, p=p: r[1].get(p, 0)) for p in all_ports]
    rows.append(("boot->READY (s, noisy)", lambda r: round(r[2], 1)))
    for label, get in rows:
        vals = [get(results[n]) for n in names]
        line = f"{label:28}" + "".join(f"{v:>14}" for v in vals)
        if len(vals) == 2 and vals[1]:
            line += f"    {vals[0] / vals[1]:.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
