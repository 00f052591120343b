//! Making a long-lived container: the image's root image and settings are
//! prepared as for a one-shot run, then moved to the container's own disk
//! directory (`<cache>/containers/<id>`), the settings switched to agent
//! mode, and the VM config (with a vsock device, and virtio-fs devices for
//! volumes) written to the container's runtime directory.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::state::{self, PortMap, Runtime, State, Status, VolumeMap};
use super::volumes;
use crate::{ContainerError, ContainerRunArgs};

/// The guest's vsock context id (any id ≥ 3 would do: one guest per VM).
pub const GUEST_CID: u32 = 3;

/// What `run` adds to a one-shot run's options.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// `--name`; generated when `None`.
    pub name: Option<String>,
    /// How the user named the image (`name:tag` or a path), for `ps`.
    pub image_ref: String,
    pub ports: Vec<PortMap>,
    pub volumes: Vec<VolumeMap>,
    /// The main process runs on a terminal (`-t`).
    pub tty: bool,
    /// `--no-jail`: the VMM runs unjailed even as root.
    pub no_jail: bool,
}

/// Refuses to go on without a usable `/dev/kvm`, in one clear line.
pub fn check_kvm() -> Result<(), ContainerError> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(ContainerError::Usage(format!(
            "cannot use /dev/kvm ({e}): flint needs KVM (load kvm_intel/kvm_amd, or get access to /dev/kvm)"
        ))),
    }
}

/// The config file of container directory `dir`.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

/// The vsock device's host socket in container directory `dir`.
pub fn vsock_path(dir: &Path) -> PathBuf {
    dir.join("vsock.sock")
}

/// The main process's log in container directory `dir`.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("container.log")
}

/// The guest console's log (kernel, init and agent messages).
pub fn console_path(dir: &Path) -> PathBuf {
    dir.join("console.log")
}

/// Prepares container files and records it as created; returns its state.
pub fn create(
    runtime: &Runtime,
    args: &ContainerRunArgs,
    options: &CreateOptions,
    progress: &mut dyn Write,
) -> Result<State, ContainerError> {
    check_kvm()?;
    let (id, name, dir) = runtime.create(options.name.as_deref())?;
    match create_in(&id, &name, &dir, args, options, progress) {
        Ok(state) => Ok(state),
        Err(e) => {
            runtime.abandon(&id, &name);
            Err(e)
        }
    }
}

fn io_at(what: String) -> impl FnOnce(std::io::Error) -> ContainerError {
    move |source| ContainerError::Io { what, source }
}

fn create_in(
    id: &str,
    name: &str,
    dir: &Path,
    args: &ContainerRunArgs,
    options: &CreateOptions,
    progress: &mut dyn Write,
) -> Result<State, ContainerError> {
    let prepared = crate::prepare(args, progress)?;
    let scratch = prepared.run_dir.path().to_owned();
    let cache_dir = scratch
        .parent()
        .ok_or_else(|| ContainerError::Internal("scratch directory without a parent".into()))?;
    let containers = cache_dir.join("containers");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&containers)
        .map_err(io_at(format!("creating {}", containers.display())))?;
    let disk_dir = containers.join(id);
    // Same file system: a rename, whatever the root image's size. The
    // scratch directory's TempDir then has nothing left to remove.
    std::fs::rename(&scratch, &disk_dir).map_err(io_at(format!(
        "moving the container's disks to {}",
        disk_dir.display()
    )))?;
    let moved = |p: &Path| match p.strip_prefix(&scratch) {
        Ok(rest) => disk_dir.join(rest),
        Err(_) => p.to_owned(),
    };

    let mut settings = serde_json::to_value(&prepared.spec)
        .map_err(|e| ContainerError::Internal(format!("encoding the settings: {e}")))?;
    settings["mode"] = "agent".into();
    if !options.volumes.is_empty() {
        settings["volumes"] = volumes::settings_volumes(&options.volumes);
    }
    let mut bytes = settings.to_string().into_bytes();
    let blocks = bytes.len().div_ceil(guest_init::BLOCK_SIZE).max(1);
    bytes.resize((blocks + 1) * guest_init::BLOCK_SIZE, 0);
    let settings_path = moved(&prepared.settings_path);
    std::fs::write(&settings_path, bytes).map_err(io_at("writing the settings drive".into()))?;

    let mut config = serde_json::to_value(&prepared.config)
        .map_err(|e| ContainerError::Internal(format!("encoding the VM config: {e}")))?;
    if let Some(drives) = config["drives"].as_array_mut() {
        for d in drives {
            if let Some(p) = d["path_on_host"].as_str() {
                d["path_on_host"] = moved(Path::new(p)).to_string_lossy().into_owned().into();
            }
        }
    }
    config["vsock"] = serde_json::json!({"guest_cid": GUEST_CID, "uds_path": vsock_path(dir)});
    if !options.volumes.is_empty() {
        config["fs"] = volumes::fs_config(dir, &options.volumes);
    }
    let checked = api::VmConfig::from_json(&config.to_string()).and_then(|c| {
        c.validate()?;
        Ok(c)
    });
    if let Err(e) = checked {
        if !options.volumes.is_empty() && e.to_string().contains("fs") {
            return Err(ContainerError::Usage(format!(
                "-v needs flint's virtio-fs device, which this build refuses: {e}"
            )));
        }
        return Err(e.into());
    }
    std::fs::write(config_path(dir), config.to_string())
        .map_err(io_at("writing the VM config".into()))?;

    let spec = &prepared.spec;
    let state = State {
        id: id.to_owned(),
        name: name.to_owned(),
        image: options.image_ref.clone(),
        created: state::now(),
        command: spec.args.clone(),
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        user: spec.user.clone(),
        tty: options.tty,
        ports: options.ports.clone(),
        volumes: options.volumes.clone(),
        memory_mib: args.mem,
        cpus: args.vcpus,
        disk_dir,
        status: Status::Created,
        monitor: None,
        supervisor: None,
        flint: None,
        no_jail: options.no_jail,
        jail: None,
        unjailed: None,
        main_pid: None,
        started_at: None,
        finished_at: None,
        exit_code: None,
        reason: None,
    };
    state::save(dir, &state)?;
    Ok(state)
}
