//! The registry's on-demand fill and pull-through against a hostile upstream
//! (`wharf_testkit::HostileRegistry`, raw HTTP written by hand): cut blobs, 429/503 with
//! `Retry-After`, redirects to other schemes and endless headers are each an error for the
//! client (or survived), never a hang, and nothing unverified is stored: once the upstream
//! behaves, the same request fetches again and succeeds.

use wharf_testkit::{Fault, HostileRegistry, TestImage};

use crate::server::{Backend, WharfServer};

/// `curl -s -m 120 URL`: (status code, body bytes, curl's exit code).
fn get(url: &str) -> (u16, Vec<u8>, i32) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "120", "-o", "-", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let mut body = out.stdout;
    let split = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&body[split..]).trim().parse().unwrap_or(0);
    body.truncate(split);
    (code, body, out.status.code().unwrap_or(-1))
}

#[test]
fn a_hostile_upstream_never_gets_unverified_content_stored() {
    let img =
        TestImage::builder().seed(81).tag("v1").platforms(&["linux/amd64"]).layer_size(256 * 1024).build();
    let child = &img.children[0];
    let layer = child.layers[0].clone();
    let upstream = HostileRegistry::with_image(&img);
    let server = WharfServer::start(
        Backend::Sqlite,
        &format!(
            "[index_policy]\ndefault = \"sparse\"\n\n[[upstreams]]\npattern = \"hub/**\"\n\
             url = \"docker://{}/vendor\"\nproxy_tags = true\n",
            upstream.addr
        ),
    );
    let url = |what: &str| format!("http://{}/v2/hub/app/{what}", server.addr);
    let ok = |what: &str, digest: &str| {
        let (code, body, _) = get(&url(what));
        assert_eq!(code, 200, "{what}: {}", String::from_utf8_lossy(&body));
        assert_eq!(wharf_testkit::sha256_digest(&body), digest, "{what}");
    };

    // 429 once with Retry-After: the fill waits and succeeds.
    upstream.fault(Fault::Busy {
        path: "/manifests/v1".into(),
        status: 429,
        retry_after: Some("1".into()),
        times: 1,
    });
    ok("manifests/v1", &img.index.digest);
    assert!(upstream.seen_path("/manifests/v1").len() >= 2);

    // A blob cut mid-stream on every try: the client never gets a whole 200 body, and nothing
    // is stored; once the upstream behaves, the same GET fills it whole.
    upstream.fault(Fault::Cut {
        path: layer.digest.clone(),
        after: layer.bytes.len() / 2,
        times: usize::MAX,
    });
    let (code, body, exit) = get(&url(&format!("blobs/{}", layer.digest)));
    assert!(
        code != 200 || exit != 0 || body.len() < layer.bytes.len(),
        "a cut blob was served whole: {code} {exit}"
    );
    upstream.clear_faults();
    let before = upstream.seen_path(&layer.digest).len();
    ok(&format!("blobs/{}", layer.digest), &layer.digest);
    assert!(upstream.seen_path(&layer.digest).len() > before, "the blob was fetched again, not kept cut");

    // 503 forever on a child manifest: an error (bounded by the client's retries), not a hang.
    upstream.fault(Fault::Busy {
        path: child.manifest.digest.clone(),
        status: 503,
        retry_after: Some("0".into()),
        times: usize::MAX,
    });
    let (code, _, exit) = get(&url(&format!("manifests/{}", child.manifest.digest)));
    assert_eq!(exit, 0, "curl timed out: the fill hung");
    assert!(code >= 400, "{code}");
    upstream.clear_faults();
    ok(&format!("manifests/{}", child.manifest.digest), &child.manifest.digest);

    // A redirect to file:// for a blob not filled yet: refused; nothing stored.
    let other = TestImage::builder().seed(82).tag("v2").platforms(&["linux/amd64"]).build();
    upstream.add_manifest("v2", &other.index);
    let config = other.children[0].config.clone();
    upstream.add_blob(&config);
    upstream.fault(Fault::Redirect { path: config.digest.clone(), location: "file:///etc/passwd".into() });
    let (code, body, _) = get(&url(&format!("blobs/{}", config.digest)));
    assert!(code >= 400 || body != config.bytes, "{code}");
    assert!(!String::from_utf8_lossy(&body).contains("root:"), "a local file was served");
    upstream.clear_faults();
    ok(&format!("blobs/{}", config.digest), &config.digest);

    // Endless headers: an error, within the bound (curl -m 120).
    upstream.fault(Fault::EndlessHeaders { path: "/manifests/v2".into() });
    let (code, _, exit) = get(&url("manifests/v2"));
    assert_eq!(exit, 0, "curl timed out: the fill hung on endless headers");
    assert!(code >= 400, "{code}");
    upstream.clear_faults();
    ok("manifests/v2", &other.index.digest);
}
