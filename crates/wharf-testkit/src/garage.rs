//! A real Garage (S3-compatible object store) on loopback: a one-node cluster in a temporary
//! directory, with a bucket and a key allowed on it, set up with Garage's own CLI.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{Rng, free_port};

/// The Garage release the tests and `.ci/run` use.
pub const GARAGE_VERSION: &str = "2.5.0";
/// The region Garage answers to (requests signed for another are refused).
pub const GARAGE_REGION: &str = "garage";

/// Where Garage is: `$WHARF_GARAGE`, `garage` on `PATH`, or where `.ci/run` installs it.
pub fn garage_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WHARF_GARAGE") {
        return PathBuf::from(p);
    }
    let installed = PathBuf::from(format!("/opt/wharf-tools/garage-{GARAGE_VERSION}/bin/garage"));
    crate::find_tool("garage").or_else(|| installed.is_file().then_some(installed)).unwrap_or_else(|| {
        panic!(
            "these tests need Garage {GARAGE_VERSION} (the S3-compatible object store). Install it as CI \
             does: `bash .ci/run`, or `cargo install garage@{GARAGE_VERSION} --locked --no-default-features \
             --features bundled-libs,lmdb --root /opt/wharf-tools/garage-{GARAGE_VERSION}`"
        )
    })
}

/// A running single-node Garage with one bucket and one key that may read and write it. Killed
/// (its data removed) on drop; [`Garage::stop`] and [`Garage::resume`] take it away and bring it
/// back with its data, on the same port.
pub struct Garage {
    /// `http://127.0.0.1:PORT`: the S3 API.
    pub endpoint: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    child: Option<Child>,
    dir: TempDir,
}

impl Garage {
    /// Starts Garage, applies a layout, creates bucket `wharf` and a key allowed on it.
    pub fn start() -> Garage {
        let dir = tempfile::Builder::new().prefix("wharf-garage-").tempdir().expect("temp dir");
        let s3_port = free_port();
        let rpc_port = free_port();
        let secret = hex::encode(Rng::from_label(&format!("garage-rpc-{s3_port}")).bytes(32));
        let config = format!(
            r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{GARAGE_REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
            d = dir.path().display()
        );
        fs::write(dir.path().join("garage.toml"), config).expect("write garage config");
        let mut garage = Garage {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            bucket: "wharf".into(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            child: None,
            dir,
        };
        garage.spawn();
        garage.wait_for_status();
        let node = garage.cli(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().unwrap_or_default().to_owned();
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        garage.cli(&["layout", "apply", "--version", "1"]);
        garage.cli(&["bucket", "create", "wharf"]);
        let key: serde_json::Value =
            serde_json::from_str(&garage.cli(&["json-api", "CreateKey", r#"{"name":"wharf-test"}"#]))
                .expect("CreateKey answers JSON");
        garage.access_key_id = key["accessKeyId"].as_str().expect("accessKeyId").to_owned();
        garage.secret_access_key = key["secretAccessKey"].as_str().expect("secretAccessKey").to_owned();
        garage.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            "wharf",
            "--key",
            &garage.access_key_id,
        ]);
        garage.wait_for_bucket();
        garage
    }

    /// Another bucket with the same key allowed on it (one Garage, several registries).
    pub fn create_bucket(&self, name: &str) {
        self.cli(&["bucket", "create", name]);
        self.cli(&["bucket", "allow", "--read", "--write", "--owner", name, "--key", &self.access_key_id]);
    }

    /// The `[storage]` section of a Wharf config for this bucket (with `prefix`).
    pub fn storage_toml(&self, prefix: &str) -> String {
        format!(
            "[storage]\nkind = \"s3\"\nbucket = \"{}\"\nendpoint = \"{}\"\nregion = \"{GARAGE_REGION}\"\n\
             prefix = \"{prefix}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            self.bucket, self.endpoint, self.access_key_id, self.secret_access_key
        )
    }

    /// Kills the server (SIGKILL); its data stays for [`Garage::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data and port, and waits until the bucket answers.
    pub fn resume(&mut self) {
        self.spawn();
        self.wait_for_status();
        self.wait_for_bucket();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("garage.toml")
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("garage.log"))
            .expect("garage log");
        let child = Command::new(garage_binary())
            .arg("-c")
            .arg(self.config_path())
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start garage");
        self.child = Some(child);
    }

    /// Runs `garage -c CONFIG ARGS...`, which must succeed; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(garage_binary())
            .arg("-c")
            .arg(self.config_path())
            .args(args)
            .env("RUST_LOG", "error")
            .output()
            .expect("run garage");
        assert!(
            out.status.success(),
            "garage {}: {}{}\nserver log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for_status(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(garage_binary())
                .arg("-c")
                .arg(self.config_path())
                .arg("status")
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "garage did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the S3 API answers for the bucket (an anonymous request gets an S3 error
    /// document, not a refused connection).
    fn wait_for_bucket(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = self.endpoint.trim_start_matches("http://").to_owned();
        loop {
            if http_status(&addr, &format!("/{}", self.bucket)).is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "garage's S3 API did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The directory Garage keeps its data in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The status code of `GET path` on `addr`, or `None` if nothing answers.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).ok()?;
    std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}
