//! Finds the dynamic loader and shared libraries an ELF executable needs,
//! without running anything: the jailer runs as root, so it must not exec
//! `ldd` (found through `$PATH`, and which may run the binary's loader).
//!
//! The reader is bounded and hostile-safe: only ELF64 little-endian files of
//! the host's machine are accepted, every offset and size is checked against
//! the file's length and fixed caps, and at most [`MAX_LIBRARIES`] objects
//! are resolved.
//!
//! Search order for a `DT_NEEDED` name, per object (a fixed subset of what
//! glibc's loader does, with no environment and no `ld.so.cache`):
//! 1. the object's `DT_RPATH` entries, only if it has no `DT_RUNPATH`;
//! 2. the object's `DT_RUNPATH` entries;
//! 3. the trusted system directories, in the order of [`TRUSTED_DIRS`].
//!
//! `$ORIGIN` in a path entry is the directory of the object itself; entries
//! that are not absolute after that are ignored (the loader would take them
//! relative to its working directory). A candidate that is not an ELF64
//! object of the same machine is skipped, as the loader does.

use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The system library directories searched after the object's own paths,
/// in this order.
#[cfg(target_arch = "x86_64")]
pub(crate) const TRUSTED_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];
/// The system library directories searched after the object's own paths,
/// in this order.
#[cfg(target_arch = "aarch64")]
pub(crate) const TRUSTED_DIRS: &[&str] = &[
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];
/// The system library directories searched after the object's own paths,
/// in this order.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) const TRUSTED_DIRS: &[&str] = &["/lib64", "/usr/lib64", "/lib", "/usr/lib"];

/// At most this many objects (executable and libraries) are resolved.
pub(crate) const MAX_LIBRARIES: usize = 256;
/// At most this many program headers are read.
const MAX_PHDRS: usize = 512;
/// The dynamic section and string table read are at most this long.
const MAX_TABLE: u64 = 16 << 20;
/// Longest `PT_INTERP` path accepted.
const MAX_PATH: u64 = 4096;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// Why an executable's libraries could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// Reading the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file read.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not an ELF object this reader accepts, or is malformed.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file read.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A needed library was found in none of the searched directories.
    #[error("{needed} (needed by {by}): not found in its RPATH/RUNPATH or {dirs}")]
    NotFound {
        /// The `DT_NEEDED` name.
        needed: String,
        /// The object that needs it.
        by: PathBuf,
        /// The trusted directories, for the message.
        dirs: String,
    },
}

/// What the dynamic linker needs to know about one object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct DynInfo {
    /// `PT_INTERP`: the dynamic loader's path (executables only).
    pub interp: Option<PathBuf>,
    /// `DT_NEEDED` names, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` entries.
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` entries.
    pub runpath: Vec<String>,
    /// `e_machine`, to skip libraries built for another machine.
    pub machine: u16,
}

/// Reads little-endian integers from a file at checked offsets.
struct Reader<'a> {
    file: &'a File,
    path: &'a Path,
    len: u64,
}

impl Reader<'_> {
    fn bad(&self, reason: impl Into<String>) -> ElfError {
        ElfError::Malformed {
            path: self.path.to_owned(),
            reason: reason.into(),
        }
    }

    /// `len` bytes at `offset`, which must lie inside the file.
    fn bytes(&self, offset: u64, len: u64) -> Result<Vec<u8>, ElfError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(self.bad(format!("{len} bytes at offset {offset} past end of file")));
        }
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| ElfError::Io {
                path: self.path.to_owned(),
                source,
            })?;
        Ok(buf)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// One program header's fields that matter here.
struct Phdr {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Parses the dynamic-linking information of the ELF file at `path`.
pub(crate) fn read_dyn_info(path: &Path) -> Result<DynInfo, ElfError> {
    let io_err = |source| ElfError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(ElfError::Malformed {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    let r = Reader {
        file: &file,
        path,
        len: meta.len(),
    };
    let eh = r
        .bytes(0, 64)
        .map_err(|_| r.bad("too short for an ELF64 header"))?;
    if &eh[..4] != b"\x7fELF" {
        return Err(r.bad("not an ELF file"));
    }
    if eh[4] != 2 || eh[5] != 1 {
        return Err(r.bad("not a 64-bit little-endian ELF file"));
    }
    let machine = u16_at(&eh, 18);
    let phoff = u64_at(&eh, 32);
    let phentsize = u64::from(u16_at(&eh, 54));
    let phnum = usize::from(u16_at(&eh, 56));
    if phnum > MAX_PHDRS {
        return Err(r.bad(format!("{phnum} program headers (at most {MAX_PHDRS})")));
    }
    if phnum > 0 && phentsize < 56 {
        return Err(r.bad(format!("program header size {phentsize} < 56")));
    }
    let table = r.bytes(phoff, phentsize * phnum as u64)?;
    let phdrs: Vec<Phdr> = (0..phnum)
        .map(|i| {
            let b = &table[i * phentsize as usize..];
            Phdr {
                kind: u32_at(b, 0),
                offset: u64_at(b, 8),
                vaddr: u64_at(b, 16),
                filesz: u64_at(b, 32),
            }
        })
        .collect();

    let mut info = DynInfo {
        machine,
        ..DynInfo::default()
    };
    if let Some(ph) = phdrs.iter().find(|p| p.kind == PT_INTERP) {
        if ph.filesz == 0 || ph.filesz > MAX_PATH {
            return Err(r.bad(format!("PT_INTERP of {} bytes", ph.filesz)));
        }
        let raw = r.bytes(ph.offset, ph.filesz)?;
        let s = raw.split(|&b| b == 0).next().unwrap_or_default();
        let interp = PathBuf::from(std::ffi::OsStr::from_bytes(s));
        if !interp.is_absolute() {
            return Err(r.bad(format!("PT_INTERP {} is not absolute", interp.display())));
        }
        info.interp = Some(interp);
    }
    let Some(dynamic) = phdrs.iter().find(|p| p.kind == PT_DYNAMIC) else {
        return Ok(info);
    };
    if dynamic.filesz > MAX_TABLE {
        return Err(r.bad(format!("dynamic section of {} bytes", dynamic.filesz)));
    }
    let dyn_bytes = r.bytes(dynamic.offset, dynamic.filesz)?;
    let mut entries = Vec::new();
    for chunk in dyn_bytes.chunks_exact(16) {
        let (tag, val) = (u64_at(chunk, 0), u64_at(chunk, 8));
        if tag == DT_NULL {
            break;
        }
        entries.push((tag, val));
    }
    let find = |tag| entries.iter().find(|(t, _)| *t == tag).map(|&(_, v)| v);
    let strings = entries
        .iter()
        .any(|(t, _)| matches!(*t, DT_NEEDED | DT_RPATH | DT_RUNPATH));
    if !strings {
        return Ok(info);
    }
    let (Some(strtab), Some(strsz)) = (find(DT_STRTAB), find(DT_STRSZ)) else {
        return Err(r.bad("DT_NEEDED/RPATH/RUNPATH without DT_STRTAB/DT_STRSZ"));
    };
    if strsz > MAX_TABLE {
        return Err(r.bad(format!("string table of {strsz} bytes")));
    }
    // DT_STRTAB is a virtual address: map it through the PT_LOAD segments.
    let load = phdrs
        .iter()
        .find(|p| {
            p.kind == PT_LOAD
                && strtab >= p.vaddr
                && strtab
                    .checked_add(strsz)
                    .is_some_and(|end| end <= p.vaddr.saturating_add(p.filesz))
        })
        .ok_or_else(|| r.bad("DT_STRTAB is not inside a loaded segment"))?;
    let strtab_off = load
        .offset
        .checked_add(strtab - load.vaddr)
        .ok_or_else(|| r.bad("DT_STRTAB offset overflows"))?;
    let table = r.bytes(strtab_off, strsz)?;
    let string = |off: u64| -> Result<String, ElfError> {
        let rest = usize::try_from(off)
            .ok()
            .and_then(|o| table.get(o..))
            .ok_or_else(|| r.bad(format!("string offset {off} outside the string table")))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| r.bad("unterminated string in the string table"))?;
        String::from_utf8(rest[..end].to_vec())
            .map_err(|_| r.bad("a library name or path is not UTF-8"))
    };
    let split = |s: String| -> Vec<String> {
        s.split(':')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect()
    };
    for &(tag, val) in &entries {
        match tag {
            DT_NEEDED => info.needed.push(string(val)?),
            DT_RPATH => info.rpath.extend(split(string(val)?)),
            DT_RUNPATH => info.runpath.extend(split(string(val)?)),
            _ => {}
        }
    }
    Ok(info)
}

/// The directories searched for the libraries `info` (the object at
/// `object`) needs, in the documented order.
fn search_dirs(info: &DynInfo, object: &Path) -> Vec<PathBuf> {
    let origin = object.parent().unwrap_or(Path::new("/"));
    let own = if info.runpath.is_empty() {
        &info.rpath
    } else {
        &info.runpath
    };
    let origin_str = origin.to_string_lossy();
    own.iter()
        .map(|e| {
            PathBuf::from(
                e.replace("${ORIGIN}", &origin_str)
                    .replace("$ORIGIN", &origin_str),
            )
        })
        .filter(|p| p.is_absolute())
        .chain(TRUSTED_DIRS.iter().map(PathBuf::from))
        .collect()
}

/// Whether `path` is an ELF64 object for `machine` (else the loader skips it).
fn is_usable(path: &Path, machine: u16) -> bool {
    read_dyn_info(path).is_ok_and(|i| i.machine == machine)
}

/// The absolute paths of the loader and every shared library (recursively)
/// that the executable at `exec` needs: empty for a static binary. Each path
/// is where the loader inside a jail will look for the file when it is
/// copied to the same path there.
pub(crate) fn shared_libraries(exec: &Path) -> Result<Vec<PathBuf>, ElfError> {
    let top = read_dyn_info(exec)?;
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some(interp) = &top.interp {
        out.push(interp.clone());
    }
    let machine = top.machine;
    // The loader satisfies a DT_NEEDED of its own name (libc needs it).
    let mut seen_names: Vec<String> = top
        .interp
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_str()?.to_owned()))
        .collect();
    let mut queue: std::collections::VecDeque<(PathBuf, DynInfo)> =
        std::collections::VecDeque::from([(exec.to_owned(), top)]);
    while let Some((object, info)) = queue.pop_front() {
        let dirs = search_dirs(&info, &object);
        for needed in &info.needed {
            if seen_names.contains(needed) {
                continue;
            }
            if needed.contains('/') || needed.is_empty() || needed == "." || needed == ".." {
                return Err(ElfError::Malformed {
                    path: object.clone(),
                    reason: format!("DT_NEEDED {needed:?} is not a plain library name"),
                });
            }
            if seen_names.len() >= MAX_LIBRARIES {
                return Err(ElfError::Malformed {
                    path: exec.to_owned(),
                    reason: format!("needs more than {MAX_LIBRARIES} libraries"),
                });
            }
            seen_names.push(needed.clone());
            let found = dirs
                .iter()
                .map(|d| d.join(needed))
                .find(|p| is_usable(p, machine))
                .ok_or_else(|| ElfError::NotFound {
                    needed: needed.clone(),
                    by: object.clone(),
                    dirs: TRUSTED_DIRS.join(", "),
                })?;
            let lib_info = read_dyn_info(&found)?;
            if !out.contains(&found) {
                out.push(found.clone());
            }
            queue.push_back((found, lib_info));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::process::Command;

    /// Test oracle only: the paths `ldd` prints for `path`.
    fn ldd(path: &str) -> BTreeSet<PathBuf> {
        let out = Command::new("ldd").arg(path).output().expect("run ldd");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                let p = match line.split_once("=>") {
                    Some((_, rest)) => rest.split_whitespace().next()?,
                    None => line.split_whitespace().next()?,
                };
                p.starts_with('/').then(|| PathBuf::from(p))
            })
            .collect()
    }

    #[test]
    fn resolves_like_ldd() {
        for bin in ["/bin/ls", "/bin/sh", "/usr/bin/env"] {
            if !Path::new(bin).exists() {
                continue;
            }
            let ours: BTreeSet<PathBuf> = shared_libraries(Path::new(bin))
                .expect("resolve")
                .into_iter()
                .collect();
            assert!(!ours.is_empty(), "{bin} is dynamic");
            assert_eq!(ours, ldd(bin), "{bin}");
        }
        // The test binary itself links libc dynamically.
        let me = std::env::current_exe().expect("current exe");
        let ours: BTreeSet<PathBuf> = shared_libraries(&me)
            .expect("resolve")
            .into_iter()
            .collect();
        assert_eq!(ours, ldd(&me.to_string_lossy()));
    }

    #[test]
    fn static_binary_needs_nothing() {
        let busybox = Path::new("/bin/busybox");
        if busybox.exists() && ldd("/bin/busybox").is_empty() {
            let info = read_dyn_info(busybox).expect("parse");
            assert!(info.interp.is_none() && info.needed.is_empty());
            assert!(shared_libraries(busybox).expect("resolve").is_empty());
        }
    }

    /// A minimal dynamic ELF64 with one PT_LOAD covering the file, a
    /// PT_DYNAMIC with the given entries and a string table at 0x200.
    fn dynamic_elf(strings: &[u8], dynamic: &[(u64, u64)]) -> Vec<u8> {
        let mut f = vec![0u8; 0x400];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[18..20].copy_from_slice(&0x3eu16.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let ph = |f: &mut Vec<u8>, at: usize, kind: u32, off: u64, size: u64| {
            f[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            f[at + 16..at + 24].copy_from_slice(&off.to_le_bytes());
            f[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
        };
        ph(&mut f, 64, PT_LOAD, 0, 0x400);
        ph(&mut f, 120, PT_DYNAMIC, 0x300, 16 * dynamic.len() as u64);
        f[0x200..0x200 + strings.len()].copy_from_slice(strings);
        for (i, (t, v)) in dynamic.iter().enumerate() {
            let at = 0x300 + 16 * i;
            f[at..at + 8].copy_from_slice(&t.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&v.to_le_bytes());
        }
        f
    }

    #[test]
    fn parses_needed_and_runpath_and_searches_origin_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let strings = b"\0libfoo.so.1\0$ORIGIN/lib:/nonexistent\0";
        let exe = dir.path().join("exe");
        std::fs::write(
            &exe,
            dynamic_elf(
                strings,
                &[
                    (DT_STRTAB, 0x200),
                    (DT_STRSZ, strings.len() as u64),
                    (DT_NEEDED, 1),
                    (DT_RUNPATH, 13),
                    (DT_NULL, 0),
                ],
            ),
        )
        .expect("write");
        let info = read_dyn_info(&exe).expect("parse");
        assert_eq!(info.needed, ["libfoo.so.1"]);
        assert_eq!(info.runpath, ["$ORIGIN/lib", "/nonexistent"]);
        assert!(info.interp.is_none());
        // Not found anywhere: an error naming it, not a silent skip.
        let err = shared_libraries(&exe).expect_err("missing library");
        assert!(err.to_string().contains("libfoo.so.1"), "{err}");
        // Found through $ORIGIN (a library with no needs of its own).
        std::fs::create_dir(dir.path().join("lib")).expect("mkdir");
        let lib = dir.path().join("lib/libfoo.so.1");
        std::fs::write(&lib, dynamic_elf(b"\0", &[(DT_NULL, 0)])).expect("write");
        assert_eq!(shared_libraries(&exe).expect("resolve"), vec![lib]);
    }

    #[test]
    fn hostile_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x");
        let good = dynamic_elf(
            b"\0libc.so.6\0",
            &[(DT_STRTAB, 0x200), (DT_STRSZ, 11), (DT_NEEDED, 1)],
        );
        let mut cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\x7fELF".to_vec(),
            vec![0u8; 64],
            good[..100].to_vec(),
        ];
        // Every single-field corruption: huge values in each 8-byte slot.
        for at in (16..0x340).step_by(8) {
            let mut bad = good.clone();
            bad[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            cases.push(bad);
        }
        // A name with a slash, and a string offset past the table.
        cases.push(dynamic_elf(
            b"\0../evil\0",
            &[(DT_STRTAB, 0x200), (DT_STRSZ, 9), (DT_NEEDED, 1)],
        ));
        cases.push(dynamic_elf(
            b"\0libc.so.6\0",
            &[(DT_STRTAB, 0x200), (DT_STRSZ, 11), (DT_NEEDED, 999)],
        ));
        for (i, case) in cases.iter().enumerate() {
            std::fs::write(&path, case).expect("write");
            // Must return (Ok or Err), never panic or allocate without bound.
            let _ = shared_libraries(&path);
            if i < 4 || i >= cases.len() - 2 {
                assert!(shared_libraries(&path).is_err(), "case {i}");
            }
        }
    }
}
