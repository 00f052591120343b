//! What the shim reads from an OCI bundle's `config.json`: the process to
//! run, the CRI pod annotations and the VM size. Only the fields the shim
//! uses are parsed; the rest of the runtime spec is ignored (the guest has
//! no cgroups or namespaces per container yet). Also: the resources of a
//! task `Update`, checked against the VM's size.

use std::path::Path;

use agent_protocol::{ExecSpec, Rlimit, WindowSize};
use serde::Deserialize;

use crate::ShimError;

/// CRI's annotation saying whether a container is a pod's `sandbox` or one
/// of its `container`s.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI's annotation naming the pod's sandbox container.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Annotation (on the sandbox) for the VM's memory in MiB.
pub const MEMORY_ANNOTATION: &str = "io.flint.vm.memory-mib";
/// Annotation (on the sandbox) for the VM's vCPU count.
pub const VCPUS_ANNOTATION: &str = "io.flint.vm.vcpus";
/// VM memory when nothing says otherwise (MiB).
pub const DEFAULT_MEM_MIB: u64 = 256;
/// vCPUs when nothing says otherwise.
pub const DEFAULT_VCPUS: u64 = 1;

/// The parts of an OCI runtime spec the shim uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Spec {
    #[serde(default)]
    pub process: Option<Process>,
    #[serde(default)]
    pub annotations: std::collections::HashMap<String, String>,
    #[serde(default)]
    pub linux: Option<Linux>,
}

/// The spec's `process`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    #[serde(default, rename = "consoleSize")]
    pub console_size: Option<ConsoleSize>,
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// `process.rlimits`: `{"type": "RLIMIT_NOFILE", "hard": n, "soft": n}`,
    /// the agent's own shape; set on the process in the guest.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
}

/// `process.consoleSize`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ConsoleSize {
    pub height: u16,
    pub width: u16,
}

/// `process.user`: numeric ids (CRI and ctr resolve names before).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

/// `linux`: only the resources that size the VM.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Linux {
    #[serde(default)]
    pub resources: Option<Resources>,
}

/// `linux.resources`, and the body of a task `Update` (containerd sends
/// an OCI `LinuxResources` as JSON).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub memory: Option<Memory>,
    #[serde(default)]
    pub cpu: Option<Cpu>,
}

/// `linux.resources.memory`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Memory {
    #[serde(default)]
    pub limit: Option<i64>,
}

/// `linux.resources.cpu`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Cpu {
    #[serde(default)]
    pub quota: Option<i64>,
    #[serde(default)]
    pub period: Option<u64>,
}

/// Where a container goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Its own VM: a pod's sandbox, or a container outside any pod (ctr).
    Sandbox,
    /// Into the VM of the pod whose sandbox has this id.
    InPod(String),
}

impl Spec {
    /// Reads `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> Result<Spec, ShimError> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|e| ShimError::Io {
            what: format!("reading {}", path.display()),
            source: e,
        })?;
        Self::parse(&text)
    }

    /// Parses a runtime spec.
    pub fn parse(text: &[u8]) -> Result<Spec, ShimError> {
        serde_json::from_slice(text).map_err(|e| ShimError::Spec(e.to_string()))
    }

    /// Sandbox or member of a pod, from the CRI annotations.
    pub fn role(&self) -> Role {
        match (
            self.annotations.get(CONTAINER_TYPE).map(String::as_str),
            self.annotations.get(SANDBOX_ID),
        ) {
            (Some("container"), Some(sandbox)) if !sandbox.is_empty() => {
                Role::InPod(sandbox.clone())
            }
            _ => Role::Sandbox,
        }
    }

    /// The VM's memory (MiB) and vCPUs for a sandbox: the annotations, else
    /// the spec's memory limit and CPU quota (rounded up, plus the
    /// defaults' headroom for the guest kernel), else the defaults.
    pub fn vm_size(&self, default_mem: u64, default_vcpus: u64) -> (u64, u64) {
        let annotated = |key: &str| {
            self.annotations
                .get(key)
                .and_then(|v| v.parse::<u64>().ok())
        };
        let resources = self.linux.as_ref().and_then(|l| l.resources.as_ref());
        let limit_mib = resources
            .and_then(|r| r.memory.as_ref()?.limit)
            .filter(|l| *l > 0)
            .map(|l| (l as u64).div_ceil(1 << 20) + 64);
        let cpus = resources.and_then(|r| {
            let cpu = r.cpu.as_ref()?;
            let (quota, period) = (cpu.quota?, cpu.period?);
            (quota > 0 && period > 0).then(|| (quota as u64).div_ceil(period))
        });
        let mem = annotated(MEMORY_ANNOTATION)
            .or(limit_mib)
            .unwrap_or(default_mem)
            .max(64);
        let vcpus = annotated(VCPUS_ANNOTATION)
            .or(cpus)
            .unwrap_or(default_vcpus)
            .clamp(1, 8);
        (mem, vcpus)
    }
}

impl Process {
    /// The agent's exec request for this process, chrooted into `root`.
    pub fn exec_spec(&self, root: &str) -> ExecSpec {
        let user = self.user.as_ref().map(|u| format!("{}:{}", u.uid, u.gid));
        let tty = self.terminal.then(|| {
            let size = self.console_size.unwrap_or_default();
            WindowSize {
                rows: if size.height == 0 { 24 } else { size.height },
                cols: if size.width == 0 { 80 } else { size.width },
            }
        });
        ExecSpec {
            argv: self.args.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone().filter(|c| !c.is_empty()),
            user,
            tty,
            root: Some(root.to_owned()),
            rlimits: self.rlimits.clone(),
        }
    }
}

impl Resources {
    /// The resources of a task `Update` (`UpdateTaskRequest.resources`:
    /// an OCI `LinuxResources` in JSON).
    pub fn parse_update(json: &[u8]) -> Result<Resources, ShimError> {
        serde_json::from_slice(json).map_err(|e| ShimError::Spec(format!("update: {e}")))
    }

    /// The memory limit in bytes, if one is set (`<= 0`: none).
    pub fn memory_limit(&self) -> Option<u64> {
        let limit = self.memory.as_ref()?.limit?;
        (limit > 0).then_some(limit as u64)
    }

    /// Accepts limits the running VM already satisfies: memory at most the
    /// VM's `mem_mib`, a CPU quota of at most `vcpus` CPUs. flint does not
    /// grow a running VM (no memory or CPU hot-plug through the shim), so
    /// a larger limit is refused instead of being recorded as if granted.
    pub fn check_fits(&self, mem_mib: u64, vcpus: u64) -> Result<(), ShimError> {
        if let Some(limit) = self.memory_limit() {
            if limit > mem_mib << 20 {
                return Err(ShimError::Usage(format!(
                    "update: a memory limit of {limit} bytes exceeds the pod VM's \
                     {mem_mib} MiB; flint cannot grow a running VM (size the pod \
                     with io.flint.vm.memory-mib or its limits instead)"
                )));
            }
        }
        if let Some(cpu) = &self.cpu {
            if let (Some(quota), Some(period)) = (cpu.quota, cpu.period) {
                if quota > 0 && period > 0 && (quota as u64).div_ceil(period) > vcpus {
                    return Err(ShimError::Usage(format!(
                        "update: a CPU quota of {quota}/{period} exceeds the pod VM's \
                         {vcpus} vCPU(s); flint cannot add vCPUs to a running VM"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Keeps a container id usable as a guest path component.
pub fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_annotations_pick_the_pod() {
        let spec = Spec::parse(
            br#"{"annotations": {"io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.sandbox-id": "abc"}}"#,
        )
        .unwrap();
        assert_eq!(spec.role(), Role::InPod("abc".into()));
        let sandbox = Spec::parse(
            br#"{"annotations": {"io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-id": "abc"}}"#,
        )
        .unwrap();
        assert_eq!(sandbox.role(), Role::Sandbox);
        assert_eq!(Spec::parse(b"{}").unwrap().role(), Role::Sandbox);
    }

    #[test]
    fn vm_size_from_annotations_resources_or_defaults() {
        assert_eq!(Spec::parse(b"{}").unwrap().vm_size(256, 1), (256, 1));
        let res = Spec::parse(
            br#"{"linux": {"resources": {"memory": {"limit": 134217728},
                "cpu": {"quota": 150000, "period": 100000}}}}"#,
        )
        .unwrap();
        assert_eq!(res.vm_size(256, 1), (192, 2));
        let ann = Spec::parse(
            br#"{"annotations": {"io.flint.vm.memory-mib": "512", "io.flint.vm.vcpus": "2"}}"#,
        )
        .unwrap();
        assert_eq!(ann.vm_size(256, 1), (512, 2));
    }

    #[test]
    fn process_becomes_an_exec_spec() {
        let spec = Spec::parse(
            br#"{"process": {"terminal": true, "user": {"uid": 1000, "gid": 100},
                "args": ["sh"], "env": ["A=1"], "cwd": "/w"}}"#,
        )
        .unwrap();
        let exec = spec.process.unwrap().exec_spec("/c/x");
        assert_eq!(exec.argv, ["sh"]);
        assert_eq!(exec.user.as_deref(), Some("1000:100"));
        assert_eq!(exec.tty, Some(WindowSize { rows: 24, cols: 80 }));
        assert_eq!(exec.root.as_deref(), Some("/c/x"));
        assert_eq!(exec.cwd.as_deref(), Some("/w"));
        assert!(exec.rlimits.is_empty());
    }

    #[test]
    fn rlimits_reach_the_exec_spec() {
        let spec = Spec::parse(
            br#"{"process": {"args": ["sh"], "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024},
                {"type": "RLIMIT_CORE", "hard": 18446744073709551615, "soft": 0}]}}"#,
        )
        .unwrap();
        let exec = spec.process.unwrap().exec_spec("/c/x");
        let limits: Vec<_> = exec
            .rlimits
            .iter()
            .map(|l| (l.kind.as_str(), l.soft, l.hard))
            .collect();
        assert_eq!(
            limits,
            [("RLIMIT_NOFILE", 1024, 4096), ("RLIMIT_CORE", 0, u64::MAX)]
        );
    }

    #[test]
    fn updates_fit_the_vm_or_are_refused() {
        // containerd's JSON for `ctr task update` / CRI UpdateContainerResources.
        let shrink = Resources::parse_update(
            br#"{"memory": {"limit": 67108864}, "cpu": {"quota": 50000, "period": 100000}}"#,
        )
        .unwrap();
        assert!(shrink.check_fits(256, 1).is_ok());
        assert_eq!(shrink.memory_limit(), Some(64 << 20));
        // Exactly the VM's size fits; no limit (-1) fits.
        let whole = Resources::parse_update(br#"{"memory": {"limit": 268435456}}"#).unwrap();
        assert!(whole.check_fits(256, 1).is_ok());
        let unlimited = Resources::parse_update(br#"{"memory": {"limit": -1}}"#).unwrap();
        assert!(unlimited.check_fits(256, 1).is_ok());
        assert_eq!(unlimited.memory_limit(), None);
        let grow = Resources::parse_update(br#"{"memory": {"limit": 536870912}}"#).unwrap();
        let err = grow.check_fits(256, 1).unwrap_err().to_string();
        assert!(err.contains("exceeds the pod VM's 256 MiB"), "{err}");
        let cpus =
            Resources::parse_update(br#"{"cpu": {"quota": 200000, "period": 100000}}"#).unwrap();
        assert!(cpus.check_fits(256, 2).is_ok());
        let err = cpus.check_fits(256, 1).unwrap_err().to_string();
        assert!(err.contains("1 vCPU"), "{err}");
        assert!(Resources::parse_update(b"[1]").is_err());
    }

    #[test]
    fn ids_become_safe_guest_paths() {
        assert_eq!(sanitize("abc-1_2.x"), "abc-1_2.x");
        assert_eq!(sanitize("../x/y"), "_x_y");
    }
}
