//! `[auth.ldap]` against a real OpenLDAP (`slapd`, started per test with its own directory):
//! podman and skopeo log in as directory users, `group:NAME` rules decide who pushes, token
//! holders see the catalog their groups allow, wrong passwords and filter injection get 401,
//! a directory that is down or hung gets 503 within the timeout, and ldaps:// and StartTLS
//! verify the directory's certificate.

use std::path::Path;
use std::process::Command;

use wharf_testkit::{
    LDAP_BIND_DN, LDAP_BIND_PASSWORD, LDAP_GROUPS, LDAP_PEOPLE, Podman, Slapd, TestImage, htpasswd_line,
    run_fails, run_ok, skopeo,
};

use crate::server::{Backend, WharfServer};

/// alice is in `platform` and `dev`, bob in `dev`, carol in no group.
fn directory(tls: bool) -> Slapd {
    let b = Slapd::builder()
        .user("alice", "alice-pw")
        .user("bob", "bob-pw")
        .user("carol", "carol-pw")
        .group("platform", &["alice"])
        .group("dev", &["alice", "bob"]);
    if tls { b.tls().start() } else { b.start() }
}

/// `[auth.ldap]` for `url` plus `extra` lines.
fn ldap_section(url: &str, extra: &str) -> String {
    format!(
        r#"
[auth.ldap]
url = "{url}"
bind_dn = "{LDAP_BIND_DN}"
bind_password = "{LDAP_BIND_PASSWORD}"
user_base = "{LDAP_PEOPLE}"
user_filter = "(&(objectClass=inetOrgPerson)(uid={{username}}))"
group_base = "{LDAP_GROUPS}"
group_filter = "(member={{dn}})"
{extra}
"#
    )
}

/// A Wharf whose users are the directory's, plus ci/ci-pw in an htpasswd file (in `dir`):
/// `platform/**` is pulled by group dev and pushed by group platform; `ci/**` is ci's.
fn start(dir: &Path, slapd: &Slapd, token: bool, timeout: &str) -> WharfServer {
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, htpasswd_line("ci", "ci-pw")).unwrap();
    let config = format!(
        r#"
[auth]
htpasswd = "{}"
token = {token}
# The tests name their "clients" in X-Forwarded-For: failed logins are throttled per client.
trusted_proxies = ["127.0.0.1"]
{}
[[auth.rules]]
pattern = "platform/**"
pull = ["group:dev"]
push = ["group:platform"]

[[auth.rules]]
pattern = "ci/**"
pull = ["ci"]
push = ["ci"]
"#,
        htpasswd.display(),
        ldap_section(&slapd.url, &format!("timeout = \"{timeout}\"")),
    );
    WharfServer::start(Backend::Sqlite, &config)
}

fn layout(dir: &Path, seed: u64) -> String {
    let image = TestImage::builder().seed(seed).tag("v1").build();
    image.write_oci_layout(dir);
    image.oci_ref(dir)
}

/// The status of `GET URL` with basic credentials `user:password` (curl; bounded).
fn status(url: &str, user: &str, password: &str) -> (String, String) {
    status_from(url, user, password, "192.0.2.1")
}

/// As [`status`], from client address `client` (behind the trusted proxy 127.0.0.1): each
/// client has a few failed logins before it is throttled (429) and no longer checked.
fn status_from(url: &str, user: &str, password: &str, client: &str) -> (String, String) {
    let out = run_ok(
        Command::new("curl")
            .args(["-s", "--max-time", "30", "-w", "\n%{http_code}", "-u"])
            .arg(format!("{user}:{password}"))
            .arg("-H")
            .arg(format!("X-Forwarded-For: {client}"))
            .arg(url),
    );
    let text = String::from_utf8_lossy(&out).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().to_owned(), body.to_owned())
}

fn base(server: &WharfServer) -> String {
    format!("http://{}/v2/", server.addr)
}

#[test]
fn podman_and_skopeo_log_in_as_directory_users() {
    let slapd = directory(false);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &slapd, true, "5s");
    let src = tempfile::tempdir().unwrap();
    let oci = layout(src.path(), 61);

    // skopeo pushes as alice (group platform) through the token flow.
    run_ok(
        skopeo(["copy", "--all", "--dest-tls-verify=false", "--dest-creds", "alice:alice-pw"])
            .arg(&oci)
            .arg(server.docker_ref("platform/app:v1")),
    );
    // bob (group dev) reads it.
    let raw = run_ok(
        skopeo(["inspect", "--raw", "--tls-verify=false", "--creds", "bob:bob-pw"])
            .arg(server.docker_ref("platform/app:v1")),
    );
    assert!(!raw.is_empty());

    // podman: a wrong password does not log in; the right one does; pull, then push a new tag.
    let podman = Podman::new();
    let authfile = podman.dir().join("auth.json");
    let authfile = authfile.to_str().unwrap();
    let login = |user: &str, password: &str| {
        let mut cmd =
            podman.podman(["login", "--tls-verify=false", "--authfile", authfile, "-u", user, "-p"]);
        cmd.arg(password).arg(&server.addr);
        cmd
    };
    let err = run_fails(login("alice", "wrong"));
    assert!(err.contains("invalid") || err.contains("unauthorized"), "{err}");
    run_ok(login("alice", "alice-pw"));
    let v1 = format!("{}/platform/app:v1", server.addr);
    let v2 = format!("{}/platform/app:v2", server.addr);
    run_ok(podman.podman(["pull", "--tls-verify=false", "--authfile", authfile, "--arch", "amd64", &v1]));
    run_ok(podman.podman(["tag", &v1, &v2]));
    run_ok(podman.podman(["push", "--tls-verify=false", "--authfile", authfile, &v2]));
    // bob may pull v2 but not push it.
    run_ok(login("bob", "bob-pw"));
    run_ok(podman.podman(["pull", "--tls-verify=false", "--authfile", authfile, &v2]));
    let err = run_fails(podman.podman(["push", "--tls-verify=false", "--authfile", authfile, &v2]));
    assert!(err.contains("denied") || err.contains("unauthorized"), "{err}");
    let log = server.log();
    assert!(
        !log.contains("alice-pw") && !log.contains("bob-pw") && !log.contains(LDAP_BIND_PASSWORD),
        "{log}"
    );
}

#[test]
fn group_rules_decide_who_pushes_beside_htpasswd_users() {
    let slapd = directory(false);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &slapd, false, "5s");
    let src = tempfile::tempdir().unwrap();
    let oci = layout(src.path(), 62);
    let push = |user: &str, repo: &str| {
        let mut cmd = skopeo(["copy", "--all", "--dest-tls-verify=false", "--dest-creds", user]);
        cmd.arg(&oci).arg(server.docker_ref(repo));
        cmd
    };
    // bob is in dev, not in platform: he may not push there.
    let err = run_fails(push("bob:bob-pw", "platform/app:v1"));
    assert!(err.contains("denied") || err.contains("unauthorized"), "{err}");
    run_ok(push("alice:alice-pw", "platform/app:v1"));
    let inspect = |user: &str| {
        let mut cmd = skopeo(["inspect", "--raw", "--tls-verify=false", "--creds", user]);
        cmd.arg(server.docker_ref("platform/app:v1"));
        cmd
    };
    run_ok(inspect("bob:bob-pw"));
    // carol is a directory user in no group: logged in, but not allowed.
    let err = run_fails(inspect("carol:carol-pw"));
    assert!(err.contains("denied") || err.contains("unauthorized"), "{err}");
    let (code, body) = status(&format!("{}platform/app/tags/list", base(&server)), "carol", "carol-pw");
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("DENIED") && body.contains("carol"), "{body}");
    // The htpasswd user works beside the directory; directory users do not get ci's rights.
    run_ok(push("ci:ci-pw", "ci/app:v1"));
    let err = run_fails(push("alice:alice-pw", "ci/app:v2")).to_lowercase();
    assert!(err.contains("denied") || err.contains("forbidden") || err.contains("unauthorized"), "{err}");
}

/// `GET /v2/_catalog` with a token for `registry:catalog:*` from the token endpoint, logged
/// in as `user` (curl; bounded): the repositories listed.
fn catalog_with_token(server: &WharfServer, user: &str, password: &str) -> Vec<String> {
    let url = format!("http://{}/token?service=wharf&scope=registry:catalog:*", server.addr);
    let (code, body) = status(&url, user, password);
    assert_eq!(code, "200", "token for {user}: {body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = token["token"].as_str().unwrap();
    let out = run_ok(
        Command::new("curl")
            .args(["-sf", "--max-time", "30", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("{}_catalog", base(server))),
    );
    let listing: serde_json::Value = serde_json::from_slice(&out).unwrap();
    listing["repositories"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect()
}

#[test]
fn token_holders_see_the_catalog_their_groups_allow() {
    let slapd = directory(false);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &slapd, true, "5s");
    let src = tempfile::tempdir().unwrap();
    let oci = layout(src.path(), 63);
    for (creds, repo) in [("alice:alice-pw", "platform/app:v1"), ("ci:ci-pw", "ci/app:v1")] {
        run_ok(
            skopeo(["copy", "--all", "--dest-tls-verify=false", "--dest-creds", creds])
                .arg(&oci)
                .arg(server.docker_ref(repo)),
        );
    }
    // bob may pull platform/** only through group dev: a token carries that group, so the
    // catalog lists it as it does for bob with basic auth.
    assert_eq!(catalog_with_token(&server, "bob", "bob-pw"), ["platform/app"]);
    assert_eq!(catalog_with_token(&server, "alice", "alice-pw"), ["platform/app"]);
    // carol is in no group; ci is an htpasswd user with a rule of its own.
    assert!(catalog_with_token(&server, "carol", "carol-pw").is_empty());
    assert_eq!(catalog_with_token(&server, "ci", "ci-pw"), ["ci/app"]);
}

#[test]
fn wrong_passwords_and_filter_injection_get_401() {
    let slapd = directory(false);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &slapd, false, "5s");
    let url = base(&server);
    assert_eq!(status(&url, "alice", "alice-pw").0, "200");
    let (code, body) = status(&url, "alice", "wrong");
    assert_eq!(code, "401", "{body}");
    assert!(body.contains("invalid user name or password"), "{body}");
    // An empty password would be an unauthenticated bind, which LDAP servers accept.
    assert_eq!(status(&url, "alice", "").0, "401");
    assert_eq!(status(&url, "nobody", "alice-pw").0, "401");
    // With the filter (&(objectClass=inetOrgPerson)(uid={username})) unescaped, each of these
    // names would find alice's entry (or every entry), and alice's password would log it in.
    // Each from its own client: this is about the filter, not the throttle.
    for (i, name) in ["al*", "alice)(uid=*", "*)(uid=*", "*", "alice)(|(uid=*"].into_iter().enumerate() {
        let (code, body) = status_from(&url, name, "alice-pw", &format!("198.51.100.{i}"));
        assert_eq!(code, "401", "user name {name:?}: {body}");
    }
    // The token endpoint refuses them the same way.
    let token_url = format!("http://{}/token?service=wharf", server.addr);
    let (code, _) = status(&token_url, "alice", "wrong");
    assert!(code == "401" || code == "404", "{code}");
    // Directory logins go through the same throttle as htpasswd ones: once a client has
    // failed a few times in a row, its next attempt is not checked at all.
    let codes: Vec<String> = (0..6).map(|_| status_from(&url, "alice", "wrong", "203.0.113.9").0).collect();
    assert_eq!(codes[..5], ["401"; 5], "{codes:?}");
    assert_eq!(codes[5], "429", "{codes:?}");
    let log = server.log();
    assert!(!log.contains("alice-pw"), "{log}");
}

#[test]
fn an_unavailable_directory_is_503_within_the_timeout() {
    let mut slapd = directory(false);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &slapd, false, "1s");
    let url = base(&server);
    assert_eq!(status(&url, "alice", "alice-pw").0, "200");

    // Hung: the port accepts connections, nothing answers. 503 after the timeout, not a hang
    // and not 401 (curl gives up after 30 s).
    slapd.pause();
    let (code, body) = status(&url, "bob", "bob-pw");
    assert_eq!(code, "503", "{body}");
    assert!(body.contains("UNAVAILABLE") && body.contains("did not answer within 1s"), "{body}");
    // A wrong password cannot be told from a right one either.
    assert_eq!(status(&url, "bob", "wrong").0, "503");
    // alice logged in a moment ago: her login is cached.
    assert_eq!(status(&url, "alice", "alice-pw").0, "200");
    // ... but only with the password that worked.
    assert_eq!(status(&url, "alice", "other").0, "503");
    slapd.resume();
    assert_eq!(status(&url, "bob", "bob-pw").0, "200");

    // Gone: connections are refused.
    slapd.kill();
    let (code, body) = status(&url, "carol", "carol-pw");
    assert_eq!(code, "503", "{body}");
    assert!(body.contains("cannot connect"), "{body}");
    let log = server.log();
    assert!(log.contains("LDAP directory unavailable"), "{log}");
    // htpasswd users do not need the directory.
    assert_eq!(status(&url, "ci", "ci-pw").0, "200");
}

#[test]
fn ldaps_and_starttls_verify_the_directory() {
    let slapd = directory(true);
    let ca = slapd.ca_file().unwrap();
    let ldaps = slapd.ldaps_url.clone().unwrap();
    let cases = [
        // ldaps:// with the directory's certificate.
        (ldap_section(&ldaps, &format!("ca_file = \"{}\"", ca.display())), "200"),
        // ldap:// upgraded with StartTLS.
        (ldap_section(&slapd.url, &format!("starttls = true\nca_file = \"{}\"", ca.display())), "200"),
        // ldaps:// trusting only the system's roots: the self-signed certificate is refused.
        (ldap_section(&ldaps, ""), "503"),
    ];
    for (section, want) in cases {
        let config =
            format!("[auth]\n{section}\n[[auth.rules]]\npattern = \"**\"\npull = [\"authenticated\"]\n");
        let server = WharfServer::start(Backend::Sqlite, &config);
        let url = base(&server);
        let (code, body) = status(&url, "alice", "alice-pw");
        assert_eq!(code, want, "{section}\n{body}\n{}", server.log());
        if want == "200" {
            assert_eq!(status(&url, "alice", "wrong").0, "401", "{section}");
        } else {
            // Said at start, before any login.
            let log = server.log();
            assert!(log.contains("LDAP directory not usable now"), "{log}");
        }
    }
}
