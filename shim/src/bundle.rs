//! What the shim reads from an OCI bundle's `config.json`: the process to
//! run, the CRI pod annotations and the VM size. Only the fields the shim
//! uses are parsed; the rest of the runtime spec is ignored (the guest has
//! no cgroups or namespaces per container yet).

use std::path::Path;

use agent_protocol::{ExecSpec, WindowSize};
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

/// `linux.resources`.
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
        }
    }
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
    }
}
