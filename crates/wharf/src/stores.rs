//! Where a registry's stores are, and opening them: shared by `wharf serve`, `gc` and `fsck`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use wharf_metadata::MetadataStore;
use wharf_storage::BlobStore;

use crate::config::ServerFile;
use crate::serve::redact;

/// Where the stores are: as for `wharf serve`.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The server's TOML configuration file (for `data_dir` and `database`); flags override it.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// The server's data directory [default: ./wharf-data].
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Metadata database: sqlite://PATH or postgres://... [default: SQLite in the data dir].
    #[arg(long)]
    pub(crate) database: Option<String>,
}

/// Whether opening may make a new, empty registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Open {
    /// `serve`: create the data directory and the database if missing.
    CreateIfMissing,
    /// `gc`, `fsck`: pointing at the wrong directory is an error, not an empty registry.
    Existing,
}

/// The opened stores and where they are.
pub(crate) struct Stores {
    pub(crate) blobs: BlobStore,
    pub(crate) meta: MetadataStore,
    pub(crate) data_dir: PathBuf,
    pub(crate) database: String,
}

impl StoreArgs {
    /// The `--config` file, or the defaults without one.
    pub(crate) fn load_config(&self) -> anyhow::Result<ServerFile> {
        match &self.config {
            Some(path) => ServerFile::load(path),
            None => Ok(ServerFile::default()),
        }
    }

    /// Opens the blob store and the metadata store; flags override `file`, then the defaults
    /// (`./wharf-data`, SQLite `metadata.db` in it).
    pub(crate) async fn open(&self, file: &ServerFile, mode: Open) -> anyhow::Result<Stores> {
        let data_dir =
            self.data_dir.clone().or(file.data_dir.clone()).unwrap_or_else(|| "./wharf-data".into());
        let storage = data_dir.join("storage");
        let on_s3 = file.storage.as_ref().is_some_and(|s| s.kind.as_deref() == Some("s3"));
        match mode {
            Open::CreateIfMissing => std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating data dir {}", data_dir.display()))?,
            Open::Existing if !on_s3 && !storage.is_dir() => bail!(
                "{} holds no blob storage: give the registry's data directory with --data-dir or --config",
                data_dir.display()
            ),
            Open::Existing => {}
        }
        // `MetadataStore::connect` opens SQLite files with `mode=rwc` unless the URL says otherwise.
        let database = match self.database.clone().or(file.database.clone()) {
            Some(url) => url,
            None => {
                let path = data_dir.join("metadata.db");
                if mode == Open::Existing && !path.is_file() {
                    bail!(
                        "{} does not exist: give the registry's database with --database or --config",
                        path.display()
                    );
                }
                format!("sqlite://{}", path.display())
            }
        };
        let s3 = match &file.storage {
            Some(storage) => storage.s3_config()?,
            None => None,
        };
        let blobs = match s3 {
            // The bucket is checked here: a wrong key or a missing bucket stops the start.
            Some(s3) => BlobStore::open_s3(s3).await.context("opening blob storage")?,
            None => BlobStore::open(storage).await.context("opening blob storage")?,
        };
        let meta = MetadataStore::connect(&database)
            .await
            .with_context(|| format!("opening metadata database ({})", redact(&database)))?;
        Ok(Stores { blobs, meta, data_dir, database })
    }
}
