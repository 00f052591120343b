//! The metadata data store: one JSON document with a size limit, replaced by
//! `PUT /mmds`, merged by `PATCH /mmds`, read by the API and the guest.

use std::time::Instant;

use serde_json::{Map, Value};

use crate::config::{MmdsVersion, DEFAULT_SIZE_LIMIT};
use crate::token::{TokenAuthority, TokenError};

/// Errors of data store operations, with Firecracker's messages.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The serialized document would exceed the configured limit (API answers 400).
    #[error("The MMDS patch request doesn't fit.")]
    DataStoreLimitExceeded,
    /// No value at the requested path (guest gets 404).
    #[error("The MMDS resource does not exist.")]
    NotFound,
    /// `PATCH` before any `PUT` (Firecracker refuses it the same way).
    #[error("The MMDS data store is not initialized.")]
    NotInitialized,
    /// IMDS plain text can show only objects and strings (guest gets 501).
    #[error("Cannot retrieve value. The value has an unsupported type.")]
    UnsupportedValueType,
}

/// How a GET answer is rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// The JSON value at the path (`Accept: application/json`).
    Json,
    /// EC2 IMDS plain text: an object lists its keys (objects with a trailing `/`), a string is itself.
    Imds,
}

/// The metadata service state shared by the API thread and every [`crate::MmdsNetStack`]
/// (wrap it in `Arc<Mutex<Mmds>>`).
#[derive(Debug)]
pub struct Mmds {
    data: Value,
    initialized: bool,
    size_limit: usize,
    version: MmdsVersion,
    imds_compat: bool,
    tokens: TokenAuthority,
}

impl Default for Mmds {
    fn default() -> Self {
        Self::new(DEFAULT_SIZE_LIMIT)
    }
}

impl Mmds {
    /// An empty (uninitialized) store holding at most `size_limit` bytes of serialized JSON,
    /// with a fresh random token key.
    pub fn new(size_limit: usize) -> Self {
        Mmds {
            data: Value::Null,
            initialized: false,
            size_limit,
            version: MmdsVersion::V1,
            imds_compat: false,
            tokens: TokenAuthority::new(),
        }
    }

    /// The configured byte limit.
    pub fn size_limit(&self) -> usize {
        self.size_limit
    }

    /// Changes the byte limit (`--mmds-size-limit`); the current content is kept.
    pub fn set_size_limit(&mut self, limit: usize) {
        self.size_limit = limit;
    }

    /// The protocol version the guest must speak.
    pub fn version(&self) -> MmdsVersion {
        self.version
    }

    /// Applies `PUT /mmds/config`'s `version`.
    pub fn set_version(&mut self, version: MmdsVersion) {
        self.version = version;
    }

    /// Whether GETs ignore `Accept` and always answer IMDS plain text.
    pub fn imds_compat(&self) -> bool {
        self.imds_compat
    }

    /// Applies `PUT /mmds/config`'s `imds_compat`.
    pub fn set_imds_compat(&mut self, on: bool) {
        self.imds_compat = on;
    }

    /// Replaces the whole document (`PUT /mmds`).
    pub fn put(&mut self, data: Value) -> Result<(), StoreError> {
        self.check_size(&data)?;
        self.data = data;
        self.initialized = true;
        Ok(())
    }

    /// Merges `patch` into the document (`PATCH /mmds`, RFC 7396); on error the document is unchanged.
    pub fn patch(&mut self, patch: &Value) -> Result<(), StoreError> {
        if !self.initialized {
            return Err(StoreError::NotInitialized);
        }
        let mut next = self.data.clone();
        merge_patch(&mut next, patch);
        self.check_size(&next)?;
        self.data = next;
        Ok(())
    }

    /// The whole document (`GET /mmds`); `Null` before the first `PUT`.
    pub fn get(&self) -> &Value {
        &self.data
    }

    /// Whether a `PUT /mmds` has happened (a `PATCH` before it is refused).
    pub fn is_initialized(&self) -> bool {
        self.initialized
    }

    /// The rendered value at a guest URI path such as `/latest/meta-data/` (doubled `/`
    /// collapse and one trailing `/` is ignored, as Firecracker).
    pub fn get_path(&self, path: &str, format: OutputFormat) -> Result<String, StoreError> {
        let mut p = path.to_string();
        while p.contains("//") {
            p = p.replace("//", "/");
        }
        let p = p.strip_suffix('/').unwrap_or(&p);
        let value = self.data.pointer(p).ok_or(StoreError::NotFound)?;
        if self.imds_compat || format == OutputFormat::Imds {
            format_imds(value)
        } else {
            Ok(value.to_string())
        }
    }

    /// Mints a V2 session token valid for `ttl_seconds` (1..=21600) from `now`.
    pub fn generate_token(&mut self, ttl_seconds: u32, now: Instant) -> Result<String, TokenError> {
        self.tokens.generate(ttl_seconds, now)
    }

    /// Whether `token` was minted by this store's authority and is unexpired at `now`.
    pub fn is_valid_token(&self, token: &str, now: Instant) -> bool {
        self.tokens.is_valid(token, now)
    }

    fn check_size(&self, v: &Value) -> Result<(), StoreError> {
        // Serializing a Value cannot fail (keys are strings); treat a failure as too large.
        match serde_json::to_vec(v) {
            Ok(bytes) if bytes.len() <= self.size_limit => Ok(()),
            _ => Err(StoreError::DataStoreLimitExceeded),
        }
    }
}

/// RFC 7396 JSON merge patch of `target` by `patch`: objects merge recursively,
/// `null` members delete, anything else replaces. Recursion depth is bounded by
/// `patch`'s own nesting, which serde_json's parser limits to 128.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(doc) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                doc.remove(key);
            } else {
                merge_patch(doc.entry(key.as_str()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Renders `value` in EC2 IMDS plain text: object keys one per line in key order
/// (objects suffixed with `/`), a string as itself, other types unsupported.
pub fn format_imds(value: &Value) -> Result<String, StoreError> {
    match value {
        Value::Object(map) => Ok(map
            .iter()
            .map(|(k, v)| {
                if v.is_object() {
                    format!("{k}/")
                } else {
                    k.clone()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")),
        Value::String(s) => Ok(s.clone()),
        _ => Err(StoreError::UnsupportedValueType),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_rfc7396() {
        // Examples from RFC 7396 appendix A.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }

    #[test]
    fn size_limit_on_put_and_patch() {
        let mut m = Mmds::new(20);
        assert_eq!(m.patch(&json!({"a":"b"})), Err(StoreError::NotInitialized));
        m.put(json!({"a":"b"})).unwrap(); // 9 bytes
        assert_eq!(
            m.put(json!({"a":"0123456789abcdefghij"})),
            Err(StoreError::DataStoreLimitExceeded)
        );
        assert_eq!(
            m.patch(&json!({"b":"0123456789"})),
            Err(StoreError::DataStoreLimitExceeded)
        );
        assert_eq!(
            m.get(),
            &json!({"a":"b"}),
            "failed patch leaves data unchanged"
        );
        m.patch(&json!({"b":"c"})).unwrap(); // {"a":"b","b":"c"} = 17 bytes
        assert_eq!(m.get(), &json!({"a":"b","b":"c"}));
        assert_eq!(Mmds::default().size_limit(), 51_200);
    }

    #[test]
    fn paths_and_formats() {
        let mut m = Mmds::default();
        m.put(json!({"latest":{"meta-data":{"ami-id":"ami-1","network":{"mac":"x"},"n":3}}}))
            .unwrap();
        let imds = |p| m.get_path(p, OutputFormat::Imds);
        assert_eq!(imds("/latest/meta-data/").unwrap(), "ami-id\nn\nnetwork/");
        assert_eq!(imds("/latest//meta-data").unwrap(), "ami-id\nn\nnetwork/");
        assert_eq!(imds("/latest/meta-data/ami-id").unwrap(), "ami-1");
        assert_eq!(
            imds("/latest/meta-data/n"),
            Err(StoreError::UnsupportedValueType)
        );
        assert_eq!(imds("/latest/nope"), Err(StoreError::NotFound));
        assert_eq!(imds("/").unwrap(), "latest/");
        assert_eq!(
            m.get_path("/latest/meta-data/network", OutputFormat::Json)
                .unwrap(),
            r#"{"mac":"x"}"#
        );
        m.set_imds_compat(true);
        assert_eq!(
            m.get_path("/latest/meta-data/network", OutputFormat::Json)
                .unwrap(),
            "mac"
        );
    }
}
