//! Garbage collection and fsck over a real registry: blobs on the filesystem in a temporary
//! directory, metadata on SQLite (a file there) and on PostgreSQL (a fresh schema on the server
//! named by `WHARF_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`). Every test
//! runs on both.
//!
//! Time: tests that need a blob to be old collect with a grace period of zero, or set the blob
//! file's modification time back (`backdate`); link ages are never changed.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use wharf_metadata::{MetadataStore, NewManifest};
use wharf_oci::{Digest, Reference, RepoName, Tag};
use wharf_registry::{
    GarbageCollector, IndexPolicy, IndexRule, MountOutcome, ProblemKind, Registry, RegistryConfig,
    RegistryError, fsck_registry,
};
use wharf_storage::{BlobStore, BodyStream};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const HOUR: Duration = Duration::from_secs(3600);
const NOW: Duration = Duration::ZERO;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Ctx {
    registry: Registry,
    dir: tempfile::TempDir,
}

fn postgres_url() -> String {
    std::env::var("WHARF_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn ctx_with(backend: Backend, config: RegistryConfig) -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path().join("storage")).await.unwrap();
    let meta = match backend {
        Backend::Sqlite => {
            MetadataStore::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display()))
                .await
                .unwrap()
        }
        Backend::Postgres => MetadataStore::connect_postgres_isolated(&postgres_url())
            .await
            .expect("PostgreSQL must be reachable for the postgres tests (set WHARF_TEST_POSTGRES)"),
    };
    Ctx { registry: Registry::new(blobs, meta, config), dir }
}

async fn ctx(backend: Backend) -> Ctx {
    ctx_with(backend, RegistryConfig::default()).await
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Backend::Postgres).await } )*
        }
    };
}

suite!(
    referenced_blob_survives,
    blob_of_deleted_manifest_is_unlinked_then_deleted,
    unlinking_restarts_the_grace_period,
    fresh_upload_without_manifest_survives_default_grace,
    shared_blob_loses_only_the_unreferenced_link,
    dry_run_changes_nothing,
    link_between_mark_and_sweep_keeps_the_blob,
    upload_between_mark_and_sweep_keeps_the_file,
    manifest_between_mark_and_sweep_keeps_the_links,
    absent_children_of_a_sparse_index_are_nothing_to_collect,
    trash_left_by_a_crash_is_recovered,
    rows_without_files_go_and_a_second_sweep_reports_nothing,
    no_link_while_the_sweep_transaction_is_open,
    fsck_passes_on_a_clean_store,
    fsck_finds_flipped_byte_missing_file_and_corrupt_manifest,
    a_database_that_knows_none_of_the_blobs_deletes_nothing,
);

/// `wharf gc --database` pointing at the wrong (or a fresh) database sees every stored file as
/// unknown: it must refuse instead of deleting them all.
async fn a_database_that_knows_none_of_the_blobs_deletes_nothing(b: Backend) {
    let ctx = ctx(b).await;
    let img = ctx.push_image("app", "a", b"layer a", "v1").await;
    let fresh = match b {
        Backend::Sqlite => MetadataStore::connect(&format!(
            "sqlite://{}?mode=rwc",
            ctx.dir.path().join("other.db").display()
        ))
        .await
        .unwrap(),
        Backend::Postgres => MetadataStore::connect_postgres_isolated(&postgres_url()).await.unwrap(),
    };
    let wrong = Registry::new(ctx.registry.blob_store().clone(), fresh, RegistryConfig::default());
    let err = GarbageCollector::for_registry(&wrong, Duration::ZERO).run(false).await.unwrap_err();
    assert!(err.to_string().contains("knows none of them"), "{err}");
    assert!(ctx.registry.blob_store().stat(&img.layer.0).await.unwrap().is_some(), "nothing was deleted");
    assert!(ctx.registry.blob_store().stat(&img.config.0).await.unwrap().is_some());
}

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn body(bytes: &[u8]) -> BodyStream {
    let b = Bytes::copy_from_slice(bytes);
    Box::pin(futures_util::stream::once(async move { Ok(b) }))
}

struct Image {
    digest: Digest,
    manifest: Vec<u8>,
    config: (Digest, u64),
    layer: (Digest, u64),
}

impl Ctx {
    fn gc(&self, grace: Duration) -> GarbageCollector {
        GarbageCollector::for_registry(&self.registry, grace)
    }

    fn meta(&self) -> &MetadataStore {
        self.registry.metadata()
    }

    async fn push_blob(&self, repo_name: &str, bytes: &[u8]) -> Digest {
        let d = Digest::sha256_of(bytes);
        self.registry.put_blob(&repo(repo_name), &d, body(bytes)).await.unwrap();
        d
    }

    /// Uploads config and layer (the layer is `layer`), then pushes the manifest with `tag`.
    async fn push_image(&self, repo_name: &str, seed: &str, layer: &[u8], tag: &str) -> Image {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
        let c = self.push_blob(repo_name, config.as_bytes()).await;
        let l = self.push_blob(repo_name, layer).await;
        let manifest = manifest_bytes((&c, config.len() as u64), (&l, layer.len() as u64));
        let pushed = self
            .registry
            .put_manifest(
                &repo(repo_name),
                &Reference::Tag(tag.parse().unwrap()),
                Some(OCI_MANIFEST),
                &manifest,
            )
            .await
            .unwrap();
        Image {
            digest: pushed.digest,
            manifest,
            config: (c, config.len() as u64),
            layer: (l, layer.len() as u64),
        }
    }

    async fn delete_manifest(&self, repo_name: &str, digest: &Digest) {
        self.registry.delete_manifest(&repo(repo_name), &Reference::Digest(digest.clone())).await.unwrap();
    }

    fn blob_file(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.dir.path().join("storage/blobs").join(d.algorithm().as_str()).join(&hex[..2]).join(hex)
    }

    /// Sets the blob file's modification time `by` into the past.
    fn backdate(&self, d: &Digest, by: Duration) {
        let f = std::fs::OpenOptions::new().write(true).open(self.blob_file(d)).unwrap();
        f.set_modified(SystemTime::now() - by).unwrap();
    }

    fn mtime(&self, d: &Digest) -> SystemTime {
        std::fs::metadata(self.blob_file(d)).unwrap().modified().unwrap()
    }

    async fn readable(&self, repo_name: &str, d: &Digest) -> bool {
        match self.registry.blob_size(&repo(repo_name), d, false).await {
            Ok(_) => self.registry.read_blob(&repo(repo_name), d, None).await.is_ok(),
            Err(RegistryError::BlobUnknown { .. }) => false,
            Err(e) => panic!("{e}"),
        }
    }

    async fn finish(self) {
        self.meta().drop_isolated_schema().await.unwrap();
    }
}

fn manifest_bytes(config: (&Digest, u64), layer: (&Digest, u64)) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        config.0, config.1, layer.0, layer.1
    )
    .into_bytes()
}

async fn referenced_blob_survives(backend: Backend) {
    let c = ctx(backend).await;
    let img = c.push_image("app", "one", b"layer one", "v1").await;
    // Even with no grace at all: a manifest references both blobs.
    let report = c.gc(NOW).run(false).await.unwrap();
    assert_eq!((report.links_removed, report.blobs_deleted, report.bytes_freed), (0, 0, 0), "{report:?}");
    for d in [&img.config.0, &img.layer.0] {
        assert!(c.readable("app", d).await);
        assert!(c.blob_file(d).is_file());
    }
    // The manifest itself is never touched.
    let m = c.registry.get_manifest(&repo("app"), &Reference::Tag("v1".parse().unwrap())).await.unwrap();
    assert_eq!(&m.content[..], &img.manifest[..]);
    c.finish().await;
}

async fn blob_of_deleted_manifest_is_unlinked_then_deleted(backend: Backend) {
    let c = ctx(backend).await;
    let img = c.push_image("app", "one", b"layer one", "v1").await;
    c.delete_manifest("app", &img.digest).await;

    // Within the default grace period the links are young: nothing goes.
    let report = c.gc(HOUR).run(false).await.unwrap();
    assert_eq!((report.links_removed, report.blobs_deleted), (0, 0), "{report:?}");
    assert!(c.readable("app", &img.layer.0).await);

    // With no grace (the tests' stand-in for "an hour later"): unlinked, then deleted.
    let report = c.gc(NOW).run(false).await.unwrap();
    assert_eq!(report.links_removed, 2, "{report:?}");
    assert_eq!(report.blobs_deleted, 2, "{report:?}");
    assert_eq!(report.bytes_freed, img.config.1 + img.layer.1);
    assert_eq!(report.repositories.len(), 1);
    assert_eq!(report.repositories[0].repository, repo("app"));
    assert_eq!(report.repositories[0].links_removed, 2);
    assert_eq!(report.repositories[0].bytes_unlinked, img.config.1 + img.layer.1);
    let mut deleted: Vec<Digest> = report.deleted_blobs.iter().map(|b| b.digest.clone()).collect();
    deleted.sort();
    let mut expected = vec![img.config.0.clone(), img.layer.0.clone()];
    expected.sort();
    assert_eq!(deleted, expected);
    for d in [&img.config.0, &img.layer.0] {
        assert!(!c.blob_file(d).exists(), "{d} file deleted");
        assert_eq!(c.meta().blob_size(d).await.unwrap(), None, "{d} row deleted");
        assert!(!c.readable("app", d).await);
    }
    assert!(!c.dir.path().join("storage/gc-trash").read_dir().unwrap().any(|_| true), "trash emptied");

    // Nothing left to do; and the same content can be pushed again.
    let again = c.gc(NOW).run(false).await.unwrap();
    assert_eq!((again.links_removed, again.blobs_deleted), (0, 0), "{again:?}");
    c.push_blob("app", b"layer one").await;
    assert!(c.readable("app", &img.layer.0).await);
    c.finish().await;
}

async fn unlinking_restarts_the_grace_period(backend: Backend) {
    let c = ctx(backend).await;
    let d = c.push_blob("app", b"abandoned layer").await;
    c.backdate(&d, 2 * HOUR);

    // Unlink it (as a run whose grace the link had outlived would).
    let gc0 = c.gc(NOW);
    let removed = gc0.sweep_links(&gc0.mark_links().await.unwrap()).await.unwrap();
    assert_eq!(removed.len(), 1);
    assert!(!c.readable("app", &d).await);

    // Its file was two hours old, but unlinking made it young: an hour's grace keeps it.
    let gc = c.gc(HOUR);
    assert!(c.mtime(&d) > SystemTime::now() - Duration::from_secs(60), "unlinking touched the file");
    assert!(gc.mark_blobs(&[]).await.unwrap().is_empty());
    let report = gc.run(false).await.unwrap();
    assert_eq!((report.links_removed, report.blobs_deleted), (0, 0), "{report:?}");
    assert!(c.blob_file(&d).is_file());

    // An hour later (file backdated), it goes.
    c.backdate(&d, HOUR + Duration::from_secs(60));
    let report = gc.run(false).await.unwrap();
    assert_eq!((report.links_removed, report.blobs_deleted), (0, 1), "{report:?}");
    assert_eq!(report.bytes_freed, b"abandoned layer".len() as u64);
    assert!(!c.blob_file(&d).exists());
    c.finish().await;
}

async fn fresh_upload_without_manifest_survives_default_grace(backend: Backend) {
    let c = ctx(backend).await;
    let d = c.push_blob("app", b"layer whose manifest comes next").await;
    // An old file does not make the link old: the link is what the grace protects.
    c.backdate(&d, 2 * HOUR);
    // A file written but not linked yet (the moment between storing and linking).
    let orphan = c.registry.blob_store().put_bytes(None, b"being uploaded").await.unwrap();

    let report = c.gc(HOUR).run(false).await.unwrap();
    assert_eq!((report.links_removed, report.blobs_deleted), (0, 0), "{report:?}");
    assert!(c.readable("app", &d).await);
    assert!(c.blob_file(&orphan).is_file());

    // Only the grace period saved them.
    let dry = c.gc(NOW).run(true).await.unwrap();
    assert_eq!((dry.links_removed, dry.blobs_deleted), (1, 2), "{dry:?}");

    // And the manifest can still be pushed.
    let layer = b"layer whose manifest comes next";
    let config = c.push_blob("app", b"{}").await;
    let m = manifest_bytes((&config, 2), (&d, layer.len() as u64));
    c.registry
        .put_manifest(&repo("app"), &Reference::Tag("v1".parse().unwrap()), Some(OCI_MANIFEST), &m)
        .await
        .unwrap();
    c.finish().await;
}

async fn shared_blob_loses_only_the_unreferenced_link(backend: Backend) {
    let c = ctx(backend).await;
    let shared = b"shared base layer";
    let a = c.push_image("team/a", "a", shared, "v1").await;
    // Mounted into b, but no manifest of b references it.
    let mounted = c.registry.mount_blob(&repo("team/b"), &a.layer.0, Some(&repo("team/a"))).await.unwrap();
    assert!(matches!(mounted, MountOutcome::Mounted { .. }));
    // And pushed to c with a manifest of its own.
    let img_c = c.push_image("team/c", "c", shared, "v1").await;
    assert_eq!(img_c.layer.0, a.layer.0);

    let report = c.gc(NOW).run(false).await.unwrap();
    assert_eq!(report.links_removed, 1, "{report:?}");
    assert_eq!(report.removed_links[0].repository, repo("team/b"));
    assert_eq!(report.blobs_deleted, 0, "{report:?}");
    assert!(!c.readable("team/b", &a.layer.0).await);
    assert!(c.readable("team/a", &a.layer.0).await);
    assert!(c.readable("team/c", &a.layer.0).await);

    // a's manifest goes: a loses both links; its own config is deleted, the shared layer
    // stays while c links (and references) it.
    c.delete_manifest("team/a", &a.digest).await;
    let report = c.gc(NOW).run(false).await.unwrap();
    assert_eq!(report.links_removed, 2, "{report:?}");
    assert_eq!(report.blobs_deleted, 1, "{report:?}");
    assert_eq!(report.deleted_blobs[0].digest, a.config.0);
    assert!(c.blob_file(&a.layer.0).is_file());
    assert!(c.readable("team/c", &a.layer.0).await);
    assert_eq!(
        c.meta().repos_with_blob(&a.layer.0).await.unwrap(),
        vec![repo("team/c")],
        "only c links the shared layer now"
    );
    c.finish().await;
}

async fn dry_run_changes_nothing(backend: Backend) {
    let c = ctx(backend).await;
    let img = c.push_image("app", "one", b"layer one", "v1").await;
    c.delete_manifest("app", &img.digest).await;
    let orphan = c.registry.blob_store().put_bytes(None, b"orphan file").await.unwrap();
    let files = [&img.config.0, &img.layer.0, &orphan];
    let before: Vec<SystemTime> = files.iter().map(|d| c.mtime(d)).collect();

    let dry = c.gc(NOW).run(true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!((dry.links_removed, dry.blobs_deleted), (2, 3), "{dry:?}");
    assert_eq!(dry.bytes_freed, img.config.1 + img.layer.1 + b"orphan file".len() as u64);
    assert!(dry.summary().starts_with("would remove 2 blob link(s)"), "{}", dry.summary());

    // Everything is still there, untouched.
    for (d, t) in files.iter().zip(&before) {
        assert!(c.blob_file(d).is_file());
        assert_eq!(c.mtime(d), *t, "dry run touched {d}");
    }
    assert!(c.readable("app", &img.config.0).await);
    assert!(c.readable("app", &img.layer.0).await);
    assert!(!c.dir.path().join("storage/gc-trash").exists());

    // The real run does what the dry run said.
    let real = c.gc(NOW).run(false).await.unwrap();
    assert!(!real.dry_run);
    assert_eq!(real.removed_links, dry.removed_links);
    assert_eq!(real.deleted_blobs, dry.deleted_blobs);
    assert_eq!(real.bytes_freed, dry.bytes_freed);
    c.finish().await;
}

async fn link_between_mark_and_sweep_keeps_the_blob(backend: Backend) {
    let c = ctx(backend).await;
    let d = c.push_blob("a", b"unlinked by its client").await;
    c.registry.delete_blob(&repo("a"), &d).await.unwrap();

    let gc = c.gc(NOW);
    let marked = gc.mark_blobs(&[]).await.unwrap();
    assert_eq!(marked.iter().map(|b| &b.digest).collect::<Vec<_>>(), vec![&d]);

    // A mount (without `from`) links it between mark and sweep: the blob stays.
    let mounted = c.registry.mount_blob(&repo("b"), &d, None).await.unwrap();
    assert!(matches!(mounted, MountOutcome::Mounted { .. }));
    let sweep = gc.sweep_blobs(&marked).await.unwrap();
    assert!(sweep.deleted.is_empty(), "{sweep:?}");
    assert_eq!(sweep.kept, vec![d.clone()]);
    assert!(c.blob_file(&d).is_file());
    assert!(c.readable("b", &d).await);
    c.finish().await;
}

async fn upload_between_mark_and_sweep_keeps_the_file(backend: Backend) {
    let c = ctx(backend).await;
    // The registry holds something (a database that knows no stored blob at all is refused, see
    // `a_database_that_knows_none_of_the_blobs_deletes_nothing`).
    c.push_blob("b", b"linked elsewhere").await;
    // A file with no row: a crash between storing and linking left it.
    let orphan = c.registry.blob_store().put_bytes(None, b"left by a crash").await.unwrap();
    let gc = c.gc(NOW);
    let marked = gc.mark_blobs(&[]).await.unwrap();
    assert_eq!(marked.len(), 1);

    // The same content is uploaded (storage keeps the file it has) and linked.
    c.push_blob("a", b"left by a crash").await;
    let sweep = gc.sweep_blobs(&marked).await.unwrap();
    assert!(sweep.deleted.is_empty(), "{sweep:?}");
    assert_eq!(sweep.kept, vec![orphan.clone()]);
    assert!(c.readable("a", &orphan).await);
    c.finish().await;
}

async fn manifest_between_mark_and_sweep_keeps_the_links(backend: Backend) {
    let c = ctx(backend).await;
    let config = c.push_blob("a", b"{}").await;
    let layer = c.push_blob("a", b"the layer").await;
    let gc = c.gc(NOW);
    let marked = gc.mark_links().await.unwrap();
    assert_eq!(marked.len(), 2);

    // The manifest arrives between mark and sweep: its blobs stay linked.
    let m = manifest_bytes((&config, 2), (&layer, 9));
    c.registry
        .put_manifest(&repo("a"), &Reference::Tag("v1".parse().unwrap()), Some(OCI_MANIFEST), &m)
        .await
        .unwrap();
    assert!(gc.sweep_links(&marked).await.unwrap().is_empty());
    let report = gc.run(false).await.unwrap();
    assert_eq!((report.links_removed, report.blobs_deleted), (0, 0), "{report:?}");
    assert!(c.readable("a", &layer).await);
    c.finish().await;
}

async fn absent_children_of_a_sparse_index_are_nothing_to_collect(backend: Backend) {
    let config = RegistryConfig {
        index_policy: IndexPolicy { default: IndexRule::Sparse, repositories: Vec::new() },
        ..RegistryConfig::default()
    };
    let c = ctx_with(backend, config).await;
    let amd64 = c.push_image("mirror/app", "amd64", b"amd64 layer", "amd64").await;
    let absent = Digest::sha256_of(b"arm64 manifest that was never mirrored");
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{absent}","size":100,"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#,
        amd64.digest,
        amd64.manifest.len()
    );
    c.registry
        .put_manifest(
            &repo("mirror/app"),
            &Reference::Tag("v1".parse().unwrap()),
            Some(OCI_INDEX),
            index.as_bytes(),
        )
        .await
        .unwrap();

    let report = c.gc(NOW).run(false).await.unwrap();
    assert_eq!((report.links_removed, report.blobs_deleted), (0, 0), "{report:?}");
    assert!(c.readable("mirror/app", &amd64.layer.0).await);
    let fsck = fsck_registry(&c.registry).await.unwrap();
    assert!(fsck.is_clean(), "{:?}", fsck.problems);
    assert_eq!(fsck.manifests_checked, 2);
    c.finish().await;
}

async fn trash_left_by_a_crash_is_recovered(backend: Backend) {
    let c = ctx(backend).await;
    let kept = c.push_blob("a", b"linked blob").await;
    let gone = c.registry.blob_store().put_bytes(None, b"deleted blob").await.unwrap();
    // A run that crashed after moving both files: `kept` before its commit (the row is
    // still there), `gone` after it (no row).
    let trash = c.dir.path().join("storage/gc-trash");
    std::fs::create_dir_all(&trash).unwrap();
    for d in [&kept, &gone] {
        std::fs::rename(c.blob_file(d), trash.join(format!("sha256-{}", d.hex()))).unwrap();
    }
    assert!(!c.readable("a", &kept).await);

    let report = c.gc(HOUR).run(false).await.unwrap();
    assert_eq!((report.links_removed, report.blobs_deleted), (0, 0), "{report:?}");
    assert!(c.readable("a", &kept).await, "put back");
    assert!(!c.blob_file(&gone).exists());
    assert!(!trash.read_dir().unwrap().any(|_| true), "trash emptied");
    c.finish().await;
}

async fn rows_without_files_go_and_a_second_sweep_reports_nothing(backend: Backend) {
    let c = ctx(backend).await;
    let with_file = c.push_blob("a", b"with file").await;
    let without = c.push_blob("a", b"file lost").await;
    for d in [&with_file, &without] {
        c.registry.delete_blob(&repo("a"), d).await.unwrap();
    }
    std::fs::remove_file(c.blob_file(&without)).unwrap();

    let gc = c.gc(NOW);
    let marked = gc.mark_blobs(&[]).await.unwrap();
    assert_eq!(marked.len(), 2);
    let first = gc.sweep_blobs(&marked).await.unwrap();
    let mut deleted: Vec<(Digest, u64)> = first.deleted.iter().map(|b| (b.digest.clone(), b.size)).collect();
    deleted.sort();
    let mut expected = vec![(with_file.clone(), 9), (without.clone(), 0)];
    expected.sort();
    assert_eq!(deleted, expected);
    assert_eq!(c.meta().blob_size(&without).await.unwrap(), None);
    // Another collector that marked the same blobs finds nothing left to do.
    let second = gc.sweep_blobs(&marked).await.unwrap();
    assert_eq!(second, Default::default());
    c.finish().await;
}

async fn no_link_while_the_sweep_transaction_is_open(backend: Backend) {
    let c = ctx(backend).await;
    let d = c.push_blob("a", b"blob").await;
    let tx = c.meta().begin_gc().await.unwrap();
    // A push linking a blob (here: a mount into b) waits for the sweep to finish.
    let registry = c.registry.clone();
    let d2 = d.clone();
    let link = tokio::spawn(async move { registry.mount_blob(&repo("b"), &d2, Some(&repo("a"))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!link.is_finished(), "a link went through during the sweep transaction");
    tx.commit().await.unwrap();
    let mounted = tokio::time::timeout(Duration::from_secs(10), link).await.unwrap().unwrap().unwrap();
    assert!(matches!(mounted, MountOutcome::Mounted { .. }));
    assert!(c.readable("b", &d).await);
    c.finish().await;
}

async fn fsck_passes_on_a_clean_store(backend: Backend) {
    let c = ctx(backend).await;
    let img = c.push_image("app", "one", b"layer one", "v1").await;
    c.registry.mount_blob(&repo("other"), &img.layer.0, Some(&repo("app"))).await.unwrap();
    // Garbage is not a problem.
    c.registry.blob_store().put_bytes(None, b"orphan").await.unwrap();

    let report = fsck_registry(&c.registry).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.blobs_checked, 3);
    assert_eq!(report.bytes_hashed, img.config.1 + img.layer.1 + 6);
    assert_eq!(report.links_checked, 3);
    assert_eq!(report.manifests_checked, 1);
    c.finish().await;
}

async fn fsck_finds_flipped_byte_missing_file_and_corrupt_manifest(backend: Backend) {
    let c = ctx(backend).await;
    let img = c.push_image("team/a", "one", b"layer one", "v1").await;
    c.registry.mount_blob(&repo("team/b"), &img.layer.0, Some(&repo("team/a"))).await.unwrap();

    // One byte of the layer flipped; the config's file gone.
    let path = c.blob_file(&img.layer.0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    std::fs::remove_file(c.blob_file(&img.config.0)).unwrap();
    // A manifest row whose bytes do not hash to its digest (written straight to the store).
    let claimed = Digest::sha256_of(b"what the bytes once were");
    c.meta()
        .put_manifest(NewManifest {
            repo: &repo("team/a"),
            digest: &claimed,
            media_type: OCI_MANIFEST,
            content: &img.manifest,
            subject: None,
            artifact_type: None,
            annotations_json: None,
            blob_refs: &[],
            children: &[],
            tag: Some(&"broken".parse::<Tag>().unwrap()),
        })
        .await
        .unwrap();

    let report = fsck_registry(&c.registry).await.unwrap();
    assert!(!report.is_clean());
    let kinds: Vec<(ProblemKind, &Digest)> = report.problems.iter().map(|p| (p.kind, &p.digest)).collect();
    assert_eq!(
        kinds,
        vec![
            (ProblemKind::BlobCorrupt, &img.layer.0),
            (ProblemKind::BlobMissing, &img.config.0),
            (ProblemKind::ManifestCorrupt, &claimed),
        ],
        "{:#?}",
        report.problems
    );
    assert_eq!(report.problems[0].repositories, vec![repo("team/a"), repo("team/b")]);
    assert!(report.problems[0].detail.contains(&Digest::sha256_of(&bytes).to_string()));
    assert_eq!(report.problems[1].repositories, vec![repo("team/a")]);
    assert_eq!(report.problems[2].repositories, vec![repo("team/a")]);
    assert!(report.problems[2].detail.contains(&img.digest.to_string()));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["problems"][0]["kind"], "blob_corrupt");
    assert_eq!(json["problems"][0]["repositories"][1], "team/b");
    assert!(report.problems[1].to_string().starts_with("missing blob sha256:"), "{}", report.problems[1]);
    c.finish().await;
}
