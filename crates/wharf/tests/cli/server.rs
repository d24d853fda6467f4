//! Runs the real `wharf serve` binary on a free loopback port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wharf_testkit::free_port;

pub struct WharfServer {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
    database: Option<String>,
    data_dir: std::path::PathBuf,
}

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// The config file names the database (replicas sharing a [`SharedDatabase`]).
    FromConfig,
}

/// A PostgreSQL database that several servers share (replicas), dropped at the end.
pub struct SharedDatabase {
    pub url: String,
    name: String,
}

impl SharedDatabase {
    pub fn create() -> SharedDatabase {
        let name = format!("wharf_shared_{}_{}", std::process::id(), free_port());
        psql(&format!("CREATE DATABASE {name}"));
        SharedDatabase { url: format!("{POSTGRES}/{name}"), name }
    }
}

impl Drop for SharedDatabase {
    fn drop(&mut self) {
        psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql must be installed (postgresql-client)");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
}

impl WharfServer {
    /// Start `wharf serve` with `config` (TOML) on a fresh data dir; on PostgreSQL, in a
    /// database of its own that is dropped afterwards.
    pub fn start(backend: Backend, config: &str) -> WharfServer {
        WharfServer::launch(backend, config, &[], false, None)
    }

    /// [`WharfServer::start`] on a data directory the test prepared (and cleans up), e.g. a
    /// small tmpfs.
    pub fn start_in(backend: Backend, config: &str, data_dir: &std::path::Path) -> WharfServer {
        WharfServer::launch(backend, config, &[], false, Some(data_dir.to_owned()))
    }

    /// [`WharfServer::start`] for a server that serves HTTPS (`[tls]` in `config`, or the
    /// `--tls-cert`/`--tls-key` flags in `args`): readiness is checked over TLS.
    pub fn start_tls(backend: Backend, config: &str, args: &[&std::ffi::OsStr]) -> WharfServer {
        WharfServer::launch(backend, config, args, true, None)
    }

    fn launch(
        backend: Backend,
        config: &str,
        args: &[&std::ffi::OsStr],
        tls: bool,
        data_dir: Option<std::path::PathBuf>,
    ) -> WharfServer {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = data_dir.unwrap_or_else(|| dir.path().join("data"));
        let config_path = dir.path().join("wharf.toml");
        std::fs::write(&config_path, config).unwrap();
        let (database, db_name) = match backend {
            Backend::Sqlite | Backend::FromConfig => (None, None),
            Backend::Postgres => {
                let name = format!("wharf_it_{}_{}", std::process::id(), free_port());
                psql(&format!("CREATE DATABASE {name}"));
                (Some(format!("{POSTGRES}/{name}")), Some(name))
            }
        };
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
            cmd.args(["serve", "--config"])
                .arg(&config_path)
                .args(["--addr", &addr, "--data-dir"])
                .arg(&data_dir)
                .env("WHARF_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(dir.path().join("server.log")).unwrap()));
            if let Some(db) = &database {
                cmd.args(["--database", db]);
            }
            cmd.args(args);
            let mut child = cmd.spawn().expect("spawn wharf");
            let ready = if tls { wait_ready_tls(&addr, &mut child) } else { wait_ready(&addr, &mut child) };
            if ready {
                return WharfServer { addr, child, _dir: dir, database: db_name, data_dir };
            }
            let _ = child.kill();
        }
        panic!(
            "wharf serve did not start: {}",
            std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// The `--data-dir` the server runs with (blobs under `storage/`, SQLite `metadata.db`).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.data_dir.clone()
    }

    /// The PostgreSQL database of this server (`None` on SQLite).
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn docker_ref(&self, rest: &str) -> String {
        format!("docker://{}/{rest}", self.addr)
    }

    /// SIGKILL: the process dies wherever it is, as when a machine is lost.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (at most 5 s) for the exit: `None` if it did not exit in time.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn wait_ready(addr: &str, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = [0u8; 16];
            // 401: a registry with [auth] challenges a request without credentials.
            let up = |b: &[u8]| b.starts_with(b"HTTP/1.1 200") || b.starts_with(b"HTTP/1.1 401");
            if s.read(&mut buf).is_ok_and(|n| n > 0 && up(&buf)) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// [`wait_ready`] over HTTPS (curl, certificate not verified).
fn wait_ready_tls(addr: &str, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2"])
            .arg(format!("https://{addr}/v2/"))
            .output()
            .expect("curl must be installed");
        if matches!(String::from_utf8_lossy(&out.stdout).trim(), "200" | "401") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Drop for WharfServer {
    fn drop(&mut self) {
        // SIGTERM first: the server must shut down gracefully.
        if !matches!(self.child.try_wait(), Ok(Some(_))) && self.terminate().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(db) = &self.database {
            psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}
