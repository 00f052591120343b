//! A stand-in VMM for the API tests and the `fake_vmm` example: it keeps the
//! pre-boot configuration, follows the lifecycle (start, pause, resume) and
//! records every request, but runs no VM. It shows the intended wiring: wait
//! on the eventfd, then drain the channel and answer each message.
//!
//! It has no code per endpoint: it works on the JSON form of each
//! [`ApiRequest`] (`{"PutDrive": {...}}`, `"GetBalloon"`) by naming
//! convention. `PutX` stores its body as config section `x` (kebab-case; a
//! list keyed by the body's `*_id` when the config has a section `xs`),
//! `PatchX` merges its body into that section (or the nearest one whose name
//! `x` starts with, so `PatchBalloonStatistics` updates `balloon`), and
//! `GetX` answers `ApiResponse::X` from section `x`. Which sections exist is
//! read from [`VmConfig`]'s own serde field list, so a new config section
//! and its endpoints work here unchanged. Only the lifecycle (`Action`,
//! `PatchVm`, `GetInstanceInfo`, `GetVmConfig`) is handled by name.

#![allow(dead_code)]

use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use api::{
    ActionType, ApiError, ApiMessage, ApiRequest, ApiResponse, InstanceInfo, InstanceState,
    VmConfig, VmStateRequest,
};
use serde_json::{Map, Value};
use vmm_sys_util::eventfd::EventFd;

/// The fake VMM's state.
pub struct Fake {
    pub started: bool,
    pub paused: bool,
    /// The configuration as `GET /vm/config` shows it, plus sections
    /// outside `VmConfig` (logger, metrics...).
    pub config: Map<String, Value>,
    /// `VmConfig`'s top-level keys.
    sections: &'static [&'static str],
}

impl Default for Fake {
    fn default() -> Self {
        // VmConfig's defaults: every section that has one.
        let defaults = VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": ""}}"#)
            .expect("minimal config");
        let Ok(Value::Object(config)) = serde_json::to_value(defaults) else {
            panic!("VmConfig serializes to an object");
        };
        Fake {
            started: false,
            paused: false,
            config,
            sections: api::serde_field_names::<VmConfig>(),
        }
    }
}

fn refuse(message: impl Into<String>) -> ApiResponse {
    ApiResponse::Error(ApiError::bad_request(message))
}

/// `MachineConfig` -> `machine-config`.
fn kebab(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The `*_id` field of a body, naming one entry of a list section.
fn id_of(body: &Map<String, Value>) -> Option<(String, String)> {
    body.iter()
        .find(|(k, v)| k.ends_with("_id") && v.is_string())
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
}

/// Merges `patch`'s non-null fields into `target`.
fn merge(target: &mut Value, patch: &Map<String, Value>) {
    if let Value::Object(target) = target {
        for (k, v) in patch {
            if !v.is_null() {
                target.insert(k.clone(), v.clone());
            }
        }
    }
}

impl Fake {
    pub fn answer(&mut self, request: ApiRequest) -> ApiResponse {
        match &request {
            ApiRequest::GetInstanceInfo => return self.instance_info(),
            ApiRequest::GetVmConfig => return self.vm_config(),
            ApiRequest::Action(action) => return self.action(*action),
            ApiRequest::PatchVm(_) if !self.started => return refuse("not started"),
            ApiRequest::PatchVm(state) => {
                self.paused = *state == VmStateRequest::Paused;
                return ApiResponse::Empty;
            }
            _ => {}
        }
        let (name, body) = match serde_json::to_value(&request) {
            Ok(Value::String(name)) => (name, Map::new()),
            Ok(Value::Object(tagged)) => match tagged.into_iter().next() {
                Some((name, Value::Object(body))) => (name, body),
                Some((name, _)) => (name, Map::new()),
                None => return refuse("empty request"),
            },
            other => return refuse(format!("unexpected request shape {other:?}")),
        };
        if let Some(x) = name.strip_prefix("Put") {
            self.put(&kebab(x), body)
        } else if let Some(x) = name.strip_prefix("Patch") {
            self.patch(&kebab(x), body)
        } else if let Some(x) = name.strip_prefix("Get") {
            self.get(x)
        } else {
            // Other actions (snapshots, migration, balloon hinting) succeed
            // once started.
            if self.started || name.contains("Snapshot") {
                ApiResponse::Empty
            } else {
                refuse(format!("{name}: not started"))
            }
        }
    }

    fn put(&mut self, key: &str, body: Map<String, Value>) -> ApiResponse {
        let list = format!("{key}s");
        let in_config = self.sections.contains(&key) || self.sections.contains(&list.as_str());
        if in_config && self.started {
            return refuse("not allowed after the instance started");
        }
        match id_of(&body) {
            Some((field, id)) if self.sections.contains(&list.as_str()) => {
                let entries = self
                    .config
                    .entry(list)
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(entries) = entries {
                    entries.retain(|e| e[&field] != Value::String(id.clone()));
                    entries.push(Value::Object(body));
                }
            }
            _ => {
                self.config.insert(key.to_owned(), Value::Object(body));
            }
        }
        ApiResponse::Empty
    }

    fn patch(&mut self, key: &str, body: Map<String, Value>) -> ApiResponse {
        let list = format!("{key}s");
        if let (Some((field, id)), Some(Value::Array(entries))) =
            (id_of(&body), self.config.get_mut(&list))
        {
            return match entries
                .iter_mut()
                .find(|e| e[&field] == Value::String(id.clone()))
            {
                Some(entry) => {
                    merge(entry, &body);
                    ApiResponse::Empty
                }
                None => ApiResponse::Error(ApiError::not_found(format!("no {key} {id:?}"))),
            };
        }
        if self.sections.contains(&list.as_str()) {
            let id = id_of(&body).map(|(_, id)| id).unwrap_or_default();
            return ApiResponse::Error(ApiError::not_found(format!("no {key} {id:?}")));
        }
        // The section itself, or the one it is a part of.
        let section = self
            .config
            .keys()
            .filter(|k| key == k.as_str() || key.starts_with(&format!("{k}-")))
            .max_by_key(|k| k.len())
            .cloned();
        match section.and_then(|s| self.config.get_mut(&s)) {
            Some(target) => {
                merge(target, &body);
                ApiResponse::Empty
            }
            None => refuse(format!("{key}: not configured")),
        }
    }

    fn get(&self, name: &str) -> ApiResponse {
        let Some(value) = self.config.get(&kebab(name)) else {
            return refuse(format!("{}: not configured", kebab(name)));
        };
        let mut tagged = Map::new();
        tagged.insert(name.to_owned(), value.clone());
        serde_json::from_value(Value::Object(tagged))
            .unwrap_or_else(|e| refuse(format!("{name}: {e}")))
    }

    fn vm_config(&self) -> ApiResponse {
        let config: Map<String, Value> = self
            .config
            .iter()
            .filter(|(k, _)| self.sections.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match serde_json::from_value(Value::Object(config)) {
            Ok(config) => ApiResponse::VmConfig(config),
            Err(e) => refuse(format!("config: {e}")),
        }
    }

    fn instance_info(&self) -> ApiResponse {
        ApiResponse::InstanceInfo(InstanceInfo {
            id: "fake-vmm".into(),
            state: match (self.started, self.paused) {
                (false, _) => InstanceState::NotStarted,
                (true, false) => InstanceState::Running,
                (true, true) => InstanceState::Paused,
            },
            vmm_version: env!("CARGO_PKG_VERSION").into(),
            app_name: "flint".into(),
        })
    }

    fn action(&mut self, action: ActionType) -> ApiResponse {
        match action {
            ActionType::InstanceStart if self.started => refuse("already started"),
            ActionType::InstanceStart => {
                let kernel = &self.config["boot-source"]["kernel_image_path"];
                if kernel.as_str().is_none_or(str::is_empty) {
                    return refuse("no boot source");
                }
                self.started = true;
                ApiResponse::Empty
            }
            ActionType::SendCtrlAltDel if !self.started => refuse("not started"),
            _ => ApiResponse::Empty,
        }
    }
}

/// The fake VMM's thread and what it saw.
pub struct FakeVmm {
    /// Every request received, in order.
    pub requests: Arc<Mutex<Vec<ApiRequest>>>,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl FakeVmm {
    /// Serves `rx` on a thread, sleeping `delay` before each answer (a busy
    /// VMM); a request is recorded before the sleep. Returns with the eventfd to hand to the server.
    pub fn start(rx: Receiver<ApiMessage>, delay: Duration) -> (FakeVmm, EventFd) {
        let wake = EventFd::new(0).expect("eventfd");
        let server_wake = wake.try_clone().expect("eventfd clone");
        let thread_wake = wake.try_clone().expect("eventfd clone");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let thread = std::thread::spawn(move || serve(rx, &thread_wake, delay, &seen));
        let vmm = FakeVmm {
            requests,
            wake,
            thread: Some(thread),
        };
        (vmm, server_wake)
    }

    /// Lets the thread see the closed channel and waits for it.
    pub fn join(mut self) {
        let _ = self.wake.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The VMM loop: block on the eventfd, then drain the channel. Returns when
/// the server (the only sender) is gone.
pub fn serve(
    rx: Receiver<ApiMessage>,
    wake: &EventFd,
    delay: Duration,
    seen: &Mutex<Vec<ApiRequest>>,
) {
    let mut fake = Fake::default();
    loop {
        if wake.read().is_err() {
            return;
        }
        loop {
            match rx.try_recv() {
                Ok(ApiMessage { request, reply }) => {
                    if let Ok(mut seen) = seen.lock() {
                        seen.push(request.clone());
                    }
                    std::thread::sleep(delay);
                    let _ = reply.send(fake.answer(request));
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
    }
}
