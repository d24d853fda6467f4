//! A real OpenLDAP server (Debian's `slapd`) with its own config and a small directory, for
//! the LDAP login tests: `dc=example,dc=org` with `ou=people` (inetOrgPerson users, cleartext
//! `userPassword`), `ou=groups` (groupOfNames) and a search account under `ou=services`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{free_port, require_tool, run_ok};

pub const LDAP_BASE: &str = "dc=example,dc=org";
pub const LDAP_PEOPLE: &str = "ou=people,dc=example,dc=org";
pub const LDAP_GROUPS: &str = "ou=groups,dc=example,dc=org";
/// The search account and its password.
pub const LDAP_BIND_DN: &str = "cn=wharf,ou=services,dc=example,dc=org";
pub const LDAP_BIND_PASSWORD: &str = "wharf-search-pw";

/// What the directory holds, and whether slapd also speaks TLS.
#[derive(Default)]
pub struct SlapdBuilder {
    users: Vec<(String, String)>,
    groups: Vec<(String, Vec<String>)>,
    tls: bool,
}

impl SlapdBuilder {
    /// `uid=NAME,ou=people,...` with this password.
    pub fn user(mut self, uid: &str, password: &str) -> Self {
        self.users.push((uid.into(), password.into()));
        self
    }

    /// `cn=NAME,ou=groups,...` whose members are these users (by uid).
    pub fn group(mut self, cn: &str, members: &[&str]) -> Self {
        self.groups.push((cn.into(), members.iter().map(|m| m.to_string()).collect()));
        self
    }

    /// Also listen with ldaps:// and offer StartTLS, with a self-signed certificate for
    /// 127.0.0.1 ([`Slapd::ca_file`]).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    pub fn start(self) -> Slapd {
        let binary = require_tool("slapd");
        let slapadd = require_tool("slapadd");
        for _ in 0..5 {
            let dir = tempfile::Builder::new().prefix("wharf-slapd-").tempdir().expect("temp dir");
            let d = dir.path();
            fs::create_dir(d.join("db")).expect("db dir");
            if self.tls {
                self_signed(d);
            }
            fs::write(d.join("slapd.conf"), config(d, self.tls)).expect("slapd.conf");
            fs::write(d.join("data.ldif"), self.ldif()).expect("data.ldif");
            run_ok(
                Command::new(&slapadd).arg("-f").arg(d.join("slapd.conf")).arg("-l").arg(d.join("data.ldif")),
            );
            let port = free_port();
            let url = format!("ldap://127.0.0.1:{port}");
            let ldaps_url = self.tls.then(|| format!("ldaps://127.0.0.1:{}", free_port()));
            let listen = match &ldaps_url {
                Some(s) => format!("{url}/ {s}/"),
                None => format!("{url}/"),
            };
            // `-d 0`: stay in the foreground (a child we can kill), log nothing extra.
            let child = Command::new(&binary)
                .arg("-f")
                .arg(d.join("slapd.conf"))
                .args(["-h", &listen, "-d", "0"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(fs::File::create(d.join("stderr.log")).expect("log")))
                .spawn()
                .expect("start slapd");
            let mut slapd = Slapd { url, ldaps_url, child, dir, stopped: false };
            if slapd.wait_ready() {
                return slapd;
            }
            let _ = slapd.child.kill();
            let _ = slapd.child.wait();
        }
        panic!("slapd did not start");
    }

    fn ldif(&self) -> String {
        let mut out = format!(
            "dn: {LDAP_BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: {LDAP_PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: {LDAP_GROUPS}\nobjectClass: organizationalUnit\nou: groups\n\n\
             dn: ou=services,{LDAP_BASE}\nobjectClass: organizationalUnit\nou: services\n\n\
             dn: {LDAP_BIND_DN}\nobjectClass: person\ncn: wharf\nsn: wharf\nuserPassword: {LDAP_BIND_PASSWORD}\n\n"
        );
        for (uid, password) in &self.users {
            let _ = write!(
                out,
                "dn: uid={uid},{LDAP_PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n\
                 userPassword: {password}\n\n"
            );
        }
        for (cn, members) in &self.groups {
            let _ = write!(out, "dn: cn={cn},{LDAP_GROUPS}\nobjectClass: groupOfNames\ncn: {cn}\n");
            // groupOfNames needs a member: an empty group holds the search account.
            if members.is_empty() {
                let _ = writeln!(out, "member: {LDAP_BIND_DN}");
            }
            for m in members {
                let _ = writeln!(out, "member: uid={m},{LDAP_PEOPLE}");
            }
            out.push('\n');
        }
        out
    }
}

/// A running slapd on loopback. Killed on drop.
pub struct Slapd {
    /// `ldap://127.0.0.1:PORT` (StartTLS offered when started with TLS).
    pub url: String,
    /// `ldaps://127.0.0.1:PORT` when started with TLS.
    pub ldaps_url: Option<String>,
    child: Child,
    dir: TempDir,
    stopped: bool,
}

impl Slapd {
    pub fn builder() -> SlapdBuilder {
        SlapdBuilder::default()
    }

    /// The DN of a user of [`SlapdBuilder::user`].
    pub fn user_dn(uid: &str) -> String {
        format!("uid={uid},{LDAP_PEOPLE}")
    }

    /// The certificate to trust for ldaps/StartTLS (PEM), when started with TLS.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.ldaps_url.as_ref().map(|_| self.dir.path().join("cert.pem"))
    }

    fn wait_ready(&mut self) -> bool {
        let addrs: Vec<String> = std::iter::once(&self.url)
            .chain(&self.ldaps_url)
            .map(|u| u.split("://").nth(1).unwrap_or_default().to_owned())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if addrs.iter().all(|a| std::net::TcpStream::connect(a).is_ok()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGKILL: the directory is gone (connections are refused).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the port still accepts connections but nothing answers (a hung directory).
    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.stopped = true;
    }

    /// SIGCONT after [`Slapd::pause`].
    pub fn resume(&mut self) {
        self.signal("-CONT");
        self.stopped = false;
    }

    fn signal(&self, sig: &str) {
        run_ok(Command::new("kill").args([sig, &self.child.id().to_string()]));
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if self.stopped {
            self.resume();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for 127.0.0.1 (`cert.pem`, `key.pem` in `dir`). Not a CA
/// certificate: rustls refuses a CA certificate as a server's own.
fn self_signed(dir: &Path) {
    run_ok(
        Command::new(require_tool("openssl"))
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem")),
    );
}

fn config(dir: &Path, tls: bool) -> String {
    let d = dir.display();
    let tls = if tls {
        format!("TLSCertificateFile {d}/cert.pem\nTLSCertificateKeyFile {d}/key.pem\n")
    } else {
        String::new()
    };
    format!(
        r#"include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
{tls}
database mdb
maxsize 10485760
suffix "{LDAP_BASE}"
rootdn "cn=admin,{LDAP_BASE}"
directory {d}/db
# Passwords: only for binding. Everything else: readable by the search account and users.
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
"#
    )
}
