//! The API's endpoints as data: which paths exist, which methods each takes,
//! and how a body becomes an [`ApiRequest`]. Free of hyper so it can be
//! unit-tested, and so the OpenAPI test can compare the spec with the table
//! the server actually routes by.

use serde::de::DeserializeOwned;

use api::{ActionType, ApiError, ApiRequest, MetricsConfig, VmStateRequest};
use api::{BootSourceConfig, DriveConfig, MachineConfig, NetConfig, MAX_ID_LEN};
use api::{DrivePatch, LoggerConfig, MachineConfigPatch, NetPatch};
use api::{MigrateParams, SnapshotCreateParams, SnapshotLoadParams};

/// One path template of the API, e.g. `/drives/{drive_id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Root,
    Version,
    MachineConfig,
    BootSource,
    Drive,
    NetworkInterface,
    Actions,
    Vm,
    VmConfig,
    Logger,
    Metrics,
    SnapshotCreate,
    SnapshotLoad,
    Migrate,
}

impl Route {
    /// Every route, for the 404/405 logic and the spec test.
    pub(crate) const ALL: [Route; 14] = [
        Route::Root,
        Route::Version,
        Route::MachineConfig,
        Route::BootSource,
        Route::Drive,
        Route::NetworkInterface,
        Route::Actions,
        Route::Vm,
        Route::VmConfig,
        Route::Logger,
        Route::Metrics,
        Route::SnapshotCreate,
        Route::SnapshotLoad,
        Route::Migrate,
    ];

    /// The path as the spec writes it; `{name}` matches one segment.
    pub(crate) fn template(self) -> &'static str {
        match self {
            Route::Root => "/",
            Route::Version => "/version",
            Route::MachineConfig => "/machine-config",
            Route::BootSource => "/boot-source",
            Route::Drive => "/drives/{drive_id}",
            Route::NetworkInterface => "/network-interfaces/{iface_id}",
            Route::Actions => "/actions",
            Route::Vm => "/vm",
            Route::VmConfig => "/vm/config",
            Route::Logger => "/logger",
            Route::Metrics => "/metrics",
            Route::SnapshotCreate => "/snapshot/create",
            Route::SnapshotLoad => "/snapshot/load",
            Route::Migrate => "/migrate",
        }
    }

    /// The methods the route answers; anything else gets 405 with these in
    /// the `Allow` header.
    pub(crate) fn methods(self) -> &'static [&'static str] {
        match self {
            Route::Root | Route::Version | Route::VmConfig => &["GET"],
            Route::MachineConfig => &["GET", "PUT", "PATCH"],
            Route::Drive | Route::NetworkInterface => &["PUT", "PATCH"],
            Route::BootSource
            | Route::Actions
            | Route::Logger
            | Route::Metrics
            | Route::SnapshotCreate
            | Route::SnapshotLoad
            | Route::Migrate => &["PUT"],
            Route::Vm => &["PATCH"],
        }
    }
}

/// A request path matched to its route, with the `{…}` segment if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Matched {
    pub route: Route,
    /// The percent-decoded path parameter (drive or interface id).
    pub param: Option<String>,
}

/// Finds the route for a path (without query); `None` means 404.
pub(crate) fn match_path(path: &str) -> Option<Matched> {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    Route::ALL.into_iter().find_map(|route| {
        let template: Vec<&str> = route.template().split('/').skip(1).collect();
        if template.len() != segments.len() {
            return None;
        }
        let mut param = None;
        for (t, s) in template.iter().zip(&segments) {
            if t.starts_with('{') {
                if s.is_empty() {
                    return None;
                }
                param = Some(percent_decode(s)?);
            } else if t != s {
                return None;
            }
        }
        Some(Matched { route, param })
    })
}

/// Decodes `%XX` escapes; `None` (so 404) for a bad escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What the server does with a routed request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Parsed {
    /// `GET /version`, answered by the server itself.
    Version,
    /// Anything else, for the VMM.
    Vmm(ApiRequest),
}

/// Whether a method on this route needs a JSON body.
pub(crate) fn needs_body(method: &str) -> bool {
    matches!(method, "PUT" | "PATCH")
}

/// Turns a routed request into what to do. `method` must be one of
/// `matched.route.methods()`; `body` is empty for none.
pub(crate) fn parse(matched: &Matched, method: &str, body: &[u8]) -> Result<Parsed, ApiError> {
    let id = matched.param.as_deref().unwrap_or_default();
    let request = match (matched.route, method) {
        (Route::Version, _) => return Ok(Parsed::Version),
        (Route::Root, _) => ApiRequest::GetInstanceInfo,
        (Route::VmConfig, _) => ApiRequest::GetVmConfig,
        (Route::MachineConfig, "GET") => ApiRequest::GetMachineConfig,
        (Route::MachineConfig, "PUT") => ApiRequest::PutMachineConfig(json::<MachineConfig>(body)?),
        (Route::MachineConfig, _) => {
            ApiRequest::PatchMachineConfig(json::<MachineConfigPatch>(body)?)
        }
        (Route::BootSource, _) => ApiRequest::PutBootSource(json::<BootSourceConfig>(body)?),
        (Route::Drive, "PUT") => {
            let drive: DriveConfig = json(body)?;
            same_id("drive_id", id, &drive.drive_id)?;
            ApiRequest::PutDrive(drive)
        }
        (Route::Drive, _) => {
            let patch: DrivePatch = json(body)?;
            same_id("drive_id", id, &patch.drive_id)?;
            ApiRequest::PatchDrive(patch)
        }
        (Route::NetworkInterface, "PUT") => {
            let net: NetConfig = json(body)?;
            same_id("iface_id", id, &net.iface_id)?;
            ApiRequest::PutNetworkInterface(net)
        }
        (Route::NetworkInterface, _) => {
            let patch: NetPatch = json(body)?;
            same_id("iface_id", id, &patch.iface_id)?;
            ApiRequest::PatchNetworkInterface(patch)
        }
        (Route::Actions, _) => ApiRequest::Action(json::<ActionType>(body)?),
        (Route::Vm, _) => ApiRequest::PatchVm(json::<VmStateRequest>(body)?),
        (Route::Logger, _) => ApiRequest::PutLogger(json::<LoggerConfig>(body)?),
        (Route::Metrics, _) => ApiRequest::PutMetrics(json::<MetricsConfig>(body)?),
        (Route::SnapshotCreate, _) => {
            ApiRequest::CreateSnapshot(json::<SnapshotCreateParams>(body)?)
        }
        (Route::SnapshotLoad, _) => ApiRequest::LoadSnapshot(json::<SnapshotLoadParams>(body)?),
        (Route::Migrate, _) => ApiRequest::Migrate(json::<MigrateParams>(body)?),
    };
    Ok(Parsed::Vmm(request))
}

/// Parses a JSON body, naming the offending field in the error.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "missing request body: this endpoint needs a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ApiError::bad_request(if path == "." {
            format!("invalid request body: {inner}")
        } else {
            format!("invalid request body: {path}: {inner}")
        })
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    Ok(value)
}

/// Checks the id in the path is well-formed and equals the body's, so a
/// client cannot address one device and configure another.
fn same_id(field: &str, in_path: &str, in_body: &str) -> Result<(), ApiError> {
    let well_formed = !in_path.is_empty()
        && in_path.len() <= MAX_ID_LEN
        && in_path
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    if !well_formed {
        return Err(ApiError::bad_request(format!(
            "{field} {in_path:?} in the path: must be 1..={MAX_ID_LEN} ASCII letters, digits, \
             '_' or '-'"
        )));
    }
    if in_path != in_body {
        return Err(ApiError::bad_request(format!(
            "{field} {in_body:?} in the body does not match {in_path:?} in the path"
        )));
    }
    Ok(())
}
