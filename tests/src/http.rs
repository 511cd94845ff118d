//! A tiny blocking HTTP/1.1 client for the tests: the VMM's API socket (Unix), the control API
//! and chromedriver's WebDriver port (JSON over plain TCP on loopback) all speak it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

/// A reply: status code and the body parsed as JSON (`Null` when it is not JSON).
pub type Reply = (u16, Value);

/// `method path` on `addr` (`host:port`) with optional bearer `token` and JSON `body`.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<Reply> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request_with(addr, method, path, &headers, body)
}

/// Like [`request`] with arbitrary extra `headers` (`Connection: close` unless given).
pub fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<Reply> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let (status, payload) = exchange(&mut s, addr, method, path, headers, body.as_bytes())
        .with_context(|| format!("{method} {path} on {addr}"))?;
    Ok((
        status,
        serde_json::from_slice(&payload).unwrap_or(Value::Null),
    ))
}

/// Send one request on `stream` and read its reply: the status and the body, delimited by
/// Content-Length, chunked encoding, or EOF. Some servers (chromedriver) keep the connection
/// open despite `Connection: close`, so EOF is only the last resort.
pub fn exchange<S: Read + Write>(
    stream: &mut S,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>)> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("connection"))
    {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;

    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP status line {status_line:?}"))?;
    let (mut content_length, mut chunked) = (None, false);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.trim().eq_ignore_ascii_case("chunked");
            }
        }
    }
    let mut reply = Vec::new();
    match (content_length, chunked) {
        (Some(n), _) => {
            reply.resize(n, 0);
            reader.read_exact(&mut reply)?;
        }
        (None, true) => loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| anyhow!("bad chunk size line {size:?}"))?;
            let mut chunk = vec![0; n + 2]; // the chunk and its CRLF
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&chunk[..n]);
        },
        (None, false) => {
            reader.read_to_end(&mut reply)?;
        }
    }
    Ok((status, reply))
}
