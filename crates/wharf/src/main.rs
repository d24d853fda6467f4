//! The `wharf` command: a registry (`serve`) and a mirror (`copy`, `sync`, `inspect`).

mod client;
mod config;
mod config_cmd;
mod copy_cmd;
mod docs_cmd;
mod gc_cmd;
mod inspect;
mod mirror_runs;
mod mirrors_cmd;
mod report_cmd;
mod serve;
mod stores;
mod sync_cmd;
mod upstream;
mod verify_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "A container registry and mirror that keeps multi-arch indexes intact"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve(serve::ServeArgs),
    /// Copy an image, or some platforms of it, with its signatures.
    Copy(copy_cmd::CopyArgs),
    /// Show an index: each platform present or absent, sizes, referrers.
    Inspect(inspect::InspectArgs),
    /// Verify cosign signatures of an index and its present platforms (after a partial mirror).
    Verify(verify_cmd::VerifyArgs),
    /// Show a Wharf registry's storage: per repository, sparse indexes, bytes stored.
    Report(report_cmd::ReportArgs),
    /// Mirror many images from a config file, also through air-gapped bundles.
    Sync(sync_cmd::SyncArgs),
    /// Show a Wharf registry's own mirrors ([[mirrors]]), or start a run now (--run NAME).
    Mirrors(mirrors_cmd::MirrorsArgs),
    /// Remove unreferenced blob links and blobs, online (safe while `serve` runs).
    Gc(gc_cmd::GcArgs),
    /// Re-hash stored blobs and manifests and check the metadata against storage.
    Fsck(gc_cmd::FsckArgs),
    /// Check a server config file (`wharf config check FILE`).
    Config(config_cmd::ConfigArgs),
    /// Print shell completions (bash, zsh or fish).
    Completions(docs_cmd::CompletionsArgs),
    /// Print the man page (roff).
    Man,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Inspect(args) => inspect::run(args).await,
            Command::Report(args) => report_cmd::run(args).await,
            Command::Copy(args) => copy_cmd::run(args).await,
            Command::Verify(args) => verify_cmd::run(args).await,
            Command::Sync(args) => sync_cmd::run(args).await,
            Command::Mirrors(args) => mirrors_cmd::run(args).await,
            Command::Gc(args) => gc_cmd::run_gc(args).await,
            Command::Fsck(args) => gc_cmd::run_fsck(args).await,
            Command::Config(args) => config_cmd::run(args).await,
            Command::Completions(args) => docs_cmd::completions(args),
            Command::Man => docs_cmd::man(),
        }
    });
    // A mirror run still going on a blocking thread when `serve` stops must not hold the exit
    // up: runs are incremental, the next one picks up where this one was cut.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
