//! `flint container run`: an OCI image's root filesystem booted as a microVM
//! with flint's own guest init, running one command and exiting with its
//! status.
//!
//! 1. The image tarball (OCI image layout or `docker save`) is indexed and
//!    its manifest and config read ([`image`]).
//! 2. Its layers are unpacked into a scratch tree with whiteouts honoured
//!    ([`unpack`]), and the tree made into an ext4 image with `mkfs.ext4 -d`
//!    plus flint's init at `/.flint/init` ([`rootfs`]). The image is cached
//!    under the cache directory by (format, layer digests, init digest),
//!    with a check file (size, content digest); later runs reuse it after
//!    checking it, and rebuild it when it is not sound.
//! 3. Each run boots a private copy of the cached image, with a second small
//!    drive holding the run's settings as JSON ([`settings`]): command,
//!    environment, working directory. The guest init (crate `guest-init`)
//!    runs the command with stdout on COM1 and stderr on COM2, which flint
//!    routes to its own stdout and stderr, and reports the exit status.

pub mod cache;
mod fuzz;
pub mod image;
pub mod interrupt;
pub mod jail;
pub mod lifecycle;
pub mod rootfs;
pub mod settings;
pub mod unpack;

pub use fuzz::{
    fuzz_open_image, fuzz_parse_config, fuzz_parse_docker_manifest, fuzz_parse_index,
    fuzz_parse_manifest, fuzz_unpack_layer,
};

use std::io::{self, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::{Compression, Hasher, HashingReader, Image, LayerRef, Tarball};

/// flint's guest init, a static x86_64 executable built by `build.rs`.
pub static INIT_BINARY: &[u8] = include_bytes!(env!("FLINT_GUEST_INIT"));

/// Kernel command line for container guests; flint appends `root=/dev/vda rw`,
/// the virtio-mmio devices and any host quirk parameters itself. The kernel's
/// console is COM2 (flint's stderr), so that the command's stdout on COM1
/// carries nothing else; with `loglevel=1` only emergencies (a panic) show.
pub const BOOT_ARGS: &str =
    "console=ttyS1 8250.nr_uarts=2 quiet loglevel=1 reboot=k panic=-1 init=/.flint/init";

/// The guest's hostname.
pub const HOSTNAME: &str = "flint";

/// `flint container run` options.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ContainerRunArgs {
    /// The image: an OCI image-layout tarball or a `docker save` tarball
    /// (optionally gzip-compressed).
    /// (Or give the image as the first word, `run IMAGE [CMD...]`, as a
    /// tarball path or a `name:tag` of the local store.)
    #[arg(long, value_name = "TARBALL")]
    pub image: Option<PathBuf>,
    /// A directory to use as the root file system instead of an image (not
    /// cached; needs a command).
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    pub rootfs: Option<PathBuf>,
    /// Guest kernel [default: $FLINT_KERNEL, else $FLINT_GUEST_DIR/vmlinux].
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(
        long,
        visible_alias = "memory",
        value_name = "MIB",
        default_value_t = 256
    )]
    pub mem: u64,
    /// Number of vCPUs.
    #[arg(long, visible_alias = "cpus", value_name = "N", default_value_t = 1)]
    pub vcpus: u8,
    /// Host TAP device to give the guest as eth0 (brought up, unaddressed).
    #[arg(long, value_name = "TAP")]
    pub net: Option<String>,
    /// Set an environment variable (KEY=VALUE), or pass the host's (KEY).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the guest (absolute) [default: the image's].
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run the command as: NAME|UID[:GROUP|GID], names looked up in
    /// the image's /etc/passwd and /etc/group [default: the image's User,
    /// else root].
    #[arg(long, short = 'u', value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Where root images are cached [default: $XDG_CACHE_HOME/flint/images
    /// or ~/.cache/flint/images].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes an image may unpack to (or a gzip-compressed tarball
    /// inflate to), with an optional K/M/G/T suffix (powers of 1024)
    /// [default: $FLINT_MAX_UNPACKED_SIZE, else 8G].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_unpacked_size: Option<u64>,
    /// Do not print `container: ...` progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// The command and its arguments (replace the image's Cmd; its
    /// Entrypoint stays).
    #[arg(
        value_name = "CMD",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required_unless_present_any = ["image", "rootfs"]
    )]
    pub command: Vec<String>,
}

/// Why a container run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The options do not make a runnable container.
    #[error("{0}")]
    Usage(String),
    /// The image tarball is malformed or unsupported.
    #[error("image: {0}")]
    Image(String),
    /// Building the ext4 root image failed.
    #[error("root image: {0}")]
    Mkfs(String),
    /// No usable guest kernel.
    #[error("{0}")]
    Kernel(String),
    /// A host file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The generated VM config was refused.
    #[error("VM config: {0}")]
    Config(#[from] api::ConfigError),
    /// The VM failed.
    #[error(transparent)]
    Vm(#[from] vmm::MicroVmError),
    /// A bug in flint.
    #[error("internal error: {0}")]
    Internal(String),
    /// The guest ended without the init's exit status.
    #[error("the guest stopped without reporting an exit status")]
    NoExitStatus,
    /// A stop signal (its number) arrived while the root image was built;
    /// the scratch files are gone.
    #[error("stopped by {}", interrupt::signal_name(*.0))]
    Interrupted(i32),
}

/// Parses a size: bytes, or a number with a K, M, G or T suffix (powers of
/// 1024; an optional trailing `B`/`iB` is accepted).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => {
                    return Err(format!(
                        "{text:?}: unknown size suffix {c:?} (K, M, G or T)"
                    ))
                }
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (like 8G or 500M)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The unpacked-size limit: `--max-unpacked-size`, else
/// `$FLINT_MAX_UNPACKED_SIZE`, else [`unpack::DEFAULT_MAX_UNPACKED`].
pub fn unpacked_limit(
    explicit: Option<u64>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<u64, ContainerError> {
    if let Some(n) = explicit {
        return Ok(n);
    }
    match env("FLINT_MAX_UNPACKED_SIZE").filter(|v| !v.is_empty()) {
        Some(v) => parse_size(&v)
            .map_err(|e| ContainerError::Usage(format!("$FLINT_MAX_UNPACKED_SIZE: {e}"))),
        None => Ok(unpack::DEFAULT_MAX_UNPACKED),
    }
}

/// Where a run's output goes.
pub struct RunIo {
    /// The command's stdout (the guest's COM1).
    pub stdout: Box<dyn Write + Send>,
    /// The command's stderr (the guest's COM2).
    pub stderr: Box<dyn Write + Send>,
    /// `container: ...` progress lines.
    pub progress: Box<dyn Write + Send>,
}

impl RunIo {
    /// This process's stdout and stderr.
    pub fn process() -> RunIo {
        RunIo {
            stdout: Box::new(io::stdout()),
            stderr: Box::new(io::stderr()),
            progress: Box::new(io::stderr()),
        }
    }
}

/// What happened in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The command's exit status (128 + signal if it was killed; 130/143
    /// if flint itself was stopped by SIGINT/SIGTERM).
    pub exit_code: u8,
    /// Whether the root image came from the cache.
    pub cache_hit: bool,
    /// The image's digest (`None` for `--rootfs`).
    pub image_digest: Option<String>,
    /// From the start of the run to the VM's start: reading the image and
    /// building (or finding) and copying the root image.
    pub build_time: Duration,
    /// From the VM's start to the end of the run.
    pub boot_to_exit_time: Duration,
}

/// Runs a container with this process's stdout/stderr; returns the
/// command's exit status.
pub fn run(args: ContainerRunArgs) -> Result<u8, ContainerError> {
    let quiet = args.quiet;
    let report = run_with(args, RunIo::process());
    let _ = io::stdout().flush();
    match report {
        Ok(r) => Ok(r.exit_code),
        // Stopped while building: the scratch files are gone; exit like the
        // signal's default action would report it.
        Err(ContainerError::Interrupted(signal)) => {
            if !quiet {
                eprintln!("container: stopped by {}", interrupt::signal_name(signal));
            }
            Ok(128u8.saturating_add(signal as u8))
        }
        Err(e) => Err(e),
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ContainerError {
    let what = what.into();
    move |source| ContainerError::Io { what, source }
}

/// [`io_err`], but `Interrupted` when the I/O stopped for a stop signal.
fn stopped_or(what: impl Into<String>) -> impl FnOnce(io::Error) -> ContainerError {
    let what = what.into();
    move |source| match interrupt::pending() {
        Some(signal) if source.kind() == io::ErrorKind::Interrupted => {
            ContainerError::Interrupted(signal)
        }
        _ => ContainerError::Io { what, source },
    }
}

/// The kernel to boot: `explicit`, else `$FLINT_KERNEL`, else
/// `$FLINT_GUEST_DIR/vmlinux`, else the development checkout's
/// `../shared/guest/vmlinux`.
pub fn find_kernel(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<PathBuf, ContainerError> {
    let must_exist = |p: PathBuf, from: &str| {
        if p.is_file() {
            Ok(p)
        } else {
            Err(ContainerError::Kernel(format!(
                "guest kernel {} (from {from}) does not exist",
                p.display()
            )))
        }
    };
    if let Some(p) = explicit {
        return must_exist(p.to_owned(), "--kernel");
    }
    if let Some(p) = env("FLINT_KERNEL").filter(|p| !p.is_empty()) {
        return must_exist(p.into(), "$FLINT_KERNEL");
    }
    if let Some(dir) = env("FLINT_GUEST_DIR").filter(|p| !p.is_empty()) {
        return must_exist(Path::new(&dir).join("vmlinux"), "$FLINT_GUEST_DIR");
    }
    let dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/guest/vmlinux");
    if dev.is_file() {
        return Ok(dev);
    }
    Err(ContainerError::Kernel(
        "no guest kernel: pass --kernel PATH, or set FLINT_KERNEL (a vmlinux) or FLINT_GUEST_DIR \
         (a directory with vmlinux; scripts/guest-dir builds one)"
            .into(),
    ))
}

/// The signal number of a stop reason vmm reports.
fn signal_number(name: &str) -> u8 {
    match name {
        "SIGINT" => 2,
        "SIGTERM" => 15,
        "SIGHUP" => 1,
        _ => 15,
    }
}

/// A container ready to boot: its private files and the VM config.
pub struct Prepared {
    /// This run's scratch directory (inside the cache directory), holding
    /// the private root image and the settings drive; removed on drop.
    pub run_dir: tempfile::TempDir,
    /// The lock that tells other runs' sweeps the scratch directory is in
    /// use (released after `run_dir` is removed).
    _scratch_lock: std::fs::File,
    /// The VM to boot.
    pub config: api::VmConfig,
    /// What the guest init will run.
    pub spec: settings::RunSpec,
    /// The settings drive (its last block receives the exit status).
    pub settings_path: PathBuf,
    /// Whether the root image came from the cache.
    pub cache_hit: bool,
    /// The image's digest (`None` for `--rootfs`).
    pub image_digest: Option<String>,
}

/// Runs a container, writing its output to `io`.
pub fn run_with(args: ContainerRunArgs, io: RunIo) -> Result<RunReport, ContainerError> {
    let started = Instant::now();
    let RunIo {
        stdout,
        stderr,
        mut progress,
    } = io;
    let progress: &mut dyn Write = if args.quiet {
        &mut io::sink()
    } else {
        &mut *progress
    };
    let prepared = prepare(&args, progress)?;
    let booted = Instant::now();
    let exit_code = boot(&prepared, started, stdout, stderr, progress)?;
    Ok(RunReport {
        exit_code,
        cache_hit: prepared.cache_hit,
        image_digest: prepared.image_digest.clone(),
        build_time: booted - started,
        boot_to_exit_time: booted.elapsed(),
    })
}

/// Writes a `container: ...` progress line (and logs it).
fn say(progress: &mut dyn Write, line: String) {
    log::info!("{line}");
    let _ = writeln!(progress, "container: {line}");
}

/// Everything before the boot: reads the image, builds or finds its root
/// image, makes this run's private copy and settings drive, and assembles
/// the VM config.
pub fn prepare(
    args: &ContainerRunArgs,
    progress: &mut dyn Write,
) -> Result<Prepared, ContainerError> {
    let kernel = find_kernel(args.kernel.as_deref(), |k| std::env::var(k).ok())?;
    if args.vcpus == 0 || args.mem < api::MIN_MEM_MIB {
        return Err(ContainerError::Usage(format!(
            "--vcpus must be at least 1 and --mem at least {} MiB",
            api::MIN_MEM_MIB
        )));
    }
    let limit = unpacked_limit(args.max_unpacked_size, |k| std::env::var(k).ok())?;
    let cache_dir = match &args.cache_dir {
        Some(d) => d.clone(),
        None => cache::default_cache_dir().ok_or_else(|| {
            ContainerError::Usage(
                "no cache directory: set HOME or XDG_CACHE_HOME, or pass --cache-dir".into(),
            )
        })?,
    };
    cache::create_cache_dir(&cache_dir).map_err(io_err(format!(
        "creating the cache directory {}",
        cache_dir.display()
    )))?;
    // SIGINT/SIGTERM/SIGHUP stop the build cleanly (the scratch directory
    // is removed on the way out) until the VM starts.
    let _signals = interrupt::SignalGuard::install();
    cache::sweep_stale_scratch(&cache_dir);
    // Everything of this run lives here and goes when it is dropped. It is
    // inside the cache directory so finished images can be renamed into the
    // cache and copied (reflinked) out of it on the same file system. Its
    // name carries the pid and it is locked, so that a later run can tell a
    // dead run's leftovers from a live one's.
    let run_dir = tempfile::Builder::new()
        .prefix(&cache::scratch_prefix())
        .tempdir_in(&cache_dir)
        .map_err(io_err(format!(
            "making a scratch directory in {}",
            cache_dir.display()
        )))?;
    let scratch_lock =
        cache::lock_scratch(run_dir.path()).map_err(io_err("locking the scratch directory"))?;
    let scratch = run_dir.path();
    let root_image = scratch.join("root.ext4");
    let init_digest = image::sha256_digest(INIT_BINARY);
    let init_path = scratch.join("init");
    let write_init = || {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&init_path, INIT_BINARY)
            .and_then(|()| {
                std::fs::set_permissions(&init_path, std::fs::Permissions::from_mode(0o755))
            })
            .map_err(io_err("writing the guest init"))
    };

    let net: Vec<String> = args.net.iter().map(|_| "eth0".to_owned()).collect();
    let overrides = settings::Overrides {
        command: &args.command,
        env: &args.env,
        workdir: args.workdir.as_deref(),
        user: args.user.as_deref(),
        net,
        hostname: HOSTNAME,
    };
    let host_env = |k: &str| std::env::var(k).ok();
    let (spec, cache_hit, image_digest) = match (&args.image, &args.rootfs) {
        (Some(path), None) => {
            let tar = Tarball::open_limited(path, scratch, limit)?;
            let image = image::read_image(&tar)?;
            let spec = settings::merge(&image.defaults, &overrides, host_env)?;
            let key = cache::cache_key(image.format, &image.layers, &init_digest);
            let cached = cache::cache_file(&cache_dir, &key);
            let entry = match cache::open_cached(&cached) {
                Ok(file) => Some(file),
                Err(why) => {
                    if why != "absent" {
                        say(
                            progress,
                            format!(
                                "cached root image {} is {why}; rebuilding",
                                cached.display()
                            ),
                        );
                    }
                    None
                }
            };
            let hit = entry.is_some();
            let entry = match entry {
                Some(file) => {
                    say(
                        progress,
                        format!("using cached root image {}", image.digest),
                    );
                    file
                }
                None => {
                    say(progress, format!("building root image {}", image.digest));
                    write_init()?;
                    let built = scratch.join("built.ext4");
                    build_from_image(&tar, &image, &built, scratch, &init_path, limit)?;
                    cache::store(&built, &cached, scratch)
                        .map_err(stopped_or(format!("storing {}", cached.display())))?;
                    cache::open_cached(&cached).map_err(|why| {
                        ContainerError::Mkfs(format!(
                            "the stored root image {} is {why}",
                            cached.display()
                        ))
                    })?
                }
            };
            rootfs::private_copy_from(&entry, &root_image)
                .map_err(stopped_or(format!("copying {}", cached.display())))?;
            (spec, hit, Some(image.digest))
        }
        (None, Some(dir)) => {
            let spec = settings::merge(&image::Defaults::default(), &overrides, host_env)?;
            say(
                progress,
                format!("building root image from {}", dir.display()),
            );
            write_init()?;
            build_from_dir(dir, &root_image, scratch, &init_path)?;
            (spec, false, None)
        }
        _ => {
            return Err(ContainerError::Usage(
                "give exactly one of --image and --rootfs".into(),
            ))
        }
    };
    let _ = std::fs::remove_file(&init_path);
    let settings_path = scratch.join("settings.img");
    std::fs::write(&settings_path, settings::drive_image(&spec))
        .map_err(io_err("writing the settings drive"))?;

    let mut config = serde_json::json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": BOOT_ARGS},
        "machine-config": {"vcpu_count": args.vcpus, "mem_size_mib": args.mem},
        "drives": [
            {"drive_id": "rootfs", "path_on_host": root_image, "is_root_device": true, "is_read_only": false},
            // Writable: the init records the exit status in its last block.
            {"drive_id": "settings", "path_on_host": settings_path, "is_root_device": false, "is_read_only": false},
        ],
    });
    if let Some(tap) = &args.net {
        config["network-interfaces"] =
            serde_json::json!([{"iface_id": "eth0", "host_dev_name": tap}]);
    }
    let config = api::VmConfig::from_json(&config.to_string())?;
    config.validate()?;
    // A stop that came after the last check still stops the run (before
    // the VMM takes the signals over).
    interrupt::check()?;
    Ok(Prepared {
        run_dir,
        _scratch_lock: scratch_lock,
        config,
        spec,
        settings_path,
        cache_hit,
        image_digest,
    })
}

/// Boots a prepared container and waits for it; returns the command's exit
/// status.
pub fn boot(
    prepared: &Prepared,
    started: Instant,
    stdout: Box<dyn Write + Send>,
    stderr: Box<dyn Write + Send>,
    progress: &mut dyn Write,
) -> Result<u8, ContainerError> {
    let options = vmm::VmmOptions {
        started,
        console_out: Some(stdout),
        console2_out: Some(stderr),
        console_in: false,
        instance_id: "flint-container".into(),
        ..vmm::VmmOptions::default()
    };
    let config = prepared.config.clone();
    // The VMM runs on a thread of its own: it may confine the thread it runs
    // on (seccomp), and this one still has files to read and remove after.
    let end = std::thread::Builder::new()
        .name("flint_vmm".into())
        .spawn(move || vmm::run(vmm::Start::Boot(config), options))
        .map_err(io_err("starting the VMM thread"))?
        .join()
        .map_err(|_| ContainerError::Internal("the VMM thread panicked".into()))??;
    match end {
        vmm::RunEnd::GuestExit(code) => Ok(code),
        vmm::RunEnd::Signal(name) => {
            say(progress, format!("stopped by {name}"));
            Ok(128 + signal_number(name))
        }
        vmm::RunEnd::GuestStopped | vmm::RunEnd::ApiStop | vmm::RunEnd::Migrated => {
            settings::read_status(&prepared.settings_path).ok_or(ContainerError::NoExitStatus)
        }
    }
}

/// Unpacks `image`'s layers (at most `limit` bytes) and builds the ext4
/// image at `dest`.
fn build_from_image(
    tar: &Tarball,
    image: &Image,
    dest: &Path,
    scratch: &Path,
    init_path: &Path,
    limit: u64,
) -> Result<(), ContainerError> {
    let tree_dir = scratch.join("tree");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tree_dir)
        .map_err(io_err("making the unpack directory"))?;
    let mut tree = unpack::Tree::with_limit(&tree_dir, limit);
    let total = image.layers.len();
    for (i, layer) in image.layers.iter().enumerate() {
        apply_layer(tar, layer, &mut tree).map_err(|e| match e {
            ContainerError::Image(m) => {
                ContainerError::Image(format!("layer {}/{total} ({}): {m}", i + 1, layer.name))
            }
            other => other,
        })?;
    }
    tree.finish()?;
    if tree.skipped > 0 {
        log::info!("skipped {} entries of unknown types", tree.skipped);
    }
    let specials = tree
        .meta
        .values()
        .filter(|m| unpack::is_special(m.mode))
        .count() as u64;
    let usage = unpack::tree_usage(&tree_dir)?.plus_inodes(specials);
    let fixups = rootfs::fixups(&tree_dir, &tree.meta)?;
    mkfs_with_init(&tree_dir, dest, usage, init_path, scratch, &fixups)?;
    std::fs::remove_dir_all(&tree_dir).map_err(io_err("removing the unpack directory"))
}

/// Builds the ext4 image straight from a directory.
fn build_from_dir(
    dir: &Path,
    dest: &Path,
    scratch: &Path,
    init_path: &Path,
) -> Result<(), ContainerError> {
    if !dir.is_dir() {
        return Err(ContainerError::Usage(format!(
            "--rootfs {}: not a directory",
            dir.display()
        )));
    }
    let usage = unpack::tree_usage(dir)?;
    mkfs_with_init(dir, dest, usage, init_path, scratch, b"")
}

fn mkfs_with_init(
    tree: &Path,
    dest: &Path,
    usage: unpack::Usage,
    init_path: &Path,
    scratch: &Path,
    fixups: &[u8],
) -> Result<(), ContainerError> {
    let size = rootfs::image_size(usage.bytes + INIT_BINARY.len() as u64 + 64 * 1024);
    rootfs::mkfs(tree, dest, size, rootfs::inode_count(usage.inodes))?;
    let mut script = rootfs::additions(tree, init_path)?.into_bytes();
    script.extend_from_slice(fixups);
    rootfs::debugfs(dest, &script, scratch)?;
    rootfs::check_file_in_image(dest, rootfs::INIT_PATH, INIT_BINARY.len() as u64)
}

/// Unpacks one layer into `tree`, checking its digests.
pub fn apply_layer(
    tar: &Tarball,
    layer: &LayerRef,
    tree: &mut unpack::Tree,
) -> Result<(), ContainerError> {
    let (_, raw) = tar.member(&layer.name)?;
    // Every digest given is verified; one flint cannot compute refuses the
    // layer (`read_image` refuses such images before this).
    for (what, d) in [("blob digest", &layer.digest), ("diff_id", &layer.diff_id)] {
        if let Some(d) = d {
            image::check_digest(what, d).map_err(ContainerError::Image)?;
        }
    }
    let hasher = |d: &Option<String>| d.as_deref().and_then(Hasher::for_digest);
    let compressed = HashingReader::new(raw, hasher(&layer.digest));
    let mut buffered = BufReader::with_capacity(256 * 1024, compressed);
    let read_err = |e: io::Error| ContainerError::Image(format!("reading: {e}"));
    let compression = image::sniff_compression(&mut buffered).map_err(read_err)?;
    let (diff_digest, mut buffered) = match compression {
        Compression::Zstd => {
            return Err(ContainerError::Image(
                "zstd-compressed layers are not supported (gzip or uncompressed only)".into(),
            ))
        }
        Compression::None => {
            let mut diff = HashingReader::new(buffered, hasher(&layer.diff_id));
            tree.apply_layer(&mut diff)?;
            diff.drain().map_err(read_err)?;
            diff.into_parts()
        }
        Compression::Gzip => {
            let gz = flate2::read::MultiGzDecoder::new(buffered);
            let mut diff = HashingReader::new(gz, hasher(&layer.diff_id));
            tree.apply_layer(&mut diff)?;
            diff.drain().map_err(read_err)?;
            let (digest, gz) = diff.into_parts();
            (digest, gz.into_inner())
        }
    };
    io::copy(&mut buffered, &mut io::sink()).map_err(read_err)?;
    let (blob_digest, _) = buffered.into_inner().into_parts();
    for (what, want, got) in [
        ("blob digest", &layer.digest, blob_digest),
        ("diff_id", &layer.diff_id, diff_digest),
    ] {
        if let (Some(want), Some(got)) = (want, got) {
            if *want != got {
                return Err(ContainerError::Image(format!(
                    "{what} mismatch: expected {want}, got {got}"
                )));
            }
        }
    }
    Ok(())
}
