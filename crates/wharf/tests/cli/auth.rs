//! `[auth]` with the real clients: skopeo and `wharf copy` push with credentials (basic auth
//! and the Docker token flow), anonymous pulls of public repositories, wrong credentials, and
//! `podman login` + `podman pull`.

use std::path::Path;
use std::process::Command;

use wharf_testkit::{Podman, TestImage, htpasswd_line, run_fails, run_ok, skopeo, skopeo_inspect_raw};

use crate::server::{Backend, WharfServer};

/// A Wharf with users ci/pw (pushes), dev/devpw (reads private/**); public/** is readable by
/// anyone. The htpasswd file lives in `dir`.
fn start(dir: &Path, token: bool) -> WharfServer {
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, htpasswd_line("ci", "pw") + &htpasswd_line("dev", "devpw")).unwrap();
    let config = format!(
        r#"
[auth]
htpasswd = "{}"
token = {token}

[[auth.rules]]
pattern = "public/**"
pull = ["*"]
push = ["ci"]

[[auth.rules]]
pattern = "private/**"
pull = ["authenticated"]
push = ["ci"]
"#,
        htpasswd.display()
    );
    WharfServer::start(Backend::Sqlite, &config)
}

fn wharf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
}

/// An image in an OCI layout under `dir`.
fn layout(dir: &Path, seed: u64) -> (TestImage, String) {
    let image = TestImage::builder().seed(seed).tag("v1").build();
    image.write_oci_layout(dir);
    let oci = image.oci_ref(dir);
    (image, oci)
}

fn skopeo_push_then_pull(token: bool) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), token);
    let src = tempfile::tempdir().unwrap();
    let (image, oci) = layout(src.path(), 41);

    // Without credentials: refused, and the message says so.
    let err = run_fails(
        skopeo(["copy", "--all", "--dest-tls-verify=false"])
            .arg(&oci)
            .arg(server.docker_ref("public/app:v1")),
    );
    assert!(err.to_lowercase().contains("unauthorized") || err.contains("authentication required"), "{err}");

    for repo in ["public/app:v1", "private/app:v1"] {
        run_ok(
            skopeo(["copy", "--all", "--dest-tls-verify=false", "--dest-creds", "ci:pw"])
                .arg(&oci)
                .arg(server.docker_ref(repo)),
        );
    }
    // Anonymous pulls of the public repository.
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("public/app:v1")), image.index.bytes);
    let out = tempfile::tempdir().unwrap();
    run_ok(
        skopeo(["copy", "--all", "--src-tls-verify=false"])
            .arg(server.docker_ref("public/app:v1"))
            .arg(format!("oci:{}:v1", out.path().display())),
    );
    // The private one needs a user.
    let err = run_fails(
        skopeo(["inspect", "--raw", "--tls-verify=false"]).arg(server.docker_ref("private/app:v1")),
    );
    assert!(err.to_lowercase().contains("unauthorized") || err.contains("authentication required"), "{err}");
    let raw = run_ok(
        skopeo(["inspect", "--raw", "--tls-verify=false", "--creds", "dev:devpw"])
            .arg(server.docker_ref("private/app:v1")),
    );
    assert_eq!(raw, image.index.bytes);
    let tags = run_ok(
        skopeo(["list-tags", "--tls-verify=false", "--creds", "dev:devpw"])
            .arg(server.docker_ref("private/app")),
    );
    assert!(String::from_utf8_lossy(&tags).contains("\"v1\""));
    // No secret in the server log.
    let log = server.log();
    assert!(!log.contains("devpw") && !log.contains(":pw"), "{log}");
}

#[test]
fn skopeo_pushes_with_creds_and_pulls_anonymously_token_mode() {
    skopeo_push_then_pull(true);
}

#[test]
fn skopeo_pushes_with_creds_and_pulls_anonymously_basic_mode() {
    skopeo_push_then_pull(false);
}

fn wrong_credentials_fail_clearly(token: bool) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), token);
    let src = tempfile::tempdir().unwrap();
    let (_, oci) = layout(src.path(), 42);
    let err = run_fails(
        skopeo(["copy", "--all", "--dest-tls-verify=false", "--dest-creds", "ci:wrong-password"])
            .arg(&oci)
            .arg(server.docker_ref("public/app:v1")),
    );
    assert!(!err.contains("wrong-password"), "{err}");
    if token {
        // The token endpoint's refusal, with our message.
        assert!(err.contains("invalid user name or password"), "{err}");
    } else {
        // skopeo's first authenticated request is a HEAD: no body, only the status.
        assert!(err.contains("unauthorized"), "{err}");
    }
    // A user who may not push here: denied.
    let err = run_fails(
        skopeo(["copy", "--all", "--dest-tls-verify=false", "--dest-creds", "dev:devpw"])
            .arg(&oci)
            .arg(server.docker_ref("public/app:v1")),
    );
    assert!(err.contains("denied") || err.contains("unauthorized"), "{err}");
    // wharf copy says which user was refused.
    let err = run_fails(wharf().args([
        "copy",
        &oci,
        &server.docker_ref("public/app:v1"),
        "--dest-creds",
        "ci:nope",
    ]));
    assert!(!err.contains("nope"), "{err}");
    assert!(err.contains("\"ci\""), "{err}");
}

#[test]
fn wrong_credentials_fail_clearly_token_mode() {
    wrong_credentials_fail_clearly(true);
}

#[test]
fn wrong_credentials_fail_clearly_basic_mode() {
    wrong_credentials_fail_clearly(false);
}

fn wharf_copy_with_creds(token: bool) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), token);
    let src = tempfile::tempdir().unwrap();
    let (image, oci) = layout(src.path(), 43);
    run_ok(wharf().args(["copy", &oci, &server.docker_ref("private/app:v1"), "--dest-creds", "ci:pw"]));
    let raw = run_ok(
        skopeo(["inspect", "--raw", "--tls-verify=false", "--creds", "dev:devpw"])
            .arg(server.docker_ref("private/app:v1")),
    );
    assert_eq!(raw, image.index.bytes);
    // From the private repository (as dev) to the public one (as ci), registry to registry:
    // blobs cannot be mounted across users, so they are copied.
    run_ok(wharf().args([
        "copy",
        &server.docker_ref("private/app:v1"),
        &server.docker_ref("public/app:v1"),
        "--src-creds",
        "dev:devpw",
        "--dest-creds",
        "ci:pw",
    ]));
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("public/app:v1")), image.index.bytes);
    // Anonymous reads work where the rules allow.
    let out = tempfile::tempdir().unwrap();
    run_ok(wharf().args([
        "copy",
        &server.docker_ref("public/app:v1"),
        &format!("oci:{}:v1", out.path().display()),
    ]));
    let err = run_fails(wharf().args([
        "copy",
        &server.docker_ref("private/app:v1"),
        &format!("oci:{}:v2", out.path().display()),
    ]));
    let lower = err.to_lowercase();
    assert!(lower.contains("requires a user name and password") || lower.contains("unauthorized"), "{err}");
    assert!(err.contains("were given"), "{err}");
}

#[test]
fn wharf_copy_with_creds_token_mode() {
    wharf_copy_with_creds(true);
}

#[test]
fn wharf_copy_with_creds_basic_mode() {
    wharf_copy_with_creds(false);
}

fn podman_login_then_pull(token: bool) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), token);
    let src = tempfile::tempdir().unwrap();
    let (_, oci) = layout(src.path(), 44);
    run_ok(
        skopeo(["copy", "--all", "--dest-tls-verify=false", "--dest-creds", "ci:pw"])
            .arg(&oci)
            .arg(server.docker_ref("private/app:v1")),
    );
    let podman = Podman::new();
    let authfile = podman.dir().join("auth.json");
    let authfile = authfile.to_str().unwrap();
    let remote = format!("{}/private/app:v1", server.addr);

    // A wrong password does not log in.
    let err = run_fails(podman.podman([
        "login",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "-u",
        "dev",
        "-p",
        "wrong",
        &server.addr,
    ]));
    assert!(err.contains("invalid") || err.contains("unauthorized"), "{err}");
    // Without logging in, the private image does not pull.
    run_fails(podman.podman([
        "pull",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "--arch",
        "amd64",
        &remote,
    ]));

    run_ok(podman.podman([
        "login",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "-u",
        "dev",
        "-p",
        "devpw",
        &server.addr,
    ]));
    run_ok(podman.podman(["pull", "--tls-verify=false", "--authfile", authfile, "--arch", "amd64", &remote]));
    let arch = run_ok(podman.podman(["image", "inspect", "--format", "{{.Architecture}}", &remote]));
    assert_eq!(String::from_utf8_lossy(&arch).trim(), "amd64");
}

#[test]
fn podman_login_then_pull_token_mode() {
    podman_login_then_pull(true);
}

#[test]
fn podman_login_then_pull_basic_mode() {
    podman_login_then_pull(false);
}
