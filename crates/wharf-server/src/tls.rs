//! TLS for the registry: rustls with the *ring* provider, the same rustls and provider that the
//! client (reqwest) already links, so there is one crypto library in the binary.
//!
//! [`TlsConfig`] reads a PEM certificate chain and private key and checks that they belong
//! together; [`TlsListener`] accepts TCP connections, runs each handshake in a task of its own
//! (with a timeout, so a slow or silent client never holds up the others) and hands finished
//! TLS streams to `axum::serve`, which keeps doing HTTP and graceful shutdown. A plain-HTTP
//! request on the TLS port gets a short `400` that says to use `https://`.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;

/// A handshake that has not finished in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a plain-HTTP request to the TLS port is told (instead of a bare connection reset).
const PLAIN_HTTP_BODY: &str = "This is a TLS port: the client sent plain HTTP; use https:// instead\n";

/// A certificate chain and private key, ready to serve.
#[derive(Clone)]
pub struct TlsConfig {
    server: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").field("alpn", &self.server.alpn_protocols).finish_non_exhaustive()
    }
}

/// Why a certificate or key cannot be served. Messages name the file and never hold key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {}: {message}", path.display())]
    Certificate { path: PathBuf, message: String },
    #[error("TLS private key {}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("TLS certificate {} with key {}: {message}", cert.display(), key.display())]
    Pair { cert: PathBuf, key: PathBuf, message: String },
}

impl TlsConfig {
    /// Read `cert` (PEM: the server certificate first, then any intermediates) and `key`
    /// (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC), and check that the key is the certificate's.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsConfig, TlsError> {
        let cert_err = |message: String| TlsError::Certificate { path: cert.to_owned(), message };
        let key_err = |message: String| TlsError::Key { path: key.to_owned(), message };

        let cert_pem = std::fs::read(cert).map_err(|e| cert_err(format!("cannot read it: {e}")))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_err(pem_message(&e)))?;
        if chain.is_empty() {
            return Err(cert_err("no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into()));
        }

        let key_pem = std::fs::read(key).map_err(|e| key_err(format!("cannot read it: {e}")))?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => key_err(
                "no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY) in the file"
                    .into(),
            ),
            e => key_err(pem_message(&e)),
        })?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pair {
                cert: cert.to_owned(),
                key: key.to_owned(),
                message: e.to_string(),
            })?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| {
                let message = match e {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        "the private key does not belong to the certificate".to_owned()
                    }
                    e => format!("cannot be used: {e}"),
                };
                TlsError::Pair { cert: cert.to_owned(), key: key.to_owned(), message }
            })?;
        // The server speaks HTTP/1.1 only (axum's `http1`).
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig { server: Arc::new(server) })
    }
}

fn pem_message(e: &pem::Error) -> String {
    match e {
        pem::Error::NoItemsFound => "no PEM item of the expected kind in the file".into(),
        e => format!("not valid PEM: {e}"),
    }
}

/// TLS connections for `axum::serve`. Accepting and handshakes run in tasks of their own;
/// dropping the listener (which `axum::serve` does when it shuts down) stops accepting.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, tls: &TlsConfig) -> io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(tls.server.clone());
        let accept_task = tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(TlsListener { ready, local_addr, accept_task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended, which it does only when aborted: nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait for some to be released.
                tracing::error!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&acceptor, tcp)).await {
                Ok(Ok(stream)) => {
                    // Fails only once the server is shutting down: the connection is dropped.
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// The TLS handshake; a client that starts with plain HTTP instead gets a 400 saying so.
async fn handshake(acceptor: &TlsAcceptor, mut tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 1 && first[0].is_ascii_uppercase() {
        // A TLS connection starts with a handshake record (0x16); "GET /v2/ ..." is HTTP.
        // Read what was sent, so that closing does not reset the connection before the
        // client has read the answer.
        let mut request = [0u8; 8192];
        let _ = tcp.read(&mut request).await;
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{PLAIN_HTTP_BODY}",
            PLAIN_HTTP_BODY.len()
        );
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await?;
        let _ = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut request)).await;
        return Err(io::Error::new(io::ErrorKind::InvalidData, "plain HTTP on the TLS port (answered 400)"));
    }
    acceptor.accept(tcp).await
}

/// Errors of one connection (not of the listening socket): the next accept may succeed.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::process::Command;

    use wharf_metadata::MetadataStore;
    use wharf_registry::{Registry, RegistryConfig};
    use wharf_storage::BlobStore;

    /// A self-signed certificate for 127.0.0.1 made by openssl: (cert.pem, key.pem). Not a CA
    /// (openssl's default): rustls, unlike Go, refuses a CA certificate as a server's own.
    fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl must be installed");
        assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
        (cert, key)
    }

    #[test]
    fn refuses_missing_invalid_and_mismatched_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path(), "a");
        let (other_cert, _) = self_signed(dir.path(), "b");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a pem file\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        let missing = dir.path().join("missing.pem");

        assert!(TlsConfig::from_pem_files(&cert, &key).is_ok());
        let err = |c: &Path, k: &Path| TlsConfig::from_pem_files(c, k).unwrap_err().to_string();

        let e = err(&missing, &key);
        assert!(
            e.contains("TLS certificate") && e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        let e = err(&cert, &missing);
        assert!(e.contains("TLS private key") && e.contains("missing.pem"), "{e}");
        let e = err(&garbage, &key);
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = err(&broken, &key);
        assert!(e.contains("broken.pem") && e.contains("not valid PEM"), "{e}");
        let e = err(&cert, &garbage);
        assert!(e.contains("no PEM private key"), "{e}");
        // Certificate and key swapped.
        let e = err(&key, &cert);
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = err(&other_cert, &key);
        assert!(e.contains("does not belong to the certificate"), "{e}");
    }

    #[tokio::test]
    async fn serves_https_answers_plain_http_and_shuts_down() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path(), "server");
        let tls = TlsConfig::from_pem_files(&cert, &key).unwrap();
        let blobs = BlobStore::open(dir.path().join("storage")).await.unwrap();
        let meta =
            MetadataStore::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display()))
                .await
                .unwrap();
        let registry = Registry::new(blobs, meta, RegistryConfig::default());
        let auth = wharf_auth::Authority::new(wharf_auth::AuthConfig {
            htpasswd: None,
            rules: vec![wharf_auth::Rule::new("open/**", &["*".into()], &[], &[]).unwrap()],
            token: Some(wharf_auth::TokenSettings::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::serve_with_tls(listener, registry, Some(auth), Some(tls), async {
            let _ = stopped.await;
        }));

        let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
        let client = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
        let resp = client.get(format!("https://{addr}/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        // The default token realm is on https, as the client came.
        let resp = client.get(format!("https://{addr}/v2/")).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with(&format!("Bearer realm=\"https://{addr}/token\"")), "{challenge}");

        // Plain HTTP: a clear 400, and the server keeps serving.
        let plain = reqwest::Client::new().get(format!("http://{addr}/v2/")).send().await.unwrap();
        assert_eq!(plain.status(), 400);
        assert!(plain.text().await.unwrap().contains("use https://"));
        // A client that does not trust the certificate fails the handshake, nothing more.
        assert!(reqwest::Client::new().get(format!("https://{addr}/healthz")).send().await.is_err());
        // A connection that never says anything does not block the others.
        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let resp = client.get(format!("https://{addr}/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), 200);

        // Graceful shutdown, with an idle keep-alive connection open.
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("shut down").unwrap().unwrap();
        // The accept task is aborted with the listener: the port closes.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "still listening after shutdown");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
