//! A hostile registry: a raw TCP server on 127.0.0.1 that serves an image's manifests and
//! blobs over HTTP/1.1 written by hand, and misbehaves on purpose where a [`Fault`] says so:
//! cuts a blob mid-stream, answers 429/503 with `Retry-After`, sends bytes that do not match
//! their digest, redirects elsewhere (another host, `file://`, `ftp://`), sends headers that
//! never end, or asks for basic auth. It records every request it reads ([`Seen`]), so tests
//! assert what a client sent, not how long anything took.
//!
//! No HTTP library on purpose: the hostility is the point, and a library would refuse to
//! write most of it. Each connection is answered once and closed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Blob, Manifest, TestImage};

/// One way to misbehave. Each applies to requests whose path contains `path` (a digest, a
/// tag, `/v2/`), `times` times (then the registry behaves), unless said otherwise.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Send the headers and the body up to byte `after` of the content (nothing to a request
    /// resumed past it), then close the connection.
    Cut { path: String, after: usize, times: usize },
    /// Answer `status` (429, 503) with `Retry-After: retry_after` when given.
    Busy { path: String, status: u16, retry_after: Option<String>, times: usize },
    /// Serve these bytes instead of the real ones (same length: only the hash is wrong).
    WrongBytes { path: String, bytes: Vec<u8> },
    /// Answer `307` with this `Location` (only GET: a HEAD is answered normally).
    Redirect { path: String, location: String },
    /// `200 OK`, then header lines without end (until the client hangs up, or 64 MiB).
    EndlessHeaders { path: String },
}

impl Fault {
    fn path(&self) -> &str {
        match self {
            Fault::Cut { path, .. }
            | Fault::Busy { path, .. }
            | Fault::WrongBytes { path, .. }
            | Fault::Redirect { path, .. }
            | Fault::EndlessHeaders { path } => path,
        }
    }
}

/// A request as the hostile registry read it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    pub range: Option<String>,
    /// When it was read (to check a wait was at least as long as asked: never an upper bound).
    pub at: Instant,
}

#[derive(Default)]
struct State {
    /// Repository-relative: `manifests/<tag or digest>` and `blobs/<digest>`.
    content: HashMap<String, (String, Vec<u8>)>,
    faults: Vec<(Fault, usize)>,
    seen: Vec<Seen>,
    /// `Some((user, password))`: every `/v2/` request needs these as basic auth.
    basic: Option<String>,
}

/// The server; it stops when dropped.
pub struct HostileRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl HostileRegistry {
    /// Serves nothing yet (404 to everything but `/v2/`).
    pub fn start() -> HostileRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr").to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        HostileRegistry { addr, state, stop }
    }

    /// Serves `image` (its index under its tag and by digest, every child and blob) in any
    /// repository.
    pub fn with_image(image: &TestImage) -> HostileRegistry {
        let r = HostileRegistry::start();
        r.add_manifest(&image.tag, &image.index);
        for child in &image.children {
            r.add_manifest(&child.manifest.digest, &child.manifest);
            for blob in child.blobs() {
                r.add_blob(blob);
            }
        }
        r
    }

    pub fn add_manifest(&self, reference: &str, m: &Manifest) {
        let mut s = self.state.lock().unwrap();
        s.content.insert(format!("manifests/{reference}"), (m.media_type.clone(), m.bytes.clone()));
        s.content.insert(format!("manifests/{}", m.digest), (m.media_type.clone(), m.bytes.clone()));
    }

    pub fn add_blob(&self, b: &Blob) {
        let mut s = self.state.lock().unwrap();
        s.content.insert(format!("blobs/{}", b.digest), ("application/octet-stream".into(), b.bytes.clone()));
    }

    pub fn fault(&self, f: Fault) {
        self.state.lock().unwrap().faults.push((f, 0));
    }

    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Require basic auth `user:password` on every `/v2/` request.
    pub fn require_basic(&self, user: &str, password: &str) {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.state.lock().unwrap().basic = Some(format!("Basic {token}"));
    }

    /// Every request read so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The requests read so far whose path contains `part`.
    pub fn seen_path(&self, part: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path.contains(part)).collect()
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// The fault for this request, if one still applies (counting it).
fn take_fault(state: &Mutex<State>, method: &str, path: &str) -> Option<Fault> {
    let mut s = state.lock().unwrap();
    for (f, used) in s.faults.iter_mut() {
        if !path.contains(f.path()) {
            continue;
        }
        let limit = match f {
            Fault::Cut { times, .. } | Fault::Busy { times, .. } => *times,
            Fault::Redirect { .. } if method != "GET" => continue,
            _ => usize::MAX,
        };
        if *used >= limit {
            continue;
        }
        *used += 1;
        return Some(f.clone());
    }
    None
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    // A request body (none is expected) is read and dropped.
    if let Some(n) = headers.get("content-length").and_then(|n| n.parse::<u64>().ok()) {
        std::io::copy(&mut (&mut reader).take(n), &mut std::io::sink())?;
    }
    let seen = Seen {
        method: method.clone(),
        path: path.clone(),
        authorization: headers.get("authorization").cloned(),
        range: headers.get("range").cloned(),
        at: Instant::now(),
    };
    let basic = {
        let mut s = state.lock().unwrap();
        s.seen.push(seen.clone());
        s.basic.clone()
    };
    let mut out = conn;
    if let Some(expected) = basic
        && seen.authorization.as_deref() != Some(expected.as_str())
    {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        return respond(
            &mut out,
            "401 Unauthorized",
            &[
                ("WWW-Authenticate", "Basic realm=\"hostile\"".into()),
                ("Content-Type", "application/json".into()),
            ],
            body,
            &method,
        );
    }
    let fault = take_fault(state, &method, &path);
    match fault {
        Some(Fault::Busy { status, retry_after, .. }) => {
            let reason = if status == 429 { "Too Many Requests" } else { "Service Unavailable" };
            let mut h = vec![("Content-Type", "application/json".to_owned())];
            if let Some(r) = retry_after {
                h.push(("Retry-After", r));
            }
            let body = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
            return respond(&mut out, &format!("{status} {reason}"), &h, body, &method);
        }
        Some(Fault::Redirect { location, .. }) => {
            return respond(&mut out, "307 Temporary Redirect", &[("Location", location)], b"", &method);
        }
        Some(Fault::EndlessHeaders { .. }) => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n")?;
            let junk = format!("X-Hostile: {}\r\n", "a".repeat(1000));
            for _ in 0..64 * 1024 {
                out.write_all(junk.as_bytes())?;
            }
            return Ok(());
        }
        _ => {}
    }
    if path == "/v2/" || path == "/v2" {
        return respond(
            &mut out,
            "200 OK",
            &[
                ("Content-Type", "application/json".into()),
                ("Docker-Distribution-API-Version", "registry/2.0".into()),
            ],
            b"{}",
            &method,
        );
    }
    // /v2/<name>/(manifests|blobs)/<reference>
    let key = ["/manifests/", "/blobs/"]
        .iter()
        .find_map(|k| path.rfind(k).map(|i| path[i + 1..].to_owned()))
        .unwrap_or_default();
    let found = state.lock().unwrap().content.get(&key).cloned();
    let Some((media_type, mut bytes)) = found else {
        let body = br#"{"errors":[{"code":"NOT_FOUND","message":"not in the hostile registry"}]}"#;
        return respond(
            &mut out,
            "404 Not Found",
            &[("Content-Type", "application/json".into())],
            body,
            &method,
        );
    };
    if let Some(Fault::WrongBytes { bytes: wrong, .. }) = &fault {
        bytes = wrong.clone();
    }
    let digest = key.rsplit('/').next().unwrap_or("").to_owned();
    let mut h = vec![("Content-Type", media_type)];
    if digest.starts_with("sha256:") {
        h.push(("Docker-Content-Digest", digest));
    }
    let total = bytes.len();
    let mut status = "200 OK";
    let mut start = 0;
    if let Some(first) = seen.range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| {
        let (a, _) = r.split_once('-')?;
        a.parse::<usize>().ok()
    }) && first < total
    {
        status = "206 Partial Content";
        start = first;
        h.push(("Content-Range", format!("bytes {first}-{}/{total}", total - 1)));
    }
    let body = &bytes[start..];
    if let Some(Fault::Cut { after, .. }) = fault {
        write_head(&mut out, status, &h, body.len())?;
        if method != "HEAD" {
            // `after` counts from the blob's first byte: a resumed request past it gets nothing.
            out.write_all(&body[..after.saturating_sub(start).min(body.len())])?;
        }
        out.flush()?;
        // Close without sending the rest: a reset, not a clean end.
        let _ = out.shutdown(std::net::Shutdown::Both);
        return Ok(());
    }
    respond(&mut out, status, &h, body, &method)
}

fn write_head(
    out: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    len: usize,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    method: &str,
) -> std::io::Result<()> {
    write_head(out, status, headers, body.len())?;
    if method != "HEAD" {
        out.write_all(body)?;
    }
    out.flush()
}

/// Appends one tar entry written by hand to `out` (`tar::Builder` refuses hostile paths, links
/// and names on purpose): `path`, the entry `kind`, its `data`, and a link target for links.
pub fn raw_tar_entry(out: &mut Vec<u8>, path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>) {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
    if let Some(l) = link {
        h.as_gnu_mut().unwrap().linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}
