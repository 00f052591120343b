//! Loading a Linux kernel, its initrd and command line into guest memory.
//!
//! Both an uncompressed ELF `vmlinux` and a `bzImage` are entered through the
//! 64-bit boot protocol: the vCPU starts in long mode at the kernel's 64-bit
//! entry with `rsi` pointing at the zero page this module fills in.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use arch::layout::{self, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use arch::zero_page::{self, InitrdRange, ZeroPageInputs};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 4096;

/// Why the guest could not be set up for boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A boot file could not be opened or read.
    #[error("{what} {path}: {source}")]
    File {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel is neither an ELF vmlinux nor a bzImage.
    #[error("kernel {0}: neither an ELF vmlinux nor a bzImage")]
    UnknownKernelFormat(PathBuf),
    /// linux-loader rejected the kernel.
    #[error("loading kernel {path}: {source}")]
    LoadKernel {
        /// The kernel file.
        path: PathBuf,
        /// linux-loader's error.
        source: linux_loader::loader::Error,
    },
    /// The initrd does not fit between the kernel and the end of low memory.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel (ends at {kernel_end:#x})")]
    InitrdDoesNotFit {
        /// The initrd file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Highest usable address.
        limit: u64,
        /// Where the kernel ends.
        kernel_end: u64,
    },
    /// Copying the initrd into guest memory failed.
    #[error("copying initrd {path} into guest memory: {source}")]
    CopyInitrd {
        /// The initrd file.
        path: PathBuf,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
    /// The command line is invalid or too long.
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing the command line into guest memory failed.
    #[error("writing the kernel command line: {0}")]
    WriteCmdline(linux_loader::loader::Error),
    /// The MP table could not be written.
    #[error("MP table: {0}")]
    Mptable(#[from] arch::mptable::MptableError),
    /// The zero page could not be written.
    #[error(transparent)]
    ZeroPage(#[from] arch::zero_page::ZeroPageError),
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Where the boot vCPU starts.
    pub entry: GuestAddress,
    /// First byte after the loaded image.
    pub end: u64,
    /// The bzImage setup header (`None` for vmlinux).
    pub setup_header: Option<setup_header>,
}

/// The kernel image formats flint boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// Uncompressed ELF `vmlinux`.
    Elf,
    /// Compressed `bzImage` (boot protocol >= 2.06).
    BzImage,
}

/// Tells the kernel format from the file's first bytes.
pub fn detect_format<R: Read + Seek>(image: &mut R) -> std::io::Result<Option<KernelFormat>> {
    let mut head = [0u8; 0x206];
    image.seek(SeekFrom::Start(0))?;
    let mut filled = 0;
    while filled < head.len() {
        match image.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    image.seek(SeekFrom::Start(0))?;
    if filled >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(Some(KernelFormat::Elf));
    }
    if filled >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::File {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = open("kernel", path)?;
    let format = detect_format(&mut file)
        .map_err(|source| BootError::File {
            what: "kernel",
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| BootError::UnknownKernelFormat(path.to_owned()))?;
    let load_err = |source| BootError::LoadKernel {
        path: path.to_owned(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok(LoadedKernel {
                entry: r.kernel_load,
                end: r.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok(LoadedKernel {
                entry: GuestAddress(r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
                end: r.kernel_end,
                setup_header: r.setup_header,
            })
        }
    }
}

/// Copies the initrd at `path` to the highest page-aligned place in low memory
/// the kernel accepts (above the kernel image, below `initrd_addr_max`).
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel: &LoadedKernel,
    mem_size: u64,
) -> Result<InitrdRange, BootError> {
    let mut file = open("initrd", path)?;
    let size = file
        .metadata()
        .map_err(|source| BootError::File {
            what: "initrd",
            path: path.to_owned(),
            source,
        })?
        .len();
    let addr_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(layout::DEFAULT_INITRD_ADDR_MAX - 1);
    let limit = layout::low_ram_end(mem_size).min(addr_max.saturating_add(1));
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= kernel.end && size > 0 && size <= u64::from(u32::MAX))
        .ok_or_else(|| BootError::InitrdDoesNotFit {
            path: path.to_owned(),
            size,
            limit,
            kernel_end: kernel.end,
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BootError::CopyInitrd {
            path: path.to_owned(),
            source,
        })?;
    Ok(InitrdRange {
        addr: GuestAddress(addr),
        size,
    })
}

/// Builds the kernel command line from the configured arguments plus the
/// words flint adds (devices, root, host quirks).
pub fn build_cmdline(boot_args: &str, extra: &[&str]) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    if !boot_args.trim().is_empty() {
        cmdline
            .insert_str(boot_args.trim())
            .map_err(BootError::Cmdline)?;
    }
    for word in extra {
        cmdline.insert_str(word).map_err(BootError::Cmdline)?;
    }
    Ok(cmdline)
}

/// Writes everything the kernel reads at boot besides its own image: command
/// line, MP table and zero page. The e820 map describes `ram_size` bytes of
/// RAM: guest memory may hold more (the virtio-mem hotplug region), which
/// the guest must learn about from its device only.
pub fn configure_system(
    mem: &GuestMemory,
    ram_size: u64,
    cmdline: &Cmdline,
    kernel: &LoadedKernel,
    initrd: Option<InitrdRange>,
    vcpu_count: u8,
) -> Result<(), BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(BootError::WriteCmdline)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes()
        .len();
    arch::mptable::setup_mptable(mem, vcpu_count)?;
    let e820 = zero_page::e820_map(ram_size);
    zero_page::write_zero_page(
        mem,
        &ZeroPageInputs {
            setup_header: kernel.setup_header,
            cmdline_len,
            initrd,
            e820: &e820,
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use std::io::{Cursor, Write};

    #[test]
    fn format_detection() {
        let mut elf = Cursor::new(b"\x7fELF\x02\x01".to_vec());
        assert_eq!(detect_format(&mut elf).unwrap(), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(
            detect_format(&mut Cursor::new(bz)).unwrap(),
            Some(KernelFormat::BzImage)
        );
        assert_eq!(
            detect_format(&mut Cursor::new(vec![0u8; 10])).unwrap(),
            None
        );
        assert_eq!(detect_format(&mut Cursor::new(Vec::new())).unwrap(), None);
    }

    #[test]
    fn garbage_kernel_is_refused_clearly() {
        let mem = create_guest_memory(64).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0x55; 4096]).unwrap();
        let err = load_kernel(&mem, f.path()).unwrap_err();
        assert!(matches!(err, BootError::UnknownKernelFormat(_)), "{err}");
        let err = load_kernel(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory_page_aligned() {
        let mem = create_guest_memory(64).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![0xab; 10_000]).unwrap();
        let kernel = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            end: 0x200_0000,
            setup_header: None,
        };
        let r = load_initrd(&mem, f.path(), &kernel, 64 << 20).unwrap();
        assert_eq!(r.size, 10_000);
        assert_eq!(r.addr.0 % 4096, 0);
        assert!(r.addr.0 + r.size <= 64 << 20 && r.addr.0 + r.size > (64 << 20) - 4096 - 10_000);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(r.addr.0 + 9_999)).unwrap(),
            0xab
        );
    }

    #[test]
    fn initrd_that_does_not_fit_is_an_error() {
        let mem = create_guest_memory(32).unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(20 << 20).unwrap();
        let kernel = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            end: 0x180_0000,
            setup_header: None,
        };
        let err = load_initrd(&mem, f.path(), &kernel, 32 << 20).unwrap_err();
        assert!(matches!(err, BootError::InitrdDoesNotFit { .. }), "{err}");
    }

    #[test]
    fn cmdline_gets_the_extra_words_and_rejects_bad_text() {
        let c = build_cmdline("console=ttyS0 reboot=k", &["noxsave"]).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 reboot=k noxsave"
        );
        assert!(build_cmdline("bad\u{7}byte", &[]).is_err());
        assert!(build_cmdline(&"x".repeat(CMDLINE_MAX_SIZE + 1), &[]).is_err());
    }

    #[test]
    fn system_configuration_writes_cmdline_mptable_and_zero_page() {
        let mem = create_guest_memory(64).unwrap();
        let c = build_cmdline("console=ttyS0", &[]).unwrap();
        let kernel = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            end: 0x180_0000,
            setup_header: None,
        };
        configure_system(&mem, 64 << 20, &c, &kernel, None, 2).unwrap();
        let mut text = [0u8; 14];
        mem.read_slice(&mut text, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&text, b"console=ttyS0\0");
        let mut magic = [0u8; 4];
        mem.read_slice(&mut magic, GuestAddress(layout::EBDA_START))
            .unwrap();
        assert_eq!(&magic, b"_MP_");
        let params: linux_loader::loader::bootparam::boot_params =
            mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.cmdline_size }, 13);
        assert_eq!(params.e820_entries, 2);
    }
}
