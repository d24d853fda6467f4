//! Who may do what: ordered repository-pattern rules, first match wins, no match = no access.

use std::fmt;

use wharf_oci::RepoName;
use wharf_registry::RepoPattern;

/// What a request does to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// The Docker scope action name (`pull`, `push`, `delete`).
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    fn bit(self) -> u8 {
        match self {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of actions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(7);

    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    pub fn insert(&mut self, a: Action) {
        self.0 |= a.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// In the canonical order pull, push, delete.
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

impl FromIterator<Action> for Actions {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Actions {
        let mut s = Actions::NONE;
        for a in iter {
            s.insert(a);
        }
        s
    }
}

/// Who is asking: nobody in particular, or a user whose password (or token) was checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Anonymous,
    User(String),
    /// A user of the LDAP directory, with the groups it listed at login (for `group:NAME`).
    Member {
        user: String,
        groups: Vec<String>,
    },
    /// Wharf itself: a mirror run pushing into its own registry over loopback, with a secret
    /// made at start that never leaves the process ([`crate::Authority::internal_credentials`]).
    Internal,
}

impl Identity {
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Identity::Anonymous)
    }

    pub fn user(&self) -> Option<&str> {
        match self {
            Identity::Anonymous | Identity::Internal => None,
            Identity::User(u) | Identity::Member { user: u, .. } => Some(u),
        }
    }

    /// Is this a directory user in `group`? Compared case-insensitively (ASCII), as LDAP
    /// compares `cn`.
    pub fn in_group(&self, group: &str) -> bool {
        match self {
            Identity::Member { groups, .. } => groups.iter().any(|g| g.eq_ignore_ascii_case(group)),
            _ => false,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("anonymous"),
            Identity::User(u) | Identity::Member { user: u, .. } => write!(f, "user {u:?}"),
            Identity::Internal => f.write_str("wharf's own mirror runs"),
        }
    }
}

/// An entry of a rule's `pull`/`push`/`delete` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// `"*"`: anyone, including anonymous clients.
    Anyone,
    /// `"authenticated"`: any user with a valid password or token.
    Authenticated,
    /// A user name from the htpasswd file or the directory.
    User(String),
    /// `"group:NAME"`: the members of a directory group (`[auth.ldap]`).
    Group(String),
}

impl Principal {
    pub fn parse(s: &str) -> Result<Principal, String> {
        match s {
            "*" => Ok(Principal::Anyone),
            "authenticated" => Ok(Principal::Authenticated),
            "" => Err("an empty user name".into()),
            // Directory group names may hold spaces ("Domain Users"), not only blanks.
            g if g.starts_with("group:") => match g["group:".len()..].trim() {
                "" => Err(format!("{g:?} names no group (write \"group:NAME\")")),
                name => Ok(Principal::Group(name.to_owned())),
            },
            u if u.contains(':') || u.chars().any(char::is_whitespace) => {
                Err(format!("{u:?} is not a user name (no ':' or spaces)"))
            }
            u => Ok(Principal::User(u.to_owned())),
        }
    }

    pub fn admits(&self, id: &Identity) -> bool {
        match (self, id) {
            (Principal::Anyone, _) => true,
            (Principal::Authenticated, Identity::User(_) | Identity::Member { .. }) => true,
            (Principal::User(want), Identity::User(got) | Identity::Member { user: got, .. }) => want == got,
            (Principal::Group(g), id) => id.in_group(g),
            _ => false,
        }
    }
}

/// One `[[auth.rules]]` entry.
#[derive(Debug, Clone)]
pub struct Rule {
    pub pattern: RepoPattern,
    pub pull: Vec<Principal>,
    pub push: Vec<Principal>,
    pub delete: Vec<Principal>,
}

impl Rule {
    /// A rule from its configuration strings; errors name the offending entry.
    pub fn new(pattern: &str, pull: &[String], push: &[String], delete: &[String]) -> Result<Rule, String> {
        if pattern.is_empty() {
            return Err("empty pattern (use \"**\" for every repository)".into());
        }
        let list = |what: &str, v: &[String]| -> Result<Vec<Principal>, String> {
            v.iter().map(|s| Principal::parse(s).map_err(|e| format!("{what}: {e}"))).collect()
        };
        Ok(Rule {
            pattern: RepoPattern::new(pattern),
            pull: list("pull", pull)?,
            push: list("push", push)?,
            delete: list("delete", delete)?,
        })
    }

    pub fn actions_for(&self, id: &Identity) -> Actions {
        let mut s = Actions::NONE;
        for (action, list) in
            [(Action::Pull, &self.pull), (Action::Push, &self.push), (Action::Delete, &self.delete)]
        {
            if list.iter().any(|p| p.admits(id)) {
                s.insert(action);
            }
        }
        s
    }

    fn principals(&self) -> impl Iterator<Item = &Principal> {
        self.pull.iter().chain(&self.push).chain(&self.delete)
    }
}

/// The ordered rules.
#[derive(Debug, Clone, Default)]
pub struct Rules(Vec<Rule>);

impl Rules {
    pub fn new(rules: Vec<Rule>) -> Rules {
        Rules(rules)
    }

    pub fn as_slice(&self) -> &[Rule] {
        &self.0
    }

    /// The actions `id` may take on `repo`: the first rule whose pattern matches decides.
    pub fn actions_for(&self, id: &Identity, repo: &RepoName) -> Actions {
        self.0.iter().find(|r| r.pattern.matches(repo)).map(|r| r.actions_for(id)).unwrap_or(Actions::NONE)
    }

    /// User names the rules mention (to check them against the htpasswd file).
    pub fn named_users(&self) -> impl Iterator<Item = (usize, &str)> {
        self.0.iter().enumerate().flat_map(|(i, r)| {
            r.principals().filter_map(move |p| match p {
                Principal::User(u) => Some((i, u.as_str())),
                _ => None,
            })
        })
    }

    /// Groups the rules mention (`group:NAME`).
    pub fn named_groups(&self) -> impl Iterator<Item = (usize, &str)> {
        self.0.iter().enumerate().flat_map(|(i, r)| {
            r.principals().filter_map(move |p| match p {
                Principal::Group(g) => Some((i, g.as_str())),
                _ => None,
            })
        })
    }

    /// Does any rule admit a user who is not anonymous (`authenticated` or a name)?
    pub fn mentions_users(&self) -> bool {
        self.0.iter().flat_map(Rule::principals).any(|p| !matches!(p, Principal::Anyone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    fn user(s: &str) -> Identity {
        Identity::User(s.into())
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn rules() -> Rules {
        Rules::new(vec![
            Rule::new("mirror/private/**", &strings(&["authenticated"]), &strings(&["ci"]), &[]).unwrap(),
            Rule::new("mirror/**", &strings(&["*"]), &strings(&["ci"]), &strings(&["admin"])).unwrap(),
            Rule::new("team/*", &strings(&["dev", "ci"]), &strings(&["dev"]), &[]).unwrap(),
        ])
    }

    #[test]
    fn first_matching_rule_decides() {
        let r = rules();
        let anon = Identity::Anonymous;
        // mirror/private/x matches the first rule, not the public second one.
        assert_eq!(r.actions_for(&anon, &repo("mirror/private/x")), Actions::NONE);
        assert_eq!(
            r.actions_for(&user("dev"), &repo("mirror/private/x")),
            [Action::Pull].into_iter().collect()
        );
        assert_eq!(
            r.actions_for(&user("ci"), &repo("mirror/private/x")),
            [Action::Pull, Action::Push].into_iter().collect()
        );
        // The public rule: anyone pulls, ci pushes, admin deletes (and also pulls, as anyone).
        assert_eq!(r.actions_for(&anon, &repo("mirror/app")), [Action::Pull].into_iter().collect());
        let admin = r.actions_for(&user("admin"), &repo("mirror/a/b"));
        assert!(
            admin.contains(Action::Delete) && admin.contains(Action::Pull) && !admin.contains(Action::Push)
        );
        // `*` is one segment.
        assert!(r.actions_for(&user("dev"), &repo("team/app")).contains(Action::Push));
        assert_eq!(r.actions_for(&user("dev"), &repo("team/app/sub")), Actions::NONE);
        // No rule matches: no access, even for a named user.
        assert_eq!(r.actions_for(&user("admin"), &repo("elsewhere")), Actions::NONE);
    }

    #[test]
    fn principals() {
        assert_eq!(Principal::parse("*").unwrap(), Principal::Anyone);
        assert_eq!(Principal::parse("authenticated").unwrap(), Principal::Authenticated);
        assert_eq!(Principal::parse("ci").unwrap(), Principal::User("ci".into()));
        assert!(Principal::parse("").is_err());
        assert!(Principal::parse("a:b").is_err());
        assert!(Principal::Anyone.admits(&Identity::Anonymous));
        assert!(!Principal::Authenticated.admits(&Identity::Anonymous));
        assert!(Principal::Authenticated.admits(&user("x")));
        assert!(!Principal::User("x".into()).admits(&user("y")));
        let err = Rule::new("a/**", &[], &strings(&["ok", "bad user"]), &[]).unwrap_err();
        assert!(err.starts_with("push:"), "{err}");
        assert!(Rule::new("", &[], &[], &[]).is_err());
    }

    #[test]
    fn named_users_and_action_sets() {
        let r = rules();
        let mut named: Vec<&str> = r.named_users().map(|(_, u)| u).collect();
        named.sort_unstable();
        named.dedup();
        assert_eq!(named, ["admin", "ci", "dev"]);
        assert!(r.mentions_users());
        let only_public = Rules::new(vec![Rule::new("**", &strings(&["*"]), &[], &[]).unwrap()]);
        assert!(!only_public.mentions_users());
        let s: Actions = [Action::Delete, Action::Pull].into_iter().collect();
        assert_eq!(s.iter().collect::<Vec<_>>(), [Action::Pull, Action::Delete]);
        assert_eq!(Action::parse("push"), Some(Action::Push));
        assert_eq!(Action::parse("*"), None);
    }

    #[test]
    fn group_rules_admit_directory_members() {
        let member =
            |user: &str, groups: &[&str]| Identity::Member { user: user.into(), groups: strings(groups) };
        let r = Rules::new(vec![
            Rule::new("platform/**", &strings(&["authenticated"]), &strings(&["group:platform"]), &[])
                .unwrap(),
            Rule::new("team/**", &strings(&["group:Domain Users", "carol"]), &[], &strings(&["group:ops"]))
                .unwrap(),
        ]);
        let alice = member("alice", &["Platform", "dev"]);
        let bob = member("bob", &["dev"]);
        let pull_push: Actions = [Action::Pull, Action::Push].into_iter().collect();
        assert_eq!(r.actions_for(&alice, &repo("platform/app")), pull_push);
        assert_eq!(r.actions_for(&bob, &repo("platform/app")), [Action::Pull].into_iter().collect());
        // An htpasswd user of the same name is in no group.
        assert_eq!(
            r.actions_for(&user("alice"), &repo("platform/app")),
            [Action::Pull].into_iter().collect()
        );
        // Group names may hold spaces; user names match directory users too.
        assert!(r.actions_for(&member("dan", &["domain users"]), &repo("team/x")).contains(Action::Pull));
        assert!(r.actions_for(&member("carol", &[]), &repo("team/x")).contains(Action::Pull));
        assert_eq!(r.actions_for(&bob, &repo("team/x")), Actions::NONE);
        assert_eq!(r.actions_for(&Identity::Anonymous, &repo("platform/app")), Actions::NONE);
        let groups: Vec<&str> = r.named_groups().map(|(_, g)| g).collect();
        assert_eq!(groups, ["platform", "Domain Users", "ops"]);
        assert!(Principal::parse("group:").is_err());
        assert!(Principal::parse("group: ").is_err());
        assert_eq!(Principal::parse("group:ops").unwrap(), Principal::Group("ops".into()));
        assert_eq!(alice.user(), Some("alice"));
        assert_eq!(alice.to_string(), "user \"alice\"");
    }
}
