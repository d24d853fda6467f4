//! OCI image layouts (`oci:`): `oci-layout`, `index.json`, `blobs/<alg>/<hex>`.
//!
//! Every write goes to a temporary file in the target directory, is verified and fsynced, then
//! renamed into place: a reader (or a crash) sees the old state or the new one. A sparse index
//! is simply an index whose absent children have no blob.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use wharf_client::{ByteStream, ClientError};
use wharf_oci::{Descriptor, Digest, MAX_MANIFEST_BYTES, Manifest, media_types};

use crate::stream::verified;
use crate::{MirrorError, RefName};

/// The annotation naming an `index.json` entry (what `oci:DIR:TAG` refers to).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const LAYOUT_FILE: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const READ_BUFFER: usize = 256 * 1024;

type ReferrersMap = HashMap<Digest, Vec<Descriptor>>;

/// One OCI image layout directory. Writes to `index.json` are serialised within the process.
pub struct OciLayout {
    root: PathBuf,
    index_lock: tokio::sync::Mutex<()>,
    /// subject digest -> referrers, built on first use, dropped when `index.json` changes.
    referrers: std::sync::Mutex<Option<Arc<ReferrersMap>>>,
    /// The `ref.name`s of `index.json`, read on first use, dropped when `index.json` changes.
    ref_names: std::sync::Mutex<Option<Arc<Vec<String>>>>,
    /// Whether anything was written since opened (an archive is re-packed only then).
    changed: AtomicBool,
}

/// `index.json` as JSON: an object whose `manifests`, if any, is an array. (Hostile layouts
/// and archives come here: nothing below may assume more than this checks.)
pub(crate) fn parse_index(path: &Path, bytes: &[u8]) -> Result<Value, MirrorError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| MirrorError::Invalid(format!("{} is not valid JSON: {e}", path.display())))?;
    if !v.is_object() {
        return Err(MirrorError::Invalid(format!("{} is not a JSON object", path.display())));
    }
    if !v["manifests"].is_array() && !v["manifests"].is_null() {
        return Err(MirrorError::Invalid(format!("{} has no manifests array", path.display())));
    }
    Ok(v)
}

/// The descriptors of a parsed `index.json` of the layout at `root`.
pub(crate) fn index_entries(root: &Path, index: &Value) -> Result<Vec<Descriptor>, MirrorError> {
    let list = index["manifests"].as_array().cloned().unwrap_or_default();
    list.into_iter()
        .map(|e| {
            serde_json::from_value(e).map_err(|e| {
                MirrorError::Invalid(format!("{}/index.json has a bad entry: {e}", root.display()))
            })
        })
        .collect()
}

/// The string annotations of a parsed `index.json` itself.
pub(crate) fn index_annotations(index: &Value) -> HashMap<String, String> {
    index["annotations"]
        .as_object()
        .map(|a| a.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

impl std::fmt::Debug for OciLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciLayout").field("root", &self.root).finish_non_exhaustive()
    }
}

impl OciLayout {
    fn at(root: &Path) -> OciLayout {
        OciLayout {
            root: root.to_owned(),
            index_lock: tokio::sync::Mutex::new(()),
            referrers: std::sync::Mutex::new(None),
            ref_names: std::sync::Mutex::new(None),
            changed: AtomicBool::new(false),
        }
    }

    /// An existing layout, to read from.
    pub async fn open(root: &Path) -> Result<OciLayout, MirrorError> {
        if tokio::fs::metadata(root.join("oci-layout")).await.is_err() {
            return Err(MirrorError::NotFound(format!(
                "{} is not an OCI image layout: it has no oci-layout file",
                root.display()
            )));
        }
        Ok(OciLayout::at(root))
    }

    /// A layout to write to, created if missing.
    pub async fn create(root: &Path) -> Result<OciLayout, MirrorError> {
        let ctx = || format!("creating OCI layout {}", root.display());
        tokio::fs::create_dir_all(root.join("blobs")).await.map_err(MirrorError::io(ctx()))?;
        let layout = OciLayout::at(root);
        if tokio::fs::metadata(root.join("oci-layout")).await.is_err() {
            write_atomic(root, "oci-layout", LAYOUT_FILE).await.map_err(MirrorError::io(ctx()))?;
        }
        if tokio::fs::metadata(root.join("index.json")).await.is_err() {
            let empty = json!({"schemaVersion": 2, "mediaType": media_types::OCI_INDEX, "manifests": []});
            layout.write_index(&empty).await?;
        }
        // Creating the skeleton is not content: an empty new archive is not worth writing.
        layout.changed.store(false, Ordering::Relaxed);
        Ok(layout)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether a blob or `index.json` was written since the layout was opened.
    pub fn changed(&self) -> bool {
        self.changed.load(Ordering::Relaxed)
    }

    /// [`OciLayout::changed`], and from now on unchanged (once the changes are saved).
    pub(crate) fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::Relaxed)
    }

    /// Saving the changes failed: they are still to be saved.
    pub(crate) fn mark_changed(&self) {
        self.changed.store(true, Ordering::Relaxed);
    }

    fn blob_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join(digest.algorithm().as_str())
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir(digest).join(digest.hex())
    }

    async fn read_index(&self) -> Result<Value, MirrorError> {
        let path = self.root.join("index.json");
        let bytes =
            tokio::fs::read(&path).await.map_err(MirrorError::io(format!("reading {}", path.display())))?;
        parse_index(&path, &bytes)
    }

    async fn write_index(&self, index: &Value) -> Result<(), MirrorError> {
        let bytes = serde_json::to_vec(index).expect("a JSON value serialises");
        write_atomic(&self.root, "index.json", &bytes)
            .await
            .map_err(MirrorError::io(format!("writing {}/index.json", self.root.display())))?;
        self.changed.store(true, Ordering::Relaxed);
        *self.referrers.lock().expect("not poisoned") = None;
        *self.ref_names.lock().expect("not poisoned") = None;
        Ok(())
    }

    /// The entries of `index.json`.
    pub async fn entries(&self) -> Result<Vec<Descriptor>, MirrorError> {
        index_entries(&self.root, &self.read_index().await?)
    }

    /// The entry named `name`; without a name, the only entry (an error if there are several).
    pub async fn resolve(&self, wanted: Option<&RefName>) -> Result<Option<Descriptor>, MirrorError> {
        let entries = self.entries().await?;
        let name = |d: &Descriptor| d.annotations.as_ref().and_then(|a| a.get(REF_NAME)).cloned();
        match wanted {
            Some(t) => Ok(entries.into_iter().find(|d| name(d).as_deref() == Some(t.as_str()))),
            None if entries.len() <= 1 => Ok(entries.into_iter().next()),
            None => {
                let tags: Vec<String> = entries.iter().filter_map(name).collect();
                Err(MirrorError::InvalidReference(format!(
                    "OCI layout {} holds {} images: name one with :NAME (names: {})",
                    self.root.display(),
                    entries.len(),
                    if tags.is_empty() { "none".to_owned() } else { tags.join(", ") }
                )))
            }
        }
    }

    /// The annotations of `index.json` itself (e.g. the part numbers of a split bundle).
    pub async fn index_annotations(&self) -> Result<HashMap<String, String>, MirrorError> {
        Ok(index_annotations(&self.read_index().await?))
    }

    /// Every `ref.name` in `index.json`, in entry order.
    pub async fn ref_names(&self) -> Result<Vec<String>, MirrorError> {
        Ok(self.ref_names_shared().await?.as_ref().clone())
    }

    /// [`OciLayout::ref_names`], read once and kept until `index.json` is written.
    pub(crate) async fn ref_names_shared(&self) -> Result<Arc<Vec<String>>, MirrorError> {
        if let Some(names) = self.ref_names.lock().expect("not poisoned").clone() {
            return Ok(names);
        }
        // Read under the index lock, so that no write (which drops the cache) comes between
        // the read and the caching.
        let _guard = self.index_lock.lock().await;
        if let Some(names) = self.ref_names.lock().expect("not poisoned").clone() {
            return Ok(names);
        }
        let names: Arc<Vec<String>> = Arc::new(
            self.entries()
                .await?
                .into_iter()
                .filter_map(|d| d.annotations.and_then(|mut a| a.remove(REF_NAME)))
                .collect(),
        );
        *self.ref_names.lock().expect("not poisoned") = Some(names.clone());
        Ok(names)
    }

    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, MirrorError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(MirrorError::io(format!("reading {}", self.blob_path(digest).display()))(e)),
        }
    }

    /// A manifest-sized blob, verified against its digest; `None` when absent.
    pub async fn read_manifest(&self, digest: &Digest) -> Result<Option<Bytes>, MirrorError> {
        let path = self.blob_path(digest);
        match self.blob_size(digest).await? {
            None => return Ok(None),
            Some(n) if n > MAX_MANIFEST_BYTES as u64 => {
                return Err(MirrorError::Invalid(format!(
                    "{} is {n} bytes: too large for a manifest (4 MiB)",
                    path.display()
                )));
            }
            Some(_) => {}
        }
        let bytes =
            tokio::fs::read(&path).await.map_err(MirrorError::io(format!("reading {}", path.display())))?;
        if !digest.verifies(&bytes) {
            return Err(MirrorError::Invalid(format!(
                "{} does not match its digest {digest}: the layout is corrupt",
                path.display()
            )));
        }
        Ok(Some(Bytes::from(bytes)))
    }

    /// Stream a blob from `offset`. From offset 0 the stream is verified against the digest.
    pub async fn open_blob(&self, digest: &Digest, offset: u64) -> Result<(u64, ByteStream), ClientError> {
        let path = self.blob_path(digest);
        let mut file = tokio::fs::File::open(&path).await?;
        let size = file.metadata().await?.len();
        if offset > 0 {
            file.seek(SeekFrom::Start(offset)).await?;
        }
        let raw: ByteStream = Box::pin(
            tokio_util::io::ReaderStream::with_capacity(file, READ_BUFFER)
                .map(|r| r.map_err(ClientError::Io)),
        );
        let stream = if offset == 0 { verified(raw, digest.clone(), size) } else { raw };
        Ok((size, stream))
    }

    /// Write a blob from a stream: temporary file, verified (digest and size), fsynced, renamed.
    pub async fn write_blob(&self, digest: &Digest, size: u64, body: ByteStream) -> Result<(), MirrorError> {
        self.write_blob_checked(digest, size, body, true).await
    }

    /// [`OciLayout::write_blob`] for a stream that verifies itself against `digest` (ending
    /// with an error on a mismatch): only its size is checked here, not hashed again.
    pub(crate) async fn write_verified_blob(
        &self,
        digest: &Digest,
        size: u64,
        body: ByteStream,
    ) -> Result<(), MirrorError> {
        self.write_blob_checked(digest, size, body, false).await
    }

    async fn write_blob_checked(
        &self,
        digest: &Digest,
        size: u64,
        mut body: ByteStream,
        hash: bool,
    ) -> Result<(), MirrorError> {
        let dir = self.blob_dir(digest);
        let ctx = || format!("writing blob {digest} into {}", self.root.display());
        tokio::fs::create_dir_all(&dir).await.map_err(MirrorError::io(ctx()))?;
        let tmp =
            tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir).map_err(MirrorError::io(ctx()))?;
        let (file, tmp_path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut hasher = hash.then(|| digest.algorithm().hasher());
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(MirrorError::client(format!("reading blob {digest} from the source")))?;
            if let Some(h) = hasher.as_mut() {
                h.update(&chunk);
            }
            written += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(MirrorError::io(ctx()))?;
        }
        // A self-verifying stream has ended without error: its bytes hash to `digest`.
        let actual = hasher.map_or_else(|| digest.clone(), |h| h.finish());
        if actual != *digest || written != size {
            return Err(MirrorError::Invalid(format!(
                "blob {digest} from the source is {written} bytes hashing to {actual} \
                 (expected {size} bytes): not written"
            )));
        }
        file.sync_all().await.map_err(MirrorError::io(ctx()))?;
        drop(file);
        let target = self.blob_path(digest);
        tokio::task::spawn_blocking(move || tmp_path.persist(target).map_err(|e| e.error))
            .await
            .map_err(|e| MirrorError::Invalid(format!("blob writer task failed: {e}")))?
            .map_err(MirrorError::io(ctx()))?;
        sync_dir(&dir).await;
        self.changed.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Write small content (a manifest) as a blob.
    pub async fn write_bytes(&self, digest: &Digest, bytes: Bytes) -> Result<(), MirrorError> {
        let size = bytes.len() as u64;
        let stream: ByteStream = Box::pin(futures_util::stream::iter([Ok(bytes)]));
        self.write_blob(digest, size, stream).await
    }

    /// Point `name` at `desc` in `index.json` (replacing what it named), or without a name add
    /// an unnamed entry for `desc` unless one exists (how referrers stay reachable in a layout).
    /// Returns whether `index.json` changed.
    pub async fn set_entry(&self, desc: &Descriptor, tag: Option<&RefName>) -> Result<bool, MirrorError> {
        let _guard = self.index_lock.lock().await;
        let mut index = self.read_index().await?;
        let mut list = index["manifests"].as_array().cloned().unwrap_or_default();
        let ref_name = |e: &Value| e["annotations"][REF_NAME].as_str().map(str::to_owned);
        let digest = desc.digest.to_string();
        let mut entry = serde_json::to_value(desc).expect("a descriptor serialises");
        match tag {
            Some(t) => {
                let same = |e: &Value| ref_name(e).as_deref() == Some(t.as_str());
                if list.iter().any(|e| same(e) && e["digest"] == digest.as_str()) {
                    return Ok(false);
                }
                list.retain(|e| !same(e));
                entry["annotations"][REF_NAME] = json!(t.as_str());
            }
            None => {
                if list.iter().any(|e| e["digest"] == digest.as_str()) {
                    return Ok(false);
                }
            }
        }
        list.push(entry);
        index["manifests"] = Value::Array(list);
        self.write_index(&index).await?;
        Ok(true)
    }

    /// Manifests in `index.json` whose `subject` is `subject`, as referrers descriptors
    /// (with `artifactType` and annotations): a layout's answer to the referrers API.
    pub async fn referrers(&self, subject: &Digest) -> Result<Vec<Descriptor>, MirrorError> {
        let cached = self.referrers.lock().expect("not poisoned").clone();
        let map = match cached {
            Some(m) => m,
            None => {
                let m = Arc::new(self.scan_referrers().await?);
                *self.referrers.lock().expect("not poisoned") = Some(m.clone());
                m
            }
        };
        Ok(map.get(subject).cloned().unwrap_or_default())
    }

    async fn scan_referrers(&self) -> Result<ReferrersMap, MirrorError> {
        let mut map = ReferrersMap::new();
        for entry in self.entries().await? {
            if !media_types::is_manifest(&entry.media_type) {
                continue;
            }
            let Some(bytes) = self.read_manifest(&entry.digest).await? else { continue };
            let Ok(m) = Manifest::parse(Some(&entry.media_type), &bytes) else { continue };
            if let Some(subject) = &m.subject {
                let d =
                    crate::referrers::referrer_descriptor(&entry.digest, &entry.media_type, bytes.len(), &m);
                let list = map.entry(subject.digest.clone()).or_default();
                if !list.iter().any(|x| x.digest == d.digest) {
                    list.push(d);
                }
            }
        }
        Ok(map)
    }
}

/// Write `dir/name` atomically: temporary file in `dir`, fsync, rename, fsync the directory.
pub(crate) async fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = dir.to_owned();
    let name = name.to_owned();
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(dir.join(&name)).map_err(|e| e.error)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// fsync a directory so a rename in it is durable (best effort: not every file system can).
async fn sync_dir(dir: &Path) {
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).await.unwrap();
        let m =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        let d = Digest::sha256_of(m);
        layout.write_bytes(&d, Bytes::from_static(m)).await.unwrap();
        assert_eq!(layout.read_manifest(&d).await.unwrap().unwrap(), &m[..]);
        let desc = Descriptor {
            media_type: media_types::OCI_INDEX.into(),
            digest: d.clone(),
            size: m.len() as u64,
            urls: None,
            annotations: None,
            platform: None,
            artifact_type: None,
            data: None,
        };
        let v1: RefName = "team/app:v1".parse().unwrap();
        assert!(layout.set_entry(&desc, Some(&v1)).await.unwrap());
        assert!(!layout.set_entry(&desc, Some(&v1)).await.unwrap());
        assert_eq!(layout.resolve(Some(&v1)).await.unwrap().unwrap().digest, d);
        assert_eq!(layout.resolve(None).await.unwrap().unwrap().digest, d);
        assert_eq!(layout.ref_names().await.unwrap(), vec!["team/app:v1"]);
        assert!(layout.changed());
        // Reopened: the same content.
        let again = OciLayout::open(dir.path()).await.unwrap();
        assert_eq!(again.resolve(Some(&v1)).await.unwrap().unwrap().digest, d);
        // No temporary files left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn refuses_wrong_content() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).await.unwrap();
        let d = Digest::sha256_of(b"right");
        assert!(layout.write_bytes(&d, Bytes::from_static(b"wrong")).await.is_err());
        assert_eq!(layout.blob_size(&d).await.unwrap(), None);
        assert!(OciLayout::open(&dir.path().join("nope")).await.is_err());
    }
}
