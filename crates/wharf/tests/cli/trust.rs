//! Trust (DESIGN.md, "Trust"): `wharf verify` after a partial mirror, `copy --verify-key`, and
//! `[[trust]]` refusing podman's pull of an unsigned image. Signatures are made cosign-style:
//! `sha256-<hex>.sig` tags in CNCF distribution 2.8 (no referrers API), OCI 1.1 referrers in
//! Wharf.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use wharf_testkit::sign::{CosignKey, cosign_referrer_signature, cosign_style_signature};
use wharf_testkit::{Distribution, Podman, RegistryClient, TestImage, run_fails, run_ok, run_output};

use crate::server::{Backend, WharfServer};

fn wharf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
}

fn write_key(dir: &Path, name: &str, key: &CosignKey) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, key.public_key_pem()).unwrap();
    path
}

/// Push `image` to `repo` and sign the index and every platform with `sig` (tag or referrer
/// form), as `cosign sign` would for each digest.
fn push_signed(
    client: &RegistryClient,
    host: &str,
    repo: &str,
    image: &TestImage,
    key: &CosignKey,
    referrers: bool,
) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(client.push_image(repo, image)).unwrap();
    let docker_reference = format!("{host}/{repo}");
    let mut subjects = vec![image.index_descriptor()];
    subjects.extend(image.platforms().map(|c| c.manifest.descriptor()));
    for subject in subjects {
        let sig = if referrers {
            cosign_referrer_signature(key, &docker_reference, &subject, None)
        } else {
            cosign_style_signature(key, &docker_reference, &subject.digest)
        };
        rt.block_on(client.push_artifact(repo, &sig)).unwrap();
    }
}

fn verify_json(args: &[&str]) -> (bool, Value, String) {
    let out = run_output(wharf().arg("verify").args(args).arg("--json"));
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn verify_after_a_two_platform_copy_and_refuse_what_does_not_verify() {
    let keys = tempfile::tempdir().unwrap();
    let vendor = CosignKey::from_seed(1);
    let good = write_key(keys.path(), "cosign.pub", &vendor);
    let wrong = write_key(keys.path(), "other.pub", &CosignKey::from_seed(2));
    let (good, wrong) = (good.to_str().unwrap(), wrong.to_str().unwrap());

    // Distribution 2.8 has no referrers API: the signatures are cosign's .sig tags.
    let upstream = Distribution::start();
    let host = upstream.url().trim_start_matches("http://").to_owned();
    let image = TestImage::builder().seed(31).tag("v1").build();
    push_signed(&upstream.client(), &host, "vendor/app", &image, &vendor, false);
    let src = upstream.docker_ref("vendor/app:v1");

    // At the source every platform is present and signed.
    let (ok, report, err) = verify_json(&[&src, "--key", good]);
    assert!(ok, "{err}\n{report}");
    assert_eq!(report["signature"]["status"], "valid");
    assert!(report["platforms"].as_array().unwrap().iter().all(|p| p["present"] == true));

    // copy --verify-key with the wrong key refuses, and writes nothing at the destination.
    let server = WharfServer::start(Backend::Sqlite, "[index_policy]\ndefault = \"sparse\"\n");
    let err = run_fails(wharf().args([
        "copy",
        &src,
        &server.docker_ref("mirror/refused:v1"),
        "--platform=linux/amd64",
        "--verify-key",
        wrong,
    ]));
    assert!(err.contains("refusing to copy") && err.contains(&image.index.digest), "{err}");
    assert!(err.contains("does not verify with key"), "{err}");
    let client = RegistryClient::new(&server.addr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(rt.block_on(client.get_manifest("mirror/refused", "v1")).is_err());
    let amd64 = image.platform("linux/amd64");
    for blob in amd64.blobs() {
        assert!(!rt.block_on(client.blob_exists("mirror/refused", &blob.digest)).unwrap());
    }
    let catalog = rt
        .block_on(async { client.request(reqwest::Method::GET, "/v2/_catalog").send().await?.text().await })
        .unwrap();
    assert!(!catalog.contains("mirror/refused"), "{catalog}");

    // With the right key: two platforms, signatures and all.
    run_ok(wharf().args([
        "copy",
        &src,
        &server.docker_ref("mirror/app:v1"),
        "--platform=linux/amd64",
        "--platform=linux/arm64",
        "--verify-key",
        good,
    ]));
    let dst = server.docker_ref("mirror/app:v1");
    let (ok, report, err) = verify_json(&[&dst, "--key", good]);
    assert!(ok, "{err}\n{report}");
    assert_eq!(report["digest"], image.index.digest.as_str());
    assert_eq!(report["signature"]["status"], "valid");
    assert_eq!(report["keys"][0], report["signature"]["fingerprint"]);
    let platforms = report["platforms"].as_array().unwrap();
    let status = |p: &str| platforms.iter().find(|x| x["platform"] == p).unwrap().clone();
    for p in ["linux/amd64", "linux/arm64"] {
        assert_eq!(status(p)["present"], true, "{p}");
        assert_eq!(status(p)["signature"]["status"], "valid", "{p}");
    }
    for p in ["linux/arm/v7", "linux/s390x"] {
        assert_eq!(status(p)["present"], false, "{p}");
        assert_eq!(status(p)["signature"], Value::Null, "{p}");
    }
    // The table says the same.
    let table = String::from_utf8(run_ok(wharf().args(["verify", &dst, "--key", good]))).unwrap();
    assert!(table.contains("linux/s390x") && table.contains("absent"), "{table}");
    assert!(table.contains("2 platform(s) absent"), "{table}");

    // A wrong key fails, naming the index and the key.
    let (ok, report, err) = verify_json(&[&dst, "--key", wrong]);
    assert!(!ok);
    assert_eq!(report["signature"]["status"], "invalid");
    assert!(
        err.contains(&format!("index {}", image.index.digest)) && err.contains("does not verify with key"),
        "{err}"
    );

    // Asking for an absent platform by name fails, naming it; a present one passes.
    let (ok, _, err) = verify_json(&[&dst, "--key", good, "--platform", "linux/s390x"]);
    assert!(!ok);
    assert!(err.contains("platform linux/s390x") && err.contains("absent"), "{err}");
    let (ok, report, err) = verify_json(&[&dst, "--key", good, "--platform", "linux/arm64"]);
    assert!(ok, "{err}");
    assert_eq!(report["platforms"].as_array().unwrap().iter().filter(|p| p["checked"] == true).count(), 1);

    // A malformed key file is an error, never a pass.
    let junk = keys.path().join("junk.pub");
    std::fs::write(&junk, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
    let err = run_fails(wharf().args(["verify", &dst, "--key", junk.to_str().unwrap()]));
    assert!(err.contains("malformed public key"), "{err}");
}

#[test]
fn verify_through_referrers_and_catch_a_tampered_payload() {
    let keys = tempfile::tempdir().unwrap();
    let vendor = CosignKey::from_seed(5);
    let good = write_key(keys.path(), "cosign.pub", &vendor);
    let good = good.to_str().unwrap();
    let server = WharfServer::start(Backend::Sqlite, "");
    let client = RegistryClient::new(&server.addr);

    // Signed through the referrers API only (no .sig tags).
    let image = TestImage::builder().seed(32).tag("v1").build();
    push_signed(&client, &server.addr, "vendor/app", &image, &vendor, true);
    let (ok, report, err) = verify_json(&[&server.docker_ref("vendor/app:v1"), "--key", good]);
    assert!(ok, "{err}\n{report}");
    assert_eq!(report["platforms"].as_array().unwrap().len(), 4);

    // The amd64 signature's payload is altered after signing: that platform fails, by name.
    let other = TestImage::builder().seed(33).tag("v1").build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(client.push_image("vendor/tampered", &other)).unwrap();
    let docker_reference = format!("{}/vendor/tampered", server.addr);
    let index_sig = cosign_referrer_signature(&vendor, &docker_reference, &other.index_descriptor(), None);
    rt.block_on(client.push_artifact("vendor/tampered", &index_sig)).unwrap();
    let amd64 = other.platform("linux/amd64").manifest.descriptor();
    let forged = wharf_testkit::sign::simple_signing_payload("evil.example/app", &amd64.digest);
    let tampered = cosign_referrer_signature(&vendor, &docker_reference, &amd64, Some(forged));
    rt.block_on(client.push_artifact("vendor/tampered", &tampered)).unwrap();
    let (ok, report, err) =
        verify_json(&[&server.docker_ref("vendor/tampered:v1"), "--key", good, "--platform", "linux/amd64"]);
    assert!(!ok);
    assert_eq!(report["signature"]["status"], "valid");
    assert!(err.contains("platform linux/amd64") && err.contains("does not verify"), "{err}");
}

#[test]
fn trust_rule_refuses_podman_pulling_an_unsigned_image() {
    let keys = tempfile::tempdir().unwrap();
    let vendor = CosignKey::from_seed(7);
    let good = write_key(keys.path(), "vendor.pub", &vendor);
    let config = format!("[[trust]]\npattern = \"prod/**\"\nkeys = [{:?}]\n", good.to_str().unwrap());
    let server = WharfServer::start(Backend::Sqlite, &config);
    let client = RegistryClient::new(&server.addr);
    let rt = tokio::runtime::Runtime::new().unwrap();

    let signed = TestImage::builder().seed(34).tag("v1").build();
    // Only the index is signed: its children are pinned by it.
    rt.block_on(client.push_image("prod/signed", &signed)).unwrap();
    let sig = cosign_style_signature(&vendor, &format!("{}/prod/signed", server.addr), &signed.index.digest);
    rt.block_on(client.push_artifact("prod/signed", &sig)).unwrap();
    let unsigned = TestImage::builder().seed(35).tag("v1").build();
    rt.block_on(client.push_image("prod/unsigned", &unsigned)).unwrap();
    // Outside the pattern nothing is enforced.
    rt.block_on(client.push_image("dev/unsigned", &unsigned)).unwrap();

    let podman = Podman::new();
    let pull = |repo: &str| {
        podman.podman([
            "pull",
            "--tls-verify=false",
            "--arch",
            "amd64",
            &format!("{}/{repo}:v1", server.addr),
        ])
    };
    let err = run_fails(pull("prod/unsigned"));
    eprintln!("podman pull of an unsigned image: {err}");
    assert!(err.contains("serves only signed images") && err.contains("prod/unsigned"), "{err}");
    assert!(err.contains("no cosign signature"), "{err}");
    run_ok(pull("prod/signed"));
    run_ok(pull("dev/unsigned"));

    // The refusal is the spec's error: 403 DENIED; the signature itself stays readable.
    let resp = rt
        .block_on(
            client
                .request(reqwest::Method::GET, "/v2/prod/unsigned/manifests/v1")
                .header("Accept", wharf_testkit::ACCEPT_ALL_MANIFESTS.join(", "))
                .send(),
        )
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let body: Value = rt.block_on(resp.json()).unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    // HEAD too, also of a child by digest: pinned by the signed index, or refused with the
    // unsigned one.
    let head = |path: String| {
        rt.block_on(
            client
                .request(reqwest::Method::HEAD, &path)
                .header("Accept", wharf_testkit::ACCEPT_ALL_MANIFESTS.join(", "))
                .send(),
        )
        .unwrap()
        .status()
        .as_u16()
    };
    assert_eq!(head("/v2/prod/unsigned/manifests/v1".into()), 403);
    let child = |img: &TestImage| img.platform("linux/arm64").manifest.digest.clone();
    assert_eq!(head(format!("/v2/prod/unsigned/manifests/{}", child(&unsigned))), 403);
    assert_eq!(head(format!("/v2/prod/signed/manifests/{}", child(&signed))), 200);
    // A runnable image under a cosign-looking tag is no signature: it must verify too.
    let sneaky_tag = wharf_testkit::sign::cosign_signature_tag(&unsigned.index.digest);
    let sneaky = TestImage::builder().seed(38).tag(&sneaky_tag).build();
    rt.block_on(client.push_image("prod/sneaky", &sneaky)).unwrap();
    assert_eq!(head(format!("/v2/prod/sneaky/manifests/{sneaky_tag}")), 403);
    let sig_tag = sig.tag.clone().unwrap();
    assert!(rt.block_on(client.get_manifest("prod/signed", &sig_tag)).is_ok());

    // Signing the unsigned image later makes it pullable (the cached refusal is dropped).
    let late =
        cosign_style_signature(&vendor, &format!("{}/prod/unsigned", server.addr), &unsigned.index.digest);
    rt.block_on(client.push_artifact("prod/unsigned", &late)).unwrap();
    run_ok(pull("prod/unsigned"));
}

#[test]
fn sync_verify_key_refuses_per_image_and_layouts_verify_too() {
    let keys = tempfile::tempdir().unwrap();
    let vendor = CosignKey::from_seed(9);
    let good = write_key(keys.path(), "vendor.pub", &vendor);
    let wrong = write_key(keys.path(), "other.pub", &CosignKey::from_seed(10));
    let upstream = Distribution::start();
    let host = upstream.url().trim_start_matches("http://").to_owned();
    let app = TestImage::builder().seed(36).tag("v1").build();
    let db = TestImage::builder().seed(37).tag("v1").build();
    push_signed(&upstream.client(), &host, "team/app", &app, &vendor, false);
    push_signed(&upstream.client(), &host, "team/db", &db, &vendor, false);

    // The default key verifies team/app; team/db names another key and is refused, alone.
    let server = WharfServer::start(Backend::Sqlite, "[index_policy]\ndefault = \"sparse\"\n");
    let layout = keys.path().join("bundle");
    let config = keys.path().join("sync.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[defaults]
platforms = ["linux/arm64"]
dest = "docker://{}/mirror"
verify_key = {:?}

[[images]]
source = "docker://{host}/team/app"
tags = ["v1"]

[[images]]
source = "docker://{host}/team/db"
tags = ["v1"]
verify_key = {:?}

[[images]]
source = "docker://{host}/team/app"
tags = ["v1"]
dest = "oci:{}"
"#,
            server.addr,
            good.to_str().unwrap(),
            wrong.to_str().unwrap(),
            layout.display(),
        ),
    )
    .unwrap();
    let out = run_output(wharf().args(["sync", "--config", config.to_str().unwrap(), "--json"]));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success(), "a refused image fails the run: {report}");
    let rows = report["images"].as_array().unwrap();
    let row = |i: usize| &rows[i];
    assert_eq!(row(0)["status"], "copied", "{report}");
    assert_eq!(row(2)["status"], "copied", "{report}");
    let why = row(1)["error"].as_str().unwrap();
    assert!(
        why.contains("refusing to copy") && why.contains("team/db") && why.contains("does not verify"),
        "{why}"
    );

    // The OCI layout written by the partial copy verifies, with three platforms absent.
    let image = format!("oci:{}:team/app:v1", layout.display());
    let (ok, report, err) = verify_json(&[&image, "--key", good.to_str().unwrap()]);
    assert!(ok, "{err}\n{report}");
    let absent = report["platforms"].as_array().unwrap().iter().filter(|p| p["present"] == false).count();
    assert_eq!(absent, 3, "{report}");
}
