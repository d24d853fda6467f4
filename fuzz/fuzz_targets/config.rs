//! The sync file (TOML, and skopeo's sync YAML) and the pieces of the server config that are
//! parsed by library crates: repository patterns, durations. (The server config file's own
//! loader lives in the `wharf` binary, which a fuzz target cannot link; its fields are these
//! pieces. It is trusted input: the operator's.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_oci::RepoName;
use wharf_registry::RepoPattern;
use wharf_sync::SyncConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(s) = std::str::from_utf8(rest) else { return };
    match mode % 4 {
        0 => {
            if let Ok(mut config) = toml::from_str::<SyncConfig>(s) {
                // Keys are files: not what this target reads.
                config.defaults.verify_key = None;
                for img in &mut config.images {
                    img.verify_key = None;
                }
                let _ = config.validate();
            }
        }
        1 => {
            if let Ok(configs) = wharf_sync::skopeo::from_yaml(s, "docker://127.0.0.1:5000/mirror", &[]) {
                for mut config in configs {
                    config.defaults.verify_key = None;
                    for img in &mut config.images {
                        img.verify_key = None;
                    }
                    let _ = config.validate();
                }
            }
        }
        2 => {
            let (pattern, name) = s.split_once('\n').unwrap_or((s, "team/app"));
            let p = RepoPattern::new(pattern);
            if let Ok(repo) = name.parse::<RepoName>() {
                let _ = p.matches(&repo);
            }
        }
        _ => {
            let _ = wharf_sync::parse_duration(s);
            let _ = wharf_sync::parse_interval(s);
            let _ = s.parse::<wharf_sync::Destination>();
        }
    }
});
