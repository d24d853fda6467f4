//! Index policy: which children of an index must be present when the index is pushed,
//! chosen per repository by the first matching pattern.

use wharf_oci::{Descriptor, Platform, RepoName, media_types};

/// What a repository requires of an index's children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexRule {
    /// Every child must be present (the OCI default; what other registries do).
    Complete,
    /// Children may be absent.
    Sparse,
    /// These platforms must be present where the index lists them; others may be absent.
    Require(Vec<Platform>),
}

impl IndexRule {
    pub fn allows_sparse(&self) -> bool {
        !matches!(self, IndexRule::Complete)
    }

    /// Must this child be present for the index to be accepted?
    pub fn requires(&self, child: &Descriptor) -> bool {
        match self {
            IndexRule::Complete => true,
            IndexRule::Sparse => false,
            IndexRule::Require(platforms) => {
                // Nested indexes and children without a real platform (buildx attestations
                // are `unknown/unknown`) are required only under `complete`.
                if media_types::is_index(&child.media_type) {
                    return false;
                }
                match &child.platform {
                    Some(p) if !p.is_unknown() => platforms.iter().any(|want| want.selects(p)),
                    _ => false,
                }
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            IndexRule::Complete => "complete".into(),
            IndexRule::Sparse => "sparse".into(),
            IndexRule::Require(p) => {
                let list: Vec<String> = p.iter().map(|p| p.to_string()).collect();
                format!("require [{}]", list.join(", "))
            }
        }
    }
}

/// A repository pattern: `*` matches within one path segment, `**` across segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPattern(String);

impl RepoPattern {
    pub fn new(pattern: &str) -> RepoPattern {
        RepoPattern(pattern.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, repo: &RepoName) -> bool {
        let pattern: Vec<&str> = self.0.split('/').collect();
        let name: Vec<&str> = repo.as_str().split('/').collect();
        match_segments(&pattern, &name)
    }
}

/// `**` as a whole segment spans zero or more segments; other segments are matched by
/// `segment_glob`.
fn match_segments(pattern: &[&str], name: &[&str]) -> bool {
    wildcard_match(pattern, name, |p| *p == "**", |p, n| segment_glob(p.as_bytes(), n.as_bytes()))
}

/// `*` matches any run of characters within one segment.
fn segment_glob(p: &[u8], s: &[u8]) -> bool {
    wildcard_match(p, s, |c| *c == b'*', |c, b| c == b)
}

/// Whether `pattern` matches `text`, where an element for which `is_star` holds matches any
/// run of elements and every other one matches one element for which `one` holds. Greedy,
/// going back only to the latest star: O(pattern × text) steps. (Trying every split at every
/// star, as this did before, took exponential time in the number of stars: the config fuzz
/// target found a pattern of a few dozen `*` that never finished.)
fn wildcard_match<P, T>(
    pattern: &[P],
    text: &[T],
    is_star: impl Fn(&P) -> bool,
    one: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut p, mut t) = (0, 0);
    // After the latest star: where the pattern resumes, and the text position it took so far.
    let mut resume: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && is_star(&pattern[p]) {
            p += 1;
            resume = Some((p, t));
        } else if p < pattern.len() && one(&pattern[p], &text[t]) {
            p += 1;
            t += 1;
        } else if let Some((rp, rt)) = resume {
            // The star takes one more element; the rest of the pattern tries again after it.
            p = rp;
            t = rt + 1;
            resume = Some((rp, rt + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(is_star)
}

/// The configured policy: ordered rules, first match wins, else the default.
#[derive(Debug, Clone)]
pub struct IndexPolicy {
    pub default: IndexRule,
    pub repositories: Vec<(RepoPattern, IndexRule)>,
}

impl Default for IndexPolicy {
    fn default() -> Self {
        IndexPolicy { default: IndexRule::Complete, repositories: Vec::new() }
    }
}

impl IndexPolicy {
    pub fn rule_for(&self, repo: &RepoName) -> &IndexRule {
        self.repositories.iter().find(|(p, _)| p.matches(repo)).map(|(_, r)| r).unwrap_or(&self.default)
    }

    /// May any repository hold a sparse index? (`X-Sparse-Manifest-Support` on `/v2/`.)
    pub fn any_sparse(&self) -> bool {
        self.default.allows_sparse() || self.repositories.iter().any(|(_, r)| r.allows_sparse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn many_stars_match_in_linear_steps_and_correctly() {
        // Found by the config fuzz target: this never finished with the old matcher.
        let stars = "*".repeat(40);
        assert!(!RepoPattern::new(&format!("{stars}x{stars}")).matches(&repo(&"a".repeat(60))));
        assert!(
            RepoPattern::new(&format!("{stars}a{stars}"))
                .matches(&repo(&"b".repeat(60).replace("bbbb", "bbab")))
        );
        let deep = vec!["**"; 30].join("/");
        assert!(!RepoPattern::new(&format!("{deep}/x/{deep}")).matches(&repo(&vec!["a"; 30].join("/"))));
        assert!(RepoPattern::new(&format!("{deep}/a*/{deep}")).matches(&repo("b/b/ab/b")));
        // The usual shapes still behave.
        for (pattern, name, want) in [
            ("a*c", "abc", true),
            ("a*c", "ab", false),
            ("*", "", false),
            ("a**b", "ab", true),
            ("*b*", "abc", true),
            ("mirror/*/app", "mirror/x/app", true),
            ("mirror/*/app", "mirror/x/y/app", false),
            ("mirror/**/app", "mirror/app", true),
            ("mirror/**/app", "mirror/x/y/app", true),
            ("mirror/**", "mirror", true),
            ("**/app", "a/b/app", true),
            ("**/app", "a/b/apps", false),
        ] {
            if let Ok(r) = name.parse::<RepoName>() {
                assert_eq!(RepoPattern::new(pattern).matches(&r), want, "{pattern} vs {name}");
            }
        }
    }

    #[test]
    fn patterns() {
        let p = RepoPattern::new("mirror/**");
        assert!(p.matches(&repo("mirror/a")));
        assert!(p.matches(&repo("mirror/a/b/c")));
        assert!(!p.matches(&repo("mirrors/a")));
        assert!(!p.matches(&repo("other/mirror/a")));
        let p = RepoPattern::new("team/*/app");
        assert!(p.matches(&repo("team/x/app")));
        assert!(!p.matches(&repo("team/x/y/app")));
        let p = RepoPattern::new("**/app");
        assert!(p.matches(&repo("a/b/app")));
        assert!(RepoPattern::new("*").matches(&repo("single")));
        assert!(!RepoPattern::new("*").matches(&repo("two/segments")));
        assert!(RepoPattern::new("**").matches(&repo("two/segments")));
        assert!(RepoPattern::new("exact/name").matches(&repo("exact/name")));
    }

    #[test]
    fn first_match_wins() {
        let policy = IndexPolicy {
            default: IndexRule::Complete,
            repositories: vec![
                (RepoPattern::new("mirror/strict/**"), IndexRule::Complete),
                (RepoPattern::new("mirror/**"), IndexRule::Sparse),
            ],
        };
        assert_eq!(policy.rule_for(&repo("mirror/strict/x")), &IndexRule::Complete);
        assert_eq!(policy.rule_for(&repo("mirror/x")), &IndexRule::Sparse);
        assert_eq!(policy.rule_for(&repo("x")), &IndexRule::Complete);
        assert!(policy.any_sparse());
        assert!(!IndexPolicy::default().any_sparse());
    }

    fn child(platform: Option<&str>, media_type: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: wharf_oci::Digest::sha256_of(b"x"),
            size: 1,
            urls: None,
            annotations: None,
            platform: platform.map(|p| p.parse().unwrap()),
            artifact_type: None,
            data: None,
        }
    }

    #[test]
    fn require_counts_variants_and_skips_attestations() {
        let rule = IndexRule::Require(vec!["linux/amd64".parse().unwrap(), "linux/arm/v7".parse().unwrap()]);
        let m = media_types::OCI_MANIFEST;
        assert!(rule.requires(&child(Some("linux/amd64"), m)));
        assert!(rule.requires(&child(Some("linux/arm/v7"), m)));
        assert!(!rule.requires(&child(Some("linux/arm/v6"), m)));
        assert!(!rule.requires(&child(Some("linux/s390x"), m)));
        assert!(!rule.requires(&child(Some("unknown/unknown"), m)));
        assert!(!rule.requires(&child(None, m)));
        assert!(!rule.requires(&child(Some("linux/amd64"), media_types::OCI_INDEX)));
        assert!(IndexRule::Complete.requires(&child(None, m)));
        assert!(!IndexRule::Sparse.requires(&child(Some("linux/amd64"), m)));
    }
}
