//! Issue 3 with real clients: two of four platforms copied by digest with skopeo, then the
//! index alone with `--multi-arch index-only`, under each index policy.

use wharf_testkit::{Distribution, Podman, TestImage, run_fails, run_ok, skopeo, skopeo_inspect_raw};

use crate::server::{Backend, WharfServer};

const POLICIES: &str = r#"
[index_policy]
default = "complete"

[[index_policy.repositories]]
pattern = "mirror/**"
policy = "sparse"

[[index_policy.repositories]]
pattern = "prod/ok/**"
require = ["linux/amd64", "linux/arm64"]

[[index_policy.repositories]]
pattern = "prod/strict/**"
require = ["linux/amd64", "linux/s390x"]
"#;

/// Copy the amd64 and arm64 children of `image` by digest from `upstream` into `repo`,
/// then try the index alone.
fn copy_two_then_index(
    server: &WharfServer,
    upstream: &Distribution,
    image: &TestImage,
    repo: &str,
) -> std::process::Output {
    for p in ["linux/amd64", "linux/arm64"] {
        let digest = &image.platform(p).manifest.digest;
        run_ok(
            skopeo(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
                .arg(upstream.docker_ref(&format!("vendor/app@{digest}")))
                .arg(server.docker_ref(&format!("{repo}@{digest}"))),
        );
    }
    wharf_testkit::run_output(
        skopeo(["copy", "--multi-arch", "index-only", "--src-tls-verify=false", "--dest-tls-verify=false"])
            .arg(upstream.docker_ref("vendor/app:v1"))
            .arg(server.docker_ref(&format!("{repo}:v1"))),
    )
}

fn policies_with_real_clients(backend: Backend) {
    let server = WharfServer::start(backend, POLICIES);
    let image = TestImage::builder().seed(7).tag("v1").build();
    let upstream = Distribution::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(upstream.client().push_image("vendor/app", &image)).unwrap();

    // complete: refused, naming the two missing platforms.
    let out = copy_two_then_index(&server, &upstream, &image, "plain/app");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("linux/arm/v7") && err.contains("linux/s390x"), "skopeo said: {err}");

    // sparse: accepted, same digest.
    let out = copy_two_then_index(&server, &upstream, &image, "mirror/app");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("mirror/app:v1")), image.index.bytes);

    // require satisfied by amd64 + arm64: accepted.
    let out = copy_two_then_index(&server, &upstream, &image, "prod/ok/app");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // require needing s390x: refused, naming only s390x.
    let out = copy_two_then_index(&server, &upstream, &image, "prod/strict/app");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("linux/s390x") && !err.contains("linux/arm/v7"), "skopeo said: {err}");

    // podman: a present platform pulls; an absent one fails with the registry's message.
    let podman = Podman::new();
    let remote = format!("{}/mirror/app:v1", server.addr);
    run_ok(podman.podman(["pull", "--tls-verify=false", "--arch", "arm64", &remote]));
    let err = run_fails(podman.podman(["pull", "--tls-verify=false", "--arch", "s390x", &remote]));
    assert!(
        err.contains("platform linux/s390x of index") && err.contains("not in this registry"),
        "podman said: {err}"
    );

    // Late fill: copy s390x by digest, then it is present and pulls.
    let s390 = image.platform("linux/s390x");
    run_ok(
        skopeo(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
            .arg(upstream.docker_ref(&format!("vendor/app@{}", s390.manifest.digest)))
            .arg(server.docker_ref(&format!("mirror/app@{}", s390.manifest.digest))),
    );
    run_ok(podman.podman(["pull", "--tls-verify=false", "--arch", "s390x", &remote]));
    let report = inspect_json(&server, "mirror/app:v1");
    let present: Vec<(String, bool)> = report["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["platform"].as_str().unwrap().to_owned(), c["present"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        present,
        vec![
            ("linux/amd64".into(), true),
            ("linux/arm64".into(), true),
            ("linux/arm/v7".into(), false),
            ("linux/s390x".into(), true)
        ]
    );
}

/// `wharf inspect --json` of an image on `server`.
pub fn inspect_json(server: &WharfServer, image: &str) -> serde_json::Value {
    let out = run_ok(std::process::Command::new(env!("CARGO_BIN_EXE_wharf")).args([
        "inspect",
        "--json",
        &format!("docker://{}/{image}", server.addr),
    ]));
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn policies_with_real_clients_sqlite() {
    policies_with_real_clients(Backend::Sqlite);
}

#[test]
fn policies_with_real_clients_postgres() {
    policies_with_real_clients(Backend::Postgres);
}

#[test]
fn sparse_support_is_announced_and_logged() {
    let server = WharfServer::start(Backend::Sqlite, POLICIES);
    let resp = sparse_header(&format!("http://{}/v2/", server.addr));
    assert_eq!(resp, "true");
    let log = server.log();
    assert!(log.contains("sparse indexes are accepted in") && log.contains("mirror/**"), "{log}");
    let plain = WharfServer::start(Backend::Sqlite, "");
    assert_eq!(sparse_header(&format!("http://{}/v2/", plain.addr)), "false");
}

/// The `X-Sparse-Manifest-Support` header of `GET url`.
fn sparse_header(url: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let resp = reqwest::get(url).await.unwrap();
        resp.headers()["x-sparse-manifest-support"].to_str().unwrap().to_owned()
    })
}
