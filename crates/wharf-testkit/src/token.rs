//! A minimal Docker token issuer (the `auth.token` flow of CNCF distribution): ES256 JWTs signed
//! with a P-256 key whose self-signed certificate (made with the `openssl` CLI) is the
//! registry's `rootcertbundle`. Runs on a loopback port in a background thread.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as B64URL};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::{require_tool, run_ok};

/// The `service` and `issuer` names the registry is configured with.
pub const TOKEN_SERVICE: &str = "wharf-testkit";
pub const TOKEN_ISSUER: &str = "wharf-testkit-issuer";

/// A token endpoint at `http://127.0.0.1:PORT/token`. Anonymous requests get tokens when it
/// has no credentials; otherwise basic auth must match. Every requested scope is granted.
pub struct TokenIssuer {
    /// `http://127.0.0.1:PORT/token`.
    pub realm: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    addr: String,
    thread: Option<JoinHandle<()>>,
}

impl TokenIssuer {
    /// Writes `cert.pem` (the registry's root certificate bundle) into `dir` and starts serving.
    /// Also an external token service for Wharf (`[auth] token_keys = [".../cert.pem"]`).
    pub fn start(dir: &Path, credentials: Option<(String, String)>) -> TokenIssuer {
        let key = SigningKey::from_bytes(&Sha256::digest(b"wharf-testkit token issuer key"))
            .expect("valid P-256 scalar");
        let key_pem = dir.join("token-key.pem");
        let pem = key.to_pkcs8_pem(LineEnding::LF).expect("encode key");
        std::fs::write(&key_pem, pem.as_bytes()).expect("write key");
        run_ok(
            Command::new(require_tool("openssl"))
                .args(["req", "-x509", "-new", "-key"])
                .arg(&key_pem)
                .args(["-subj", "/CN=wharf-testkit token issuer", "-days", "2", "-out"])
                .arg(dir.join("cert.pem")),
        );
        let spki = key.verifying_key().to_public_key_der().expect("encode public key");
        let kid = libtrust_key_id(spki.as_bytes());

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token issuer");
        let addr = listener.local_addr().expect("local addr").to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let _ = serve(stream, &key, &kid, credentials.as_ref(), &requests);
                    }
                }
            })
        };
        TokenIssuer { realm: format!("http://{addr}/token"), requests, stop, addr, thread: Some(thread) }
    }

    /// The query strings of every token request so far (to check scopes and caching).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    stream: TcpStream,
    key: &SigningKey,
    kid: &str,
    credentials: Option<&(String, String)>,
    requests: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_owned());
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    requests.lock().expect("lock").push(query.to_owned());

    let (user, authorized) = match credentials {
        None => (String::new(), true),
        Some((u, p)) => {
            let expected = format!("Basic {}", BASE64.encode(format!("{u}:{p}")));
            (u.clone(), authorization.as_deref() == Some(expected.as_str()))
        }
    };
    let mut out = stream;
    if !authorized {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
        return write!(
            out,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    let access: Vec<serde_json::Value> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("scope="))
        .map(percent_decode)
        .filter_map(|scope| {
            // type:name:actions, where name may itself hold ':' (a port)
            let (rest, actions) = scope.rsplit_once(':')?;
            let (kind, name) = rest.split_once(':')?;
            Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
    let claims = json!({
        "iss": TOKEN_ISSUER,
        "sub": user,
        "aud": TOKEN_SERVICE,
        "exp": now + 600,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", requests.lock().expect("lock").len()),
        "access": access,
    });
    let signing_input =
        format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
    let sig: Signature = key.sign(signing_input.as_bytes());
    let token = format!("{signing_input}.{}", B64URL.encode(sig.to_bytes()));
    let body = json!({"token": token, "access_token": token, "expires_in": 600}).to_string();
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// libtrust's key ID (what distribution matches a token's `kid` against): the SHA-256 of the
/// DER SubjectPublicKeyInfo, first 240 bits, base32, in 12 groups of 4 joined by ':'.
fn libtrust_key_id(spki_der: &[u8]) -> String {
    let hash = Sha256::digest(spki_der);
    let b32 = base32(&hash[..30]);
    b32.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).expect("ascii")).collect::<Vec<_>>().join(":")
}

fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buffer >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some(hex(bytes[i + 1])? * 16 + hex(bytes[i + 2])?))
            .flatten();
        match (decoded, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_and_key_id_shape() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        let id = libtrust_key_id(b"anything");
        assert_eq!(id.len(), 48 + 11);
        assert_eq!(id.split(':').count(), 12);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("repository%3Ateam%2Fapp%3Apull%2Cpush"), "repository:team/app:pull,push");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
