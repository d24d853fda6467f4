//! The S3 backend against a real Garage on loopback: the same contract as the filesystem
//! store, plus what only a shared bucket has to show (uploads that hop between replicas, an
//! object store that goes away and comes back, start-up checks, presigned redirects).

use std::io;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use wharf_oci::{Algorithm, Digest};
use wharf_storage::{BlobStore, BodyStream, S3Config, StorageError};
use wharf_testkit::{GARAGE_REGION, Garage};

fn config(garage: &Garage, prefix: &str) -> S3Config {
    S3Config {
        bucket: garage.bucket.clone(),
        endpoint: Some(garage.endpoint.clone()),
        region: GARAGE_REGION.into(),
        prefix: prefix.into(),
        access_key_id: garage.access_key_id.clone(),
        secret_access_key: garage.secret_access_key.clone(),
        redirect: false,
    }
}

async fn open(garage: &Garage, prefix: &str) -> BlobStore {
    BlobStore::open_s3(config(garage, prefix)).await.expect("open the bucket")
}

fn body(chunks: Vec<Vec<u8>>) -> BodyStream {
    Box::pin(stream::iter(chunks.into_iter().map(|c| Ok::<_, io::Error>(Bytes::from(c)))))
}

fn failing_body(chunks: Vec<Vec<u8>>) -> BodyStream {
    let mut items: Vec<Result<Bytes, io::Error>> = chunks.into_iter().map(|c| Ok(Bytes::from(c))).collect();
    items.push(Err(io::Error::new(io::ErrorKind::ConnectionReset, "client went away")));
    Box::pin(stream::iter(items))
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

#[tokio::test]
async fn monolithic_uploads_small_and_multipart_read_back_with_ranges() {
    let garage = Garage::start();
    let store = open(&garage, "mono").await;

    let small = pattern(1000, 1);
    let d_small = Digest::sha256_of(&small);
    assert_eq!(store.put_stream(&d_small, body(vec![small.clone()])).await.unwrap(), 1000);
    assert_eq!(store.stat(&d_small).await.unwrap(), Some(1000));
    assert_eq!(read_all(&store, &d_small, None).await, (1000, 0, small.clone()));
    assert_eq!(read_all(&store, &d_small, Some((10, 19))).await, (1000, 10, small[10..20].to_vec()));
    // A range past the end is clamped; one starting past it is empty (the caller answers 416).
    assert_eq!(read_all(&store, &d_small, Some((990, 5000))).await.2, small[990..].to_vec());
    assert_eq!(read_all(&store, &d_small, Some((1000, 1001))).await.2, Vec::<u8>::new());

    // 20 MiB in 1 MiB chunks: more than one multipart part, completed only after verification.
    let big = pattern(20 << 20, 2);
    let d_big = Digest::sha256_of(&big);
    let chunks: Vec<Vec<u8>> = big.chunks(1 << 20).map(<[u8]>::to_vec).collect();
    assert_eq!(store.put_stream(&d_big, body(chunks)).await.unwrap(), big.len() as u64);
    let (size, _, back) = read_all(&store, &d_big, None).await;
    assert_eq!(size, big.len() as u64);
    assert!(back == big, "20 MiB blob reads back byte for byte");
    assert_eq!(
        read_all(&store, &d_big, Some((9 << 20, (9 << 20) + 99))).await.2,
        big[9 << 20..(9 << 20) + 100].to_vec()
    );

    // sha512 works as sha256 does.
    let d512 = Digest::compute(Algorithm::Sha512, &small);
    store.put_stream(&d512, body(vec![small.clone()])).await.unwrap();
    assert_eq!(read_all(&store, &d512, None).await.2, small);

    let listed = store.list_blobs().await.unwrap();
    for d in [&d_small, &d_big, &d512] {
        assert!(listed.contains(d), "{d} listed");
    }
}

#[tokio::test]
async fn content_that_hashes_wrong_or_breaks_off_is_never_visible() {
    let garage = Garage::start();
    let store = open(&garage, "bad").await;
    let data = pattern(12 << 20, 3);
    let claimed = Digest::sha256_of(b"something else");
    let chunks: Vec<Vec<u8>> = data.chunks(1 << 20).map(<[u8]>::to_vec).collect();
    let err = store.put_stream(&claimed, body(chunks.clone())).await.unwrap_err();
    assert!(matches!(err, StorageError::DigestMismatch { .. }), "{err}");
    assert_eq!(store.stat(&claimed).await.unwrap(), None, "a blob that hashes wrong is not published");

    let right = Digest::sha256_of(&data);
    let err = store.put_stream(&right, failing_body(chunks[..10].to_vec())).await.unwrap_err();
    assert!(matches!(err, StorageError::Body(_)), "{err}");
    assert_eq!(store.stat(&right).await.unwrap(), None, "a broken-off upload is not published");
    assert!(store.list_blobs().await.unwrap().is_empty());
}

#[tokio::test]
async fn chunked_upload_of_small_chunks_hops_between_replicas() {
    let garage = Garage::start();
    // Two stores over one bucket: two replicas, no state shared but the bucket.
    let a = open(&garage, "hop").await;
    let b = open(&garage, "hop").await;
    let data = pattern(7 << 20, 4);
    let digest = Digest::sha256_of(&data);
    // Chunks well under S3's 5 MiB part minimum, and one above it.
    let pieces = [&data[..1000], &data[1000..300_000], &data[300_000..6 << 20], &data[6 << 20..]];

    let id = a.create_upload().await.unwrap();
    assert_eq!(b.upload_size(&id).await.unwrap(), 0, "the other replica knows the upload");
    let mut offset = 0u64;
    for (i, piece) in pieces.iter().enumerate() {
        let store = if i % 2 == 0 { &a } else { &b };
        offset = store.append(&id, Some(offset), body(vec![piece.to_vec()])).await.unwrap();
        let other = if i % 2 == 0 { &b } else { &a };
        assert_eq!(other.upload_size(&id).await.unwrap(), offset);
    }
    assert_eq!(offset, data.len() as u64);
    // A chunk at the wrong offset is refused without writing anything.
    let err = b.append(&id, Some(5), body(vec![b"x".to_vec()])).await.unwrap_err();
    assert!(matches!(err, StorageError::OffsetMismatch { expected: 5, .. }), "{err}");

    // A wrong digest leaves the upload as it was; the right one then commits, on either replica.
    let wrong = Digest::sha256_of(b"nope");
    assert!(matches!(a.commit(&id, &wrong).await.unwrap_err(), StorageError::DigestMismatch { .. }));
    assert_eq!(a.stat(&wrong).await.unwrap(), None);
    assert_eq!(b.commit(&id, &digest).await.unwrap(), data.len() as u64);
    let (_, _, back) = read_all(&a, &digest, None).await;
    assert!(back == data, "composed blob reads back byte for byte");
    assert!(matches!(a.upload_size(&id).await.unwrap_err(), StorageError::UploadUnknown(_)), "upload gone");
}

#[tokio::test]
async fn broken_append_resumes_and_single_chunk_commits_on_the_other_replica() {
    let garage = Garage::start();
    let a = open(&garage, "resume").await;
    let b = open(&garage, "resume").await;
    let data = pattern(3 << 20, 5);
    let digest = Digest::sha256_of(&data);
    let id = a.create_upload().await.unwrap();
    let err = a.append(&id, Some(0), failing_body(vec![data[..1 << 20].to_vec()])).await.unwrap_err();
    assert!(matches!(err, StorageError::Body(_)), "{err}");
    assert_eq!(b.upload_size(&id).await.unwrap(), 0, "a chunk that broke off leaves nothing");
    assert_eq!(a.append(&id, Some(0), body(vec![data.clone()])).await.unwrap(), data.len() as u64);
    // Replica b never saw the bytes: it verifies from the digest replica a recorded.
    assert_eq!(b.commit(&id, &digest).await.unwrap(), data.len() as u64);
    assert_eq!(read_all(&b, &digest, None).await.2, data);

    // Cancel and expiry.
    let id = b.create_upload().await.unwrap();
    b.append(&id, None, body(vec![b"abandoned".to_vec()])).await.unwrap();
    let future = SystemTime::now() + Duration::from_secs(3600);
    assert_eq!(a.stale_uploads(future).await.unwrap(), vec![id.clone()]);
    assert!(a.stale_uploads(SystemTime::now() - Duration::from_secs(3600)).await.unwrap().is_empty());
    assert!(a.cancel(&id).await.unwrap());
    assert!(!a.cancel(&id).await.unwrap());
    assert!(matches!(b.upload_size(&id).await.unwrap_err(), StorageError::UploadUnknown(_)));
    // Hostile ids never reach a key.
    assert!(matches!(a.upload_size("../blobs").await.unwrap_err(), StorageError::UploadUnknown(_)));
}

#[tokio::test]
async fn gc_support_touch_trash_restore_purge() {
    let garage = Garage::start();
    let store = open(&garage, "gc").await;
    let d = store.put_bytes(None, b"collect me").await.unwrap();
    let before = store.blob_age(&d).await.unwrap().expect("stored");
    assert_eq!(before.size, 10);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(store.touch(&d).await.unwrap(), Some(10));
    let after = store.blob_age(&d).await.unwrap().expect("stored");
    assert!(after.modified > before.modified, "touch restarts the grace period");

    assert!(store.trash(&d).await.unwrap().is_some());
    assert_eq!(store.stat(&d).await.unwrap(), None, "trashed blobs are not readable");
    assert_eq!(store.list_trash().await.unwrap(), vec![d.clone()]);
    store.restore(&d).await.unwrap();
    assert_eq!(store.stat(&d).await.unwrap(), Some(10));
    assert!(store.list_trash().await.unwrap().is_empty());
    store.trash(&d).await.unwrap();
    store.purge(&d).await.unwrap();
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert!(store.list_trash().await.unwrap().is_empty());
    assert!(store.trash(&d).await.unwrap().is_none(), "absent blobs have nothing to trash");
    assert!(!store.delete(&d).await.unwrap());
}

#[tokio::test]
async fn start_fails_clearly_on_wrong_credentials_or_missing_bucket() {
    let garage = Garage::start();
    let mut bad_key = config(&garage, "");
    bad_key.secret_access_key = "0".repeat(64);
    let err = BlobStore::open_s3(bad_key).await.unwrap_err().to_string();
    assert!(err.contains(&garage.endpoint) && err.contains("bucket wharf"), "{err}");

    let mut missing = config(&garage, "");
    missing.bucket = "no-such-bucket".into();
    let err = BlobStore::open_s3(missing).await.unwrap_err().to_string();
    assert!(err.contains("no-such-bucket") && err.contains(&garage.endpoint), "{err}");
}

#[tokio::test]
async fn object_store_going_away_is_unavailable_and_coming_back_needs_no_restart() {
    let mut garage = Garage::start();
    let store = open(&garage, "outage").await;
    let d = store.put_bytes(None, b"still here").await.unwrap();
    garage.stop();
    let err = store.stat(&d).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains(&garage.endpoint), "{err}");
    let other = Digest::sha256_of(b"during the outage");
    let err = store.put_stream(&other, body(vec![b"during the outage".to_vec()])).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err}");
    garage.resume();
    assert_eq!(read_all(&store, &d, None).await.2, b"still here".to_vec());
    assert_eq!(store.stat(&other).await.unwrap(), None, "nothing half-written from the outage");
    store.put_stream(&other, body(vec![b"during the outage".to_vec()])).await.unwrap();
    assert_eq!(store.stat(&other).await.unwrap(), Some(17));
}

#[tokio::test]
async fn redirect_urls_are_presigned_and_fetchable() {
    let garage = Garage::start();
    let mut cfg = config(&garage, "redirect");
    cfg.redirect = true;
    let store = BlobStore::open_s3(cfg).await.unwrap();
    assert!(store.redirects());
    let data = pattern(4096, 6);
    let d = store.put_bytes(None, &data).await.unwrap();
    let url = store.redirect_url(&d).await.unwrap().expect("a presigned URL");
    assert!(url.starts_with(&garage.endpoint) && url.contains("X-Amz-Signature"), "{url}");
    let got = reqwest::get(&url).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().to_vec(), data);
    let ranged = reqwest::Client::new().get(&url).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().await.unwrap().to_vec(), data[10..20].to_vec());
}
