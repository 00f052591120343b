//! The JSON shapes of `ActionType` and `VmStateRequest`. Firecracker wraps
//! each in a one-field object (`{"action_type": ...}`, `{"state": ...}`);
//! serde's internally tagged enums would give that shape but ignore unknown
//! fields on unit variants, so the bodies go through these plain structs.

use serde::{Deserialize, Serialize};

use crate::request::{ActionType, VmStateRequest};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionBody {
    action_type: ActionName,
}

#[derive(Serialize, Deserialize)]
enum ActionName {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
    Stop,
}

impl From<ActionBody> for ActionType {
    fn from(body: ActionBody) -> Self {
        match body.action_type {
            ActionName::InstanceStart => ActionType::InstanceStart,
            ActionName::SendCtrlAltDel => ActionType::SendCtrlAltDel,
            ActionName::FlushMetrics => ActionType::FlushMetrics,
            ActionName::Stop => ActionType::Stop,
        }
    }
}

impl From<ActionType> for ActionBody {
    fn from(action: ActionType) -> Self {
        let action_type = match action {
            ActionType::InstanceStart => ActionName::InstanceStart,
            ActionType::SendCtrlAltDel => ActionName::SendCtrlAltDel,
            ActionType::FlushMetrics => ActionName::FlushMetrics,
            ActionType::Stop => ActionName::Stop,
        };
        ActionBody { action_type }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmStateBody {
    state: VmStateName,
}

#[derive(Serialize, Deserialize)]
enum VmStateName {
    Paused,
    Resumed,
}

impl From<VmStateBody> for VmStateRequest {
    fn from(body: VmStateBody) -> Self {
        match body.state {
            VmStateName::Paused => VmStateRequest::Paused,
            VmStateName::Resumed => VmStateRequest::Resumed,
        }
    }
}

impl From<VmStateRequest> for VmStateBody {
    fn from(state: VmStateRequest) -> Self {
        let state = match state {
            VmStateRequest::Paused => VmStateName::Paused,
            VmStateRequest::Resumed => VmStateName::Resumed,
        };
        VmStateBody { state }
    }
}
