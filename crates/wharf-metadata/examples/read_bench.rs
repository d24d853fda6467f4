//! Throughput of the manifest GET path: `resolve_tag` + `get_manifest`, from many tasks.
//!
//! `cargo run --release -p wharf-metadata --example read_bench -- [URL] [ITERATIONS] [TASKS]
//! [joined]`. URL defaults to a SQLite file in a temporary directory (an empty URL too); a
//! `postgres://` URL gets a fresh schema, dropped at the end. `joined` measures
//! `get_tagged_manifest` (one query) instead.

use std::time::Instant;

use wharf_metadata::{MetadataStore, NewManifest};
use wharf_oci::{Digest, RepoName, Tag};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = tempfile::tempdir().unwrap();
    let url = args
        .get(1)
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| format!("sqlite://{}/meta.db", dir.path().display()));
    let iterations: usize = args.get(2).map_or(20_000, |s| s.parse().unwrap());
    let tasks: usize = args.get(3).map_or(32, |s| s.parse().unwrap());
    // "joined": one query per request with `get_tagged_manifest`.
    let joined = args.get(4).is_some_and(|s| s == "joined");

    let store = if url.starts_with("postgres") {
        MetadataStore::connect_postgres_isolated(&url).await.unwrap()
    } else {
        MetadataStore::connect(&url).await.unwrap()
    };
    let repo: RepoName = "bench/app".parse().unwrap();
    let mut tags = Vec::new();
    for i in 0..100 {
        // A typical image manifest is 1-3 KiB.
        let content = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(2000)).into_bytes();
        let digest = Digest::sha256_of(&content);
        let tag: Tag = format!("v{i}").parse().unwrap();
        store
            .put_manifest(NewManifest {
                repo: &repo,
                digest: &digest,
                media_type: "application/vnd.oci.image.manifest.v1+json",
                content: &content,
                subject: None,
                artifact_type: None,
                annotations_json: None,
                blob_refs: &[],
                children: &[],
                tag: Some(&tag),
            })
            .await
            .unwrap();
        tags.push(tag);
    }
    let tags = std::sync::Arc::new(tags);

    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (store, repo, tags) = (store.clone(), repo.clone(), tags.clone());
        let n = iterations / tasks + usize::from(t < iterations % tasks);
        handles.push(tokio::spawn(async move {
            for i in 0..n {
                let tag = &tags[(i * 7 + t) % tags.len()];
                let m = if joined {
                    store.get_tagged_manifest(&repo, tag).await.unwrap().unwrap()
                } else {
                    let digest = store.resolve_tag(&repo, tag).await.unwrap().unwrap();
                    store.get_manifest(&repo, &digest).await.unwrap().unwrap()
                };
                assert!(m.content.len() > 2000);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}: {iterations} x ({}) from {tasks} tasks in {secs:.2}s = {:.0} ops/s",
        store.backend(),
        if joined { "get_tagged_manifest" } else { "resolve_tag + get_manifest" },
        iterations as f64 / secs
    );
    store.drop_isolated_schema().await.unwrap();
}
