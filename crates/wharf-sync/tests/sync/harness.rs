//! Shared setup: an in-process Wharf (sparse policy), and a fleet of multi-platform images in
//! CNCF distribution 2.8: several repositories, each with the same five tags, every platform
//! image sharing one base layer across all repositories.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use wharf_mirror::{BlobOutcome, Progress};
use wharf_oci::Digest;
use wharf_sync::{SyncConfig, SyncOptions, SyncReport};
use wharf_testkit::{Distribution, TestImage};

pub const REPOS: [&str; 3] = ["team/app", "team/db", "infra/proxy"];
pub const TAGS: [&str; 5] = ["v1.0.0", "v1.1.0", "v1.2.0", "v2.0.0", "latest"];
pub const BASE_SIZE: usize = 4096;

pub use wharf_testkit::wharf::InProcessWharf as Wharf;

/// The fleet in distribution: `images[(repo, tag)]`.
pub struct Fleet {
    pub dist: Distribution,
    pub images: BTreeMap<(String, String), TestImage>,
}

impl Fleet {
    pub async fn start() -> Fleet {
        let dist = Distribution::start();
        let client = dist.client();
        let mut images = BTreeMap::new();
        for (r, repo) in REPOS.iter().enumerate() {
            for (t, tag) in TAGS.iter().enumerate() {
                let img = image((r * 10 + t) as u64, tag);
                client.push_image(repo, &img).await.unwrap();
                images.insert((repo.to_string(), tag.to_string()), img);
            }
        }
        Fleet { dist, images }
    }

    pub fn image(&self, repo: &str, tag: &str) -> &TestImage {
        &self.images[&(repo.to_owned(), tag.to_owned())]
    }

    /// `docker://DIST/<repo>`.
    pub fn source(&self, repo: &str) -> String {
        self.dist.docker_ref(repo)
    }

    /// Push a new image under `repo:tag` (the tag moves upstream).
    pub async fn move_tag(&mut self, repo: &str, tag: &str, seed: u64) -> &TestImage {
        let img = image(seed, tag);
        self.dist.client().push_image(repo, &img).await.unwrap();
        self.images.insert((repo.to_owned(), tag.to_owned()), img);
        self.image(repo, tag)
    }
}

/// A 4-platform image whose platform images all start with the fleet's shared base layer.
pub fn image(seed: u64, tag: &str) -> TestImage {
    TestImage::builder().seed(seed).tag(tag).shared_base_layer("fleet", BASE_SIZE).build()
}

/// The base layer every platform image of the fleet starts with.
pub fn base_layer(img: &TestImage) -> &wharf_testkit::Blob {
    &img.children[0].layers[0]
}

/// Bytes of one platform image without the shared base layer (manifest, config, own layers).
pub fn own_bytes(img: &TestImage, platform: &str) -> u64 {
    let child = img.platform(platform);
    child.manifest.size() + child.config.size() + child.layers[1..].iter().map(|l| l.size()).sum::<u64>()
}

/// A `[[images]]` entry.
pub fn entry(source: &str, selection: &str) -> String {
    format!("[[images]]\nsource = \"{source}\"\n{selection}\n")
}

pub fn config(defaults: &str, entries: &[String]) -> SyncConfig {
    let text = format!("[defaults]\n{defaults}\n{}", entries.concat());
    let config: SyncConfig = toml_from(&text);
    config.validate().unwrap_or_else(|e| panic!("{e}\n{text}"));
    config
}

fn toml_from(text: &str) -> SyncConfig {
    // The crate's loader reads files; tests write one to use the same path.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.toml");
    std::fs::write(&path, text).unwrap();
    SyncConfig::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

pub fn options() -> SyncOptions {
    SyncOptions { lookup_credentials: false, ..Default::default() }
}

/// Counts what happened to each blob.
#[derive(Default)]
pub struct Recorder {
    outcomes: Mutex<HashMap<Digest, Vec<BlobOutcome>>>,
}

impl Recorder {
    pub fn outcomes(&self, digest: &str) -> Vec<BlobOutcome> {
        let d: Digest = digest.parse().unwrap();
        self.outcomes.lock().unwrap().get(&d).cloned().unwrap_or_default()
    }

    pub fn copies(&self) -> usize {
        let all = self.outcomes.lock().unwrap();
        all.values().flatten().filter(|o| matches!(o, BlobOutcome::Copied(_))).count()
    }
}

impl Progress for Recorder {
    fn blob_done(&self, digest: &Digest, outcome: BlobOutcome) {
        self.outcomes.lock().unwrap().entry(digest.clone()).or_default().push(outcome);
    }
}

pub async fn run(config: &SyncConfig) -> SyncReport {
    wharf_sync::sync(config, &options(), Arc::new(wharf_mirror::NoProgress)).await.unwrap()
}

pub async fn run_recorded(config: &SyncConfig, recorder: Arc<Recorder>) -> SyncReport {
    wharf_sync::sync(config, &options(), recorder).await.unwrap()
}

pub fn assert_success(report: &SyncReport) {
    assert!(report.is_success(), "{}", report.human());
}
