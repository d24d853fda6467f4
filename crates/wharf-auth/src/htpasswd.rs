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

/// The highest bcrypt cost accepted. Each step doubles the work: cost 14 is about a second
/// per check on one core, 31 would be days (and a check per request in a pull).
pub const MAX_COST: u32 = 14;

/// Users and their bcrypt hashes.
///
/// Every check does the work of one bcrypt at the file's highest cost, whoever asks: an
/// unknown user costs a hash at that cost, a user whose hash is cheaper gets the difference
/// in extra hashing. So the time to answer does not tell whether a user exists, or which
/// cost their hash has.
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// The highest cost in the file.
    max_cost: u32,
}

impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&str> = self.users().collect();
        users.sort_unstable();
        f.debug_struct("Htpasswd").field("users", &users).finish_non_exhaustive()
    }
}

/// The cost of a bcrypt hash (`$2y$NN$` + 53 characters), if it is one.
fn bcrypt_cost(hash: &str) -> Option<u32> {
    let rest = ["$2y$", "$2b$", "$2a$", "$2x$"].iter().find_map(|p| hash.strip_prefix(p))?;
    let (cost, salt_and_hash) = rest.split_once('$')?;
    if cost.len() != 2 || !cost.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let cost: u32 = cost.parse().ok().filter(|c| *c >= 4)?;
    (salt_and_hash.len() == 53 && salt_and_hash.is_ascii()).then_some(cost)
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
    /// bcrypt, of cost at most [`MAX_COST`].
    pub fn parse(text: &str) -> Result<Htpasswd, HtpasswdError> {
        let mut users = HashMap::new();
        let mut max_cost = 0;
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
                return Err(err(format!(
                    "user {user:?}: bcrypt cost {cost} is above the highest accepted, {MAX_COST} \
                     (each step doubles the time of every login); rehash it with `htpasswd -B -C 12`"
                )));
            }
            if users.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(err(format!("user {user:?} appears twice")));
            }
            max_cost = max_cost.max(cost);
        }
        Ok(Htpasswd { users, max_cost })
    }

    /// The costs in the file, lowest first, with how many users have each.
    pub fn costs(&self) -> Vec<(u32, usize)> {
        let mut by_cost = std::collections::BTreeMap::new();
        for hash in self.users.values() {
            if let Some(c) = bcrypt_cost(hash) {
                *by_cost.entry(c).or_insert(0) += 1;
            }
        }
        by_cost.into_iter().collect()
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

    /// Is `password` the password of `user`? Does the work of one bcrypt at the file's
    /// highest cost whether or not the user exists (see [`Htpasswd`]); the comparison of
    /// hashes is constant-time in `bcrypt`.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.verify_counting(user, password, &mut |_| ())
    }

    /// [`verify`](Self::verify), telling `ran` the cost of each bcrypt computation it does.
    fn verify_counting(&self, user: &str, password: &str, ran: &mut dyn FnMut(u32)) -> bool {
        if self.users.is_empty() {
            return false;
        }
        let (ok, cost) = match self.users.get(user) {
            Some(hash) => {
                let cost = bcrypt_cost(hash).unwrap_or(self.max_cost);
                ran(cost);
                (bcrypt::verify(password, hash).unwrap_or(false), cost)
            }
            None => {
                // A hash at the highest cost, of nothing anyone compares.
                ran(self.max_cost);
                let _ = bcrypt::hash_with_salt(password, self.max_cost, PAD_SALT);
                return false;
            }
        };
        // 2^c + 2^c + 2^(c+1) + ... + 2^(max-1) = 2^max rounds in all.
        for pad in cost..self.max_cost {
            ran(pad);
            let _ = bcrypt::hash_with_salt(password, pad, PAD_SALT);
        }
        ok
    }
}

/// The salt of the hashes computed only to spend time (their result is thrown away).
const PAD_SALT: [u8; 16] = *b"wharf-timing-pad";

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

    /// `user:hash` at `cost` (fixed salt: fast to make in tests).
    fn line_at(user: &str, password: &str, cost: u32) -> String {
        let hash = bcrypt::hash_with_salt(password, cost, [9u8; 16]).unwrap();
        format!("{user}:{}", hash.format_for_version(bcrypt::Version::TwoY))
    }

    /// The bcrypt rounds (2^cost, added up) one check does.
    fn work(h: &Htpasswd, user: &str, password: &str) -> (bool, u64) {
        let mut rounds = 0u64;
        let ok = h.verify_counting(user, password, &mut |cost| rounds += 1 << cost);
        (ok, rounds)
    }

    #[test]
    fn every_check_costs_the_same_whoever_asks() {
        // Mixed costs: the review measured 4.5 ms for a known user and 491 ms for an unknown
        // one. Now each check does 2^7 rounds: the cheap user pays the difference.
        let text = format!("{}\n{}\n", line_at("cheap", "pw1", 4), line_at("dear", "pw2", 7));
        let h = Htpasswd::parse(&text).unwrap();
        assert_eq!(h.costs(), vec![(4, 1), (7, 1)]);
        let checks = [
            work(&h, "cheap", "pw1"),
            work(&h, "cheap", "wrong"),
            work(&h, "dear", "pw2"),
            work(&h, "dear", "wrong"),
            work(&h, "nobody", "pw1"),
            work(&h, "", ""),
        ];
        let oks: Vec<bool> = checks.iter().map(|c| c.0).collect();
        assert_eq!(oks, [true, false, true, false, false, false]);
        for (ok, rounds) in checks {
            assert_eq!(rounds, 1 << 7, "ok={ok}");
        }
        // One cost everywhere: one hash per check, known or not.
        let h = Htpasswd::parse(&line_at("ci", "pw", 5)).unwrap();
        assert_eq!(work(&h, "ci", "pw"), (true, 1 << 5));
        assert_eq!(work(&h, "other", "pw"), (false, 1 << 5));
    }

    #[test]
    fn refuses_costs_above_the_bound_at_load() {
        // Cost 31 used to hang start-up (a dummy hash at the file's highest cost was made
        // there); now the line is refused, naming the line and not the hash.
        let fake = |cost: u32| format!("big:$2y${cost:02}${}", "a".repeat(53));
        let text = format!("{}\n# comment\n{}\n", line("ci", "pw"), fake(31));
        let e = Htpasswd::parse(&text).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("cost 31") && e.reason.contains("14"), "{e}");
        assert!(!e.to_string().contains("aaaa"), "the hash is not echoed: {e}");
        assert!(Htpasswd::parse(&fake(15)).is_err());
        assert_eq!(Htpasswd::parse(&fake(MAX_COST)).unwrap().len(), 1);
        // Not two digits, or below 4: not bcrypt at all.
        assert!(Htpasswd::parse(&format!("x:$2y$4${}", "a".repeat(53))).is_err());
        assert!(Htpasswd::parse(&format!("x:$2y$03${}", "a".repeat(53))).is_err());
        assert!(Htpasswd::parse(&format!("x:$2y$+9${}", "a".repeat(53))).is_err());
    }

    #[test]
    fn empty_file_has_no_users() {
        let h = Htpasswd::parse("# nobody yet\n").unwrap();
        assert!(h.is_empty());
        assert!(!h.verify("a", "b"));
    }
}
