//! containerd, the runtime under Kubernetes, pulls through Wharf configured as its mirror
//! (`hosts.toml`) and fetches only its own platform of the upstream's index.
//!
//! The test starts Debian's `containerd` itself, as root, with its own root, state directory
//! and sockets under a temporary directory, the CRI plugin (and the snapshotters it cannot
//! start here) disabled, and kills it at the end.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wharf_testkit::{Distribution, TestImage, require_tool, run_ok};

use crate::server::{Backend, WharfServer};
use crate::sparse::inspect_json;

struct Containerd {
    child: Child,
    socket: String,
    log: std::path::PathBuf,
}

impl Containerd {
    fn start(dir: &Path, hosts_dir: &Path) -> Containerd {
        let binary = require_tool("containerd");
        let socket = dir.join("containerd.sock").display().to_string();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = "{socket}.debug"

# What a Kubernetes node sets: registry hosts come from hosts.d (`ctr` takes --hosts-dir).
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{hosts}"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            hosts = hosts_dir.display(),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("containerd.log");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!("containerd exited ({status}): {}", c.logs());
            }
            if c.ctr(&["version"]).output().is_ok_and(|o| o.status.success()) {
                return c;
            }
            assert!(Instant::now() < deadline, "containerd did not answer on {}: {}", c.socket, c.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(require_tool("ctr"));
        cmd.args(["--address", &self.socket]).args(args);
        cmd
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn containerd_pulls_one_platform_through_wharf_as_its_mirror() {
    let upstream = Distribution::start();
    let image = TestImage::builder().seed(41).tag("v1").build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(upstream.client().push_image("vendor/app", &image)).unwrap();
    // Wharf mirrors the upstream under the same repository names (pull-through by tag).
    let server = WharfServer::start(
        Backend::Sqlite,
        &format!(
            "[[upstreams]]\npattern = \"vendor/**\"\nurl = \"docker://{}/vendor\"\nproxy_tags = true\n",
            upstream.addr
        ),
    );

    let dir = tempfile::tempdir().unwrap();
    // hosts.d/<upstream host:port>/hosts.toml: Wharf first, the upstream itself as the fallback.
    let hosts_dir = dir.path().join("hosts.d");
    let host_dir = hosts_dir.join(&upstream.addr);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"http://{up}\"\n\n[host.\"http://{wharf}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            up = upstream.addr,
            wharf = server.addr
        ),
    )
    .unwrap();
    let containerd = Containerd::start(dir.path(), &hosts_dir);

    let reference = format!("{}/vendor/app:v1", upstream.addr);
    let hosts = hosts_dir.display().to_string();
    let out = containerd
        .ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            &hosts,
            "--snapshotter",
            "native",
            "--platform",
            "linux/arm64",
            &reference,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr images pull failed: {}{}\ncontainerd: {}\nwharf: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        containerd.logs(),
        server.log()
    );

    // containerd has the index and the arm64 image, and nothing of the other platforms.
    let content = containerd.ctr(&["content", "ls", "-q"]).output().unwrap();
    let content = String::from_utf8_lossy(&content.stdout).into_owned();
    let arm64 = image.platform("linux/arm64");
    assert!(content.contains(&image.index.digest), "{content}");
    assert!(content.contains(&arm64.manifest.digest), "{content}");
    for other in image.platforms().filter(|c| c.manifest.digest != arm64.manifest.digest) {
        assert!(!content.contains(&other.manifest.digest), "{content}");
    }

    // It went through Wharf: Wharf holds the upstream's index, unchanged, with arm64 alone
    // present (the index stays sparse; nothing else was fetched).
    let report = inspect_json(&server, "vendor/app:v1");
    assert_eq!(report["digest"], image.index.digest.as_str(), "{report}");
    let present: Vec<&str> = report["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["present"].as_bool() == Some(true))
        .filter_map(|c| c["platform"].as_str())
        .collect();
    assert_eq!(present, vec!["linux/arm64"], "{report}");
    run_ok(containerd.ctr(&["images", "rm", &reference]));
}
