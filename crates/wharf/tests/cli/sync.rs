//! `wharf sync` as users run it: a config file, a CNCF distribution 2.8 upstream, a Wharf
//! destination, then the air-gapped round trip through an `oci-archive:` bundle.

use std::process::Command;

use wharf_testkit::{Distribution, TestImage, run_output, skopeo_inspect_raw};

use crate::server::{Backend, WharfServer};

fn sync(args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = run_output(Command::new(env!("CARGO_BIN_EXE_wharf")).arg("sync").args(args));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (out.status.success(), json, format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn sync_from_a_config_then_through_an_air_gapped_bundle() {
    let upstream = Distribution::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app_v1 = TestImage::builder().seed(31).tag("v1.0.0").shared_base_layer("base", 64 << 10).build();
    let app_v2 = TestImage::builder().seed(32).tag("v2.0.0").shared_base_layer("base", 64 << 10).build();
    let db = TestImage::builder().seed(33).tag("v1.0.0").shared_base_layer("base", 64 << 10).build();
    let client = upstream.client();
    for (repo, img) in [("team/app", &app_v1), ("team/app", &app_v2), ("team/db", &db)] {
        rt.block_on(client.push_image(repo, img)).unwrap();
    }
    let server = WharfServer::start(Backend::Sqlite, "[index_policy]\ndefault = \"sparse\"\n");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sync.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                r#"
[defaults]
platforms = ["linux/amd64", "linux/arm64"]
dest = "docker://{wharf}/mirror"

[[images]]
source = "docker://{up}/team/app"
tags_semver = ">=1, <2"

[[images]]
source = "docker://{up}/team/db"
tags = ["v1.0.0"]
{extra}"#,
                wharf = server.addr,
                up = upstream.addr
            ),
        )
        .unwrap()
    };
    write("");
    let cfg = config.to_str().unwrap();

    let (ok, report, text) = sync(&["--config", cfg, "--json"]);
    assert!(ok, "{text}");
    assert!(report["bytes_copied"].as_u64().unwrap() > 0, "{report}");
    assert!(report["bytes_filtered"].as_u64().unwrap() > 0, "two of four platforms were left out: {report}");
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "the semver range leaves v2.0.0 out: {report}");
    assert!(images.iter().all(|i| i["status"] == "copied"), "{report}");
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("mirror/team/app:v1.0.0")), app_v1.index.bytes);
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("mirror/team/db:v1.0.0")), db.index.bytes);

    // Nothing changed upstream: nothing moves.
    let (ok, report, text) = sync(&["--config", cfg, "--json"]);
    assert!(ok, "{text}");
    assert_eq!(report["bytes_copied"], 0, "{report}");

    // A missing tag fails by name; the rest still succeeds; the exit code says so.
    write(&format!("\n[[images]]\nsource = \"docker://{}/team/app\"\ntags = [\"v9.9.9\"]\n", upstream.addr));
    let (ok, _, text) = sync(&["--config", cfg]);
    assert!(!ok, "a failed image must make the run fail:\n{text}");
    assert!(text.contains("v9.9.9") && text.contains("team/app"), "{text}");

    // Air-gapped: into one bundle, check it, carry it, load it elsewhere.
    write("");
    let bundle = dir.path().join("bundle.tar");
    let text_config = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("docker://{}/mirror", server.addr), &format!("oci-archive:{}", bundle.display()));
    std::fs::write(&config, text_config).unwrap();
    let (ok, _, text) = sync(&["--config", cfg]);
    assert!(ok, "{text}");
    assert_eq!(
        skopeo_inspect_raw(&format!("oci-archive:{}:team/app:v1.0.0", bundle.display())),
        app_v1.index.bytes
    );
    let (ok, _, text) = sync(&["--from", bundle.to_str().unwrap(), "--verify"]);
    assert!(ok, "{text}");
    let inside = WharfServer::start(Backend::Sqlite, "[index_policy]\ndefault = \"sparse\"\n");
    let (ok, _, text) =
        sync(&["--from", bundle.to_str().unwrap(), "--to", &format!("docker://{}/airgap", inside.addr)]);
    assert!(ok, "{text}");
    assert_eq!(skopeo_inspect_raw(&inside.docker_ref("airgap/team/app:v1.0.0")), app_v1.index.bytes);
    assert_eq!(skopeo_inspect_raw(&inside.docker_ref("airgap/team/db:v1.0.0")), db.index.bytes);
}
