//! skopeo and podman push to and pull from Wharf; every digest survives the round trip.

use wharf_testkit::{Podman, TestImage, run_ok, skopeo, skopeo_inspect_raw};

use crate::server::{Backend, WharfServer};

fn skopeo_copy_all_round_trip(backend: Backend) {
    let server = WharfServer::start(backend, "");
    let image = TestImage::builder().seed(1).tag("v1").attestations(true).build();
    let src = tempfile::tempdir().unwrap();
    image.write_oci_layout(src.path());

    run_ok(
        skopeo(["copy", "--all", "--dest-tls-verify=false"])
            .arg(image.oci_ref(src.path()))
            .arg(server.docker_ref("team/app:v1")),
    );
    // The index and every child are served byte for byte.
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("team/app:v1")), image.index.bytes);
    for child in &image.children {
        let got = skopeo_inspect_raw(&server.docker_ref(&format!("team/app@{}", child.manifest.digest)));
        assert_eq!(got, child.manifest.bytes, "child {:?}", child.platform);
    }
    // And out again into an OCI layout, digests unchanged.
    let out = tempfile::tempdir().unwrap();
    let out_ref = format!("oci:{}:v1", out.path().display());
    run_ok(
        skopeo(["copy", "--all", "--src-tls-verify=false"])
            .arg(server.docker_ref("team/app:v1"))
            .arg(&out_ref),
    );
    assert_eq!(skopeo_inspect_raw(&out_ref), image.index.bytes);
    let listed = run_ok(skopeo(["list-tags", "--tls-verify=false"]).arg(server.docker_ref("team/app")));
    assert!(String::from_utf8_lossy(&listed).contains("\"v1\""));
}

#[test]
fn skopeo_copy_all_round_trip_sqlite() {
    skopeo_copy_all_round_trip(Backend::Sqlite);
}

#[test]
fn skopeo_copy_all_round_trip_postgres() {
    skopeo_copy_all_round_trip(Backend::Postgres);
}

#[test]
fn docker_media_types_round_trip() {
    let server = WharfServer::start(Backend::Sqlite, "");
    let image = TestImage::builder().seed(2).tag("v1").docker_media_types().build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = wharf_testkit::RegistryClient::new(&server.addr);
    rt.block_on(client.push_image("docker/app", &image)).unwrap();
    let (media_type, bytes) = rt.block_on(client.get_manifest("docker/app", "v1")).unwrap();
    assert_eq!(media_type, "application/vnd.docker.distribution.manifest.list.v2+json");
    assert_eq!(bytes, image.index.bytes);
    let out = tempfile::tempdir().unwrap();
    run_ok(
        skopeo(["copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false"])
            .arg(server.docker_ref("docker/app:v1"))
            .arg(server.docker_ref("docker/copy:v1")),
    );
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("docker/copy:v1")), image.index.bytes);
    drop(out);
}

#[test]
fn podman_push_and_pull_by_arch() {
    let server = WharfServer::start(Backend::Sqlite, "");
    let image = TestImage::builder().seed(3).tag("v1").build();
    let src = tempfile::tempdir().unwrap();
    image.write_oci_layout(src.path());
    run_ok(
        skopeo(["copy", "--all", "--dest-tls-verify=false"])
            .arg(image.oci_ref(src.path()))
            .arg(server.docker_ref("app:v1")),
    );

    let podman = Podman::new();
    let remote = format!("{}/app:v1", server.addr);
    for arch in ["arm64", "s390x"] {
        run_ok(podman.podman(["pull", "--tls-verify=false", "--arch", arch, &remote]));
        let inspect = run_ok(podman.podman(["image", "inspect", "--format", "{{.Architecture}}", &remote]));
        assert_eq!(String::from_utf8_lossy(&inspect).trim(), arch);
    }
    // podman push of what it pulled, to a new repository.
    let pushed = format!("{}/pushed/app:s390x", server.addr);
    run_ok(podman.podman(["tag", &remote, &pushed]));
    run_ok(podman.podman(["push", "--tls-verify=false", &pushed]));
    let raw = skopeo_inspect_raw(&format!("docker://{pushed}"));
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert!(manifest["layers"].as_array().is_some_and(|l| !l.is_empty()), "{manifest}");
    // And it pulls back.
    let podman2 = Podman::new();
    run_ok(podman2.podman(["pull", "--tls-verify=false", &pushed]));
}
