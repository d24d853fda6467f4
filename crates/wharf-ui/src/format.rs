//! Figures as people read them.

use wharf_oci::Digest;

/// `1.5 MiB`: binary units, one decimal from KiB up.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `sha256:0123456789ab`: enough to tell digests apart on a page.
pub(crate) fn short_digest(d: &Digest) -> String {
    let s = d.to_string();
    let (alg, hex) = s.split_once(':').unwrap_or(("", &s));
    format!("{alg}:{}", &hex[..hex.len().min(12)])
}

/// `2026-11-30 17:20 UTC` for unix seconds.
pub(crate) fn time(secs: i64) -> String {
    let t = wharf_auth::rfc3339(u64::try_from(secs).unwrap_or(0));
    rfc3339(&t)
}

/// An RFC 3339 time as `2026-11-30 17:20 UTC`.
pub(crate) fn rfc3339(t: &str) -> String {
    match (t.get(..10), t.get(11..16)) {
        (Some(d), Some(hm)) => format!("{d} {hm} UTC"),
        _ => t.to_owned(),
    }
}

/// podman's flags for a platform `os/arch[/variant]`: `--os` only when not linux.
pub(crate) fn podman_platform_flags(platform: &str) -> Option<String> {
    let mut parts = platform.split('/');
    let (os, arch, variant) = (parts.next()?, parts.next()?, parts.next());
    let mut flags = String::new();
    if os != "linux" {
        flags.push_str(&format!("--os {os} "));
    }
    flags.push_str(&format!("--arch {arch}"));
    if let Some(v) = variant {
        flags.push_str(&format!(" --variant {v}"));
    }
    Some(flags)
}

/// `Some(n)` out of `of`, as a percentage with no decimals.
pub(crate) fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0 %".into();
    }
    format!("{:.0} %", part as f64 * 100.0 / whole as f64)
}

/// Text for a query string value.
pub(crate) fn query_escape(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(time(0), "1970-01-01 00:00 UTC");
        assert_eq!(podman_platform_flags("linux/arm64").as_deref(), Some("--arch arm64"));
        assert_eq!(podman_platform_flags("linux/arm/v7").as_deref(), Some("--arch arm --variant v7"));
        assert_eq!(podman_platform_flags("windows/amd64").as_deref(), Some("--os windows --arch amd64"));
        assert_eq!(podman_platform_flags("nonsense"), None);
        assert_eq!(percent(1, 4), "25 %");
        assert_eq!(query_escape("a b&c/d"), "a+b%26c%2Fd");
        let d = Digest::sha256_of(b"x");
        assert_eq!(short_digest(&d).len(), "sha256:".len() + 12);
    }
}
