//! Blobs: verified streaming downloads that resume with `Range`, and uploads (monolithic or
//! chunked) that resume from the registry's upload status.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{Fuse, Stream, StreamExt};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RANGE};
use reqwest::{Method, Response, StatusCode, Url};
use wharf_oci::{Digest, DigestHasher, RepoName};

use crate::client::{Req, backoff, header_str, header_u64, scope};
use crate::error::http_error;
use crate::{ByteStream, ClientError, RegistryClient};

/// Reopens a blob's source at a byte offset, so an interrupted upload can resume where the
/// registry stopped. For a registry source: `move |off| Box::pin(src.get_blob(..., off))`
/// (mapped to the stream); for a file: seek and stream.
pub type BlobOpener =
    Box<dyn FnMut(u64) -> Pin<Box<dyn Future<Output = Result<ByteStream, ClientError>> + Send>> + Send>;

const OCTET_STREAM: &str = "application/octet-stream";

/// An upload session a registry opened: where to send the bytes, and its smallest chunk.
#[derive(Debug, Clone)]
pub struct UploadSession {
    pub(crate) location: Url,
    pub(crate) min_chunk: u64,
}

/// What a mount request got: the blob, or an upload session to send it in.
#[derive(Debug)]
pub enum Mounted {
    Yes,
    No(UploadSession),
}

// ---------------------------------------------------------------------------------------------
// Downloads

enum Opened {
    Body {
        resp: Response,
        total: u64,
        skip: u64,
    },
    /// The offset is the end of the blob: nothing left to read.
    AtEnd {
        total: u64,
    },
}

type BodyStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The state of one verified blob download.
struct BlobRead {
    client: RegistryClient,
    repo: RepoName,
    url: Url,
    expected: Digest,
    /// `None` only when resuming at an offset without the prefix's hash (unverifiable here).
    hasher: Option<DigestHasher>,
    pos: u64,
    total: u64,
    /// Bytes at the start of the current body to drop (the server ignored `Range`).
    skip: u64,
    /// Whether the dropped bytes still need hashing (first request only).
    hash_skipped: bool,
    body: Option<BodyStream>,
    resumes: u32,
    finished: bool,
}

impl BlobRead {
    async fn next_item(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            if self.finished {
                return None;
            }
            let body = match &mut self.body {
                Some(b) => b,
                None => {
                    if self.pos >= self.total {
                        return self.finish();
                    }
                    match self.client.open_range(&self.repo, &self.url, &self.expected, self.pos).await {
                        Ok(Opened::Body { resp, total, skip }) => {
                            if total != self.total {
                                return self.fail(ClientError::Invalid(format!(
                                    "blob {} changed size from {} to {total} bytes while downloading",
                                    self.expected, self.total
                                )));
                            }
                            self.skip = skip;
                            self.hash_skipped = false;
                            self.body.insert(Box::pin(resp.bytes_stream()))
                        }
                        Ok(Opened::AtEnd { .. }) => return self.finish(),
                        Err(e) => return self.fail(e),
                    }
                }
            };
            match body.next().await {
                Some(Ok(mut chunk)) => {
                    if self.skip > 0 {
                        let n = (self.skip as usize).min(chunk.len());
                        let dropped = chunk.split_to(n);
                        if self.hash_skipped
                            && let Some(h) = &mut self.hasher
                        {
                            h.update(&dropped);
                        }
                        self.skip -= n as u64;
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    if self.pos + chunk.len() as u64 > self.total {
                        return self.fail(ClientError::Invalid(format!(
                            "registry {} sent more than the {} bytes of blob {}",
                            self.client.host(),
                            self.total,
                            self.expected
                        )));
                    }
                    if let Some(h) = &mut self.hasher {
                        h.update(&chunk);
                    }
                    self.pos += chunk.len() as u64;
                    return Some(Ok(chunk));
                }
                Some(Err(e)) => {
                    self.body = None;
                    if !self.may_resume(&e.to_string()).await {
                        return self.fail(http_error(
                            &format!("reading blob {} from {}", self.expected, self.client.host()),
                            &e,
                        ));
                    }
                }
                None => {
                    self.body = None;
                    if self.pos < self.total {
                        let why = format!("connection closed after {} of {} bytes", self.pos, self.total);
                        if !self.may_resume(&why).await {
                            return self.fail(ClientError::Http(format!(
                                "reading blob {} from {}: {why}",
                                self.expected,
                                self.client.host()
                            )));
                        }
                    } else {
                        return self.finish();
                    }
                }
            }
        }
    }

    async fn may_resume(&mut self, why: &str) -> bool {
        if self.resumes >= self.client.inner.options.max_retries {
            return false;
        }
        self.resumes += 1;
        let delay = backoff(self.resumes);
        tracing::warn!(
            registry = %self.client.host(), digest = %self.expected, at = self.pos, total = self.total,
            reason = why, "blob download interrupted; resuming in {delay:?}"
        );
        tokio::time::sleep(delay).await;
        true
    }

    fn fail(&mut self, e: ClientError) -> Option<Result<Bytes, ClientError>> {
        self.finished = true;
        self.body = None;
        Some(Err(e))
    }

    fn finish(&mut self) -> Option<Result<Bytes, ClientError>> {
        self.finished = true;
        if let Some(h) = self.hasher.take() {
            let actual = h.finish();
            if actual != self.expected {
                return Some(Err(ClientError::DigestMismatch { expected: self.expected.clone(), actual }));
            }
        }
        None
    }
}

/// Parse `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`).
pub(crate) fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let v = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = v.split_once('/')?;
    let (s, e) = range.split_once('-')?;
    let total = if total.trim() == "*" { None } else { Some(total.trim().parse().ok()?) };
    Some((s.trim().parse().ok()?, e.trim().parse().ok()?, total))
}

impl RegistryClient {
    /// Stream blob `digest` of `repo` from byte `offset`: returns the blob's total size and its
    /// bytes. The stream checks the digest as it goes and ends with `Err(DigestMismatch)` if the
    /// bytes do not match; a dropped connection is resumed with `Range` transparently (up to
    /// `max_retries` times).
    ///
    /// With `offset > 0` this client has not seen the first bytes and cannot check the digest
    /// (unless the registry ignores `Range` and sends everything): whoever consumes the stream
    /// must verify the whole (a registry does on `PUT ?digest=`), or use
    /// [`RegistryClient::get_blob_resume`] with the hash of the bytes before `offset`.
    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<(u64, ByteStream), ClientError> {
        let hasher = (offset == 0).then(|| digest.algorithm().hasher());
        self.blob_stream(repo, digest, offset, hasher, true).await
    }

    /// Stream blob `digest` from its first byte without checking the digest here, for a
    /// consumer that hashes the whole anyway (a registry storing it verifies while it writes):
    /// the bytes are hashed once, not twice. Dropped connections are resumed as by `get_blob`.
    pub async fn get_blob_unverified(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(u64, ByteStream), ClientError> {
        self.blob_stream(repo, digest, 0, None, false).await
    }

    /// Resume a download at `offset` where `prefix` has hashed the bytes before it: the
    /// stream verifies the digest of the whole blob.
    pub async fn get_blob_resume(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
        prefix: DigestHasher,
    ) -> Result<(u64, ByteStream), ClientError> {
        self.blob_stream(repo, digest, offset, Some(prefix), false).await
    }

    async fn blob_stream(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
        mut hasher: Option<DigestHasher>,
        own_hasher: bool,
    ) -> Result<(u64, ByteStream), ClientError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}")).await?;
        let opened = self.open_range(repo, &url, digest, offset).await?;
        let (total, skip, body): (u64, u64, Option<BodyStream>) = match opened {
            Opened::Body { resp, total, skip } => (total, skip, Some(Box::pin(resp.bytes_stream()))),
            Opened::AtEnd { total } => (total, 0, None),
        };
        // The registry ignored Range and sends the whole blob: then it can be verified after all.
        let hash_skipped = skip > 0 && (own_hasher || hasher.is_none());
        if hash_skipped {
            hasher = Some(digest.algorithm().hasher());
        }
        let state = BlobRead {
            client: self.clone(),
            repo: repo.clone(),
            url,
            expected: digest.clone(),
            hasher,
            pos: offset,
            total,
            skip,
            hash_skipped,
            body,
            resumes: 0,
            finished: false,
        };
        let stream = futures_util::stream::unfold(state, |mut s| async move {
            let item = s.next_item().await?;
            Some((item, s))
        });
        Ok((total, Box::pin(stream.fuse())))
    }

    /// `GET` the blob from `from` (with `Range` when > 0).
    async fn open_range(
        &self,
        repo: &RepoName,
        url: &Url,
        digest: &Digest,
        from: u64,
    ) -> Result<Opened, ClientError> {
        let mut req = Req::new(Method::GET, url.clone(), vec![scope(repo, "pull")]);
        if from > 0 {
            req = req.header(RANGE, &format!("bytes={from}-"));
        }
        let resp = self.send(&req).await?;
        let host = self.host().to_owned();
        match resp.status() {
            StatusCode::OK => {
                let total = match header_u64(resp.headers(), CONTENT_LENGTH.as_str()) {
                    Some(n) => n,
                    None => self.head_blob(repo, digest).await?.ok_or_else(|| ClientError::NotFound {
                        what: format!("blob {repo}@{digest} on {host}"),
                        message: None,
                    })?,
                };
                if from > total {
                    return Err(ClientError::Invalid(format!(
                        "cannot resume blob {digest} at byte {from}: it has {total} bytes"
                    )));
                }
                Ok(Opened::Body { resp, total, skip: from })
            }
            StatusCode::PARTIAL_CONTENT => {
                let cr = header_str(resp.headers(), "content-range").and_then(parse_content_range);
                let Some((start, end, total)) = cr else {
                    return Err(ClientError::Invalid(format!(
                        "registry {host} answered a range request for blob {digest} without a valid Content-Range"
                    )));
                };
                if start != from || end < start {
                    return Err(ClientError::Invalid(format!(
                        "registry {host} sent bytes {start}-{end} of blob {digest} when asked for {from}-"
                    )));
                }
                let total = total.unwrap_or(end + 1);
                Ok(Opened::Body { resp, total, skip: 0 })
            }
            StatusCode::RANGE_NOT_SATISFIABLE if from > 0 => match self.head_blob(repo, digest).await? {
                Some(size) if size == from => Ok(Opened::AtEnd { total: size }),
                Some(size) => Err(ClientError::Invalid(format!(
                    "cannot resume blob {digest} at byte {from}: it has {size} bytes"
                ))),
                None => Err(ClientError::NotFound {
                    what: format!("blob {repo}@{digest} on {host}"),
                    message: None,
                }),
            },
            _ => Err(self.error_for(resp, || format!("blob {repo}@{digest} on {host}")).await),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Uploads

/// The source of an upload, cut into request bodies of given lengths.
struct Feed {
    state: Arc<tokio::sync::Mutex<FeedState>>,
}

struct FeedState {
    stream: Fuse<ByteStream>,
    leftover: Option<Bytes>,
    /// Bytes handed to request bodies so far (the blob offset of the next byte).
    position: u64,
    size: u64,
    /// The source's own failure, kept to report instead of the transport error it causes.
    error: Option<ClientError>,
}

impl FeedState {
    async fn take(&mut self, remaining: u64, last: bool) -> Result<Bytes, ClientError> {
        let mut chunk = loop {
            if let Some(b) = self.leftover.take().filter(|b| !b.is_empty()) {
                break b;
            }
            match self.stream.next().await {
                Some(Ok(b)) if b.is_empty() => continue,
                Some(Ok(b)) => break b,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(ClientError::Invalid(format!(
                        "the blob source ended after {} of {} bytes",
                        self.position, self.size
                    )));
                }
            }
        };
        if chunk.len() as u64 > remaining {
            self.leftover = Some(chunk.split_off(remaining as usize));
        }
        if last && chunk.len() as u64 == remaining {
            // Hold the final bytes back until the source has ended (and, for a verified
            // download, checked its digest): a bad source never completes an upload.
            let too_long =
                || ClientError::Invalid(format!("the blob source is longer than {} bytes", self.size));
            if self.leftover.is_some() {
                return Err(too_long());
            }
            loop {
                match self.stream.next().await {
                    None => break,
                    Some(Ok(b)) if b.is_empty() => continue,
                    Some(Ok(_)) => return Err(too_long()),
                    Some(Err(e)) => return Err(e),
                }
            }
        }
        self.position += chunk.len() as u64;
        Ok(chunk)
    }
}

impl Feed {
    fn new(stream: ByteStream, position: u64, size: u64) -> Feed {
        Feed {
            state: Arc::new(tokio::sync::Mutex::new(FeedState {
                stream: stream.fuse(),
                leftover: None,
                position,
                size,
                error: None,
            })),
        }
    }

    /// A request body of the next `len` bytes (`last`: the blob ends with them).
    fn body(&self, len: u64, last: bool) -> reqwest::Body {
        let state = self.state.clone();
        let stream = futures_util::stream::unfold((state, len), move |(state, remaining)| async move {
            if remaining == 0 {
                return None;
            }
            let mut f = state.lock().await;
            match f.take(remaining, last).await {
                Ok(chunk) => {
                    drop(f);
                    let left = remaining - chunk.len() as u64;
                    Some((Ok(chunk), (state, left)))
                }
                Err(e) => {
                    f.error.get_or_insert(e);
                    drop(f);
                    Some((Err(std::io::Error::other("the blob source failed")), (state, 0)))
                }
            }
        });
        reqwest::Body::wrap_stream(stream)
    }

    async fn position(&self) -> u64 {
        self.state.lock().await.position
    }

    async fn take_error(&self) -> Option<ClientError> {
        self.state.lock().await.error.take()
    }
}

/// One request body of an upload: bytes `offset..offset+len` of the blob.
struct Piece {
    offset: u64,
    len: u64,
    /// The blob ends with these bytes.
    last: bool,
    /// A `PATCH` with `Content-Range`, else the monolithic `PUT`.
    chunked: bool,
}

/// Why one upload request failed.
enum Step {
    /// The source failed (or was too short/long): never retried here.
    Source(ClientError),
    /// The registry or the connection failed: maybe resumable.
    Transport(ClientError),
}

fn resumable(e: &ClientError) -> bool {
    match e {
        ClientError::Http(_) => true,
        ClientError::Registry { status, .. } => matches!(status, 408 | 416 | 429 | 500..=599),
        _ => false,
    }
}

fn with_digest(loc: &Url, digest: &Digest) -> Url {
    let mut u = loc.clone();
    u.query_pairs_mut().append_pair("digest", &digest.to_string());
    u
}

/// `Range: 0-N` of an upload status: the number of bytes the registry has.
fn parse_upload_range(v: &str) -> Option<u64> {
    let v = v.trim();
    let v = v.strip_prefix("bytes=").unwrap_or(v);
    let (s, e) = v.split_once('-')?;
    if s.trim() != "0" {
        return None;
    }
    let e = e.trim();
    // "0-0" is both "empty" (distribution) and "one byte": take empty; a wrong guess only
    // costs a 416 and another status query. zot writes "0--1" for empty.
    if e == "0" || e == "-1" {
        return Some(0);
    }
    Some(e.parse::<u64>().ok()? + 1)
}

impl RegistryClient {
    /// Upload a blob of `size` bytes from `body` (consumed once, never replayed): monolithic
    /// (`POST`, then `PUT ?digest=` with the body) up to `chunk_size`, chunked `PATCH`es above.
    /// A chunked upload whose connection drops continues if the registry received exactly what
    /// was sent; otherwise the error is returned and the caller restarts the blob (or uses
    /// [`RegistryClient::push_blob_resumable`]). Nothing is published unless the registry
    /// verified the digest, and the last bytes are sent only after the source has ended without
    /// error (so a download's digest check runs before the upload can complete).
    pub async fn push_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        body: ByteStream,
    ) -> Result<(), ClientError> {
        let mut once = Some(body);
        let opener: BlobOpener = Box::new(move |offset| {
            let s = once.take();
            Box::pin(async move {
                match s {
                    Some(s) if offset == 0 => Ok(s),
                    _ => Err(ClientError::Invalid("the blob source cannot be read again".into())),
                }
            })
        });
        self.upload(repo, digest, size, opener, false, None).await
    }

    /// Like [`RegistryClient::push_blob`], but after a dropped connection (or a lost upload
    /// session) the source is reopened at the offset the registry reports, so only the missing
    /// bytes are sent again.
    pub async fn push_blob_resumable(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        open: BlobOpener,
    ) -> Result<(), ClientError> {
        self.upload(repo, digest, size, open, true, None).await
    }

    /// [`RegistryClient::push_blob_resumable`] into a session already open (from
    /// [`RegistryClient::mount_or_start`]), which saves the `POST` that would open one.
    pub async fn push_blob_in(
        &self,
        session: UploadSession,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        open: BlobOpener,
    ) -> Result<(), ClientError> {
        self.upload(repo, digest, size, open, true, Some(session)).await
    }

    /// Upload small in-memory content (configs, signatures): `POST` then `PUT ?digest=`.
    pub async fn push_blob_bytes(
        &self,
        repo: &RepoName,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(), ClientError> {
        let actual = Digest::compute(digest.algorithm(), &bytes);
        if actual != *digest {
            return Err(ClientError::DigestMismatch { expected: digest.clone(), actual });
        }
        let size = bytes.len() as u64;
        let loc = self.start_upload(repo).await?.location;
        let req = Req::new(Method::PUT, with_digest(&loc, digest), vec![scope(repo, "pull,push")])
            .header(CONTENT_TYPE, OCTET_STREAM)
            .body(bytes);
        let resp = self.send(&req).await?;
        self.finish_response(repo, digest, size, &loc, resp).await
    }

    /// `POST /v2/<repo>/blobs/uploads/`: a new upload session.
    async fn start_upload(&self, repo: &RepoName) -> Result<UploadSession, ClientError> {
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/")).await?;
        let resp = self.send(&Req::new(Method::POST, url.clone(), vec![scope(repo, "pull,push")])).await?;
        if resp.status() != StatusCode::ACCEPTED {
            let host = self.host().to_owned();
            return Err(self.error_for(resp, || format!("repository {repo} on {host}")).await);
        }
        self.session_of(&url, &resp)
    }

    /// The session a `202 Accepted` to an upload `POST` describes.
    pub(crate) fn session_of(
        &self,
        request_url: &Url,
        resp: &Response,
    ) -> Result<UploadSession, ClientError> {
        Ok(UploadSession {
            location: self.location(request_url, resp.headers())?,
            min_chunk: header_u64(resp.headers(), "oci-chunk-min-length").unwrap_or(0),
        })
    }

    fn location(&self, request_url: &Url, headers: &HeaderMap) -> Result<Url, ClientError> {
        let loc = header_str(headers, LOCATION.as_str()).ok_or_else(|| {
            ClientError::Invalid(format!("registry {} opened an upload without a Location", self.host()))
        })?;
        request_url.join(loc).map_err(|e| {
            ClientError::Invalid(format!("registry {} sent a bad upload Location {loc:?}: {e}", self.host()))
        })
    }

    /// `GET <location>`: the session URL to continue with and the bytes the registry has.
    async fn upload_status(&self, repo: &RepoName, loc: &Url) -> Result<(Url, u64), ClientError> {
        let resp = self.send(&Req::new(Method::GET, loc.clone(), vec![scope(repo, "pull,push")])).await?;
        if !resp.status().is_success() {
            let host = self.host().to_owned();
            return Err(self.error_for(resp, || format!("upload session in {repo} on {host}")).await);
        }
        let have = header_str(resp.headers(), "range").and_then(parse_upload_range).unwrap_or(0);
        let next = self.location(loc, resp.headers()).unwrap_or_else(|_| loc.clone());
        Ok((next, have))
    }

    /// Send one streamed request of an upload and sort out what failed.
    async fn streamed_step(
        &self,
        url: Url,
        feed: &Feed,
        piece: Piece,
        scopes: &[String],
    ) -> Result<Response, Step> {
        let Piece { offset, len, last, chunked } = piece;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        let method = if chunked {
            let range = format!("{offset}-{}", (offset + len).saturating_sub(1));
            headers.insert("content-range", HeaderValue::from_str(&range).expect("digits and '-'"));
            Method::PATCH
        } else {
            Method::PUT
        };
        let sent_auth = self.authorization(scopes).await.ok().flatten().is_some();
        let result =
            self.send_streamed(method.clone(), url.clone(), headers, feed.body(len, last), scopes).await;
        if let Some(e) = feed.take_error().await {
            return Err(Step::Source(e));
        }
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                return Err(Step::Transport(http_error(
                    &format!("{method} {} on {}", url.path(), self.host()),
                    &e,
                )));
            }
        };
        if resp.status() == StatusCode::UNAUTHORIZED {
            // Token expired mid-upload: learn the challenge, let the caller resume.
            self.handle_challenge(&resp, scopes, sent_auth).await.map_err(Step::Transport)?;
            return Err(Step::Transport(ClientError::Http(format!(
                "{} asked to authenticate again during an upload",
                self.host()
            ))));
        }
        Ok(resp)
    }

    async fn upload(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        mut open: BlobOpener,
        reopenable: bool,
        mut opened: Option<UploadSession>,
    ) -> Result<(), ClientError> {
        let scopes = vec![scope(repo, "pull,push")];
        let max = self.inner.options.max_retries;
        let mut failures = 0u32;
        'session: loop {
            let session = match opened.take() {
                Some(s) => s,
                None => self.start_upload(repo).await?,
            };
            let (mut loc, min_chunk) = (session.location, session.min_chunk);
            let chunk = self.inner.options.chunk_size.max(min_chunk).max(1);
            let mut feed = match open(0).await {
                Ok(s) => Feed::new(s, 0, size),
                Err(e) => {
                    self.cancel_upload(repo, loc.as_str()).await;
                    return Err(e);
                }
            };
            if size <= chunk {
                let piece = Piece { offset: 0, len: size, last: true, chunked: false };
                let step = self.streamed_step(with_digest(&loc, digest), &feed, piece, &scopes).await;
                let err = match step {
                    Ok(resp) => match self.finish_response(repo, digest, size, &loc, resp).await {
                        Ok(()) => return Ok(()),
                        Err(e) => e,
                    },
                    Err(Step::Source(e)) => {
                        self.cancel_upload(repo, loc.as_str()).await;
                        return Err(e);
                    }
                    Err(Step::Transport(e)) => e,
                };
                self.cancel_upload(repo, loc.as_str()).await;
                if reopenable && resumable(&err) && failures < max {
                    failures += 1;
                    tracing::warn!(registry = %self.host(), %digest, error = %err, "blob upload failed; starting again");
                    tokio::time::sleep(backoff(failures)).await;
                    if self.head_blob(repo, digest).await? == Some(size) {
                        return Ok(());
                    }
                    continue 'session;
                }
                return Err(err);
            }

            let mut offset = 0u64;
            while offset < size {
                let len = chunk.min(size - offset);
                let last = offset + len == size;
                let piece = Piece { offset, len, last, chunked: true };
                let step = self.streamed_step(loc.clone(), &feed, piece, &scopes).await;
                let err = match step {
                    Ok(resp)
                        if resp.status() == StatusCode::ACCEPTED
                            || resp.status() == StatusCode::NO_CONTENT =>
                    {
                        loc = self.location(&loc, resp.headers()).unwrap_or(loc);
                        offset += len;
                        continue;
                    }
                    Ok(resp) => {
                        let host = self.host().to_owned();
                        self.error_for(resp, || format!("upload session in {repo} on {host}")).await
                    }
                    Err(Step::Source(e)) => {
                        self.cancel_upload(repo, loc.as_str()).await;
                        return Err(e);
                    }
                    Err(Step::Transport(e)) => e,
                };
                if !(resumable(&err) && failures < max) {
                    self.cancel_upload(repo, loc.as_str()).await;
                    return Err(err);
                }
                failures += 1;
                tokio::time::sleep(backoff(failures)).await;
                let (next, have) = match self.upload_status(repo, &loc).await {
                    Ok(s) => s,
                    Err(status_err) if reopenable => {
                        // Lost, or (distribution) invalidated because it kept part of a chunk.
                        tracing::warn!(
                            registry = %self.host(), %digest, error = %err, status = %status_err,
                            "upload session cannot continue; starting the blob again"
                        );
                        self.cancel_upload(repo, loc.as_str()).await;
                        continue 'session;
                    }
                    Err(_) => {
                        self.cancel_upload(repo, loc.as_str()).await;
                        return Err(err);
                    }
                };
                loc = next;
                if have > size {
                    self.cancel_upload(repo, loc.as_str()).await;
                    return Err(ClientError::Invalid(format!(
                        "registry {} reports {have} bytes of a {size}-byte upload",
                        self.host()
                    )));
                }
                if have != feed.position().await {
                    if !reopenable {
                        self.cancel_upload(repo, loc.as_str()).await;
                        return Err(ClientError::Http(format!(
                            "upload of blob {digest} to {} was interrupted at byte {have} of {size} and \
                             its source cannot be read again; copy the blob again ({err})",
                            self.host()
                        )));
                    }
                    feed = match open(have).await {
                        Ok(s) => Feed::new(s, have, size),
                        Err(e) => {
                            self.cancel_upload(repo, loc.as_str()).await;
                            return Err(e);
                        }
                    };
                }
                tracing::warn!(
                    registry = %self.host(), %digest, at = have, total = size, error = %err,
                    "blob upload interrupted; resuming"
                );
                offset = have;
            }

            // Complete the session: PUT ?digest= without a body; the registry verifies.
            let req = Req::new(Method::PUT, with_digest(&loc, digest), scopes.clone());
            let resp = self.send(&req).await?;
            return self.finish_response(repo, digest, size, &loc, resp).await;
        }
    }

    /// 201 is success; a 404 after retries may mean an earlier try completed: check.
    async fn finish_response(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        loc: &Url,
        resp: Response,
    ) -> Result<(), ClientError> {
        if resp.status().is_success() {
            if let Some(d) =
                header_str(resp.headers(), "docker-content-digest").and_then(|d| d.parse::<Digest>().ok())
                && d.algorithm() == digest.algorithm()
                && d != *digest
            {
                return Err(ClientError::DigestMismatch { expected: digest.clone(), actual: d });
            }
            return Ok(());
        }
        if resp.status() == StatusCode::NOT_FOUND && self.head_blob(repo, digest).await? == Some(size) {
            return Ok(());
        }
        let host = self.host().to_owned();
        let err = self.error_for(resp, || format!("upload session in {repo} on {host}")).await;
        self.cancel_upload(repo, loc.as_str()).await;
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 10-19/20"), Some((10, 19, Some(20))));
        assert_eq!(parse_content_range("bytes 0-9/*"), Some((0, 9, None)));
        assert_eq!(parse_content_range("10-19/20"), None);
        assert_eq!(parse_upload_range("0-99"), Some(100));
        assert_eq!(parse_upload_range("bytes=0-99"), Some(100));
        assert_eq!(parse_upload_range("0-0"), Some(0));
        assert_eq!(parse_upload_range("0--1"), Some(0));
        assert_eq!(parse_upload_range("5-9"), None);
    }

    #[test]
    fn digest_query_appended() {
        let d = Digest::sha256_of(b"");
        let u = Url::parse("http://r/v2/a/blobs/uploads/x?_state=a%3D%3D").unwrap();
        let w = with_digest(&u, &d);
        assert_eq!(
            w.as_str(),
            format!("http://r/v2/a/blobs/uploads/x?_state=a%3D%3D&digest=sha256%3A{}", d.hex())
        );
        let u = Url::parse("http://r/v2/a/blobs/uploads/x").unwrap();
        assert!(with_digest(&u, &d).as_str().ends_with(&format!("/x?digest=sha256%3A{}", d.hex())));
    }

    #[tokio::test]
    async fn feed_cuts_bodies_and_checks_length() {
        let chunks: Vec<Result<Bytes, ClientError>> =
            vec![Ok(Bytes::from_static(b"abc")), Ok(Bytes::new()), Ok(Bytes::from_static(b"defgh"))];
        let feed = Feed::new(Box::pin(futures_util::stream::iter(chunks)), 0, 8);
        let mut f = feed.state.lock().await;
        assert_eq!(&f.take(2, false).await.unwrap()[..], b"ab");
        assert_eq!(&f.take(4, false).await.unwrap()[..], b"c");
        assert_eq!(&f.take(3, false).await.unwrap()[..], b"def");
        assert_eq!(&f.take(2, true).await.unwrap()[..], b"gh");
        assert_eq!(f.position, 8);
        drop(f);

        let chunks: Vec<Result<Bytes, ClientError>> = vec![Ok(Bytes::from_static(b"abcdef"))];
        let feed = Feed::new(Box::pin(futures_util::stream::iter(chunks)), 0, 4);
        assert!(feed.state.lock().await.take(4, true).await.is_err(), "too long");

        let chunks: Vec<Result<Bytes, ClientError>> = vec![
            Ok(Bytes::from_static(b"ab")),
            Err(ClientError::DigestMismatch {
                expected: Digest::sha256_of(b"x"),
                actual: Digest::sha256_of(b"y"),
            }),
        ];
        let feed = Feed::new(Box::pin(futures_util::stream::iter(chunks)), 0, 2);
        // The final bytes are held back until the source ends: its error wins.
        assert!(matches!(
            feed.state.lock().await.take(2, true).await,
            Err(ClientError::DigestMismatch { .. })
        ));
    }
}
