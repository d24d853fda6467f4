//! `wharf sync`: many images from a config file (see wharf_sync), or an air-gapped bundle
//! loaded into a registry (`--from BUNDLE --to docker://HOST[/PREFIX]`) or checked
//! (`--from BUNDLE --verify`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use wharf_mirror::Progress;
use wharf_sync::{Defaults, SyncOptions, SyncReport};

/// Mirror many images from a config file, or load or check an air-gapped bundle.
#[derive(clap::Args)]
pub struct SyncArgs {
    /// The sync file: Wharf's TOML ([defaults] with platforms, dest prefix, credentials, TLS,
    /// jobs; one [[images]] entry per source repository), or skopeo's sync YAML (by extension
    /// .yaml/.yml, or by content; give --dest).
    #[arg(long, value_name = "FILE", conflicts_with = "from")]
    pub config: Option<PathBuf>,
    /// Where the images go, as skopeo sync takes it on its command line: docker://HOST[/PREFIX].
    /// Required with skopeo's YAML (an image goes to PREFIX/<last component of its repository>,
    /// as skopeo without --scoped); with TOML it replaces [defaults] dest.
    #[arg(long, value_name = "docker://HOST[/PREFIX]", requires = "config")]
    pub dest: Option<String>,
    /// A platform to copy (repeat for more); replaces the default platforms of the file.
    /// Without it, skopeo's YAML copies every platform (as skopeo sync --all).
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]", requires = "config")]
    pub platforms: Vec<String>,
    /// Print the plan (images, tags, platforms, bytes to move, already there, left out) and
    /// write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// A bundle written by an earlier sync: oci:DIR, oci-archive:FILE, or a path. For a split
    /// archive, its first part FILE (FILE.part2, ... are found beside it).
    #[arg(long, value_name = "BUNDLE")]
    pub from: Option<String>,
    /// With --from: load every image of the bundle into this registry; the bundle name
    /// team/app:v1 goes to HOST/PREFIX/team/app:v1.
    #[arg(long, value_name = "docker://HOST[/PREFIX]", requires = "from")]
    pub to: Option<String>,
    /// With --from: re-hash every blob and manifest of the bundle and check every index.json
    /// entry resolves; fails naming anything corrupt or missing.
    #[arg(long, requires = "from", conflicts_with_all = ["to", "dry_run"])]
    pub verify: bool,
    /// Split an oci-archive: destination into parts of at most SIZE (e.g. 500M, 2G; K/M/G/T are
    /// powers of 1024): FILE, FILE.part2, ... each a complete archive holding whole images.
    #[arg(long, value_name = "SIZE", value_parser = wharf_sync::parse_size)]
    pub max_archive_size: Option<u64>,
    /// Images copied at the same time (default: the config's jobs, else 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,
    /// Credentials for the source registries (overrides the config's src_creds).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub src_creds: Option<String>,
    /// Credentials for the destination registry (overrides the config's dest_creds).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub dest_creds: Option<String>,
    /// Verify the source registries' TLS certificates (=false also allows plain HTTP).
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub src_tls_verify: Option<bool>,
    /// Verify the destination registry's TLS certificate (=false also allows plain HTTP).
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub dest_tls_verify: Option<bool>,
    /// Extra CA certificates (`*.crt`) for the source registries (overrides src_cert_dir).
    #[arg(long, value_name = "DIR")]
    pub src_cert_dir: Option<std::path::PathBuf>,
    /// Extra CA certificates (`*.crt`) for the destination registry (overrides dest_cert_dir).
    #[arg(long, value_name = "DIR")]
    pub dest_cert_dir: Option<std::path::PathBuf>,
}

impl SyncArgs {
    /// Flags override the config's defaults.
    fn apply(&self, d: &mut Defaults) {
        if let Some(j) = self.jobs {
            d.jobs = Some(usize::from(j));
        }
        if self.src_creds.is_some() {
            d.src_creds = self.src_creds.clone();
        }
        if self.dest_creds.is_some() {
            d.dest_creds = self.dest_creds.clone();
        }
        if self.src_tls_verify.is_some() {
            d.src_tls_verify = self.src_tls_verify;
        }
        if self.dest_tls_verify.is_some() {
            d.dest_tls_verify = self.dest_tls_verify;
        }
        if self.src_cert_dir.is_some() {
            d.src_cert_dir = self.src_cert_dir.clone();
        }
        if self.dest_cert_dir.is_some() {
            d.dest_cert_dir = self.dest_cert_dir.clone();
        }
    }
}

pub async fn run(args: SyncArgs) -> anyhow::Result<()> {
    let opts = SyncOptions {
        dry_run: args.dry_run,
        max_archive_size: args.max_archive_size,
        lookup_credentials: true,
    };
    let progress: Arc<dyn Progress> = Arc::new(Lines { dry_run: args.dry_run });
    let report = match (&args.config, &args.from) {
        (Some(file), None) => {
            let mut configs = wharf_sync::load_configs(file, args.dest.as_deref(), &args.platforms)?;
            for c in &mut configs {
                args.apply(&mut c.defaults);
            }
            wharf_sync::sync_all(&configs, &opts, progress).await?
        }
        (None, Some(from)) if args.verify => return verify(from, args.json).await,
        (None, Some(from)) => {
            let Some(to) = &args.to else {
                bail!("--from {from} needs --to docker://HOST[/PREFIX] (where to load it) or --verify");
            };
            let mut defaults = Defaults::default();
            args.apply(&mut defaults);
            wharf_sync::load_bundle(from, to, &defaults, &opts, progress).await?
        }
        _ => bail!("say what to sync: --config FILE, or --from BUNDLE with --to or --verify"),
    };
    print(&report, args.json)?;
    if !report.is_success() {
        let failed = report.failed().count();
        if failed > 0 {
            bail!("{failed} of {} images failed (listed above)", report.images.len());
        }
        bail!("{}", report.errors.join("; "));
    }
    Ok(())
}

fn print(report: &SyncReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report).context("writing the JSON report")?);
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

async fn verify(from: &str, json: bool) -> anyhow::Result<()> {
    let check = wharf_sync::verify_bundle(from).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&check).context("writing the JSON report")?);
    } else {
        print!("{}", check.human());
    }
    if !check.is_ok() {
        bail!("bundle {from} is not sound (problems listed above): do not ship it");
    }
    Ok(())
}

/// Progress as plain lines on stderr: one per image, and the engine's messages (warnings).
struct Lines {
    dry_run: bool,
}

impl Progress for Lines {
    fn image_started(&self, source: &str, destination: &str) {
        let verb = if self.dry_run { "planning" } else { "syncing" };
        eprintln!("{verb} {source} -> {destination}");
    }

    fn message(&self, text: &str) {
        eprintln!("{text}");
    }
}
