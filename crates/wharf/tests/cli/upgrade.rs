//! Upgrades: a data directory and a PostgreSQL database written by the previous release
//! (`tests/fixtures/upgrade-v1/`, made by `make.sh` there with schema migrations 0001 and 0002)
//! open and serve after this build's migrations; a migration interrupted halfway (the process
//! killed inside its transaction) leaves the old schema, and the next start completes it.
//!
//! Nothing here names the latest schema version: later migrations apply on top of the fixture.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use wharf_testkit::{RegistryClient, TestImage, free_port, sha256_digest};

use crate::server::{Backend, WharfServer};

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upgrade-v1")
}

/// `cp -a` of the fixture's data directory into a fresh temporary directory.
fn data_copy(into: &Path) -> PathBuf {
    let data = into.join("data");
    let out = Command::new("cp").arg("-a").arg(fixture().join("data")).arg(&data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    data
}

fn psql(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            db,
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("psql must be installed (postgresql-client)");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new(wharf_testkit::require_tool("sqlite3")).arg(db).arg(sql).output().unwrap();
    assert!(out.status.success(), "sqlite3 {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A PostgreSQL database loaded from the fixture's dump, dropped at the end.
struct Restored {
    name: String,
    url: String,
}

impl Restored {
    fn load() -> Restored {
        let name = format!("wharf_upgrade_{}_{}", std::process::id(), free_port());
        psql("postgres", &format!("CREATE DATABASE {name}"));
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                &name,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
            ])
            .arg(fixture().join("postgres.sql"))
            .output()
            .unwrap();
        assert!(out.status.success(), "loading postgres.sql: {}", String::from_utf8_lossy(&out.stderr));
        Restored { url: format!("{POSTGRES}/{name}"), name }
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        psql("postgres", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// Every image of `expected.json` reads back: each manifest and blob hashes to its digest.
fn read_everything_back(server: &WharfServer) {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixture().join("expected.json")).unwrap()).unwrap();
    let client = RegistryClient::new(&server.addr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let images = expected["images"].as_array().unwrap();
        assert!(!images.is_empty());
        for image in images {
            let repo = image["repo"].as_str().unwrap();
            let (_, index) = client.get_manifest(repo, image["tag"].as_str().unwrap()).await.unwrap();
            assert_eq!(sha256_digest(&index), image["index"].as_str().unwrap(), "{repo}");
            for m in image["manifests"].as_array().unwrap() {
                let (_, bytes) = client.get_manifest(repo, m.as_str().unwrap()).await.unwrap();
                assert_eq!(sha256_digest(&bytes), m.as_str().unwrap());
            }
            for b in image["blobs"].as_array().unwrap() {
                let bytes = client.get_blob(repo, b.as_str().unwrap()).await.unwrap();
                assert_eq!(sha256_digest(&bytes), b.as_str().unwrap());
            }
        }
        // And the upgraded registry takes new pushes.
        let image = TestImage::builder().seed(93).tag("after-upgrade").build();
        client.push_image("team/new", &image).await.unwrap();
        let (_, index) = client.get_manifest("team/new", "after-upgrade").await.unwrap();
        assert_eq!(index, image.index.bytes);
        let tags = client.request(Method::GET, "/v2/team/app/tags/list").send().await.unwrap();
        assert_eq!(tags.status(), 200);
    });
}

fn fsck_clean(data_dir: &Path, database: Option<&str>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
    cmd.args(["fsck", "--json", "--data-dir"]).arg(data_dir).env("WHARF_LOG", "warn");
    if let Some(db) = database {
        cmd.args(["--database", db]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "fsck: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["problems"], serde_json::json!([]));
}

#[test]
fn previous_release_data_dir_serves_after_migrations_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_copy(tmp.path());
    let server = WharfServer::start_in(Backend::Sqlite, "", &data);
    read_everything_back(&server);
    drop(server);
    let version: i64 =
        sqlite(&data.join("metadata.db"), "SELECT MAX(version) FROM wharf_schema_version").parse().unwrap();
    assert!(version >= 2, "schema version {version}");
    fsck_clean(&data, None);
}

#[test]
fn previous_release_database_serves_after_migrations_postgres() {
    let db = Restored::load();
    let tmp = tempfile::tempdir().unwrap();
    let data = data_copy(tmp.path());
    // The PostgreSQL registry keeps only blobs in its data dir.
    std::fs::remove_file(data.join("metadata.db")).unwrap();
    let server = WharfServer::start_in(Backend::FromConfig, &format!("database = {:?}\n", db.url), &data);
    read_everything_back(&server);
    drop(server);
    let version: i64 = psql(&db.name, "SELECT MAX(version) FROM wharf_schema_version").parse().unwrap();
    assert!(version >= 2, "schema version {version}");
    fsck_clean(&data, Some(&db.url));
}

/// Back to what release 1 (migration 0001 only) wrote: the undo of 0002 by hand.
const DOWNGRADE_TO_1: &str =
    "ALTER TABLE tags DROP COLUMN upstream_checked_at; DELETE FROM wharf_schema_version WHERE version > 1";

/// A process that runs `sql` inside a transaction it never commits, then (through the shell
/// escape `escape` of its command language) creates a marker file, and waits for more input
/// until the caller kills it with SIGKILL.
fn start_uncommitted(mut cmd: Command, sql: &str, escape: &str) -> std::process::Child {
    let marker = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    std::fs::remove_file(&marker).unwrap();
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{sql}").unwrap();
    writeln!(stdin, "{escape} touch {}", marker.display()).unwrap();
    // Left open for the child's lifetime: closing stdin would end the session cleanly.
    std::mem::forget(stdin);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the uncommitted transaction never got going");
        assert!(child.try_wait().unwrap().is_none(), "the session ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn interrupted_migration_is_safe_to_rerun_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_copy(tmp.path());
    let db = data.join("metadata.db");
    sqlite(&db, DOWNGRADE_TO_1);
    // Migration 0002 applied halfway inside its transaction (as wharf does it: BEGIN
    // IMMEDIATE, the DDL, the version row), then the process dies before COMMIT.
    let mut cmd = Command::new(wharf_testkit::require_tool("sqlite3"));
    cmd.arg(&db);
    let mut crashed = start_uncommitted(
        cmd,
        "BEGIN IMMEDIATE; ALTER TABLE tags ADD COLUMN upstream_checked_at BIGINT; \
         INSERT INTO wharf_schema_version (version, applied_at) VALUES (2, 0);",
        ".shell",
    );
    crashed.kill().unwrap();
    crashed.wait().unwrap();
    assert_eq!(sqlite(&db, "SELECT MAX(version) FROM wharf_schema_version"), "1");
    assert!(!sqlite(&db, "PRAGMA table_info(tags)").contains("upstream_checked_at"));
    // The next start applies every migration from 0002 on, and serves.
    let server = WharfServer::start_in(Backend::Sqlite, "", &data);
    read_everything_back(&server);
    drop(server);
    assert!(sqlite(&db, "SELECT MAX(version) FROM wharf_schema_version").parse::<i64>().unwrap() >= 2);
    assert!(sqlite(&db, "PRAGMA table_info(tags)").contains("upstream_checked_at"));
}

#[test]
fn interrupted_migration_is_safe_to_rerun_postgres() {
    let db = Restored::load();
    psql(&db.name, DOWNGRADE_TO_1);
    let tmp = tempfile::tempdir().unwrap();
    let data = data_copy(tmp.path());
    std::fs::remove_file(data.join("metadata.db")).unwrap();
    // Another session holds the tags table, so wharf's migration stops inside its
    // transaction at 0002's ALTER TABLE: killed there, it is interrupted halfway.
    let mut cmd = Command::new("psql");
    cmd.args(["-h", "127.0.0.1", "-U", "postgres", "-d", &db.name, "-X", "-q", "-A", "-t"]);
    let mut holder = start_uncommitted(cmd, "BEGIN; LOCK TABLE tags IN ACCESS EXCLUSIVE MODE;", "\\!");
    let mut wharf = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--addr", &format!("127.0.0.1:{}", free_port()), "--database", &db.url, "--data-dir"])
        .arg(&data)
        .env("WHARF_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock' \
         AND query ILIKE 'ALTER TABLE tags%'",
        db.name
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while psql(&db.name, &waiting) != "1" {
        assert!(Instant::now() < deadline, "wharf's migration never reached ALTER TABLE tags");
        assert!(wharf.try_wait().unwrap().is_none(), "wharf serve exited before migrating");
        std::thread::sleep(Duration::from_millis(50));
    }
    wharf.kill().unwrap();
    wharf.wait().unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The old schema, untouched.
    assert_eq!(psql(&db.name, "SELECT MAX(version) FROM wharf_schema_version"), "1");
    let column = "SELECT count(*) FROM information_schema.columns \
                  WHERE table_name = 'tags' AND column_name = 'upstream_checked_at'";
    // The killed server's backend may take a moment to end its transaction.
    let deadline = Instant::now() + Duration::from_secs(30);
    while psql(
        &db.name,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
            db.name
        ),
    ) != "0"
    {
        assert!(Instant::now() < deadline, "the killed sessions never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(psql(&db.name, column), "0");
    // Rerun: completes, serves.
    let server = WharfServer::start_in(Backend::FromConfig, &format!("database = {:?}\n", db.url), &data);
    read_everything_back(&server);
    drop(server);
    assert!(psql(&db.name, "SELECT MAX(version) FROM wharf_schema_version").parse::<i64>().unwrap() >= 2);
    assert_eq!(psql(&db.name, column), "1");
}

/// Writes the fixture (run by `tests/fixtures/upgrade-v1/make.sh`, with the release whose data
/// the fixture stands for): the same images pushed into a SQLite and a PostgreSQL registry.
#[test]
#[ignore = "writes the upgrade fixture; run through tests/fixtures/upgrade-v1/make.sh"]
fn make_upgrade_fixture() {
    let out_dir = PathBuf::from(std::env::var("WHARF_WRITE_FIXTURE").expect("WHARF_WRITE_FIXTURE=DIR"));
    let images = [
        ("team/app", TestImage::builder().seed(81).tag("v1").build()),
        ("team/app", TestImage::builder().seed(82).tag("v2").docker_media_types().build()),
        ("mirror/base", TestImage::builder().seed(83).tag("stable").platforms(&["linux/amd64"]).build()),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let server = WharfServer::start(backend, "");
        let client = RegistryClient::new(&server.addr);
        for (repo, image) in &images {
            rt.block_on(client.push_image(repo, image)).unwrap();
        }
        match server.database() {
            Some(name) => {
                let out = Command::new("pg_dump")
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-U",
                        "postgres",
                        "--no-owner",
                        "--no-privileges",
                        "-d",
                        name,
                        "-f",
                    ])
                    .arg(out_dir.join("postgres.sql"))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
            }
            None => {
                let data = server.data_dir();
                let mut server = server;
                assert!(server.terminate().is_some_and(|s| s.success()), "graceful stop");
                let _ = std::fs::remove_dir_all(out_dir.join("data"));
                let out = Command::new("cp").arg("-a").arg(&data).arg(out_dir.join("data")).output().unwrap();
                assert!(out.status.success());
                continue;
            }
        }
    }
    let expected: Vec<Value> = images
        .iter()
        .map(|(repo, image)| {
            serde_json::json!({
                "repo": repo,
                "tag": image.tag,
                "index": image.index.digest,
                "manifests": image.children.iter().map(|c| c.manifest.digest.clone()).collect::<Vec<_>>(),
                "blobs": image.blobs().iter().map(|b| b.digest.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({ "images": expected })).unwrap();
    std::fs::write(out_dir.join("expected.json"), text + "\n").unwrap();
}
