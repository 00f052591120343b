//! The per-run settings: the image's defaults merged with the command line,
//! written to the small second drive the guest init reads (`/dev/vdb`).
//!
//! Drive layout: the settings JSON, NUL-padded to a multiple of 4 KiB, then
//! one 4 KiB status block where the init records the command's exit status
//! (see `guest_init::status_record`).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use guest_init::BLOCK_SIZE;
use serde::Serialize;

use crate::image::Defaults;
use crate::ContainerError;

/// `PATH` for images that set none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the guest init runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSpec {
    pub version: u64,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub hostname: String,
    /// `USER[:GROUP]` (names or ids), resolved by the init in the image's
    /// /etc/passwd and /etc/group; `None`: root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<String>,
}

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides<'a> {
    /// `-- CMD ARGS...` (replaces the image's Cmd; empty: keep it).
    pub command: &'a [String],
    /// `--env KEY=VALUE` or `--env KEY` (the host's value).
    pub env: &'a [String],
    /// `--workdir`.
    pub workdir: Option<&'a str>,
    /// `--user`.
    pub user: Option<&'a str>,
    /// Network interfaces the guest has.
    pub net: Vec<String>,
    pub hostname: &'a str,
}

fn usage(message: impl Into<String>) -> ContainerError {
    ContainerError::Usage(message.into())
}

/// Sets `KEY=VALUE` in `env`, replacing an earlier value of KEY in place.
fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let item = format!("{key}={value}");
    match env
        .iter_mut()
        .find(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) == key)
    {
        Some(slot) => *slot = item,
        None => env.push(item),
    }
}

/// Docker's rules: the command replaces Cmd (Entrypoint stays), `--env`
/// adds to or overrides the image's Env, `--workdir` replaces WorkingDir
/// (default `/`), `--user` replaces User; PATH and HOSTNAME are provided
/// when missing (HOME too, by the init, from the user's passwd entry).
/// `host_env` looks up a variable on the host (for `--env KEY`).
pub fn merge(
    defaults: &Defaults,
    over: &Overrides<'_>,
    host_env: impl Fn(&str) -> Option<String>,
) -> Result<RunSpec, ContainerError> {
    let cmd = if over.command.is_empty() {
        &defaults.cmd
    } else {
        over.command
    };
    let args: Vec<String> = defaults.entrypoint.iter().chain(cmd).cloned().collect();
    if args.is_empty() {
        return Err(usage(
            "no command: the image has no Entrypoint or Cmd; give one after `--`",
        ));
    }
    let mut env = Vec::new();
    set_env(&mut env, "PATH", DEFAULT_PATH);
    set_env(&mut env, "HOSTNAME", over.hostname);
    for kv in &defaults.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => set_env(&mut env, k, v),
            _ => log::warn!("ignoring the image's malformed Env entry {kv:?}"),
        }
    }
    for kv in over.env {
        match kv.split_once('=') {
            Some(("", _)) => return Err(usage(format!("--env {kv:?}: empty variable name"))),
            Some((k, v)) => set_env(&mut env, k, v),
            None if kv.is_empty() => return Err(usage("--env: empty variable name")),
            None => {
                if let Some(v) = host_env(kv) {
                    set_env(&mut env, kv, &v);
                }
            }
        }
    }
    let cwd = over
        .workdir
        .map(str::to_owned)
        .or_else(|| defaults.working_dir.clone())
        .unwrap_or_else(|| "/".to_owned());
    if !cwd.starts_with('/') {
        return Err(usage(format!(
            "the working directory {cwd:?} is not an absolute path"
        )));
    }
    let user = over
        .user
        .map(str::to_owned)
        .or_else(|| defaults.user.clone())
        .filter(|u| !u.is_empty());
    if args
        .iter()
        .chain(&env)
        .chain([&cwd])
        .chain(&user)
        .any(|s| s.contains('\0'))
    {
        return Err(usage(
            "the command, environment, working directory or user contains a NUL byte",
        ));
    }
    Ok(RunSpec {
        version: guest_init::SETTINGS_VERSION,
        args,
        env,
        cwd,
        hostname: over.hostname.to_owned(),
        user,
        net: over.net.clone(),
    })
}

/// The settings drive's bytes: JSON padded to whole 4 KiB blocks, then an
/// empty status block.
pub fn drive_image(spec: &RunSpec) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(spec).expect("RunSpec serializes");
    let blocks = bytes.len().div_ceil(BLOCK_SIZE).max(1);
    bytes.resize((blocks + 1) * BLOCK_SIZE, 0);
    bytes
}

/// The exit status the init recorded in the settings drive at `path`.
pub fn read_status(path: &Path) -> Option<u8> {
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(SeekFrom::End(-(BLOCK_SIZE as i64))).ok()?;
    let mut block = vec![0; BLOCK_SIZE];
    file.read_exact(&mut block).ok()?;
    guest_init::parse_status_record(&block)
}
