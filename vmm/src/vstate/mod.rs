//! KVM state: the VM file descriptor and its vCPUs.

pub mod vcpu;
pub mod vm;
