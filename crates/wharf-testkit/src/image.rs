//! Deterministic multi-platform test images: real gzip'd tar layers, valid image configs,
//! platform manifests and an index (OCI or Docker media types), in memory or as an OCI layout.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;

use flate2::Compression;
use flate2::GzBuilder;
use serde_json::{Value, json};

use crate::{Rng, digest_hex, sha256_digest};

/// Media types used by the generator and the signature helpers.
pub mod media_type {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const COSIGN_SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
    pub const IN_TOTO: &str = "application/vnd.in-toto+json";
    pub const SPDX_JSON: &str = "application/spdx+json";
}

/// The annotation that names a tag in an OCI image layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor (the three fields every registry needs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    /// `{"digest","mediaType","size"}` as JSON.
    pub fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// A blob (config, layer, signature payload...) with its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub media_type: String,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Blob { digest: sha256_digest(&bytes), bytes, media_type: media_type.to_owned() }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor { media_type: self.media_type.clone(), digest: self.digest.clone(), size: self.size() }
    }
}

/// A manifest or index: the exact bytes, their digest and media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub media_type: String,
}

impl Manifest {
    /// Serialises `value` (keys sorted, pretty-printed: not the canonical compact form, so a
    /// registry that re-serialises manifests is caught by a digest check).
    pub fn from_json(media_type: &str, value: &Value) -> Self {
        let bytes = serde_json::to_vec_pretty(&sorted(value)).expect("serialise manifest");
        Self::from_bytes(media_type, bytes)
    }

    pub fn from_bytes(media_type: &str, bytes: Vec<u8>) -> Self {
        Manifest { digest: sha256_digest(&bytes), bytes, media_type: media_type.to_owned() }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor { media_type: self.media_type.clone(), digest: self.digest.clone(), size: self.size() }
    }

    /// The parsed JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).expect("generated manifest is JSON")
    }
}

/// Rebuilds maps in sorted key order, so the output does not depend on whether serde_json's
/// `preserve_order` feature is enabled somewhere in the build.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                out.insert(k.clone(), sorted(&map[k]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// `os/architecture[/variant]`, as in docker, podman and containerd.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]` (no normalisation: the strings are used as given).
    pub fn parse(s: &str) -> Self {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The `platform` object of an index descriptor, or of an image config's fields.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"architecture": self.architecture, "os": self.os});
        if let Some(variant) = &self.variant {
            v["variant"] = json!(variant);
        }
        v
    }

    fn file_label(&self) -> String {
        self.to_string().replace('/', "-")
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(format!("platform {s:?} is not os/arch[/variant]"));
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Which family of media types the image uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaTypes {
    /// OCI image index, manifests, configs and layers.
    Oci,
    /// Docker manifest list and schema2 manifests.
    Docker,
}

/// One child of the index: a platform image, or a buildx-style attestation manifest.
#[derive(Clone, Debug)]
pub struct ImageChild {
    /// `unknown/unknown` for attestation manifests.
    pub platform: Platform,
    pub manifest: Manifest,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// For an attestation manifest: the digest of the platform manifest it describes.
    pub attests: Option<String>,
}

impl ImageChild {
    /// Config then layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }

    /// Bytes of the manifest, config and layers.
    pub fn total_size(&self) -> u64 {
        self.manifest.size() + self.blobs().map(Blob::size).sum::<u64>()
    }

    pub fn is_attestation(&self) -> bool {
        self.attests.is_some()
    }
}

/// A generated multi-platform image: an index (tagged `tag`) and its children.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub tag: String,
    pub index: Manifest,
    /// In index order: the platform images first, then attestation manifests, if any.
    pub children: Vec<ImageChild>,
    pub media_types: MediaTypes,
}

impl TestImage {
    pub fn builder() -> TestImageBuilder {
        TestImageBuilder::default()
    }

    /// The platform images (attestation manifests left out).
    pub fn platforms(&self) -> impl Iterator<Item = &ImageChild> {
        self.children.iter().filter(|c| !c.is_attestation())
    }

    /// The platform image for `os/arch[/variant]`; `linux/arm64` also finds `linux/arm64/v8`
    /// when there is only one arm64. Panics when absent.
    pub fn platform(&self, platform: &str) -> &ImageChild {
        let want = Platform::parse(platform);
        let exact = self.platforms().find(|c| c.platform == want);
        exact
            .or_else(|| {
                let mut loose = self.platforms().filter(|c| {
                    want.variant.is_none()
                        && c.platform.os == want.os
                        && c.platform.architecture == want.architecture
                });
                let first = loose.next();
                if loose.next().is_some() { None } else { first }
            })
            .unwrap_or_else(|| panic!("the test image has no platform {platform}"))
    }

    /// The attestation manifest of a platform image, if the image was built with attestations.
    pub fn attestation_of(&self, child_digest: &str) -> Option<&ImageChild> {
        self.children.iter().find(|c| c.attests.as_deref() == Some(child_digest))
    }

    /// Every distinct blob (configs and layers) of every child, first occurrence order.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut seen = BTreeSet::new();
        self.children.iter().flat_map(ImageChild::blobs).filter(|b| seen.insert(b.digest.clone())).collect()
    }

    /// The index descriptor (what a referrer's `subject` points at).
    pub fn index_descriptor(&self) -> Descriptor {
        self.index.descriptor()
    }

    /// `oci:DIR:TAG` for skopeo.
    pub fn oci_ref(&self, dir: &Path) -> String {
        format!("oci:{}:{}", dir.display(), self.tag)
    }

    /// Writes (or adds to) an OCI image layout: `oci-layout`, `blobs/sha256/*` and `index.json`
    /// with an entry for the index annotated `org.opencontainers.image.ref.name = tag`
    /// (an existing entry with the same tag is replaced). `skopeo copy --all oci:DIR:TAG` reads it
    /// (skopeo 1.9 only for OCI media types: it skips a Docker manifest list in `index.json`).
    pub fn write_oci_layout(&self, dir: &Path) {
        let mut manifests: Vec<&Manifest> = vec![&self.index];
        manifests.extend(self.children.iter().map(|c| &c.manifest));
        let blobs = self.blobs();
        let contents = manifests
            .iter()
            .map(|m| (&m.digest, &m.bytes))
            .chain(blobs.iter().map(|b| (&b.digest, &b.bytes)));
        write_layout_blobs(dir, contents);
        add_layout_ref(dir, &self.index.descriptor(), &self.tag);
    }

    /// Writes an `oci-archive:` file: a tar of the OCI image layout.
    pub fn write_oci_archive(&self, file: &Path) {
        let tmp = tempfile::tempdir().expect("temp dir");
        self.write_oci_layout(tmp.path());
        tar_layout(tmp.path(), file);
    }
}

/// Writes `oci-layout` and the given contents under `blobs/sha256/` (creating `dir`).
pub fn write_layout_blobs<'a>(dir: &Path, contents: impl IntoIterator<Item = (&'a String, &'a Vec<u8>)>) {
    let blob_dir = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir).expect("create layout dir");
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write oci-layout");
    for (digest, bytes) in contents {
        let path = blob_dir.join(digest_hex(digest));
        if !path.exists() {
            fs::write(&path, bytes).expect("write layout blob");
        }
    }
}

/// Adds `descriptor` to the layout's `index.json` under `tag` (replacing an entry with that tag).
pub fn add_layout_ref(dir: &Path, descriptor: &Descriptor, tag: &str) {
    let index_path = dir.join("index.json");
    let mut entries: Vec<Value> = match fs::read(&index_path) {
        Ok(bytes) => {
            let v: Value = serde_json::from_slice(&bytes).expect("index.json is JSON");
            v["manifests"].as_array().cloned().unwrap_or_default()
        }
        Err(_) => Vec::new(),
    };
    entries.retain(|e| e["annotations"][REF_NAME].as_str() != Some(tag));
    let mut entry = descriptor.to_json();
    entry["annotations"] = json!({ REF_NAME: tag });
    entries.push(entry);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": entries,
    });
    let bytes = serde_json::to_vec_pretty(&sorted(&index)).expect("serialise index.json");
    fs::write(index_path, bytes).expect("write index.json");
}

/// Tars an OCI layout directory into an `oci-archive:` file (entries relative to the layout).
pub fn tar_layout(dir: &Path, file: &Path) {
    let out = fs::File::create(file).expect("create archive");
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_path_with_name(dir.join("oci-layout"), "oci-layout").expect("tar oci-layout");
    tar.append_path_with_name(dir.join("index.json"), "index.json").expect("tar index.json");
    let mut names: Vec<_> = fs::read_dir(dir.join("blobs/sha256"))
        .expect("read blobs")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    names.sort();
    for name in names {
        let rel = Path::new("blobs/sha256").join(&name);
        tar.append_path_with_name(dir.join(&rel), &rel).expect("tar blob");
    }
    tar.into_inner().and_then(|mut f| f.flush()).expect("finish archive");
}

/// Builds a [`TestImage`]. Everything is derived from the seed (and the shared base label), so
/// the same builder settings always give the same digests.
#[derive(Clone, Debug)]
pub struct TestImageBuilder {
    seed: u64,
    tag: String,
    platforms: Vec<Platform>,
    layers: usize,
    layer_size: usize,
    shared_base: Option<(String, usize)>,
    media_types: MediaTypes,
    attestations: bool,
}

impl Default for TestImageBuilder {
    fn default() -> Self {
        TestImageBuilder {
            seed: 0,
            tag: "latest".into(),
            platforms: ["linux/amd64", "linux/arm64/v8", "linux/arm/v7", "linux/s390x"]
                .iter()
                .map(|p| Platform::parse(p))
                .collect(),
            layers: 1,
            layer_size: 1024,
            shared_base: None,
            media_types: MediaTypes::Oci,
            attestations: false,
        }
    }
}

impl TestImageBuilder {
    /// Different seeds give images with no blob in common (except a shared base layer).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The tag of the index (default `latest`).
    pub fn tag(mut self, tag: &str) -> Self {
        self.tag = tag.to_owned();
        self
    }

    /// The platforms, as `os/arch[/variant]` (default linux/amd64, linux/arm64/v8, linux/arm/v7,
    /// linux/s390x).
    pub fn platforms(mut self, platforms: &[&str]) -> Self {
        self.platforms = platforms.iter().map(|p| Platform::parse(p)).collect();
        self
    }

    /// Layers of each platform image, besides the shared base layer (default 1, at least 1).
    pub fn layers(mut self, n: usize) -> Self {
        assert!(n >= 1, "an image needs at least one layer of its own");
        self.layers = n;
        self
    }

    /// Size in bytes of the file inside each layer (random, so the gzip'd layer is a little
    /// bigger). Default 1024; use `1 << 20` for ~1 MiB layers.
    pub fn layer_size(mut self, bytes: usize) -> Self {
        self.layer_size = bytes;
        self
    }

    /// Puts the same first layer (derived from `label` and `size` only) in every platform image:
    /// two images built with the same label share that blob, whatever their seeds.
    pub fn shared_base_layer(mut self, label: &str, size: usize) -> Self {
        self.shared_base = Some((label.to_owned(), size));
        self
    }

    /// Docker manifest list and schema2 manifests instead of OCI.
    pub fn docker_media_types(mut self) -> Self {
        self.media_types = MediaTypes::Docker;
        self
    }

    pub fn media_types(mut self, media_types: MediaTypes) -> Self {
        self.media_types = media_types;
        self
    }

    /// Adds a docker-buildx-style attestation manifest (`unknown/unknown`, with
    /// `vnd.docker.reference.digest`) for every platform image. OCI media types only.
    pub fn attestations(mut self, on: bool) -> Self {
        self.attestations = on;
        self
    }

    pub fn build(self) -> TestImage {
        assert!(!self.platforms.is_empty(), "an index needs at least one platform");
        assert!(
            !(self.attestations && self.media_types == MediaTypes::Docker),
            "attestation manifests need OCI media types (as with docker buildx)"
        );
        let (index_type, manifest_type, config_type, layer_type) = match self.media_types {
            MediaTypes::Oci => (
                media_type::OCI_INDEX,
                media_type::OCI_MANIFEST,
                media_type::OCI_CONFIG,
                media_type::OCI_LAYER_GZIP,
            ),
            MediaTypes::Docker => (
                media_type::DOCKER_LIST,
                media_type::DOCKER_MANIFEST,
                media_type::DOCKER_CONFIG,
                media_type::DOCKER_LAYER_GZIP,
            ),
        };
        let base = self
            .shared_base
            .as_ref()
            .map(|(label, size)| make_layer(&format!("base/{label}/{size}"), "base", *size, layer_type));

        let mut children = Vec::new();
        for platform in &self.platforms {
            let mut layers: Vec<(Blob, String)> = base.iter().cloned().collect();
            for i in 0..self.layers {
                let label = format!("seed-{}/{}/layer-{i}", self.seed, platform);
                let name = format!("{}-layer-{i}", platform.file_label());
                layers.push(make_layer(&label, &name, self.layer_size, layer_type));
            }
            let diff_ids: Vec<&String> = layers.iter().map(|(_, d)| d).collect();
            let history: Vec<Value> = (0..layers.len())
                .map(|i| json!({"created": CREATED, "created_by": format!("wharf-testkit layer {i}")}))
                .collect();
            let mut config = platform.to_json();
            config["created"] = json!(CREATED);
            config["config"] = json!({
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": {
                    "org.wharf.test.seed": self.seed.to_string(),
                    "org.wharf.test.platform": platform.to_string(),
                },
            });
            config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
            config["history"] = json!(history);
            let config = Blob::new(config_type, to_json_bytes(&config));
            let layers: Vec<Blob> = layers.into_iter().map(|(b, _)| b).collect();
            let manifest = Manifest::from_json(
                manifest_type,
                &json!({
                    "schemaVersion": 2,
                    "mediaType": manifest_type,
                    "config": config.descriptor().to_json(),
                    "layers": layers.iter().map(|l| l.descriptor().to_json()).collect::<Vec<_>>(),
                }),
            );
            children.push(ImageChild { platform: platform.clone(), manifest, config, layers, attests: None });
        }
        if self.attestations {
            let platform_children = children.clone();
            for child in &platform_children {
                children.push(make_attestation(self.seed, child));
            }
        }

        let entries: Vec<Value> = children
            .iter()
            .map(|c| {
                let mut d = c.manifest.descriptor().to_json();
                d["platform"] = c.platform.to_json();
                if let Some(subject) = &c.attests {
                    d["annotations"] = json!({
                        "vnd.docker.reference.digest": subject,
                        "vnd.docker.reference.type": "attestation-manifest",
                    });
                }
                d
            })
            .collect();
        let mut index = json!({
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": entries,
        });
        if self.media_types == MediaTypes::Oci {
            index["annotations"] = json!({"org.wharf.test.seed": self.seed.to_string()});
        }
        TestImage {
            tag: self.tag,
            index: Manifest::from_json(index_type, &index),
            children,
            media_types: self.media_types,
        }
    }
}

const CREATED: &str = "2024-01-01T00:00:00Z";

fn to_json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(&sorted(v)).expect("serialise JSON")
}

/// A gzip'd tar holding `wharf-test/NAME` with `size` pseudo-random bytes derived from `label`.
/// Returns the blob and the diff_id (digest of the uncompressed tar).
fn make_layer(label: &str, name: &str, size: usize, media_type: &str) -> (Blob, String) {
    let data = Rng::from_label(label).bytes(size);
    let mut tar = tar::Builder::new(Vec::with_capacity(size + 3 * 512));
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_path("wharf-test/").expect("tar path");
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    dir.set_cksum();
    tar.append(&dir, std::io::empty()).expect("tar dir");
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_path(format!("wharf-test/{name}")).expect("tar path");
    file.set_mode(0o644);
    file.set_size(size as u64);
    file.set_mtime(0);
    file.set_cksum();
    tar.append(&file, data.as_slice()).expect("tar file");
    let tar_bytes = tar.into_inner().expect("finish tar");
    let diff_id = sha256_digest(&tar_bytes);

    let mut gz =
        GzBuilder::new().mtime(0).write(Vec::with_capacity(tar_bytes.len() + 1024), Compression::fast());
    gz.write_all(&tar_bytes).expect("gzip");
    let gz_bytes = gz.finish().expect("gzip finish");
    (Blob::new(media_type, gz_bytes), diff_id)
}

/// A docker-buildx-style attestation manifest for `child`: an in-toto statement layer.
fn make_attestation(seed: u64, child: &ImageChild) -> ImageChild {
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [{
            "name": format!("pkg:docker/wharf-test@seed-{seed}?platform={}", child.platform.to_string().replace('/', "%2F")),
            "digest": {"sha256": digest_hex(&child.manifest.digest)},
        }],
        "predicate": {"spdxVersion": "SPDX-2.3", "name": format!("wharf-test seed {seed}"), "packages": []},
    });
    let layer = Blob::new(media_type::IN_TOTO, to_json_bytes(&statement));
    let config = Blob::new(
        media_type::OCI_CONFIG,
        to_json_bytes(&json!({
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        })),
    );
    let mut layer_desc = layer.descriptor().to_json();
    layer_desc["annotations"] = json!({"in-toto.io/predicate-type": "https://spdx.dev/Document"});
    let manifest = Manifest::from_json(
        media_type::OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": config.descriptor().to_json(),
            "layers": [layer_desc],
        }),
    );
    ImageChild {
        platform: Platform { os: "unknown".into(), architecture: "unknown".into(), variant: None },
        manifest,
        config,
        layers: vec![layer],
        attests: Some(child.manifest.digest.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn same_seed_same_digests_different_seed_different_blobs() {
        let a = TestImage::builder().seed(1).build();
        let b = TestImage::builder().seed(1).build();
        let c = TestImage::builder().seed(2).build();
        assert_eq!(a.index.digest, b.index.digest);
        assert_ne!(a.index.digest, c.index.digest);
        let a_blobs: BTreeSet<_> = a.blobs().iter().map(|b| b.digest.clone()).collect();
        assert!(c.blobs().iter().all(|b| !a_blobs.contains(&b.digest)));
    }

    #[test]
    fn index_lists_platforms_and_configs_match() {
        let img = TestImage::builder().seed(3).layers(2).build();
        let index = img.index.json();
        assert_eq!(index["mediaType"], media_type::OCI_INDEX);
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[1]["platform"]["variant"], "v8");
        for (entry, child) in entries.iter().zip(&img.children) {
            assert_eq!(entry["digest"], child.manifest.digest.as_str());
            assert_eq!(entry["size"], child.manifest.size());
            let config: Value = serde_json::from_slice(&child.config.bytes).unwrap();
            assert_eq!(config["architecture"], entry["platform"]["architecture"]);
            assert_eq!(config["os"], entry["platform"]["os"]);
            assert_eq!(config["variant"], entry["platform"]["variant"]);
            assert_eq!(child.layers.len(), 2);
            // diff_ids are the digests of the uncompressed layers.
            for (layer, diff_id) in child.layers.iter().zip(config["rootfs"]["diff_ids"].as_array().unwrap())
            {
                let mut tar = Vec::new();
                flate2::read::GzDecoder::new(layer.bytes.as_slice()).read_to_end(&mut tar).unwrap();
                assert_eq!(sha256_digest(&tar), diff_id.as_str().unwrap());
            }
        }
        assert_eq!(img.platform("linux/arm64").platform.to_string(), "linux/arm64/v8");
    }

    #[test]
    fn layer_size_and_shared_base() {
        let a = TestImage::builder()
            .seed(1)
            .layer_size(1 << 20)
            .shared_base_layer("base", 4096)
            .platforms(&["linux/amd64", "linux/arm64"])
            .build();
        let b = TestImage::builder().seed(2).shared_base_layer("base", 4096).build();
        let own = &a.platform("linux/amd64").layers[1];
        assert!(own.size() > 1 << 20 && own.size() < (1 << 20) + 4096, "{}", own.size());
        let base = &a.children[0].layers[0];
        assert_eq!(base, &a.children[1].layers[0]);
        assert_eq!(base, &b.children[3].layers[0]);
        // Distinct blobs: one base, two own layers, two configs.
        assert_eq!(a.blobs().len(), 5);
    }

    #[test]
    fn docker_media_types() {
        let img = TestImage::builder().docker_media_types().build();
        assert_eq!(img.index.media_type, media_type::DOCKER_LIST);
        let m = img.children[0].manifest.json();
        assert_eq!(m["mediaType"], media_type::DOCKER_MANIFEST);
        assert_eq!(m["config"]["mediaType"], media_type::DOCKER_CONFIG);
        assert_eq!(m["layers"][0]["mediaType"], media_type::DOCKER_LAYER_GZIP);
    }

    #[test]
    fn attestations_point_at_their_platform() {
        let img = TestImage::builder().attestations(true).build();
        assert_eq!(img.children.len(), 8);
        assert_eq!(img.platforms().count(), 4);
        let amd64 = img.platform("linux/amd64");
        let att = img.attestation_of(&amd64.manifest.digest).unwrap();
        assert_eq!(att.platform.to_string(), "unknown/unknown");
        let entry = &img.index.json()["manifests"][4];
        assert_eq!(entry["annotations"]["vnd.docker.reference.digest"], amd64.manifest.digest.as_str());
    }

    #[test]
    fn layout_and_archive_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let img = TestImage::builder().seed(4).tag("v1").build();
        img.write_oci_layout(dir.path());
        let other = TestImage::builder().seed(5).tag("v2").build();
        other.write_oci_layout(dir.path());
        img.write_oci_layout(dir.path()); // idempotent: still two entries
        let index: Value = serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert!(
            entries
                .iter()
                .any(|e| e["digest"] == img.index.digest.as_str() && e["annotations"][REF_NAME] == "v1")
        );
        let stored = fs::read(dir.path().join("blobs/sha256").join(digest_hex(&img.index.digest))).unwrap();
        assert_eq!(stored, img.index.bytes);

        let archive = dir.path().join("img.tar");
        img.write_oci_archive(&archive);
        let mut names = Vec::new();
        for e in tar::Archive::new(fs::File::open(&archive).unwrap()).entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert!(names.contains(&"index.json".to_string()));
        assert!(names.contains(&"oci-layout".to_string()));
        assert_eq!(names.len(), 2 + 1 + 4 + 4 + 4);
    }
}
