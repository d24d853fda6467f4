//! `wharf gc` and `wharf fsck` against the data dir of a running `wharf serve` (online: the
//! server keeps serving while they run), populated over HTTP.

use std::collections::BTreeSet;
use std::process::{Command, Output};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use wharf_testkit::{Blob, RegistryClient, TestImage};

use crate::server::{Backend, WharfServer};

fn wharf(server: &WharfServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .arg("--data-dir")
        .arg(server.data_dir())
        .env("WHARF_LOG", "warn")
        .output()
        .expect("run wharf")
}

fn json_ok(server: &WharfServer, args: &[&str]) -> Value {
    let out = wharf(server, args);
    assert!(out.status.success(), "wharf {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("wharf {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

fn blob_path(server: &WharfServer, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    server.data_dir().join("storage/blobs/sha256").join(&hex[..2]).join(hex)
}

#[test]
fn gc_and_fsck_run_online_against_a_served_data_dir() {
    // Background collection is accepted in the config (hourly: it does not run during the test).
    let server = WharfServer::start(Backend::Sqlite, "gc_interval_minutes = 60\n");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = RegistryClient::new(&server.addr);

    // Kept: a tagged multi-arch image.
    let app = TestImage::builder().seed(31).tag("v1").build();
    rt.block_on(client.push_image("team/app", &app)).unwrap();
    let app_blobs: BTreeSet<String> =
        app.children.iter().flat_map(|c| c.blobs().map(|b| b.digest.clone())).collect();
    // Garbage: an image whose manifest was deleted, and an upload no manifest references.
    let old = TestImage::builder().seed(32).tag("v1").build();
    let old_child = &old.children[0];
    rt.block_on(client.push_child("team/old", old_child)).unwrap();
    let resp = rt
        .block_on(
            client
                .request(Method::DELETE, &format!("/v2/team/old/manifests/{}", old_child.manifest.digest))
                .send(),
        )
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let stray = Blob::new("application/octet-stream", b"stray upload".to_vec());
    rt.block_on(client.push_blob("team/app", &stray)).unwrap();
    let mut garbage: BTreeSet<String> = old_child.blobs().map(|b| b.digest.clone()).collect();
    garbage.insert(stray.digest.clone());
    assert!(garbage.is_disjoint(&app_blobs));

    // Dry run, no grace: reports the garbage, changes nothing.
    let dry = json_ok(&server, &["gc", "--grace", "0s", "--dry-run", "--json"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["links_removed"], garbage.len());
    assert_eq!(dry["blobs_deleted"], garbage.len());
    let listed: BTreeSet<String> = dry["deleted_blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, garbage);
    assert!(rt.block_on(client.blob_exists("team/app", &stray.digest)).unwrap());

    // The default grace (1h) protects everything this young.
    let report = json_ok(&server, &["gc", "--json"]);
    assert_eq!((report["links_removed"].as_u64(), report["blobs_deleted"].as_u64()), (Some(0), Some(0)));

    // A real run, while the server serves.
    let out = wharf(&server, &["gc", "--grace", "0s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!(
            "gc: removed {} blob link(s) in 2 repositories, deleted {} blob(s)",
            garbage.len(),
            garbage.len()
        )),
        "{text}"
    );
    assert!(text.contains("team/old: unlinked"), "{text}");
    assert!(!rt.block_on(client.blob_exists("team/app", &stray.digest)).unwrap());
    for d in &garbage {
        assert!(!blob_path(&server, d).exists(), "{d} deleted");
    }
    let (_, index) = rt.block_on(client.get_manifest("team/app", "v1")).unwrap();
    assert_eq!(index, app.index.bytes);
    for d in &app_blobs {
        assert!(rt.block_on(client.blob_exists("team/app", d)).unwrap(), "{d} kept");
    }

    // fsck: clean.
    let clean = json_ok(&server, &["fsck", "--json"]);
    assert_eq!(clean["problems"], serde_json::json!([]));
    assert_eq!(clean["blobs_checked"], app_blobs.len());
    assert!(clean["manifests_checked"].as_u64().unwrap() > app.children.len() as u64);

    // One flipped byte: fsck names the blob and its repository, and fails.
    let victim = app.children[0].layers[0].digest.clone();
    let path = blob_path(&server, &victim);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let out = wharf(&server, &["fsck", "--json"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fsck found 1 problem"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["problems"][0]["kind"], "blob_corrupt");
    assert_eq!(report["problems"][0]["digest"], victim.as_str());
    assert_eq!(report["problems"][0]["repositories"], serde_json::json!(["team/app"]));
    let out = wharf(&server, &["fsck"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("corrupt blob {victim} in team/app")));

    // Pointing at a directory that is not a registry's is an error, not an empty registry.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["gc", "--data-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no blob storage"));
}
