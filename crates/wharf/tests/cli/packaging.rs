//! Packaging: `wharf config check` on good and bad files, shell completions, the man page in
//! `dist/` kept current, the systemd unit verified by systemd, and the OCI image that
//! `dist/build-image.sh` builds with buildah from scratch, pushed into a Wharf and inspected
//! there.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use wharf_testkit::{Podman, require_tool, run_fails, run_ok};

use crate::server::{Backend, WharfServer};

fn wharf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
}

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist")
}

#[test]
fn config_check_prints_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wharf.toml");
    std::fs::write(
        &file,
        r#"
        database = "postgres://wharf:db-password-1@db.internal/wharf"
        [index_policy]
        [[index_policy.repositories]]
        pattern = "mirror/**"
        policy = "sparse"
        [auth]
        token = true
        token_key = "token-key-0123456789abcdef0123456789"
        [storage]
        kind = "s3"
        bucket = "wharf"
        endpoint = "http://127.0.0.1:3900"
        access_key_id = "GKexample"
        secret_access_key = "s3-secret-2"
        [[upstreams]]
        pattern = "hub/**"
        url = "docker://registry.example/library"
        credentials = "user:upstream-password-3"
        [[webhooks]]
        url = "https://ci.example.org/hooks/registry"
        events = ["push", "delete", "mirror_run"]
        secret = "webhook-secret-4"
        pattern = "prod/**"
        "#,
    )
    .unwrap();
    let out = String::from_utf8(run_ok(wharf().args(["config", "check"]).arg(&file))).unwrap();
    for secret in
        ["db-password-1", "token-key-0123", "s3-secret-2", "upstream-password-3", "webhook-secret-4"]
    {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    // Valid TOML, with the defaults serve would use and what the file says.
    let doc: toml::Table = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}:\n{out}"));
    assert_eq!(doc["addr"].as_str(), Some("127.0.0.1:5000"), "{out}");
    assert_eq!(doc["upload_expiry_hours"].as_integer(), Some(24), "{out}");
    assert_eq!(doc["index_policy"]["default"].as_str(), Some("complete"), "{out}");
    assert_eq!(doc["database"].as_str(), Some("postgres://wharf:<redacted>@db.internal/wharf"), "{out}");
    let hook = &doc["webhooks"].as_array().unwrap()[0];
    assert_eq!(hook["secret"].as_str(), Some("<redacted>"));
    assert_eq!(hook["pattern"].as_str(), Some("prod/**"));
    assert_eq!(doc["auth"]["token_key"].as_str(), Some("<redacted>"));
    assert_eq!(doc["storage"]["secret_access_key"].as_str(), Some("<redacted>"));
    assert_eq!(doc["upstreams"].as_array().unwrap()[0]["credentials"].as_str(), Some("<redacted>"));

    // No file at all is the empty config: every default.
    std::fs::write(&file, "").unwrap();
    let out = String::from_utf8(run_ok(wharf().args(["config", "check"]).arg(&file))).unwrap();
    assert!(out.contains("data_dir = \"./wharf-data\""), "{out}");
}

#[test]
fn config_check_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wharf.toml");
    for (text, needles) in [
        ("adr = \"127.0.0.1:5000\"\n", &["unknown field", "adr"][..]),
        ("[[webhooks]]\nurl = \"http://h/x\"\nevents = [\"pushed\"]\n", &["webhooks[0]", "events", "pushed"]),
        ("[[webhooks]]\nurl = \"ftp://h/x\"\nevents = [\"push\"]\n", &["webhooks[0]", "url"]),
        ("[[webhooks]]\nurl = \"http://h/x\"\n", &["missing field", "events"]),
        ("[index_policy]\ndefault = \"partial\"\n", &["index_policy.default", "partial"]),
        ("[auth]\ntoken = true\ntoken_key = \"short\"\n", &["token_key", "32"]),
        ("[storage]\nkind = \"s3\"\n", &["bucket"]),
        ("[tls]\ncert = \"/nonexistent/cert.pem\"\n", &["key"]),
    ] {
        std::fs::write(&file, text).unwrap();
        let err = run_fails(wharf().args(["config", "check"]).arg(&file));
        for needle in needles {
            assert!(err.contains(needle), "{text:?}: {needle:?} not in:\n{err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    let err = run_fails(wharf().args(["config", "check", "/nonexistent/wharf.toml"]));
    assert!(err.contains("/nonexistent/wharf.toml"), "{err}");
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = String::from_utf8(run_ok(wharf().args(["completions", shell]))).unwrap();
        for word in ["serve", "copy", "config", "completions", "index-policy"] {
            assert!(out.contains(word), "{shell}: {word} missing");
        }
    }
    // bash loads it and registers the completion.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("wharf.bash");
    std::fs::write(&script, run_ok(wharf().args(["completions", "bash"]))).unwrap();
    let out = run_ok(
        Command::new(require_tool("bash"))
            .arg("-c")
            .arg(format!("source {} && complete -p wharf", script.display())),
    );
    assert!(String::from_utf8_lossy(&out).contains("wharf"));
    run_fails(wharf().args(["completions", "powershell-ish"]));
}

#[test]
fn the_man_page_in_dist_is_current() {
    let page = run_ok(wharf().arg("man"));
    let text = String::from_utf8(page.clone()).unwrap();
    assert!(text.starts_with(".ie") || text.contains(".TH wharf"), "{text}");
    for word in ["serve", "copy", "sync", "config", "completions"] {
        assert!(text.contains(word), "{word} not in the man page");
    }
    let committed = std::fs::read(dist().join("wharf.1")).unwrap_or_default();
    assert!(
        committed == page,
        "dist/wharf.1 is not what `wharf man` prints: regenerate it with \
         `cargo run -p wharf -- man > dist/wharf.1`"
    );
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(dist().join("wharf.service")).unwrap();
    for line in [
        "DynamicUser=yes",
        "StateDirectory=wharf",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "ExecStart=/usr/local/bin/wharf serve ",
    ] {
        assert!(unit.contains(line), "{line:?} not in dist/wharf.service");
    }
    // systemd checks the unit as it would load it, with this build as the binary (the man page
    // it names is not installed here).
    let dir = tempfile::tempdir().unwrap();
    let local = unit
        .replace("/usr/local/bin/wharf", env!("CARGO_BIN_EXE_wharf"))
        .lines()
        .filter(|l| !l.starts_with("Documentation=man:"))
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.path().join("wharf.service");
    std::fs::write(&path, local).unwrap();
    let out =
        wharf_testkit::run_output(Command::new(require_tool("systemd-analyze")).arg("verify").arg(&path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify:\n{stderr}");
}

#[test]
fn the_image_built_with_buildah_is_pushed_and_inspected() {
    let server = WharfServer::start(Backend::Sqlite, "");
    let store = Podman::new();
    let d = store.dir();
    let opts = format!(
        "--storage-driver vfs --root {} --runroot {}",
        d.join("root").display(),
        d.join("run").display()
    );
    require_tool("buildah");
    require_tool("ldd");
    let dest = server.docker_ref("tools/wharf:test");
    run_ok(
        Command::new(dist().join("build-image.sh"))
            .arg(env!("CARGO_BIN_EXE_wharf"))
            .arg("localhost/wharf:test")
            .arg(&dest)
            .env("BUILDAH_OPTS", &opts)
            .env("PUSH_OPTS", "--tls-verify=false")
            .env("TMPDIR", d),
    );

    // Read it back from Wharf: the manifest, then the config it names.
    let raw = wharf_testkit::skopeo_inspect_raw(&dest);
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json", "{manifest}");
    let layers = manifest["layers"].as_array().unwrap();
    let bytes: u64 = layers.iter().map(|l| l["size"].as_u64().unwrap()).sum();
    // The binary is in there (compressed, but not to nothing).
    let binary = std::fs::metadata(env!("CARGO_BIN_EXE_wharf")).unwrap().len();
    assert!(bytes > binary / 20, "layers hold {bytes} bytes for a {binary}-byte binary");
    let out = run_ok(wharf_testkit::skopeo(["inspect", "--config", "--tls-verify=false"]).arg(&dest));
    let config: Value = serde_json::from_slice(&out).unwrap();
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/wharf", "serve"]), "{config}");
    assert_eq!(c["Cmd"], serde_json::json!(["--addr", "0.0.0.0:5000", "--data-dir", "/var/lib/wharf"]));
    assert_eq!(c["User"], "65532:65532");
    assert!(c["ExposedPorts"].get("5000/tcp").is_some(), "{config}");
    assert!(c["Volumes"].get("/var/lib/wharf").is_some(), "{config}");
    assert_eq!(config["os"], "linux");

    // The image's files are enough to run it: the binary starts with nothing but them as its
    // root (a container runtime cannot run here, chroot can, as root).
    let buildah = |args: &[&str]| {
        let out = run_ok(store.buildah(args));
        String::from_utf8(out).unwrap().trim().to_owned()
    };
    let ctr = buildah(&["from", "--quiet", "localhost/wharf:test"]);
    let root = PathBuf::from(buildah(&["mount", &ctr]));
    let version = run_ok(Command::new(require_tool("chroot")).arg(&root).args(["/wharf", "--version"]));
    assert!(String::from_utf8_lossy(&version).starts_with("wharf "), "{}", String::from_utf8_lossy(&version));
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let data = std::fs::metadata(root.join("var/lib/wharf")).unwrap();
    assert_eq!((data.uid(), data.gid()), (65532, 65532));
    assert_eq!(std::fs::metadata(root.join("var/lib")).unwrap().uid(), 0);
    assert_eq!(std::fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
    buildah(&["umount", &ctr]);
    buildah(&["rm", &ctr]);
}
