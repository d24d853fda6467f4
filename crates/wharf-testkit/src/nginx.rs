//! A real nginx (Debian's) as a round-robin load balancer in front of several registries, as in
//! a production layout: bodies streamed both ways, no buffering, no size limit.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{free_port, require_tool};

/// A running nginx on `127.0.0.1:<free port>` balancing over `upstreams` in turn. Stopped on drop.
pub struct Nginx {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Child,
    dir: TempDir,
}

impl Nginx {
    /// Round-robin over `upstreams` (`HOST:PORT` each). A request that cannot connect to one
    /// goes to the next (nginx's `proxy_next_upstream error`), as behind any real balancer.
    pub fn round_robin(upstreams: &[String]) -> Nginx {
        let binary = require_tool("nginx");
        let mut dir = tempfile::Builder::new().prefix("wharf-nginx-").tempdir().expect("temp dir");
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            fs::write(dir.path().join("nginx.conf"), config(dir.path(), &addr, upstreams))
                .expect("nginx.conf");
            let child = Command::new(&binary)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(fs::File::create(dir.path().join("stderr.log")).expect("log")))
                .spawn()
                .expect("start nginx");
            let mut nginx = Nginx { addr, child, dir };
            if nginx.wait_ready() {
                return nginx;
            }
            let _ = nginx.child.kill();
            let _ = nginx.child.wait();
            dir = tempfile::Builder::new().prefix("wharf-nginx-").tempdir().expect("temp dir");
        }
        panic!("nginx did not start");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn error_log(&self) -> String {
        let mut log = fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
        log.push_str(&fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default());
        log
    }
}

fn config(dir: &std::path::Path, addr: &str, upstreams: &[String]) -> String {
    let d = dir.display();
    let servers: String = upstreams.iter().map(|u| format!("        server {u} max_fails=0;\n")).collect();
    format!(
        r#"daemon off;
# One process: killing it leaves no orphaned workers holding the port.
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # A client's own X-Forwarded-Proto passes through (tests send one); else this hop's scheme.
    map $http_x_forwarded_proto $forwarded_proto {{
        default $http_x_forwarded_proto;
        "" $scheme;
    }}
    upstream wharf {{
{servers}        keepalive 32;
    }}
    server {{
        listen {addr};
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-Proto $forwarded_proto;
        proxy_next_upstream error;
        proxy_read_timeout 300s;
        proxy_send_timeout 300s;
        location / {{
            proxy_pass http://wharf;
        }}
    }}
}}
"#
    )
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
