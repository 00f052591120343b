//! KVM state: the VM file descriptor and its vCPUs.

pub mod msr_template;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
