#!/usr/bin/env bash
# Build flint's test guest from Debian bookworm packages only.
#
# Produces, in OUTDIR:
#   vmlinux         x86_64 kernel, uncompressed ELF with the PVH note
#                   (`strip --strip-debug`), built from linux-source-6.12
#   bzImage         the same kernel, LZ4-compressed bzImage
#   microvm.config  the final kernel .config that was used
#   initramfs.cpio  uncompressed newc cpio: static busybox, /init, /etc/fstab
#                   and a handful of applet links
#   rootfs.ext4     32 MiB ext4 image of the same tree with every busybox applet
#                   linked and /sbin/init -> /init (made with `mkfs.ext4 -d`,
#                   no loop mount needed)
#   SHA256SUMS      checksums of the above
#
# The guest side of the contract (what /init prints and which kernel command
# line words it understands) lives in `init` next to this script; see README.md.
#
# Usage, as root on a Debian bookworm machine with access to a Debian mirror
# (bookworm + bookworm-security, as in a stock install):
#
#   resources/guest/build.sh OUTDIR
#
# The kernel build takes ~3.5 minutes on 2 cores and ~1.8 GB of scratch space;
# the rootfs stage takes seconds.
#
# Environment knobs (all optional):
#   LINUX_SRC_PKG  kernel source package       (default: linux-source-6.12,
#                  from bookworm-security; the patch is written for 6.12)
#   CONFIG         kernel config to start from (default: microvm.config here)
#   PATCH          kernel patch to apply       (default: kvm-pvm-workarounds.patch here)
#   INIT           the guest's /init script    (default: init here)
#   GEN_CONFIG=1   ignore CONFIG and derive the config from `make tinyconfig`
#                  plus the option list in gen_config() below
#   JOBS           parallel make jobs           (default: nproc)
#   WORK           scratch directory            (default: OUTDIR/work)
#   STAGES         what to build: "kernel rootfs" (default), "kernel" or "rootfs"
#   SKIP_APT=1     do not call apt-get (everything is installed already; the
#                  busybox-static .deb must then be in WORK, or /bin/busybox
#                  from busybox-static is used)
#   APPLETS=all    link every busybox applet in the initramfs too (default:
#                  a small set; each extra cpio entry costs guest boot time)
#   INITRAMFS_GZ=1 also write initramfs.cpio.gz (gzip -9)
#   FORCE=1        rebuild the kernel even if OUTDIR already holds a kernel
#                  built from the same package version, config and patch
#
# Re-running is cheap: the unpacked, patched source tree in WORK is reused
# (make is incremental), and the kernel stage is skipped entirely when its
# inputs did not change. Outputs are written to temporary names and renamed,
# so an interrupted run never leaves a half-written artifact behind.
# With the default inputs, initramfs.cpio is bit-for-bit the same as the one
# in the project's shared guest folder.

set -euo pipefail

usage() {
	sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2
	exit 2
}
[[ $# -eq 1 && $1 != -* ]] || usage

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)

LINUX_SRC_PKG=${LINUX_SRC_PKG:-linux-source-6.12}
CONFIG=${CONFIG:-$HERE/microvm.config}
PATCH=${PATCH:-$HERE/kvm-pvm-workarounds.patch}
INIT=${INIT:-$HERE/init}
GEN_CONFIG=${GEN_CONFIG:-0}
JOBS=${JOBS:-$(nproc)}
WORK=${WORK:-$OUT/work}
STAGES=${STAGES:-kernel rootfs}
SKIP_APT=${SKIP_APT:-0}
APPLETS=${APPLETS:-min}
INITRAMFS_GZ=${INITRAMFS_GZ:-0}
FORCE=${FORCE:-0}

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# Deterministic output: C locale (sort order), fixed umask (file modes in the
# images) and one fixed timestamp for every file and for the kernel build
# (2024-01-01T00:00:00Z).
export LC_ALL=C
umask 022
EPOCH=1704067200

log() { echo "[guest/build.sh] $*" >&2; }
die() { log "error: $*"; exit 1; }
want() { [[ " $STAGES " == *" $1 "* ]]; }

want kernel || want rootfs || die "STAGES='$STAGES' names neither 'kernel' nor 'rootfs'"
[[ -f $INIT ]] || die "missing init script: $INIT"
if want kernel; then
	[[ -f $PATCH ]] || die "missing kernel patch: $PATCH"
	[[ $GEN_CONFIG == 1 || -f $CONFIG ]] || die "missing kernel config: $CONFIG (or set GEN_CONFIG=1)"
fi

# ------------------------------------------------------------ 1. packages
if [[ $SKIP_APT != 1 ]]; then
	[[ $(id -u) == 0 ]] || die "apt-get needs root (or set SKIP_APT=1 with everything installed)"
	export DEBIAN_FRONTEND=noninteractive
	log "apt-get update"
	apt-get update -q >&2
	pkgs=()
	if want kernel; then
		# linux-source-6.12 is in bookworm-security (bookworm itself ships 6.1).
		cand=$(apt-cache policy "$LINUX_SRC_PKG" 2>/dev/null | awk '/Candidate:/ {print $2}')
		if [[ -z $cand || $cand == "(none)" ]]; then
			die "apt knows no installable $LINUX_SRC_PKG; enable bookworm-security" \
				"(deb http://deb.debian.org/debian-security bookworm-security main)"
		fi
		log "kernel source: $LINUX_SRC_PKG $cand"
		pkgs+=("$LINUX_SRC_PKG" build-essential bc flex bison libelf-dev libssl-dev
			lz4 xz-utils patch binutils)
	fi
	if want rootfs; then
		# musl-tools + the kernel's uapi headers build the static /bin/vsock-io
		pkgs+=(cpio gzip e2fsprogs musl-tools linux-libc-dev binutils)
	fi
	apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2
	# busybox-static is only unpacked into the guest tree, never installed on
	# the build host; keep the .deb in WORK so later runs can go offline.
	if want rootfs && ! compgen -G "$WORK/busybox-static_*.deb" >/dev/null; then
		log "downloading busybox-static"
		(cd "$WORK" && apt-get download -q busybox-static >&2)
	fi
fi

# ------------------------------------------------------------ 2. kernel
# Our own recipe for a config from scratch (used only with GEN_CONFIG=1; the
# shipped microvm.config is its output): tinyconfig, then just what a
# virtio-mmio microVM on KVM needs.
gen_config() {
	make -s ARCH=x86_64 tinyconfig
	local c="scripts/config --file .config"
	# CPU, SMP, paravirt (kvm-clock, PV EOI, PV spinlocks), PVH entry; no ACPI,
	# no PCI (MP table + e820 suffice), no KASLR, no mitigations
	$c -e 64BIT -e SMP --set-val NR_CPUS 8 -e HYPERVISOR_GUEST -e PARAVIRT \
	   -e PARAVIRT_SPINLOCKS -e KVM_GUEST -e PVH -d X86_X2APIC \
	   -d PCI -d ACPI -d X86_EXTENDED_PLATFORM -d X86_MCE -d MICROCODE \
	   -d SCHED_MC_PRIO -d CPU_FREQ -d X86_INTEL_PSTATE \
	   -d RANDOMIZE_BASE -d CPU_MITIGATIONS -d PROFILING -d KEXEC -d KEXEC_FILE -d CRASH_DUMP \
	   -e HZ_100 -d HZ_250 -d HZ_1000 -e NO_HZ_IDLE \
	   -e KERNEL_LZ4 -d KERNEL_XZ
	# kernel messages, symbols for oopses, no debug info
	$c -e PRINTK -e PRINTK_TIME -e EARLY_PRINTK -e KALLSYMS --set-val CONSOLE_LOGLEVEL_QUIET 4 \
	   -d DEBUG_INFO -d DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT -e DEBUG_INFO_NONE -d IKCONFIG \
	   -d INIT_STACK_ALL_ZERO -e INIT_STACK_NONE
	# the syscalls ordinary Linux programs expect; no modules
	$c -e MULTIUSER -e FUTEX -e EPOLL -e SIGNALFD -e TIMERFD -e EVENTFD -e SHMEM -e AIO \
	   -e FILE_LOCKING -e POSIX_TIMERS -e ADVISE_SYSCALLS -e INOTIFY_USER -e SYSVIPC \
	   -e BINFMT_ELF -e BINFMT_SCRIPT -d MODULES
	# console: one legacy 8250 UART (COM1, 0x3f8, irq 4); no VT, input, serio,
	# i8042 (reboot=k pokes port 0x64 without a driver)
	$c -e TTY -e UNIX98_PTYS -d LEGACY_PTYS -d VT -e SERIAL_8250 -e SERIAL_8250_CONSOLE \
	   --set-val SERIAL_8250_NR_UARTS 4 --set-val SERIAL_8250_RUNTIME_UARTS 1 \
	   -d SERIAL_8250_16550A_VARIANTS -d SERIAL_8250_EXTENDED -d SERIAL_8250_DMA -d SERIAL_8250_PNP \
	   -d SERIO -d SERIO_I8042 -d INPUT -d HW_RANDOM_INTEL -d HW_RANDOM_AMD -d HW_RANDOM_VIA
	# filesystems and initramfs formats (uncompressed, gzip, lz4)
	$c -e PROC_FS -e PROC_SYSCTL -e SYSFS -e TMPFS -e DEVTMPFS -e DEVTMPFS_MOUNT \
	   -e BLK_DEV_INITRD -e RD_GZIP -e RD_LZ4 -d RD_BZIP2 -d RD_LZMA -d RD_XZ -d RD_LZO -d RD_ZSTD \
	   --set-str INITRAMFS_SOURCE "" \
	   -e BLOCK -e EXT4_FS -e EXT4_USE_FOR_EXT2 -d EXT4_FS_POSIX_ACL -d EXT4_FS_SECURITY \
	   -e CRYPTO -e CRYPTO_MANAGER_DISABLE_TESTS
	# virtio over MMIO, devices given on the command line
	# (virtio_mmio.device=4K@0xd0000000:5): block, net, rng, vsock
	$c -e VIRTIO_MENU -e VIRTIO -e VIRTIO_MMIO -e VIRTIO_MMIO_CMDLINE_DEVICES \
	   -e BLK_DEV -e VIRTIO_BLK -e NETDEVICES -e NET_CORE -e VIRTIO_NET \
	   -e HW_RANDOM -e HW_RANDOM_VIRTIO -d VIRTIO_INPUT
	# memory devices: balloon (with free page reporting), virtio-mem, virtio-pmem
	$c -e MEMORY_BALLOON -e VIRTIO_BALLOON -e BALLOON_COMPACTION -e COMPACTION -e MIGRATION \
	   -e PAGE_REPORTING -e SPARSEMEM_VMEMMAP -e MEMORY_HOTPLUG -e MEMORY_HOTREMOVE \
	   -e CONTIG_ALLOC -e VIRTIO_MEM -e LIBNVDIMM -e BLK_DEV_PMEM -e VIRTIO_PMEM -e DAX -e FS_DAX
	# containers inside the guest: cgroups, namespaces, overlayfs; virtio-fs shares
	$c -e CGROUPS -e MEMCG -e CGROUP_PIDS -e CPUSETS -e CGROUP_SCHED -e FAIR_GROUP_SCHED -e CGROUP_FREEZER \
	   -e NAMESPACES -e UTS_NS -e IPC_NS -e PID_NS -e NET_NS -e OVERLAY_FS -e FUSE_FS -e VIRTIO_FS
	$c -e NET -e INET -e UNIX -e PACKET -e IP_PNP -d IPV6 -d WIRELESS -d WLAN -d ETHERNET \
	   -e VSOCKETS -e VIRTIO_VSOCKETS
	make -s ARCH=x86_64 olddefconfig
}

# `scripts/config` and olddefconfig silently drop options whose dependencies
# are not met, so check that what the guest relies on really ended up set.
check_config() {
	local o bad=0
	for o in 64BIT SMP HYPERVISOR_GUEST PARAVIRT KVM_GUEST PARAVIRT_CLOCK PVH X86_LOCAL_APIC \
	         X86_IO_APIC X86_MPPARSE PRINTK PRINTK_TIME TTY SERIAL_8250 SERIAL_8250_CONSOLE \
	         BINFMT_ELF BINFMT_SCRIPT PROC_FS SYSFS TMPFS DEVTMPFS DEVTMPFS_MOUNT BLK_DEV_INITRD \
	         RD_GZIP RD_LZ4 VIRTIO VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK VIRTIO_NET \
	         NET INET UNIX PACKET EXT4_FS VSOCKETS VIRTIO_VSOCKETS HW_RANDOM HW_RANDOM_VIRTIO \
	         FUTEX EPOLL MULTIUSER KERNEL_LZ4 HZ_100 VIRTIO_BALLOON PAGE_REPORTING VIRTIO_MEM \
	         VIRTIO_PMEM BLK_DEV_PMEM CGROUPS MEMCG PID_NS NET_NS OVERLAY_FS FUSE_FS VIRTIO_FS; do
		grep -q "^CONFIG_$o=y\$" .config || { log "config: CONFIG_$o is not set"; bad=1; }
	done
	for o in PCI ACPI MODULES SERIO_I8042 RANDOMIZE_BASE DEBUG_INFO; do
		if grep -q "^CONFIG_$o=y\$" .config; then log "config: CONFIG_$o=y is unexpected"; bad=1; fi
	done
	grep -q '^CONFIG_NR_CPUS=8$' .config || { log "config: CONFIG_NR_CPUS is not 8"; bad=1; }
	return "$bad"
}

build_kernel() {
	local ver key tarball ksrc
	ver=$(dpkg-query -W -f '${Version}' "$LINUX_SRC_PKG" 2>/dev/null) ||
		die "$LINUX_SRC_PKG is not installed"
	# Everything that determines the kernel; if unchanged, keep what is in OUT.
	key=$({
		echo "$LINUX_SRC_PKG $ver gen=$GEN_CONFIG"
		[[ $GEN_CONFIG == 1 ]] || cat "$CONFIG"
		cat "$PATCH"
	} | sha256sum | cut -d' ' -f1)
	if [[ $FORCE != 1 && -f $OUT/vmlinux && -f $OUT/bzImage &&
		$(cat "$OUT/.kernel-inputs" 2>/dev/null) == "$key" ]]; then
		log "kernel: up to date in $OUT (FORCE=1 rebuilds)"
		return
	fi

	ksrc=$WORK/$LINUX_SRC_PKG
	if [[ ! -f $ksrc/Makefile ]]; then
		tarball=$(compgen -G "/usr/src/$LINUX_SRC_PKG.tar.*" | head -n1) ||
			die "no /usr/src/$LINUX_SRC_PKG.tar.* (is $LINUX_SRC_PKG installed?)"
		log "kernel: unpacking $tarball"
		tar -C "$WORK" -xf "$tarball"
	fi
	cd "$ksrc"

	# Three small changes for hosts whose KVM emulates the guest instruction by
	# instruction (kvm-pvm, like the CI host); they only act when CPUID reports
	# a hypervisor and are no-ops on ordinary KVM:
	#  - skip the boot-time INT3 self-test (INT3 cannot be emulated there),
	#  - skip FWAIT in fpu__drop() (cannot be emulated there either),
	#  - finish a user-mode SYSCALL that the host delivered to MSR_LSTAR still
	#    at CPL 3 (seen as a user #PF at entry_SYSCALL_64).
	# (-N/--forward keeps --batch from "helpfully" applying a patch in the
	# other direction when it looks reversed.)
	if patch -p1 -N --dry-run --batch --silent <"$PATCH" >/dev/null 2>&1; then
		log "kernel: applying $(basename "$PATCH")"
		patch -p1 -N --batch <"$PATCH" >&2
	elif patch -p1 -R -N --dry-run --batch --silent <"$PATCH" >/dev/null 2>&1; then
		log "kernel: $(basename "$PATCH") is already applied"
	else
		die "$(basename "$PATCH") does not apply to $LINUX_SRC_PKG $ver (it is written for 6.12.117)"
	fi

	if [[ $GEN_CONFIG == 1 ]]; then
		log "kernel: generating the config from tinyconfig"
		gen_config
	else
		log "kernel: config $CONFIG"
		cp "$CONFIG" .config
		make -s ARCH=x86_64 olddefconfig
	fi
	check_config || die "kernel config is missing required options (see above)"

	log "kernel: building $LINUX_SRC_PKG $ver with -j$JOBS"
	KBUILD_BUILD_TIMESTAMP="@$EPOCH" KBUILD_BUILD_USER=microvm KBUILD_BUILD_HOST=debian \
		nice make -s -j"$JOBS" ARCH=x86_64 vmlinux bzImage >&2

	cp .config "$OUT/microvm.config.tmp"
	strip --strip-debug -o "$OUT/vmlinux.tmp" vmlinux
	cp arch/x86/boot/bzImage "$OUT/bzImage.tmp"
	mv -f "$OUT/microvm.config.tmp" "$OUT/microvm.config"
	mv -f "$OUT/vmlinux.tmp" "$OUT/vmlinux"
	mv -f "$OUT/bzImage.tmp" "$OUT/bzImage"
	echo "$key" >"$OUT/.kernel-inputs"
	log "kernel: done"
}

# ------------------------------------------------------------ 3. root file system
# Applets linked in the initramfs by default: enough for /init, guest_cmd
# one-liners and a usable shell. Other applets still work as `busybox NAME`
# (and, busybox being built as a standalone shell, usually by name too).
MIN_APPLETS=" sh ash mount umount ip reboot poweroff halt sleep cat ls dmesg uname mkdir setsid cttyhack ps echo "

# Print the staging tree's entries, sorted, for cpio: every directory and
# regular file, /sbin/init, and the applet links selected by APPLETS.
initramfs_entries() {
	local f
	find . -mindepth 1 | sort | while read -r f; do
		if [[ -L $f && $APPLETS != all && $f != ./sbin/init ]]; then
			[[ $MIN_APPLETS == *" ${f##*/} "* ]] || continue
		fi
		echo "$f"
	done
}

build_rootfs() {
	local deb s p dir target
	cd "$WORK"
	rm -rf bbx staging
	mkdir bbx staging
	# busybox: from the busybox-static .deb (or, offline, from the installed one)
	deb=$(compgen -G "busybox-static_*.deb" | sort -V | tail -n1) || deb=
	if [[ -n $deb ]]; then
		log "rootfs: busybox from $deb"
		dpkg-deb -x "$deb" bbx
	elif [[ $SKIP_APT == 1 && -x /bin/busybox ]] && file_is_static /bin/busybox; then
		log "rootfs: busybox from /bin/busybox"
		mkdir -p bbx/bin && cp /bin/busybox bbx/bin/busybox
	else
		die "no busybox-static_*.deb in $WORK (run without SKIP_APT=1)"
	fi

	s=$WORK/staging
	mkdir -p "$s"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc,mnt,run,var}
	chmod 1777 "$s/tmp"
	chmod 700 "$s/root"
	cp bbx/bin/busybox "$s/bin/busybox"
	# vsock-io: a small static AF_VSOCK tool (echo server, listen, connect) for
	# the vsock tests. musl-gcc hides the system include path; give it the
	# kernel's uapi headers alone.
	mkdir -p khdr
	ln -sfn /usr/include/linux khdr/linux
	ln -sfn /usr/include/asm-generic khdr/asm-generic
	ln -sfn /usr/include/x86_64-linux-gnu/asm khdr/asm
	musl-gcc -static -Os -Wall -idirafter "$WORK/khdr" -o "$s/bin/vsock-io" "$HERE/vsock-io.c"
	strip "$s/bin/vsock-io"

	# One relative symlink per applet, where busybox itself says it belongs.
	for p in $(bbx/bin/busybox --list-full); do
		case $p in bin/busybox | sbin/init) continue ;; esac
		dir=${p%/*}
		case $dir in
			bin) target=busybox ;;
			sbin | usr/bin) target=../bin/busybox ;;
			usr/sbin) target=../../bin/busybox ;;
			*) continue ;;
		esac
		[[ -e $s/$p ]] || ln -s "$target" "$s/$p"
	done
	# The same tree boots as an initramfs (the kernel runs /init) and as an
	# ext4 root (the kernel runs /sbin/init).
	ln -s ../init "$s/sbin/init"
	install -m 755 "$INIT" "$s/init"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$s/etc/passwd"
	printf 'root:x:0:\n' >"$s/etc/group"
	printf 'microvm\n' >"$s/etc/hostname"
	# /init mounts all three with a single `mount -a` (each fork+exec is slow
	# on an emulating host).
	printf 'proc /proc proc defaults 0 0\nsysfs /sys sysfs defaults 0 0\ndevtmpfs /dev devtmpfs defaults 0 0\n' \
		>"$s/etc/fstab"
	find "$s" -exec touch -h -d "@$EPOCH" {} +

	# (a) initramfs: newc, uncompressed (unpacking is far cheaper for a slow
	# guest than inflating), owned by root without needing root here, inode
	# numbers renumbered for reproducibility. /dev/console comes from the
	# kernel's built-in initramfs.
	log "rootfs: initramfs.cpio (APPLETS=$APPLETS)"
	(cd "$s" && initramfs_entries | cpio --quiet -o -H newc -R 0:0 --reproducible) \
		>"$OUT/initramfs.cpio.tmp"
	mv -f "$OUT/initramfs.cpio.tmp" "$OUT/initramfs.cpio"
	if [[ $INITRAMFS_GZ == 1 ]]; then
		gzip -9 -n -c "$OUT/initramfs.cpio" >"$OUT/initramfs.cpio.gz.tmp"
		mv -f "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
	fi

	# (b) ext4 root, filled from the tree by mke2fs itself (no mount, no loop
	# device); fixed UUID, hash seed and time keep it stable between runs.
	log "rootfs: rootfs.ext4"
	rm -f "$OUT/rootfs.ext4.tmp"
	E2FSPROGS_FAKE_TIME=$EPOCH mkfs.ext4 -q -F -L rootfs -d "$s" \
		-U 6f1d3c2a-5b7e-4d8f-9a0b-1c2d3e4f5a6b \
		-E root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,hash_seed=0b5f1c9e-2d3a-4e6f-8a7b-9c0d1e2f3a4b \
		"$OUT/rootfs.ext4.tmp" 32M >&2
	mv -f "$OUT/rootfs.ext4.tmp" "$OUT/rootfs.ext4"
	log "rootfs: done"
}

# True if the ELF file has no program interpreter (statically linked).
file_is_static() {
	! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
}

if want kernel; then build_kernel; fi
if want rootfs; then build_rootfs; fi

cd "$OUT"
sums=()
for f in vmlinux bzImage microvm.config initramfs.cpio initramfs.cpio.gz rootfs.ext4; do
	[[ -f $f ]] && sums+=("$f")
done
if [[ ${#sums[@]} -gt 0 ]]; then
	sha256sum "${sums[@]}" >SHA256SUMS.tmp
	mv -f SHA256SUMS.tmp SHA256SUMS
	ls -l "${sums[@]}" >&2
fi
log "done: $OUT"
