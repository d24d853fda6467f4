//! htpasswd files with bcrypt hashes (`htpasswd -B`), the format distribution and nginx read.

use std::collections::HashMap;
use std::fmt;

/// A malformed htpasswd file. Messages name the line and the user, never a hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("htpasswd line {line}: {reason}")]
pub struct HtpasswdError {
    pub line: usize,
    pub reason: String,
}

/// Users and their bcrypt hashes.
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// A hash at the file's highest cost, checked for unknown users so that a wrong user
    /// name takes as long to refuse as a wrong password.
    dummy: Option<String>,
}

impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&str> = self.users().collect();
        users.sort_unstable();
        f.debug_struct("Htpasswd").field("users", &users).finish_non_exhaustive()
    }
}

/// The cost of a bcrypt hash (`$2y$NN$` + 53 characters), if it is one.
/// The highest bcrypt cost accepted, as `htpasswd -B -C`: about 10 s per check.
const MAX_COST: u32 = 17;

fn bcrypt_cost(hash: &str) -> Option<u32> {
    let rest = ["$2y$", "$2b$", "$2a$", "$2x$"].iter().find_map(|p| hash.strip_prefix(p))?;
    let (cost, salt_and_hash) = rest.split_once('$')?;
    let cost: u32 = cost.parse().ok().filter(|c| (4..=31).contains(c))?;
    (cost > 0 && salt_and_hash.len() == 53 && salt_and_hash.is_ascii()).then_some(cost)
}

/// How a non-bcrypt hash starts, for the error message (without revealing the hash).
fn scheme_of(hash: &str) -> &str {
    if hash.starts_with("$apr1$") {
        "$apr1$ (MD5)"
    } else if hash.starts_with("{SHA}") {
        "{SHA} (SHA-1)"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "crypt SHA-2"
    } else if hash.starts_with('$') {
        "an unsupported or malformed $-prefixed hash"
    } else {
        "crypt or plain text"
    }
}

impl Htpasswd {
    /// Parse `user:hash` lines; blank lines and `#` comments are skipped. Every hash must be
    /// bcrypt; the cost is whatever the file says.
    pub fn parse(text: &str) -> Result<Htpasswd, HtpasswdError> {
        let mut users = HashMap::new();
        let mut max_cost = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let err = |reason: String| HtpasswdError { line, reason };
            let Some((user, hash)) = trimmed.split_once(':') else {
                return Err(err("expected user:hash".into()));
            };
            if user.is_empty() {
                return Err(err("empty user name".into()));
            }
            let hash = hash.trim();
            let Some(cost) = bcrypt_cost(hash) else {
                return Err(err(format!(
                    "user {user:?}: only bcrypt hashes are supported (create the file with `htpasswd -B`), \
                     this one is {}",
                    scheme_of(hash)
                )));
            };
            if cost > MAX_COST {
                // Each step doubles the work: at 31 one login (and the start) takes days.
                return Err(err(format!(
                    "user {user:?}: bcrypt cost {cost} is above {MAX_COST} (`htpasswd -B -C` accepts 4 to \
                     {MAX_COST}); every login would take minutes or more"
                )));
            }
            if users.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(err(format!("user {user:?} appears twice")));
            }
            max_cost = max_cost.max(Some(cost));
        }
        let dummy = match max_cost {
            // An unguessable password: nothing verifies against it.
            Some(cost) => Some(
                bcrypt::hash(random_hex(16), cost)
                    .map_err(|e| HtpasswdError { line: 0, reason: format!("bcrypt: {e}") })?,
            ),
            None => None,
        };
        Ok(Htpasswd { users, dummy })
    }

    /// One `user:hash` line as `htpasswd -B -C cost` writes it (bcrypt, `$2y$`).
    pub fn hash_line(user: &str, password: &str, cost: u32) -> Result<String, HtpasswdError> {
        let bad = |reason: String| HtpasswdError { line: 0, reason };
        if user.is_empty() || user.contains(':') || user.contains('\n') {
            return Err(bad(format!("{user:?} is not a user name")));
        }
        let hash = bcrypt::hash_with_result(password, cost).map_err(|e| bad(format!("bcrypt: {e}")))?;
        Ok(format!("{user}:{}", hash.format_for_version(bcrypt::Version::TwoY)))
    }

    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Is `password` the password of `user`? Costs one bcrypt computation whether or not the
    /// user exists (the hash comparison itself is constant-time in `bcrypt`).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match (self.users.get(user), &self.dummy) {
            (Some(h), _) => (h.as_str(), true),
            (None, Some(d)) => (d.as_str(), false),
            (None, None) => return false,
        };
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        ok && known
    }
}

/// `n` random bytes from the OS, hex-encoded.
pub(crate) fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    crate::fill_random(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(user: &str, password: &str) -> String {
        let hash = bcrypt::hash_with_salt(password, 4, [7u8; 16]).unwrap();
        format!("{user}:{}", hash.format_for_version(bcrypt::Version::TwoY))
    }

    #[test]
    fn parses_and_verifies_bcrypt_lines() {
        let text = format!(
            "# users\n\n{}\n  {}  \r\n",
            line("ci", "pw"),
            // `htpasswd -B` writes $2y$; other bcrypt prefixes are accepted too.
            line("admin", "s3cret").replace("$2y$", "$2b$")
        );
        let h = Htpasswd::parse(&text).unwrap();
        assert_eq!(h.len(), 2);
        assert!(h.verify("ci", "pw"));
        assert!(!h.verify("ci", "PW"));
        assert!(!h.verify("ci", ""));
        assert!(h.verify("admin", "s3cret"));
        assert!(!h.verify("admin", "pw"));
        assert!(!h.verify("nobody", "pw"));
        assert!(!format!("{h:?}").contains("$2"), "Debug must not show hashes: {h:?}");
    }

    #[test]
    fn writes_lines_it_reads() {
        let l = Htpasswd::hash_line("ci", "pw", 4).unwrap();
        assert!(l.starts_with("ci:$2y$04$"), "{l}");
        assert!(Htpasswd::parse(&l).unwrap().verify("ci", "pw"));
        assert!(Htpasswd::hash_line("a:b", "pw", 4).is_err());
        assert!(Htpasswd::hash_line("a", "pw", 3).is_err());
    }

    #[test]
    fn verifies_a_hash_of_higher_cost() {
        let hash = bcrypt::hash("longer-password", 6).unwrap();
        let h = Htpasswd::parse(&format!("u:{hash}")).unwrap();
        assert!(h.verify("u", "longer-password"));
        assert!(!h.verify("u", "longer-passwor"));
    }

    #[test]
    fn refuses_a_cost_no_login_could_afford() {
        // Parsing hashes a dummy at the file's highest cost: cost 31 would hang the start.
        let four = line("u", "pw");
        let slow = four.replace("$2y$04$", "$2y$31$");
        let e = Htpasswd::parse(&format!("# x\n{slow}")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("cost 31") && e.reason.contains("17"), "{e}");
        assert!(Htpasswd::parse(&four.replace("$2y$04$", "$2y$18$")).is_err());
    }

    #[test]
    fn refuses_other_hashes_and_nonsense() {
        let md5 = Htpasswd::parse("ci:$apr1$abc$def").unwrap_err();
        assert_eq!(md5.line, 1);
        assert!(md5.reason.contains("htpasswd -B") && md5.reason.contains("apr1"), "{md5}");
        assert!(!md5.reason.contains("def"), "the hash is not echoed: {md5}");
        assert!(Htpasswd::parse("ci:{SHA}abc=").unwrap_err().reason.contains("SHA-1"));
        assert!(Htpasswd::parse("just-a-name").is_err());
        assert!(Htpasswd::parse(&format!(":{}", &line("x", "y")[2..])).is_err());
        let dup = format!("{}\n{}", line("a", "1"), line("a", "2"));
        assert_eq!(Htpasswd::parse(&dup).unwrap_err().line, 2);
        // A truncated hash is not bcrypt.
        let l = line("a", "1");
        assert!(Htpasswd::parse(&l[..l.len() - 1]).is_err());
    }

    #[test]
    fn empty_file_has_no_users() {
        let h = Htpasswd::parse("# nobody yet\n").unwrap();
        assert!(h.is_empty());
        assert!(!h.verify("a", "b"));
    }
}
