//! Authentication: what the registry asked for, and bearer tokens cached per scope set.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode, Url};

use crate::challenge::{self, Challenge};
use crate::client::{backoff, is_retry_status, is_transient, read_limited};
use crate::error::{body_text, http_error, parse_errors};
use crate::{ClientError, RegistryClient};

/// A bearer token. `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone)]
pub(crate) enum AuthMode {
    /// No challenge seen yet: requests go out anonymous.
    Unknown,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: Secret,
    valid_until: Instant,
}

#[derive(Debug)]
pub(crate) struct AuthState {
    mode: AuthMode,
    /// Keyed by the sorted, space-joined scope set.
    tokens: HashMap<String, CachedToken>,
    /// Token requests made (for tests and metrics).
    pub token_fetches: u64,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState { mode: AuthMode::Unknown, tokens: HashMap::new(), token_fetches: 0 }
    }
}

fn scope_key(scopes: &[String]) -> String {
    scopes.iter().collect::<BTreeSet<_>>().into_iter().cloned().collect::<Vec<_>>().join(" ")
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// The longest a token is kept: a token server's `expires_in` is not trusted further (a huge
/// value would overflow `Instant`).
const MAX_TOKEN_LIFETIME: u64 = 24 * 3600;

/// The token of a token server's JSON answer and how long to use it.
pub(crate) fn token_answer(body: &[u8]) -> Result<(String, Duration), String> {
    let answer: TokenAnswer =
        serde_json::from_slice(body).map_err(|e| format!("sent no valid JSON token: {e}"))?;
    let token = answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "answered without a token".to_owned())?;
    // The spec's default lifetime is 60 s; keep a margin so a token never expires in flight.
    let lifetime = answer.expires_in.unwrap_or(60).clamp(1, MAX_TOKEN_LIFETIME);
    let margin = (lifetime / 10).clamp(1, 30);
    Ok((token, Duration::from_secs(lifetime.saturating_sub(margin).max(1))))
}

impl RegistryClient {
    /// The `Authorization` value for a request needing `scopes`, if the registry wants one.
    /// Fetches a bearer token when none is cached (one fetch at a time per client).
    pub(crate) async fn authorization(&self, scopes: &[String]) -> Result<Option<HeaderValue>, ClientError> {
        let mut state = self.inner.auth.lock().await;
        let value = match state.mode.clone() {
            AuthMode::Unknown => return Ok(None),
            AuthMode::Basic => match &self.inner.options.credentials {
                Some(c) => c.basic_header(),
                None => return Ok(None),
            },
            AuthMode::Bearer { realm, service } => {
                let key = scope_key(scopes);
                let now = Instant::now();
                let token = match state.tokens.get(&key) {
                    Some(t) if t.valid_until > now => t.token.clone(),
                    _ => {
                        state.token_fetches += 1;
                        let t = self.fetch_token(&realm, service.as_deref(), scopes).await?;
                        let token = t.token.clone();
                        state.tokens.insert(key, t);
                        token
                    }
                };
                format!("Bearer {}", token.0)
            }
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| {
            ClientError::Invalid("credentials or token contain characters not allowed in a header".into())
        })?;
        v.set_sensitive(true);
        Ok(Some(v))
    }

    /// Learn from a 401: returns the scopes to ask for on the retry.
    pub(crate) async fn handle_challenge(
        &self,
        resp: &Response,
        scopes: &[String],
        sent_auth: bool,
    ) -> Result<Vec<String>, ClientError> {
        let registry = self.inner.host.clone();
        let challenges: Vec<Challenge> = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(challenge::parse)
            .collect();
        let bearer = challenges.iter().find(|c| c.scheme == "bearer");
        let basic = challenges.iter().find(|c| c.scheme == "basic");
        let mut state = self.inner.auth.lock().await;
        if let Some(b) = bearer {
            let Some(realm) = b.param("realm").filter(|r| !r.is_empty()) else {
                return Err(ClientError::Unauthorized {
                    registry,
                    message: "the registry asked for a bearer token but named no token server (realm)".into(),
                });
            };
            let mut new_scopes: Vec<String> = scopes.to_vec();
            for s in b.param("scope").unwrap_or("").split_whitespace() {
                if !new_scopes.iter().any(|x| x == s) {
                    new_scopes.push(s.to_owned());
                }
            }
            if sent_auth {
                // The token we sent expired early or lacks a scope: never reuse it.
                state.tokens.remove(&scope_key(scopes));
                state.tokens.remove(&scope_key(&new_scopes));
            }
            state.mode =
                AuthMode::Bearer { realm: realm.to_owned(), service: b.param("service").map(str::to_owned) };
            tracing::debug!(%registry, realm, "registry uses bearer tokens");
            return Ok(new_scopes);
        }
        if basic.is_some() {
            let was_basic = matches!(state.mode, AuthMode::Basic);
            return match &self.inner.options.credentials {
                None => Err(ClientError::Unauthorized {
                    registry,
                    message: "the registry requires a user name and password (basic auth) and none \
                              were given or found in the auth files"
                        .into(),
                }),
                Some(c) if sent_auth && was_basic => Err(ClientError::Unauthorized {
                    registry,
                    message: format!("the registry rejected the password of user {:?}", c.username),
                }),
                Some(_) => {
                    state.mode = AuthMode::Basic;
                    Ok(scopes.to_vec())
                }
            };
        }
        Err(ClientError::Unauthorized {
            registry,
            message: "the registry answered 401 without a Basic or Bearer WWW-Authenticate challenge".into(),
        })
    }

    /// `GET realm?service=..&scope=..&scope=..`, with basic auth when credentials exist.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<CachedToken, ClientError> {
        let registry = self.inner.host.clone();
        let mut url = Url::parse(realm).map_err(|_| ClientError::Unauthorized {
            registry: registry.clone(),
            message: format!("the token server URL {realm:?} in the registry's challenge is invalid"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::Unauthorized {
                registry,
                message: format!("the token server URL {realm:?} is not http(s)"),
            });
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        let creds = self.inner.options.credentials.as_ref();
        let max = self.inner.options.max_retries;
        let mut attempt = 0;
        let resp = loop {
            let mut rb = self.inner.http.get(url.clone());
            if let Some(c) = creds {
                let mut v = HeaderValue::from_str(&c.basic_header()).map_err(|_| {
                    ClientError::Invalid("credentials contain characters not allowed in a header".into())
                })?;
                v.set_sensitive(true);
                rb = rb.header(AUTHORIZATION, v);
            }
            match rb.send().await {
                Err(e) if is_transient(&e) && attempt < max => attempt += 1,
                Err(e) => return Err(http_error(&format!("token request to {}", strip_query(&url)), &e)),
                Ok(r) if is_retry_status(r.status()) && attempt < max => attempt += 1,
                Ok(r) => break r,
            }
            tokio::time::sleep(backoff(attempt)).await;
        };
        let status = resp.status();
        let body = read_limited(resp, 1024 * 1024).await?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let who = match creds {
                Some(c) => format!("the credentials of user {:?}", c.username),
                None => "anonymous access (no credentials were given or found)".to_owned(),
            };
            let errors = parse_errors(&body);
            let detail = errors.first().map(|e| format!(": {}", e.message)).unwrap_or_default();
            return Err(ClientError::Unauthorized {
                registry,
                message: format!(
                    "token server {} refused {who} for scope {:?}{detail}",
                    strip_query(&url),
                    scopes.join(" ")
                ),
            });
        }
        if !status.is_success() {
            return Err(ClientError::Registry {
                status: status.as_u16(),
                registry: format!("{} (token server {})", self.inner.host, strip_query(&url)),
                errors: parse_errors(&body),
                body: body_text(&body),
            });
        }
        let (token, valid_for) = token_answer(&body)
            .map_err(|why| ClientError::Invalid(format!("token server {} {why}", strip_query(&url))))?;
        tracing::debug!(registry = %self.inner.host, scopes = %scopes.join(" "), ?valid_for, "got a registry token");
        Ok(CachedToken { token: Secret(token), valid_until: Instant::now() + valid_for })
    }

    /// How many tokens this client (and its clones) fetched so far.
    pub async fn token_fetch_count(&self) -> u64 {
        self.inner.auth.lock().await.token_fetches
    }
}

fn strip_query(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_keys_ignore_order_and_duplicates() {
        let a = vec!["repository:b:pull".to_owned(), "repository:a:pull,push".to_owned()];
        let b = vec![
            "repository:a:pull,push".to_owned(),
            "repository:b:pull".to_owned(),
            "repository:b:pull".to_owned(),
        ];
        assert_eq!(scope_key(&a), scope_key(&b));
    }

    #[test]
    fn token_answers_from_hostile_servers() {
        // A huge `expires_in` made `Instant + Duration` panic (seen while writing the
        // `challenge` fuzz target, which covers it now).
        let (t, d) = token_answer(br#"{"token":"t","expires_in":18446744073709551615}"#).unwrap();
        assert_eq!(t, "t");
        assert!(d <= Duration::from_secs(MAX_TOKEN_LIFETIME));
        let _ = Instant::now() + d;
        let (t, d) = token_answer(br#"{"access_token":"a","expires_in":0}"#).unwrap();
        assert_eq!((t.as_str(), d), ("a", Duration::from_secs(1)));
        assert_eq!(token_answer(br#"{"token":"x"}"#).unwrap().1, Duration::from_secs(54));
        assert!(token_answer(br#"{"token":""}"#).is_err());
        assert!(token_answer(br#"{"expires_in":-1,"token":"x"}"#).is_err());
        assert!(token_answer(b"<html>").is_err());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let t = CachedToken { token: Secret("eyJsecret".into()), valid_until: Instant::now() };
        assert!(!format!("{t:?}").contains("eyJ"));
    }
}
