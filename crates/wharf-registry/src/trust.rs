//! Pull-time signature enforcement (`[[trust]]`, as Harbor's "prevent unsigned images from
//! being pulled"): in a repository a rule matches, a manifest is served only when a cosign
//! signature found in this registry (the tag `sha256-<hex>.sig`, or a referrer with cosign's
//! signature artifact type) verifies under one of the rule's keys.
//!
//! - Signatures, attestations, SBOMs and other artifacts stay readable: they are how a client
//!   checks trust. What is exempt is decided by content (not runnable: see [`is_exempt`]),
//!   never by a tag or a `subject`, which anyone with push rights could put on an image.
//! - A child of an index is served when an index of the repository that lists it verifies:
//!   the signed index pins its children by digest, and `docker`/`podman` pull a platform by
//!   the digest the index names. A child with its own valid signature is served too.
//! - Verdicts are cached per (repository, digest): a pull does not re-read signatures each
//!   time. Pushing a signature or referrer, or deleting anything, in a `[[trust]]` repository
//!   forgets all of that repository's verdicts at once in this process (a child's verdict rests
//!   on its index's signature, which a pushed signature tag may replace). On SQLite that is everything (entries still expire: a valid one after
//!   [`VALID_TTL`], a refusal after [`REFUSED_TTL`]). On PostgreSQL other replicas push and
//!   delete signatures too: a verdict is a lease of
//!   [`MetadataStore::replica_lease`](wharf_metadata::MetadataStore::replica_lease) counted from
//!   before the reads it was reached from, a delete answers once every such lease has run out
//!   (the manifest cache's wait), and so does a signature push in a `[[trust]]` repository:
//!   once either has its answer, every replica decides by it. In both cases a verdict whose
//!   reads began before an invalidation here is not kept ([`wharf_metadata::freshness`]): a
//!   signature deleted while a pull was verifying it does not stay valid for [`VALID_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use wharf_metadata::freshness::{Expiry, Freshness, ReadStart};
use wharf_oci::{Digest, Manifest, ManifestKind, RepoName, Tag};
use wharf_trust::{Assessment, COSIGN_SIG_ARTIFACT, PublicKey, Verdict};

use crate::error::{RegistryError, Result};
use crate::policy::RepoPattern;
use crate::registry::Registry;

/// How long a verdict that allowed a pull is reused.
pub const VALID_TTL: Duration = Duration::from_secs(300);
/// How long a refusal is reused (short: a signature may be on its way).
pub const REFUSED_TTL: Duration = Duration::from_secs(10);
/// Simple-signing payloads are small; a bigger layer is not read.
const MAX_PAYLOAD: u64 = 1024 * 1024;

/// Config media types of images a runtime runs.
const RUNNABLE_CONFIGS: [&str; 2] =
    ["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

/// One `[[trust]]` rule: repositories matching `pattern` serve only what verifies under `keys`.
#[derive(Debug, Clone)]
pub struct TrustRule {
    pub pattern: RepoPattern,
    pub keys: Arc<Vec<PublicKey>>,
}

/// A verdict (`None` allowed, `Some(reason)` refused) and when the reads it was reached from
/// began.
type Cached = (Option<String>, Instant);

/// Verdicts by (repository, manifest digest), each with until when it is reused.
pub(crate) struct TrustCache {
    entries: Mutex<HashMap<(RepoName, Digest), (Cached, Instant)>>,
    /// Invalidations since a verification began, and on replicas the lease (module docs).
    freshness: Freshness,
}

impl TrustCache {
    pub(crate) fn new(lease: Option<Duration>) -> TrustCache {
        TrustCache { entries: Mutex::default(), freshness: Freshness::new(lease) }
    }

    /// Call before the reads a verdict will rest on.
    fn read_start(&self) -> ReadStart {
        self.freshness.read_start()
    }

    /// The verdict, and when the reads behind it began.
    fn get(&self, repo: &RepoName, digest: &Digest) -> Option<Cached> {
        let entries = self.entries.lock().expect("not poisoned");
        let (cached, until) = entries.get(&(repo.clone(), digest.clone()))?;
        (Instant::now() < *until).then(|| cached.clone())
    }

    /// Remembers a verdict reached from reads since `read`, unless something was invalidated
    /// since then.
    fn put(&self, repo: &RepoName, digest: &Digest, verdict: Option<String>, read: ReadStart) {
        let mut entries = self.entries.lock().expect("not poisoned");
        let until = match self.freshness.admit(read) {
            None => return,
            Some(Expiry::At(lease)) => lease,
            Some(Expiry::Invalidated) => {
                read.began() + if verdict.is_none() { VALID_TTL } else { REFUSED_TTL }
            }
        };
        if entries.len() > 100_000 {
            entries.clear();
        }
        entries.insert((repo.clone(), digest.clone()), ((verdict, read.began()), until));
    }

    /// A signature arrived or something was deleted in `repo` (a `[[trust]]` repository):
    /// forget its verdicts. All of them: a child's verdict rests on its index's signature,
    /// which a pushed signature tag may have replaced, and refusals may now verify.
    pub(crate) fn forget_repo(&self, repo: &RepoName) {
        let mut entries = self.entries.lock().expect("not poisoned");
        self.freshness.invalidate();
        entries.retain(|(r, _), _| r != repo);
    }
}

/// The subject a pushed manifest signs or refers to: its `subject`, or the digest of a
/// cosign tag `sha256-<hex>.sig|.att|.sbom` (or the referrers tag `sha256-<hex>`).
pub(crate) fn signed_subject(manifest: &Manifest, tag: Option<&Tag>) -> Option<Digest> {
    if let Some(s) = &manifest.subject {
        return Some(s.digest.clone());
    }
    tag.and_then(|t| tag_subject(t.as_str()))
}

fn tag_subject(tag: &str) -> Option<Digest> {
    let base = ["sig", "att", "sbom"].iter().find_map(|s| tag.strip_suffix(&format!(".{s}"))).unwrap_or(tag);
    Digest::from_tag_form(base)
}

/// Manifests a runtime cannot run (signatures, attestations, SBOMs, other artifacts) are
/// always readable: they are how clients check trust. Decided by content, not by tag or
/// `subject`, which anyone with push rights could put on a runnable image: exempt is an image
/// manifest whose config is not an image config, or none of whose layers is a filesystem tar
/// (cosign's signatures carry simple-signing layers, attestations DSSE envelopes).
pub(crate) fn is_exempt(manifest: &Manifest) -> bool {
    match &manifest.kind {
        ManifestKind::Image { config, layers } => {
            !RUNNABLE_CONFIGS.contains(&config.media_type.as_str())
                || !layers.iter().any(|l| l.media_type.contains(".tar") || l.media_type.contains(".layer."))
        }
        ManifestKind::Index { .. } => false,
    }
}

impl Registry {
    /// The first `[[trust]]` rule matching `repo`.
    pub fn trust_rule(&self, repo: &RepoName) -> Option<&TrustRule> {
        self.config().trust.iter().find(|r| r.pattern.matches(repo))
    }

    /// Refuse (`DENIED`) a manifest of a trusted repository that does not verify. `bytes`:
    /// the manifest when the caller has it already.
    pub(crate) async fn enforce_trust(
        &self,
        repo: &RepoName,
        digest: &Digest,
        bytes: Option<&[u8]>,
    ) -> Result<()> {
        let Some(rule) = self.trust_rule(repo) else { return Ok(()) };
        if let Some((cached, _)) = self.trust_cache().get(repo, digest) {
            return cached.map_or(Ok(()), |reason| Err(denied(repo, rule, digest, &reason)));
        }
        // Before any read: a verdict is only as fresh as the oldest read it rests on.
        let read = self.trust_cache().read_start();
        let loaded;
        let bytes = match bytes {
            Some(b) => b,
            None => match self.metadata().get_manifest(repo, digest).await? {
                Some(m) => {
                    loaded = m.content;
                    &loaded[..]
                }
                None => return Ok(()),
            },
        };
        let parsed = Manifest::parse(None, bytes).ok();
        if parsed.as_ref().is_some_and(is_exempt) {
            // Decided by the bytes alone, which the digest fixes.
            self.trust_cache().put(repo, digest, None, read);
            return Ok(());
        }
        let verdict = self.trust_verdict(repo, digest, &rule.keys).await?;
        if verdict.is_none() {
            self.trust_cache().put(repo, digest, None, read);
            return Ok(());
        }
        // A child pinned by a signed index of this repository.
        for (index, _) in self.metadata().indexes_listing(repo, digest).await? {
            let (index_ok, index_read) = match self.trust_cache().get(repo, &index) {
                Some((v, at)) => (v.is_none(), read.resting_on(at)),
                None => {
                    let v = self.trust_verdict(repo, &index, &rule.keys).await?;
                    let ok = v.is_none();
                    self.trust_cache().put(repo, &index, v, read);
                    (ok, read)
                }
            };
            if index_ok {
                self.trust_cache().put(repo, digest, None, index_read);
                return Ok(());
            }
        }
        let reason = verdict.unwrap_or_default();
        self.trust_cache().put(repo, digest, Some(reason.clone()), read);
        Err(denied(repo, rule, digest, &reason))
    }

    /// `None` when a signature of `subject` in `repo` verifies; else why not.
    async fn trust_verdict(
        &self,
        repo: &RepoName,
        subject: &Digest,
        keys: &[PublicKey],
    ) -> Result<Option<String>> {
        let mut candidates: Vec<Digest> = self
            .metadata()
            .referrers(repo, subject)
            .await?
            .into_iter()
            .filter(|r| r.artifact_type.as_deref() == Some(COSIGN_SIG_ARTIFACT))
            .map(|r| r.digest)
            .collect();
        if let Ok(tag) = wharf_trust::signature_tag(subject).parse::<Tag>()
            && let Some(d) = self.metadata().resolve_tag(repo, &tag).await?
            && !candidates.contains(&d)
        {
            candidates.push(d);
        }
        let mut assessment = Assessment::new();
        for sig in candidates {
            let outcome = self.check_signature(repo, &sig, subject, keys).await?;
            assessment.record(&sig, outcome.map(|i| &keys[i]));
        }
        Ok(match assessment.verdict() {
            Verdict::Valid { .. } => None,
            Verdict::Missing => Some("it has no cosign signature".to_owned()),
            v @ Verdict::Invalid { .. } => Some(format!("its signature is {}", v.describe())),
        })
    }

    /// One signature manifest: the index of the key that verified it, or why it does not.
    async fn check_signature(
        &self,
        repo: &RepoName,
        sig: &Digest,
        subject: &Digest,
        keys: &[PublicKey],
    ) -> Result<std::result::Result<usize, wharf_trust::TrustError>> {
        let Some(m) = self.metadata().get_manifest(repo, sig).await? else {
            return Ok(Err(wharf_trust::TrustError::MalformedSignatureManifest("it is gone".into())));
        };
        let layers = match wharf_trust::signature_layers(&m.content) {
            Ok(l) => l,
            Err(e) => return Ok(Err(e)),
        };
        let mut last = wharf_trust::TrustError::NoSignatureLayer;
        for layer in layers {
            if layer.payload.size > MAX_PAYLOAD {
                last = wharf_trust::TrustError::MalformedSignatureManifest("payload too large".into());
                continue;
            }
            let payload = self.read_small_blob(repo, &layer.payload.digest).await?;
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

    async fn read_small_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<u8>> {
        let mut read = self.read_blob(repo, digest, None).await?;
        let mut out = Vec::new();
        while let Some(chunk) = read.body.next().await {
            let chunk = chunk.map_err(|e| RegistryError::Storage(wharf_storage::StorageError::from(e)))?;
            out.extend_from_slice(&chunk);
            if out.len() as u64 > MAX_PAYLOAD {
                break;
            }
        }
        Ok(out)
    }
}

fn denied(repo: &RepoName, rule: &TrustRule, digest: &Digest, reason: &str) -> RegistryError {
    RegistryError::Denied(format!(
        "repository {repo} serves only signed images (trust rule {}): manifest {digest} is refused \
         because {reason}",
        rule.pattern.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(config: &str, layers: &[&str], extra: &str) -> Manifest {
        let d = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        let layers: Vec<String> =
            layers.iter().map(|m| format!(r#"{{"mediaType":"{m}","digest":"{d}","size":2}}"#)).collect();
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",{extra}"config":{{"mediaType":"{config}","digest":"{d}","size":2}},"layers":[{}]}}"#,
            layers.join(",")
        );
        Manifest::parse(None, text.as_bytes()).unwrap()
    }

    #[test]
    fn exemptions() {
        let image_config = "application/vnd.oci.image.config.v1+json";
        let tar = "application/vnd.oci.image.layer.v1.tar+gzip";
        let cases: &[(Manifest, bool)] = &[
            (manifest(image_config, &[tar], ""), false),
            (
                manifest(
                    "application/vnd.docker.container.image.v1+json",
                    &["application/vnd.docker.image.rootfs.diff.tar.gzip"],
                    "",
                ),
                false,
            ),
            // A subject or an artifactType does not make a runnable image exempt.
            (manifest(image_config, &[tar], r#""artifactType":"application/x","#), false),
            // cosign signature (tag form: image config, simple-signing layer).
            (manifest(image_config, &[wharf_trust::SIMPLE_SIGNING_MEDIA_TYPE], ""), true),
            // cosign attestation, SBOM attached by cosign.
            (manifest(image_config, &["application/vnd.dsse.envelope.v1+json"], ""), true),
            (manifest(image_config, &["text/spdx+json"], ""), true),
            // OCI 1.1 artifacts: the empty config.
            (
                manifest(
                    "application/vnd.oci.empty.v1+json",
                    &[tar],
                    r#""artifactType":"application/spdx+json","#,
                ),
                true,
            ),
        ];
        for (i, (m, exempt)) in cases.iter().enumerate() {
            assert_eq!(is_exempt(m), *exempt, "case {i}");
        }
        let d = Digest::sha256_of(b"x");
        for suffix in ["", ".sig", ".att", ".sbom"] {
            assert_eq!(tag_subject(&format!("{}{suffix}", d.tag_form())), Some(d.clone()));
        }
        assert_eq!(tag_subject("sha256-nothex.sig"), None);
    }

    #[test]
    fn cache_invalidation() {
        let c = TrustCache::new(None);
        let repo: RepoName = "prod/app".parse().unwrap();
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        let read = c.read_start();
        c.put(&repo, &a, Some("unsigned".into()), read);
        c.put(&repo, &b, None, read);
        assert_eq!(c.get(&repo, &a), Some((Some("unsigned".into()), read.began())));
        let other: RepoName = "prod/other".parse().unwrap();
        c.put(&other, &b, None, c.read_start());
        // A signature pushed (or anything deleted): the refusal may now verify, and a valid
        // verdict may rest on a signature that was replaced.
        c.forget_repo(&repo);
        assert_eq!(c.get(&repo, &a), None);
        assert_eq!(c.get(&repo, &b), None);
        assert!(c.get(&other, &b).is_some(), "other repositories keep theirs");
    }

    #[test]
    fn a_verdict_whose_reads_raced_a_delete_is_not_kept() {
        let c = TrustCache::new(None);
        let repo: RepoName = "prod/app".parse().unwrap();
        let a = Digest::sha256_of(b"a");
        let read = c.read_start(); // a pull starts verifying a's signature
        c.forget_repo(&repo); // the signature is deleted meanwhile
        c.put(&repo, &a, None, read);
        assert_eq!(c.get(&repo, &a), None, "a valid verdict outlived the delete of its signature");
        let read = c.read_start();
        c.forget_repo(&repo); // a signature is pushed meanwhile
        c.put(&repo, &a, Some("unsigned".into()), read);
        assert_eq!(c.get(&repo, &a), None, "a refusal outlived a signature push");
    }

    #[test]
    fn replicas_reuse_any_verdict_only_for_the_lease_from_before_its_reads() {
        let lease = Duration::from_millis(200);
        let c = TrustCache::new(Some(lease));
        let repo: RepoName = "prod/app".parse().unwrap();
        let a = Digest::sha256_of(b"a");
        c.put(&repo, &a, None, c.read_start());
        assert!(c.get(&repo, &a).is_some());
        // Reads that began a lease ago give a verdict that is already out of date.
        c.forget_repo(&repo);
        c.put(&repo, &a, None, c.read_start().resting_on(Instant::now() - lease));
        assert_eq!(c.get(&repo, &a), None, "a valid verdict outlived the lease");
        c.put(&repo, &a, Some("unsigned".into()), c.read_start().resting_on(Instant::now() - lease));
        assert_eq!(c.get(&repo, &a), None, "a refusal outlived the lease");
        // Without replicas, a valid verdict is kept for its TTL.
        let single = TrustCache::new(None);
        single.put(&repo, &a, None, single.read_start().resting_on(Instant::now() - lease));
        assert!(single.get(&repo, &a).is_some());
    }
}
