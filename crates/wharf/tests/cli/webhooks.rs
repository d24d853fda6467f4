//! `[[webhooks]]` through the real `wharf serve`: the config file wires webhooks to the
//! registry and the deliverer, and a `[[mirrors]]` run sends a `mirror_run` event (beside the
//! `push` events of what it mirrored), signed, to a receiver the test runs on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use wharf_testkit::{Distribution, TestImage};

use crate::server::{Backend, WharfServer};

const SECRET: &str = "cli webhook secret";

/// One POST: its headers (lower-case names) and body.
type Received = (Vec<(String, String)>, Vec<u8>);

/// A minimal HTTP/1.1 receiver on a thread: reads each request, answers 200, closes.
fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            let _ = reader.read_line(&mut line); // the request line
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            let len = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok());
            let mut body = vec![0; len.unwrap_or(0)];
            if reader.read_exact(&mut body).is_ok() {
                sink.lock().unwrap().push((headers, body));
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (addr, got)
}

fn header<'a>(r: &'a Received, name: &str) -> Option<&'a str> {
    r.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn a_mirror_run_and_its_pushes_are_announced() {
    let (addr, got) = receiver();
    let upstream = Distribution::start();
    let v1 = TestImage::builder().seed(71).tag("v1").build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(upstream.client().push_image("vendor/app", &v1)).unwrap();
    let config = format!(
        r#"
[[index_policy.repositories]]
pattern = "mirror/**"
policy = "sparse"

[[mirrors]]
name = "vendor-app"
source = "docker://{}/vendor/app"
tags = ["v1"]
platforms = ["linux/amd64"]
dest = "mirror/app"
interval = "1h"

[[webhooks]]
url = "http://{addr}/hooks"
events = ["push", "mirror_run"]
secret = "{SECRET}"
pattern = "mirror/**"
"#,
        upstream.addr
    );
    let server = WharfServer::start(Backend::Sqlite, &config);

    let deadline = Instant::now() + Duration::from_secs(180);
    let run = loop {
        let found =
            got.lock().unwrap().iter().find(|r| header(r, "x-wharf-event") == Some("mirror_run")).cloned();
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline, "no mirror_run event; server log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(header(&run, "content-type"), Some("application/vnd.docker.distribution.events.v1+json"));
    let signature = header(&run, "x-wharf-signature-256").expect("signed");
    assert_eq!(signature, wharf_server::webhooks::signature(SECRET, &run.1));
    let envelope: Value = serde_json::from_slice(&run.1).unwrap();
    let e = &envelope["events"][0];
    assert_eq!(e["action"], "mirror_run", "{envelope}");
    assert_eq!(e["target"]["mirror"], "vendor-app", "{envelope}");
    assert_eq!(e["target"]["repository"], "mirror/app", "{envelope}");
    let summary = &e["target"]["run"];
    assert_eq!(summary["ok"], true, "{envelope}");
    assert_eq!(summary["images"], 1, "{envelope}");
    assert!(summary["bytes_copied"].as_u64().unwrap() > 0, "{envelope}");

    // The run pushed through the registry's API: the index and the platform it kept, each a
    // push event (the mirror's own pushes count like anyone's).
    let pushes: Vec<Value> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|r| header(r, "x-wharf-event") == Some("push"))
        .map(|r| serde_json::from_slice::<Value>(&r.1).unwrap()["events"][0].clone())
        .collect();
    let digests: Vec<&str> = pushes.iter().filter_map(|e| e["target"]["digest"].as_str()).collect();
    assert!(digests.contains(&v1.index.digest.as_str()), "{pushes:?}");
    assert!(digests.contains(&v1.platform("linux/amd64").manifest.digest.as_str()), "{pushes:?}");
    assert!(pushes.iter().all(|e| e["target"]["repository"] == "mirror/app"), "{pushes:?}");
}
