//! A bounded HTTP/1.x request parser and response writer for the guest side of MMDS.
//!
//! Every byte comes from the guest: sizes are capped, nothing is trusted to be UTF-8
//! until checked, and any malformed request yields `400` and a closed connection.

/// Largest request line plus headers accepted (Firecracker-like 4 KiB bound).
pub const MAX_HEADER_BYTES: usize = 4096;
/// Largest request body accepted; MMDS requests carry none, so this is only slack.
pub const MAX_BODY_BYTES: usize = 4096;
const MAX_HEADERS: usize = 64;

/// HTTP version of a request, echoed in its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `HTTP/1.0`: closes after the response unless `Connection: keep-alive`.
    Http10,
    /// `HTTP/1.1`: keeps the connection unless `Connection: close`.
    Http11,
}

/// Request methods MMDS distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Reads metadata.
    Get,
    /// Mints a V2 token (only on `/latest/api/token`).
    Put,
    /// A known HTTP method MMDS does not serve (answered `405`).
    Other,
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The absolute path, without query or fragment (`/latest/meta-data/`).
    pub path: String,
    /// The version.
    pub version: Version,
    /// Header (name, value) pairs in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

impl Request {
    /// The first header named `name` (case-insensitive), with its name as sent.
    pub fn header_any(&self, names: &[&str]) -> Option<(&str, &str)> {
        self.headers
            .iter()
            .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether the client asked for JSON (`Accept` naming `application/json`).
    pub fn wants_json(&self) -> bool {
        self.header_any(&["accept"])
            .is_some_and(|(_, v)| v.to_ascii_lowercase().contains("application/json"))
    }
}

/// Outcome of feeding the bytes received so far to [`parse_request`].
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed (and allowed).
    Incomplete,
    /// A request and the number of bytes it used (the rest may be a pipelined request).
    Complete(Request, usize),
    /// Malformed or too large: answer this response and close.
    Invalid(Response),
}

/// Parses one request from the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed {
    let head_end = match find_head_end(buf) {
        Some(end) => end,
        None if buf.len() >= MAX_HEADER_BYTES => {
            return Parsed::Invalid(Response::text(400, "Request headers too large."))
        }
        None => return Parsed::Incomplete,
    };
    let (req, body_len) = match parse_head(&buf[..head_end]) {
        Ok(r) => r,
        Err(resp) => return Parsed::Invalid(resp),
    };
    if body_len > MAX_BODY_BYTES {
        return Parsed::Invalid(Response::text(413, "Request body too large."));
    }
    let total = head_end + body_len;
    if buf.len() < total {
        return Parsed::Incomplete;
    }
    Parsed::Complete(req, total)
}

/// Index just past the blank line ending the head, if it lies within the bound.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let lim = buf.len().min(MAX_HEADER_BYTES);
    (0..lim).find_map(|i| {
        if buf[i] != b'\n' {
            return None;
        }
        match buf.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        }
        .filter(|&e| e <= MAX_HEADER_BYTES)
    })
}

fn bad(msg: &str) -> Response {
    Response::text(400, msg)
}

fn parse_head(head: &[u8]) -> Result<(Request, usize), Response> {
    let head = std::str::from_utf8(head).map_err(|_| bad("Request is not valid UTF-8."))?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(m), Some(uri), Some(v), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("Invalid request line."));
    };
    let method = match m {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "HEAD" | "POST" | "PATCH" | "DELETE" | "OPTIONS" | "TRACE" | "CONNECT" => Method::Other,
        _ => return Err(bad("Invalid HTTP method.")),
    };
    let version = match v {
        "HTTP/1.0" => Version::Http10,
        "HTTP/1.1" => Version::Http11,
        _ => return Err(bad("Unsupported HTTP version.")),
    };
    let path = parse_uri(uri).ok_or_else(|| bad("Invalid URI."))?;
    let mut headers = Vec::new();
    let mut content_length: Option<usize> = None;
    let mut conn_close = version == Version::Http10;
    for l in lines.filter(|l| !l.is_empty()) {
        let (name, value) = l.split_once(':').ok_or_else(|| bad("Invalid header."))?;
        let valid_name =
            !name.is_empty() && name.bytes().all(|c| c.is_ascii_graphic() && c != b':');
        if !valid_name || headers.len() >= MAX_HEADERS {
            return Err(bad("Invalid header."));
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| bad("Invalid Content-Length."))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(bad("Invalid Content-Length."));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("Transfer-Encoding is not supported."));
        } else if name.eq_ignore_ascii_case("connection") {
            for tok in value.split(',').map(str::trim) {
                if tok.eq_ignore_ascii_case("close") {
                    conn_close = true;
                } else if tok.eq_ignore_ascii_case("keep-alive") {
                    conn_close = false;
                }
            }
        }
        headers.push((name.to_string(), value.to_string()));
    }
    let req = Request {
        method,
        path,
        version,
        headers,
        keep_alive: !conn_close,
    };
    Ok((req, content_length.unwrap_or(0)))
}

/// The absolute path of an origin-form (`/a/b`) or absolute-form (`http://host/a/b`)
/// request target, without query or fragment.
fn parse_uri(uri: &str) -> Option<String> {
    let rest = if uri.starts_with('/') {
        uri
    } else {
        let lower = uri.get(..7)?.to_ascii_lowercase();
        if lower != "http://" {
            return None;
        }
        let after = &uri[7..];
        &after[after.find('/')?..]
    };
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    if path.is_empty() || !path.bytes().all(|c| c.is_ascii_graphic()) {
        return None;
    }
    Some(path.to_string())
}

/// A response to serialize for the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code (200, 400, 401, 404, 405, 413, 501).
    pub status: u16,
    /// `text/plain` or `application/json`.
    pub content_type: &'static str,
    /// Extra headers such as `Allow` or the token TTL echo.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain",
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The bytes on the wire, with `Connection` and `Content-Length` set.
    pub fn serialize(&self, version: Version, keep_alive: bool) -> Vec<u8> {
        let v = match version {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        };
        let mut s = format!(
            "{v} {} {}\r\nServer: flint-mmds\r\nConnection: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            if keep_alive { "keep-alive" } else { "close" },
            self.content_type,
            self.body.len()
        );
        for (k, val) in &self.headers {
            s.push_str(&format!("{k}: {val}\r\n"));
        }
        s.push_str("\r\n");
        s.push_str(&self.body);
        s.into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        501 => "Not Implemented",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_busybox_wget_and_bounds() {
        let raw = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: Wget\r\nConnection: close\r\n\r\n";
        let Parsed::Complete(r, n) = parse_request(raw) else {
            panic!()
        };
        assert_eq!(n, raw.len());
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/latest/meta-data/");
        assert!(!r.keep_alive);
        assert_eq!(parse_request(&raw[..20]), Parsed::Incomplete);
        let r10 = parse_request(b"GET http://169.254.169.254/a?x=1 HTTP/1.0\n\n");
        assert!(
            matches!(r10, Parsed::Complete(Request { ref path, keep_alive: false, .. }, _) if path == "/a")
        );
        let body = parse_request(b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nab");
        assert_eq!(body, Parsed::Incomplete);
        for bad in [
            &b"BREW /x HTTP/1.1\r\n\r\n"[..],
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/2\r\n\r\n",
            b"GET /x HTTP/1.1 extra\r\n\r\n",
            b"GET /x HTTP/1.1\r\nno-colon\r\n\r\n",
            b"GET /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(
                parse_request(bad),
                Parsed::Invalid(Response { status: 400, .. })
            ));
        }
        let huge = vec![b'a'; MAX_HEADER_BYTES];
        assert!(matches!(parse_request(&huge), Parsed::Invalid(_)));
        let big = b"PUT /x HTTP/1.1\r\nContent-Length: 99999\r\n\r\n";
        assert!(matches!(
            parse_request(big),
            Parsed::Invalid(Response { status: 413, .. })
        ));
    }
}
