//! Streaming, single-flight fill and pull-through by tag, against a scripted upstream whose
//! blob body the test feeds chunk by chunk: the order of events is under the test's control,
//! never a timing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use wharf_metadata::MetadataStore;
use wharf_oci::{Digest, Reference, RepoName};
use wharf_registry::{
    BoxFuture, Registry, RegistryConfig, RegistryError, RepoPattern, Upstream, UpstreamBlob,
    UpstreamManifest, UpstreamRule,
};
use wharf_storage::{BlobStore, BodyStream};

#[derive(Default)]
struct Scripted {
    blob_calls: AtomicUsize,
    /// The next blob's size and body, handed out once.
    blob: Mutex<Option<(u64, BodyStream)>>,
    manifests: Mutex<HashMap<String, UpstreamManifest>>,
    manifest_calls: AtomicUsize,
    down: AtomicBool,
}

impl Upstream for Scripted {
    fn describe(&self) -> String {
        "scripted.example/vendor".into()
    }

    fn manifest<'a>(
        &'a self,
        _repo: &'a RepoName,
        reference: &'a Reference,
    ) -> BoxFuture<'a, Result<Option<UpstreamManifest>, String>> {
        self.manifest_calls.fetch_add(1, Ordering::SeqCst);
        let r = if self.down.load(Ordering::SeqCst) {
            Err("connection refused".to_owned())
        } else {
            Ok(self.manifests.lock().unwrap().get(&reference.to_string()).cloned())
        };
        Box::pin(async move { r })
    }

    fn blob<'a>(
        &'a self,
        _repo: &'a RepoName,
        _digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<UpstreamBlob>, String>> {
        self.blob_calls.fetch_add(1, Ordering::SeqCst);
        let b = self.blob.lock().unwrap().take();
        Box::pin(async move { Ok(b.map(|(size, body)| UpstreamBlob { size: Some(size), body })) })
    }
}

struct Ctx {
    registry: Registry,
    upstream: Arc<Scripted>,
    _dir: tempfile::TempDir,
}

async fn ctx(proxy_tags: bool, ttl: Duration) -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path().join("storage")).await.unwrap();
    let meta = MetadataStore::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display()))
        .await
        .unwrap();
    let upstream = Arc::new(Scripted::default());
    let rule = UpstreamRule {
        proxy_tags,
        tag_ttl: ttl,
        ..UpstreamRule::new(RepoPattern::new("hub/**"), upstream.clone())
    };
    let config = RegistryConfig { upstreams: vec![rule], ..Default::default() };
    Ctx { registry: Registry::new(blobs, meta, config), upstream, _dir: dir }
}

/// A blob body the test feeds: `(sender, stream)`.
fn fed() -> (mpsc::Sender<std::io::Result<Bytes>>, BodyStream) {
    let (tx, rx) = mpsc::channel(4);
    (tx, Box::pin(futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|c| (c, rx)) })))
}

fn repo() -> RepoName {
    "hub/app".parse().unwrap()
}

/// Read from `body` until `n` bytes have arrived.
async fn take(body: &mut BodyStream, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        got.extend_from_slice(&body.next().await.expect("more bytes").expect("no error"));
    }
    got
}

#[tokio::test]
async fn readers_get_bytes_before_the_upstream_is_done_and_share_one_fetch() {
    let c = ctx(false, Duration::ZERO).await;
    let content: Vec<u8> = (0..3 * 100_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::sha256_of(&content);
    let (feed, body) = fed();
    *c.upstream.blob.lock().unwrap() = Some((content.len() as u64, body));

    let mut first = c.registry.read_blob(&repo(), &digest, None).await.unwrap();
    assert_eq!(first.len, content.len() as u64);
    feed.send(Ok(Bytes::copy_from_slice(&content[..100_000]))).await.unwrap();
    // The first reader has the first chunk while the upstream has sent a third of the blob.
    assert_eq!(take(&mut first.body, 100_000).await, &content[..100_000]);

    // A second reader joins late and starts from byte 0, from the same fetch.
    let mut second = c.registry.read_blob(&repo(), &digest, None).await.unwrap();
    assert_eq!(take(&mut second.body, 100_000).await, &content[..100_000]);
    // A range read joins too.
    let ranged = c.registry.read_blob(&repo(), &digest, Some((250_000, None))).await.unwrap();
    assert_eq!((ranged.start, ranged.len), (250_000, 50_000));

    feed.send(Ok(Bytes::copy_from_slice(&content[100_000..]))).await.unwrap();
    drop(feed);
    let rest = |mut b: BodyStream| async move {
        let mut v = Vec::new();
        while let Some(chunk) = b.next().await {
            v.extend_from_slice(&chunk.unwrap());
        }
        v
    };
    let (a, b, r) = tokio::join!(rest(first.body), rest(second.body), rest(ranged.body));
    assert_eq!(a, &content[100_000..]);
    assert_eq!(b, &content[100_000..]);
    assert_eq!(r, &content[250_000..]);
    assert_eq!(c.upstream.blob_calls.load(Ordering::SeqCst), 1);
    // Stored and linked: later reads do not ask the upstream.
    assert_eq!(c.registry.blob_size(&repo(), &digest, true).await.unwrap(), content.len() as u64);
    assert_eq!(c.upstream.blob_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_wrong_hash_ends_the_body_with_an_error_before_its_last_byte() {
    let c = ctx(false, Duration::ZERO).await;
    let content = vec![7u8; 10_000];
    let digest = Digest::sha256_of(&content);
    let (feed, body) = fed();
    *c.upstream.blob.lock().unwrap() = Some((content.len() as u64, body));
    let mut read = c.registry.read_blob(&repo(), &digest, None).await.unwrap();
    let mut wrong = content.clone();
    wrong[5_000] = 8;
    feed.send(Ok(Bytes::from(wrong))).await.unwrap();
    drop(feed);
    let mut got = 0usize;
    let mut failed = false;
    while let Some(chunk) = read.body.next().await {
        match chunk {
            Ok(b) => got += b.len(),
            Err(_) => failed = true,
        }
    }
    assert!(failed, "the body must end with an error");
    assert!(got < content.len(), "the last byte is never sent: got {got}");
    assert!(c.registry.metadata().linked_blob_size(&repo(), &digest).await.unwrap().is_none());
    assert!(c.registry.blob_store().stat(&digest).await.unwrap().is_none());
    // Nothing stored: the next request asks the upstream again (which now has nothing).
    assert!(matches!(
        c.registry.blob_size(&repo(), &digest, true).await,
        Err(RegistryError::BlobUnknown { .. })
    ));
    assert_eq!(c.upstream.blob_calls.load(Ordering::SeqCst), 2);
}

fn index(child: &str) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":123,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        Digest::sha256_of(child.as_bytes())
    )
    .into_bytes()
}

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[tokio::test]
async fn tags_pull_through_within_their_ttl() {
    let c = ctx(true, Duration::from_secs(3600)).await;
    let v1: Reference = "v1".parse().unwrap();
    let (a, b) = (index("a"), index("b"));
    c.upstream.manifests.lock().unwrap().insert("v1".into(), (INDEX.into(), a.clone()));

    // Absent here: asked upstream, stored as received (sparse, though the default is complete).
    let got = c.registry.get_manifest(&repo(), &v1).await.unwrap();
    assert_eq!(&got.content[..], &a[..]);
    assert_eq!(c.upstream.manifest_calls.load(Ordering::SeqCst), 1);
    // Within the TTL: not asked again, even though the upstream moved the tag.
    c.upstream.manifests.lock().unwrap().insert("v1".into(), (INDEX.into(), b.clone()));
    assert_eq!(&c.registry.stat_manifest(&repo(), &v1, true).await.unwrap().0, &got.digest);
    assert_eq!(c.upstream.manifest_calls.load(Ordering::SeqCst), 1);

    // Unknown here and upstream: 404 naming the upstream.
    match c.registry.get_manifest(&repo(), &"nope".parse().unwrap()).await {
        Err(RegistryError::ManifestUnknown { message }) => {
            assert!(message.contains("scripted.example"), "{message}")
        }
        other => panic!("{:?}", other.map(|m| m.digest)),
    }
}

#[tokio::test]
async fn an_expired_tag_is_refreshed_and_served_from_here_when_the_upstream_is_down() {
    let c = ctx(true, Duration::ZERO).await;
    let v1: Reference = "v1".parse().unwrap();
    let (a, b) = (index("a"), index("b"));
    c.upstream.manifests.lock().unwrap().insert("v1".into(), (INDEX.into(), a.clone()));
    assert_eq!(&c.registry.get_manifest(&repo(), &v1).await.unwrap().content[..], &a[..]);
    c.upstream.manifests.lock().unwrap().insert("v1".into(), (INDEX.into(), b.clone()));
    assert_eq!(&c.registry.get_manifest(&repo(), &v1).await.unwrap().content[..], &b[..]);
    c.upstream.down.store(true, Ordering::SeqCst);
    assert_eq!(&c.registry.get_manifest(&repo(), &v1).await.unwrap().content[..], &b[..]);
    match c.registry.get_manifest(&repo(), &"v2".parse().unwrap()).await {
        Err(RegistryError::ManifestUnknown { message }) => {
            assert!(message.contains("could not be"), "{message}")
        }
        other => panic!("{:?}", other.map(|m| m.digest)),
    }
}

#[tokio::test]
async fn a_reader_left_behind_by_the_fill_continues_from_the_store() {
    let c = ctx(false, Duration::ZERO).await;
    // More than the fill keeps in memory for its readers.
    let content: Vec<u8> = (0..40u32 << 20).map(|i| (i % 253) as u8).collect();
    let digest = Digest::sha256_of(&content);
    let (feed, body) = fed();
    *c.upstream.blob.lock().unwrap() = Some((content.len() as u64, body));
    let mut slow = c.registry.read_blob(&repo(), &digest, None).await.unwrap();
    feed.send(Ok(Bytes::copy_from_slice(&content[..1 << 20]))).await.unwrap();
    let head = take(&mut slow.body, 1 << 20).await;
    // The fill goes on without waiting for this reader.
    for chunk in content[1 << 20..].chunks(1 << 20) {
        feed.send(Ok(Bytes::copy_from_slice(chunk))).await.unwrap();
    }
    drop(feed);
    let mut all = head;
    while let Some(chunk) = slow.body.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    assert!(all == content, "the slow reader got {} bytes, not the blob", all.len());
    assert_eq!(c.upstream.blob_calls.load(Ordering::SeqCst), 1);
}
