//! Docker token scopes: `repository:NAME:pull,push`, `registry:catalog:*`.
//!
//! Grammar (distribution `docs/spec/auth/scope.md`):
//! `resourcetype[(class)]:resourcename:action[,action]*`, several separated by spaces. The
//! name may itself contain colons (`host:5000/app`), so the type ends at the first colon and
//! the actions start after the last one.

use std::fmt;

use crate::rules::Action;

/// One resource scope; also a token's `access` entry (`{"type","name","actions"}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scope {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope {scope:?}: {reason}")]
pub struct ScopeError {
    pub scope: String,
    pub reason: &'static str,
}

fn is_type_value(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl Scope {
    pub fn repository(name: &str, actions: impl IntoIterator<Item = Action>) -> Scope {
        Scope {
            kind: "repository".into(),
            name: name.into(),
            actions: actions.into_iter().map(|a| a.as_str().to_owned()).collect(),
        }
    }

    /// `registry:catalog:*`.
    pub fn catalog() -> Scope {
        Scope { kind: "registry".into(), name: "catalog".into(), actions: vec!["*".into()] }
    }

    /// One resource scope.
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        let err = |reason| ScopeError { scope: s.to_owned(), reason };
        let (kind, rest) = s.split_once(':').ok_or_else(|| err("expected type:name:actions"))?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(|| err("expected type:name:actions"))?;
        let base = match kind.split_once('(') {
            Some((base, class)) => {
                if !class.strip_suffix(')').is_some_and(is_type_value) {
                    return Err(err("malformed resource class"));
                }
                base
            }
            None => kind,
        };
        if !is_type_value(base) {
            return Err(err("the resource type must be lowercase letters and digits"));
        }
        if name.is_empty() {
            return Err(err("empty resource name"));
        }
        let mut list: Vec<String> = Vec::new();
        for a in actions.split(',').filter(|a| !a.is_empty()) {
            if !(a == "*" || a.bytes().all(|b| b.is_ascii_lowercase())) {
                return Err(err("actions are lowercase words or *"));
            }
            if !list.iter().any(|x| x == a) {
                list.push(a.to_owned());
            }
        }
        Ok(Scope { kind: kind.to_owned(), name: name.to_owned(), actions: list })
    }

    /// A `scope` parameter: one or more scopes separated by spaces.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, ScopeError> {
        s.split_whitespace().map(Scope::parse).collect()
    }

    /// Does this scope grant `action` on resource `kind`/`name`? (`*` grants every action.)
    pub fn grants(&self, kind: &str, name: &str, action: &str) -> bool {
        self.kind == kind && self.name == name && self.actions.iter().any(|a| a == action || a == "*")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repository_scopes_with_commas_and_colons() {
        let s = Scope::parse("repository:team/app:pull,push").unwrap();
        assert_eq!(s.kind, "repository");
        assert_eq!(s.name, "team/app");
        assert_eq!(s.actions, ["pull", "push"]);
        assert_eq!(s.to_string(), "repository:team/app:pull,push");
        // A name with a host and port: colons inside the name.
        let s = Scope::parse("repository:localhost:5000/a/b:pull,push,delete").unwrap();
        assert_eq!(s.name, "localhost:5000/a/b");
        assert_eq!(s.actions, ["pull", "push", "delete"]);
        // Duplicates and empty entries between commas collapse.
        assert_eq!(Scope::parse("repository:a:pull,,pull,").unwrap().actions, ["pull"]);
        // No actions at all is a scope that grants nothing.
        assert!(Scope::parse("repository:a:").unwrap().actions.is_empty());
        let c = Scope::parse("registry:catalog:*").unwrap();
        assert_eq!(c, Scope::catalog());
        assert!(c.grants("registry", "catalog", "*"));
        let plugin = Scope::parse("repository(plugin):vendor/p:pull").unwrap();
        assert_eq!(plugin.kind, "repository(plugin)");
    }

    #[test]
    fn parses_space_separated_lists() {
        let list =
            Scope::parse_list(" repository:a:pull  repository:b/c:push,pull registry:catalog:*").unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[1].name, "b/c");
        assert_eq!(list[1].actions, ["push", "pull"]);
        assert!(Scope::parse_list("").unwrap().is_empty());
    }

    #[test]
    fn rejects_malformed_scopes() {
        for bad in [
            "repository",
            "repository:a",
            "Repository:a:pull",
            ":a:pull",
            "repository::pull",
            "repository:a:PULL",
            "repository(:a:pull",
            "repository(x:a:pull",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grants() {
        let s = Scope::repository("a/b", [Action::Pull, Action::Push]);
        assert!(s.grants("repository", "a/b", "push"));
        assert!(!s.grants("repository", "a/b", "delete"));
        assert!(!s.grants("repository", "a/bc", "pull"));
        assert!(Scope::parse("repository:x:*").unwrap().grants("repository", "x", "delete"));
    }
}
