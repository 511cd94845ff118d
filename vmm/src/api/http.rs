//! A small, strict HTTP/1.1 request parser and response writer for the per-VM API socket.
//! Everything is size-capped: the client is not trusted.

use std::io::{BufRead, BufReader, Read, Write};

use super::stream::StreamSlot;

/// Largest request head (request line + headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Most header lines.
pub const MAX_HEADERS: usize = 64;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// GET, PUT, ...
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Body bytes (empty if none).
    pub body: Vec<u8>,
}

/// Why a request was rejected; each maps to a 4xx status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed syntax.
    #[error("malformed HTTP request: {0}")]
    BadRequest(String),
    /// Head or body too large.
    #[error("request too large: {0}")]
    TooLarge(String),
    /// Peer closed before a full request arrived.
    #[error("connection closed before a complete request")]
    Closed,
}

impl HttpError {
    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) | HttpError::Closed => 400,
            HttpError::TooLarge(_) => 413,
        }
    }
}

fn bad(msg: impl Into<String>) -> HttpError {
    HttpError::BadRequest(msg.into())
}

/// Read one line (CRLF or LF terminated), charging it to `budget`.
fn read_line<R: BufRead>(r: &mut R, budget: &mut usize) -> Result<String, HttpError> {
    let mut line = Vec::new();
    let limit = (*budget as u64) + 1;
    let n = r
        .by_ref()
        .take(limit)
        .read_until(b'\n', &mut line)
        .map_err(|e| bad(format!("read failed: {e}")))?;
    if n == 0 {
        return Err(HttpError::Closed);
    }
    if line.last() != Some(&b'\n') {
        return Err(if n as u64 >= limit {
            HttpError::TooLarge(format!("request head exceeds {MAX_HEAD} bytes"))
        } else {
            HttpError::Closed
        });
    }
    *budget -= n;
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| bad("request head is not UTF-8"))
}

/// Parse one request from `stream`.
pub fn read_request<R: Read>(stream: R) -> Result<Request, HttpError> {
    let mut r = BufReader::new(stream);
    let mut budget = MAX_HEAD;
    let line = read_line(&mut r, &mut budget)?;
    let mut parts = line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(bad(format!("bad request line {line:?}"))),
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad(format!("bad method {method:?}")));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(bad(format!("unsupported version {version:?}")));
    }
    if !target.starts_with('/') {
        return Err(bad(format!("request target {target:?} must start with /")));
    }
    let path = target.split('?').next().unwrap_or(target).to_string();

    let mut content_length: Option<usize> = None;
    let mut headers = 0;
    loop {
        let h = read_line(&mut r, &mut budget)?;
        if h.is_empty() {
            break;
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return Err(HttpError::TooLarge(format!(
                "more than {MAX_HEADERS} headers"
            )));
        }
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| bad(format!("header line without ':': {h:?}")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {value:?}")))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(bad("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad(
                "Transfer-Encoding is not supported; send Content-Length",
            ));
        }
    }
    let len = content_length.unwrap_or(0);
    if len > MAX_BODY {
        return Err(HttpError::TooLarge(format!(
            "body of {len} bytes exceeds {MAX_BODY}"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|_| HttpError::Closed)?;
    Ok(Request {
        method: method.to_string(),
        path,
        body,
    })
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    /// `200` with `value` as JSON (a value that cannot be serialized is a 500).
    pub fn ok_json<T: serde::Serialize>(value: &T) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => Self::json(200, &v),
            Err(e) => Self::error(500, format!("cannot serialize the reply: {e}")),
        }
    }

    /// `{"error": msg}` with `status`.
    pub fn error(status: u16, msg: impl Into<String>) -> Self {
        Self::json(status, &serde_json::json!({ "error": msg.into() }))
    }
}

/// What a route sends back: a whole response, or a stream of damage events.
pub enum Reply {
    /// A complete response.
    Full(Response),
    /// `GET /framebuffer/events`: stream this subscription (holding one stream slot).
    DamageStream(cloudphone_display::DamageReceiver, StreamSlot),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Reply::Full(r)
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Serialize `resp` onto `w` (the connection is closed afterwards).
pub fn write_response<W: Write>(mut w: W, resp: &Response) -> std::io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    )?;
    w.write_all(&resp.body)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &[u8]) -> Result<Request, HttpError> {
        read_request(s)
    }

    #[test]
    fn good_requests() {
        let r = parse(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/status"));
        let r = parse(b"PUT /shutdown?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!(
            (r.path.as_str(), r.body.as_slice()),
            ("/shutdown", &b"{}"[..])
        );
        let r = parse(b"PUT /pause HTTP/1.0\n\n").unwrap();
        assert_eq!(r.path, "/pause");
    }

    #[test]
    fn hostile_requests() {
        assert_eq!(parse(b""), Err(HttpError::Closed));
        assert!(matches!(
            parse(b"GET /status\r\n\r\n"),
            Err(HttpError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"get / HTTP/1.1\r\n\r\n"),
            Err(HttpError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"GET status HTTP/1.1\r\n\r\n"),
            Err(HttpError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/2\r\n\r\n"),
            Err(HttpError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(HttpError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Err(HttpError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"PUT / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n"),
            Err(HttpError::TooLarge(_))
        ));
        assert!(matches!(
            parse(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
            Err(HttpError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::BadRequest(_))
        ));
        assert_eq!(
            parse(b"PUT / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Err(HttpError::Closed)
        );
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        huge.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse(&huge), Err(HttpError::TooLarge(_))));
        let many: Vec<u8> = std::iter::once(&b"GET / HTTP/1.1\r\n"[..])
            .chain(std::iter::repeat_n(&b"A: b\r\n"[..], MAX_HEADERS + 1))
            .chain(std::iter::once(&b"\r\n"[..]))
            .flatten()
            .copied()
            .collect();
        assert!(matches!(parse(&many), Err(HttpError::TooLarge(_))));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\xff\xfe\r\n\r\n"),
            Err(HttpError::BadRequest(_))
        ));
    }

    #[test]
    fn response_format() {
        let mut out = Vec::new();
        write_response(&mut out, &Response::error(404, "no such path")).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(s.ends_with("{\"error\":\"no such path\"}"));
    }

    #[test]
    fn fuzz_http_parser() {
        let cases = 2048;
        eprintln!("fuzz http_parser: {cases} cases");
        proptest!(ProptestConfig::with_cases(cases), |(bytes in proptest::collection::vec(any::<u8>(), 0..4096))| {
            // Must return (never panic, never allocate beyond the caps).
            if let Ok(r) = parse(&bytes) {
                prop_assert!(r.body.len() <= MAX_BODY);
                prop_assert!(r.path.starts_with('/'));
            }
        });
        proptest!(ProptestConfig::with_cases(cases), |(method in "[A-Z]{1,8}", path in "/[ -~]{0,64}", body in proptest::collection::vec(any::<u8>(), 0..256))| {
            let path = path.replace(' ', "_");
            let mut req = format!("{method} {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            req.extend_from_slice(&body);
            let r = parse(&req).unwrap();
            prop_assert_eq!(r.method, method);
            prop_assert_eq!(r.body, body);
        });
    }
}
