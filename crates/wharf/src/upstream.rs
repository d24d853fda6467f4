//! The HTTP side of on-demand fill: an `Upstream` over `wharf-client`.

use anyhow::Context;
use futures_util::TryStreamExt;
use wharf_client::{ClientError, RegistryClient};
use wharf_oci::{Digest, Reference, RepoName};
use wharf_registry::{
    BoxFuture, DEFAULT_TAG_TTL, RepoPattern, Upstream, UpstreamBlob, UpstreamManifest, UpstreamRule,
};
use wharf_storage::BodyStream;

/// `[[upstreams]]` in the server config.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// Local repositories this upstream fills, e.g. `mirror/**`.
    pub pattern: String,
    /// `docker://HOST[/PREFIX]`. The local name, less the pattern's fixed leading segments,
    /// is appended: with `mirror/**` and `docker://up.example/vendor`, `mirror/team/app`
    /// fills from `up.example/vendor/team/app`.
    pub url: String,
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// `USER:PASSWORD`; else the auth files docker and podman use.
    pub credentials: Option<String>,
    /// Extra CA certificates (`*.crt`) to trust for this upstream.
    pub cert_dir: Option<std::path::PathBuf>,
    /// Pull-through: a tag that is not here, or was last checked more than `tag_ttl` ago, is
    /// looked up upstream.
    #[serde(default)]
    pub proxy_tags: bool,
    /// e.g. `"5m"`, `"1h"`, `"30s"` [default: 5m].
    pub tag_ttl: Option<String>,
}

fn default_true() -> bool {
    true
}

struct HttpUpstream {
    client: RegistryClient,
    /// Leading segments of local names that the upstream does not have.
    strip: Vec<String>,
    /// Leading segments the upstream has that local names do not.
    prefix: Option<String>,
}

impl HttpUpstream {
    fn remote_repo(&self, local: &RepoName) -> Result<RepoName, String> {
        let segments: Vec<&str> = local.as_str().split('/').collect();
        let rest =
            if segments.len() > self.strip.len() && segments.iter().zip(&self.strip).all(|(a, b)| a == b) {
                segments[self.strip.len()..].join("/")
            } else {
                local.to_string()
            };
        let name = match &self.prefix {
            Some(p) => format!("{p}/{rest}"),
            None => rest,
        };
        name.parse().map_err(|e| format!("upstream repository {name:?}: {e}"))
    }
}

fn not_found_is_none<T>(r: Result<T, ClientError>) -> Result<Option<T>, String> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

impl Upstream for HttpUpstream {
    fn describe(&self) -> String {
        match &self.prefix {
            Some(p) => format!("{}/{p}", self.client.host()),
            None => self.client.host().to_owned(),
        }
    }

    fn manifest<'a>(
        &'a self,
        repo: &'a RepoName,
        reference: &'a Reference,
    ) -> BoxFuture<'a, Result<Option<UpstreamManifest>, String>> {
        Box::pin(async move {
            let remote = self.remote_repo(repo)?;
            let m = not_found_is_none(self.client.get_manifest(&remote, reference).await)?;
            Ok(m.map(|m| (m.media_type, m.bytes.to_vec())))
        })
    }

    fn blob<'a>(
        &'a self,
        repo: &'a RepoName,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<UpstreamBlob>, String>> {
        Box::pin(async move {
            let remote = self.remote_repo(repo)?;
            // The registry verifies the digest while it stores the blob: hash once, not twice.
            let blob = not_found_is_none(self.client.get_blob_unverified(&remote, digest).await)?;
            Ok(blob.map(|(size, stream)| {
                let body: BodyStream = Box::pin(stream.map_err(std::io::Error::other));
                UpstreamBlob { size: Some(size), body }
            }))
        })
    }
}

/// Turn the config entries into the registry's rules.
pub fn upstream_rules(files: &[UpstreamFile]) -> anyhow::Result<Vec<UpstreamRule>> {
    let mut rules = Vec::new();
    for (i, u) in files.iter().enumerate() {
        let at = || format!("upstreams[{i}] (pattern {:?})", u.pattern);
        let rest = u
            .url
            .strip_prefix("docker://")
            .with_context(|| format!("{}: url must look like docker://HOST[/PREFIX]", at()))?;
        let (host, prefix) = match rest.split_once('/') {
            Some((h, p)) if !p.is_empty() => (h, Some(p.trim_end_matches('/').to_owned())),
            _ => (rest.trim_end_matches('/'), None),
        };
        let client =
            crate::client::upstream_client(host, u.tls_verify, u.credentials.as_deref(), u.cert_dir.clone())
                .with_context(at)?;
        let strip = u.pattern.split('/').take_while(|s| !s.contains('*')).map(str::to_owned).collect();
        let tag_ttl = match &u.tag_ttl {
            Some(t) => {
                crate::gc_cmd::parse_duration(t).map_err(|e| anyhow::anyhow!("{}: tag_ttl: {e}", at()))?
            }
            None => DEFAULT_TAG_TTL,
        };
        if u.tag_ttl.is_some() && !u.proxy_tags {
            anyhow::bail!("{}: tag_ttl applies only with proxy_tags = true", at());
        }
        let upstream = std::sync::Arc::new(HttpUpstream { client, strip, prefix });
        rules.push(UpstreamRule {
            proxy_tags: u.proxy_tags,
            tag_ttl,
            ..UpstreamRule::new(RepoPattern::new(&u.pattern), upstream)
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use wharf_client::ClientOptions;

    use super::*;

    #[test]
    fn maps_local_names_to_upstream_names() {
        let file = UpstreamFile {
            pattern: "mirror/**".into(),
            url: "docker://127.0.0.1:1/vendor".into(),
            tls_verify: true,
            credentials: Some("u:p".into()),
            cert_dir: None,
            proxy_tags: true,
            tag_ttl: Some("90s".into()),
        };
        let rules = upstream_rules(&[file]).unwrap();
        assert_eq!(rules[0].upstream.describe(), "127.0.0.1:1/vendor");
        assert!(rules[0].proxy_tags);
        assert_eq!(rules[0].tag_ttl, std::time::Duration::from_secs(90));
        let up = HttpUpstream {
            client: RegistryClient::new("127.0.0.1:1", ClientOptions::default()).unwrap(),
            strip: vec!["mirror".into()],
            prefix: Some("vendor".into()),
        };
        assert_eq!(up.remote_repo(&"mirror/team/app".parse().unwrap()).unwrap().as_str(), "vendor/team/app");
        assert!(
            upstream_rules(&[UpstreamFile {
                pattern: "x/**".into(),
                url: "https://nope".into(),
                tls_verify: true,
                credentials: None,
                cert_dir: None,
                proxy_tags: false,
                tag_ttl: None,
            }])
            .is_err()
        );
    }
}
