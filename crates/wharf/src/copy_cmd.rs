//! `wharf copy SRC DST`: one image between registries, OCI layouts and OCI archives, with
//! only the chosen platforms, keeping the index byte for byte (see wharf_mirror).

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use wharf_client::{ClientOptions, Credentials};
use wharf_mirror::{BlobOutcome, CopyOptions, CopyReport, ImageRef, Progress};
use wharf_oci::{Digest, Platform};
use wharf_sync::report::short;

/// Copy an image (or some platforms of it), its signatures and other referrers.
#[derive(clap::Args)]
pub struct CopyArgs {
    /// Source: docker://HOST/REPO[:TAG|@DIGEST], oci:PATH[:TAG] or oci-archive:FILE[:TAG].
    #[arg(value_name = "SRC")]
    pub src: String,
    /// Destination, in the same syntax.
    #[arg(value_name = "DST")]
    pub dst: String,
    /// Copy only this platform of an index (repeat for more), e.g. linux/arm64 or linux/arm/v7.
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    pub platforms: Vec<Platform>,
    /// Copy every platform (the default when no --platform is given).
    #[arg(long, conflicts_with = "platforms")]
    pub all_platforms: bool,
    /// If the destination refuses a sparse index, write a new index listing only the copied
    /// platforms. Its digest differs: signatures on the original index will not verify.
    #[arg(long)]
    pub rewrite_index: bool,
    /// Do not copy signatures, SBOMs and attestations.
    #[arg(long)]
    pub no_referrers: bool,
    /// Credentials for the source registry (else from auth.json / docker config).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub src_creds: Option<String>,
    /// Credentials for the destination registry (else from auth.json / docker config).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub dest_creds: Option<String>,
    /// Verify the source registry's TLS certificate (=false also allows plain HTTP).
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value_t = true, default_missing_value = "true")]
    pub src_tls_verify: bool,
    /// Verify the destination registry's TLS certificate (=false also allows plain HTTP).
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value_t = true, default_missing_value = "true")]
    pub dest_tls_verify: bool,
    /// Extra CA certificates (`*.crt`) for the source registry, like skopeo's --src-cert-dir.
    #[arg(long, value_name = "DIR")]
    pub src_cert_dir: Option<std::path::PathBuf>,
    /// Extra CA certificates (`*.crt`) for the destination registry.
    #[arg(long, value_name = "DIR")]
    pub dest_cert_dir: Option<std::path::PathBuf>,
    /// Verify the source's cosign signatures (index and each selected platform) with this
    /// public key before writing anything; refuse the copy when they do not verify. Repeat
    /// to accept any of several keys.
    #[arg(long = "verify-key", value_name = "FILE")]
    pub verify_keys: Vec<std::path::PathBuf>,
    /// Blobs copied in parallel.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: CopyArgs) -> anyhow::Result<()> {
    let src: ImageRef = args.src.parse()?;
    let dst: ImageRef = args.dst.parse()?;
    let creds = |flag: &str, value: &Option<String>| -> anyhow::Result<Option<Credentials>> {
        value.as_deref().map(Credentials::parse_user_pass).transpose().with_context(|| format!("--{flag}"))
    };
    let opts = CopyOptions {
        platforms: args.platforms.clone(),
        all_platforms: args.all_platforms,
        rewrite_index: args.rewrite_index,
        no_referrers: args.no_referrers,
        jobs: usize::from(args.jobs),
        src_client: ClientOptions {
            tls_verify: args.src_tls_verify,
            credentials: creds("src-creds", &args.src_creds)?,
            cert_dir: args.src_cert_dir.clone(),
            ..Default::default()
        },
        dest_client: ClientOptions {
            tls_verify: args.dest_tls_verify,
            credentials: creds("dest-creds", &args.dest_creds)?,
            cert_dir: args.dest_cert_dir.clone(),
            ..Default::default()
        },
        lookup_credentials: true,
        verify_keys: if args.verify_keys.is_empty() {
            None
        } else {
            Some(crate::verify_cmd::load_keys(&args.verify_keys)?)
        },
        ..CopyOptions::default()
    };
    if args.platforms.is_empty() && !args.all_platforms {
        eprintln!("no --platform given: copying every platform (use --platform OS/ARCH to copy only some)");
    }
    eprintln!("copying {src} to {dst}");
    let output = Output::new(std::io::stderr().is_terminal());
    let result = wharf_mirror::copy(&src, &dst, &opts, output.clone()).await;
    output.finish();
    // The engine's messages carry their causes already; a chain would repeat them.
    let report = result.map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(())
}

fn print_summary(report: &CopyReport) {
    for image in &report.images {
        if image.platforms_copied.is_empty() {
            eprintln!("copied {} to {}", image.source_digest, image.destination);
        } else {
            eprintln!(
                "copied {} of {} to {}",
                image.platforms_copied.join(", "),
                image.source_digest,
                image.destination
            );
        }
        if !image.platforms_filtered.is_empty() {
            eprintln!("  left out by the platform filter: {}", image.platforms_filtered.join(", "));
        }
        if !image.platforms_absent_at_source.is_empty() {
            eprintln!(
                "  absent at the source (sparse index): {}",
                image.platforms_absent_at_source.join(", ")
            );
        }
        if image.rewritten {
            eprintln!("  index rewritten: {} -> {}", image.source_digest, image.destination_digest);
        }
        if image.referrers_copied > 0 {
            eprintln!("  signatures, SBOMs and attestations: {}", image.referrers_copied);
        }
    }
    eprintln!(
        "{} copied, {} already at the destination, {} left out by the platform filter",
        HumanBytes(report.bytes_copied),
        HumanBytes(report.bytes_existing),
        HumanBytes(report.bytes_filtered)
    );
}

/// Progress on stderr: bars on a terminal, plain lines elsewhere.
struct Output {
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    blobs: Mutex<HashMap<Digest, ProgressBar>>,
    copied: std::sync::atomic::AtomicU64,
}

impl Output {
    fn new(terminal: bool) -> Arc<Output> {
        let bars = terminal.then(|| {
            let multi = MultiProgress::new();
            let total = multi.add(ProgressBar::new_spinner());
            total.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
            );
            total.enable_steady_tick(std::time::Duration::from_millis(120));
            Bars { multi, total, blobs: Mutex::new(HashMap::new()), copied: 0.into() }
        });
        Arc::new(Output { bars })
    }

    fn finish(&self) {
        if let Some(b) = &self.bars {
            for bar in b.blobs.lock().expect("not poisoned").drain().map(|(_, bar)| bar) {
                bar.finish_and_clear();
            }
            b.total.finish_and_clear();
        }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}

impl Progress for Output {
    fn blob_started(&self, digest: &Digest, size: u64) {
        if let Some(b) = &self.bars {
            let bar = b.multi.add(ProgressBar::new(size));
            bar.set_style(
                ProgressStyle::with_template("  {msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
                    .expect("valid template"),
            );
            bar.set_message(short(digest));
            b.blobs.lock().expect("not poisoned").insert(digest.clone(), bar);
        }
    }

    fn blob_progress(&self, digest: &Digest, bytes: u64) {
        if let Some(b) = &self.bars {
            if let Some(bar) = b.blobs.lock().expect("not poisoned").get(digest) {
                bar.inc(bytes);
            }
            let done = b.copied.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed) + bytes;
            b.total.set_message(format!("{} copied", HumanBytes(done)));
        }
    }

    fn blob_done(&self, digest: &Digest, outcome: BlobOutcome) {
        if let Some(b) = &self.bars
            && let Some(bar) = b.blobs.lock().expect("not poisoned").remove(digest)
        {
            bar.finish_and_clear();
        }
        match outcome {
            BlobOutcome::Copied(n) => {
                self.line(&format!("copied blob {} ({})", short(digest), HumanBytes(n)))
            }
            BlobOutcome::Mounted => self.line(&format!("mounted blob {}", short(digest))),
            BlobOutcome::Existing | BlobOutcome::Failed => {}
        }
    }

    fn message(&self, text: &str) {
        self.line(text);
    }
}
