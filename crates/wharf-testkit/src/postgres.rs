//! A private PostgreSQL server for tests that stop or restart it: never the machine's shared
//! one (other tests use it at the same time). `initdb` and `pg_ctl` from Debian's
//! `/usr/lib/postgresql/<version>/bin`, run as the `postgres` user (`runuser`), in a temporary
//! directory, listening on a free port on 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::{free_port, require_tool};

/// A running private PostgreSQL; stopped (immediately) on drop.
pub struct PrivatePostgres {
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
}

impl PrivatePostgres {
    /// `initdb` (trust auth, user `postgres`), then start. Panics with what to do when the
    /// PostgreSQL server binaries or root (for `runuser`) are missing.
    pub fn start() -> PrivatePostgres {
        let bin = server_bin_dir();
        require_tool("runuser");
        let dir = tempfile::Builder::new().prefix("wharf-pg-").tempdir().expect("temp dir");
        run(
            Command::new("chown").arg("postgres:postgres").arg(dir.path()),
            "chown the data dir to postgres (needs root)",
        );
        let data = dir.path().join("data");
        as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "-D"])
            .arg(&data)
            .output()
            .map(|out| assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr)))
            .expect("initdb");
        for _ in 0..5 {
            let port = free_port();
            if pg_ctl_start(&bin, dir.path(), port) {
                return PrivatePostgres { port, bin, dir };
            }
        }
        panic!(
            "the private PostgreSQL did not start: {}",
            std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
        );
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stop at once (`-m immediate`: connections are cut, as in a crash of the server; what
    /// was committed survives), wait `gap`, start again on the same port.
    pub fn restart(&self, gap: std::time::Duration) {
        self.stop("immediate");
        std::thread::sleep(gap);
        assert!(
            pg_ctl_start(&self.bin, self.dir.path(), self.port),
            "the private PostgreSQL did not start again: {}",
            self.log()
        );
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn stop(&self, mode: &str) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-m", mode, "-D"])
            .arg(self.data())
            .arg("stop")
            .output();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop("immediate");
    }
}

/// `pg_ctl start` on `dir/data`, logging to `dir/log`; `false` if it did not come up.
fn pg_ctl_start(bin: &Path, dir: &Path, port: u16) -> bool {
    let options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=200",
        dir.display()
    );
    as_postgres(&bin.join("pg_ctl"))
        .args(["-w", "-t", "60", "-D"])
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("log"))
        .args(["-o", &options, "start"])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false)
}

/// The newest installed server's `bin` directory.
fn server_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("pg_ctl").is_file() && b.join("initdb").is_file())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    dirs.pop().unwrap_or_else(|| {
        panic!(
            "this test runs a private PostgreSQL server, but /usr/lib/postgresql/*/bin/pg_ctl is not \
             installed: apt-get install -y postgresql"
        )
    })
}

fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(program).current_dir("/");
    cmd
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
}
