//! The OCI distribution-spec conformance suite (v1.1.1, `conformance/` of
//! opencontainers/distribution-spec), replayed against Wharf request for request.
//!
//! The suite cannot run here (no Go toolchain), so this file repeats what it does: the same
//! fixtures built the way `setup.go` builds them, the same requests in the same order
//! (`01_pull_test.go`, `02_push_test.go`, `03_discovery_test.go`, `04_management_test.go`,
//! run by `00_conformance_suite_test.go` in that order against one registry, each workflow
//! relying on what the previous ones left), and the same assertions, accepting exactly the
//! statuses the suite accepts. Every failure message names the suite file and spec.
//!
//! Configuration replayed: all four workflows on, `OCI_AUTOMATIC_CROSSMOUNT=1`, and
//! `OCI_DELETE_MANIFEST_BEFORE_BLOBS` both at its default (true) and false.
//!
//! What the Go client puts on the wire, mirrored by [`Call::send`]:
//! - reggie hands resty every body as an `io.Reader`, which resty passes to net/http
//!   unbuffered: the body goes out with `Transfer-Encoding: chunked` and no Content-Length.
//!   The suite's `SetHeader("Content-Length", …)` calls never reach the wire (net/http does
//!   not write a Content-Length from `Request.Header`); a POST/PUT/PATCH without a body
//!   goes out with `Content-Length: 0`.
//! - query parameters are encoded by `url.Values.Encode`: sorted by key, `:` and `/`
//!   percent-encoded (`digest=sha256%3A…`, `from=a%2Fb`), and appended to any query the
//!   upload `Location` already had.
//! - Locations are followed as `GetRelativeLocation()` makes them: path and query only.

use std::collections::BTreeMap;
use std::fmt;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde::Serialize;
use serde_json::Value;
use wharf_oci::Digest;

use crate::harness::{Backend, Server};

crate::backend_tests!(suite_manifests_deleted_before_blobs, suite_blobs_deleted_before_manifests);

/// The default run: `OCI_DELETE_MANIFEST_BEFORE_BLOBS` unset (true).
async fn suite_manifests_deleted_before_blobs(b: Backend) {
    run_suite(b, true).await;
}

/// `OCI_DELETE_MANIFEST_BEFORE_BLOBS=0`: teardowns delete blobs first.
async fn suite_blobs_deleted_before_manifests(b: Backend) {
    run_suite(b, false).await;
}

async fn run_suite(b: Backend, delete_manifest_before_blobs: bool) {
    let server = Server::start(b).await;
    let mut suite = Suite::new(server, delete_manifest_before_blobs);
    suite.pull().await;
    suite.push().await;
    suite.content_discovery().await;
    suite.content_management().await;
    // The suite only prints these; Wharf implements both features, so they would be regressions.
    assert!(suite.warnings.is_empty(), "the suite would print warnings: {:?}", suite.warnings);
}

const PULL: &str = "01_pull_test.go";
const PUSH: &str = "02_push_test.go";
const DISCOVERY: &str = "03_discovery_test.go";
const MANAGEMENT: &str = "04_management_test.go";

const MANIFEST_V1: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_V1: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG_V1: &str = "application/vnd.oci.image.config.v1+json";
const OCTET: &str = "application/octet-stream";

/// `OCI_NAMESPACE` and the generated `OCI_CROSSMOUNT_NAMESPACE` ("conformance-" + uuid).
const NAMESPACE: &str = "conformance/suite";
const CROSSMOUNT_NAMESPACE: &str = "conformance-7c0e3f5a-2b1d-4e8f-9a6b-1c2d3e4f5a6b";

const TEST_TAG_NAME: &str = "tagtest0";
const EMPTY_LAYER_TEST_TAG: &str = "emptylayer";
const NONEXISTENT_MANIFEST: &str = ".INVALID_MANIFEST_NAME";
const INVALID_MANIFEST_CONTENT: &[u8] = b"blablabla";
const ARTIFACT_TYPE_FILTER: &str = "artifactType";
const TEST_ANNOTATION_KEY: &str = "org.opencontainers.conformance.test";
const REF_ARTIFACT_TYPE_A: &str = "application/vnd.nhl.peanut.butter.bagel";
const REF_ARTIFACT_TYPE_B: &str = "application/vnd.nba.strawberry.jam.croissant";
const REF_ARTIFACT_TYPE_INDEX: &str = "application/vnd.food.stand";

/// setup.go's `layerBase64String`: a gzipped tarball of one small text file.
const LAYER_BASE64: &str = "H4sIAAAAAAAAA+3OQQrCMBCF4a49xXgBSUnaHMCTRBptQRNpp6i3t0UEV7oqIv7fYgbmzeJpHHSjVy0\
WZCa1c/MufWVe94N3RWlrZ72x3k/30nhbFWKWLPU0Dhp6keJ8im//PuU/6pZH2WVtYx8b0Sz7LjWSR5VLG6YRBumSzOlGtjkd+qD\
jMWiX07Befbs7AAAAAAAAAAAAAAAAAPyzO34MnqoAKAAA";

/// The codes `errorCodes` in setup.go lists: what an error body's first code must be one of.
const ERROR_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "MANIFEST_UNVERIFIED",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "TAG_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
];

// ---- fixtures (setup.go, image.go) ------------------------------------------------------

/// image.go's `descriptor`, field for field in Go's order; `omitempty` fields are options.
/// `newUnspecifiedField` has no `omitempty`: a nil value is marshalled as `null`.
#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    new_unspecified_field: Option<String>,
}

impl Descriptor {
    fn of(media_type: &str, content: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: Digest::sha256_of(content).to_string(),
            size: content.len(),
            data: None,
            new_unspecified_field: None,
        }
    }
}

/// image.go's `manifest`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest {
    schema_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'static str>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Descriptor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<&'static str, &'static str>>,
}

/// image.go's `index`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageIndex {
    schema_version: u32,
    media_type: &'static str,
    artifact_type: &'static str,
    manifests: Vec<Descriptor>,
    subject: Descriptor,
    annotations: BTreeMap<&'static str, &'static str>,
}

/// image.go's `image` (a config) and `rootFS`.
#[derive(Serialize)]
struct ImageConfig {
    author: String,
    architecture: &'static str,
    os: &'static str,
    rootfs: RootFs,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

/// `json.MarshalIndent(v, "", "\t")`.
fn go_json(v: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser).unwrap();
    out
}

/// setup.go's `TestBlob`.
#[derive(Clone)]
struct Blob {
    content: Vec<u8>,
    digest: String,
}

impl Blob {
    fn new(content: Vec<u8>) -> Blob {
        Blob { digest: Digest::sha256_of(&content).to_string(), content }
    }
}

/// Everything `init()` in setup.go computes.
struct Fixtures {
    configs: Vec<Blob>,
    manifests: Vec<Blob>,
    layer: Blob,
    empty_layer_manifest: Blob,
    blob_a: Blob,
    blob_b: Blob,
    blob_b_chunk1: Vec<u8>,
    blob_b_chunk1_range: String,
    blob_b_chunk2: Vec<u8>,
    blob_b_chunk2_range: String,
    dummy_digest: String,
    empty_json: Blob,
    ref_blob_a: Blob,
    ref_blob_b: Blob,
    refs_a_config: Blob,
    refs_b_config: Blob,
    refs_a_layer: Blob,
    refs_b_layer: Blob,
    refs_c_layer: Blob,
    refs_index: Blob,
    /// `testAnnotationValues`: digest → the annotation each referrer carries.
    annotation_values: BTreeMap<String, &'static str>,
}

/// A seeded generator standing in for math/rand and crypto/rand: the suite's random
/// contents only need to be unique per run, which a fresh server per test gives us.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// setup.go's `randomString`.
    fn string(&mut self, n: usize) -> String {
        const LETTERS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-";
        (0..n).map(|_| LETTERS[(self.next() % LETTERS.len() as u64) as usize] as char).collect()
    }
}

impl Fixtures {
    fn new() -> Fixtures {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // `numWorkflows` is `1 << 4` in setup.go's const block, hence 16 configs and manifests.
        let num_workflows = 16;
        let configs: Vec<Blob> = (0..num_workflows)
            .map(|_| {
                let config = ImageConfig {
                    author: rng.string(16),
                    architecture: "amd64",
                    os: "linux",
                    rootfs: RootFs { kind: "layers", diff_ids: vec![] },
                };
                Blob::new(go_json(&config))
            })
            .collect();
        let layer = Blob::new(base64_decode(LAYER_BASE64));
        let layers = vec![Descriptor::of("application/vnd.oci.image.layer.v1.tar+gzip", &layer.content)];
        // The config descriptor carries `data` (the config itself) and a field no spec defines.
        let config_descriptor = |c: &Blob| Descriptor {
            data: Some(base64_encode(&c.content)),
            new_unspecified_field: Some(base64_encode(b"hello world")),
            ..Descriptor::of(CONFIG_V1, &c.content)
        };
        let manifests: Vec<Blob> = configs
            .iter()
            .map(|c| {
                Blob::new(go_json(&ImageManifest {
                    schema_version: 2,
                    media_type: Some(MANIFEST_V1),
                    artifact_type: None,
                    config: config_descriptor(c),
                    layers: layers.clone(),
                    subject: None,
                    annotations: None,
                }))
            })
            .collect();
        // No mediaType at all, and no layers.
        let empty_layer_manifest = Blob::new(go_json(&ImageManifest {
            schema_version: 2,
            media_type: None,
            artifact_type: None,
            config: config_descriptor(&configs[1]),
            layers: vec![],
            subject: None,
            annotations: None,
        }));
        let blob_a = Blob::new(rng.bytes(42));
        // setupChunkedBlob(42): chunks of size/2+1 and the rest.
        let blob_b = Blob::new(rng.bytes(42));
        let split = 42 / 2 + 1;
        let blob_b_chunk1 = blob_b.content[..split].to_vec();
        let blob_b_chunk2 = blob_b.content[split..].to_vec();
        let blob_b_chunk1_range = format!("0-{}", blob_b_chunk1.len() - 1);
        let blob_b_chunk2_range = format!("{}-{}", blob_b_chunk1.len(), blob_b.content.len() - 1);

        let empty_json = Blob::new(b"{}".to_vec());
        let empty_json_descriptor = Descriptor::of("application/vnd.oci.empty.v1+json", &empty_json.content);
        let ref_blob_a = Blob::new(b"NHL Peanut Butter on my NHL bagel".to_vec());
        let ref_blob_b = Blob::new(b"NBA Strawberry Jam on my NBA croissant".to_vec());
        let subject_of = |m: &Blob| Descriptor::of(MANIFEST_V1, &m.content);
        let mut annotation_values = BTreeMap::new();
        let mut referrer = |artifact_type: Option<&'static str>,
                            config: Descriptor,
                            layer: Descriptor,
                            subject: &Blob,
                            annotation: Option<&'static str>| {
            let blob = Blob::new(go_json(&ImageManifest {
                schema_version: 2,
                media_type: Some(MANIFEST_V1),
                artifact_type,
                config,
                layers: vec![layer],
                subject: Some(subject_of(subject)),
                annotations: annotation.map(|a| BTreeMap::from([(TEST_ANNOTATION_KEY, a)])),
            }));
            if let Some(a) = annotation {
                annotation_values.insert(blob.digest.clone(), a);
            }
            blob
        };
        // Artifacts whose config media type is the artifact type...
        let refs_a_config = referrer(
            None,
            Descriptor::of(REF_ARTIFACT_TYPE_A, &ref_blob_a.content),
            empty_json_descriptor.clone(),
            &manifests[4],
            Some("test config a"),
        );
        let refs_b_config = referrer(
            None,
            Descriptor::of(REF_ARTIFACT_TYPE_B, &ref_blob_b.content),
            empty_json_descriptor.clone(),
            &manifests[4],
            Some("test config b"),
        );
        // ... artifacts with artifactType and the empty config ...
        let refs_a_layer = referrer(
            Some(REF_ARTIFACT_TYPE_A),
            empty_json_descriptor.clone(),
            Descriptor::of(REF_ARTIFACT_TYPE_A, &ref_blob_a.content),
            &manifests[4],
            Some("test layer a"),
        );
        let refs_b_layer = referrer(
            Some(REF_ARTIFACT_TYPE_B),
            empty_json_descriptor.clone(),
            Descriptor::of(REF_ARTIFACT_TYPE_B, &ref_blob_b.content),
            &manifests[4],
            Some("test layer b"),
        );
        // ... one whose subject (manifests[3]) is not pushed when it is ...
        let refs_c_layer = referrer(
            Some(REF_ARTIFACT_TYPE_B),
            empty_json_descriptor.clone(),
            Descriptor::of(REF_ARTIFACT_TYPE_B, &ref_blob_b.content),
            &manifests[3],
            None,
        );
        // ... and an index artifact over two of them.
        let refs_index = Blob::new(go_json(&ImageIndex {
            schema_version: 2,
            media_type: INDEX_V1,
            artifact_type: REF_ARTIFACT_TYPE_INDEX,
            manifests: vec![
                Descriptor::of(MANIFEST_V1, &refs_a_config.content),
                Descriptor::of(MANIFEST_V1, &refs_a_layer.content),
            ],
            subject: subject_of(&manifests[4]),
            annotations: BTreeMap::from([(TEST_ANNOTATION_KEY, "test index")]),
        }));
        annotation_values.insert(refs_index.digest.clone(), "test index");

        Fixtures {
            configs,
            manifests,
            layer,
            empty_layer_manifest,
            blob_a,
            blob_b,
            blob_b_chunk1,
            blob_b_chunk1_range,
            blob_b_chunk2,
            blob_b_chunk2_range,
            dummy_digest: Digest::sha256_of(b"hello world").to_string(),
            empty_json,
            ref_blob_a,
            ref_blob_b,
            refs_a_config,
            refs_b_config,
            refs_a_layer,
            refs_b_layer,
            refs_c_layer,
            refs_index,
            annotation_values,
        }
    }
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as encoding/json marshals a `[]byte`.
fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        acc = acc << 6 | B64.iter().position(|x| *x == c).expect("base64") as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

// ---- the client (reggie over resty over net/http) ---------------------------------------

/// `url.QueryEscape`.
fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A request as the suite builds it with `client.NewRequest(…).SetHeader(…).SetQueryParam(…)`.
struct Call<'a> {
    suite: &'a Suite,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    query: BTreeMap<&'static str, String>,
    body: Option<Vec<u8>>,
}

impl Call<'_> {
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn query(mut self, key: &'static str, value: &str) -> Self {
        self.query.insert(key, value.to_owned());
        self
    }

    fn body(mut self, body: &[u8]) -> Self {
        self.body = Some(body.to_vec());
        self
    }

    async fn send(self) -> Resp {
        // NewRequest: the path (a relative Location may carry a query) after the root URL;
        // resty then appends the encoded parameters, sorted by key.
        let mut url = format!("{}/{}", self.suite.server.base, self.path.trim_start_matches('/'));
        if !self.query.is_empty() {
            let encoded: Vec<String> =
                self.query.iter().map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v))).collect();
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&encoded.join("&"));
        }
        let mut req = self
            .suite
            .server
            .client
            .request(self.method.clone(), &url)
            .header("user-agent", "distribution-spec-conformance-tests");
        for (name, value) in &self.headers {
            req = req.header(*name, value);
        }
        match self.body {
            Some(body) => {
                let chunk = bytes::Bytes::from(body);
                let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(chunk) });
                // Explicit, or hyper drops the body of a GET rather than chunk it.
                req = req.header("transfer-encoding", "chunked").body(reqwest::Body::wrap_stream(stream));
            }
            None if matches!(self.method, Method::POST | Method::PUT | Method::PATCH) => {
                req = req.header("content-length", "0");
            }
            None => {}
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{} {url}: {e}", self.method));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap().to_vec();
        Resp { request: format!("{} {url}", self.method), status, headers, body }
    }
}

struct Resp {
    request: String,
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {:?} {}",
            self.request,
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl Resp {
    /// `Header().Get`: the first value, or "".
    fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    }

    /// `GetRelativeLocation()`: path and query of the Location header.
    fn relative_location(&self) -> String {
        let base = reqwest::Url::parse("http://registry.invalid/").unwrap();
        match base.join(&self.header("location")) {
            Ok(u) if !self.header("location").is_empty() => match u.query() {
                Some(q) => format!("{}?{q}", u.path()),
                None => u.path().to_owned(),
            },
            _ => String::new(),
        }
    }

    /// `GetAbsoluteLocation()`: the Location header as is.
    fn absolute_location(&self) -> String {
        self.header("location")
    }

    fn is_2xx(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `resp.Errors()`: the `errors` array, which must parse and be non-empty.
    fn errors(&self, spec: &str) -> Vec<Value> {
        let body: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{spec}: error body is not JSON ({e}): {self}"));
        let errors = body["errors"].as_array().cloned().unwrap_or_default();
        assert!(!errors.is_empty(), "{spec}: no errors in the body: {self}");
        for e in &errors {
            assert!(e["code"].is_string(), "{spec}: code is not a string: {self}");
            assert!(e["message"].is_null() || e["message"].is_string(), "{spec}: message: {self}");
        }
        errors
    }
}

/// `Expect(status).To(Equal(want))`.
fn expect_status(spec: &str, resp: &Resp, want: u16) {
    assert_eq!(resp.status, want, "{spec}: {resp}");
}

/// `SatisfyAny(Equal(a), Equal(b), …)`.
fn expect_any(spec: &str, resp: &Resp, accepted: &[u16]) {
    assert!(accepted.contains(&resp.status), "{spec}: status not in {accepted:?}: {resp}");
}

/// `SatisfyAll(BeNumerically(">=", 200), BeNumerically("<", 300))`.
fn expect_2xx(spec: &str, resp: &Resp) {
    assert!(resp.is_2xx(), "{spec}: status not 2xx: {resp}");
}

/// A 2xx, or one of `also`: the accepted statuses of the teardown deletes.
fn expect_2xx_or(spec: &str, resp: &Resp, also: &[u16]) {
    assert!(resp.is_2xx() || also.contains(&resp.status), "{spec}: status not 2xx nor in {also:?}: {resp}");
}

fn expect_location(spec: &str, resp: &Resp) {
    assert!(!resp.header("location").is_empty(), "{spec}: no Location: {resp}");
}

/// `Docker-Content-Digest`, when present, must be `want`.
fn expect_digest_if_present(spec: &str, resp: &Resp, want: &str) {
    let h = resp.header("docker-content-digest");
    assert!(h.is_empty() || h == want, "{spec}: Docker-Content-Digest {h} is not {want}: {resp}");
}

/// The `index` the referrers endpoint answers, as the suite unmarshals it.
fn referrers_index(spec: &str, resp: &Resp) -> Vec<Value> {
    expect_status(spec, resp, 200);
    assert_eq!(resp.header("content-type"), INDEX_V1, "{spec}: Content-Type: {resp}");
    let index: Value =
        serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("{spec}: not JSON ({e}): {resp}"));
    match &index["manifests"] {
        Value::Null => vec![],
        m => m.as_array().unwrap_or_else(|| panic!("{spec}: manifests is not an array: {resp}")).clone(),
    }
}

/// `getTagList`: the tags, or nothing when the body does not parse.
fn tag_list(resp: &Resp) -> Vec<String> {
    serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|v| v["tags"].as_array().cloned())
        .map(|t| t.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

// ---- the suite ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Phase {
    Manifests,
    Blobs,
}

struct Suite {
    server: Server,
    fx: Fixtures,
    delete_manifest_before_blobs: bool,
    /// What the suite's `Warn(…)` would print.
    warnings: Vec<String>,
}

impl Suite {
    fn new(server: Server, delete_manifest_before_blobs: bool) -> Suite {
        Suite { server, fx: Fixtures::new(), delete_manifest_before_blobs, warnings: Vec::new() }
    }

    /// `client.NewRequest(method, path)` in the default namespace: `<name>` is replaced.
    fn call(&self, method: Method, path: &str) -> Call<'_> {
        self.call_in(NAMESPACE, method, path)
    }

    /// `client.NewRequest(method, path, reggie.WithName(name))`.
    fn call_in(&self, name: &str, method: Method, path: &str) -> Call<'_> {
        Call {
            suite: self,
            method,
            path: path.replace("<name>", name),
            headers: Vec::new(),
            query: BTreeMap::new(),
            body: None,
        }
    }

    /// The setup pushes: POST a session, then PUT the whole blob to its relative Location.
    async fn populate_blob(&self, spec: &str, blob: &Blob) {
        let resp = self.call(Method::POST, "/v2/<name>/blobs/uploads/").send().await;
        let resp = self
            .call(Method::PUT, &resp.relative_location())
            .query("digest", &blob.digest)
            .header("content-type", OCTET)
            .body(&blob.content)
            .send()
            .await;
        expect_2xx(spec, &resp);
    }

    async fn put_manifest(&self, reference: &str, media_type: &str, content: &[u8]) -> Resp {
        self.call(Method::PUT, &format!("/v2/<name>/manifests/{reference}"))
            .header("content-type", media_type)
            .body(content)
            .send()
            .await
    }

    /// `OCI_DELETE_MANIFEST_BEFORE_BLOBS`: the order the teardowns delete in.
    fn teardown_order(&self) -> [Phase; 2] {
        if self.delete_manifest_before_blobs {
            [Phase::Manifests, Phase::Blobs]
        } else {
            [Phase::Blobs, Phase::Manifests]
        }
    }

    async fn delete(&self, what: &str, reference: &str) -> Resp {
        self.call(Method::DELETE, &format!("/v2/<name>/{what}/{reference}")).send().await
    }

    // ---- 01_pull_test.go ----------------------------------------------------------------

    async fn pull(&self) {
        let fx = &self.fx;
        let spec = |s: &str| format!("{PULL}: Pull: {s}");

        // Setup
        self.populate_blob(&spec("Setup: Populate registry with test blob"), &fx.configs[0]).await;
        self.populate_blob(&spec("Setup: Populate registry with test blob"), &fx.configs[1]).await;
        self.populate_blob(&spec("Setup: Populate registry with test layer"), &fx.layer).await;
        let tag = TEST_TAG_NAME;
        let resp = self.put_manifest(tag, MANIFEST_V1, &fx.manifests[0].content).await;
        expect_2xx(&spec("Setup: Populate registry with test manifest"), &resp);
        let resp = self.put_manifest(&fx.manifests[1].digest, MANIFEST_V1, &fx.manifests[1].content).await;
        expect_2xx(&spec("Setup: Populate registry with test manifest"), &resp);

        // Pull blobs
        let s = spec("Pull blobs: HEAD request to nonexistent blob should result in 404 response");
        let resp = self.call(Method::HEAD, &format!("/v2/<name>/blobs/{}", fx.dummy_digest)).send().await;
        expect_status(&s, &resp, 404);

        let s = spec("Pull blobs: HEAD request to existing blob should yield 200");
        let resp =
            self.call(Method::HEAD, &format!("/v2/<name>/blobs/{}", fx.configs[0].digest)).send().await;
        expect_status(&s, &resp, 200);
        expect_digest_if_present(&s, &resp, &fx.configs[0].digest);

        let s = spec("Pull blobs: GET nonexistent blob should result in 404 response");
        let resp = self.call(Method::GET, &format!("/v2/<name>/blobs/{}", fx.dummy_digest)).send().await;
        expect_status(&s, &resp, 404);

        let s = spec("Pull blobs: GET request to existing blob URL should yield 200");
        let resp = self.call(Method::GET, &format!("/v2/<name>/blobs/{}", fx.configs[0].digest)).send().await;
        expect_status(&s, &resp, 200);

        // Pull manifests
        let s = spec("Pull manifests: HEAD request to nonexistent manifest should return 404");
        let resp =
            self.call(Method::HEAD, &format!("/v2/<name>/manifests/{NONEXISTENT_MANIFEST}")).send().await;
        expect_status(&s, &resp, 404);

        for (i, name) in [(0, "manifest[0]"), (1, "manifest[1]")] {
            let s = spec(&format!(
                "Pull manifests: HEAD request to {name} path (digest) should yield 200 response"
            ));
            let resp = self
                .call(Method::HEAD, &format!("/v2/<name>/manifests/{}", fx.manifests[i].digest))
                .header("accept", MANIFEST_V1)
                .send()
                .await;
            expect_status(&s, &resp, 200);
            expect_digest_if_present(&s, &resp, &fx.manifests[i].digest);
        }

        let s = spec("Pull manifests: HEAD request to manifest path (tag) should yield 200 response");
        let resp = self
            .call(Method::HEAD, &format!("/v2/<name>/manifests/{tag}"))
            .header("accept", MANIFEST_V1)
            .send()
            .await;
        expect_status(&s, &resp, 200);
        expect_digest_if_present(&s, &resp, &fx.manifests[0].digest);

        let s = spec("Pull manifests: GET nonexistent manifest should return 404");
        let resp =
            self.call(Method::GET, &format!("/v2/<name>/manifests/{NONEXISTENT_MANIFEST}")).send().await;
        expect_status(&s, &resp, 404);

        for (i, name) in [(0, "manifest[0]"), (1, "manifest[1]")] {
            let s = spec(&format!(
                "Pull manifests: GET request to {name} path (digest) should yield 200 response"
            ));
            let resp = self
                .call(Method::GET, &format!("/v2/<name>/manifests/{}", fx.manifests[i].digest))
                .header("accept", MANIFEST_V1)
                .send()
                .await;
            expect_status(&s, &resp, 200);
        }

        let s = spec("Pull manifests: GET request to manifest path (tag) should yield 200 response");
        let resp = self
            .call(Method::GET, &format!("/v2/<name>/manifests/{tag}"))
            .header("accept", MANIFEST_V1)
            .send()
            .await;
        expect_status(&s, &resp, 200);

        // Error codes: a GET carrying a Content-Type and a body (resty v2.1 hands net/http the
        // reader whatever the method; net/http sends it chunked).
        let s = spec("Error codes: 400 response body should contain OCI-conforming JSON message");
        let resp = self
            .call(Method::GET, "/v2/<name>/manifests/sha256:totallywrong")
            .header("content-type", MANIFEST_V1)
            .body(INVALID_MANIFEST_CONTENT)
            .send()
            .await;
        expect_any(&s, &resp, &[400, 404]);
        if resp.status == 400 {
            let errors = resp.errors(&s);
            let code = errors[0]["code"].as_str().unwrap();
            assert!(ERROR_CODES.contains(&code), "{s}: code {code} is not one of the spec's: {resp}");
        }

        // Teardown
        for phase in self.teardown_order() {
            match phase {
                Phase::Manifests => {
                    for (i, name) in [(0, "manifest[0]"), (1, "manifest[1]")] {
                        let s = spec(&format!("Teardown: Delete {name} created in setup"));
                        let resp = self.delete("manifests", &fx.manifests[i].digest).await;
                        expect_2xx_or(&s, &resp, &[405]);
                    }
                }
                Phase::Blobs => {
                    for (blob, name) in [
                        (&fx.configs[0], "config[0] blob"),
                        (&fx.configs[1], "config[1] blob"),
                        (&fx.layer, "layer blob"),
                    ] {
                        let s = spec(&format!("Teardown: Delete {name} created in setup"));
                        let resp = self.delete("blobs", &blob.digest).await;
                        expect_2xx_or(&s, &resp, &[404, 405]);
                    }
                }
            }
        }
    }

    // ---- 02_push_test.go ----------------------------------------------------------------

    async fn push(&mut self) {
        let fx = &self.fx;
        let spec = |s: &str| format!("{PUSH}: Push: {s}");

        // Blob Upload Streamed
        let s = spec("Blob Upload Streamed: PATCH request with blob in body should yield 202 response");
        let resp = self.call(Method::POST, "/v2/<name>/blobs/uploads/").send().await;
        expect_location(&s, &resp);
        let resp = self
            .call(Method::PATCH, &resp.relative_location())
            .header("content-type", OCTET)
            .body(&fx.blob_a.content)
            .send()
            .await;
        expect_status(&s, &resp, 202);
        let last = resp;

        let s =
            spec("Blob Upload Streamed: PUT request to session URL with digest should yield 201 response");
        let resp = self
            .call(Method::PUT, &last.relative_location())
            .query("digest", &fx.blob_a.digest)
            .header("content-type", OCTET)
            .send()
            .await;
        expect_status(&s, &resp, 201);
        expect_location(&s, &resp);

        // Blob Upload Monolithic
        let s = spec("Blob Upload Monolithic: GET nonexistent blob should result in 404 response");
        let resp = self.call(Method::GET, &format!("/v2/<name>/blobs/{}", fx.dummy_digest)).send().await;
        expect_status(&s, &resp, 404);

        let s = spec("Blob Upload Monolithic: POST request with digest and blob should yield a 201 or 202");
        let resp = self
            .call(Method::POST, "/v2/<name>/blobs/uploads/")
            .header("content-type", OCTET)
            .query("digest", &fx.configs[1].digest)
            .body(&fx.configs[1].content)
            .send()
            .await;
        expect_location(&s, &resp);
        expect_any(&s, &resp, &[201, 202]);
        let last = resp;

        let s = spec(
            "Blob Upload Monolithic: GET request to blob URL from prior request should yield 200 or 404 based on response code",
        );
        let resp = self.call(Method::GET, &format!("/v2/<name>/blobs/{}", fx.configs[1].digest)).send().await;
        expect_status(&s, &resp, if last.status == 202 { 404 } else { 200 });

        let s = spec("Blob Upload Monolithic: POST request should yield a session ID");
        let resp = self.call(Method::POST, "/v2/<name>/blobs/uploads/").send().await;
        expect_status(&s, &resp, 202);
        let last = resp;

        let s = spec("Blob Upload Monolithic: PUT upload of a blob should yield a 201 Response");
        let resp = self
            .call(Method::PUT, &last.relative_location())
            .header("content-type", OCTET)
            .query("digest", &fx.configs[1].digest)
            .body(&fx.configs[1].content)
            .send()
            .await;
        expect_location(&s, &resp);
        expect_status(&s, &resp, 201);

        let s = spec("Blob Upload Monolithic: GET request to existing blob should yield 200 response");
        let resp = self.call(Method::GET, &format!("/v2/<name>/blobs/{}", fx.configs[1].digest)).send().await;
        expect_status(&s, &resp, 200);

        let s = spec("Blob Upload Monolithic: PUT upload of a layer blob should yield a 201 Response");
        let resp = self.call(Method::POST, "/v2/<name>/blobs/uploads/").send().await;
        let resp = self
            .call(Method::PUT, &resp.relative_location())
            .header("content-type", OCTET)
            .query("digest", &fx.layer.digest)
            .body(&fx.layer.content)
            .send()
            .await;
        expect_location(&s, &resp);
        expect_status(&s, &resp, 201);

        let s = spec("Blob Upload Monolithic: GET request to existing layer should yield 200 response");
        let resp = self.call(Method::GET, &format!("/v2/<name>/blobs/{}", fx.layer.digest)).send().await;
        expect_status(&s, &resp, 200);

        // Blob Upload Chunked
        let s = spec("Blob Upload Chunked: Out-of-order blob upload should return 416");
        let resp = self.call(Method::POST, "/v2/<name>/blobs/uploads/").send().await;
        expect_location(&s, &resp);
        // The suite rebuilds its 42-byte blob when the registry asks for larger chunks.
        let min = resp.header("oci-chunk-min-length");
        assert!(
            min.is_empty() || min.parse::<usize>().is_ok_and(|m| m <= fx.blob_b_chunk1.len()),
            "{s}: OCI-Chunk-Min-Length {min:?} would change the suite's chunk sizes: {resp}"
        );
        let resp = self
            .call(Method::PATCH, &resp.relative_location())
            .header("content-type", OCTET)
            .header("content-range", &fx.blob_b_chunk2_range)
            .body(&fx.blob_b_chunk2)
            .send()
            .await;
        expect_status(&s, &resp, 416);

        let s = spec("Blob Upload Chunked: PATCH request with first chunk should return 202");
        let resp = self.call(Method::POST, "/v2/<name>/blobs/uploads/").send().await;
        expect_location(&s, &resp);
        let prev = resp;
        let resp = self
            .call(Method::PATCH, &prev.relative_location())
            .header("content-type", OCTET)
            .header("content-range", &fx.blob_b_chunk1_range)
            .body(&fx.blob_b_chunk1)
            .send()
            .await;
        expect_status(&s, &resp, 202);
        assert_eq!(resp.header("range"), fx.blob_b_chunk1_range, "{s}: Range: {resp}");

        let s = spec("Blob Upload Chunked: Retry previous blob chunk should return 416");
        let resp = self
            .call(Method::PATCH, &prev.relative_location())
            .header("content-type", OCTET)
            .header("content-range", &fx.blob_b_chunk1_range)
            .body(&fx.blob_b_chunk1)
            .send()
            .await;
        expect_status(&s, &resp, 416);

        let s =
            spec("Blob Upload Chunked: Get on stale blob upload should return 204 with a range and location");
        let resp = self.call(Method::GET, &prev.relative_location()).send().await;
        expect_status(&s, &resp, 204);
        expect_location(&s, &resp);
        assert_eq!(resp.header("range"), fx.blob_b_chunk1_range, "{s}: Range: {resp}");
        let last = resp;

        let s = spec("Blob Upload Chunked: PATCH request with second chunk should return 202");
        let resp = self
            .call(Method::PATCH, &last.relative_location())
            .header("content-range", &fx.blob_b_chunk2_range)
            .header("content-type", OCTET)
            .body(&fx.blob_b_chunk2)
            .send()
            .await;
        expect_status(&s, &resp, 202);
        expect_location(&s, &resp);
        let last = resp;

        let s = spec("Blob Upload Chunked: PUT request with digest should return 201");
        let resp = self
            .call(Method::PUT, &last.relative_location())
            .header("content-type", OCTET)
            .query("digest", &fx.blob_b.digest)
            .send()
            .await;
        expect_status(&s, &resp, 201);
        expect_location(&s, &resp);

        // Cross-Repository Blob Mount
        let s = spec(
            "Cross-Repository Blob Mount: Cross-mounting of a blob without the from argument should yield session id",
        );
        let resp = self
            .call_in(CROSSMOUNT_NAMESPACE, Method::POST, "/v2/<name>/blobs/uploads/")
            .query("mount", &fx.dummy_digest)
            .send()
            .await;
        expect_status(&s, &resp, 202);
        assert!(!resp.absolute_location().is_empty(), "{s}: no Location: {resp}");

        let s = spec(
            "Cross-Repository Blob Mount: POST request to mount another repository's blob should return 201 or 202",
        );
        let resp = self
            .call_in(CROSSMOUNT_NAMESPACE, Method::POST, "/v2/<name>/blobs/uploads/")
            .query("mount", &fx.blob_a.digest)
            .query("from", NAMESPACE)
            .send()
            .await;
        expect_any(&s, &resp, &[201, 202]);
        let last = resp;

        if last.status == 201 {
            let s = spec(
                "Cross-Repository Blob Mount: GET request to test digest within cross-mount namespace should return 200",
            );
            let want = format!("/v2/{CROSSMOUNT_NAMESPACE}/blobs/{}", fx.blob_a.digest);
            assert_eq!(last.relative_location(), want, "{s}: {last}");
            let resp = self.call(Method::GET, &last.relative_location()).send().await;
            expect_status(&s, &resp, 200);

            // OCI_AUTOMATIC_CROSSMOUNT=1: the "disabled should return a 202" spec is skipped.
            let s = spec(
                "Cross-Repository Blob Mount: Cross-mounting without from, and automatic content discovery enabled should return a 201",
            );
            let resp = self
                .call_in(CROSSMOUNT_NAMESPACE, Method::POST, "/v2/<name>/blobs/uploads/")
                .query("mount", &fx.blob_a.digest)
                .send()
                .await;
            expect_status(&s, &resp, 201);
        } else {
            let s = spec(
                "Cross-Repository Blob Mount: Cross-mounting of nonexistent blob should yield session id",
            );
            let want = format!("/v2/{CROSSMOUNT_NAMESPACE}/blobs/uploads/");
            assert!(last.relative_location().starts_with(&want), "{s}: {last}");
        }

        // Manifest Upload
        let s = spec("Manifest Upload: GET nonexistent manifest should return 404");
        let resp =
            self.call(Method::GET, &format!("/v2/<name>/manifests/{NONEXISTENT_MANIFEST}")).send().await;
        expect_status(&s, &resp, 404);

        let s = spec("Manifest Upload: PUT should accept a manifest upload");
        for i in 0..4 {
            let resp = self.put_manifest(&format!("test{i}"), MANIFEST_V1, &fx.manifests[1].content).await;
            expect_location(&s, &resp);
            expect_status(&s, &resp, 201);
        }

        let s = spec("Manifest Upload: Registry should accept a manifest upload with no layers");
        let resp =
            self.put_manifest(EMPTY_LAYER_TEST_TAG, MANIFEST_V1, &fx.empty_layer_manifest.content).await;
        let empty_layer_manifest_ref = if resp.status == 201 {
            expect_location(&s, &resp);
            resp.header("location")
        } else {
            self.warnings.push(format!("{s}: image manifest with no layers is not supported: {resp}"));
            String::new()
        };
        let fx = &self.fx;

        let s = spec("Manifest Upload: GET request to manifest URL (digest) should yield 200 response");
        let resp = self
            .call(Method::GET, &format!("/v2/<name>/manifests/{}", fx.manifests[1].digest))
            .header("accept", MANIFEST_V1)
            .send()
            .await;
        expect_status(&s, &resp, 200);

        // Teardown
        for phase in self.teardown_order() {
            match phase {
                Phase::Manifests => {
                    let s = spec("Teardown: Delete manifest created in tests");
                    let resp = self.delete("manifests", &fx.manifests[1].digest).await;
                    expect_2xx_or(&s, &resp, &[405]);
                    if !empty_layer_manifest_ref.is_empty() {
                        let resp = self.delete("manifests", &fx.empty_layer_manifest.digest).await;
                        expect_2xx_or(&s, &resp, &[405]);
                    }
                }
                Phase::Blobs => {
                    for (blob, s) in [
                        (&fx.configs[1], spec("Teardown: Delete config blob created in tests")),
                        (&fx.layer, spec("Teardown: Delete layer blob created in setup")),
                    ] {
                        let resp = self.delete("blobs", &blob.digest).await;
                        expect_2xx_or(&s, &resp, &[404, 405]);
                    }
                }
            }
        }
    }

    // ---- 03_discovery_test.go -----------------------------------------------------------

    async fn content_discovery(&mut self) {
        let fx = &self.fx;
        let spec = |s: &str| format!("{DISCOVERY}: Content Discovery: {s}");

        // Setup
        self.populate_blob(&spec("Setup: Populate registry with test blob"), &fx.configs[2]).await;
        self.populate_blob(&spec("Setup: Populate registry with test layer"), &fx.layer).await;
        let s = spec("Setup: Populate registry with test tags");
        for i in 0..4 {
            let resp = self.put_manifest(&format!("test{i}"), MANIFEST_V1, &fx.manifests[2].content).await;
            expect_2xx(&s, &resp);
        }
        let resp = self.call(Method::GET, "/v2/<name>/tags/list").send().await;
        let _ = tag_list(&resp);

        let s = spec("Setup: References setup");
        assert_eq!(
            fx.empty_json.digest, "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "{s}"
        );
        self.populate_blob(&s, &fx.empty_json).await;
        // The reference blob before the image manifest is pushed.
        self.populate_blob(&s, &fx.ref_blob_a).await;
        let subject = &fx.manifests[4].digest;
        for (m, media_type) in
            [(&fx.refs_a_config, MANIFEST_V1), (&fx.refs_a_layer, MANIFEST_V1), (&fx.refs_index, INDEX_V1)]
        {
            let resp = self.put_manifest(&m.digest, media_type, &m.content).await;
            expect_2xx(&s, &resp);
            assert_eq!(&resp.header("oci-subject"), subject, "{s}: OCI-Subject: {resp}");
        }
        self.populate_blob(&s, &fx.configs[4]).await;
        self.populate_blob(&s, &fx.layer).await;
        let resp = self.put_manifest(TEST_TAG_NAME, MANIFEST_V1, &fx.manifests[4].content).await;
        expect_2xx(&s, &resp);
        // The reference blob after the image manifest is pushed.
        self.populate_blob(&s, &fx.ref_blob_b).await;
        for m in [&fx.refs_b_config, &fx.refs_b_layer] {
            let resp = self.put_manifest(&m.digest, MANIFEST_V1, &m.content).await;
            expect_2xx(&s, &resp);
            assert_eq!(&resp.header("oci-subject"), subject, "{s}: OCI-Subject: {resp}");
        }
        // An artifact whose subject does not exist.
        let resp = self.put_manifest(&fx.refs_c_layer.digest, MANIFEST_V1, &fx.refs_c_layer.content).await;
        expect_2xx(&s, &resp);
        assert_eq!(resp.header("oci-subject"), fx.manifests[3].digest, "{s}: OCI-Subject: {resp}");

        // Test content discovery endpoints (listing tags)
        let s = spec(
            "Test content discovery endpoints (listing tags): GET request to list tags should yield 200 response",
        );
        let resp = self.call(Method::GET, "/v2/<name>/tags/list").send().await;
        expect_status(&s, &resp, 200);
        let num_tags = tag_list(&resp).len();

        let s = spec(
            "Test content discovery endpoints (listing tags): GET number of tags should be limitable by `n` query parameter",
        );
        let num_results = num_tags / 2;
        let resp =
            self.call(Method::GET, "/v2/<name>/tags/list").query("n", &num_results.to_string()).send().await;
        expect_status(&s, &resp, 200);
        assert_eq!(tag_list(&resp).len(), num_results, "{s}: {resp}");

        let s = spec(
            "Test content discovery endpoints (listing tags): GET start of tag is set by `last` query parameter",
        );
        let resp =
            self.call(Method::GET, "/v2/<name>/tags/list").query("n", &num_results.to_string()).send().await;
        let tags = tag_list(&resp);
        assert!(tags.len() >= num_results, "{s}: the suite indexes tagList[{}]: {resp}", num_results - 1);
        let resp = self
            .call(Method::GET, "/v2/<name>/tags/list")
            .query("n", &num_results.to_string())
            .query("last", &tags[num_results - 1])
            .send()
            .await;
        expect_status(&s, &resp, 200);
        // As the suite has it: these two look at the first page (it does not re-read the second).
        assert!(tags.len() <= num_results, "{s}: {resp}");
        assert!(tags.contains(&tags[num_results - 1]), "{s}: {resp}");

        // Test content discovery endpoints (listing references)
        let s = spec(
            "Test content discovery endpoints (listing references): GET request to nonexistent blob should result in empty 200 response",
        );
        let resp = self.call(Method::GET, &format!("/v2/<name>/referrers/{}", fx.dummy_digest)).send().await;
        let manifests = referrers_index(&s, &resp);
        assert!(manifests.is_empty(), "{s}: {resp}");

        let s = spec(
            "Test content discovery endpoints (listing references): GET request to existing blob should yield 200",
        );
        let resp =
            self.call(Method::GET, &format!("/v2/<name>/referrers/{}", fx.manifests[4].digest)).send().await;
        let manifests = referrers_index(&s, &resp);
        assert_eq!(manifests.len(), 5, "{s}: {resp}");
        assert_ne!(manifests[0]["digest"], manifests[1]["digest"], "{s}: {resp}");
        self.expect_referrer_annotations(&s, &resp, &manifests);

        let s = spec(
            "Test content discovery endpoints (listing references): GET request to existing blob with filter should yield 200",
        );
        let resp = self
            .call(Method::GET, &format!("/v2/<name>/referrers/{}", fx.manifests[4].digest))
            .query("artifactType", REF_ARTIFACT_TYPE_A)
            .send()
            .await;
        let manifests = referrers_index(&s, &resp);
        if !resp.header("oci-filters-applied").is_empty() {
            assert_eq!(manifests.len(), 2, "{s}: {resp}");
            assert_eq!(resp.header("oci-filters-applied"), ARTIFACT_TYPE_FILTER, "{s}: {resp}");
        } else {
            assert_eq!(manifests.len(), 5, "{s}: {resp}");
            self.warnings.push(format!("{s}: filtering by artifact-type is not implemented"));
        }
        self.expect_referrer_annotations(&s, &resp, &manifests);
        let fx = &self.fx;

        let s = spec(
            "Test content discovery endpoints (listing references): GET request to missing manifest should yield 200",
        );
        let resp =
            self.call(Method::GET, &format!("/v2/<name>/referrers/{}", fx.manifests[3].digest)).send().await;
        let manifests = referrers_index(&s, &resp);
        assert_eq!(manifests.len(), 1, "{s}: {resp}");
        assert_eq!(manifests[0]["digest"], fx.refs_c_layer.digest.as_str(), "{s}: {resp}");

        // Teardown
        for phase in self.teardown_order() {
            match phase {
                Phase::Manifests => {
                    let s = spec("Teardown: Delete created manifest & associated tags");
                    // `testTagName` goes in as a <digest>: a tag delete, by then of a deleted tag.
                    for reference in [
                        &fx.refs_index.digest,
                        &fx.manifests[2].digest,
                        &fx.manifests[4].digest,
                        &fx.refs_a_config.digest,
                        &fx.refs_a_layer.digest,
                        TEST_TAG_NAME,
                        &fx.refs_b_config.digest,
                        &fx.refs_b_layer.digest,
                        &fx.refs_c_layer.digest,
                    ] {
                        let resp = self.delete("manifests", reference).await;
                        expect_2xx_or(&s, &resp, &[405, 404]);
                    }
                }
                Phase::Blobs => {
                    // Unlike the other teardowns, 404 is not accepted for these two.
                    let resp = self.delete("blobs", &fx.configs[2].digest).await;
                    expect_2xx_or(&spec("Teardown: Delete config blob created in tests"), &resp, &[405]);
                    let resp = self.delete("blobs", &fx.layer.digest).await;
                    expect_2xx_or(&spec("Teardown: Delete layer blob created in setup"), &resp, &[405]);
                }
            }
        }

        let s = spec("Teardown: References teardown");
        for phase in self.teardown_order() {
            match phase {
                Phase::Manifests => {
                    for reference in [
                        &fx.refs_index.digest,
                        &fx.refs_a_config.digest,
                        &fx.refs_a_layer.digest,
                        &fx.manifests[4].digest,
                        &fx.refs_b_config.digest,
                        &fx.refs_b_layer.digest,
                    ] {
                        let resp = self.delete("manifests", reference).await;
                        expect_2xx_or(&s, &resp, &[405, 404]);
                    }
                }
                Phase::Blobs => {
                    for blob in [&fx.configs[4], &fx.ref_blob_a, &fx.ref_blob_b, &fx.empty_json] {
                        let resp = self.delete("blobs", &blob.digest).await;
                        expect_2xx_or(&s, &resp, &[405, 404]);
                    }
                }
            }
        }
    }

    /// Every referrer carries exactly the one annotation its manifest was pushed with.
    fn expect_referrer_annotations(&self, spec: &str, resp: &Resp, manifests: &[Value]) {
        for m in manifests {
            let annotations = m["annotations"].as_object().cloned().unwrap_or_default();
            assert_eq!(annotations.len(), 1, "{spec}: annotations of {}: {resp}", m["digest"]);
            let digest = m["digest"].as_str().unwrap_or("");
            let want = self.fx.annotation_values.get(digest).copied().unwrap_or("");
            assert_eq!(annotations[TEST_ANNOTATION_KEY], want, "{spec}: annotation of {digest}: {resp}");
        }
    }

    // ---- 04_management_test.go ----------------------------------------------------------

    async fn content_management(&self) {
        let fx = &self.fx;
        let spec = |s: &str| format!("{MANAGEMENT}: Content Management: {s}");

        // Setup
        self.populate_blob(&spec("Setup: Populate registry with test config blob"), &fx.configs[3]).await;
        self.populate_blob(&spec("Setup: Populate registry with test layer"), &fx.layer).await;
        let tag_to_delete = TEST_TAG_NAME;
        let resp = self.put_manifest(tag_to_delete, MANIFEST_V1, &fx.manifests[3].content).await;
        expect_2xx(&spec("Setup: Populate registry with test tag"), &resp);

        let s = spec("Setup: Check how many tags there are before anything gets deleted");
        let resp = self.call(Method::GET, "/v2/<name>/tags/list").send().await;
        expect_status(&s, &resp, 200);
        let body: Value = serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("{s}: {e}: {resp}"));
        let num_tags = body["tags"].as_array().map_or(0, Vec::len);

        // Manifest delete
        let s = spec(
            "Manifest delete: DELETE request to manifest tag should return 202, unless tag deletion is disallowed (400/405)",
        );
        let resp = self.delete("manifests", tag_to_delete).await;
        expect_any(&s, &resp, &[400, 202, 405]);
        if resp.status == 400 {
            assert_eq!(resp.errors(&s)[0]["code"], "UNSUPPORTED", "{s}: {resp}");
        }

        let s = spec(
            "Manifest delete: DELETE request to manifest (digest) should yield 202 response unless already deleted",
        );
        let resp = self.delete("manifests", &fx.manifests[3].digest).await;
        expect_any(&s, &resp, &[202, 404]);

        let s = spec(
            "Manifest delete: GET request to deleted manifest URL should yield 404 response, unless delete is disallowed",
        );
        let resp =
            self.call(Method::GET, &format!("/v2/<name>/manifests/{}", fx.manifests[3].digest)).send().await;
        expect_any(&s, &resp, &[404, 200]);

        let s = spec("Manifest delete: GET request to tags list should reflect manifest deletion");
        let resp = self.call(Method::GET, "/v2/<name>/tags/list").send().await;
        expect_status(&s, &resp, 200);
        let body: Value = serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("{s}: {e}: {resp}"));
        let now = body["tags"].as_array().map_or(0, Vec::len);
        assert!(now < num_tags, "{s}: {now} tags, {num_tags} before: {resp}");

        // Blob delete
        let s = spec("Blob delete: DELETE request to blob URL should yield 202 response");
        let resp = self.delete("blobs", &fx.configs[3].digest).await;
        expect_any(&s, &resp, &[202, 404, 405]);
        let resp = self.delete("blobs", &fx.layer.digest).await;
        expect_any(&s, &resp, &[202, 404, 405]);
        let blob_delete_allowed = resp.status != 405;

        if blob_delete_allowed {
            let s = spec("Blob delete: GET request to deleted blob URL should yield 404 response");
            let resp =
                self.call(Method::GET, &format!("/v2/<name>/blobs/{}", fx.configs[3].digest)).send().await;
            expect_status(&s, &resp, 404);
        }
    }
}
