//! Which children of an index a platform filter keeps (DESIGN.md, "The mirror", step 1).

use std::collections::HashSet;

use wharf_oci::{Descriptor, Digest, Platform, media_types};

/// The children of an index split by the filter, each in index order.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    pub selected: Vec<Descriptor>,
    pub filtered: Vec<Descriptor>,
}

/// A child's real platform: `None` for no platform and for `unknown/unknown` (buildx
/// attestations), which follow the child they describe.
pub(crate) fn real_platform(d: &Descriptor) -> Option<&Platform> {
    d.platform.as_ref().filter(|p| !p.is_unknown())
}

/// `os/arch[/variant]` of a child for reports; `None` when it has no real platform.
pub(crate) fn label(d: &Descriptor) -> Option<String> {
    real_platform(d).map(|p| p.normalized().to_string())
}

/// Select children: those whose platform any of `wanted` selects (all when `wanted` is empty);
/// children without a real platform only when `unknown/unknown` is asked for, or when they
/// are the attestation of a selected child; nested indexes without a platform are kept whole.
pub(crate) fn select(children: &[Descriptor], wanted: &[Platform]) -> Selection {
    if wanted.is_empty() {
        return Selection { selected: children.to_vec(), filtered: Vec::new() };
    }
    let unknown_asked = wanted.iter().any(Platform::is_unknown);
    let by_platform = |d: &Descriptor| match real_platform(d) {
        Some(p) => wanted.iter().any(|w| !w.is_unknown() && w.selects(p)),
        None => media_types::is_index(&d.media_type) && d.platform.is_none(),
    };
    let chosen: HashSet<Digest> =
        children.iter().filter(|d| by_platform(d)).map(|d| d.digest.clone()).collect();
    let keep = |d: &Descriptor| {
        by_platform(d)
            || (real_platform(d).is_none()
                && (unknown_asked || d.attestation_subject().is_some_and(|s| chosen.contains(&s))))
    };
    let (selected, filtered) = children.iter().cloned().partition(|d| keep(d));
    Selection { selected, filtered }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn child(n: u8, platform: &str) -> Descriptor {
        let mut p: Platform = platform.parse().unwrap();
        if platform == "linux/arm64/v8" {
            p.variant = Some("v8".into()); // as buildx writes it, un-normalised
        }
        Descriptor {
            media_type: media_types::OCI_MANIFEST.into(),
            digest: digest(n),
            size: 100,
            urls: None,
            annotations: None,
            platform: Some(p),
            artifact_type: None,
            data: None,
        }
    }

    fn attestation(n: u8, of: u8) -> Descriptor {
        let mut d = child(n, "unknown/unknown");
        d.annotations = Some(BTreeMap::from([
            ("vnd.docker.reference.type".to_owned(), "attestation-manifest".to_owned()),
            ("vnd.docker.reference.digest".to_owned(), digest(of).to_string()),
        ]));
        d
    }

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    fn digests(v: &[Descriptor]) -> Vec<Digest> {
        v.iter().map(|d| d.digest.clone()).collect()
    }

    #[test]
    fn selects_platforms_and_their_attestations() {
        let children = vec![
            child(1, "linux/amd64"),
            child(2, "linux/arm64/v8"),
            child(3, "linux/arm/v7"),
            child(4, "linux/s390x"),
            attestation(5, 1),
            attestation(6, 3),
        ];
        let s = select(&children, &[p("linux/amd64"), p("linux/aarch64")]);
        assert_eq!(digests(&s.selected), vec![digest(1), digest(2), digest(5)]);
        assert_eq!(digests(&s.filtered), vec![digest(3), digest(4), digest(6)]);
        assert_eq!(label(&children[1]).unwrap(), "linux/arm64");
        assert_eq!(label(&children[4]), None);

        let all = select(&children, &[]);
        assert_eq!(all.selected.len(), 6);
        assert!(all.filtered.is_empty());

        // unknown/unknown asked for by name: every attestation, and nothing else.
        let s = select(&children, &[p("unknown/unknown")]);
        assert_eq!(digests(&s.selected), vec![digest(5), digest(6)]);

        // Variants count.
        let s = select(&children, &[p("linux/arm/v6")]);
        assert!(s.selected.is_empty());
    }

    #[test]
    fn nested_index_without_platform_is_kept() {
        let mut nested = child(7, "linux/amd64");
        nested.platform = None;
        nested.media_type = media_types::OCI_INDEX.into();
        let children = vec![child(1, "linux/amd64"), nested, child(2, "linux/s390x")];
        let s = select(&children, &[p("linux/s390x")]);
        assert_eq!(digests(&s.selected), vec![digest(7), digest(2)]);
    }
}
