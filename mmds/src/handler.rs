//! Turns a guest's HTTP request into a response, with Firecracker's V1/V2 rules,
//! status codes and messages.

use std::time::Instant;

use crate::config::MmdsVersion;
use crate::http::{Method, Request, Response};
use crate::store::{Mmds, OutputFormat, StoreError};
use crate::token::PATH_TO_TOKEN;

/// Header carrying a V2 session token on GETs.
pub const X_METADATA_TOKEN: &str = "X-metadata-token";
/// Header carrying the requested token lifetime on `PUT /latest/api/token`.
pub const X_METADATA_TOKEN_TTL_SECONDS: &str = "X-metadata-token-ttl-seconds";
const TOKEN_HEADERS: [&str; 2] = ["x-metadata-token", "x-aws-ec2-metadata-token"];
const TTL_HEADERS: [&str; 2] = [
    "x-metadata-token-ttl-seconds",
    "x-aws-ec2-metadata-token-ttl-seconds",
];
const NO_TOKEN: &str = "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` header to specify the session token.";
const BAD_TOKEN: &str = "MMDS token not valid.";
const NO_TTL: &str = "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime.";

/// Answers one guest request against `mmds` at time `now` (token expiry).
pub fn respond(mmds: &mut Mmds, req: &Request, now: Instant) -> Response {
    match req.method {
        Method::Get => {
            let token = req.header_any(&TOKEN_HEADERS);
            match (mmds.version(), token) {
                (MmdsVersion::V2, None) => return Response::text(401, NO_TOKEN),
                (MmdsVersion::V2, Some((_, t))) if !mmds.is_valid_token(t, now) => {
                    return Response::text(401, BAD_TOKEN)
                }
                // V1 serves with or without a token; an invalid one only counts in
                // Firecracker's metrics, which flint does not keep here.
                _ => {}
            }
            get(mmds, req)
        }
        Method::Put => put_token(mmds, req, now),
        Method::Other => {
            let mut r = Response::text(405, "Not allowed HTTP method.");
            r.headers.push(("Allow".into(), "GET, PUT".into()));
            r
        }
    }
}

fn get(mmds: &Mmds, req: &Request) -> Response {
    let json = req.wants_json() && !mmds.imds_compat();
    let format = if json {
        OutputFormat::Json
    } else {
        OutputFormat::Imds
    };
    match mmds.get_path(&req.path, format) {
        Ok(body) => Response {
            status: 200,
            content_type: if json {
                "application/json"
            } else {
                "text/plain"
            },
            headers: Vec::new(),
            body,
        },
        Err(StoreError::NotFound) => not_found(req),
        Err(e @ StoreError::UnsupportedValueType) => Response::text(501, e.to_string()),
        Err(e) => Response::text(400, e.to_string()),
    }
}

fn not_found(req: &Request) -> Response {
    Response::text(404, format!("Resource not found: {}.", req.path))
}

fn put_token(mmds: &mut Mmds, req: &Request, now: Instant) -> Response {
    // A request relayed by a proxy in the guest must not obtain a token (EC2's rule).
    if let Some((name, _)) = req.header_any(&["x-forwarded-for"]) {
        return Response::text(
            400,
            format!("Invalid header. Reason: Unsupported header name. Key: {name}"),
        );
    }
    let mut path = req.path.clone();
    while path.contains("//") {
        path = path.replace("//", "/");
    }
    if path != PATH_TO_TOKEN {
        return not_found(req);
    }
    let Some((name, value)) = req.header_any(&TTL_HEADERS) else {
        return Response::text(400, NO_TTL);
    };
    let Ok(ttl) = value.parse::<u32>() else {
        return Response::text(
            400,
            format!("Invalid header. Reason: Invalid value. Key:{name}; Value:{value}"),
        );
    };
    match mmds.generate_token(ttl, now) {
        Ok(token) => {
            let mut r = Response::text(200, token);
            r.headers.push((name.to_string(), ttl.to_string()));
            r
        }
        Err(e) => Response::text(400, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::http::{parse_request, Parsed};

    fn ask(m: &mut Mmds, raw: &str, now: Instant) -> Response {
        match parse_request(raw.as_bytes()) {
            Parsed::Complete(r, _) => respond(m, &r, now),
            other => panic!("{other:?}"),
        }
    }

    fn store() -> Mmds {
        let mut m = Mmds::default();
        m.put(json!({"latest":{"meta-data":{"ami-id":"ami-1","net":{"mac":"m"}}}}))
            .unwrap();
        m
    }

    #[test]
    fn v1_and_errors() {
        let mut m = store();
        let t = Instant::now();
        let r = ask(&mut m, "GET /latest/meta-data/ HTTP/1.0\r\n\r\n", t);
        assert_eq!((r.status, r.body.as_str()), (200, "ami-id\nnet/"));
        let r = ask(
            &mut m,
            "GET /latest/meta-data/net HTTP/1.1\r\nAccept: application/json\r\n\r\n",
            t,
        );
        assert_eq!(
            (r.status, r.body.as_str(), r.content_type),
            (200, r#"{"mac":"m"}"#, "application/json")
        );
        let r = ask(
            &mut m,
            "GET /latest/x HTTP/1.1\r\nX-metadata-token: bogus\r\n\r\n",
            t,
        );
        assert_eq!(
            (r.status, r.body.as_str()),
            (404, "Resource not found: /latest/x.")
        );
        let r = ask(&mut m, "POST / HTTP/1.1\r\n\r\n", t);
        assert_eq!(r.status, 405);
        assert_eq!(
            r.headers,
            vec![("Allow".to_string(), "GET, PUT".to_string())]
        );
        let r = ask(
            &mut m,
            "PUT /latest/meta-data HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n",
            t,
        );
        assert_eq!(r.status, 404);
        let r = ask(&mut m, "PUT /latest/api/token HTTP/1.1\r\n\r\n", t);
        assert_eq!((r.status, r.body.as_str()), (400, NO_TTL));
        let r = ask(
            &mut m,
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: x\r\n\r\n",
            t,
        );
        assert_eq!(r.status, 400);
        let r = ask(
            &mut m,
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 0\r\n\r\n",
            t,
        );
        assert_eq!(r.status, 400);
        let r = ask(&mut m, "PUT /latest/api/token HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n", t);
        assert_eq!(r.status, 400);
    }

    #[test]
    fn v2_token_flow() {
        let mut m = store();
        m.set_version(MmdsVersion::V2);
        let t = Instant::now();
        let r = ask(&mut m, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n", t);
        assert_eq!((r.status, r.body.as_str()), (401, NO_TOKEN));
        let r = ask(
            &mut m,
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
            t,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.headers[0].1, "60");
        let tok = r.body;
        let get =
            format!("GET /latest/meta-data/ami-id HTTP/1.1\r\nx-METADATA-token: {tok}\r\n\r\n");
        let r = ask(&mut m, &get, t + Duration::from_secs(59));
        assert_eq!((r.status, r.body.as_str()), (200, "ami-1"));
        let r = ask(&mut m, &get, t + Duration::from_secs(60));
        assert_eq!((r.status, r.body.as_str()), (401, BAD_TOKEN));
        let r = ask(&mut m, "GET / HTTP/1.1\r\nX-metadata-token: abc\r\n\r\n", t);
        assert_eq!(r.status, 401);
    }
}
