//! The API's endpoints as data: one [`RouteSpec`] per path and method, in
//! one table ([`ROUTES`]), saying how the request body (if any) becomes an
//! [`ApiRequest`]. The router, the 404/405 answers and the OpenAPI
//! conformance test all read this table, so an endpoint is declared once
//! here (plus its `ApiRequest` variant, the VMM's answer in `Vmm::handle`
//! and its entry in `api/openapi.yaml`, which the test checks against it).

use serde::de::DeserializeOwned;

use api::{ApiError, ApiRequest, ConfigError, MAX_ID_LEN};

/// Whether and how an endpoint takes a JSON body; the name is the body's
/// schema in `api/openapi.yaml` (`#/components/schemas/NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodySpec {
    /// No body; one sent is ignored.
    None,
    /// A JSON object is required.
    Required(&'static str),
    /// A JSON object may be sent; without one the type's default applies.
    Optional(&'static str),
}

/// The field names of the body type a variant takes, for the spec test.
fn fields_of<T: DeserializeOwned>(_: fn(T) -> ApiRequest) -> &'static [&'static str] {
    api::serde_field_names::<T>()
}

/// One endpoint: a path template and a method, its body and how a request
/// becomes what the server does.
pub(crate) struct RouteSpec {
    /// The path as the spec writes it; `{name}` matches one segment.
    pub path: &'static str,
    /// The HTTP method, upper case.
    pub method: &'static str,
    /// The request body this endpoint takes.
    pub body: BodySpec,
    /// The body type's field names (empty without a body), so the spec test
    /// can compare them with the schema's properties.
    #[cfg_attr(not(test), allow(dead_code))]
    pub body_fields: fn() -> &'static [&'static str],
    /// Turns the `{…}` path segment (percent-decoded, empty if none) and the
    /// body (empty if none was sent) into what to do.
    pub to_request: fn(&str, &[u8]) -> Result<Parsed, ApiError>,
}

impl std::fmt::Debug for RouteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Declares a [`RouteSpec`]: `METHOD PATH => request` for no body,
/// `METHOD PATH, body SCHEMA => Variant` for a required body deserialized
/// into the variant's type, `optional body` for an optional one, and
/// `id FIELD` to require the path segment equal the body's FIELD (and
/// `checked` to run the body type's `validate()`).
macro_rules! route {
    ($method:literal $path:literal => $request:expr) => {
        RouteSpec {
            path: $path,
            method: $method,
            body: BodySpec::None,
            body_fields: || &[],
            to_request: |_, _| Ok(Parsed::Vmm($request)),
        }
    };
    ($method:literal $path:literal, body $schema:literal => $variant:path) => {
        RouteSpec {
            path: $path,
            method: $method,
            body: BodySpec::Required($schema),
            body_fields: || fields_of($variant),
            to_request: |_, body| Ok(Parsed::Vmm($variant(json(body)?))),
        }
    };
    ($method:literal $path:literal, optional body $schema:literal => $variant:path) => {
        RouteSpec {
            path: $path,
            method: $method,
            body: BodySpec::Optional($schema),
            body_fields: || fields_of($variant),
            to_request: |_, body| Ok(Parsed::Vmm($variant(json_or_default(body)?))),
        }
    };
    ($method:literal $path:literal, body $schema:literal, id $field:ident => $variant:path) => {
        RouteSpec {
            path: $path,
            method: $method,
            body: BodySpec::Required($schema),
            body_fields: || fields_of($variant),
            to_request: |id, body| {
                with_id(
                    id,
                    body,
                    stringify!($field),
                    |b| &b.$field,
                    |_| Ok(()),
                    $variant,
                )
            },
        }
    };
    ($method:literal $path:literal, body $schema:literal, id $field:ident, checked => $variant:path) => {
        RouteSpec {
            path: $path,
            method: $method,
            body: BodySpec::Required($schema),
            body_fields: || fields_of($variant),
            to_request: |id, body| {
                with_id(
                    id,
                    body,
                    stringify!($field),
                    |b| &b.$field,
                    |b| b.validate(),
                    $variant,
                )
            },
        }
    };
}

/// Every endpoint of the API.
#[rustfmt::skip]
pub(crate) const ROUTES: &[RouteSpec] = &[
    route!("GET" "/" => ApiRequest::GetInstanceInfo),
    RouteSpec {
        path: "/version",
        method: "GET",
        body: BodySpec::None,
        body_fields: || &[],
        to_request: |_, _| Ok(Parsed::Version),
    },
    route!("GET" "/machine-config" => ApiRequest::GetMachineConfig),
    route!("PUT" "/machine-config", body "MachineConfig" => ApiRequest::PutMachineConfig),
    route!("PATCH" "/machine-config", body "MachineConfigPatch" => ApiRequest::PatchMachineConfig),
    route!("PUT" "/cpu-config", body "CpuConfig" => ApiRequest::PutCpuConfig),
    route!("PUT" "/boot-source", body "BootSource" => ApiRequest::PutBootSource),
    route!("PUT" "/drives/{drive_id}", body "Drive", id drive_id => ApiRequest::PutDrive),
    route!("PATCH" "/drives/{drive_id}", body "DrivePatch", id drive_id, checked => ApiRequest::PatchDrive),
    route!("PUT" "/network-interfaces/{iface_id}", body "NetworkInterface", id iface_id => ApiRequest::PutNetworkInterface),
    route!("PATCH" "/network-interfaces/{iface_id}", body "NetworkInterfacePatch", id iface_id, checked => ApiRequest::PatchNetworkInterface),
    route!("PUT" "/vsock", body "Vsock" => ApiRequest::PutVsock),
    route!("PUT" "/entropy", body "EntropyDevice" => ApiRequest::PutEntropy),
    route!("PUT" "/serial", body "SerialDevice" => ApiRequest::PutSerial),
    route!("PUT" "/balloon", body "Balloon" => ApiRequest::PutBalloon),
    route!("GET" "/balloon" => ApiRequest::GetBalloon),
    route!("PATCH" "/balloon", body "BalloonUpdate" => ApiRequest::PatchBalloon),
    route!("GET" "/balloon/statistics" => ApiRequest::GetBalloonStatistics),
    route!("PATCH" "/balloon/statistics", body "BalloonStatsUpdate" => ApiRequest::PatchBalloonStatistics),
    route!("PATCH" "/balloon/hinting/start", optional body "BalloonStartCmd" => ApiRequest::StartBalloonHinting),
    route!("PATCH" "/balloon/hinting/stop" => ApiRequest::StopBalloonHinting),
    route!("GET" "/balloon/hinting/status" => ApiRequest::GetBalloonHintingStatus),
    route!("PUT" "/pmem/{id}", body "Pmem", id id => ApiRequest::PutPmem),
    route!("PUT" "/fs/{tag}", body "Fs", id tag => ApiRequest::PutFs),
    route!("PUT" "/hotplug/memory", body "MemoryHotplugConfig" => ApiRequest::PutMemoryHotplug),
    route!("PATCH" "/hotplug/memory", body "MemoryHotplugSizeUpdate" => ApiRequest::PatchMemoryHotplug),
    route!("GET" "/hotplug/memory" => ApiRequest::GetMemoryHotplug),
    route!("PUT" "/actions", body "InstanceActionInfo" => ApiRequest::Action),
    route!("PATCH" "/vm", body "Vm" => ApiRequest::PatchVm),
    route!("GET" "/vm/config" => ApiRequest::GetVmConfig),
    route!("PUT" "/logger", body "Logger" => ApiRequest::PutLogger),
    route!("PUT" "/metrics", body "Metrics" => ApiRequest::PutMetrics),
    route!("PUT" "/snapshot/create", body "SnapshotCreateParams" => ApiRequest::CreateSnapshot),
    route!("PUT" "/snapshot/load", body "SnapshotLoadParams" => ApiRequest::LoadSnapshot),
    route!("PUT" "/migrate", body "MigrateParams" => ApiRequest::Migrate),
    route!("PUT" "/mmds", body "MmdsContents" => ApiRequest::PutMmds),
    route!("PATCH" "/mmds", body "MmdsContents" => ApiRequest::PatchMmds),
    route!("GET" "/mmds" => ApiRequest::GetMmds),
    route!("PUT" "/mmds/config", body "MmdsConfig" => ApiRequest::PutMmdsConfig),
];

/// A request path matched to its path template, with the `{…}` segment if
/// any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Matched {
    /// The template from [`ROUTES`].
    pub path: &'static str,
    /// The percent-decoded path parameter (drive or interface id).
    pub param: Option<String>,
}

impl Matched {
    /// The methods the path answers; anything else gets 405 with these in
    /// the `Allow` header.
    pub(crate) fn methods(&self) -> Vec<&'static str> {
        ROUTES
            .iter()
            .filter(|r| r.path == self.path)
            .map(|r| r.method)
            .collect()
    }

    /// The endpoint for `method` on this path; `None` means 405.
    pub(crate) fn route(&self, method: &str) -> Option<&'static RouteSpec> {
        ROUTES
            .iter()
            .find(|r| r.path == self.path && r.method == method)
    }
}

/// Finds the path template for a path (without query); `None` means 404.
pub(crate) fn match_path(path: &str) -> Option<Matched> {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    ROUTES.iter().find_map(|route| {
        let template: Vec<&str> = route.path.split('/').skip(1).collect();
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
        Some(Matched {
            path: route.path,
            param,
        })
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

/// Routes and parses one request the way the server does (path → template,
/// method → endpoint, body → checked request), without HTTP: the fuzz target
/// feeds it arbitrary input. `Ok(None)` is `GET /version`, answered by the
/// server itself.
pub fn route_request(
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Option<ApiRequest>, ApiError> {
    let matched =
        match_path(path).ok_or_else(|| ApiError::not_found(format!("no such path: {path}")))?;
    let route = matched
        .route(method)
        .ok_or_else(|| ApiError::new(405, format!("method {method} not allowed on {path}")))?;
    match parse(&matched, route, body)? {
        Parsed::Version => Ok(None),
        Parsed::Vmm(request) => Ok(Some(request)),
    }
}

/// Turns a routed request into what to do; `body` is empty for none.
pub(crate) fn parse(matched: &Matched, route: &RouteSpec, body: &[u8]) -> Result<Parsed, ApiError> {
    let id = matched.param.as_deref().unwrap_or_default();
    (route.to_request)(id, body)
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

/// Parses a JSON body, naming the offending field in the error.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if is_blank(body) {
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

/// [`json`] for an optional body: none gives the type's default.
fn json_or_default<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if is_blank(body) {
        return Ok(T::default());
    }
    json(body)
}

/// Parses a body that names its device, checks the name against the path
/// and runs `check` on it, then wraps it as a request.
fn with_id<T: DeserializeOwned>(
    in_path: &str,
    body: &[u8],
    field: &str,
    id_of: fn(&T) -> &String,
    check: fn(&T) -> Result<(), ConfigError>,
    wrap: fn(T) -> ApiRequest,
) -> Result<Parsed, ApiError> {
    let value: T = json(body)?;
    same_id(field, in_path, id_of(&value))?;
    check(&value)?;
    Ok(Parsed::Vmm(wrap(value)))
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
