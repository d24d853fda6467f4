//! Running the real clients (skopeo, podman, buildah) from tests.

use std::borrow::BorrowMut;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

use crate::require_tool;

/// Runs `cmd` with no stdin; returns its output whatever the exit status.
pub fn run_output(mut cmd: impl BorrowMut<Command>) -> Output {
    let cmd = cmd.borrow_mut();
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd`; panics with its stdout and stderr if it fails; returns stdout.
pub fn run_ok(mut cmd: impl BorrowMut<Command>) -> Vec<u8> {
    let cmd = cmd.borrow_mut();
    let out = run_output(&mut *cmd);
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.stdout
}

/// Runs `cmd`, which must fail; returns its stderr (what the user would read).
pub fn run_fails(mut cmd: impl BorrowMut<Command>) -> String {
    let cmd = cmd.borrow_mut();
    let out = run_output(&mut *cmd);
    if out.status.success() {
        panic!(
            "{cmd:?} succeeded but was expected to fail:\nstdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `skopeo ARGS...` (panics clearly if skopeo is not installed). Pass `--tls-verify=false`
/// (or `--src-tls-verify=false`/`--dest-tls-verify=false`) for plain-HTTP registries.
pub fn skopeo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(require_tool("skopeo"));
    cmd.args(args);
    cmd
}

/// `skopeo inspect --raw [--tls-verify=false] REF`: the exact manifest bytes.
pub fn skopeo_inspect_raw(image_ref: &str) -> Vec<u8> {
    let mut cmd = skopeo(["inspect", "--raw"]);
    if image_ref.starts_with("docker://") {
        cmd.arg("--tls-verify=false");
    }
    run_ok(cmd.arg(image_ref))
}

/// podman (or buildah) with private storage in a temporary directory: rootful, `vfs`, no
/// systemd. Every command gets
/// `--storage-driver vfs --root DIR/root --runroot DIR/run --tmpdir DIR/tmp
/// --cgroup-manager cgroupfs --events-backend file` (buildah: the storage flags only).
pub struct Podman {
    dir: TempDir,
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Podman {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("wharf-podman-").tempdir().expect("temp dir");
        Podman { dir }
    }

    /// The storage directory (root, runroot and tmpdir live under it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn storage_args(&self) -> Vec<String> {
        let d = self.dir.path();
        vec![
            "--storage-driver".into(),
            "vfs".into(),
            "--root".into(),
            d.join("root").display().to_string(),
            "--runroot".into(),
            d.join("run").display().to_string(),
        ]
    }

    /// `podman <global flags> ARGS...`.
    pub fn podman<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let d = self.dir.path();
        let mut cmd = Command::new(require_tool("podman"));
        cmd.args(self.storage_args())
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .env("TMPDIR", d)
            .args(args);
        cmd
    }

    /// `buildah <storage flags> ARGS...` sharing this podman's image store.
    pub fn buildah<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(require_tool("buildah"));
        cmd.args(self.storage_args()).env("TMPDIR", self.dir.path()).args(args);
        cmd
    }

    /// Builds with buildah, from scratch, one tiny image per platform (`os/arch[/variant]`,
    /// holding `/wharf-test` with the platform's name) and a manifest list `list` (such as
    /// `localhost/multi:v1`) in this store. Push it with
    /// `buildah manifest push --all --tls-verify=false LIST docker://...`.
    pub fn buildah_multiarch(&self, list: &str, platforms: &[&str]) {
        run_ok(self.buildah(["manifest", "create", list]));
        for platform in platforms {
            let p = crate::Platform::parse(platform);
            let out = run_ok(self.buildah(["from", "--quiet", "--platform", platform, "scratch"]));
            let container = String::from_utf8(out).expect("utf-8");
            let container = container.trim();
            let file = self.dir.path().join("wharf-test");
            std::fs::write(&file, format!("{platform}\n")).expect("write file");
            run_ok(self.buildah(["copy", "--quiet", container]).arg(&file).arg("/wharf-test"));
            let mut config = self.buildah(["config", "--os", &p.os, "--arch", &p.architecture]);
            if let Some(v) = &p.variant {
                config.args(["--variant", v]);
            }
            run_ok(config.arg(container));
            run_ok(self.buildah(["commit", "--quiet", "--manifest", list, container]));
            run_ok(self.buildah(["rm", container]));
        }
    }
}
