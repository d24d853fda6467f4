//! The `/v2/` route grammar and the names parsed at the edge: repository names, tags,
//! digests, references, platforms and image references (`docker://`, `oci:`, ...).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_oci::{Digest, Platform, Reference, RepoName, Route, Tag};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(route) = Route::parse(s) {
        let _ = route.repo();
    }
    if let Ok(name) = s.parse::<RepoName>() {
        assert_eq!(name.as_str(), s, "a repository name is kept as written");
        assert!(!name.as_str().contains(".."), "{s:?}");
    }
    if let Ok(tag) = s.parse::<Tag>() {
        assert_eq!(tag.as_str(), s);
    }
    if let Ok(d) = s.parse::<Digest>() {
        let again: Digest = d.to_string().parse().expect("a digest's text parses");
        assert_eq!(again, d);
        assert_eq!(d.hex().len(), d.algorithm().hex_len());
        if let Some(back) = Digest::from_tag_form(&d.tag_form()) {
            assert_eq!(back, d);
        }
    }
    if let Ok(r) = s.parse::<Reference>() {
        let again: Reference = r.to_string().parse().expect("a reference's text parses");
        assert_eq!(again, r);
    }
    if let Ok(p) = s.parse::<Platform>() {
        let n = p.normalized();
        assert_eq!(n.normalized(), n, "normalisation is idempotent");
        let _ = (p.selects(&n), p.is_unknown());
        let _ = n.to_string().parse::<Platform>();
    }
    let _ = s.parse::<wharf_mirror::ImageRef>();
});
