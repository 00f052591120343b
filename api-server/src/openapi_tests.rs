//! Checks `api/openapi.yaml` against the code: the same routes and methods
//! as the router, request schemas whose fields, required sets, enums and
//! nullability are exactly what serde accepts, and response schemas that
//! accept what the server sends.

use serde_json::{json, Map, Value};

use crate::routes::{match_path, parse, BodySpec, RouteSpec, ROUTES};
use api::*;

const METHODS: [&str; 8] = [
    "get", "put", "patch", "post", "delete", "head", "options", "trace",
];

/// A config with every section and optional field set.
const FULL: &str = r#"{
  "boot-source": { "kernel_image_path": "vmlinux", "initrd_path": "initramfs.cpio",
                   "boot_args": "console=ttyS0 reboot=k panic=-1" },
  "machine-config": { "vcpu_count": 2, "mem_size_mib": 256, "cpu_template": "T2",
                      "emulation_quirks": "on" },
  "drives": [ { "drive_id": "rootfs", "path_on_host": "rootfs.ext4", "is_root_device": true,
                "is_read_only": false,
                "rate_limiter": { "bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 100},
                                  "ops": {"size": 100, "refill_time": 1000} } } ],
  "network-interfaces": [ { "iface_id": "eth0", "host_dev_name": "tap0",
                "guest_mac": "06:00:AC:10:00:02",
                "rx_rate_limiter": { "ops": {"size": 10, "refill_time": 10} },
                "tx_rate_limiter": { "bandwidth": {"size": 10, "refill_time": 10} } } ],
  "vsock": { "guest_cid": 3, "uds_path": "vsock.sock", "vsock_id": "v" },
  "entropy": { "rate_limiter": { "bandwidth": {"size": 1000, "refill_time": 100} } },
  "balloon": { "amount_mib": 8, "deflate_on_oom": true, "stats_polling_interval_s": 1,
               "free_page_hinting": true, "free_page_reporting": false },
  "serial": { "serial_out_path": "serial.log" }
}"#;

fn spec() -> Value {
    let text = include_str!("../../api/openapi.yaml");
    serde_norway::from_str(text).expect("openapi.yaml parses")
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("local $ref");
            resolve(spec, spec.pointer(pointer).unwrap_or_else(|| panic!("{r}")))
        }
        None => schema,
    }
}

/// A small validator for the schema subset the spec uses.
fn validate(spec: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    let fail = |why: String| Err(format!("{at}: {why} (value {value})"));
    if value.is_null() {
        return match schema["nullable"].as_bool() {
            Some(true) => Ok(()),
            _ => fail("null not allowed".into()),
        };
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(value) {
            return fail(format!("not one of {options:?}"));
        }
    }
    let number = |key: &str| schema[key].as_u64().or(schema[key].as_i64().map(|_| 0));
    match schema["type"].as_str() {
        Some("object") => {
            let Some(object) = value.as_object() else {
                return fail("not an object".into());
            };
            let properties = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for name in schema["required"].as_array().into_iter().flatten() {
                if !object.contains_key(name.as_str().unwrap_or_default()) {
                    return fail(format!("missing {name}"));
                }
            }
            for (name, field) in object {
                match properties.get(name) {
                    Some(sub) => validate(spec, sub, field, &format!("{at}.{name}"))?,
                    None if schema["additionalProperties"] == json!(false) => {
                        return fail(format!("unexpected property {name}"))
                    }
                    None => {}
                }
            }
            Ok(())
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                return fail("not an array".into());
            };
            for (i, item) in items.iter().enumerate() {
                validate(spec, &schema["items"], item, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        Some("integer") => match value.as_u64() {
            Some(n) if number("minimum").is_some_and(|min| n < min) => fail("below minimum".into()),
            Some(n) if number("maximum").is_some_and(|max| n > max) => fail("above maximum".into()),
            Some(_) => Ok(()),
            None => fail("not a non-negative integer".into()),
        },
        Some("string") => match value.as_str() {
            Some(s) if number("maxLength").is_some_and(|max| s.chars().count() as u64 > max) => {
                fail("too long".into())
            }
            Some(_) => Ok(()),
            None => fail("not a string".into()),
        },
        Some("boolean") if value.is_boolean() => Ok(()),
        other => fail(format!("unexpected schema type {other:?}")),
    }
}

/// How to build a request body from its schema.
#[derive(Clone, Copy)]
enum Fill {
    /// Every property, enums at `variant` (mod their length).
    All { variant: usize, nulls: bool },
    /// Required properties only.
    Required,
}

fn example(spec: &Value, schema: &Value, fill: Fill, name: &str) -> Value {
    let schema = resolve(spec, schema);
    if let Fill::All { nulls: true, .. } = fill {
        if schema["nullable"] == json!(true) {
            return Value::Null;
        }
    }
    if let Some(options) = schema["enum"].as_array() {
        let variant = if let Fill::All { variant, .. } = fill {
            variant
        } else {
            0
        };
        return options[variant % options.len()].clone();
    }
    match schema["type"].as_str() {
        Some("object") => {
            let required: Vec<&Value> = schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            let mut object = Map::new();
            for (key, sub) in schema["properties"].as_object().into_iter().flatten() {
                if matches!(fill, Fill::All { .. }) || required.contains(&&json!(key)) {
                    object.insert(key.clone(), example(spec, sub, fill, key));
                }
            }
            Value::Object(object)
        }
        Some("array") => json!([]),
        Some("integer") => json!(schema["minimum"].as_u64().unwrap_or(0).max(1)),
        Some("boolean") => json!(true),
        Some("string") if name == "guest_mac" => json!("06:00:00:00:00:01"),
        Some("string") if name == "ipv4_address" => json!("169.254.169.254"),
        Some("string") => json!("d"),
        other => panic!("{name}: cannot fill schema type {other:?}"),
    }
}

/// An operation of the spec: path, method, the request body's schema and
/// whether the body is required.
struct Operation {
    path: String,
    method: String,
    body: Option<(Value, bool)>,
}

fn operations(spec: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                let body = op
                    .pointer("/requestBody/content/application~1json/schema")
                    .cloned()
                    .map(|schema| {
                        let required = op["requestBody"]["required"] != json!(false);
                        (schema, required)
                    });
                out.push(Operation {
                    path: path.clone(),
                    method: method.to_uppercase(),
                    body,
                });
            }
        }
    }
    out
}

/// The table's entry for a spec operation.
fn route_of(op: &Operation) -> &'static RouteSpec {
    ROUTES
        .iter()
        .find(|r| r.path == op.path && r.method == op.method)
        .unwrap_or_else(|| panic!("{} {} is not in ROUTES", op.method, op.path))
}

fn try_parse(template: &str, method: &str, body: &[u8]) -> Result<(), String> {
    let path = template
        .replace("{drive_id}", "d")
        .replace("{iface_id}", "d")
        .replace("{id}", "d")
        .replace("{tag}", "d");
    let matched = match_path(&path).ok_or(format!("{path} does not route"))?;
    let route = matched
        .route(method)
        .ok_or(format!("{method} {path}: no route"))?;
    parse(&matched, route, body)
        .map(drop)
        .map_err(|e| e.fault_message)
}

fn try_parse_json(template: &str, method: &str, body: &Value) -> Result<(), String> {
    try_parse(template, method, body.to_string().as_bytes())
}

#[test]
fn spec_lists_exactly_the_routers_routes_and_methods() {
    let spec = spec();
    let mut in_spec: Vec<(String, String)> = operations(&spec)
        .into_iter()
        .map(|op| (op.path, op.method))
        .collect();
    let mut in_router: Vec<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.path.to_owned(), r.method.to_owned()))
        .collect();
    in_spec.sort();
    in_router.sort();
    assert_eq!(in_spec, in_router);
}

#[test]
fn request_bodies_are_the_tables_schemas() {
    let spec = spec();
    for op in operations(&spec) {
        let at = format!("{} {}", op.method, op.path);
        let in_spec = op.body.as_ref().map(|(schema, required)| {
            let name = schema["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .unwrap_or_else(|| panic!("{at}: body schema is not a $ref"));
            (name.to_owned(), *required)
        });
        let route = route_of(&op);
        let in_table = match route.body {
            BodySpec::None => None,
            BodySpec::Required(name) => Some((name.to_owned(), true)),
            BodySpec::Optional(name) => Some((name.to_owned(), false)),
        };
        assert_eq!(in_spec, in_table, "{at}");
        // The schema's properties are exactly the body type's fields.
        let mut in_type: Vec<&str> = (route.body_fields)().to_vec();
        let mut in_schema: Vec<&str> = match &op.body {
            Some((schema, _)) => resolve(&spec, schema)["properties"]
                .as_object()
                .map(|p| p.keys().map(String::as_str).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        in_type.sort_unstable();
        in_schema.sort_unstable();
        assert_eq!(
            in_schema, in_type,
            "{at}: schema properties vs body type fields"
        );
    }
}

/// Drops from a filled-in body what a rule across fields, which the schema
/// cannot express, forbids: `snapshot/load` with a `Uffd` mem_backend takes
/// neither `mem_file_path` nor `copy_memory` (the handler fills memory).
fn cross_field_rules(path: &str, mut body: Value) -> Value {
    if path == "/snapshot/load" && body["mem_backend"]["backend_type"] == json!("Uffd") {
        if let Some(object) = body.as_object_mut() {
            object.remove("mem_file_path");
            object.remove("copy_memory");
        }
    }
    body
}

#[test]
fn request_schemas_match_what_serde_accepts() {
    let spec = spec();
    for op in operations(&spec) {
        let Some((schema, required)) = op.body else {
            continue;
        };
        let (path, method) = (op.path.as_str(), op.method.as_str());
        let at = format!("{method} {path}");
        for variant in 0..6 {
            for nulls in [false, true] {
                let body = cross_field_rules(
                    path,
                    example(&spec, &schema, Fill::All { variant, nulls }, ""),
                );
                try_parse_json(path, method, &body)
                    .map_err(|e| format!("{at} {body}: {e}"))
                    .unwrap();
            }
        }
        let minimal = example(&spec, &schema, Fill::Required, "");
        try_parse_json(path, method, &minimal)
            .map_err(|e| format!("{at} {minimal}: {e}"))
            .unwrap();
        for key in minimal.as_object().expect("object body").keys() {
            let mut without = minimal.clone();
            without.as_object_mut().map(|o| o.remove(key));
            assert!(
                try_parse_json(path, method, &without).is_err(),
                "{at}: {key} is optional"
            );
        }
        if resolve(&spec, &schema)["additionalProperties"] == json!(true) {
            // Free-form (the MMDS contents): any field is data.
            continue;
        }
        let mut extra = minimal.clone();
        extra
            .as_object_mut()
            .map(|o| o.insert("no_such_field".into(), json!(1)));
        assert!(
            try_parse_json(path, method, &extra).is_err(),
            "{at}: unknown field accepted"
        );
        assert_eq!(
            try_parse(path, method, b"").is_ok(),
            !required,
            "{at}: a missing body is {}accepted",
            if required { "" } else { "not " }
        );
    }
}

fn response_schema(spec: &Value, path: &str, method: &str, status: &str) -> Value {
    let pointer = format!(
        "/paths/{}/{method}/responses/{status}",
        path.replace('~', "~0").replace('/', "~1")
    );
    let response = resolve(
        spec,
        spec.pointer(&pointer)
            .unwrap_or_else(|| panic!("{pointer}")),
    );
    response["content"]["application/json"]["schema"].clone()
}

#[test]
fn response_schemas_accept_what_the_server_sends() {
    let spec = spec();
    let check = |path: &str, status: &str, value: Value| {
        let schema = response_schema(&spec, path, "get", status);
        validate(&spec, &schema, &value, path).unwrap();
    };
    let info = InstanceInfo {
        id: "vm0".into(),
        state: InstanceState::NotStarted,
        vmm_version: "0.1.0".into(),
        app_name: "flint".into(),
    };
    check("/", "200", serde_json::to_value(info).unwrap());
    let version = VersionInfo {
        firecracker_version: FIRECRACKER_API_VERSION.into(),
        flint_version: "0.1.0".into(),
    };
    check("/version", "200", serde_json::to_value(version).unwrap());
    let full = VmConfig::from_json(FULL).unwrap();
    check(
        "/machine-config",
        "200",
        serde_json::to_value(&full.machine_config).unwrap(),
    );
    check("/vm/config", "200", serde_json::to_value(&full).unwrap());
    let minimal = VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "/k"}}"#).unwrap();
    check("/vm/config", "200", serde_json::to_value(&minimal).unwrap());
    check("/", "503", json!({"fault_message": "busy"}));
    let balloon = BalloonConfig {
        amount_mib: 64,
        deflate_on_oom: true,
        stats_polling_interval_s: 1,
        free_page_hinting: false,
        free_page_reporting: true,
    };
    check("/balloon", "200", serde_json::to_value(&balloon).unwrap());
    let stats = BalloonStats {
        target_pages: 1,
        actual_pages: 2,
        target_mib: 3,
        actual_mib: 4,
        free_memory: Some(5),
        oom_kill: Some(0),
        ..Default::default()
    };
    check(
        "/balloon/statistics",
        "200",
        serde_json::to_value(stats).unwrap(),
    );
    let hinting = BalloonHintingStatus {
        host_cmd: 2,
        guest_cmd: Some(1),
    };
    check(
        "/balloon/hinting/status",
        "200",
        serde_json::to_value(hinting).unwrap(),
    );
    let bad = validate(
        &spec,
        &response_schema(&spec, "/", "get", "400"),
        &json!({}),
        "/",
    );
    assert!(bad.is_err(), "the error schema must require fault_message");
}

#[test]
fn every_error_response_uses_the_error_schema() {
    let spec = spec();
    for Operation { path, method, body } in operations(&spec) {
        let op = &spec["paths"][&path][method.to_lowercase()];
        let codes: Vec<&String> = op["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .collect();
        for code in &codes {
            if code.starts_with('4') || code.starts_with('5') {
                let schema = response_schema(&spec, &path, &method.to_lowercase(), code);
                assert_eq!(
                    schema["$ref"], "#/components/schemas/Error",
                    "{method} {path} {code}"
                );
            }
        }
        if body.is_some() {
            for needed in ["204", "400", "413", "503"] {
                assert!(
                    codes.iter().any(|c| *c == needed),
                    "{method} {path}: no {needed}"
                );
            }
        }
    }
}
