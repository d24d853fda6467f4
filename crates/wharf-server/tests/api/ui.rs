//! The web UI in a real browser: Debian's chromium, headless, driven over WebDriver
//! (chromedriver, started here on loopback) with fantoccini. What a person sees is asserted
//! through the page; a screenshot of each page goes to `target/ui-screenshots/`.
//!
//! A missing chromium or chromedriver fails these tests (never a skip).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use wharf_metadata::{MetadataStore, NewManifest};
use wharf_oci::{Digest, RepoName, Tag};
use wharf_registry::{IndexPolicy, IndexRule, Registry, RegistryConfig, RepoPattern};
use wharf_server::wharf_auth::{AuthConfig, Authority, Htpasswd, Rule};
use wharf_server::{MirrorBoard, MirrorInfo};
use wharf_storage::BlobStore;
use wharf_testkit::sign::{CosignKey, cosign_referrer_signature, cosign_style_signature, sbom_artifact};
use wharf_testkit::{RegistryClient, TestImage};

const PLATFORMS: [&str; 4] = ["linux/amd64", "linux/arm64", "linux/s390x", "linux/ppc64le"];

/// A registry served with the UI, its mirrors board and its temporary directory.
struct UiServer {
    addr: String,
    registry: Registry,
    board: Arc<MirrorBoard>,
    _dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl UiServer {
    async fn start(auth: Option<AuthConfig>, mirrors: Vec<MirrorInfo>) -> UiServer {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("storage")).await.unwrap();
        let meta =
            MetadataStore::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display()))
                .await
                .unwrap();
        let config = RegistryConfig {
            index_policy: IndexPolicy {
                default: IndexRule::Complete,
                repositories: vec![(RepoPattern::new("public/**"), IndexRule::Sparse)],
            },
            ..RegistryConfig::default()
        };
        let registry = Registry::new(blobs, meta, config);
        let board = Arc::new(MirrorBoard::new(mirrors));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (reg, b) = (registry.clone(), board.clone());
        tokio::spawn(async move {
            let authority = auth.map(Authority::new);
            wharf_server::serve_with_mirrors(listener, reg, authority, None, b, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        UiServer { addr, registry, board, _dir: dir, _shutdown: tx }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// chromedriver on a free loopback port and a headless chromium session through it.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    async fn start(width: u32, height: u32) -> Browser {
        let chromedriver = wharf_testkit::require_tool("chromedriver");
        let chromium = wharf_testkit::require_tool("chromium");
        let port = wharf_testkit::free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--no-proxy-server",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let caps = caps.as_object().unwrap().clone();
        let mut last = None;
        // chromedriver takes a moment to listen; chromium a moment to start.
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => return Browser { client, driver, _profile: profile },
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("no WebDriver session from chromedriver on port {port}: {last:?}");
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.client.find_all(Locator::Css(css)).await.unwrap() {
            out.push(e.text().await.unwrap());
        }
        out
    }

    async fn exists(&self, css: &str) -> bool {
        !self.client.find_all(Locator::Css(css)).await.unwrap().is_empty()
    }

    /// Click and wait until the next page shows `css`.
    async fn click_to(&self, click: Locator<'_>, css: &str) {
        self.client.find(click).await.unwrap_or_else(|e| panic!("{click:?}: {e}")).click().await.unwrap();
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("after clicking {click:?}, no {css}: {e}"));
    }

    async fn body(&self) -> String {
        self.text("body").await
    }

    async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    async fn log_in(&self, server: &UiServer, user: &str, password: &str) {
        self.goto(&server.url("/ui/")).await;
        self.click_to(Locator::Css("#login-link"), "form.login").await;
        self.client.find(Locator::Css("#user")).await.unwrap().send_keys(user).await.unwrap();
        self.client.find(Locator::Css("#password")).await.unwrap().send_keys(password).await.unwrap();
    }
}

/// ci may push public/** and private/**; dev owns team/**; public/** is readable by anyone,
/// private/** by any user who logged in.
fn ui_auth() -> AuthConfig {
    let users = [("ci", "pw"), ("dev", "devpw")];
    let text: String = users.iter().map(|(u, p)| Htpasswd::hash_line(u, p, 4).unwrap() + "\n").collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    AuthConfig {
        htpasswd: Some(Htpasswd::parse(&text).unwrap()),
        rules: vec![
            Rule::new("public/**", &s(&["*"]), &s(&["ci"]), &[]).unwrap(),
            Rule::new("private/**", &s(&["authenticated"]), &s(&["ci"]), &[]).unwrap(),
            Rule::new("team/**", &s(&["dev"]), &s(&["dev"]), &[]).unwrap(),
        ],
        token: None,
    }
}

/// A signed 4-platform index mirrored with 2 platforms into public/app (tag v1): the index
/// signed cosign-style (`.sig` tag), amd64 signed through the referrers API, an SBOM on
/// arm64. Returns the image.
async fn seed_partial_signed_index(server: &UiServer) -> TestImage {
    let ci = RegistryClient::new(&server.addr).with_basic_auth("ci", "pw");
    let image = TestImage::builder().seed(7).tag("v1").platforms(&PLATFORMS).build();
    ci.push_platforms("public/app", &image, &["linux/amd64", "linux/arm64"]).await.unwrap();
    ci.push_index("public/app", &image).await.unwrap();
    let key = CosignKey::from_seed(3);
    let reference = format!("{}/public/app", server.addr);
    ci.push_artifact("public/app", &cosign_style_signature(&key, &reference, &image.index.digest))
        .await
        .unwrap();
    let amd = image.platform("linux/amd64").manifest.descriptor();
    ci.push_artifact("public/app", &cosign_referrer_signature(&key, &reference, &amd, None)).await.unwrap();
    let arm = image.platform("linux/arm64").manifest.descriptor();
    ci.push_artifact("public/app", &sbom_artifact(&arm, 1)).await.unwrap();

    // Repositories that anonymous visitors must not see.
    let small = TestImage::builder().seed(8).tag("s1").platforms(&["linux/amd64"]).build();
    ci.push_image("private/secret", &small).await.unwrap();
    let dev = RegistryClient::new(&server.addr).with_basic_auth("dev", "devpw");
    let team = TestImage::builder().seed(9).tag("t1").platforms(&["linux/amd64"]).build();
    dev.push_image("team/x", &team).await.unwrap();
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_signed_mirror_as_people_see_it() {
    let mirrors = vec![
        MirrorInfo {
            name: "vendor-app".into(),
            source: "docker://vendor.invalid/team/app".into(),
            dest: "public/app".parse().unwrap(),
        },
        MirrorInfo {
            name: "team-tools".into(),
            source: "docker://vendor.invalid/team/tools".into(),
            dest: "team/x".parse().unwrap(),
        },
    ];
    let server = UiServer::start(Some(ui_auth()), mirrors).await;
    let image = seed_partial_signed_index(&server).await;
    let b = Browser::start(1280, 1500).await;

    // `/` leads to the repository list; anonymous visitors see only what "*" may pull.
    b.goto(&server.url("/")).await;
    assert_eq!(b.path().await, "/ui/");
    let repos = b.texts("#repositories tbody th").await;
    assert_eq!(repos, ["public/app"], "anonymous sees public repositories only");
    let source = b.source().await;
    assert!(!source.contains("private/secret") && !source.contains("team/x"), "{source}");
    assert!(b.text("#repositories tbody").await.contains("sparse"));
    b.shot("repositories").await;

    // To the tags of the repository, then to the sparse index.
    b.click_to(Locator::LinkText("public/app"), "#tags").await;
    // Newest first: the signature's tag is above v1 when its push fell in a later second.
    let rows = b.texts("#tags tbody tr").await;
    let row = rows.iter().find(|r| r.starts_with("v1")).unwrap_or_else(|| panic!("no v1 row in {rows:?}"));
    assert!(row.contains("sparse index") && row.contains("2 of 4 present"), "{row}");
    b.shot("tags").await;
    b.click_to(Locator::LinkText("v1"), "#platforms").await;
    assert_eq!(b.path().await, "/ui/repo/public/app/manifest/v1");
    assert_eq!(b.text("#platforms-present").await, "2 of 4");
    for p in PLATFORMS {
        let row = b.text(&format!("#platforms tr[data-platform='{p}']")).await;
        let present = p == "linux/amd64" || p == "linux/arm64";
        let child = image.platform(p).manifest.digest.clone();
        let short = &child[..7 + 12];
        assert!(row.contains(short), "{p}: {row}");
        if present {
            assert!(row.contains("present") && !row.contains("absent"), "{p}: {row}");
            let arch = p.split('/').nth(1).unwrap();
            let cmd = format!("podman pull --arch {arch} {}/public/app:v1", server.addr);
            assert!(row.contains(&cmd), "{p}: {row}");
            assert!(row.contains(&format!("podman pull {}/public/app@{child}", server.addr)), "{p}: {row}");
        } else {
            assert!(row.contains("absent") && row.contains("Not in this registry"), "{p}: {row}");
        }
    }
    // Signatures: the index's through its cosign tag, amd64's through the referrers API, and
    // the SBOM of arm64.
    let index_refs = b.text("#index-referrers").await;
    assert!(index_refs.contains("signature") && index_refs.contains(".sig"), "{index_refs}");
    let amd = b.text("#platforms tr[data-platform='linux/amd64'] td.referrers").await;
    assert!(amd.contains("signature") && amd.contains("referrers API"), "{amd}");
    let arm = b.text("#platforms tr[data-platform='linux/arm64'] td.referrers").await;
    assert!(arm.contains("SBOM"), "{arm}");
    let s390 = b.text("#platforms tr[data-platform='linux/s390x'] td.referrers").await;
    assert_eq!(s390, "none");
    let saved = b.text("#saved").await;
    assert!(saved.contains('%') && !saved.starts_with("≈ 0 B"), "{saved}");
    b.shot("index").await;

    // A present platform's page: its config, layers and referrers.
    let amd_digest = image.platform("linux/amd64").manifest.digest.clone();
    b.click_to(Locator::Css(&format!("a[href$='{amd_digest}']")), "#layers").await;
    assert!(b.text("#referrers").await.contains("signature"));
    assert!(b.body().await.contains("Config"));
    b.shot("image").await;

    // Unknown and forbidden look the same: a page that says so, not JSON.
    b.goto(&server.url("/ui/repo/private/secret")).await;
    let forbidden = b.text("main").await;
    b.goto(&server.url("/ui/repo/private/nothing")).await;
    let unknown = b.text("main").await;
    assert!(forbidden.contains("Repository not found"), "{forbidden}");
    assert_eq!(forbidden.replace("private/secret", "X"), unknown.replace("private/nothing", "X"));
    b.goto(&server.url("/ui/repo/public/app/manifest/nope")).await;
    assert!(b.text("h1").await.contains("not found"));
    b.shot("not-found").await;

    // Mirrors: anonymous sees the public one, without a run button.
    b.goto(&server.url("/ui/mirrors")).await;
    assert_eq!(b.texts("#mirrors tbody th").await, ["vendor-app"]);
    assert!(!b.exists("#mirrors button").await);

    // Wrong password: said plainly.
    b.log_in(&server, "dev", "wrong").await;
    b.click_to(Locator::Css("#submit"), "#login-error").await;
    assert!(b.text("#login-error").await.contains("Wrong user name or password"));

    // dev logs in: sees private/** (any user) and team/x (dev's own).
    b.log_in(&server, "dev", "devpw").await;
    b.shot("login").await;
    b.click_to(Locator::Css("#submit"), "#whoami").await;
    assert!(b.text("#whoami").await.contains("dev"));
    assert_eq!(b.texts("#repositories tbody th").await, ["private/secret", "public/app", "team/x"]);
    b.goto(&server.url("/ui/mirrors")).await;
    assert_eq!(b.texts("#mirrors tbody th").await, ["vendor-app", "team-tools"], "in config order");
    // dev may push team/x, not public/app: one run button.
    let buttons = b.client.find_all(Locator::Css("#mirrors button")).await.unwrap();
    assert_eq!(buttons.len(), 1);
    let waiter = {
        let board = server.board.clone();
        tokio::spawn(async move { board.requested("team-tools").await })
    };
    b.click_to(Locator::Css("#mirrors tr[data-mirror='team-tools'] button"), "#requested").await;
    tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("the run was requested").unwrap();
    b.shot("mirrors").await;

    b.goto(&server.url("/ui/storage")).await;
    let storage = b.texts("#storage tbody th").await;
    assert_eq!(storage, ["private/secret", "public/app", "team/x"]);
    b.shot("storage").await;

    // Logging out: back to what anonymous visitors see.
    b.click_to(Locator::Css("#logout"), "#login-link").await;
    assert_eq!(b.texts("#repositories tbody th").await, ["public/app"]);

    // A form posted without the page's CSRF token is refused.
    let resp = reqwest::Client::new()
        .post(server.url("/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user=dev&password=devpw")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::FORBIDDEN);
    assert!(resp.headers().get("set-cookie").is_none_or(|c| !c.to_str().unwrap().contains("wharf_session=")));

    // Every asset comes from the registry itself.
    for page in ["/ui/", "/ui/repo/public/app", "/ui/repo/public/app/manifest/v1", "/ui/storage"] {
        b.goto(&server.url(page)).await;
        let html = b.source().await;
        for external in ["https://", "http://", "//fonts", "cdn"] {
            let hits: Vec<&str> =
                html.match_indices(external).map(|(i, _)| &html[i..(i + 40).min(html.len())]).collect();
            assert!(hits.iter().all(|h| h.contains(&server.addr)), "{page} refers to {hits:?}");
        }
    }
    b.client.clone().close().await.unwrap();
}

/// Tags with their images put through the metadata store in-process: 10,000 tags in seconds.
async fn seed_tags(registry: &Registry, repo: &str, n: usize) {
    let meta = registry.metadata();
    let repo: RepoName = repo.parse().unwrap();
    let content = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let digest = Digest::sha256_of(content);
    let config: Digest =
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a".parse().unwrap();
    for i in 0..n {
        let tag: Tag = format!("t{i:05}").parse().unwrap();
        meta.put_manifest(NewManifest {
            repo: &repo,
            digest: &digest,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            content,
            subject: None,
            artifact_type: Some("application/vnd.oci.image.config.v1+json"),
            annotations_json: None,
            blob_refs: &[(config.clone(), 2)],
            children: &[],
            tag: Some(&tag),
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_paging_and_a_10000_tag_repository() {
    let server = UiServer::start(None, Vec::new()).await;
    let started = std::time::Instant::now();
    seed_tags(&server.registry, "big/app", 10_000).await;
    eprintln!("seeded 10,000 tags in {:?}", started.elapsed());
    for name in ["alpha/one", "alpha/two", "beta/one", "beta/two", "gamma/one"] {
        seed_tags(&server.registry, name, 1).await;
    }
    let b = Browser::start(1280, 1000).await;

    // Paging through the repositories, three at a time.
    b.goto(&server.url("/ui/?n=3")).await;
    let mut seen = b.texts("#repositories tbody th").await;
    assert_eq!(seen, ["alpha/one", "alpha/two", "beta/one"]);
    assert!(!b.exists("#first-page").await);
    b.click_to(Locator::Css("#next-page"), "#first-page").await;
    seen.extend(b.texts("#repositories tbody th").await);
    assert!(!b.exists("#next-page").await, "two pages hold six repositories");
    assert_eq!(seen, ["alpha/one", "alpha/two", "beta/one", "beta/two", "big/app", "gamma/one"]);

    // Search by typing into the box.
    b.goto(&server.url("/ui/")).await;
    b.client.find(Locator::Css("#q")).await.unwrap().send_keys("ONE").await.unwrap();
    b.click_to(Locator::Css("form.search button"), "#repositories").await;
    assert_eq!(b.texts("#repositories tbody th").await, ["alpha/one", "beta/one", "gamma/one"]);
    b.shot("search").await;
    b.goto(&server.url("/ui/?q=zzz")).await;
    assert!(b.text("#empty").await.contains("No repository"));

    // The 10,000-tag repository: its first page, newest first, and the next.
    let started = std::time::Instant::now();
    b.goto(&server.url("/ui/repo/big/app")).await;
    eprintln!("the first page of 10,000 tags loaded in {:?}", started.elapsed());
    assert!(b.text("#tags caption").await.starts_with("10000 tags"));
    assert_eq!(b.text("#page-of").await, "Page 1 of 200");
    let first = b.texts("#tags tbody th").await;
    assert_eq!(first.len(), 50);
    b.shot("big-repository").await;
    b.click_to(Locator::Css("#next-page"), "#prev-page").await;
    assert_eq!(b.text("#page-of").await, "Page 2 of 200");
    let second = b.texts("#tags tbody th").await;
    assert_eq!(second.len(), 50);
    assert!(second.iter().all(|t| !first.contains(t)), "pages do not overlap");
    // Newest first: the last tags seeded come before the first ones.
    b.goto(&server.url("/ui/repo/big/app?page=200")).await;
    let last = b.texts("#tags tbody th").await;
    assert!(last.contains(&"t00000".to_owned()), "{last:?}");
    b.goto(&server.url("/ui/repo/big/app?q=t09999")).await;
    assert_eq!(b.texts("#tags tbody th").await, ["t09999"]);

    // Phone-sized: the same page, readable (a screenshot for the reviewer).
    b.client.set_window_size(390, 844).await.unwrap();
    b.goto(&server.url("/ui/repo/big/app")).await;
    assert_eq!(b.texts("#tags tbody th").await.len(), 50);
    b.shot("phone-tags").await;
    b.client.clone().close().await.unwrap();
}
