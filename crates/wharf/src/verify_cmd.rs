//! `wharf verify IMAGE --key FILE`: after a partial mirror, do the index signature and each
//! present platform's own signature still verify? Absent platforms are reported, not failed,
//! unless named with `--platform`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use wharf_client::{ClientOptions, Credentials};
use wharf_mirror::{Copier, CopyOptions, ImageRef, PublicKey, TrustReport, Verdict};
use wharf_oci::Platform;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// docker://HOST/REPO[:TAG|@DIGEST], oci:PATH[:TAG] or oci-archive:FILE[:TAG].
    #[arg(value_name = "IMAGE")]
    image: String,
    /// Public key (PEM, as `cosign generate-key-pair` writes cosign.pub); repeat to accept
    /// signatures by any of several keys.
    #[arg(long = "key", value_name = "FILE", required = true)]
    keys: Vec<PathBuf>,
    /// Check only this platform of an index (repeat for more); it must be present.
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    platforms: Vec<Platform>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Verify the registry's TLS certificate (=false also allows plain HTTP).
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value_t = true, default_missing_value = "true")]
    tls_verify: bool,
    /// Extra CA certificates (`*.crt`), like skopeo's --cert-dir.
    #[arg(long, value_name = "DIR")]
    cert_dir: Option<PathBuf>,
    /// Credentials USER:PASSWORD (else the auth files docker and podman use).
    #[arg(long, value_name = "USER:PASSWORD")]
    creds: Option<String>,
}

/// Read public keys (PEM files), naming the file that is wrong.
pub fn load_keys(paths: &[impl AsRef<Path>]) -> anyhow::Result<Arc<Vec<PublicKey>>> {
    let mut keys = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let text = std::fs::read_to_string(p).with_context(|| format!("reading key file {}", p.display()))?;
        keys.push(PublicKey::from_pem(&text).with_context(|| format!("key file {}", p.display()))?);
    }
    Ok(Arc::new(keys))
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let keys = load_keys(&args.keys)?;
    let image = if args.image.contains("://")
        || args.image.starts_with("oci:")
        || args.image.starts_with("oci-archive:")
    {
        args.image.clone()
    } else {
        format!("docker://{}", args.image)
    };
    let src: ImageRef = image.parse()?;
    let credentials =
        args.creds.as_deref().map(Credentials::parse_user_pass).transpose().context("--creds")?;
    let copier = Copier::quiet(CopyOptions {
        src_client: ClientOptions {
            tls_verify: args.tls_verify,
            credentials,
            cert_dir: args.cert_dir.clone(),
            ..Default::default()
        },
        ..Default::default()
    });
    let report =
        copier.verify_signatures(&src, &args.platforms, &keys).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if !report.is_ok() {
        bail!("{} does not verify:\n  {}", report.image, report.failures.join("\n  "));
    }
    Ok(())
}

fn verdict_cell(v: &Verdict) -> String {
    match v {
        Verdict::Valid { .. } => "valid".into(),
        Verdict::Invalid { .. } => "INVALID".into(),
        Verdict::Missing => "MISSING".into(),
    }
}

fn key_cell(v: &Verdict) -> &str {
    match v {
        Verdict::Valid { fingerprint, .. } => fingerprint,
        _ => "-",
    }
}

fn print_table(r: &TrustReport) {
    println!("{} {}", r.image, r.digest);
    println!("keys: {}", r.keys.join(", "));
    let kind = if r.platforms.is_empty() { "image" } else { "index" };
    println!("{:<16} {:<9} {:<10} {:<73} DIGEST", "PLATFORM", "PRESENT", "SIGNATURE", "KEY");
    println!(
        "{:<16} {:<9} {:<10} {:<73} {}",
        kind,
        "yes",
        verdict_cell(&r.signature),
        key_cell(&r.signature),
        r.digest
    );
    for p in &r.platforms {
        let (present, sig, key) = match (&p.signature, p.present, p.checked) {
            (Some(v), _, _) => ("yes", verdict_cell(v), key_cell(v).to_owned()),
            (None, false, _) => ("absent", "-".to_owned(), "-".to_owned()),
            (None, true, _) => ("yes", "not checked".to_owned(), "-".to_owned()),
        };
        println!("{:<16} {:<9} {:<10} {:<73} {}", p.platform, present, sig, key, p.digest);
    }
    let absent = r.platforms.iter().filter(|p| !p.present).count();
    if r.is_ok() {
        println!(
            "verified: the {kind} signature and {} present platform signature(s) verify; {absent} platform(s) absent",
            r.platforms.iter().filter(|p| p.signature.is_some()).count()
        );
    }
}
