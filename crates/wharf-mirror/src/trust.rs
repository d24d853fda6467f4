//! Signature verification at an endpoint (DESIGN.md, "Trust"): `wharf verify`, and
//! `copy --verify-key`, which checks the source before anything is written.
//!
//! Signatures are found through cosign's tag `sha256-<hex>.sig` and as referrers with cosign's
//! signature artifact type (the referrers API, else the referrers tag schema); the checking
//! itself is `wharf-trust`'s.

use futures_util::{StreamExt, TryStreamExt};
use wharf_client::RawManifest;
use wharf_oci::{Descriptor, Digest, Manifest, Platform, Reference, Tag};
use wharf_trust::{Assessment, PublicKey, TrustError, Verdict, is_signature_referrer, signature_tag};

use crate::copier::Role;
use crate::endpoint::Endpoint;
use crate::job::parse_manifest;
use crate::select::{label, real_platform};
use crate::{Copier, ImageRef, MirrorError};

/// A simple-signing payload is a few hundred bytes; a bigger one is refused unread.
const MAX_PAYLOAD: u64 = 1024 * 1024;

/// What `wharf verify` found for one image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrustReport {
    pub image: String,
    pub digest: Digest,
    pub media_type: String,
    /// Fingerprints (`sha256:` of the DER public key) of the keys verified with.
    pub keys: Vec<String>,
    /// The signature of the image itself (the index, for a multi-platform image).
    pub signature: Verdict,
    /// For an index: each child with a platform, present or absent.
    pub platforms: Vec<PlatformTrust>,
    /// Why the image does not verify, one line each; empty when it does.
    pub failures: Vec<String>,
}

impl TrustReport {
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// One platform of an index.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlatformTrust {
    pub platform: String,
    pub digest: Digest,
    pub present: bool,
    /// Checked: all present platforms, or only those named with `--platform`.
    pub checked: bool,
    /// The child's own signature; `None` when absent or not checked.
    pub signature: Option<Verdict>,
}

impl Copier {
    /// Verify the signatures of `src` (and of its present children, or only of the children
    /// `platforms` names) with `keys`. Absent children are reported, and fail only when named.
    pub async fn verify_signatures(
        &self,
        src: &ImageRef,
        platforms: &[Platform],
        keys: &[PublicKey],
    ) -> Result<TrustReport, MirrorError> {
        let ep = self.endpoint(src, Role::Source).await?;
        let top = match src.digest() {
            Some(d) => ep.get_manifest(Some(&Reference::Digest(d.clone()))).await?,
            None => ep.get_named(src.effective_name().as_ref()).await?,
        };
        let top =
            top.ok_or_else(|| MirrorError::NotFound(format!("image {src} not found ({})", ep.describe())))?;
        let parsed = parse_manifest(&top, &ep)?;
        let mut report = verify_at(&ep, src.to_string(), &top, &parsed, platforms, keys).await?;
        // A copy's platform filter passes a single image whole; asking `verify` for a
        // platform of one is a mistake worth saying.
        if !parsed.is_index() && !platforms.is_empty() {
            report
                .failures
                .push(format!("{} is a single image, not an index: --platform does not apply", top.digest));
        }
        Ok(report)
    }
}

/// Verify `top` (read from `ep`) and its children with a real platform that `platforms` selects
/// (all when empty).
pub(crate) async fn verify_at(
    ep: &Endpoint,
    image: String,
    top: &RawManifest,
    parsed: &Manifest,
    platforms: &[Platform],
    keys: &[PublicKey],
) -> Result<TrustReport, MirrorError> {
    let signature = verdict_for(ep, &top.digest, keys).await?;
    let mut failures = Vec::new();
    if !signature.is_valid() {
        let what = if parsed.is_index() { "index" } else { "image" };
        failures.push(format!("{what} {}: signature {}", top.digest, signature.describe()));
    }
    let children: Vec<&Descriptor> =
        parsed.children().iter().filter(|d| real_platform(d).is_some()).collect();
    let wanted = |d: &Descriptor| {
        platforms.is_empty() || real_platform(d).is_some_and(|p| platforms.iter().any(|w| w.selects(p)))
    };
    let results: Vec<PlatformTrust> = futures_util::stream::iter(children.into_iter().map(|d| async move {
        let checked = wanted(d);
        let present = ep.has_manifest(&d.digest).await?;
        let signature = if present && checked { Some(verdict_for(ep, &d.digest, keys).await?) } else { None };
        Ok::<_, MirrorError>(PlatformTrust {
            platform: label(d).unwrap_or_default(),
            digest: d.digest.clone(),
            present,
            checked,
            signature,
        })
    }))
    .buffered(4)
    .try_collect()
    .await?;
    for p in &results {
        match &p.signature {
            Some(v) if !v.is_valid() => {
                failures.push(format!("platform {} ({}): signature {}", p.platform, p.digest, v.describe()))
            }
            None if p.checked && !platforms.is_empty() => failures.push(format!(
                "platform {} ({}) was asked for but is absent: {} holds the index without it",
                p.platform,
                p.digest,
                ep.describe()
            )),
            _ => {}
        }
    }
    for w in platforms.iter().filter(|w| !w.is_unknown()) {
        if parsed.is_index()
            && !parsed.children().iter().any(|d| real_platform(d).is_some_and(|p| w.selects(p)))
        {
            failures.push(format!("platform {w} is not in index {}", top.digest));
        }
    }
    Ok(TrustReport {
        image,
        digest: top.digest.clone(),
        media_type: top.media_type.clone(),
        keys: keys.iter().map(|k| k.fingerprint().to_owned()).collect(),
        signature,
        platforms: results,
        failures,
    })
}

/// Check every cosign signature of `subject` at `ep`.
async fn verdict_for(ep: &Endpoint, subject: &Digest, keys: &[PublicKey]) -> Result<Verdict, MirrorError> {
    let mut assessment = Assessment::new();
    for sig in signatures_of(ep, subject).await? {
        let outcome = check_one(ep, &sig, subject, keys).await?;
        assessment.record(&sig.digest, outcome.as_ref().map(|i| &keys[*i]).map_err(Clone::clone));
    }
    Ok(assessment.verdict())
}

/// One signature manifest: `Ok(index of the key that verified)` or why it does not verify.
/// Transport failures are errors of the run, not verdicts.
async fn check_one(
    ep: &Endpoint,
    sig: &RawManifest,
    subject: &Digest,
    keys: &[PublicKey],
) -> Result<Result<usize, TrustError>, MirrorError> {
    let layers = match wharf_trust::signature_layers(&sig.bytes) {
        Ok(l) => l,
        Err(e) => return Ok(Err(e)),
    };
    let mut last = TrustError::NoSignatureLayer;
    for layer in layers {
        if layer.payload.size > MAX_PAYLOAD {
            last = TrustError::MalformedSignatureManifest(format!(
                "payload of {} bytes is too large for a simple-signing payload",
                layer.payload.size
            ));
            continue;
        }
        let payload = read_payload(ep, &layer.payload.digest).await?;
        match wharf_trust::verify_layer(keys, &layer, &payload, subject) {
            Ok(k) => {
                let i = keys.iter().position(|x| x.fingerprint() == k.fingerprint()).unwrap_or(0);
                return Ok(Ok(i));
            }
            Err(e) => last = e,
        }
    }
    Ok(Err(last))
}

/// A payload blob's bytes (the stream checks them against the digest; `verify_layer` checks
/// that digest is the layer's).
async fn read_payload(ep: &Endpoint, digest: &Digest) -> Result<Vec<u8>, MirrorError> {
    let what = || format!("reading signature payload {digest} from {}", ep.describe());
    let (_, stream) = ep.open_blob(digest, 0).await.map_err(MirrorError::client(what()))?;
    collect(stream, what).await
}

async fn collect(
    mut stream: wharf_client::ByteStream,
    what: impl Fn() -> String,
) -> Result<Vec<u8>, MirrorError> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                out.extend_from_slice(&c);
                if out.len() as u64 > MAX_PAYLOAD {
                    return Err(MirrorError::Invalid(format!("{}: larger than {MAX_PAYLOAD} bytes", what())));
                }
            }
            Err(e) => return Err(MirrorError::client(what())(e)),
        }
    }
    Ok(out)
}

/// The cosign signature manifests of `subject`: referrers with cosign's signature artifact type
/// and the manifest tagged `sha256-<hex>.sig`, each once.
async fn signatures_of(ep: &Endpoint, subject: &Digest) -> Result<Vec<RawManifest>, MirrorError> {
    let listed = match ep.referrers(subject).await? {
        Some(list) => list,
        None => tag_schema_referrers(ep, subject).await?,
    };
    let mut out: Vec<RawManifest> = Vec::new();
    for d in listed.iter().filter(|d| is_signature_referrer(d)) {
        if let Some(m) = ep.get_manifest(Some(&Reference::Digest(d.digest.clone()))).await? {
            out.push(m);
        }
    }
    let name = signature_tag(subject);
    if ep.tags().await?.contains(&name) {
        let tag: Tag = name.parse().map_err(|e| MirrorError::Invalid(format!("tag {name}: {e}")))?;
        if let Some(m) = ep.get_manifest(Some(&Reference::Tag(tag))).await?
            && !out.iter().any(|o| o.digest == m.digest)
        {
            out.push(m);
        }
    }
    Ok(out)
}

/// Referrers listed in the tag-schema index `sha256-<hex>` (a registry without the API).
async fn tag_schema_referrers(ep: &Endpoint, subject: &Digest) -> Result<Vec<Descriptor>, MirrorError> {
    let name = subject.tag_form();
    if !ep.tags().await?.contains(&name) {
        return Ok(Vec::new());
    }
    let tag: Tag = name.parse().map_err(|e| MirrorError::Invalid(format!("tag {name}: {e}")))?;
    let Some(index) = ep.get_manifest(Some(&Reference::Tag(tag))).await? else { return Ok(Vec::new()) };
    Ok(match Manifest::parse(Some(&index.media_type), &index.bytes) {
        Ok(m) if m.is_index() => m.children().to_vec(),
        _ => Vec::new(),
    })
}
