//! Shared setup: an in-process Wharf, a signed 4-platform image in distribution 2.8.

use std::sync::Arc;

use wharf_mirror::{CopyOptions, CopyReport, ImageRef, MirrorError, NoProgress};
use wharf_oci::Platform;
use wharf_testkit::sign::{Artifact, CosignKey, cosign_style_signature, referrers_tag_index, sbom_artifact};
use wharf_testkit::{Distribution, TestImage};

pub use wharf_testkit::wharf::InProcessWharf as Wharf;

/// `docker://` references into the in-process Wharf.
pub trait WharfImage {
    fn image(&self, repo_and_ref: &str) -> ImageRef;
}

impl WharfImage for Wharf {
    fn image(&self, repo_and_ref: &str) -> ImageRef {
        format!("docker://{}/{repo_and_ref}", self.addr).parse().unwrap()
    }
}

/// A 4-platform index in distribution, cosign-signed (index and each child) with an SBOM
/// referrer of the index, published through the referrers tag schema.
pub struct SignedImage {
    pub img: TestImage,
    pub key: CosignKey,
    /// Signature of the index, then of each child, in `img.children` order.
    pub index_sig: Artifact,
    pub child_sigs: Vec<Artifact>,
    pub sbom: Artifact,
}

impl SignedImage {
    pub fn child_sig(&self, platform: &str) -> &Artifact {
        let digest = &self.img.platform(platform).manifest.digest;
        let i = self.img.children.iter().position(|c| c.manifest.digest == *digest).unwrap();
        &self.child_sigs[i]
    }

    /// Bytes of a platform image plus its signature (manifests and blobs).
    pub fn platform_bytes(&self, platform: &str) -> u64 {
        self.img.platform(platform).total_size() + artifact_size(self.child_sig(platform))
    }
}

pub fn artifact_size(a: &Artifact) -> u64 {
    a.manifest.size() + a.blobs.iter().map(|b| b.size()).sum::<u64>()
}

pub async fn signed_source(dist: &Distribution, repo: &str, seed: u64, layer_size: usize) -> SignedImage {
    let img = TestImage::builder().seed(seed).tag("v1").layer_size(layer_size).build();
    let client = dist.client();
    client.push_image(repo, &img).await.unwrap();
    let key = CosignKey::from_seed(seed);
    let reference = format!("{}/{repo}", dist.addr);
    let index_sig = cosign_style_signature(&key, &reference, &img.index.digest);
    client.push_artifact(repo, &index_sig).await.unwrap();
    let mut child_sigs = Vec::new();
    for child in &img.children {
        let sig = cosign_style_signature(&key, &reference, &child.manifest.digest);
        client.push_artifact(repo, &sig).await.unwrap();
        child_sigs.push(sig);
    }
    let sbom = sbom_artifact(&img.index_descriptor(), seed);
    client.push_artifact(repo, &sbom).await.unwrap();
    client.push_artifact(repo, &referrers_tag_index(&img.index.digest, &[&sbom.manifest])).await.unwrap();
    SignedImage { img, key, index_sig, child_sigs, sbom }
}

pub fn dist_image(dist: &Distribution, repo_and_ref: &str) -> ImageRef {
    dist.docker_ref(repo_and_ref).parse().unwrap()
}

pub fn options(platforms: &[&str]) -> CopyOptions {
    CopyOptions {
        platforms: platforms.iter().map(|p| p.parse::<Platform>().unwrap()).collect(),
        lookup_credentials: false,
        ..Default::default()
    }
}

pub async fn copy(src: &ImageRef, dst: &ImageRef, opts: &CopyOptions) -> Result<CopyReport, MirrorError> {
    wharf_mirror::copy(src, dst, opts, Arc::new(NoProgress)).await
}

/// `sha256-<hex>` of a `sha256:<hex>` digest string, plus a suffix.
pub fn tag_form(digest: &str, suffix: &str) -> String {
    format!("sha256-{}{suffix}", wharf_testkit::digest_hex(digest))
}
