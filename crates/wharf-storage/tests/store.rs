//! Behaviour of the filesystem blob store and its upload sessions.

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use wharf_oci::{Algorithm, Digest};
use wharf_storage::{BlobStore, BodyStream, StorageError};

fn body(chunks: &[&[u8]]) -> BodyStream {
    let chunks: Vec<Result<Bytes, io::Error>> =
        chunks.iter().map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    Box::pin(stream::iter(chunks))
}

/// Yields `chunks`, then fails like a dropped client connection.
fn failing_body(chunks: &[&[u8]]) -> BodyStream {
    let mut items: Vec<Result<Bytes, io::Error>> =
        chunks.iter().map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    items.push(Err(io::Error::new(io::ErrorKind::ConnectionReset, "client went away")));
    Box::pin(stream::iter(items))
}

/// Yields `chunks` with a pause before each.
fn slow_body(chunks: Vec<Vec<u8>>, pause: Duration) -> BodyStream {
    Box::pin(stream::iter(chunks).then(move |c| async move {
        tokio::time::sleep(pause).await;
        Ok(Bytes::from(c))
    }))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect()
}

async fn read_all(store: &BlobStore, d: &Digest, range: Option<(u64, u64)>) -> (u64, u64, Vec<u8>) {
    let r = store.read(d, range).await.unwrap().expect("blob present");
    let mut out = Vec::new();
    let mut b = r.body;
    while let Some(chunk) = b.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(out.len() as u64, r.len);
    (r.size, r.start, out)
}

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p).unwrap().next().is_none()
}

fn file_count(p: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += file_count(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

async fn store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn monolithic_put_read_and_ranges() {
    let (dir, store) = store().await;
    let data = pattern(3 * 1024 * 1024 + 17, 1);
    let d = Digest::sha256_of(&data);
    let parts: Vec<&[u8]> = data.chunks(100_000).collect();
    assert_eq!(store.put_stream(&d, body(&parts)).await.unwrap(), data.len() as u64);

    let hex = d.hex();
    let path = dir.path().join("blobs/sha256").join(&hex[..2]).join(hex);
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(store.stat(&d).await.unwrap(), Some(data.len() as u64));
    assert!(dir_is_empty(&dir.path().join("tmp")));

    let (size, start, got) = read_all(&store, &d, None).await;
    assert_eq!((size, start), (data.len() as u64, 0));
    assert_eq!(got, data);

    let (_, start, got) = read_all(&store, &d, Some((10, 1_000_009))).await;
    assert_eq!(start, 10);
    assert_eq!(got, &data[10..1_000_010]);

    // `last` past the end is clamped.
    let (_, start, got) = read_all(&store, &d, Some((3 * 1024 * 1024, u64::MAX))).await;
    assert_eq!(start, 3 * 1024 * 1024);
    assert_eq!(got, &data[3 * 1024 * 1024..]);

    // A range starting past the end reads nothing; the caller answers 416.
    let r = store.read(&d, Some((data.len() as u64, data.len() as u64 + 5))).await.unwrap().unwrap();
    assert_eq!((r.size, r.len), (data.len() as u64, 0));

    // Large chunks (written without coalescing) work too, and re-putting is idempotent.
    let big: Vec<&[u8]> = data.chunks(2 * 1024 * 1024).collect();
    assert_eq!(store.put_stream(&d, body(&big)).await.unwrap(), data.len() as u64);
    assert_eq!(store.list_blobs().await.unwrap(), vec![d.clone()]);
    assert!(dir_is_empty(&dir.path().join("tmp")));

    assert!(store.delete(&d).await.unwrap());
    assert!(!store.delete(&d).await.unwrap());
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert!(store.read(&d, None).await.unwrap().is_none());
    assert!(store.list_blobs().await.unwrap().is_empty());
}

#[tokio::test]
async fn empty_blob() {
    let (_dir, store) = store().await;
    let d = Digest::sha256_of(b"");
    assert_eq!(store.put_stream(&d, body(&[])).await.unwrap(), 0);
    let (size, _, got) = read_all(&store, &d, None).await;
    assert_eq!((size, got.len()), (0, 0));
    let r = store.read(&d, Some((0, 0))).await.unwrap().unwrap();
    assert_eq!(r.len, 0);
}

#[tokio::test]
async fn digest_mismatch_leaves_nothing_visible() {
    let (dir, store) = store().await;
    let data = pattern(2_500_000, 2);
    let wrong = Digest::sha256_of(b"something else");
    let parts: Vec<&[u8]> = data.chunks(65_536).collect();
    match store.put_stream(&wrong, body(&parts)).await {
        Err(StorageError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, Digest::sha256_of(&data));
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert_eq!(store.stat(&wrong).await.unwrap(), None);
    assert_eq!(store.stat(&Digest::sha256_of(&data)).await.unwrap(), None);
    assert!(dir_is_empty(&dir.path().join("tmp")));
    assert_eq!(file_count(&dir.path().join("blobs")), 0);

    // A body that fails mid-stream leaves nothing either.
    let d = Digest::sha256_of(&data);
    let err = store.put_stream(&d, failing_body(&parts[..10])).await.unwrap_err();
    assert!(matches!(err, StorageError::Body(_)), "{err:?}");
    assert!(dir_is_empty(&dir.path().join("tmp")));
    assert_eq!(store.stat(&d).await.unwrap(), None);

    // put_bytes verifies too.
    let err = store.put_bytes(Some(&wrong), &data).await.unwrap_err();
    assert!(matches!(err, StorageError::DigestMismatch { .. }));
    assert_eq!(file_count(&dir.path().join("blobs")), 0);
}

#[tokio::test]
async fn put_bytes_is_idempotent() {
    let (_dir, store) = store().await;
    let d = store.put_bytes(None, b"{\"schemaVersion\":2}").await.unwrap();
    assert_eq!(d, Digest::sha256_of(b"{\"schemaVersion\":2}"));
    assert_eq!(store.put_bytes(Some(&d), b"{\"schemaVersion\":2}").await.unwrap(), d);
    let (_, _, got) = read_all(&store, &d, None).await;
    assert_eq!(got, b"{\"schemaVersion\":2}");
    // Existing blob, streamed again: verified and accepted.
    assert_eq!(store.put_stream(&d, body(&[b"{\"schemaVersion\":2}"])).await.unwrap(), 19);
    // Existing blob, wrong content: rejected.
    let err = store.put_stream(&d, body(&[b"{\"schemaVersion\":3}"])).await.unwrap_err();
    assert!(matches!(err, StorageError::DigestMismatch { .. }));
}

#[tokio::test]
async fn sha512_blobs() {
    let (dir, store) = store().await;
    let data = pattern(1_500_000, 3);
    let d = Digest::compute(Algorithm::Sha512, &data);
    let parts: Vec<&[u8]> = data.chunks(300_000).collect();
    assert_eq!(store.put_stream(&d, body(&parts)).await.unwrap(), data.len() as u64);
    assert!(dir.path().join("blobs/sha512").join(&d.hex()[..2]).join(d.hex()).is_file());
    assert_eq!(read_all(&store, &d, None).await.2, data);

    // Through an upload session: the in-memory hash is sha256, so commit re-hashes with sha512.
    let data2 = pattern(700_000, 4);
    let d2 = Digest::compute(Algorithm::Sha512, &data2);
    let id = store.create_upload().await.unwrap();
    store.append(&id, Some(0), body(&[&data2[..100]])).await.unwrap();
    store.append(&id, Some(100), body(&[&data2[100..]])).await.unwrap();
    let wrong = Digest::compute(Algorithm::Sha512, b"x");
    assert!(matches!(store.commit(&id, &wrong).await, Err(StorageError::DigestMismatch { .. })));
    assert_eq!(store.commit(&id, &d2).await.unwrap(), data2.len() as u64);
    assert_eq!(read_all(&store, &d2, None).await.2, data2);

    let mut listed = store.list_blobs().await.unwrap();
    listed.sort();
    let mut want = vec![d, d2];
    want.sort();
    assert_eq!(listed, want);
}

#[tokio::test]
async fn chunked_upload_with_offsets() {
    let (dir, store) = store().await;
    let data = pattern(5_000_000, 5);
    let d = Digest::sha256_of(&data);
    let id = store.create_upload().await.unwrap();
    assert_eq!(store.upload_size(&id).await.unwrap(), 0);

    assert_eq!(store.append(&id, Some(0), body(&[&data[..1000]])).await.unwrap(), 1000);
    // Out of order: nothing written.
    match store.append(&id, Some(5000), body(&[&data[5000..6000]])).await {
        Err(StorageError::OffsetMismatch { expected, actual }) => {
            assert_eq!((expected, actual), (5000, 1000))
        }
        other => panic!("expected an offset mismatch, got {other:?}"),
    }
    match store.append(&id, Some(0), body(&[&data[..1000]])).await {
        Err(StorageError::OffsetMismatch { expected, actual }) => {
            assert_eq!((expected, actual), (0, 1000))
        }
        other => panic!("expected an offset mismatch, got {other:?}"),
    }
    assert_eq!(store.upload_size(&id).await.unwrap(), 1000);
    let parts: Vec<&[u8]> = data[1000..3_000_000].chunks(70_000).collect();
    assert_eq!(store.append(&id, Some(1000), body(&parts)).await.unwrap(), 3_000_000);
    // Without an offset: appended at the end.
    assert_eq!(store.append(&id, None, body(&[&data[3_000_000..]])).await.unwrap(), 5_000_000);

    // Wrong digest: refused, upload left intact.
    let wrong = Digest::sha256_of(b"nope");
    assert!(matches!(store.commit(&id, &wrong).await, Err(StorageError::DigestMismatch { .. })));
    assert_eq!(store.upload_size(&id).await.unwrap(), 5_000_000);

    assert_eq!(store.commit(&id, &d).await.unwrap(), 5_000_000);
    assert_eq!(read_all(&store, &d, None).await.2, data);
    assert!(dir_is_empty(&dir.path().join("uploads")));
    assert!(matches!(store.upload_size(&id).await, Err(StorageError::UploadUnknown(_))));
    assert!(matches!(store.commit(&id, &d).await, Err(StorageError::UploadUnknown(_))));
    assert!(matches!(store.append(&id, None, body(&[b"x"])).await, Err(StorageError::UploadUnknown(_))));

    // Committing content that already exists succeeds and drops the upload.
    let id2 = store.create_upload().await.unwrap();
    store.append(&id2, None, body(&[&data])).await.unwrap();
    assert_eq!(store.commit(&id2, &d).await.unwrap(), 5_000_000);
    assert!(dir_is_empty(&dir.path().join("uploads")));
    assert_eq!(store.list_blobs().await.unwrap(), vec![d]);
}

#[tokio::test]
async fn resume_after_restart_rehashes() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(2_000_000, 6);
    let d = Digest::sha256_of(&data);
    let id = {
        let store = BlobStore::open(dir.path()).await.unwrap();
        let id = store.create_upload().await.unwrap();
        store.append(&id, Some(0), body(&[&data[..1_234_567]])).await.unwrap();
        id
    };
    // A new store on the same root has no hash state for the upload.
    let store = BlobStore::open(dir.path()).await.unwrap();
    assert_eq!(store.upload_size(&id).await.unwrap(), 1_234_567);
    assert!(matches!(
        store.append(&id, Some(0), body(&[b"x"])).await,
        Err(StorageError::OffsetMismatch { expected: 0, actual: 1_234_567 })
    ));
    store.append(&id, Some(1_234_567), body(&[&data[1_234_567..]])).await.unwrap();
    assert_eq!(store.commit(&id, &d).await.unwrap(), data.len() as u64);
    assert_eq!(read_all(&store, &d, None).await.2, data);

    // Restart right before commit: commit alone re-hashes.
    let id = store.create_upload().await.unwrap();
    let data2 = pattern(300_000, 7);
    store.append(&id, None, body(&[&data2])).await.unwrap();
    let store = BlobStore::open(dir.path()).await.unwrap();
    let bad = Digest::sha256_of(&data2[1..]);
    assert!(matches!(store.commit(&id, &bad).await, Err(StorageError::DigestMismatch { .. })));
    assert_eq!(store.commit(&id, &Digest::sha256_of(&data2)).await.unwrap(), 300_000);
}

#[tokio::test]
async fn failed_body_truncates_back() {
    let (_dir, store) = store().await;
    let data = pattern(4_000_000, 8);
    let d = Digest::sha256_of(&data);
    let id = store.create_upload().await.unwrap();
    store.append(&id, Some(0), body(&[&data[..1_000_000]])).await.unwrap();

    // 2.5 MB arrive (some already written in batches), then the client goes away.
    let parts: Vec<&[u8]> = data[1_000_000..3_500_000].chunks(50_000).collect();
    let err = store.append(&id, Some(1_000_000), failing_body(&parts)).await.unwrap_err();
    assert!(matches!(err, StorageError::Body(_)), "{err:?}");
    assert_eq!(store.upload_size(&id).await.unwrap(), 1_000_000);

    // Resume from the reported offset; the in-memory hash state is still right.
    store.append(&id, Some(1_000_000), body(&[&data[1_000_000..]])).await.unwrap();
    assert_eq!(store.commit(&id, &d).await.unwrap(), 4_000_000);
    assert_eq!(read_all(&store, &d, None).await.2, data);
}

#[tokio::test]
async fn dropped_append_rolls_back() {
    let (_dir, store) = store().await;
    let data = pattern(3_000_000, 9);
    let d = Digest::sha256_of(&data);
    let id = store.create_upload().await.unwrap();
    store.append(&id, Some(0), body(&[&data[..500_000]])).await.unwrap();

    // Send 1.5 MB, then stall forever; the caller gives up and drops the future.
    let sent: Vec<Result<Bytes, io::Error>> =
        data[500_000..2_000_000].chunks(100_000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let stalled: BodyStream = Box::pin(stream::iter(sent).chain(stream::pending()));
    let r = tokio::time::timeout(Duration::from_millis(300), store.append(&id, None, stalled)).await;
    assert!(r.is_err(), "append should have been stalled");
    // The rollback runs in the background holding the upload lock; upload_size waits for it.
    assert_eq!(store.upload_size(&id).await.unwrap(), 500_000);
    store.append(&id, Some(500_000), body(&[&data[500_000..]])).await.unwrap();
    assert_eq!(store.commit(&id, &d).await.unwrap(), 3_000_000);

    // A dropped put_stream leaves no temporary file behind.
    let sent = vec![Ok(Bytes::from(pattern(2_500_000, 1)))];
    let stalled: BodyStream = Box::pin(stream::iter(sent).chain(stream::pending()));
    let r = tokio::time::timeout(Duration::from_millis(300), store.put_stream(&d, stalled)).await;
    assert!(r.is_err());
    let tmp = store.root().expect("a filesystem store").join("tmp");
    for _ in 0..100 {
        if dir_is_empty(&tmp) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dir_is_empty(&tmp));
}

#[tokio::test]
async fn hostile_upload_ids() {
    let (dir, store) = store().await;
    // Something an escaping id could hit.
    std::fs::write(dir.path().join("uploads/../secret"), b"x").unwrap();
    std::fs::create_dir_all(dir.path().join("victim")).unwrap();
    std::fs::write(dir.path().join("victim/data"), b"precious").unwrap();
    let d = Digest::sha256_of(b"precious");
    for id in [
        "",
        ".",
        "..",
        "../victim",
        "../../victim",
        "../secret",
        "/etc/passwd",
        "00000000-0000-0000-0000-000000000000/../../victim",
        "urn:uuid:00000000-0000-4000-8000-000000000000",
        "00000000-0000-4000-8000-00000000000G",
        "00000000-0000-4000-8000-00000000000A",
    ] {
        assert!(matches!(store.upload_size(id).await, Err(StorageError::UploadUnknown(_))), "{id}");
        assert!(matches!(
            store.append(id, None, body(&[b"evil"])).await,
            Err(StorageError::UploadUnknown(_))
        ));
        assert!(matches!(store.commit(id, &d).await, Err(StorageError::UploadUnknown(_))));
        assert!(!store.cancel(id).await.unwrap());
    }
    assert_eq!(std::fs::read(dir.path().join("victim/data")).unwrap(), b"precious");
    assert!(dir.path().join("secret").is_file());
    assert_eq!(store.stat(&d).await.unwrap(), None);

    // A well-formed id that was never created is unknown too.
    let ghost = "6f1c2d3e-4b5a-4978-8a6b-5c4d3e2f1a0b";
    assert!(matches!(store.upload_size(ghost).await, Err(StorageError::UploadUnknown(_))));
    assert!(matches!(store.append(ghost, Some(0), body(&[b"x"])).await, Err(StorageError::UploadUnknown(_))));
    assert!(dir_is_empty(&dir.path().join("uploads")));
}

#[tokio::test]
async fn cancel_removes_upload() {
    let (dir, store) = store().await;
    let id = store.create_upload().await.unwrap();
    store.append(&id, None, body(&[b"abc"])).await.unwrap();
    assert!(store.cancel(&id).await.unwrap());
    assert!(!store.cancel(&id).await.unwrap());
    assert!(dir_is_empty(&dir.path().join("uploads")));
    assert!(matches!(store.upload_size(&id).await, Err(StorageError::UploadUnknown(_))));
    assert!(matches!(
        store.commit(&id, &Digest::sha256_of(b"abc")).await,
        Err(StorageError::UploadUnknown(_))
    ));
}

#[tokio::test]
async fn stale_uploads_by_mtime() {
    let (dir, store) = store().await;
    let old = store.create_upload().await.unwrap();
    let fresh = store.create_upload().await.unwrap();
    store.append(&old, None, body(&[b"abc"])).await.unwrap();
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(dir.path().join("uploads").join(&old).join("data"))
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    // Junk in uploads/ is ignored.
    std::fs::create_dir(dir.path().join("uploads/not-a-uuid")).unwrap();

    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(store.stale_uploads(hour_ago).await.unwrap(), vec![old.clone()]);
    let mut all = vec![old.clone(), fresh.clone()];
    all.sort();
    assert_eq!(store.stale_uploads(SystemTime::now() + Duration::from_secs(60)).await.unwrap(), all);
    assert!(store.stale_uploads(SystemTime::UNIX_EPOCH).await.unwrap().is_empty());

    // Appending refreshes the time.
    store.append(&old, None, body(&[b"def"])).await.unwrap();
    assert!(store.stale_uploads(hour_ago).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_serialised() {
    let (_dir, store) = store().await;
    let id = store.create_upload().await.unwrap();
    let a = vec![vec![b'a'; 300_000]; 4];
    let b = vec![vec![b'b'; 300_000]; 4];

    // Both without offsets: both land, one after the other, never interleaved.
    let (ra, rb) = tokio::join!(
        store.append(&id, None, slow_body(a.clone(), Duration::from_millis(20))),
        store.append(&id, None, slow_body(b.clone(), Duration::from_millis(20))),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.max(rb), 2_400_000);
    assert_eq!(ra.min(rb), 1_200_000);
    let mut content = vec![b'a'; 1_200_000];
    if ra < rb {
        content.extend(vec![b'b'; 1_200_000]);
    } else {
        content = vec![b'b'; 1_200_000];
        content.extend(vec![b'a'; 1_200_000]);
    }

    // Both claiming the same offset: exactly one wins.
    let s1 = store.clone();
    let s2 = store.clone();
    let (i1, i2) = (id.clone(), id.clone());
    let t1 = tokio::spawn(async move {
        s1.append(&i1, Some(2_400_000), slow_body(vec![vec![b'c'; 1000]; 5], Duration::from_millis(20))).await
    });
    let t2 = tokio::spawn(async move {
        s2.append(&i2, Some(2_400_000), slow_body(vec![vec![b'c'; 1000]; 5], Duration::from_millis(20))).await
    });
    let (r1, r2) = (t1.await.unwrap(), t2.await.unwrap());
    let ok = [&r1, &r2].iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{r1:?} {r2:?}");
    assert!(
        [&r1, &r2].iter().any(|r| matches!(
            r,
            Err(StorageError::OffsetMismatch { expected: 2_400_000, actual: 2_405_000 })
        )),
        "{r1:?} {r2:?}"
    );
    content.extend(vec![b'c'; 5000]);
    let d = Digest::sha256_of(&content);
    assert_eq!(store.commit(&id, &d).await.unwrap(), content.len() as u64);
}
