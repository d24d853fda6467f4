//! Signatures, SBOMs and attestations of a copied manifest (DESIGN.md, "The mirror", step 3).
//!
//! Found at the source through the referrers API, else the referrers tag schema
//! (`sha256-<hex>`: an index of referrers), plus cosign's tags `sha256-<hex>.sig|.att|.sbom`.
//! Stored at the destination in the form it supports: by digest where it has the referrers API
//! (or is a layout), and else also listed in its own tag-schema index; cosign tags as tags.

use serde_json::{Value, json};
use wharf_client::RawManifest;
use wharf_oci::{Descriptor, Digest, Manifest, Reference, Tag, media_types};

use crate::job::{Job, parse_manifest};
use crate::transfer::{Tree, manifest_footprint};
use crate::{ImageName, MirrorError};

/// cosign's tag suffixes: signatures, attestations, SBOMs.
const COSIGN_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// The descriptor a referrers listing gives for a manifest: `artifactType` (or the config's
/// media type) and the manifest's annotations.
pub(crate) fn referrer_descriptor(
    digest: &Digest,
    media_type: &str,
    size: usize,
    m: &Manifest,
) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: digest.clone(),
        size: size as u64,
        urls: None,
        annotations: m.annotations.clone(),
        platform: None,
        artifact_type: m.effective_artifact_type(),
        data: None,
    }
}

/// A referrer found at the source.
pub(crate) struct Found {
    manifest: RawManifest,
    /// cosign's tag, when found by it.
    tag: Option<Tag>,
}

impl Job<'_> {
    /// Copy the referrers of `subject`; returns how many.
    pub(crate) async fn copy_referrers(&self, subject: &Digest) -> Result<usize, MirrorError> {
        let found = self.find_referrers(subject).await?;
        self.attach_referrers(subject, found).await
    }

    /// Copy referrers found at the source (by [`Job::find_referrers`]); returns how many. One
    /// the destination holds already needs none of its blobs checked.
    pub(crate) async fn attach_referrers(
        &self,
        subject: &Digest,
        found: Vec<Found>,
    ) -> Result<usize, MirrorError> {
        let mut attached = Vec::new();
        for f in &found {
            let m = &f.manifest;
            let parsed = parse_manifest(m, &self.src)?;
            let name = f.tag.clone().map(ImageName::Tag);
            let there = match &name {
                Some(name) => {
                    self.dst.name_digest(name).await? == Some(m.digest.clone()) || self.is_planned(&m.digest)
                }
                None => self.dest_has_manifest(&m.digest).await?,
            };
            let desc = referrer_descriptor(&m.digest, &m.media_type, m.bytes.len(), &parsed);
            if there {
                // Held with its blobs (a registry checks them at push): none of them is asked about.
                self.add_existing(manifest_footprint(m, &parsed.blobs()));
            } else {
                // Blobs and nested manifests first, then the referrer itself.
                let mut tree = Tree::default();
                self.gather(m.clone(), &mut tree).await?;
                tree.manifests.pop();
                self.transfer(tree).await?;
                if self.dry_run() {
                    self.plan_manifest(&m.digest);
                } else {
                    match &name {
                        Some(name) => self.dst.put_manifest(m, Some(name)).await?,
                        None => self.dst.put_referrer(m, &desc).await?,
                    }
                }
                self.add_copied(m.bytes.len() as u64);
            }
            // A cosign tag is found by its name; the others are listed for the subject.
            if name.is_none() {
                attached.push(desc);
            }
        }
        if !attached.is_empty() && !self.dst.has_referrers_api(subject).await? {
            self.update_tag_schema_index(subject, &attached).await?;
        }
        self.referrers.fetch_add(found.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(found.len())
    }

    pub(crate) async fn find_referrers(&self, subject: &Digest) -> Result<Vec<Found>, MirrorError> {
        let mut out: Vec<Found> = Vec::new();
        let listed = match self.src.referrers(subject).await? {
            Some(list) => list,
            None => self.tag_schema_referrers(subject).await?,
        };
        for desc in listed {
            if out.iter().any(|f| f.manifest.digest == desc.digest) {
                continue;
            }
            match self.src.get_manifest(Some(&Reference::Digest(desc.digest.clone()))).await? {
                Some(manifest) => out.push(Found { manifest, tag: None }),
                None => self.warn(format!(
                    "referrer {} of {subject} is listed but absent at {}: not copied",
                    desc.digest,
                    self.src.describe()
                )),
            }
        }
        let tags = self.src.tags().await?;
        for suffix in COSIGN_SUFFIXES {
            let name = subject.cosign_tag(suffix);
            if !tags.contains(&name) {
                continue;
            }
            let tag: Tag =
                name.parse().map_err(|e| MirrorError::Invalid(format!("cosign tag {name}: {e}")))?;
            if let Some(manifest) = self.src.get_manifest(Some(&Reference::Tag(tag.clone()))).await? {
                out.push(Found { manifest, tag: Some(tag) });
            }
        }
        Ok(out)
    }

    /// The referrers listed in the source's tag-schema index `sha256-<hex>`, if any.
    async fn tag_schema_referrers(&self, subject: &Digest) -> Result<Vec<Descriptor>, MirrorError> {
        let name = subject.tag_form();
        if !self.src.tags().await?.contains(&name) {
            return Ok(Vec::new());
        }
        let tag: Tag = name.parse().map_err(|e| MirrorError::Invalid(format!("tag {name}: {e}")))?;
        let Some(index) = self.src.get_manifest(Some(&Reference::Tag(tag))).await? else {
            return Ok(Vec::new());
        };
        match Manifest::parse(Some(&index.media_type), &index.bytes) {
            Ok(m) if m.is_index() => Ok(m.children().to_vec()),
            _ => {
                self.warn(format!(
                    "tag {name} at {} is not a referrers index: its referrers were not copied",
                    self.src.describe()
                ));
                Ok(Vec::new())
            }
        }
    }

    /// Add `descs` to the destination's tag-schema index for `subject` (a registry without the
    /// referrers API), keeping what it lists already.
    async fn update_tag_schema_index(
        &self,
        subject: &Digest,
        descs: &[Descriptor],
    ) -> Result<(), MirrorError> {
        let tag: Tag = subject.tag_form().parse().map_err(|e| MirrorError::Invalid(format!("{e}")))?;
        let current = self.dst.get_manifest(Some(&Reference::Tag(tag.clone()))).await?;
        let mut index: Value = match &current {
            Some(m) => serde_json::from_slice(&m.bytes).unwrap_or(Value::Null),
            None => Value::Null,
        };
        if !index["manifests"].is_array() {
            index = json!({"schemaVersion": 2, "mediaType": media_types::OCI_INDEX, "manifests": []});
        }
        let list = index["manifests"].as_array_mut().expect("checked above");
        let before = list.len();
        for d in descs {
            if !list.iter().any(|e| e["digest"] == d.digest.to_string().as_str()) {
                list.push(serde_json::to_value(d).expect("a descriptor serialises"));
            }
        }
        if list.len() == before && current.is_some() {
            return Ok(());
        }
        let bytes = bytes::Bytes::from(serde_json::to_vec(&index).expect("JSON serialises"));
        let m = RawManifest {
            digest: Digest::sha256_of(&bytes),
            media_type: media_types::OCI_INDEX.to_owned(),
            bytes,
        };
        if !self.dry_run() {
            self.dst.put_manifest(&m, Some(&ImageName::Tag(tag))).await?;
        }
        self.add_copied(m.bytes.len() as u64);
        Ok(())
    }
}
