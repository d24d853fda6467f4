//! On-demand fill: an absent platform of a sparse index is fetched from the repository's
//! upstream when a client asks for it (CNCF distribution 2.8 as the upstream).

use wharf_testkit::{Distribution, Podman, TestImage, run_ok, skopeo, skopeo_inspect_raw};

use crate::server::{Backend, WharfServer};
use crate::sparse::inspect_json;

#[test]
fn absent_platform_is_filled_from_the_upstream_on_pull() {
    let upstream = Distribution::start();
    let image = TestImage::builder().seed(21).tag("v1").build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(upstream.client().push_image("vendor/app", &image)).unwrap();
    let config = format!(
        "[index_policy]\ndefault = \"sparse\"\n\n[[upstreams]]\npattern = \"mirror/**\"\nurl = \"docker://{}/vendor\"\n",
        upstream.addr
    );
    let server = WharfServer::start(Backend::Sqlite, &config);

    // A sparse mirror: the index and amd64 only.
    let amd = &image.platform("linux/amd64").manifest.digest;
    run_ok(
        skopeo(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
            .arg(upstream.docker_ref(&format!("vendor/app@{amd}")))
            .arg(server.docker_ref(&format!("mirror/app@{amd}"))),
    );
    run_ok(
        skopeo(["copy", "--multi-arch", "index-only", "--src-tls-verify=false", "--dest-tls-verify=false"])
            .arg(upstream.docker_ref("vendor/app:v1"))
            .arg(server.docker_ref("mirror/app:v1")),
    );
    let before = inspect_json(&server, "mirror/app:v1");
    assert_eq!(before["absent_children"], 3);

    // podman asks for s390x: Wharf fetches it (manifest, config, layers), verifies, serves.
    let podman = Podman::new();
    let remote = format!("{}/mirror/app:v1", server.addr);
    run_ok(podman.podman(["pull", "--tls-verify=false", "--arch", "s390x", &remote]));
    let after = inspect_json(&server, "mirror/app:v1");
    let present: Vec<bool> =
        after["children"].as_array().unwrap().iter().map(|c| c["present"].as_bool().unwrap()).collect();
    assert_eq!(present, vec![true, false, false, true]);
    let s390 = image.platform("linux/s390x");
    assert_eq!(
        skopeo_inspect_raw(&server.docker_ref(&format!("mirror/app@{}", s390.manifest.digest))),
        s390.manifest.bytes
    );
    assert!(server.log().is_empty() || !server.log().contains("ERROR"), "{}", server.log());
    // An upstream that cannot complete a child (a layer is gone there): the pulling client is
    // told the manifest is unknown (404), not handed a push error (400).
    let armv7 = image.platform("linux/arm/v7");
    let layer = &armv7.layers[0].digest;
    let deleted = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE"])
        .arg(format!("http://{}/v2/vendor/app/blobs/{layer}", upstream.addr))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&deleted.stdout), "202");
    let got = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .arg(format!("http://{}/v2/mirror/app/manifests/{}", server.addr, armv7.manifest.digest))
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&got.stdout).into_owned();
    assert!(got.ends_with("\n404") && got.contains("MANIFEST_UNKNOWN"), "{got}");

    // The index itself was never touched.
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("mirror/app:v1")), image.index.bytes);
}
