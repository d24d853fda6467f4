//! Copying an index with a platform filter: selected children, their referrers, then the
//! index bytes unchanged (or, only when asked, a rewritten index).

use std::collections::HashSet;

use futures_util::{StreamExt, TryStreamExt};
use serde_json::Value;
use wharf_client::{ClientError, RawManifest};
use wharf_oci::{Descriptor, Digest, Manifest, Platform};

use crate::endpoint::Endpoint;
use crate::job::{Job, parse_manifest};
use crate::select::{label, real_platform, select};
use crate::transfer::{Tree, manifest_footprint};
use crate::{ImageName, ImageRef, ImageReport, MirrorError};

impl Job<'_> {
    /// Returns the manifest now at the destination (the original index, or a rewritten one),
    /// and, when the index went out under `name` already, whether that moved the name.
    pub(crate) async fn copy_index(
        &self,
        index: RawManifest,
        parsed: &Manifest,
        wanted: &[Platform],
        dst_ref: &ImageRef,
        name: Option<&ImageName>,
        image: &mut ImageReport,
    ) -> Result<(RawManifest, Option<bool>), MirrorError> {
        let children = parsed.children();
        let selection = select(children, wanted);
        let present = self.at_source(&selection.selected).await?;
        let (mut to_copy, mut fetched, mut absent) = (Vec::new(), Vec::new(), Vec::new());
        for (d, here) in selection.selected.iter().zip(present) {
            match here {
                Some(m) => {
                    to_copy.push(d.clone());
                    fetched.push(m);
                }
                None => absent.push(d.clone()),
            }
        }
        self.check_named_platforms(&index.digest, children, &to_copy, wanted)?;
        image.platforms_copied = labels(&to_copy);
        image.platforms_absent_at_source = labels(&absent);
        image.platforms_filtered = labels(&selection.filtered);
        if !absent.is_empty() {
            self.progress().message(&format!(
                "the source holds a sparse index: {} absent there, not copied",
                describe_children(&absent)
            ));
        }

        // Children the destination will not hold once this copy is done.
        let left_out: Vec<Descriptor> = selection.filtered.iter().chain(&absent).cloned().collect();
        let at_dest = self.at_destination(&left_out).await?;
        let missing: Vec<Descriptor> =
            left_out.iter().zip(&at_dest).filter(|(_, here)| !**here).map(|(d, _)| d.clone()).collect();
        let mut rewrite = false;
        if !missing.is_empty() {
            match self.dst.sparse_support().await? {
                Some(false) if !self.opts().rewrite_index => {
                    return Err(MirrorError::SparseRefused(self.precheck_message(&index.digest, &missing)));
                }
                Some(false) => rewrite = true,
                // A plan cannot learn what an unannounced policy will say without pushing.
                None if self.dry_run() => self.warn(format!(
                    "{} does not announce whether it accepts sparse indexes: pushing index {} without {} may be refused",
                    self.dst.host().unwrap_or("the destination"),
                    index.digest,
                    describe_children(&missing)
                )),
                _ => {}
            }
        }

        self.count_filtered(&selection.filtered).await?;

        let mut tree = Tree::default();
        self.gather_missing(fetched, &mut tree).await?;
        self.transfer(tree).await?;

        if !self.opts().no_referrers {
            futures_util::stream::iter(to_copy.iter().map(|d| self.copy_referrers(&d.digest)))
                .buffer_unordered(self.jobs())
                .try_collect::<Vec<usize>>()
                .await?;
        }

        // Children the (possibly rewritten) index keeps: copied, or already at the destination.
        let mut keep: HashSet<Digest> = to_copy.iter().map(|d| d.digest.clone()).collect();
        keep.extend(left_out.iter().zip(&at_dest).filter(|(_, here)| **here).map(|(d, _)| d.digest.clone()));
        // The index's own referrers are found now: without any, a tagged index goes out
        // with its tag in one request (step 4 of DESIGN.md's mirror in one go).
        let index_referrers = match self.opts().no_referrers || rewrite {
            true => Vec::new(),
            false => self.find_referrers(&index.digest).await?,
        };
        let tagged = name.map(ImageName::to_tag).transpose()?.flatten().is_some();
        if tagged
            && index_referrers.is_empty()
            && missing.is_empty()
            && !rewrite
            && !self.dry_run()
            && matches!(self.dst, Endpoint::Registry(_))
        {
            // Not stored by digest first, so `publish` asks whether the tag points at it yet.
            let moved = self.publish(&index, name).await?;
            let size = index.bytes.len() as u64;
            if moved {
                self.add_copied(size)
            } else {
                self.add_existing(size)
            }
            return Ok((index, Some(moved)));
        }
        let pushed = if rewrite {
            self.push_rewritten(&index, &keep, dst_ref, image).await?
        } else {
            match self.copy_manifest(&index, false).await {
                Ok(()) => index.clone(),
                Err(MirrorError::Client { source, .. }) if !missing.is_empty() && refuses_sparse(&source) => {
                    if !self.opts().rewrite_index {
                        return Err(MirrorError::SparseRefused(self.refusal_message(
                            &index.digest,
                            &missing,
                            &source,
                        )));
                    }
                    self.push_rewritten(&index, &keep, dst_ref, image).await?
                }
                Err(e) => return Err(e),
            }
        };
        if pushed.digest == index.digest {
            self.attach_referrers(&index.digest, index_referrers).await?;
        }
        Ok((pushed, None))
    }

    /// Each of `children` the source holds, fetched; `None` for those it does not.
    async fn at_source(&self, children: &[Descriptor]) -> Result<Vec<Option<RawManifest>>, MirrorError> {
        futures_util::stream::iter(children.iter().map(|d| self.fetch_if_present(d)))
            .buffered(self.jobs())
            .try_collect()
            .await
    }

    async fn at_destination(&self, children: &[Descriptor]) -> Result<Vec<bool>, MirrorError> {
        futures_util::stream::iter(children.iter().map(|d| self.dst.has_manifest(&d.digest)))
            .buffered(self.jobs())
            .try_collect()
            .await
    }

    /// Every platform asked for by name must be copied from the source.
    fn check_named_platforms(
        &self,
        index: &Digest,
        children: &[Descriptor],
        copied: &[Descriptor],
        wanted: &[Platform],
    ) -> Result<(), MirrorError> {
        let matches = |w: &Platform, d: &Descriptor| real_platform(d).is_some_and(|p| w.selects(p));
        for w in wanted.iter().filter(|w| !w.is_unknown()) {
            if copied.iter().any(|d| matches(w, d)) {
                continue;
            }
            let message = if children.iter().any(|d| matches(w, d)) {
                format!(
                    "platform {w} of index {index} is not at the source: {} holds a sparse index \
                     without it, so it cannot be copied from there",
                    self.src.describe()
                )
            } else {
                let listed: Vec<String> = children.iter().filter_map(label).collect();
                format!(
                    "index {index} at {} has no platform {w}; it lists {}",
                    self.src.describe(),
                    if listed.is_empty() { "no platforms".to_owned() } else { listed.join(", ") }
                )
            };
            return Err(MirrorError::PlatformMissing(message));
        }
        Ok(())
    }

    /// `bytes_filtered`: each left-out child's manifest, config and layers (its descriptor
    /// size alone when the source does not hold it or it is a nested index).
    async fn count_filtered(&self, filtered: &[Descriptor]) -> Result<(), MirrorError> {
        let sizes: Vec<u64> = futures_util::stream::iter(filtered.iter().map(|d| async move {
            let Some(m) =
                self.src.get_manifest(Some(&wharf_oci::Reference::Digest(d.digest.clone()))).await?
            else {
                return Ok::<u64, MirrorError>(d.size);
            };
            let parsed = parse_manifest(&m, &self.src)?;
            Ok(manifest_footprint(&m, &parsed.blobs()))
        }))
        .buffered(self.jobs())
        .try_collect()
        .await?;
        self.filtered.fetch_add(sizes.iter().sum(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Write a new index holding only `keep` (asked for with `rewrite_index`).
    async fn push_rewritten(
        &self,
        index: &RawManifest,
        keep: &HashSet<Digest>,
        dst_ref: &ImageRef,
        image: &mut ImageReport,
    ) -> Result<RawManifest, MirrorError> {
        let new = rewrite_index(index, keep)?;
        self.copy_manifest(&new, false).await?;
        image.rewritten = true;
        self.warn(format!(
            "the index was rewritten for {dst_ref}: {} became {}, listing only {}. Signatures and \
             other referrers of the original index do not apply to the new one and were not copied; \
             anything that verifies the original digest will not verify this index.",
            index.digest,
            new.digest,
            describe_children(parse_manifest(&new, &self.src)?.children()),
        ));
        Ok(new)
    }

    fn precheck_message(&self, index: &Digest, missing: &[Descriptor]) -> String {
        let host = self.dst.host().unwrap_or("the destination");
        format!(
            "{host} announces X-Sparse-Manifest-Support: false: it refuses an index whose children are \
             not all present, and this copy leaves out {} of index {index}. Nothing was uploaded. {}",
            describe_children(missing),
            HINT
        )
    }

    fn refusal_message(&self, index: &Digest, missing: &[Descriptor], answer: &ClientError) -> String {
        let host = self.dst.host().unwrap_or("the destination");
        let said = match answer {
            ClientError::Registry { status, errors, body, .. } => {
                let msgs: Vec<String> = errors.iter().map(ToString::to_string).collect();
                let text = if msgs.is_empty() { body.trim().to_owned() } else { msgs.join("; ") };
                format!("HTTP {status}: {text}")
            }
            other => other.to_string(),
        };
        format!(
            "{host} refused index {index}{}: it answered {said}. This copy leaves out {}, so the \
             destination must accept a sparse index (one whose children are not all present), and \
             {host} does not. The copied platforms' manifests and blobs stay there. {}",
            self.dst.repo().map(|r| format!(" for repository {r}")).unwrap_or_default(),
            describe_children(missing),
            HINT
        )
    }
}

const HINT: &str = "Allow sparse indexes at the destination (Wharf: index policy \"sparse\" for the \
     repository), copy every platform (--all-platforms), or pass --rewrite-index to write a new \
     index listing only the copied platforms (its digest differs, so signatures on the original \
     index will not verify against it).";

/// Did the registry refuse an index because children are missing?
fn refuses_sparse(e: &ClientError) -> bool {
    match e {
        ClientError::Registry { status: 400, errors, .. } => {
            errors.iter().any(|e| matches!(e.code.as_str(), "MANIFEST_BLOB_UNKNOWN" | "MANIFEST_INVALID"))
        }
        _ => false,
    }
}

/// The index with its `manifests` cut to `keep`; every other field and annotation is kept.
pub(crate) fn rewrite_index(index: &RawManifest, keep: &HashSet<Digest>) -> Result<RawManifest, MirrorError> {
    let mut v: Value = serde_json::from_slice(&index.bytes)
        .map_err(|e| MirrorError::Invalid(format!("index {} is not valid JSON: {e}", index.digest)))?;
    let Some(list) = v.get_mut("manifests").and_then(Value::as_array_mut) else {
        return Err(MirrorError::Invalid(format!("index {} has no manifests array", index.digest)));
    };
    list.retain(|e| {
        e["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()).is_some_and(|d| keep.contains(&d))
    });
    let bytes = bytes::Bytes::from(serde_json::to_vec(&v).expect("JSON serialises"));
    let digest = Digest::compute(index.digest.algorithm(), &bytes);
    Ok(RawManifest { digest, media_type: index.media_type.clone(), bytes })
}

fn labels(list: &[Descriptor]) -> Vec<String> {
    list.iter().filter_map(label).collect()
}

/// `linux/arm/v7, linux/s390x` (and how many other children without a platform).
fn describe_children(list: &[Descriptor]) -> String {
    let names = labels(list);
    let others = list.len() - names.len();
    let mut text = if names.is_empty() { String::new() } else { names.join(", ") };
    if others > 0 {
        if !text.is_empty() {
            text.push_str(" and ");
        }
        text.push_str(&format!(
            "{others} child manifest{} without a platform",
            if others == 1 { "" } else { "s" }
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_keeps_other_fields() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","annotations":{{"x":"y"}},
            "manifests":[{{"mediaType":"m","digest":"{a}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
                         {{"mediaType":"m","digest":"{b}","size":1}}]}}"#
        );
        let orig = RawManifest {
            digest: Digest::sha256_of(body.as_bytes()),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            bytes: body.into(),
        };
        let new = rewrite_index(&orig, &HashSet::from([a.clone()])).unwrap();
        assert_ne!(new.digest, orig.digest);
        assert!(new.digest.verifies(&new.bytes));
        let v: Value = serde_json::from_slice(&new.bytes).unwrap();
        assert_eq!(v["annotations"]["x"], "y");
        assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(v["manifests"][0]["digest"], a.to_string());
        assert_eq!(v["manifests"][0]["platform"]["architecture"], "amd64");
    }

    #[test]
    fn recognises_refusals() {
        let entry = |code: &str| wharf_client::RegistryErrorEntry {
            code: code.into(),
            message: "blob unknown to registry".into(),
            detail: Value::Null,
        };
        let refusal = ClientError::Registry {
            status: 400,
            registry: "r".into(),
            errors: vec![entry("MANIFEST_BLOB_UNKNOWN")],
            body: String::new(),
        };
        assert!(refuses_sparse(&refusal));
        let other = ClientError::Registry {
            status: 400,
            registry: "r".into(),
            errors: vec![entry("DENIED")],
            body: String::new(),
        };
        assert!(!refuses_sparse(&other));
    }
}
