//! `wharf serve` over TLS (`[tls]` or `--tls-cert`/`--tls-key`) with the real clients: skopeo
//! verifying the certificate against a CA directory and not verifying it, `wharf inspect` and
//! `wharf copy` (loopback registries are probed over plain HTTP, then HTTPS), the Docker token flow over
//! HTTPS, a plain-HTTP client on the TLS port, graceful shutdown, and bad certificates or keys
//! refused at start.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use wharf_testkit::{TestImage, htpasswd_line, run_fails, run_ok, skopeo};

use crate::server::{Backend, WharfServer};

fn wharf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
}

/// A self-signed certificate for 127.0.0.1 in `dir`: `server.crt`, `server.key`, and
/// `certs/ca.crt` (the same certificate, as the CA for skopeo's `--cert-dir`). It is not a CA
/// certificate itself: rustls (wharf's client) refuses a CA certificate as a server's own.
pub(crate) struct Cert {
    cert: PathBuf,
    key: PathBuf,
    ca_dir: PathBuf,
}

pub(crate) fn self_signed(dir: &Path) -> Cert {
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    let ca_dir = dir.join("certs");
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::copy(&cert, ca_dir.join("ca.crt")).unwrap();
    Cert { cert, key, ca_dir }
}

pub(crate) fn tls_section(c: &Cert) -> String {
    format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", c.cert.display(), c.key.display())
}

/// `curl` status and body of a plain-HTTP GET.
fn curl_plain(url: &str) -> (String, String) {
    let out = run_ok(Command::new("curl").args(["-s", "--max-time", "10", "-w", "\n%{http_code}", url]));
    let text = String::from_utf8_lossy(&out).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().to_owned(), body.to_owned())
}

#[test]
fn skopeo_and_wharf_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let c = self_signed(dir.path());
    let mut server = WharfServer::start_tls(Backend::Sqlite, &tls_section(&c), &[]);
    let image = TestImage::builder().seed(61).tag("v1").build();
    let src = tempfile::tempdir().unwrap();
    image.write_oci_layout(src.path());
    let oci = image.oci_ref(src.path());
    let cert_dir = |flag: &str| format!("--{flag}={}", c.ca_dir.display());

    // skopeo verifies the certificate against the CA directory.
    run_ok(
        skopeo(["copy", "--all", &cert_dir("dest-cert-dir")]).arg(&oci).arg(server.docker_ref("team/app:v1")),
    );
    let raw = |image_ref: &str| run_ok(skopeo(["inspect", "--raw", &cert_dir("cert-dir")]).arg(image_ref));
    assert_eq!(raw(&server.docker_ref("team/app:v1")), image.index.bytes);
    for child in &image.children {
        let got = raw(&server.docker_ref(&format!("team/app@{}", child.manifest.digest)));
        assert_eq!(got, child.manifest.bytes, "child {:?}", child.platform);
    }
    // Without the CA, the certificate is refused: this really is TLS.
    let err = run_fails(skopeo(["inspect", "--raw"]).arg(server.docker_ref("team/app:v1")));
    assert!(err.contains("certificate"), "{err}");
    // Or without verification.
    run_ok(
        skopeo(["copy", "--all", "--dest-tls-verify=false"])
            .arg(&oci)
            .arg(server.docker_ref("team/other:v1")),
    );
    assert_eq!(raw(&server.docker_ref("team/other:v1")), image.index.bytes);

    // wharf inspect: plain HTTP is refused (400), so the loopback registry is used over HTTPS.
    let out =
        run_ok(wharf().args(["inspect", "--json", "--tls-verify=false", &server.docker_ref("team/app:v1")]));
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["digest"], image.index.digest.as_str(), "{report}");
    assert_eq!(report["absent_children"], 0, "{report}");
    // With verification on, the self-signed certificate is refused, and the error says why
    // (no silent fall back to plain HTTP, which the TLS port refuses).
    let err = run_fails(wharf().args(["inspect", &server.docker_ref("team/app:v1")]));
    assert!(err.contains("certificate") && err.contains("refuses plain HTTP"), "{err}");
    // With the CA in a --cert-dir (skopeo's layout), verification on succeeds.
    let out =
        run_ok(wharf().args(["inspect", "--json", &cert_dir("cert-dir"), &server.docker_ref("team/app:v1")]));
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["digest"], image.index.digest.as_str(), "{report}");

    // wharf copy, TLS registry to TLS registry (here: the same one).
    let out = run_ok(wharf().args([
        "copy",
        &server.docker_ref("team/app:v1"),
        &server.docker_ref("copied/app:v1"),
        &cert_dir("src-cert-dir"),
        &cert_dir("dest-cert-dir"),
        "--json",
    ]));
    let copied: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(copied["images"][0]["destination_digest"], image.index.digest.as_str(), "{copied}");
    assert_eq!(raw(&server.docker_ref("copied/app:v1")), image.index.bytes);

    // Plain HTTP on the TLS port: a clear 400, and the server keeps serving.
    let (code, body) = curl_plain(&format!("http://{}/v2/", server.addr));
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("use https://"), "{body}");
    let (code, _) = curl_plain(&format!("http://{}/v2/team/app/manifests/v1", server.addr));
    assert_eq!(code, "400");
    assert_eq!(raw(&server.docker_ref("team/app:v1")), image.index.bytes);

    // Graceful shutdown on SIGTERM.
    let status = server.terminate().expect("wharf serve exits on SIGTERM");
    assert!(status.success(), "{status:?}: {}", server.log());
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn token_auth_over_tls_with_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let c = self_signed(dir.path());
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, htpasswd_line("ci", "pw")).unwrap();
    let config = format!(
        "[auth]\nhtpasswd = \"{}\"\ntoken = true\n[[auth.rules]]\npattern = \"**\"\npull = [\"*\"]\npush = [\"ci\"]\n",
        htpasswd.display()
    );
    let args: [&OsStr; 4] =
        ["--tls-cert".as_ref(), c.cert.as_os_str(), "--tls-key".as_ref(), c.key.as_os_str()];
    let server = WharfServer::start_tls(Backend::Sqlite, &config, &args);
    let image = TestImage::builder().seed(62).tag("v1").build();
    let src = tempfile::tempdir().unwrap();
    image.write_oci_layout(src.path());
    let cert_dir = |flag: &str| format!("--{flag}={}", c.ca_dir.display());

    // The token endpoint advertised by default is on https, and skopeo gets its token there.
    run_ok(
        skopeo(["copy", "--all", "--dest-creds", "ci:pw", &cert_dir("dest-cert-dir")])
            .arg(image.oci_ref(src.path()))
            .arg(server.docker_ref("team/app:v1")),
    );
    // wharf copy from an OCI layout with credentials, token flow over HTTPS.
    let out = run_ok(wharf().args([
        "copy",
        &image.oci_ref(src.path()),
        &server.docker_ref("team/copy:v1"),
        "--dest-creds",
        "ci:pw",
        "--dest-tls-verify=false",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["images"][0]["destination_digest"], image.index.digest.as_str(), "{report}");
    // Anonymous pulls verify the certificate too.
    for repo in ["team/app:v1", "team/copy:v1"] {
        let got = run_ok(skopeo(["inspect", "--raw", &cert_dir("cert-dir")]).arg(server.docker_ref(repo)));
        assert_eq!(got, image.index.bytes, "{repo}");
    }
}

#[test]
fn refuses_to_start_without_a_usable_certificate_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let c = self_signed(dir.path());
    let other = tempfile::tempdir().unwrap();
    let other = self_signed(other.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let config = dir.path().join("wharf.toml");

    // `timeout`: a server that wrongly starts must not hang the test.
    let serve = |config_text: Option<&str>, flags: &[&OsStr]| {
        let mut cmd = Command::new("timeout");
        cmd.args(["20", env!("CARGO_BIN_EXE_wharf"), "serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("WHARF_LOG", "warn");
        if let Some(text) = config_text {
            std::fs::write(&config, text).unwrap();
            cmd.arg("--config").arg(&config);
        }
        run_fails(cmd.args(flags))
    };
    let flags = |cert: &Path, key: &Path| -> Vec<std::ffi::OsString> {
        vec!["--tls-cert".into(), cert.into(), "--tls-key".into(), key.into()]
    };
    let with = |cert: &Path, key: &Path| {
        let f = flags(cert, key);
        serve(None, &f.iter().map(|s| s.as_os_str()).collect::<Vec<_>>())
    };

    let err = with(&missing, &c.key);
    assert!(
        err.contains("TLS certificate") && err.contains("missing.pem") && err.contains("cannot read"),
        "{err}"
    );
    let err = with(&c.cert, &missing);
    assert!(err.contains("TLS private key") && err.contains("missing.pem"), "{err}");
    let err = with(&garbage, &c.key);
    assert!(err.contains("garbage.pem") && err.contains("no PEM certificate"), "{err}");
    let err = with(&c.cert, &garbage);
    assert!(err.contains("garbage.pem") && err.contains("no PEM private key"), "{err}");
    let err = with(&other.cert, &c.key);
    assert!(err.contains("does not belong to the certificate"), "{err}");
    // Half a configuration.
    let err = serve(None, &["--tls-cert".as_ref(), c.cert.as_os_str()]);
    assert!(err.contains("--tls-key"), "{err}");
    let err = serve(Some(&format!("[tls]\ncert = \"{}\"\n", c.cert.display())), &[]);
    assert!(err.contains("[tls] key"), "{err}");
    let err = serve(
        Some(&format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", c.cert.display(), missing.display())),
        &[],
    );
    assert!(err.contains("missing.pem"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing was created before the check");
}
