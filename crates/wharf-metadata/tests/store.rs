//! One suite, run against SQLite (a temporary file) and PostgreSQL (a fresh schema on the server
//! named by `WHARF_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`).
//!
//! The PostgreSQL half fails, loudly, when the server cannot be reached: CI starts it.

use std::time::{SystemTime, UNIX_EPOCH};

use wharf_metadata::{ChildRecord, MetadataStore, NewEvent, NewManifest};
use wharf_oci::{Digest, RepoName, Tag};

/// A store plus a URL that reaches the same database again (to test reconnecting).
struct Ctx {
    store: MetadataStore,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite_ctx() -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: connect creates it and the file.
    let url = format!("sqlite://{}/sub/meta.db", dir.path().display());
    let store = MetadataStore::connect(&url).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    Ctx { store, url, _dir: Some(dir) }
}

fn postgres_base() -> String {
    std::env::var("WHARF_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn postgres_ctx() -> Ctx {
    let base = postgres_base();
    let store = MetadataStore::connect_postgres_isolated(&base)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} (set WHARF_TEST_POSTGRES): {e}"));
    assert_eq!(store.backend(), "postgres");
    let schema = store.isolated_schema().unwrap().to_owned();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    Ctx { store, url, _dir: None }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let ctx = super::sqlite_ctx().await;
                    super::$name(&ctx).await;
                    ctx.store.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let ctx = super::postgres_ctx().await;
                    super::$name(&ctx).await;
                    ctx.store.drop_isolated_schema().await.unwrap();
                }
            )*
        }
    };
}

suite!(
    manifest_bytes_are_exact,
    tag_moves,
    tags_sort_bytewise_and_page,
    catalog_sorts_and_pages,
    referrers_by_subject,
    children_presence_is_derived,
    delete_manifest_removes_tags_refs_and_children,
    blob_links_are_per_repository,
    a_link_removed_by_another_store_is_gone_at_once,
    upload_sessions,
    migrations_are_idempotent,
    concurrent_puts_of_one_manifest,
    webhook_outbox_leases_retries_and_dead_events,
    named_locks_hold_across_connections,
    tag_upstream_check_is_recorded,
    browse_summaries_page_and_count,
);

/// A named lock is held against every other pool on the same database (another replica)
/// until released; on SQLite (one process) it is always granted.
async fn named_locks_hold_across_connections(ctx: &Ctx) {
    let other = MetadataStore::connect(&ctx.url).await.unwrap();
    let name = format!("mirror:test-{}-{}", std::process::id(), now());
    let held = ctx.store.try_lock(&name).await.unwrap().expect("a free lock is granted");
    let second = other.try_lock(&name).await.unwrap();
    if ctx.store.backend() == "postgres" {
        assert!(second.is_none(), "another replica must not get a held lock");
        assert!(other.try_lock(&format!("{name}-other")).await.unwrap().is_some(), "other names are free");
        held.release().await.unwrap();
        let again = other.try_lock(&name).await.unwrap().expect("released: free again");
        // Dropped without release (a cancelled run): the session closes and frees it.
        drop(again);
        let mut freed = None;
        for _ in 0..100 {
            freed = ctx.store.try_lock(&name).await.unwrap();
            if freed.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        freed.expect("a dropped lock is freed when its session ends").release().await.unwrap();
    } else {
        assert!(second.is_some(), "SQLite: a no-op lock");
        held.release().await.unwrap();
    }
    other.close().await;
}

// ---------------------------------------------------------------------------------------------

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn tag(s: &str) -> Tag {
    s.parse().unwrap()
}

fn blob(n: u32) -> Digest {
    Digest::sha256_of(format!("blob {n}").as_bytes())
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// An image manifest (its content is just distinct bytes: the store does not parse).
struct Image {
    digest: Digest,
    content: Vec<u8>,
    refs: Vec<(Digest, u64)>,
}

fn image(seed: &str) -> Image {
    let content = format!("{{\"image\": {seed:?}}}\n").into_bytes();
    Image {
        digest: Digest::sha256_of(&content),
        content,
        refs: vec![(blob(1), 100), (Digest::sha256_of(seed.as_bytes()), 7)],
    }
}

/// Stores `img` (under `t`); true if that moved `t` from another manifest.
async fn put_image(s: &MetadataStore, r: &RepoName, img: &Image, t: Option<&Tag>) -> bool {
    let put = NewManifest {
        repo: r,
        digest: &img.digest,
        media_type: IMAGE,
        content: &img.content,
        subject: None,
        artifact_type: None,
        annotations_json: None,
        blob_refs: &img.refs,
        children: &[],
        tag: t,
    };
    s.put_manifest_with_events(put, &[]).await.unwrap().tag_moved
}

/// Stores `content` as an OCI index with these children under tag `t`; returns its digest.
async fn put_index(
    s: &MetadataStore,
    r: &RepoName,
    content: &[u8],
    children: &[ChildRecord],
    t: &str,
) -> Digest {
    let digest = Digest::sha256_of(content);
    s.put_manifest(NewManifest {
        repo: r,
        digest: &digest,
        media_type: INDEX,
        content,
        subject: None,
        artifact_type: None,
        annotations_json: None,
        blob_refs: &[],
        children,
        tag: Some(&tag(t)),
    })
    .await
    .unwrap();
    digest
}

fn child(position: u32, digest: &Digest, platform: Option<&str>) -> ChildRecord {
    ChildRecord {
        position,
        digest: digest.clone(),
        media_type: IMAGE.to_owned(),
        size: 500 + u64::from(position),
        platform: platform.map(str::to_owned),
        platform_json: platform.map(|p| {
            let (os, arch) = p.split_once('/').unwrap();
            format!("{{\"os\":\"{os}\",\"architecture\":\"{arch}\"}}")
        }),
        artifact_type: None,
        annotations_json: platform
            .is_none()
            .then(|| "{\"vnd.docker.reference.type\":\"attestation-manifest\"}".to_owned()),
    }
}

// ---------------------------------------------------------------------------------------------

async fn manifest_bytes_are_exact(ctx: &Ctx) {
    let s = &ctx.store;
    let r = repo("team/app");
    // Bytes that no JSON round trip would keep: odd whitespace, a NUL, invalid UTF-8.
    let content: Vec<u8> = b"{ \"schemaVersion\" :2 ,\r\n\t\"x\":\"\xff\xfe\x00\"}  \n".to_vec();
    let digest = Digest::sha256_of(&content);
    let refs = [(blob(1), 10), (blob(2), 20)];
    let put = NewManifest {
        repo: &r,
        digest: &digest,
        media_type: IMAGE,
        content: &content,
        subject: None,
        artifact_type: None,
        annotations_json: None,
        blob_refs: &refs,
        children: &[],
        tag: None,
    };
    s.put_manifest(put).await.unwrap();
    // Same digest again: a no-op.
    s.put_manifest(put).await.unwrap();

    let got = s.get_manifest(&r, &digest).await.unwrap().unwrap();
    assert_eq!(got.content, content);
    assert_eq!(got.digest, digest);
    assert_eq!(got.media_type, IMAGE);
    assert_eq!(s.manifest_exists(&r, &digest).await.unwrap(), Some((IMAGE.to_owned(), content.len() as u64)));
    // Not visible from another repository, nor under another digest.
    let other = repo("team/other");
    assert!(s.get_manifest(&other, &digest).await.unwrap().is_none());
    assert!(s.manifest_exists(&other, &digest).await.unwrap().is_none());
    assert!(s.get_manifest(&r, &blob(9)).await.unwrap().is_none());
    // A large manifest (4 MiB, the protocol's limit) round-trips too.
    let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let big_digest = Digest::sha256_of(&big);
    s.put_manifest(NewManifest { digest: &big_digest, content: &big, ..put }).await.unwrap();
    assert_eq!(s.get_manifest(&r, &big_digest).await.unwrap().unwrap().content, big);
    // Its blobs are linked to the repository and counted as referenced.
    assert_eq!(s.linked_blob_size(&r, &blob(2)).await.unwrap(), Some(20));
    assert_eq!(s.manifests_referencing_blob(&r, &blob(2)).await.unwrap(), 2);
    assert_eq!(s.manifests_referencing_blob(&other, &blob(2)).await.unwrap(), 0);
}

async fn tag_moves(ctx: &Ctx) {
    let s = &ctx.store;
    let r = repo("app");
    let (a, b) = (image("a"), image("b"));
    let latest = tag("latest");
    assert!(!put_image(s, &r, &a, Some(&latest)).await, "a new tag moved nothing");
    assert_eq!(s.resolve_tag(&r, &latest).await.unwrap(), Some(a.digest.clone()));
    assert!(!put_image(s, &r, &a, Some(&latest)).await, "the same push again moved nothing");
    assert!(put_image(s, &r, &b, Some(&latest)).await, "a tag that pointed elsewhere moved");
    assert_eq!(s.resolve_tag(&r, &latest).await.unwrap(), Some(b.digest.clone()));
    let got = s.get_tagged_manifest(&r, &latest).await.unwrap().unwrap();
    assert_eq!((got.digest, got.content), (b.digest.clone(), b.content.clone()));
    assert!(s.get_tagged_manifest(&r, &tag("nope")).await.unwrap().is_none());
    // Re-putting an existing manifest only moves the tag.
    assert!(put_image(s, &r, &a, Some(&latest)).await);
    assert_eq!(s.resolve_tag(&r, &latest).await.unwrap(), Some(a.digest.clone()));
    assert_eq!(s.list_tags(&r, None, None).await.unwrap(), vec!["latest"]);
    // Tags are per repository.
    assert_eq!(s.resolve_tag(&repo("other"), &latest).await.unwrap(), None);

    assert!(s.delete_tag(&r, &latest).await.unwrap());
    assert!(!s.delete_tag(&r, &latest).await.unwrap());
    assert_eq!(s.resolve_tag(&r, &latest).await.unwrap(), None);
    // Deleting a tag keeps the manifest.
    assert!(s.get_manifest(&r, &a.digest).await.unwrap().is_some());
}

async fn tags_sort_bytewise_and_page(ctx: &Ctx) {
    let s = &ctx.store;
    let r = repo("sorting");
    let img = image("x");
    let names =
        ["b", "B", "a", "A", "_x", "1.0", "1.10", "1.2", "latest", "Z", "a-b", "a.b", "a_b", "aB", "ab"];
    for n in names {
        put_image(s, &r, &img, Some(&tag(n))).await;
    }
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort(); // str ordering is bytewise
    assert_eq!(
        expected,
        ["1.0", "1.10", "1.2", "A", "B", "Z", "_x", "a", "a-b", "a.b", "aB", "a_b", "ab", "b", "latest"]
    );
    assert_eq!(s.list_tags(&r, None, None).await.unwrap(), expected);

    // Page through three at a time.
    let mut paged = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let page = s.list_tags(&r, Some(3), last.as_deref()).await.unwrap();
        assert!(page.len() <= 3);
        if page.is_empty() {
            break;
        }
        last = page.last().cloned();
        paged.extend(page);
    }
    assert_eq!(paged, expected);

    // `last` need not be a tag; results are strictly after it.
    assert_eq!(s.list_tags(&r, None, Some("M")).await.unwrap(), expected[5..]);
    assert_eq!(s.list_tags(&r, Some(2), Some("a")).await.unwrap(), ["a-b", "a.b"]);
    assert_eq!(s.list_tags(&r, None, Some("latest")).await.unwrap(), Vec::<String>::new());
    assert_eq!(s.list_tags(&r, Some(0), None).await.unwrap(), Vec::<String>::new());
    assert_eq!(s.list_tags(&repo("none"), None, None).await.unwrap(), Vec::<String>::new());
}

async fn catalog_sorts_and_pages(ctx: &Ctx) {
    let s = &ctx.store;
    assert_eq!(s.catalog(None, None).await.unwrap(), Vec::<String>::new());
    let img = image("c");
    // Some repositories have manifests, some only blob links.
    for name in ["z", "a/b", "b/x"] {
        put_image(s, &repo(name), &img, Some(&tag("v1"))).await;
    }
    for name in ["a-b", "a", "b/x"] {
        s.link_blob(&repo(name), &blob(5), 5).await.unwrap();
    }
    s.create_upload("only-upload", &repo("uploading")).await.unwrap();
    let all = s.catalog(None, None).await.unwrap();
    // '-' (0x2d) sorts before '/' (0x2f), bytewise.
    assert_eq!(all, ["a", "a-b", "a/b", "b/x", "z"]);
    assert_eq!(s.catalog(Some(2), None).await.unwrap(), ["a", "a-b"]);
    assert_eq!(s.catalog(Some(2), Some("a-b")).await.unwrap(), ["a/b", "b/x"]);
    assert_eq!(s.catalog(Some(2), Some("b/x")).await.unwrap(), ["z"]);
    assert_eq!(s.catalog(Some(2), Some("z")).await.unwrap(), Vec::<String>::new());
    assert_eq!(s.catalog(None, Some("a/a")).await.unwrap(), ["a/b", "b/x", "z"]);

    for name in ["a", "a-b", "a/b", "b/x", "z"] {
        assert!(s.repo_exists(&repo(name)).await.unwrap(), "{name}");
    }
    assert!(!s.repo_exists(&repo("uploading")).await.unwrap());
    assert!(!s.repo_exists(&repo("nothing")).await.unwrap());

    // A repository whose last link goes is gone from the catalog.
    assert!(s.unlink_blob(&repo("a"), &blob(5)).await.unwrap());
    assert!(!s.repo_exists(&repo("a")).await.unwrap());
    assert!(s.delete_manifest(&repo("z"), &img.digest).await.unwrap());
    assert!(s.unlink_blob(&repo("z"), &blob(1)).await.unwrap());
    assert!(s.unlink_blob(&repo("z"), &Digest::sha256_of(b"c")).await.unwrap());
    assert_eq!(s.catalog(None, None).await.unwrap(), ["a-b", "a/b", "b/x"]);
}

async fn referrers_by_subject(ctx: &Ctx) {
    let s = &ctx.store;
    let r = repo("signed/app");
    let subject = image("subject");
    put_image(s, &r, &subject, Some(&tag("v1"))).await;

    let mut made = Vec::new();
    for (i, at) in
        ["application/vnd.dev.cosign.artifact.sig.v1+json", "application/spdx+json"].iter().enumerate()
    {
        let content = format!("referrer {i}").into_bytes();
        let digest = Digest::sha256_of(&content);
        let annotations = format!("{{\"n\":\"{i}\"}}");
        s.put_manifest(NewManifest {
            repo: &r,
            digest: &digest,
            media_type: IMAGE,
            content: &content,
            subject: Some(&subject.digest),
            artifact_type: Some(at),
            annotations_json: Some(&annotations),
            blob_refs: &[],
            children: &[],
            tag: None,
        })
        .await
        .unwrap();
        made.push((digest, content.len() as u64, at.to_string(), annotations));
    }
    // The same subject in another repository does not count.
    let elsewhere = b"elsewhere".to_vec();
    s.put_manifest(NewManifest {
        repo: &repo("other"),
        digest: &Digest::sha256_of(&elsewhere),
        media_type: IMAGE,
        content: &elsewhere,
        subject: Some(&subject.digest),
        artifact_type: None,
        annotations_json: None,
        blob_refs: &[],
        children: &[],
        tag: None,
    })
    .await
    .unwrap();

    made.sort_by_key(|m| m.0.to_string());
    let got = s.referrers(&r, &subject.digest).await.unwrap();
    assert_eq!(got.len(), 2);
    for (g, m) in got.iter().zip(&made) {
        assert_eq!(g.digest, m.0);
        assert_eq!(g.size, m.1);
        assert_eq!(g.media_type, IMAGE);
        assert_eq!(g.artifact_type.as_deref(), Some(m.2.as_str()));
        assert_eq!(g.annotations_json.as_deref(), Some(m.3.as_str()));
    }
    // A subject need not exist for its referrers to be listed (they may be pushed first).
    assert!(s.referrers(&r, &blob(42)).await.unwrap().is_empty());
    assert_eq!(s.referrers(&repo("other"), &subject.digest).await.unwrap().len(), 1);
    // Deleting a referrer removes it from the list.
    assert!(s.delete_manifest(&r, &made[0].0).await.unwrap());
    let got = s.referrers(&r, &subject.digest).await.unwrap();
    assert_eq!(got.iter().map(|r| &r.digest).collect::<Vec<_>>(), [&made[1].0]);
}

async fn children_presence_is_derived(ctx: &Ctx) {
    let s = &ctx.store;
    let r = repo("mirror/app");
    let (amd, arm, s390) = (image("amd64"), image("arm64"), image("s390x"));
    let attestation = image("attestation");
    // One child is pushed before the index.
    put_image(s, &r, &amd, None).await;
    // The same child digest present in another repository does not make it present here.
    put_image(s, &repo("elsewhere"), &s390, None).await;

    let children = [
        child(0, &amd.digest, Some("linux/amd64")),
        child(1, &arm.digest, Some("linux/arm64")),
        child(2, &s390.digest, Some("linux/s390x")),
        child(3, &attestation.digest, None),
    ];
    let content = b"{\"index\": 1}".to_vec();
    let index = put_index(s, &r, &content, &children, "v1").await;

    let presence =
        |list: &[wharf_metadata::ChildPresence]| -> Vec<bool> { list.iter().map(|c| c.present).collect() };
    let got = s.index_children(&r, &index).await.unwrap();
    assert_eq!(presence(&got), [true, false, false, false]);
    for (g, c) in got.iter().zip(&children) {
        assert_eq!(g.position, c.position);
        assert_eq!(g.digest, c.digest);
        assert_eq!(g.media_type, c.media_type);
        assert_eq!(g.size, c.size);
        assert_eq!(g.platform, c.platform);
        assert_eq!(g.platform_json, c.platform_json);
        assert_eq!(g.artifact_type, c.artifact_type);
        assert_eq!(g.annotations_json, c.annotations_json);
    }

    // Children pushed after the index become present.
    put_image(s, &r, &s390, None).await;
    put_image(s, &r, &attestation, None).await;
    let got = s.index_children(&r, &index).await.unwrap();
    assert_eq!(presence(&got), [true, false, true, true]);

    // Deleting a child makes it absent again; the index's rows stay.
    assert!(s.delete_manifest(&r, &amd.digest).await.unwrap());
    let got = s.index_children(&r, &index).await.unwrap();
    assert_eq!(presence(&got), [false, false, true, true]);
    assert_eq!(got.len(), 4);

    // Which indexes list an absent child, with its record (to explain a 404).
    let listing = s.indexes_listing(&r, &arm.digest).await.unwrap();
    assert_eq!(listing.len(), 1);
    assert_eq!(listing[0].0, index);
    assert_eq!(listing[0].1.platform.as_deref(), Some("linux/arm64"));
    assert_eq!(listing[0].1.position, 1);
    assert!(!listing[0].1.present);
    assert!(s.indexes_listing(&repo("elsewhere"), &arm.digest).await.unwrap().is_empty());
    let listing = s.indexes_listing(&r, &s390.digest).await.unwrap();
    assert!(listing[0].1.present);

    // Re-putting the index keeps its children as first recorded.
    assert_eq!(put_index(s, &r, &content, &children, "v2").await, index);
    assert_eq!(s.index_children(&r, &index).await.unwrap().len(), 4);
    assert_eq!(s.resolve_tag(&r, &tag("v2")).await.unwrap(), Some(index.clone()));

    // Unknown index: nothing.
    assert!(s.index_children(&r, &blob(77)).await.unwrap().is_empty());
    assert!(s.index_children(&repo("elsewhere"), &index).await.unwrap().is_empty());
}

async fn delete_manifest_removes_tags_refs_and_children(ctx: &Ctx) {
    let s = &ctx.store;
    let r = repo("del");
    let img = image("del");
    put_image(s, &r, &img, Some(&tag("t1"))).await;
    put_image(s, &r, &img, Some(&tag("t2"))).await;
    let keep = image("keep");
    put_image(s, &r, &keep, Some(&tag("t3"))).await;
    assert_eq!(s.manifests_referencing_blob(&r, &blob(1)).await.unwrap(), 2);

    assert!(s.delete_manifest(&r, &img.digest).await.unwrap());
    assert!(!s.delete_manifest(&r, &img.digest).await.unwrap());
    assert!(s.get_manifest(&r, &img.digest).await.unwrap().is_none());
    assert!(s.manifest_exists(&r, &img.digest).await.unwrap().is_none());
    assert_eq!(s.resolve_tag(&r, &tag("t1")).await.unwrap(), None);
    assert_eq!(s.resolve_tag(&r, &tag("t2")).await.unwrap(), None);
    assert_eq!(s.list_tags(&r, None, None).await.unwrap(), ["t3"]);
    assert_eq!(s.manifests_referencing_blob(&r, &blob(1)).await.unwrap(), 1);
    // The blob links stay: garbage collection decides about blobs.
    assert_eq!(s.linked_blob_size(&r, &blob(1)).await.unwrap(), Some(100));

    // Deleting an index removes its children rows; pushing it again records them again.
    let children = [child(0, &keep.digest, Some("linux/amd64"))];
    let content = b"{\"index\": 2}".to_vec();
    let index = put_index(s, &r, &content, &children, "idx").await;
    assert_eq!(s.indexes_listing(&r, &keep.digest).await.unwrap().len(), 1);
    assert!(s.delete_manifest(&r, &index).await.unwrap());
    assert!(s.index_children(&r, &index).await.unwrap().is_empty());
    assert!(s.indexes_listing(&r, &keep.digest).await.unwrap().is_empty());
    assert_eq!(s.resolve_tag(&r, &tag("idx")).await.unwrap(), None);
    put_index(s, &r, &content, &children, "idx").await;
    assert_eq!(s.index_children(&r, &index).await.unwrap().len(), 1);
    assert!(s.index_children(&r, &index).await.unwrap()[0].present);
}

/// The serving store remembers links (`link_cache.rs`); another process on the same SQLite
/// file, or another replica on the same PostgreSQL database, removes them: once its gc commit
/// or its DELETE has returned, the serving store must not report them.
async fn a_link_removed_by_another_store_is_gone_at_once(ctx: &Ctx) {
    let server = &ctx.store;
    let gc = MetadataStore::connect(&ctx.url).await.unwrap();
    let app = repo("app");
    let (swept, deleted) = (blob(41), blob(42));
    for d in [&swept, &deleted] {
        gc.link_blob(&app, d, 41).await.unwrap();
        // Asked twice: the second answer may come from memory.
        for _ in 0..2 {
            assert_eq!(server.linked_blob_size(&app, d).await.unwrap(), Some(41));
        }
    }

    let mut tx = gc.begin_gc().await.unwrap();
    assert!(tx.remove_link_if_unreferenced(&app, &swept, i64::MAX).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(server.linked_blob_size(&app, &swept).await.unwrap(), None, "removed by gc");

    assert!(gc.unlink_blob(&app, &deleted).await.unwrap());
    assert_eq!(server.linked_blob_size(&app, &deleted).await.unwrap(), None, "removed by DELETE");

    // Linked again: readable again.
    gc.link_blob(&app, &swept, 41).await.unwrap();
    assert_eq!(server.linked_blob_size(&app, &swept).await.unwrap(), Some(41));
    gc.close().await;
}

async fn blob_links_are_per_repository(ctx: &Ctx) {
    let s = &ctx.store;
    let (a, b) = (repo("a"), repo("b"));
    let d = blob(3);
    assert_eq!(s.blob_size(&d).await.unwrap(), None);
    s.link_blob(&a, &d, 333).await.unwrap();
    s.link_blob(&a, &d, 333).await.unwrap(); // idempotent
    assert_eq!(s.linked_blob_size(&a, &d).await.unwrap(), Some(333));
    // Known to the registry, but not readable from b.
    assert_eq!(s.linked_blob_size(&b, &d).await.unwrap(), None);
    assert_eq!(s.blob_size(&d).await.unwrap(), Some(333));
    assert_eq!(s.repos_with_blob(&d).await.unwrap(), vec![a.clone()]);

    s.link_blob(&b, &d, 333).await.unwrap();
    assert_eq!(s.linked_blob_size(&b, &d).await.unwrap(), Some(333));
    assert_eq!(s.repos_with_blob(&d).await.unwrap(), [a.clone(), b.clone()]);

    assert!(s.unlink_blob(&a, &d).await.unwrap());
    assert!(!s.unlink_blob(&a, &d).await.unwrap());
    assert_eq!(s.linked_blob_size(&a, &d).await.unwrap(), None);
    assert_eq!(s.linked_blob_size(&b, &d).await.unwrap(), Some(333));
    assert_eq!(s.repos_with_blob(&d).await.unwrap(), vec![b.clone()]);
    assert_eq!(s.blob_size(&d).await.unwrap(), Some(333));

    // A manifest's blobs are linked to its repository (and re-linked on a re-put).
    let img = image("links");
    put_image(s, &a, &img, None).await;
    assert_eq!(s.linked_blob_size(&a, &img.refs[1].0).await.unwrap(), Some(7));
    assert_eq!(s.linked_blob_size(&b, &img.refs[1].0).await.unwrap(), None);
    assert!(s.unlink_blob(&a, &img.refs[1].0).await.unwrap());
    put_image(s, &a, &img, None).await;
    assert_eq!(s.linked_blob_size(&a, &img.refs[1].0).await.unwrap(), Some(7));
}

async fn upload_sessions(ctx: &Ctx) {
    let s = &ctx.store;
    let r = repo("up/load");
    s.create_upload("u1", &r).await.unwrap();
    s.create_upload("u2", &repo("other")).await.unwrap();
    assert_eq!(s.upload_repo("u1").await.unwrap(), Some(r.clone()));
    assert_eq!(s.upload_repo("nope").await.unwrap(), None);
    let mut old = s.uploads_older_than(now() + 10).await.unwrap();
    old.sort();
    assert_eq!(old, ["u1", "u2"]);
    assert!(s.uploads_older_than(now() - 3600).await.unwrap().is_empty());
    s.delete_upload("u1").await.unwrap();
    s.delete_upload("u1").await.unwrap(); // unknown: fine
    assert_eq!(s.upload_repo("u1").await.unwrap(), None);
    assert_eq!(s.uploads_older_than(now() + 10).await.unwrap(), ["u2"]);
    // Creating the same id twice is an error.
    assert!(s.create_upload("u2", &r).await.is_err());
}

async fn tag_upstream_check_is_recorded(ctx: &Ctx) {
    let s = &ctx.store;
    let r = repo("hub/app");
    let (a, b) = (image("a"), image("b"));
    let v1 = tag("v1");
    put_image(s, &r, &a, Some(&v1)).await;
    let (m, checked) = s.get_tagged_manifest_checked(&r, &v1).await.unwrap().unwrap();
    assert_eq!((m.digest, checked), (a.digest.clone(), None));
    assert!(s.mark_tag_checked(&r, &v1, &a.digest, 1234).await.unwrap());
    let (_, checked) = s.get_tagged_manifest_checked(&r, &v1).await.unwrap().unwrap();
    assert_eq!(checked, Some(1234));
    // The tag moved meanwhile: a check of the old digest records nothing.
    put_image(s, &r, &b, Some(&v1)).await;
    assert!(!s.mark_tag_checked(&r, &v1, &a.digest, 5678).await.unwrap());
    assert!(s.get_tagged_manifest_checked(&r, &tag("nope")).await.unwrap().is_none());
}

async fn migrations_are_idempotent(ctx: &Ctx) {
    let s = &ctx.store;
    let version = s.schema_version().await.unwrap();
    assert!(version >= 1);
    let img = image("persist");
    put_image(s, &repo("keep"), &img, Some(&tag("v1"))).await;

    // Two more servers start at once against the same database.
    let (x, y) = tokio::join!(MetadataStore::connect(&ctx.url), MetadataStore::connect(&ctx.url));
    let (x, y) = (x.unwrap(), y.unwrap());
    for other in [&x, &y] {
        assert_eq!(other.schema_version().await.unwrap(), version);
        assert_eq!(other.resolve_tag(&repo("keep"), &tag("v1")).await.unwrap(), Some(img.digest.clone()));
    }
    // Writes through one are seen by the others.
    put_image(&x, &repo("keep"), &img, Some(&tag("v2"))).await;
    assert_eq!(s.list_tags(&repo("keep"), None, None).await.unwrap(), ["v1", "v2"]);
    x.close().await;
    y.close().await;
}

async fn concurrent_puts_of_one_manifest(ctx: &Ctx) {
    let s = &ctx.store;
    let r = repo("race");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let img = image(&format!("img{}", i % 4));
            put_image(&s, &r, &img, Some(&tag(&format!("t{i}")))).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.list_tags(&r, None, None).await.unwrap().len(), 16);
    assert_eq!(s.manifests_referencing_blob(&r, &blob(1)).await.unwrap(), 4);
}

/// The webhook outbox: events go in with the change they describe, a claim leases them (a
/// second store, as another replica, claims nothing leased), a retry waits until it is due, a
/// dead event leaves the queue but stays in the table, a delivered one is gone.
async fn webhook_outbox_leases_retries_and_dead_events(ctx: &Ctx) {
    let s = &ctx.store;
    let other = MetadataStore::connect(&ctx.url).await.unwrap();
    let event =
        |n: u8| NewEvent { target: "http://h/x".into(), kind: "push".into(), body: format!("{{\"n\":{n}}}") };
    let img = image("outbox");
    let r = repo("outbox");
    let put = NewManifest {
        repo: &r,
        digest: &img.digest,
        media_type: IMAGE,
        content: &img.content,
        subject: None,
        artifact_type: None,
        annotations_json: None,
        blob_refs: &img.refs,
        children: &[],
        tag: None,
    };
    s.put_manifest_with_events(put, &[event(1)]).await.unwrap();
    s.enqueue_events(&[event(2), event(3)]).await.unwrap();
    // A delete of something absent queues nothing.
    let absent = Digest::sha256_of(b"absent");
    assert!(!s.delete_manifest_with_events(&r, &absent, &[event(9)]).await.unwrap());
    assert_eq!(s.event_queue_depth().await.unwrap(), (3, 0));

    let claimed = s.claim_events(10, 60_000).await.unwrap();
    let bodies: Vec<&str> = claimed.iter().map(|e| e.body.as_str()).collect();
    assert_eq!(bodies, ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);
    assert!(claimed.iter().all(|e| e.attempts == 1 && e.kind == "push"));
    assert!(other.claim_events(10, 60_000).await.unwrap().is_empty(), "leased rows are nobody else's");

    let far = i64::MAX / 2;
    s.event_retry(claimed[0].id, far, "the receiver answered 500").await.unwrap();
    s.event_dead(claimed[1].id, "gave up").await.unwrap();
    s.event_delivered(claimed[2].id).await.unwrap();
    assert_eq!(s.event_queue_depth().await.unwrap(), (1, 1));
    assert!(other.claim_events(10, 60_000).await.unwrap().is_empty(), "not due yet");
    s.event_retry(claimed[0].id, 0, "due now").await.unwrap();
    let again = other.claim_events(10, 60_000).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (claimed[0].id, 2));
    // An expired lease (a deliverer that died) makes the row claimable again.
    s.event_retry(again[0].id, 0, "x").await.unwrap();
    assert_eq!(s.claim_events(10, -1).await.unwrap().len(), 1);
    assert_eq!(other.claim_events(10, 60_000).await.unwrap().len(), 1);

    // A deliverer that stops hands back what it claimed: due at once, an attempt it never
    // made not counted; a claim that is no longer its own is left alone.
    s.enqueue_events(&[event(4), event(5)]).await.unwrap();
    let mine = s.claim_events(10, 60_000).await.unwrap();
    assert_eq!(mine.len(), 2);
    s.event_released(&mine[0], true).await.unwrap();
    s.event_released(&mine[1], false).await.unwrap();
    let next = other.claim_events(10, 60_000).await.unwrap();
    let attempts: Vec<(i64, u32)> = next.iter().map(|e| (e.id, e.attempts)).collect();
    assert_eq!(attempts, [(mine[0].id, 2), (mine[1].id, 1)]);
    s.event_released(&mine[0], false).await.unwrap();
    assert!(s.claim_events(10, 60_000).await.unwrap().is_empty(), "the other deliverer's claim stands");
    other.close().await;
}

/// The summaries the web UI pages through: repositories with tag count, bytes and sparseness,
/// searched and paged by name; tags newest first with kind, bytes and presence counts.
async fn browse_summaries_page_and_count(ctx: &Ctx) {
    let s = &ctx.store;
    let r = repo("mirror/app");
    let (amd, arm) = (image("b-amd64"), image("b-arm64"));
    put_image(s, &r, &amd, Some(&tag("old"))).await;
    // Tags are ordered by the second they were last set: the next ones are newer.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let children = [child(0, &amd.digest, Some("linux/amd64")), child(1, &arm.digest, Some("linux/arm64"))];
    let content = b"{\"index\": \"browse\"}".to_vec();
    let index = put_index(s, &r, &content, &children, "v1").await;
    for i in 0..5 {
        put_image(s, &repo("plain_app"), &image(&format!("p{i}")), Some(&tag(&format!("t{i}")))).await;
    }
    put_image(s, &repo("zzz"), &image("z"), None).await;

    // Repositories: sorted, figures, search (wildcards literal, case folded), paging.
    let all = s.repo_summaries(None, None, 10).await.unwrap();
    let names: Vec<&str> = all.iter().map(|x| x.repo.as_str()).collect();
    assert_eq!(names, ["mirror/app", "plain_app", "zzz"]);
    assert_eq!((all[0].tags, all[0].sparse), (2, true));
    assert_eq!((all[1].tags, all[1].sparse), (5, false));
    assert_eq!((all[2].tags, all[2].sparse), (0, false));
    // mirror/app: two manifests plus blob 1 (100) and the seed blob of amd64 (7).
    assert_eq!(all[0].stored_bytes, (amd.content.len() + content.len()) as u64 + 107);
    let found = s.repo_summaries(Some("_APP"), None, 10).await.unwrap();
    assert_eq!(found.iter().map(|x| x.repo.as_str()).collect::<Vec<_>>(), ["plain_app"]);
    assert!(s.repo_summaries(Some("%"), None, 10).await.unwrap().is_empty());
    let page = s.repo_summaries(None, Some("mirror/app"), 1).await.unwrap();
    assert_eq!(page.iter().map(|x| x.repo.as_str()).collect::<Vec<_>>(), ["plain_app"]);

    // Tags: newest first, kind and presence of the index, its bytes with the present child.
    let tags = s.tag_summaries(&r, None, 0, 10).await.unwrap();
    assert_eq!(tags.iter().map(|t| t.tag.as_str()).collect::<Vec<_>>(), ["v1", "old"]);
    assert_eq!((tags[0].media_type.as_str(), tags[0].children, tags[0].present_children), (INDEX, 2, 1));
    assert_eq!(tags[0].digest, index);
    assert_eq!(tags[0].stored_bytes, content.len() as u64 + 500 + 107);
    assert_eq!((tags[1].children, tags[1].stored_bytes), (0, amd.content.len() as u64 + 107));
    let p = repo("plain_app");
    assert_eq!(s.tag_count(&p, None).await.unwrap(), 5);
    // Pages are slices of the whole list (whose order depends on the seconds the pushes took).
    let whole = s.tag_summaries(&p, None, 0, 10).await.unwrap();
    assert_eq!(whole.len(), 5);
    assert!(whole.windows(2).all(|w| w[0].updated_at >= w[1].updated_at));
    assert_eq!(s.tag_summaries(&p, None, 2, 2).await.unwrap(), whole[2..4]);
    assert_eq!(s.tag_count(&p, Some("T4")).await.unwrap(), 1);
    assert_eq!(s.tag_summaries(&p, Some("t4"), 0, 10).await.unwrap()[0].tag, "t4");

    let found = s.tags_among(&p, &["t1".into(), "nope".into(), "t3".into()]).await.unwrap();
    assert_eq!(found.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["t1", "t3"]);
}
