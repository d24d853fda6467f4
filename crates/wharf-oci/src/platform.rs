//! Platforms (`os/arch[/variant]`) normalised the way containerd, docker and podman do,
//! so that `aarch64`, `arm64` and `arm64/v8` name the same thing.

use std::fmt;
use std::str::FromStr;

/// A platform as it appears in an index descriptor, normalised on construction.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Option::is_none")]
    pub os_features: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("platform {0:?} is invalid: use os/arch or os/arch/variant, e.g. linux/arm64 or linux/arm/v7")]
pub struct PlatformError(pub String);

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let (architecture, variant) = normalize_arch(architecture, variant.unwrap_or(""));
        Platform {
            os: os.to_ascii_lowercase(),
            architecture,
            variant: (!variant.is_empty()).then_some(variant),
            os_version: None,
            os_features: None,
        }
    }

    /// The same platform with os and architecture normalised (aliases resolved, default
    /// variants dropped or added as containerd does).
    pub fn normalized(&self) -> Platform {
        let mut p = Platform::new(&self.os, &self.architecture, self.variant.as_deref());
        p.os_version = self.os_version.clone();
        p.os_features = self.os_features.clone();
        p
    }

    /// Does this platform, as requested by a user or a policy, select `candidate` from an
    /// index? Both are normalised; a variant in the request must match, a request without a
    /// variant accepts any variant.
    pub fn selects(&self, candidate: &Platform) -> bool {
        let want = self.normalized();
        let have = candidate.normalized();
        want.os == have.os
            && want.architecture == have.architecture
            && (want.variant.is_none() || want.variant == have.variant)
    }

    /// `unknown/unknown` is how docker buildx marks attestation manifests in an index.
    pub fn is_unknown(&self) -> bool {
        self.os == "unknown" && self.architecture == "unknown"
    }
}

/// containerd's `platforms.Normalize` for architectures and variants.
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    let (a, v): (&str, String) = match arch.as_str() {
        "i386" | "386" => ("386", String::new()),
        "x86_64" | "x86-64" | "amd64" => ("amd64", if variant == "v1" { String::new() } else { variant }),
        "aarch64" | "arm64" => (
            "arm64",
            match variant.as_str() {
                "8" | "v8" | "" => String::new(),
                _ => variant,
            },
        ),
        "armhf" => ("arm", "v7".into()),
        "armel" => ("arm", "v6".into()),
        "arm" => (
            "arm",
            match variant.as_str() {
                "" | "7" => "v7".into(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            },
        ),
        other => return (other.to_owned(), variant),
    };
    (a.to_owned(), v)
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |p: &&str| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
            return Err(PlatformError(s.to_owned()));
        }
        Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn normalises_like_containerd() {
        assert_eq!(p("linux/aarch64"), p("linux/arm64"));
        assert_eq!(p("linux/arm64/v8"), p("linux/arm64"));
        assert_eq!(p("linux/x86_64"), p("linux/amd64"));
        assert_eq!(p("linux/arm").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/armhf").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/arm/6").to_string(), "linux/arm/v6");
        assert_eq!(p("Linux/S390X").to_string(), "linux/s390x");
    }

    #[test]
    fn variants_count() {
        assert!(!p("linux/arm/v7").selects(&p("linux/arm/v6")));
        assert!(p("linux/arm64").selects(&Platform::new("linux", "arm64", Some("v8"))));
        assert!(p("linux/amd64").selects(&Platform::new("linux", "amd64", Some("v3"))));
        assert!(!p("linux/amd64/v3").selects(&p("linux/amd64")));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_index_json() {
        let json = r#"{"architecture":"arm64","os":"linux","variant":"v8","os.features":["x"]}"#;
        let parsed: Platform = serde_json::from_str(json).unwrap();
        assert_eq!(parsed.normalized().to_string(), "linux/arm64");
        assert_eq!(parsed.os_features.as_deref(), Some(&["x".to_string()][..]));
    }
}
