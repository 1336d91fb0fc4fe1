//! A tiny HTTP/1.1 upstream for the gateway tests (std only): every request is answered
//! with JSON describing it (method, path, forwarding headers, body length, the upstream's
//! name); a request to `/slow` is held until [`Upstream::release`] (or 10 s), and one to
//! `/stream` gets a first chunk at once and the last one after the release. Also a raw
//! client that sends any headers and returns the response's headers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::json;

/// A running upstream; its threads end with the test process.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    released: Arc<(Mutex<bool>, Condvar)>,
    held: Arc<AtomicUsize>,
}

impl Upstream {
    /// Starts an upstream named `name` on a free loopback port.
    pub fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let released = Arc::new((Mutex::new(false), Condvar::new()));
        let held = Arc::new(AtomicUsize::new(0));
        let (name, gate, count) = (name.to_string(), released.clone(), held.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (name, gate, count) = (name.clone(), gate.clone(), count.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &name, &gate, &count);
                });
            }
        });
        Upstream {
            addr,
            released,
            held,
        }
    }

    /// `/slow` and `/stream` requests held so far.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// `http://addr`, as a publication's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets every held `/slow` request (and later ones) finish.
    pub fn release(&self) {
        let (lock, cvar) = &*self.released;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
    }
}

/// Answers one connection's requests until it closes.
fn serve(
    stream: TcpStream,
    name: &str,
    gate: &(Mutex<bool>, Condvar),
    held: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let headers = read_headers(&mut reader)?;
        let body_len = if let Some(len) = headers.get("content-length") {
            let len: u64 = len.parse().unwrap_or(0);
            std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink())?
        } else if headers
            .get("transfer-encoding")
            .is_some_and(|t| t == "chunked")
        {
            read_chunked(&mut reader)?
        } else {
            0
        };
        if path.starts_with("/stream") {
            // A first chunk at once, the last one only once released: shows that the
            // response streams through rather than being collected first.
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Upstream: {name}\r\n\r\n6\r\nfirst;\r\n"
            )?;
            stream.flush()?;
            held.fetch_add(1, Ordering::SeqCst);
            let (lock, cvar) = gate;
            let released = lock.lock().unwrap_or_else(|e| e.into_inner());
            let _ = cvar.wait_timeout_while(released, Duration::from_secs(10), |r| !*r);
            write!(stream, "4\r\nlast\r\n0\r\n\r\n")?;
            stream.flush()?;
            continue;
        }
        if path.starts_with("/slow") {
            held.fetch_add(1, Ordering::SeqCst);
            let (lock, cvar) = gate;
            let released = lock.lock().unwrap_or_else(|e| e.into_inner());
            let _ = cvar.wait_timeout_while(released, Duration::from_secs(10), |r| !*r);
        }
        let body = json!({
            "upstream": name,
            "method": method,
            "path": path,
            "host": headers.get("host"),
            "x_forwarded_for": headers.get("x-forwarded-for"),
            "forwarded": headers.get("forwarded"),
            "via": headers.get("via"),
            "x_copycat_publication": headers.get("x-copycat-publication"),
            "x_copper_service": headers.get("x-copper-service"),
            "body_len": body_len,
        })
        .to_string();
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Upstream: {name}\r\n\r\n{body}",
            body.len()
        )?;
        stream.flush()?;
    }
}

/// Reads a chunked body; returns its length.
/// Reads header lines up to the empty one; names lowercased.
fn read_headers(reader: &mut impl BufRead) -> std::io::Result<BTreeMap<String, String>> {
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let header = header.trim_end();
        if header.is_empty() {
            return Ok(headers);
        }
        if let Some((k, v)) = header.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<u64> {
    let mut total = 0;
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let size = u64::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if size == 0 {
            let mut end = String::new();
            reader.read_line(&mut end)?;
            return Ok(total);
        }
        total += std::io::copy(&mut (&mut *reader).take(size), &mut std::io::sink())?;
        let mut crlf = String::new();
        reader.read_line(&mut crlf)?;
    }
}

/// A response as [`raw_request`] reads it.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: BTreeMap<String, String>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as JSON; panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends one request with `headers` (and `Connection: close`) and reads the response.
pub fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<RawResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let response_headers = read_headers(&mut reader)?;
    let mut body = Vec::new();
    if response_headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(RawResponse {
        status,
        headers: response_headers,
        body,
    })
}
