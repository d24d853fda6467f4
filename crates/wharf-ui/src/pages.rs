//! The pages. Each handler reads what the visitor may see through the registry's operations
//! and renders it; anything the visitor may not pull is answered exactly like something that
//! does not exist.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use wharf_metadata::{RepoSummary, TagSummary};
use wharf_oci::manifest::{Descriptor, ManifestKind};
use wharf_oci::{Digest, Manifest, Reference, RepoName, media_types};
use wharf_registry::browse::{COSIGN_TAG_SUFFIXES, TagSchemeReferrer};
use wharf_registry::{IndexReport, RegistryError};

use crate::format::{bytes, percent, podman_platform_flags, query_escape, short_digest, time};
use crate::layout::{badge, code_copy, copy};
use crate::session::{self, SESSION_COOKIE, SESSION_SECS};
use crate::{Ctx, UiState, Visitor};

/// Rows per page unless `n` says otherwise.
const PAGE: u32 = 50;
const PAGE_MAX: u32 = 500;
/// Repositories read per query while filtering by permission.
const REPO_BATCH: u32 = 500;

type Params = HashMap<String, String>;

fn params(uri: &Uri) -> Params {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect()
}

fn search_param(p: &Params) -> Option<String> {
    p.get("q").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn page_size(p: &Params) -> u32 {
    p.get("n").and_then(|n| n.parse().ok()).unwrap_or(PAGE).clamp(1, PAGE_MAX)
}

fn repo_link(repo: &RepoName) -> String {
    format!("/ui/repo/{repo}")
}

fn manifest_link(repo: &RepoName, reference: &str) -> String {
    format!("/ui/repo/{repo}/manifest/{reference}")
}

// ---------------------------------------------------------------------------------------------
// Errors a person understands.

fn not_found_page(ctx: &Ctx, title: &str, what: Markup) -> Response {
    let body = html! {
        h1 { (title) }
        div.note.error role="alert" { (what) }
        @if ctx.visitor == Visitor::Anonymous {
            p { "Some repositories are visible only after you " a href="/ui/login" { "log in" } "." }
        }
        p { a href="/ui/" { "Back to the repositories" } }
    };
    ctx.page(StatusCode::NOT_FOUND, title, body)
}

fn no_repository(ctx: &Ctx, name: &str) -> Response {
    not_found_page(
        ctx,
        "Repository not found",
        html! { "There is no repository named " code { (name) } " here, or you may not see it." },
    )
}

fn failure(ctx: &Ctx, repo: &str, e: RegistryError) -> Response {
    match e {
        RegistryError::NameUnknown(_) => no_repository(ctx, repo),
        RegistryError::ManifestUnknown { message } => not_found_page(
            ctx,
            "Tag or digest not found",
            html! { (message) ". " a href=(format!("/ui/repo/{repo}")) { "See the tags of " (repo) } },
        ),
        other => {
            tracing::warn!(error = %other, "web UI: reading the registry failed");
            ctx.page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The registry could not answer",
                html! {
                    h1 { "The registry could not answer" }
                    div.note.error role="alert" {
                        "Reading this page from the registry's database or storage failed. \
                         Try again in a moment; the server log has the details."
                    }
                },
            )
        }
    }
}

pub(crate) async fn not_found(State(st): State<UiState>, headers: HeaderMap, uri: Uri) -> Response {
    let ctx = Ctx::new(&st, &headers);
    not_found_page(&ctx, "Page not found", html! { "There is no page at " code { (uri.path()) } "." })
}

// ---------------------------------------------------------------------------------------------
// Repositories.

pub(crate) async fn repositories(State(st): State<UiState>, headers: HeaderMap, uri: Uri) -> Response {
    let ctx = Ctx::new(&st, &headers);
    let p = params(&uri);
    let search = search_param(&p);
    let after = p.get("after").cloned().filter(|s| !s.is_empty());
    let n = page_size(&p);

    // Read in batches, keep what the visitor may pull, stop one past the page.
    let mut shown: Vec<RepoSummary> = Vec::new();
    let mut more = false;
    let mut cursor = after.clone();
    'batches: loop {
        let batch = match st.registry.repo_summaries(search.as_deref(), cursor.as_deref(), REPO_BATCH).await {
            Ok(b) => b,
            Err(e) => return failure(&ctx, "", e),
        };
        let full = batch.len() == REPO_BATCH as usize;
        for r in batch {
            cursor = Some(r.repo.to_string());
            if !ctx.may_pull(&r.repo) {
                continue;
            }
            if shown.len() == n as usize {
                more = true;
                break 'batches;
            }
            shown.push(r);
        }
        if !full {
            break;
        }
    }

    let q = search.clone().unwrap_or_default();
    let keep = |extra: &str| {
        let mut s = format!("/ui/?n={n}");
        if !q.is_empty() {
            s.push_str(&format!("&q={}", query_escape(&q)));
        }
        s.push_str(extra);
        s
    };
    let body = html! {
        h1 { "Repositories" }
        form.search role="search" method="get" action="/ui/" {
            label for="q" { "Search repositories" }
            input #q type="search" name="q" value=(q) placeholder="name contains…";
            @if n != PAGE { input type="hidden" name="n" value=(n); }
            button type="submit" { "Search" }
            @if search.is_some() { a href="/ui/" { "Clear" } }
        }
        @if shown.is_empty() {
            div.note #empty {
                @if search.is_some() { "No repository you may see matches “" (q) "”." }
                @else if after.is_some() { "No more repositories." }
                @else { "No repositories you may see yet." }
                @if ctx.visitor == Visitor::Anonymous { " " a href="/ui/login" { "Log in" } " to see more." }
            }
        } @else {
            div.scroll {
                table #repositories {
                    caption { "Repositories" @if let Some(a) = &after { " after " code { (a) } } }
                    thead { tr {
                        th scope="col" { "Repository" }
                        th scope="col" class="num" { "Tags" }
                        th scope="col" class="num" { "Stored" }
                        th scope="col" { "Mirror" }
                    } }
                    tbody {
                        @for r in &shown {
                            tr {
                                th scope="row" { a href=(repo_link(&r.repo)) { (r.repo) } }
                                td.num { (r.tags) }
                                td.num { (bytes(r.stored_bytes)) }
                                td {
                                    @if r.sparse { (badge("sparse", "sparse")) }
                                    @else { (badge("complete", "complete")) }
                                }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages of repositories" {
            @if after.is_some() { a #first-page href=(keep("")) { "First page" } }
            @if more {
                @if let Some(last) = shown.last() {
                    a #next-page rel="next" href=(keep(&format!("&after={}", query_escape(last.repo.as_str())))) { "Next page" }
                }
            }
        }
    };
    ctx.page(StatusCode::OK, "Repositories", body)
}

// ---------------------------------------------------------------------------------------------
// A repository's tags.

pub(crate) async fn repository_or_manifest(
    State(st): State<UiState>,
    headers: HeaderMap,
    Path(rest): Path<String>,
    uri: Uri,
) -> Response {
    let ctx = Ctx::new(&st, &headers);
    let rest = rest.trim_end_matches('/');
    if let Some((name, reference)) = rest.rsplit_once("/manifest/") {
        return manifest_page(&st, &ctx, name, reference).await;
    }
    tags_page(&st, &ctx, rest, &params(&uri)).await
}

/// What a tag points at, in a word: (badge class, label).
fn tag_kind(t: &TagSummary) -> (&'static str, String) {
    let index = t.media_type == media_types::OCI_INDEX || t.media_type == media_types::DOCKER_MANIFEST_LIST;
    if index {
        return if t.present_children < t.children {
            ("sparse", "sparse index".into())
        } else {
            ("index", "index".into())
        };
    }
    if let Some(kind) = COSIGN_TAG_SUFFIXES.iter().find_map(|(suffix, kind)| {
        let hex = t.tag.strip_prefix("sha256-")?.strip_suffix(&format!(".{suffix}"))?;
        (hex.len() == 64).then_some(*kind)
    }) {
        return ("artifact", kind.to_owned());
    }
    match t.artifact_type.as_deref() {
        None
        | Some("application/vnd.oci.image.config.v1+json")
        | Some("application/vnd.docker.container.image.v1+json") => ("image", "image".into()),
        Some(a) => ("artifact", referrer_label(Some(a))),
    }
}

async fn tags_page(st: &UiState, ctx: &Ctx, name: &str, p: &Params) -> Response {
    let Some(repo) = name.parse::<RepoName>().ok().filter(|r| ctx.may_pull(r)) else {
        return no_repository(ctx, name);
    };
    let search = search_param(p);
    let n = page_size(p);
    let page: u64 = p.get("page").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let (total, tags) =
        match st.registry.tag_summaries(&repo, search.as_deref(), (page - 1) * u64::from(n), n).await {
            Ok(t) => t,
            Err(e) => return failure(ctx, name, e),
        };
    let pages = total.div_ceil(u64::from(n)).max(1);
    let q = search.clone().unwrap_or_default();
    let link = |to: u64| {
        let mut s = format!("{}?page={to}", repo_link(&repo));
        if n != PAGE {
            s.push_str(&format!("&n={n}"));
        }
        if !q.is_empty() {
            s.push_str(&format!("&q={}", query_escape(&q)));
        }
        s
    };
    let body = html! {
        p.crumbs { a href="/ui/" { "Repositories" } " / " }
        h1 { (repo) }
        p { "Pull: " (code_copy(&format!("{}/{repo}", ctx.host), "the repository address")) }
        form.search role="search" method="get" action=(repo_link(&repo)) {
            label for="q" { "Search tags" }
            input #q type="search" name="q" value=(q) placeholder="tag contains…";
            @if n != PAGE { input type="hidden" name="n" value=(n); }
            button type="submit" { "Search" }
            @if search.is_some() { a href=(repo_link(&repo)) { "Clear" } }
        }
        @if tags.is_empty() {
            div.note #empty {
                @if search.is_some() { "No tag matches “" (q) "”." } @else { "This repository has no tags on this page." }
            }
        } @else {
            div.scroll {
                table #tags {
                    caption { (total) " tags, newest first · page " (page) " of " (pages) }
                    thead { tr {
                        th scope="col" { "Tag" }
                        th scope="col" { "Kind" }
                        th scope="col" { "Platforms" }
                        th scope="col" class="num" { "Size" }
                        th scope="col" { "Digest" }
                        th scope="col" class="hide-narrow" { "Updated" }
                    } }
                    tbody {
                        @for t in &tags {
                            @let (class, label) = tag_kind(t);
                            tr {
                                th scope="row" { a href=(manifest_link(&repo, &t.tag)) { (t.tag) } }
                                td { (badge(class, &label)) }
                                td {
                                    @if t.children > 0 { (t.present_children) " of " (t.children) " present" }
                                    @else { span.muted { "—" } }
                                }
                                td.num { (bytes(t.stored_bytes)) }
                                td { span.codecopy { code.nowrap title=(t.digest) { (short_digest(&t.digest)) } (copy(&t.digest.to_string(), "the digest")) } }
                                td.hide-narrow { (time(t.updated_at)) }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages of tags" {
            @if page > 1 { a #prev-page rel="prev" href=(link(page - 1)) { "Previous page" } }
            span #page-of { "Page " (page) " of " (pages) }
            @if page < pages { a #next-page rel="next" href=(link(page + 1)) { "Next page" } }
        }
    };
    ctx.page(StatusCode::OK, repo.as_str(), body)
}

// ---------------------------------------------------------------------------------------------
// A manifest: an index with its platforms, or an image.

/// A person's word for an artifact type.
fn referrer_label(artifact_type: Option<&str>) -> String {
    let Some(a) = artifact_type else { return "artifact".into() };
    let l = a.to_ascii_lowercase();
    if l.contains("cosign.artifact.sig") || l.contains("signature") || l.contains("simplesigning") {
        "signature".into()
    } else if l.contains("spdx") || l.contains("cyclonedx") || l.contains("sbom") {
        "SBOM".into()
    } else if l.contains("in-toto") || l.contains("attestation") || l.contains("dsse") || l.contains(".att") {
        "attestation".into()
    } else {
        a.to_owned()
    }
}

/// Signatures, SBOMs and attestations of one subject, from both sources.
struct Referrers<'a> {
    api: Vec<(String, Digest, u64)>,
    tags: Vec<&'a TagSchemeReferrer>,
}

fn referrer_list(repo: &RepoName, r: &Referrers<'_>, extra: Markup) -> Markup {
    html! {
        @if r.api.is_empty() && r.tags.is_empty() && extra.0.is_empty() {
            span.muted { "none" }
        } @else {
            ul.refs {
                @for (label, digest, size) in &r.api {
                    li.referrer {
                        (badge("info", label)) " "
                        a href=(manifest_link(repo, &digest.to_string())) { code.nowrap { (short_digest(digest)) } }
                        " " span.muted { (bytes(*size)) " · referrers API" }
                    }
                }
                @for t in &r.tags {
                    li.referrer {
                        (badge("info", t.kind)) " "
                        a href=(manifest_link(repo, &t.tag)) { code.nowrap { (short_digest(&t.digest)) } }
                        " " span.muted { "tag " code { (t.tag) } }
                    }
                }
                (extra)
            }
        }
    }
}

async fn manifest_page(st: &UiState, ctx: &Ctx, name: &str, reference: &str) -> Response {
    let Some(repo) = name.parse::<RepoName>().ok().filter(|r| ctx.may_pull(r)) else {
        return no_repository(ctx, name);
    };
    let Ok(reference) = reference.parse::<Reference>() else {
        return failure(
            ctx,
            name,
            RegistryError::ManifestUnknown {
                message: format!("{reference:?} is neither a valid tag nor a digest"),
            },
        );
    };
    let stored = match st.registry.browse_manifest(&repo, &reference).await {
        Ok(m) => m,
        Err(e) => return failure(ctx, name, e),
    };
    let parsed = Manifest::parse(Some(&stored.media_type), &stored.content);
    let is_index = parsed.as_ref().map(Manifest::is_index).unwrap_or(false);
    if is_index {
        let report = match st.registry.index_report(&repo, &Reference::Digest(stored.digest.clone())).await {
            Ok(r) => r,
            Err(e) => return failure(ctx, name, e),
        };
        return index_page(st, ctx, &repo, &reference, report).await;
    }
    image_page(
        st,
        ctx,
        &repo,
        &reference,
        &stored.digest,
        &stored.media_type,
        stored.content.len(),
        parsed.ok(),
    )
    .await
}

fn title_of(repo: &RepoName, reference: &Reference) -> String {
    match reference {
        Reference::Tag(t) => format!("{repo}:{t}"),
        Reference::Digest(d) => format!("{repo}@{}", short_digest(d)),
    }
}

/// `HOST/repo:tag` or `HOST/repo@digest`.
fn pull_ref(ctx: &Ctx, repo: &RepoName, reference: &Reference) -> String {
    match reference {
        Reference::Tag(t) => format!("{}/{repo}:{t}", ctx.host),
        Reference::Digest(d) => format!("{}/{repo}@{d}", ctx.host),
    }
}

async fn index_page(
    st: &UiState,
    ctx: &Ctx,
    repo: &RepoName,
    reference: &Reference,
    report: IndexReport,
) -> Response {
    let mut subjects = vec![report.digest.clone()];
    subjects.extend(report.children.iter().map(|c| c.digest.clone()));
    let tag_refs = match st.registry.tag_scheme_referrers(repo, &subjects).await {
        Ok(t) => t,
        Err(e) => return failure(ctx, repo.as_str(), e),
    };
    let refs_of = |subject: &Digest, api: &[wharf_registry::ReferrerReport]| Referrers {
        api: api
            .iter()
            .map(|r| (referrer_label(r.artifact_type.as_deref()), r.digest.clone(), r.size))
            .collect(),
        tags: tag_refs.iter().filter(|t| t.subject == *subject).collect(),
    };
    // Buildx attestation manifests go with the platform they describe.
    let platforms: Vec<&wharf_registry::ChildReport> =
        report.children.iter().filter(|c| c.attestation_for.is_none()).collect();
    let attestations_of = |d: &Digest| -> Vec<&wharf_registry::ChildReport> {
        report.children.iter().filter(|c| c.attestation_for.as_ref() == Some(d)).collect()
    };
    let present = platforms.iter().filter(|c| c.present).count();
    let saved = report.full_bytes.saturating_sub(report.present_bytes);
    let approx = if report.full_bytes_exact { "" } else { "≈ " };
    let title = title_of(repo, reference);
    let whole = pull_ref(ctx, repo, reference);
    let index_refs = refs_of(&report.digest, &report.referrers);

    let body = html! {
        p.crumbs { a href="/ui/" { "Repositories" } " / " a href=(repo_link(repo)) { (repo) } " / " }
        h1 { (title) " "
            @if present < platforms.len() { (badge("sparse", "sparse index")) } @else { (badge("index", "index")) }
        }
        p { "Digest: " (code_copy(&report.digest.to_string(), "the index digest")) }
        dl.figures #figures {
            div { dt { "Platforms present" } dd #platforms-present { (present) " of " (platforms.len()) } }
            div { dt { "Stored here" } dd #stored { (bytes(report.present_bytes)) } }
            div { dt { "The full index would need" } dd #full { (approx) (bytes(report.full_bytes)) } }
            div { dt { "Saved by the partial mirror" } dd #saved { (approx) (bytes(saved)) " (" (percent(saved, report.full_bytes)) ")" } }
        }
        p.muted {
            "Media type " code { (report.media_type) } " · index policy of this repository: " (report.policy)
            @if !report.full_bytes_exact { " · absent platforms are estimated at the average size of the present ones" }
        }
        h2 #signatures-heading { "Signatures and attestations of the index" }
        div #index-referrers { (referrer_list(repo, &index_refs, html! {})) }
        h2 { "Platforms" }
        div.scroll {
            table #platforms {
                caption { (platforms.len()) " platforms listed by the index; " (platforms.len() - present) " not in this registry" }
                thead { tr {
                    th scope="col" { "Platform" }
                    th scope="col" { "Status" }
                    th scope="col" class="num" { "Size" }
                    th scope="col" { "Digest" }
                    th scope="col" { "Signatures, SBOMs, attestations" }
                    th scope="col" { "Pull" }
                } }
                tbody {
                    @for c in &platforms {
                        @let platform = c.platform.clone().unwrap_or_else(|| "no platform".into());
                        @let atts = attestations_of(&c.digest);
                        tr.platform.absent[!c.present] data-platform=(platform) {
                            th scope="row" { code.nowrap { (platform) } }
                            td.status {
                                @if c.present { (badge("present", "present")) } @else { (badge("absent", "absent")) }
                            }
                            td.num {
                                @match c.stored_bytes {
                                    Some(b) => { (bytes(b)) }
                                    None => { span.muted title="size of the platform's manifest; its layers are not here" { "manifest " (bytes(c.size)) } }
                                }
                            }
                            td {
                                @if c.present {
                                    a href=(manifest_link(repo, &c.digest.to_string())) { code.nowrap title=(c.digest) { (short_digest(&c.digest)) } }
                                } @else { code.nowrap title=(c.digest) { (short_digest(&c.digest)) } }
                                " " (copy(&c.digest.to_string(), "the platform digest"))
                            }
                            td.referrers {
                                (referrer_list(repo, &refs_of(&c.digest, &c.referrers), html! {
                                    @for a in &atts {
                                        li.referrer {
                                            (badge("info", "buildx attestation")) " "
                                            code.nowrap { (short_digest(&a.digest)) } " "
                                            @if a.present { span.muted { "present" } } @else { span.muted { "absent" } }
                                        }
                                    }
                                }))
                            }
                            td.pull {
                                @if c.present {
                                    ul.cmds {
                                        @if let Some(flags) = podman_platform_flags(&platform) {
                                            li { (code_copy(&format!("podman pull {flags} {whole}"), &format!("the pull command for {platform}"))) }
                                        }
                                        li { (code_copy(&format!("podman pull {}/{repo}@{}", ctx.host, c.digest), &format!("the pull-by-digest command for {platform}"))) }
                                    }
                                } @else {
                                    span.muted { "Not in this registry: pulling " (platform) " fails with a message saying so." }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    ctx.page(StatusCode::OK, &title, body)
}

#[allow(clippy::too_many_arguments)]
async fn image_page(
    st: &UiState,
    ctx: &Ctx,
    repo: &RepoName,
    reference: &Reference,
    digest: &Digest,
    media_type: &str,
    size: usize,
    parsed: Option<Manifest>,
) -> Response {
    let api = match st.registry.referrer_list(repo, digest).await {
        Ok(r) => r,
        Err(e) => return failure(ctx, repo.as_str(), e),
    };
    let tag_refs = match st.registry.tag_scheme_referrers(repo, std::slice::from_ref(digest)).await {
        Ok(t) => t,
        Err(e) => return failure(ctx, repo.as_str(), e),
    };
    let refs = Referrers {
        api: api
            .into_iter()
            .map(|r| (referrer_label(r.artifact_type.as_deref()), r.digest, r.size))
            .collect(),
        tags: tag_refs.iter().collect(),
    };
    let (config, layers): (Option<Descriptor>, Vec<Descriptor>) = match parsed.as_ref().map(|m| &m.kind) {
        Some(ManifestKind::Image { config, layers }) => (Some(config.clone()), layers.clone()),
        _ => (None, Vec::new()),
    };
    let total: u64 =
        size as u64 + config.as_ref().map_or(0, |c| c.size) + layers.iter().map(|l| l.size).sum::<u64>();
    let artifact = parsed.as_ref().and_then(|m| m.artifact_type.clone());
    let subject = parsed.as_ref().and_then(|m| m.subject.clone());
    let title = title_of(repo, reference);
    let body = html! {
        p.crumbs { a href="/ui/" { "Repositories" } " / " a href=(repo_link(repo)) { (repo) } " / " }
        h1 { (title) " " @if artifact.is_some() { (badge("artifact", "artifact")) } @else { (badge("image", "image")) } }
        p { "Digest: " (code_copy(&digest.to_string(), "the digest")) }
        dl.figures {
            div { dt { "Size" } dd #stored { (bytes(total)) } }
            div { dt { "Layers" } dd { (layers.len()) } }
        }
        p.muted { "Media type " code { (media_type) }
            @if let Some(a) = &artifact { " · artifact type " code { (a) } } }
        @if let Some(s) = &subject {
            p #subject { "Refers to " a href=(manifest_link(repo, &s.digest.to_string())) { code.nowrap { (short_digest(&s.digest)) } } }
        }
        h2 { "Pull" }
        ul.cmds {
            @if let Reference::Tag(_) = reference {
                li { (code_copy(&format!("podman pull {}", pull_ref(ctx, repo, reference)), "the pull command")) }
            }
            li { (code_copy(&format!("podman pull {}/{repo}@{digest}", ctx.host), "the pull-by-digest command")) }
        }
        h2 { "Signatures, SBOMs and attestations" }
        div #referrers { (referrer_list(repo, &refs, html! {})) }
        @if let Some(c) = &config {
            h2 { "Config" }
            p { code { (c.media_type) } " · " (bytes(c.size)) " · " (code_copy(&c.digest.to_string(), "the config digest")) }
        }
        @if !layers.is_empty() {
            h2 { "Layers" }
            div.scroll {
                table #layers {
                    thead { tr {
                        th scope="col" class="num" { "#" }
                        th scope="col" { "Media type" }
                        th scope="col" class="num" { "Size" }
                        th scope="col" { "Digest" }
                    } }
                    tbody {
                        @for (i, l) in layers.iter().enumerate() {
                            tr {
                                td.num { (i + 1) }
                                td { code { (l.media_type) } }
                                td.num { (bytes(l.size)) }
                                td { (code_copy(&l.digest.to_string(), "the layer digest")) }
                            }
                        }
                    }
                }
            }
        }
    };
    ctx.page(StatusCode::OK, &title, body)
}

// ---------------------------------------------------------------------------------------------
// Mirrors and storage.

pub(crate) async fn mirrors(State(st): State<UiState>, headers: HeaderMap, uri: Uri) -> Response {
    let ctx = Ctx::new(&st, &headers);
    let p = params(&uri);
    let mirrors: Vec<crate::MirrorStatus> =
        st.mirrors.statuses().into_iter().filter(|m| ctx.may_pull(&m.dest)).collect();
    let requested = p.get("requested").filter(|n| mirrors.iter().any(|m| &m.name == *n));
    let body = html! {
        h1 { "Mirrors" }
        @if let Some(name) = requested {
            div.note role="status" #requested { "A run of " strong { (name) } " was requested: it starts now, or right after the run in progress." }
        }
        @if mirrors.is_empty() {
            div.note #empty { "No mirrors you may see. Mirrors are configured with " code { "[[mirrors]]" } " in the server config." }
        } @else {
            div.scroll {
                table #mirrors {
                    thead { tr {
                        th scope="col" { "Mirror" }
                        th scope="col" { "Source → destination" }
                        th scope="col" { "State" }
                        th scope="col" { "Last run" }
                        th scope="col" { "Next run" }
                        th scope="col" { "Actions" }
                    } }
                    tbody {
                        @for m in &mirrors {
                            tr data-mirror=(m.name) {
                                th scope="row" { (m.name) }
                                td { code { (m.source) } " → " a href=(repo_link(&m.dest)) { (m.dest) } }
                                td { @if m.running { (badge("running", "running")) } @else { (badge("info", "idle")) } }
                                td {
                                    @match &m.last_run {
                                        None => { span.muted { "not run yet" } }
                                        Some(r) => {
                                            @if r.ok { (badge("ok", "succeeded")) } @else { (badge("failed", "failed")) }
                                            " " (crate::format::rfc3339(&r.finished)) br;
                                            span.muted { (r.images) " images · " (bytes(r.bytes_copied)) " copied · "
                                                (bytes(r.bytes_existing)) " already here · " (bytes(r.bytes_filtered)) " left out by the platform filter" }
                                            @if !r.failures.is_empty() {
                                                ul.refs { @for (image, error) in &r.failures { li { code { (image) } ": " (error) } } }
                                            }
                                        }
                                    }
                                }
                                td { @if let Some(n) = &m.next_run { (crate::format::rfc3339(n)) } @else { span.muted { "—" } } }
                                td {
                                    @if ctx.may_push(&m.dest) {
                                        form.inline method="post" action="/ui/mirrors/run" {
                                            input type="hidden" name="csrf" value=(ctx.csrf);
                                            input type="hidden" name="name" value=(m.name);
                                            button.primary type="submit" aria-label=(format!("Run mirror {} now", m.name)) { "Run now" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    ctx.page(StatusCode::OK, "Mirrors", body)
}

pub(crate) async fn run_mirror(State(st): State<UiState>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = Ctx::new(&st, &headers);
    let form = form_fields(&body);
    if let Some(refused) = check_csrf(&st, &ctx, &headers, &form) {
        return refused;
    }
    let name = form.get("name").cloned().unwrap_or_default();
    let target = st.mirrors.statuses().into_iter().find(|m| m.name == name && ctx.may_pull(&m.dest));
    match target {
        Some(m) if ctx.may_push(&m.dest) => {
            st.mirrors.request_run(&m.name);
            see_other(&format!("/ui/mirrors?requested={}", query_escape(&m.name)), None)
        }
        Some(_) => ctx.page(
            StatusCode::FORBIDDEN,
            "Not allowed",
            html! { h1 { "Not allowed" } div.note.error role="alert" { "Running a mirror needs push rights on its destination." } },
        ),
        None => not_found_page(&ctx, "Mirror not found", html! { "There is no mirror named " code { (name) } " that you may see." }),
    }
}

pub(crate) async fn storage(State(st): State<UiState>, headers: HeaderMap) -> Response {
    let ctx = Ctx::new(&st, &headers);
    let report = match st.registry.storage_report(|r| ctx.may_pull(r)).await {
        Ok(r) => r,
        Err(e) => return failure(&ctx, "", e),
    };
    let t = &report.totals;
    let approx = if t.full_bytes_exact { "" } else { "≈ " };
    let saved = t.full_bytes.saturating_sub(t.present_bytes);
    let body = html! {
        h1 { "Storage" }
        dl.figures #figures {
            div { dt { "Repositories" } dd { (t.repositories) } }
            div { dt { "Blobs stored (each once)" } dd #unique { (bytes(t.unique_blob_bytes)) } }
            div { dt { "Indexes (sparse)" } dd { (t.indexes) " (" (t.sparse_indexes) ")" } }
            div { dt { "Indexes store" } dd #present { (bytes(t.present_bytes)) } }
            div { dt { "Complete, they would need" } dd #full { (approx) (bytes(t.full_bytes)) } }
            div { dt { "Saved by partial mirrors" } dd #saved { (approx) (bytes(saved)) " (" (percent(saved, t.full_bytes)) ")" } }
            @if let Some(b) = t.unlinked_blob_bytes {
                div { dt { "Unreferenced, awaiting gc" } dd { (bytes(b)) } }
            }
        }
        @if report.filtered {
            p.muted { "Only the repositories you may pull are counted." }
        }
        @if report.repositories.is_empty() {
            div.note #empty { "Nothing stored that you may see." }
        } @else {
            div.scroll {
                table #storage {
                    thead { tr {
                        th scope="col" { "Repository" }
                        th scope="col" class="num" { "Tags" }
                        th scope="col" class="num" { "Manifests" }
                        th scope="col" class="num" { "Indexes (sparse)" }
                        th scope="col" class="num" { "Linked blobs" }
                        th scope="col" class="num" { "Indexes store" }
                        th scope="col" class="num" { "Complete would need" }
                    } }
                    tbody {
                        @for r in &report.repositories {
                            tr {
                                th scope="row" { @match r.repository.parse::<RepoName>() {
                                    Ok(name) => { a href=(repo_link(&name)) { (name) } }
                                    Err(_) => { (r.repository) }
                                } }
                                td.num { (r.tags) }
                                td.num { (r.manifests) }
                                td.num { (r.indexes) " (" (r.sparse_indexes) ")" }
                                td.num { (bytes(r.linked_blob_bytes)) }
                                td.num { (bytes(r.present_bytes)) }
                                td.num { @if !r.full_bytes_exact { "≈ " } (bytes(r.full_bytes)) }
                            }
                        }
                    }
                }
            }
        }
    };
    ctx.page(StatusCode::OK, "Storage", body)
}

// ---------------------------------------------------------------------------------------------
// Logging in and out.

fn form_fields(body: &[u8]) -> Params {
    form_urlencoded::parse(body).into_owned().collect()
}

/// `None` when the form's CSRF field matches the visitor's cookie (and the request, if it says
/// where it comes from, comes from here); else the refusal.
fn check_csrf(st: &UiState, ctx: &Ctx, headers: &HeaderMap, form: &Params) -> Option<Response> {
    let cookie = session::cookie(headers, session::CSRF_COOKIE);
    let same_origin = match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        None | Some("null") => true,
        Some(origin) => origin.split_once("://").is_some_and(|(_, host)| host == ctx.host),
    };
    if same_origin && st.keys.csrf_ok(cookie, form.get("csrf").map(String::as_str)) {
        return None;
    }
    Some(ctx.page(
        StatusCode::FORBIDDEN,
        "Form expired",
        html! {
            h1 { "Form expired" }
            div.note.error role="alert" { "This form was not sent from this site's current page. Go back, reload the page and try again." }
        },
    ))
}

/// A 303 to `to`, setting `cookie` if given.
fn see_other(to: &str, cookie: Option<header::HeaderValue>) -> Response {
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response();
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// Where to go after logging in: a page of the UI, nothing else.
fn safe_next(next: Option<&String>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.contains("//") && !n.contains('\\') => n.clone(),
        _ => "/ui/".into(),
    }
}

fn login_body(ctx: &Ctx, next: &str, error: Option<&str>, user: &str) -> Markup {
    html! {
        h1 { "Log in" }
        @if ctx.visitor == Visitor::Open {
            div.note { "This registry has no " code { "[auth]" } ": everyone sees everything, there is nothing to log in to." }
        } @else {
            @if let Some(e) = error { div.note.error role="alert" #login-error { (e) } }
            form.login method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                input type="hidden" name="next" value=(next);
                label { "User name" input #user type="text" name="user" value=(user) autocomplete="username" required autofocus; }
                label { "Password" input #password type="password" name="password" autocomplete="current-password" required; }
                div { button.primary #submit type="submit" { "Log in" } }
            }
            p.muted { "The user names and passwords of this registry (its htpasswd file), as for " code { "podman login" } "." }
        }
    }
}

pub(crate) async fn login_form(State(st): State<UiState>, headers: HeaderMap, uri: Uri) -> Response {
    let ctx = Ctx::new(&st, &headers);
    let next = safe_next(params(&uri).get("next"));
    ctx.page(StatusCode::OK, "Log in", login_body(&ctx, &next, None, ""))
}

pub(crate) async fn login(
    State(st): State<UiState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = Ctx::new(&st, &headers);
    let form = form_fields(&body);
    if let Some(refused) = check_csrf(&st, &ctx, &headers, &form) {
        return refused;
    }
    let next = safe_next(form.get("next"));
    let Some(auth) = st.auth.clone() else { return see_other(&next, None) };
    let user = form.get("user").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    // The same path as the API's logins: throttled per client and user, bcrypt capped and off
    // the executor, or the LDAP directory.
    let peer = peer.map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |e| e.0.0.ip());
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let client = wharf_auth::throttle::client_address(peer, forwarded, auth.login_limits());
    let who = auth.password_login(client, user.clone(), password).await;
    match who {
        // A directory user's groups are not kept in the session: in the UI they see what
        // rules naming them grant (fewer rights than their groups', never more).
        Ok(wharf_auth::Identity::User(name) | wharf_auth::Identity::Member { user: name, .. }) => {
            tracing::info!(user = %name, "web UI login");
            let expires = wharf_auth::now_secs() + SESSION_SECS;
            let value = st.keys.session_value(&name, expires);
            see_other(&next, Some(session::set_cookie(&headers, SESSION_COOKIE, &value, SESSION_SECS)))
        }
        Err(
            e @ (wharf_auth::LoginError::Throttled(_)
            | wharf_auth::LoginError::Busy
            | wharf_auth::LoginError::Directory(_)),
        ) => {
            tracing::info!(user = ?user, error = %e, "web UI: login refused before checking");
            ctx.page(
                StatusCode::TOO_MANY_REQUESTS,
                "Log in",
                login_body(&ctx, &next, Some(&format!("Not checked: {e}.")), &user),
            )
        }
        _ => {
            tracing::info!(user = ?user, "web UI: failed login");
            ctx.page(
                StatusCode::UNAUTHORIZED,
                "Log in",
                login_body(&ctx, &next, Some("Wrong user name or password."), &user),
            )
        }
    }
}

pub(crate) async fn logout(State(st): State<UiState>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = Ctx::new(&st, &headers);
    if let Some(refused) = check_csrf(&st, &ctx, &headers, &form_fields(&body)) {
        return refused;
    }
    see_other("/ui/", Some(session::set_cookie(&headers, SESSION_COOKIE, "", 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_in_the_ui() {
        assert_eq!(safe_next(Some(&"/ui/repo/a".into())), "/ui/repo/a");
        assert_eq!(safe_next(Some(&"https://evil.example/".into())), "/ui/");
        assert_eq!(safe_next(Some(&"/ui//evil.example".into())), "/ui/");
        assert_eq!(safe_next(None), "/ui/");
    }

    #[test]
    fn referrer_labels() {
        assert_eq!(referrer_label(Some("application/vnd.dev.cosign.artifact.sig.v1+json")), "signature");
        assert_eq!(referrer_label(Some("application/spdx+json")), "SBOM");
        assert_eq!(referrer_label(Some("application/vnd.in-toto+json")), "attestation");
        assert_eq!(referrer_label(Some("application/x-other")), "application/x-other");
    }
}
