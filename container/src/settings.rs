//! The per-run settings: the image's defaults merged with the command line,
//! written to the small second drive the guest init reads (`/dev/vdb`).
//!
//! Drive layout: the settings JSON, NUL-padded to a multiple of 4 KiB, then
//! one 4 KiB status block where the init records the command's exit status
//! (see `guest_init::status_record`).

use std::collections::HashMap;
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

/// An environment being assembled: `KEY=VALUE` items in first-set order,
/// with an index from key to position so that setting is O(1) (images
/// with hundreds of thousands of `Env` entries stay linear).
#[derive(Default)]
struct EnvBuilder {
    items: Vec<String>,
    index: HashMap<String, usize>,
}

impl EnvBuilder {
    /// Sets `KEY=VALUE`, replacing an earlier value of KEY in place.
    fn set(&mut self, key: &str, value: &str) {
        let item = format!("{key}={value}");
        match self.index.get(key) {
            Some(&at) => self.items[at] = item,
            None => {
                self.index.insert(key.to_owned(), self.items.len());
                self.items.push(item);
            }
        }
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
    let mut env = EnvBuilder::default();
    env.set("PATH", DEFAULT_PATH);
    env.set("HOSTNAME", over.hostname);
    let mut malformed = 0usize;
    for kv in &defaults.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.set(k, v),
            _ => {
                malformed += 1;
                if malformed <= 10 {
                    log::warn!("ignoring the image's malformed Env entry {kv:?}");
                }
            }
        }
    }
    if malformed > 10 {
        log::warn!("ignored {malformed} malformed Env entries of the image");
    }
    for kv in over.env {
        match kv.split_once('=') {
            Some(("", _)) => return Err(usage(format!("--env {kv:?}: empty variable name"))),
            Some((k, v)) => env.set(k, v),
            None if kv.is_empty() => return Err(usage("--env: empty variable name")),
            None => {
                if let Some(v) = host_env(kv) {
                    env.set(kv, &v);
                }
            }
        }
    }
    let env = env.items;
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
