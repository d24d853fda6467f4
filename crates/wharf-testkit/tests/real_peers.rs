//! The test kit checked against the real tools: what it generates, skopeo, podman and CNCF
//! distribution 2.8 accept; what it pushes, they read back byte for byte.

use serde_json::Value;
use wharf_testkit::sign::{
    CosignKey, cosign_style_signature, referrers_tag_index, sbom_artifact, verify_cosign_signature,
};
use wharf_testkit::{
    Distribution, Podman, TestImage, media_type, run_fails, run_ok, skopeo, skopeo_inspect_raw,
};

#[test]
fn skopeo_reads_the_generated_layout_and_archive() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let img = TestImage::builder().seed(11).tag("v1").layers(2).build();
    img.write_oci_layout(&layout);

    let raw = skopeo_inspect_raw(&img.oci_ref(&layout));
    assert_eq!(raw, img.index.bytes);
    assert_eq!(wharf_testkit::sha256_digest(&raw), img.index.digest);

    // skopeo resolves the arm/v7 instance and reads its config.
    let cfg = run_ok(skopeo([
        "inspect",
        "--override-arch",
        "arm",
        "--override-variant",
        "v7",
        "--config",
        &img.oci_ref(&layout),
    ]));
    let cfg: Value = serde_json::from_slice(&cfg).unwrap();
    assert_eq!(cfg["architecture"], "arm");
    assert_eq!(cfg["variant"], "v7");

    let archive = dir.path().join("img.tar");
    img.write_oci_archive(&archive);
    let raw = skopeo_inspect_raw(&format!("oci-archive:{}:v1", archive.display()));
    assert_eq!(raw, img.index.bytes);
}

#[tokio::test]
async fn push_over_http_then_skopeo_reads_it() {
    let reg = Distribution::start();
    let img = TestImage::builder().seed(12).tag("v1").build();
    let client = reg.client();
    client.push_image("team/app", &img).await.unwrap();

    let raw = skopeo_inspect_raw(&reg.docker_ref("team/app:v1"));
    assert_eq!(raw, img.index.bytes);
    for child in &img.children {
        let raw = skopeo_inspect_raw(&reg.docker_ref(&format!("team/app@{}", child.manifest.digest)));
        assert_eq!(raw, child.manifest.bytes);
    }
    let (mt, bytes) = client.get_manifest("team/app", "v1").await.unwrap();
    assert_eq!(mt, media_type::OCI_INDEX);
    assert_eq!(bytes, img.index.bytes);
}

#[tokio::test]
async fn skopeo_copies_the_layout_into_distribution_unchanged() {
    let reg = Distribution::start();
    let dir = tempfile::tempdir().unwrap();
    let oci = TestImage::builder().seed(13).tag("oci").attestations(true).build();
    oci.write_oci_layout(dir.path());
    // skopeo 1.9 only finds OCI media types in a layout's index.json: the Docker variant goes
    // through a registry instead.
    let docker = TestImage::builder().seed(14).tag("docker").docker_media_types().build();
    reg.client().push_image("docker/app", &docker).await.unwrap();
    for (img, src) in [(&oci, oci.oci_ref(dir.path())), (&docker, reg.docker_ref("docker/app:docker"))] {
        run_ok(skopeo([
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &src,
            &reg.docker_ref(&format!("copy/app:{}", img.tag)),
        ]));
        let (mt, bytes) = reg.client().get_manifest("copy/app", &img.tag).await.unwrap();
        assert_eq!(mt, img.index.media_type);
        assert_eq!(bytes, img.index.bytes, "{} index changed", img.tag);
        for child in &img.children {
            let (_, bytes) = reg.client().get_manifest("copy/app", &child.manifest.digest).await.unwrap();
            assert_eq!(bytes, child.manifest.bytes);
        }
    }
}

#[tokio::test]
async fn distribution_refuses_an_index_with_missing_children() {
    let reg = Distribution::start();
    let img = TestImage::builder().seed(15).build();
    let client = reg.client();
    client.push_platforms("mirror/app", &img, &["linux/amd64", "linux/arm64"]).await.unwrap();
    let err = client.push_index("mirror/app", &img).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400), "{err}");
    assert!(err.body().unwrap().contains("MANIFEST_BLOB_UNKNOWN"), "{err}");
}

#[tokio::test]
async fn basic_auth_registry() {
    let reg = Distribution::start_with_basic_auth("alice", "s3cret");
    let anonymous = wharf_testkit::RegistryClient::new(&reg.addr);
    assert_eq!(anonymous.ping().await.unwrap().as_u16(), 401);
    assert_eq!(reg.client().ping().await.unwrap().as_u16(), 200);

    let img = TestImage::builder().seed(16).platforms(&["linux/amd64"]).build();
    reg.client().push_image("private/app", &img).await.unwrap();
    assert!(anonymous.get_manifest("private/app", "latest").await.is_err());

    let mut cmd = skopeo(["inspect", "--raw", "--tls-verify=false"]);
    cmd.args(reg.skopeo_creds()).arg(reg.docker_ref("private/app:latest"));
    assert_eq!(run_ok(&mut cmd), img.index.bytes);
    let err = run_fails(skopeo([
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--no-creds",
        &reg.docker_ref("private/app:latest"),
    ]));
    assert!(err.contains("unauthorized") || err.contains("authentication required"), "{err}");
}

#[tokio::test]
async fn signatures_and_sbom_live_in_distribution() {
    let reg = Distribution::start();
    let client = reg.client();
    let img = TestImage::builder().seed(17).build();
    client.push_image("signed/app", &img).await.unwrap();

    let key = CosignKey::from_seed(7);
    let reference = format!("{}/signed/app", reg.addr);
    let mut subjects = vec![img.index.digest.clone()];
    subjects.extend(img.children.iter().map(|c| c.manifest.digest.clone()));
    for subject in &subjects {
        let sig = cosign_style_signature(&key, &reference, subject);
        client.push_artifact("signed/app", &sig).await.unwrap();
    }
    let sbom = sbom_artifact(&img.index_descriptor(), 1);
    client.push_artifact("signed/app", &sbom).await.unwrap();
    let fallback = referrers_tag_index(&img.index.digest, &[&sbom.manifest]);
    client.push_artifact("signed/app", &fallback).await.unwrap();

    // Read the index signature back as a verifier would: by tag, then its payload blob.
    let sig_tag = wharf_testkit::sign::cosign_signature_tag(&img.index.digest);
    let (_, manifest) = client.get_manifest("signed/app", &sig_tag).await.unwrap();
    let layer_digest = serde_json::from_slice::<Value>(&manifest).unwrap()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let payload = client.get_blob("signed/app", &layer_digest).await.unwrap();
    verify_cosign_signature(&key.verifying_key(), &manifest, &payload, &img.index.digest).unwrap();

    let tags = run_ok(skopeo(["list-tags", "--tls-verify=false", &reg.docker_ref("signed/app")]));
    let tags: Value = serde_json::from_slice(&tags).unwrap();
    assert_eq!(tags["Tags"].as_array().unwrap().len(), 1 + subjects.len() + 1);
    let (_, sbom_bytes) = client.get_manifest("signed/app", &sbom.manifest.digest).await.unwrap();
    assert_eq!(sbom_bytes, sbom.manifest.bytes);
}

#[tokio::test]
async fn podman_pulls_by_arch_and_pushes() {
    let reg = Distribution::start();
    let img = TestImage::builder().seed(18).tag("v1").build();
    reg.client().push_image("pod/app", &img).await.unwrap();
    let podman = Podman::new();
    let image = format!("{}/pod/app:v1", reg.addr);

    for (arch, variant) in [("arm64", None), ("arm", Some("v7")), ("s390x", None)] {
        let mut cmd = podman.podman(["pull", "--quiet", "--tls-verify=false", "--arch", arch]);
        if let Some(v) = variant {
            cmd.args(["--variant", v]);
        }
        let id = String::from_utf8(run_ok(cmd.arg(&image))).unwrap();
        let inspect = run_ok(&mut podman.podman(["image", "inspect", id.trim()]));
        let inspect: Value = serde_json::from_slice(&inspect).unwrap();
        assert_eq!(inspect[0]["Architecture"], arch);
        let platform = format!("linux/{arch}{}", variant.map(|v| format!("/{v}")).unwrap_or_default());
        let want = img.platform(&platform);
        // podman records the index digest and the instance it chose.
        let repo_digests = inspect[0]["RepoDigests"].to_string();
        assert!(
            repo_digests.contains(&want.manifest.digest),
            "podman resolved {platform} to another instance: {repo_digests}"
        );
    }

    // An architecture the index does not list: podman says so.
    let err = run_fails(&mut podman.podman(["pull", "--tls-verify=false", "--arch", "ppc64le", &image]));
    assert!(err.contains("ppc64le"), "{err}");

    // Push what was pulled to another repository; it reads back as a single manifest.
    let pushed = format!("{}/pod/copy:s390x", reg.addr);
    run_ok(&mut podman.podman(["tag", &image, &pushed]));
    run_ok(&mut podman.podman(["push", "--quiet", "--tls-verify=false", &pushed]));
    let raw = skopeo_inspect_raw(&format!("docker://{pushed}"));
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert!(manifest["layers"].is_array(), "{manifest}");
}

#[tokio::test]
async fn token_auth_registry() {
    let reg = Distribution::start_with_token_auth(Some(("bob", "pw")));
    let anonymous = wharf_testkit::RegistryClient::new(&reg.addr);
    let resp = anonymous.request(reqwest::Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let issuer = reg.token_issuer.as_ref().unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains(&issuer.realm), "{challenge}");

    let img = TestImage::builder().seed(19).platforms(&["linux/amd64", "linux/arm64"]).build();
    reg.client().push_image("tok/app", &img).await.unwrap();
    assert!(
        issuer.requests().iter().any(|q| q.contains("scope=repository%3Atok%2Fapp%3Apush%2Cpull")
            || q.contains("scope=repository%3Atok%2Fapp%3Apull%2Cpush")),
        "{:?}",
        issuer.requests()
    );
    // Wrong password: the issuer refuses, so does the registry.
    let wrong = wharf_testkit::RegistryClient::new(&reg.addr).with_basic_auth("bob", "nope");
    assert_eq!(
        wrong.get_manifest("tok/app", "latest").await.unwrap_err().status().map(|s| s.as_u16()),
        Some(401)
    );

    let mut cmd = skopeo(["inspect", "--raw", "--tls-verify=false"]);
    cmd.args(reg.skopeo_creds()).arg(reg.docker_ref("tok/app:latest"));
    assert_eq!(run_ok(&mut cmd), img.index.bytes);
}

#[test]
fn buildah_builds_and_pushes_a_multiarch_image() {
    let reg = Distribution::start();
    let podman = Podman::new();
    podman.buildah_multiarch("localhost/multi:v1", &["linux/amd64", "linux/arm64/v8", "linux/arm/v7"]);
    run_ok(podman.buildah([
        "manifest",
        "push",
        "--all",
        "--quiet",
        "--tls-verify=false",
        "localhost/multi:v1",
        &reg.docker_ref("multi/app:v1"),
    ]));
    let raw = skopeo_inspect_raw(&reg.docker_ref("multi/app:v1"));
    let index: Value = serde_json::from_slice(&raw).unwrap();
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut s = format!("{}/{}", p["os"].as_str().unwrap(), p["architecture"].as_str().unwrap());
            if let Some(v) = p["variant"].as_str() {
                s = format!("{s}/{v}");
            }
            s
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"]);
}
