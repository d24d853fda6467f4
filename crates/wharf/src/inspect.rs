//! `wharf inspect IMAGE`: an index, each platform present or absent, sizes, referrers.
//!
//! Asks Wharf's `/_wharf/index/` extension first; against any other registry it works the
//! same report out with manifest GETs.

use anyhow::{Context, bail};
use wharf_client::RegistryClient;
use wharf_mirror::ImageRef;
use wharf_oci::{Manifest, Reference, RepoName};
use wharf_registry::{ChildReport, IndexReport, ReferrerReport};
use wharf_sync::report::human_bytes;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// docker://HOST/REPO[:TAG|@DIGEST]
    image: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryFlags,
}

/// How to reach a registry: the TLS and credential flags of `inspect` and `report`.
#[derive(Debug, clap::Args)]
pub(crate) struct RegistryFlags {
    /// Verify TLS certificates (=false accepts any certificate and allows plain HTTP; loopback
    /// registries are tried over plain HTTP, then HTTPS, either way).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    tls_verify: bool,
    /// Extra CA certificates (`*.crt`) to trust, like skopeo's --cert-dir.
    #[arg(long, value_name = "DIR")]
    cert_dir: Option<std::path::PathBuf>,
    /// Credentials USER:PASSWORD (else the auth files docker and podman use).
    #[arg(long)]
    creds: Option<String>,
}

impl RegistryFlags {
    /// A client for `host` with these flags; credentials from `--creds`, else the auth files.
    pub(crate) fn client(&self, host: &str) -> anyhow::Result<RegistryClient> {
        crate::client::registry_client(host, self.tls_verify, self.creds.as_deref(), self.cert_dir.clone())
    }
}

/// `docker://HOST/REPO[:TAG|@DIGEST]` (the `docker://` prefix is optional), parsed by the
/// mirror's `ImageRef` like every other image reference of the CLI.
pub fn parse_docker_ref(image: &str) -> anyhow::Result<(String, RepoName, Reference)> {
    let with_transport = if image.contains("://") || image.starts_with("oci") {
        image.to_owned()
    } else {
        format!("docker://{image}")
    };
    let parsed: ImageRef = with_transport.parse()?;
    let reference = parsed.registry_reference();
    match (parsed, reference) {
        (ImageRef::Docker { host, repo, .. }, Some(reference)) => Ok((host, repo, reference)),
        _ => bail!("wharf inspect reads registries: use docker://HOST/REPO[:TAG|@DIGEST], not {image:?}"),
    }
}

pub async fn run(args: InspectArgs) -> anyhow::Result<()> {
    let (host, repo, reference) = parse_docker_ref(&args.image)?;
    let client = args.registry.client(&host)?;
    let report = match from_extension(&client, &repo, &reference).await? {
        Some(r) => r,
        None => worked_out(&client, &repo, &reference).await?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&args.image, &report);
    }
    Ok(())
}

async fn from_extension(
    client: &RegistryClient,
    repo: &RepoName,
    reference: &Reference,
) -> anyhow::Result<Option<IndexReport>> {
    let (status, content_type, body) =
        client.get_raw(&format!("/v2/{repo}/_wharf/index/{reference}")).await?;
    let is_report =
        content_type.as_deref().is_some_and(|c| c.starts_with("application/vnd.wharf.index-report"));
    if status == 200 && is_report {
        return Ok(Some(serde_json::from_slice(&body).context("reading Wharf's index report")?));
    }
    // Any other answer (another registry, or an image that is not there): the plain
    // requests below report it in the usual way.
    Ok(None)
}

/// The report from plain distribution-spec requests.
async fn worked_out(
    client: &RegistryClient,
    repo: &RepoName,
    reference: &Reference,
) -> anyhow::Result<IndexReport> {
    let raw = client.get_manifest(repo, reference).await?;
    let manifest = Manifest::parse(Some(&raw.media_type), &raw.bytes)?;
    let mut children = Vec::new();
    for child in manifest.children() {
        let stored_bytes = match client.get_manifest(repo, &Reference::Digest(child.digest.clone())).await {
            Ok(m) => {
                let parsed = Manifest::parse(Some(&m.media_type), &m.bytes)?;
                Some(child.size + parsed.blobs().iter().map(|b| b.size).sum::<u64>())
            }
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let present = stored_bytes.is_some();
        children.push(ChildReport {
            digest: child.digest.clone(),
            media_type: child.media_type.clone(),
            platform: child.platform.as_ref().map(|p| p.normalized().to_string()),
            size: child.size,
            present,
            stored_bytes,
            attestation_for: child.attestation_subject(),
            artifact_type: child.artifact_type.clone(),
            referrers: referrers(client, repo, &child.digest).await,
        });
    }
    Ok(IndexReport::new(
        repo.clone(),
        raw.digest.clone(),
        raw.media_type.clone(),
        raw.bytes.len() as u64,
        "unknown (not a Wharf registry)".into(),
        referrers(client, repo, &raw.digest).await,
        children,
    ))
}

/// Referrers through the API; a registry without one reports none here.
async fn referrers(
    client: &RegistryClient,
    repo: &RepoName,
    digest: &wharf_oci::Digest,
) -> Vec<ReferrerReport> {
    match client.referrers(repo, digest, None).await {
        Ok(Some(list)) => list
            .into_iter()
            .map(|d| ReferrerReport { digest: d.digest, artifact_type: d.artifact_type, size: d.size })
            .collect(),
        _ => Vec::new(),
    }
}

/// `1.5 MiB`, or `~1.5 MiB` when `exact` is false (an estimate).
pub(crate) fn approx_bytes(bytes: u64, exact: bool) -> String {
    if exact { human_bytes(bytes) } else { format!("~{}", human_bytes(bytes)) }
}

fn print_table(image: &str, r: &IndexReport) {
    println!("{image}");
    println!("  digest      {}", r.digest);
    println!("  media type  {}", r.media_type);
    println!("  policy      {}", r.policy);
    if !r.referrers.is_empty() {
        println!("  referrers   {}", describe_referrers(&r.referrers));
    }
    if r.children.is_empty() {
        println!("  (not an index: no platform children)");
        return;
    }
    println!();
    println!("  {:<22} {:<8} {:<20} {:>10}  REFERRERS", "PLATFORM", "PRESENT", "DIGEST", "STORED");
    for c in &r.children {
        let mut platform = c.platform.clone().unwrap_or_else(|| "-".into());
        if c.attestation_for.is_some() {
            platform = "attestation".into();
        }
        let digest = c.digest.to_string();
        let short = &digest[..digest.len().min(19)];
        let stored = c.stored_bytes.map(human_bytes).unwrap_or_else(|| "-".into());
        println!(
            "  {:<22} {:<8} {:<20} {:>10}  {}",
            platform,
            if c.present { "yes" } else { "absent" },
            short,
            stored,
            describe_referrers(&c.referrers)
        );
    }
    println!();
    let total = r.present_children + r.absent_children;
    let full = approx_bytes(r.full_bytes, r.full_bytes_exact);
    println!(
        "  {} of {} children present; {} stored of {} for the full index",
        r.present_children,
        total,
        human_bytes(r.present_bytes),
        full
    );
}

fn describe_referrers(list: &[ReferrerReport]) -> String {
    if list.is_empty() {
        return "-".into();
    }
    list.iter()
        .map(|r| r.artifact_type.clone().unwrap_or_else(|| "manifest".into()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_refs() {
        let (h, r, t) = parse_docker_ref("docker://127.0.0.1:5000/mirror/app:v1").unwrap();
        assert_eq!((h.as_str(), r.as_str(), t.to_string().as_str()), ("127.0.0.1:5000", "mirror/app", "v1"));
        let (_, r, t) = parse_docker_ref("localhost:5000/app").unwrap();
        assert_eq!((r.as_str(), t.to_string().as_str()), ("app", "latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let (_, _, t) = parse_docker_ref(&format!("docker://h/app@{d}")).unwrap();
        assert_eq!(t.to_string(), d);
        // Short names mean Docker Hub, as for docker, podman and skopeo.
        let (h, r, _) = parse_docker_ref("docker://app").unwrap();
        assert_eq!((h.as_str(), r.as_str()), ("docker.io", "library/app"));
        assert!(parse_docker_ref("oci:/tmp/layout:v1").is_err());
        assert!(parse_docker_ref("docker://h/UP:v1").is_err());
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
