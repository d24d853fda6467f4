//! The registry's own mirrors (`[[mirrors]]`), skopeo's sync YAML, and "a mirror never pulls in
//! what it left out": a signed 4-platform index in CNCF distribution 2.8 as the upstream, the
//! real `wharf serve` binary, the status API, `wharf mirrors`, skopeo.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use wharf_testkit::sign::{CosignKey, cosign_signature_tag, cosign_style_signature};
use wharf_testkit::{Distribution, TestImage, htpasswd_line, run_ok, run_output, skopeo_inspect_raw};

use crate::server::{Backend, WharfServer};
use crate::sparse::inspect_json;

pub(crate) const KEPT: [&str; 2] = ["linux/amd64", "linux/arm64"];
const LEFT_OUT: [&str; 2] = ["linux/arm/v7", "linux/s390x"];

fn wharf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
}

/// Push `image` as `repo:<its tag>` with cosign-style signatures of the index and of every
/// child, as a vendor publishes it.
fn publish_signed(upstream: &Distribution, repo: &str, image: &TestImage) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = upstream.client();
    rt.block_on(client.push_image(repo, image)).unwrap();
    let key = CosignKey::from_seed(7);
    let reference = format!("{}/{repo}", upstream.addr);
    let mut subjects = vec![image.index.digest.clone()];
    subjects.extend(image.children.iter().map(|c| c.manifest.digest.clone()));
    for subject in subjects {
        rt.block_on(client.push_artifact(repo, &cosign_style_signature(&key, &reference, &subject))).unwrap();
    }
}

/// `curl` status code and body of a request to the server.
fn curl(args: &[&str], url: &str) -> (u16, String) {
    let out = run_output(Command::new("curl").args(["-s", "-w", "\n%{http_code}"]).args(args).arg(url));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn has_manifest(server: &WharfServer, repo: &str, reference: &str, creds: Option<&str>) -> bool {
    let mut args = vec![
        "-I",
        "-H",
        "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
    ];
    if let Some(c) = creds {
        args.extend(["-u", c]);
    }
    let (code, _) = curl(&args, &format!("http://{}/v2/{repo}/manifests/{reference}", server.addr));
    code == 200
}

pub(crate) fn status(server: &WharfServer, creds: Option<&str>) -> Value {
    let mut args = vec![];
    if let Some(c) = creds {
        args.extend(["-u", c]);
    }
    let (code, body) = curl(&args, &format!("http://{}/v2/_wharf/mirrors", server.addr));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `wharf_mirror_runs_total{mirror=NAME,result=RESULT}` from /metrics.
fn runs(server: &WharfServer, name: &str, result: &str) -> u64 {
    let (_, text) = curl(&[], &format!("http://{}/metrics", server.addr));
    let prefix = format!("wharf_mirror_runs_total{{mirror=\"{name}\",result=\"{result}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

fn runs_ok(server: &WharfServer, name: &str) -> u64 {
    runs(server, name, "ok")
}

/// Wait (never asserting how long it takes; the bound only stops a hung test) until `done`.
fn wait_for(what: &str, server: &WharfServer, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}; server log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until mirror `name` has finished `n` successful runs and is idle; its status.
pub(crate) fn wait_for_runs(server: &WharfServer, name: &str, n: u64, creds: Option<&str>) -> Value {
    wait_for(&format!("{n} runs of mirror {name}"), server, || runs_ok(server, name) >= n);
    let mut m = Value::Null;
    wait_for("the mirror to be idle", server, || {
        m = status(server, creds)["mirrors"][0].clone();
        m["state"] == "idle"
    });
    m
}

pub(crate) fn present_platforms(server: &WharfServer, image: &str) -> Vec<String> {
    let report = inspect_json(server, image);
    report["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["present"] == true)
        .map(|c| c["platform"].as_str().unwrap_or_default().to_owned())
        .collect()
}

pub(crate) fn mirror_config(upstream: &Distribution, extra: &str) -> String {
    format!(
        r#"
[[index_policy.repositories]]
pattern = "mirror/**"
policy = "sparse"

[[mirrors]]
name = "vendor-app"
source = "docker://{}/vendor/app"
tags_regex = "^v"
platforms = ["linux/amd64", "linux/arm64"]
dest = "mirror/app"
interval = "1h"
{extra}
"#,
        upstream.addr
    )
}

#[test]
fn a_mirror_runs_at_start_then_on_request_and_moves_nothing_the_second_time_sqlite() {
    mirror_runs(Backend::Sqlite);
}

/// On PostgreSQL every run also takes and gives back the mirror's advisory lock.
#[test]
fn a_mirror_runs_at_start_then_on_request_and_moves_nothing_the_second_time_postgres() {
    mirror_runs(Backend::Postgres);
}

fn mirror_runs(backend: Backend) {
    let upstream = Distribution::start();
    let v1 = TestImage::builder().seed(61).tag("v1").build();
    publish_signed(&upstream, "vendor/app", &v1);
    let server = WharfServer::start(backend, &mirror_config(&upstream, ""));

    // The run at start.
    let m = wait_for_runs(&server, "vendor-app", 1, None);
    assert_eq!(m["name"], "vendor-app");
    assert_eq!(m["source"], format!("docker://{}/vendor/app", upstream.addr));
    assert_eq!(m["dest"], "mirror/app");
    assert!(m["next_run"].as_str().is_some_and(|t| t.ends_with('Z')), "{m}");
    let run = &m["last_run"];
    assert_eq!(run["ok"], true, "{m}");
    assert_eq!(run["images"], 1, "{m}");
    assert!(run["bytes_copied"].as_u64().unwrap() > 0, "{m}");
    let left_out: u64 = LEFT_OUT.iter().map(|p| v1.platform(p).total_size()).sum();
    assert_eq!(run["bytes_filtered"].as_u64().unwrap(), left_out, "{m}");
    assert_eq!(run["failures"], serde_json::json!([]));
    for key in ["started", "finished"] {
        assert!(run[key].as_str().is_some_and(|t| t.len() == 20), "{key}: {m}");
    }

    // Digest unchanged; two children and their signatures present, the others absent.
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("mirror/app:v1")), v1.index.bytes);
    assert_eq!(present_platforms(&server, "mirror/app:v1"), KEPT);
    assert!(has_manifest(&server, "mirror/app", &cosign_signature_tag(&v1.index.digest), None));
    for p in KEPT {
        let d = &v1.platform(p).manifest.digest;
        assert!(has_manifest(&server, "mirror/app", &cosign_signature_tag(d), None), "{p}");
    }
    for p in LEFT_OUT {
        let d = &v1.platform(p).manifest.digest;
        assert!(!has_manifest(&server, "mirror/app", &cosign_signature_tag(d), None), "{p}");
        assert!(!has_manifest(&server, "mirror/app", d, None), "{p}");
    }

    // A new upstream tag, then POST .../run (through `wharf mirrors --run`).
    let v2 = TestImage::builder().seed(62).tag("v2").build();
    publish_signed(&upstream, "vendor/app", &v2);
    let host = format!("docker://{}", server.addr);
    let out = run_ok(wharf().args(["mirrors", &host, "--run", "vendor-app"]));
    assert!(String::from_utf8_lossy(&out).contains("vendor-app"), "{}", String::from_utf8_lossy(&out));
    let m = wait_for_runs(&server, "vendor-app", 2, None);
    assert_eq!(m["last_run"]["images"], 2, "{m}");
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("mirror/app:v2")), v2.index.bytes);
    assert_eq!(present_platforms(&server, "mirror/app:v2"), KEPT);

    // Nothing changed upstream: a third run moves nothing.
    let (code, body) =
        curl(&["-X", "POST"], &format!("http://{}/v2/_wharf/mirrors/vendor-app/run", server.addr));
    assert_eq!(code, 202, "{body}");
    let m = wait_for_runs(&server, "vendor-app", 3, None);
    assert_eq!(m["last_run"]["ok"], true, "{m}");
    assert_eq!(m["last_run"]["bytes_copied"], 0, "{m}");
    assert!(m["last_run"]["bytes_existing"].as_u64().unwrap() > 0, "{m}");

    // An unknown mirror: 404 in the spec's error format.
    let (code, body) = curl(&["-X", "POST"], &format!("http://{}/v2/_wharf/mirrors/nope/run", server.addr));
    assert_eq!(code, 404, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["errors"][0]["code"], "NAME_UNKNOWN", "{body}");
    assert!(err["errors"][0]["message"].as_str().unwrap().contains("nope"), "{body}");

    // `wharf mirrors`: the same document as JSON, and a table.
    let json: Value = serde_json::from_slice(&run_ok(wharf().args(["mirrors", &host, "--json"]))).unwrap();
    assert_eq!(json, status(&server, None));
    let table = String::from_utf8(run_ok(wharf().args(["mirrors", &host]))).unwrap();
    assert!(table.starts_with("NAME") && table.contains("vendor-app") && table.contains(" ok "), "{table}");
    let (_, metrics) = curl(&[], &format!("http://{}/metrics", server.addr));
    assert!(metrics.contains("wharf_mirror_bytes_total{mirror=\"vendor-app\",kind=\"copied\"}"), "{metrics}");
}

/// The advisory lock key of `name`, as wharf-metadata computes it (FNV-1a of a namespaced
/// name): the same on every replica.
pub(crate) fn lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "wharf-lock:".bytes().chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

/// Another replica running the mirror (here: a psql session on the same database holding the
/// mirror's advisory lock): this replica skips its run; once the lock is free, it runs again.
#[test]
fn a_mirror_another_replica_is_running_is_skipped_postgres() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    let upstream = Distribution::start();
    let v1 = TestImage::builder().seed(67).tag("v1").build();
    publish_signed(&upstream, "vendor/app", &v1);
    let server = WharfServer::start(Backend::Postgres, &mirror_config(&upstream, ""));
    wait_for_runs(&server, "vendor-app", 1, None);

    let mut holder = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-At", "-d", server.database().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("psql must be installed (postgresql-client)");
    let mut stdin = holder.stdin.take().unwrap();
    writeln!(stdin, "SELECT pg_advisory_lock({});\nSELECT 'locked';", lock_key("mirror:vendor-app")).unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l == "locked")), "psql did not take the lock");

    let run_url = format!("http://{}/v2/_wharf/mirrors/vendor-app/run", server.addr);
    assert_eq!(curl(&["-X", "POST"], &run_url).0, 202);
    wait_for("a skipped run", &server, || runs(&server, "vendor-app", "skipped") >= 1);
    assert_eq!(runs_ok(&server, "vendor-app"), 1, "no run while another replica holds the lock");

    // The other replica is done: its session ends, the lock is free.
    drop(stdin);
    holder.wait().unwrap();
    assert_eq!(curl(&["-X", "POST"], &run_url).0, 202);
    let m = wait_for_runs(&server, "vendor-app", 2, None);
    assert_eq!(m["last_run"]["bytes_copied"], 0, "{m}");
}

/// When the registry serves HTTPS, its runs reach it over HTTPS on loopback.
#[test]
fn a_mirror_runs_when_the_registry_serves_https() {
    let upstream = Distribution::start();
    let v1 = TestImage::builder().seed(66).tag("v1").build();
    publish_signed(&upstream, "vendor/app", &v1);
    let dir = tempfile::tempdir().unwrap();
    let cert = crate::tls::self_signed(dir.path());
    let config = mirror_config(&upstream, &crate::tls::tls_section(&cert));
    let server = WharfServer::start_tls(Backend::Sqlite, &config, &[]);
    let host = format!("docker://{}", server.addr);
    let mut last = Value::Null;
    wait_for("the first run over TLS", &server, || {
        let out = run_output(wharf().args(["mirrors", &host, "--json", "--tls-verify=false"]));
        last = serde_json::from_slice(&out.stdout).unwrap_or_default();
        last["mirrors"][0]["last_run"].is_object() && last["mirrors"][0]["state"] == "idle"
    });
    assert_eq!(last["mirrors"][0]["last_run"]["ok"], true, "{last}");
    let out =
        run_ok(wharf().args(["inspect", "--json", "--tls-verify=false", &format!("{host}/mirror/app:v1")]));
    let report: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["absent_children"], 2, "{report}");
}

/// With `[auth]` (token flow): the run pushes into the registry as itself; the status API
/// lists only what the caller may pull; running a mirror needs push on its dest.
#[test]
fn with_auth_a_mirror_pushes_as_the_registry_and_running_needs_push_rights() {
    let upstream = Distribution::start();
    let v1 = TestImage::builder().seed(63).tag("v1").build();
    publish_signed(&upstream, "vendor/app", &v1);
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, htpasswd_line("ci", "pw") + &htpasswd_line("dev", "devpw")).unwrap();
    let auth = format!(
        r#"
[auth]
htpasswd = "{}"
token = true

[[auth.rules]]
pattern = "mirror/**"
pull = ["authenticated"]
push = ["ci"]
"#,
        htpasswd.display()
    );
    let server = WharfServer::start(Backend::Sqlite, &mirror_config(&upstream, &auth));
    let host = format!("docker://{}", server.addr);
    let mirrors = |creds: &str, extra: &[&str]| {
        run_output(wharf().args(["mirrors", &host, "--creds", creds]).args(extra))
    };
    // The run at start pushed, though no rule lets the registry itself push.
    wait_for("the first run", &server, || {
        let out = mirrors("dev:devpw", &["--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["mirrors"][0]["last_run"]["ok"] == true && v["mirrors"][0]["state"] == "idle"
    });
    assert_eq!(present_platforms_auth(&server, "mirror/app:v1"), KEPT);

    // dev may pull, not push: refused; ci may push: accepted.
    let out = mirrors("dev:devpw", &["--run", "vendor-app"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("push"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mirrors("ci:pw", &["--run", "vendor-app"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Anonymous: challenged.
    let (code, _) =
        curl(&["-X", "POST"], &format!("http://{}/v2/_wharf/mirrors/vendor-app/run", server.addr));
    assert_eq!(code, 401);
}

fn present_platforms_auth(server: &WharfServer, image: &str) -> Vec<String> {
    let out = run_ok(wharf().args([
        "inspect",
        "--json",
        "--creds",
        "dev:devpw",
        &format!("docker://{}/{image}", server.addr),
    ]));
    let report: Value = serde_json::from_slice(&out).unwrap();
    report["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["present"] == true)
        .map(|c| c["platform"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// skopeo's sync YAML and the equivalent TOML mirror the same: same index bytes, same platforms,
/// same signatures, same bytes moved and left out.
#[test]
fn a_skopeo_sync_yaml_mirrors_the_same_as_the_toml() {
    let upstream = Distribution::start();
    let v1 = TestImage::builder().seed(64).tag("v1").build();
    publish_signed(&upstream, "vendor/app", &v1);
    let toml_dest = WharfServer::start(Backend::Sqlite, "[index_policy]\ndefault = \"sparse\"\n");
    let yaml_dest = WharfServer::start(Backend::Sqlite, "[index_policy]\ndefault = \"sparse\"\n");
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("sync.toml");
    std::fs::write(
        &toml,
        format!(
            "[defaults]\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\ndest = \"docker://{}/mirror\"\n\n\
             [[images]]\nsource = \"docker://{}/vendor/app\"\ntags = [\"v1\"]\n",
            toml_dest.addr, upstream.addr
        ),
    )
    .unwrap();
    let yaml = dir.path().join("sync.yml");
    std::fs::write(
        &yaml,
        format!("{}:\n  tls-verify: false\n  images:\n    vendor/app:\n      - v1\n", upstream.addr),
    )
    .unwrap();
    let sync = |args: &[&str]| -> Value {
        serde_json::from_slice(&run_ok(wharf().arg("sync").args(args).arg("--json"))).unwrap()
    };
    let from_toml = sync(&["--config", toml.to_str().unwrap()]);
    // skopeo sync --src yaml --dest docker sync.yml HOST/mirror/vendor: PREFIX/<last component>.
    let from_yaml = sync(&[
        "--config",
        yaml.to_str().unwrap(),
        "--dest",
        &format!("docker://{}/mirror/vendor", yaml_dest.addr),
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
    ]);
    for key in ["bytes_copied", "bytes_existing", "bytes_filtered"] {
        assert_eq!(from_toml[key], from_yaml[key], "{key}: {from_toml} / {from_yaml}");
    }
    assert_eq!(from_yaml["images"][0]["destination_digest"], v1.index.digest.as_str());
    for server in [&toml_dest, &yaml_dest] {
        assert_eq!(skopeo_inspect_raw(&server.docker_ref("mirror/vendor/app:v1")), v1.index.bytes);
        assert_eq!(present_platforms(server, "mirror/vendor/app:v1"), KEPT);
        for p in KEPT {
            let d = &v1.platform(p).manifest.digest;
            assert!(has_manifest(server, "mirror/vendor/app", &cosign_signature_tag(d), None), "{p}");
        }
        assert!(!has_manifest(
            server,
            "mirror/vendor/app",
            &v1.platform("linux/s390x").manifest.digest,
            None
        ));
    }
    // The same YAML without --dest: told what is missing.
    let out = run_output(wharf().args(["sync", "--config", yaml.to_str().unwrap()]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--dest"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `wharf copy --platform` into a repository that has an `[[upstreams]]` entry stores exactly
/// the selection (its own HEAD probes fill nothing) and reports the bytes it moved; a pulling
/// client still gets an absent platform filled on GET.
#[test]
fn a_copy_into_a_repository_with_an_upstream_stores_only_its_selection() {
    let upstream = Distribution::start();
    let v1 = TestImage::builder().seed(65).tag("v1").build();
    publish_signed(&upstream, "vendor/app", &v1);
    let config = format!(
        "[index_policy]\ndefault = \"sparse\"\n\n[[upstreams]]\npattern = \"mirror/**\"\nurl = \"docker://{}/vendor\"\n",
        upstream.addr
    );
    let server = WharfServer::start(Backend::Sqlite, &config);
    let out = run_ok(wharf().args([
        "copy",
        &upstream.docker_ref("vendor/app:v1"),
        &server.docker_ref("mirror/app:v1"),
        "--platform",
        "linux/amd64",
        "--json",
    ]));
    let report: Value = serde_json::from_slice(&out).unwrap();
    let amd64 = v1.platform("linux/amd64");
    let copied = report["bytes_copied"].as_u64().unwrap();
    assert!(copied >= amd64.total_size(), "the copy moved the amd64 image itself: {report}");
    let others: u64 =
        ["linux/arm64", "linux/arm/v7", "linux/s390x"].iter().map(|p| v1.platform(p).total_size()).sum();
    assert_eq!(report["bytes_filtered"].as_u64().unwrap(), others, "{report}");
    assert_eq!(present_platforms(&server, "mirror/app:v1"), ["linux/amd64"]);
    let stored = inspect_json(&server, "mirror/app:v1");
    assert_eq!(stored["absent_children"], 3, "{stored}");
    for p in ["linux/arm64", "linux/arm/v7", "linux/s390x"] {
        let child = v1.platform(p);
        for blob in child.blobs() {
            let (code, _) =
                curl(&["-I"], &format!("http://{}/v2/mirror/app/blobs/{}", server.addr, blob.digest));
            assert_eq!(code, 404, "{p}: blob {} must not have been filled", blob.digest);
        }
    }
    // A client that pulls still gets an absent platform, filled on GET.
    let s390x = v1.platform("linux/s390x");
    assert_eq!(
        skopeo_inspect_raw(&server.docker_ref(&format!("mirror/app@{}", s390x.manifest.digest))),
        s390x.manifest.bytes
    );
    assert_eq!(inspect_json(&server, "mirror/app:v1")["absent_children"], 2);
}

/// `verify_key` in `[[mirrors]]`: a mirror whose source does not verify under its key copies
/// nothing and reports why; one with the vendor's key mirrors as usual.
#[test]
fn a_mirror_with_verify_key_mirrors_only_what_verifies() {
    let upstream = Distribution::start();
    let v1 = TestImage::builder().seed(63).tag("v1").build();
    publish_signed(&upstream, "vendor/app", &v1);
    let keys = tempfile::tempdir().unwrap();
    let vendor = keys.path().join("vendor.pub");
    std::fs::write(&vendor, CosignKey::from_seed(7).public_key_pem()).unwrap();
    let other = keys.path().join("other.pub");
    std::fs::write(&other, CosignKey::from_seed(8).public_key_pem()).unwrap();
    let extra = format!(
        "verify_key = {other:?}\n\n[[mirrors]]\nname = \"vendor-app-verified\"\n\
         source = \"docker://{}/vendor/app\"\ntags = [\"v1\"]\nplatforms = [\"linux/amd64\"]\n\
         dest = \"mirror/verified\"\ninterval = \"1h\"\nverify_key = {vendor:?}\n",
        upstream.addr
    );
    let server = WharfServer::start(Backend::Sqlite, &mirror_config(&upstream, &extra));

    wait_for("the refused run", &server, || runs(&server, "vendor-app", "failed") >= 1);
    wait_for("the verified run", &server, || runs_ok(&server, "vendor-app-verified") >= 1);
    let mirrors = status(&server, None)["mirrors"].as_array().unwrap().clone();
    let refused = mirrors.iter().find(|m| m["name"] == "vendor-app").unwrap();
    let why = refused["last_run"]["failures"][0]["error"].as_str().unwrap_or_default();
    assert!(why.contains("refusing to copy") && why.contains("does not verify"), "{refused}");
    assert!(!has_manifest(&server, "mirror/app", "v1", None));
    assert!(!has_manifest(&server, "mirror/app", &v1.platform("linux/amd64").manifest.digest, None));

    assert_eq!(skopeo_inspect_raw(&server.docker_ref("mirror/verified:v1")), v1.index.bytes);
    assert_eq!(present_platforms(&server, "mirror/verified:v1"), ["linux/amd64"]);
}
