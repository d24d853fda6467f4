//! The findings of the auth review (issue 14), each as a test over real HTTP: failed logins
//! are throttled per client before any bcrypt runs, a burst of logins holds up neither
//! `/healthz` nor token requests, and a user name cannot forge log lines; no secret reaches
//! a log line, an error or `/metrics`.
//!
//! On SQLite only: the throttle and the log are per process and do not touch storage.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use wharf_server::wharf_auth::{Authority, LoginLimits};

use crate::auth::{AuthServer, CI, Creds, basic_auth, token_auth};
use crate::harness::{Backend, Server, expect_error};

/// The token flow with the default login limits, but a first back-off of a minute: no
/// attempt is admitted again while a test runs, however slow the machine.
fn throttled_token_auth() -> Authority {
    let limits = LoginLimits { backoff: Duration::from_secs(60), ..LoginLimits::default() };
    Authority::new(token_auth()).with_login_limits(limits)
}

async fn start_throttled() -> AuthServer {
    AuthServer::over(Server::start_with_authority(Backend::Sqlite, throttled_token_auth).await)
}

const WRONG: Creds = Creds::Basic("dev", "wrong-password");

fn retry_after(resp: &reqwest::Response) -> u64 {
    let v = resp.headers().get("retry-after").expect("a Retry-After header");
    v.to_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_wrong_passwords_in_a_row_are_not_all_checked() {
    let s = start_throttled().await;
    let token = s.token(&CI, &["repository:public/app:pull"]).await;

    let mut statuses = Vec::new();
    for _ in 0..40 {
        let resp = s.send(Method::GET, "/v2/", &WRONG).await;
        statuses.push(resp.status());
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry_after(&resp) >= 1);
            expect_error(resp, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
        }
    }
    let mut expected = vec![StatusCode::UNAUTHORIZED; 5];
    expected.resize(40, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(statuses, expected, "five failures are answered, then the client waits");
    // Only the answered attempts ran bcrypt.
    assert_eq!(s.server.metric("wharf_auth_logins_failed_total").await, 5);
    assert_eq!(s.server.metric("wharf_auth_logins_throttled_total{reason=\"client\"}").await, 35);

    // While throttled, even the right password is not checked (a success would be an oracle),
    // and the token endpoint throttles the same client.
    let resp = s.send(Method::GET, "/v2/", &Creds::Basic("dev", "devpw")).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!((1..=60).contains(&retry_after(&resp)));
    let resp = s.req(Method::GET, "/token", &CI).query(&[("service", "wharf")]).send().await.unwrap();
    expect_error(resp, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
    // Tokens already issued, health and metrics are not affected.
    let resp = s.send(Method::GET, "/v2/", &Creds::Bearer(token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(s.send(Method::GET, "/healthz", &Creds::Anonymous).await.status(), StatusCode::OK);
}

/// [`throttled_token_auth`] behind a proxy on 127.0.0.1 (the test client).
fn behind_a_proxy() -> Authority {
    let limits = LoginLimits {
        backoff: Duration::from_secs(60),
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..LoginLimits::default()
    };
    Authority::new(token_auth()).with_login_limits(limits)
}

async fn wrong_login_from(s: &AuthServer, forwarded_for: &str) -> StatusCode {
    s.req(Method::GET, "/v2/", &WRONG).header("x-forwarded-for", forwarded_for).send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    // Behind a trusted proxy, each client has its own count.
    let s = AuthServer::over(Server::start_with_authority(Backend::Sqlite, behind_a_proxy).await);
    for _ in 0..5 {
        assert_eq!(wrong_login_from(&s, "192.0.2.1").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(wrong_login_from(&s, "192.0.2.1").await, StatusCode::TOO_MANY_REQUESTS);
    // A client cannot pick its way out: the proxy appends the address it saw, and that counts.
    assert_eq!(wrong_login_from(&s, "198.51.100.7, 192.0.2.1").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(wrong_login_from(&s, "192.0.2.2").await, StatusCode::UNAUTHORIZED);

    // Without a trusted proxy the header means nothing: the peer's count applies.
    let s = start_throttled().await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(wrong_login_from(&s, &format!("192.0.2.{i}")).await);
    }
    assert_eq!(&statuses[5..], &[StatusCode::TOO_MANY_REQUESTS; 3], "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_logins_does_not_hold_up_other_requests() {
    let s = start_throttled().await;
    let token = s.token(&CI, &["repository:public/app:pull"]).await;
    let s = std::sync::Arc::new(s);
    let burst: Vec<_> = (0..32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let user = if i % 2 == 0 { "ci" } else { "nobody" };
                s.send(Method::GET, "/v2/", &Creds::Basic(user, "wrong")).await.status()
            })
        })
        .collect();
    // Requests that need no password are answered meanwhile.
    assert_eq!(s.send(Method::GET, "/healthz", &Creds::Anonymous).await.status(), StatusCode::OK);
    let resp = s.send(Method::GET, "/v2/", &Creds::Bearer(token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut statuses = Vec::new();
    for t in burst {
        statuses.push(t.await.unwrap());
    }
    let checked = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count() as u64;
    let refused = statuses
        .iter()
        .filter(|s| matches!(**s, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE))
        .count() as u64;
    assert_eq!(checked + refused, 32, "{statuses:?}");
    assert!(checked <= 5, "a burst from one client gets the allowance only: {statuses:?}");
    assert_eq!(s.server.metric("wharf_auth_logins_failed_total").await, checked);
    // Never more bcrypt checks at once than the cap (half the cores, at least one).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let peak = s.server.metric("wharf_auth_password_checks_peak").await;
    assert!((1..=(cores / 2).max(1) as u64).contains(&peak), "peak {peak}");
    assert_eq!(s.server.metric("wharf_auth_password_checks_running").await, 0);
}

/// Everything the server logs, from the start of the test process.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(|| Capture)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_names_cannot_forge_log_lines_and_secrets_are_never_logged() {
    capture_logs();
    // No colon: the first one in basic credentials ends the user name.
    const FORGED: &str = "2026-11-30T12.00.00.000000Z  INFO wharf_server login ok user=admin";
    const PASSWORD: &str = "hunter2-do-not-log-me";
    let evil: &'static str = Box::leak(format!("mallory\n{FORGED}\x1b[2K\x1b[1A\r").into_boxed_str());
    let s = AuthServer::start(Backend::Sqlite, basic_auth).await;
    let mut bodies = Vec::new();
    for path in ["/v2/", "/v2/private/app/manifests/v1"] {
        let resp = s.send(Method::GET, path, &Creds::Basic(evil, PASSWORD)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        bodies.push(resp.text().await.unwrap());
    }
    let ok = s.send(Method::GET, "/v2/", &Creds::Basic("ci", "pw")).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let metrics = s.send(Method::GET, "/metrics", &Creds::Anonymous).await.text().await.unwrap();

    let log = String::from_utf8(LOG.lock().unwrap().clone()).unwrap();
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("failed login")).collect();
    assert_eq!(failed.len(), 2, "{log}");
    for line in failed {
        assert!(line.contains(r#"user="mallory\n2026-11-30T12.00.00.000000Z  INFO wharf_server login ok user=admin\u{1b}[2K"#), "escaped, on one line: {line}");
    }
    assert!(!log.lines().any(|l| l.starts_with(FORGED)), "a forged line: {log}");
    assert!(!log.contains('\x1b') && !log.contains('\r'), "raw control bytes in the log");
    for (what, text) in [("log", &log), ("/metrics", &metrics), ("errors", &bodies.join("\n"))] {
        assert!(!text.contains(PASSWORD), "the password is in the {what}");
        assert!(!text.contains("$2y$"), "a hash is in the {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_log() {
    capture_logs();
    let s = AuthServer::start(Backend::Sqlite, token_auth).await;
    let token = s.token(&CI, &["repository:public/app:pull,push"]).await;
    s.push_blob("public/app", b"layer", &Creds::Bearer(token.clone())).await;
    // A refused token (tampered) is logged without its text.
    let tampered = format!("{token}x");
    let resp = s.send(Method::GET, "/v2/public/app/tags/list", &Creds::Bearer(tampered.clone())).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body = resp.text().await.unwrap();
    let metrics = s.send(Method::GET, "/metrics", &Creds::Anonymous).await.text().await.unwrap();
    let log = String::from_utf8(LOG.lock().unwrap().clone()).unwrap();
    assert!(log.contains("issued a token"), "debug lines are captured: {log}");
    let signature = token.rsplit('.').next().unwrap();
    for (what, text) in [("log", &log), ("/metrics", &metrics), ("error", &body)] {
        assert!(!text.contains(signature), "the token is in the {what}");
    }
}
