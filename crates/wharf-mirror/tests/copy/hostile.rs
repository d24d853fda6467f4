//! Hostile peers and hostile bundles. `wharf_mirror::copy` from a registry that misbehaves
//! on purpose (`wharf_testkit::HostileRegistry`: raw HTTP written by hand) and from
//! `oci-archive:` files built to escape: each case is survived or is a clear error, nothing is
//! written outside the destination, and nothing unverified is published there.

use std::path::Path;
use std::time::Duration;

use wharf_mirror::{CopyOptions, ImageRef};
use wharf_testkit::{Fault, HostileRegistry, TestImage, raw_tar_entry as entry};

use crate::harness::*;

fn image(seed: u64) -> TestImage {
    TestImage::builder().seed(seed).tag("v1").platforms(&["linux/amd64"]).layer_size(256 * 1024).build()
}

fn hostile_ref(r: &HostileRegistry) -> ImageRef {
    format!("docker://{}/vendor/app:v1", r.addr).parse().unwrap()
}

fn layout_ref(dir: &Path) -> ImageRef {
    format!("oci:{}:v1", dir.display()).parse().unwrap()
}

/// Few, quick retries: a test waits for behaviour, not for backoff.
fn opts(retries: u32) -> CopyOptions {
    let mut o = options(&[]);
    o.src_client.max_retries = retries;
    o
}

/// The `ref.name`s of a layout's `index.json` (none when it does not exist).
fn layout_names(dir: &Path) -> Vec<String> {
    let Ok(bytes) = std::fs::read(dir.join("index.json")) else { return Vec::new() };
    let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["annotations"][wharf_mirror::REF_NAME].as_str().map(str::to_owned))
        .collect()
}

fn layout_has_blob(dir: &Path, digest: &str) -> bool {
    dir.join("blobs/sha256").join(wharf_testkit::digest_hex(digest)).exists()
}

/// Nothing of the copy is visible in the layout: no tag, no blob under `digest`.
fn nothing_published(dir: &Path, digest: &str) {
    assert!(layout_names(dir).is_empty(), "a tag was published: {:?}", layout_names(dir));
    assert!(!layout_has_blob(dir, digest), "an unverified blob was published");
}

#[tokio::test]
async fn a_blob_cut_mid_stream_is_resumed_or_refused() {
    let img = image(71);
    let layer = img.children[0].layers[0].clone();
    let half = layer.bytes.len() / 2;
    let peer = HostileRegistry::with_image(&img);
    let dir = tempfile::tempdir().unwrap();

    // Cut once: the client resumes with a Range and the copy succeeds.
    peer.fault(Fault::Cut { path: layer.digest.clone(), after: half, times: 1 });
    let out = dir.path().join("once");
    copy(&hostile_ref(&peer), &layout_ref(&out), &opts(3)).await.unwrap();
    assert_eq!(
        std::fs::read(out.join("blobs/sha256").join(wharf_testkit::digest_hex(&layer.digest))).unwrap(),
        layer.bytes
    );
    let gets: Vec<_> = peer.seen_path(&layer.digest).into_iter().filter(|s| s.method == "GET").collect();
    assert!(gets.len() >= 2, "the cut blob was asked for again: {gets:?}");
    assert_eq!(layout_names(&out), ["v1"]);

    // Cut every time: an error that names the blob; nothing published.
    peer.clear_faults();
    peer.fault(Fault::Cut { path: layer.digest.clone(), after: half, times: usize::MAX });
    let out = dir.path().join("always");
    let err = copy(&hostile_ref(&peer), &layout_ref(&out), &opts(2)).await.unwrap_err().to_string();
    assert!(err.contains(&layer.digest) || err.contains("blob"), "{err}");
    nothing_published(&out, &layer.digest);

    // The peer recovers: the same copy again succeeds.
    peer.clear_faults();
    copy(&hostile_ref(&peer), &layout_ref(&out), &opts(2)).await.unwrap();
    assert!(layout_has_blob(&out, &layer.digest));
    assert_eq!(layout_names(&out), ["v1"]);
}

#[tokio::test]
async fn busy_answers_are_waited_for_as_retry_after_says_within_a_bound() {
    let img = image(72);
    let layer = img.children[0].layers[0].clone();
    let peer = HostileRegistry::with_image(&img);
    let dir = tempfile::tempdir().unwrap();

    // 429 twice with Retry-After: 1 on the tag: the copy waits (at least 1 s each time) and
    // succeeds.
    peer.fault(Fault::Busy {
        path: "/manifests/v1".into(),
        status: 429,
        retry_after: Some("1".into()),
        times: 2,
    });
    let out = dir.path().join("busy");
    copy(&hostile_ref(&peer), &layout_ref(&out), &opts(3)).await.unwrap();
    let tag_reqs = peer.seen_path("/manifests/v1");
    assert!(tag_reqs.len() >= 3, "{tag_reqs:?}");
    for pair in tag_reqs.windows(2).take(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_secs(1),
            "Retry-After was not honoured: {tag_reqs:?}"
        );
    }
    assert_eq!(layout_names(&out), ["v1"]);

    // 503 without end: the client gives up after its retries (bounded), with the status.
    peer.clear_faults();
    peer.fault(Fault::Busy {
        path: layer.digest.clone(),
        status: 503,
        retry_after: Some("0".into()),
        times: usize::MAX,
    });
    let out = dir.path().join("down");
    let err = copy(&hostile_ref(&peer), &layout_ref(&out), &opts(2)).await.unwrap_err().to_string();
    assert!(err.contains("503"), "{err}");
    let gets = peer.seen_path(&layer.digest).into_iter().filter(|s| s.method == "GET").count();
    assert!((1..=3 * 3).contains(&gets), "retries are bounded: {gets} GETs");
    nothing_published(&out, &layer.digest);
}

#[tokio::test]
async fn content_with_the_wrong_hash_is_refused_and_never_published() {
    let img = image(73);
    let child = &img.children[0];
    let layer = child.layers[0].clone();
    let mut wrong = layer.bytes.clone();
    let mid = wrong.len() / 2;
    wrong[mid] ^= 0xff;

    // A layer: into a layout and into a registry.
    let peer = HostileRegistry::with_image(&img);
    peer.fault(Fault::WrongBytes { path: layer.digest.clone(), bytes: wrong });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("layout");
    let err = copy(&hostile_ref(&peer), &layout_ref(&out), &opts(1)).await.unwrap_err().to_string();
    assert!(err.contains(&layer.digest), "the error names the blob: {err}");
    nothing_published(&out, &layer.digest);
    let no_temp = std::fs::read_dir(out.join("blobs/sha256"))
        .map(|d| d.into_iter().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')))
        .unwrap_or(true);
    assert!(no_temp, "a temporary file was left behind");

    let wharf = Wharf::sparse().await;
    let err = copy(&hostile_ref(&peer), &wharf.image("mirror/app:v1"), &opts(1)).await.unwrap_err();
    assert!(err.to_string().contains(&layer.digest), "{err}");
    assert!(!wharf.has_manifest("mirror/app", "v1").await);
    assert!(!wharf.has_manifest("mirror/app", &child.manifest.digest).await);
    let (status, _) = wharf.get(&format!("/v2/mirror/app/blobs/{}", layer.digest)).await;
    assert_eq!(status.as_u16(), 404, "the unverified layer is not readable");

    // A child manifest whose bytes are not its digest.
    let peer = HostileRegistry::with_image(&img);
    let mut bad = child.manifest.bytes.clone();
    bad.extend_from_slice(b" ");
    peer.fault(Fault::WrongBytes { path: child.manifest.digest.clone(), bytes: bad });
    let out = dir.path().join("manifest");
    let err = copy(&hostile_ref(&peer), &layout_ref(&out), &opts(1)).await.unwrap_err().to_string();
    assert!(err.contains(&child.manifest.digest), "{err}");
    assert!(layout_names(&out).is_empty());
    assert!(!layout_has_blob(&out, &child.manifest.digest));
}

#[tokio::test]
async fn credentials_never_follow_a_redirect_to_another_host() {
    let img = image(74);
    let child = &img.children[0];
    let (config, layer) = (child.config.clone(), child.layers[0].clone());
    let origin = HostileRegistry::with_image(&img);
    origin.require_basic("mirror", "s3cret");
    let elsewhere = HostileRegistry::with_image(&img);
    let port = elsewhere.addr.rsplit(':').next().unwrap();
    // Another port on the same address, and another host name for this machine: both are
    // another origin.
    origin.fault(Fault::Redirect {
        path: config.digest.clone(),
        location: format!("http://{}/v2/vendor/app/blobs/{}", elsewhere.addr, config.digest),
    });
    origin.fault(Fault::Redirect {
        path: layer.digest.clone(),
        location: format!("http://localhost:{port}/v2/vendor/app/blobs/{}", layer.digest),
    });
    let mut o = opts(1);
    o.src_client.credentials = Some(wharf_client::Credentials::new("mirror", "s3cret"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("layout");
    copy(&hostile_ref(&origin), &layout_ref(&out), &o).await.unwrap();
    assert!(layout_has_blob(&out, &layer.digest) && layout_has_blob(&out, &config.digest));

    // The origin got the credentials; the other host got the blob requests, never them.
    assert!(origin.seen_path("/manifests/").iter().any(|s| s.authorization.is_some()));
    let followed: Vec<_> = elsewhere.seen().into_iter().filter(|s| s.path.contains("/blobs/")).collect();
    assert!(followed.len() >= 2, "both redirects were followed: {followed:?}");
    for s in &followed {
        assert_eq!(s.authorization, None, "credentials were sent to another host: {s:?}");
    }
}

#[tokio::test]
async fn redirects_to_other_schemes_are_refused() {
    let img = image(75);
    let layer = img.children[0].layers[0].clone();
    let dir = tempfile::tempdir().unwrap();
    for (i, location) in
        ["file:///etc/passwd", "ftp://127.0.0.1:21/layer", "gopher://127.0.0.1/x"].iter().enumerate()
    {
        let peer = HostileRegistry::with_image(&img);
        peer.fault(Fault::Redirect { path: layer.digest.clone(), location: location.to_string() });
        let out = dir.path().join(format!("l{i}"));
        let err = copy(&hostile_ref(&peer), &layout_ref(&out), &opts(1)).await.unwrap_err().to_string();
        assert!(
            err.contains(&layer.digest) || err.contains("redirect") || err.contains("scheme"),
            "{location}: {err}"
        );
        nothing_published(&out, &layer.digest);
    }
}

#[tokio::test]
async fn endless_headers_are_an_error_not_a_hang() {
    let img = image(76);
    let peer = HostileRegistry::with_image(&img);
    peer.fault(Fault::EndlessHeaders { path: "/manifests/v1".into() });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("layout");
    // The bound is the test's, far above what the client needs (it refuses the head at
    // hyper's size limit); reaching it is the failure.
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        copy(&hostile_ref(&peer), &layout_ref(&out), &opts(1)),
    )
    .await
    .expect("the copy hung on endless headers");
    let err = result.unwrap_err().to_string();
    assert!(err.contains("manifests/v1") || err.contains("v1"), "{err}");
    assert!(layout_names(&out).is_empty());
}

// --- hostile archives -------------------------------------------------------------------------

/// Adds hostile entries to a tar being written.
type Evil = Box<dyn FnOnce(&mut Vec<u8>)>;

/// A real one-platform archive of `img` with `evil` entries added before the end marker.
fn evil_archive(img: &TestImage, file: &Path, evil: impl FnOnce(&mut Vec<u8>)) {
    let good = file.with_extension("good.tar");
    img.write_oci_archive(&good);
    let mut bytes = Vec::new();
    for e in tar::Archive::new(std::fs::File::open(&good).unwrap()).entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let kind = e.header().entry_type();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        entry(&mut bytes, &path, kind, &data, None);
    }
    evil(&mut bytes);
    bytes.extend_from_slice(&[0; 1024]);
    std::fs::write(file, bytes).unwrap();
}

#[tokio::test]
async fn hostile_archives_are_refused_and_write_nothing_outside() {
    use tar::EntryType::{Link, Regular, Symlink};
    let img = image(77);
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let layer = img.children[0].layers[0].digest.clone();
    let layer_path = format!("blobs/sha256/{}", wharf_testkit::digest_hex(&layer));
    let cases: Vec<(&str, Evil, &str)> = vec![
        (
            "dotdot",
            Box::new(|t: &mut Vec<u8>| entry(t, "../../escaped", Regular, b"x", None)),
            "leaves the archive",
        ),
        (
            "absolute",
            Box::new(|t: &mut Vec<u8>| entry(t, "/tmp/wharf-escaped", Regular, b"x", None)),
            "absolute",
        ),
        ("symlink", Box::new(|t: &mut Vec<u8>| entry(t, "blobs/evil", Symlink, b"", Some("/"))), "is a link"),
        (
            "hardlink",
            Box::new(move |t: &mut Vec<u8>| entry(t, "blobs/sha256/hl", Link, b"", Some("../../../victim"))),
            "is a link",
        ),
        (
            "duplicate",
            Box::new(move |t: &mut Vec<u8>| entry(t, &layer_path, Regular, b"replaced", None)),
            "appears twice",
        ),
    ];
    for (name, evil, expect) in cases {
        let file = dir.path().join(format!("{name}.tar"));
        evil_archive(&img, &file, evil);
        let out = dir.path().join(format!("out-{name}"));
        let src: ImageRef = format!("oci-archive:{}:v1", file.display()).parse().unwrap();
        let err = copy(&src, &layout_ref(&out), &opts(0)).await.unwrap_err().to_string();
        assert!(err.contains(expect) && err.contains(&file.display().to_string()), "{name}: {err}");
        nothing_published(&out, &layer);
        // Into a registry: nothing there either.
        let wharf = Wharf::sparse().await;
        assert!(copy(&src, &wharf.image("mirror/app:v1"), &opts(0)).await.is_err(), "{name}");
        assert!(wharf.catalog().await.is_empty(), "{name}: {:?}", wharf.catalog().await);
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!Path::new("/tmp/wharf-escaped").exists());
    assert!(!dir.path().join("escaped").exists() && !dir.path().parent().unwrap().join("escaped").exists());

    // Truncated inside the layer's content: an error, nothing published.
    let good = dir.path().join("good.tar");
    img.write_oci_archive(&good);
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let src: ImageRef = format!("oci-archive:{}:v1", cut.display()).parse().unwrap();
    let out = dir.path().join("out-cut");
    let err = copy(&src, &layout_ref(&out), &opts(0)).await.unwrap_err().to_string();
    assert!(err.contains(&cut.display().to_string()), "{err}");
    assert!(layout_names(&out).is_empty());

    // The untouched archive still copies (the checks refuse only what is hostile).
    let src: ImageRef = format!("oci-archive:{}:v1", good.display()).parse().unwrap();
    let out = dir.path().join("out-good");
    copy(&src, &layout_ref(&out), &opts(0)).await.unwrap();
    assert_eq!(layout_names(&out), ["v1"]);
}
