//! `oci-archive:` tars, unpacked as a copy from one does: whatever the tar holds, nothing is
//! written outside the target directory and no link is made.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn root() -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| tempfile::tempdir().expect("a temporary directory")).path()
}

/// Every path under `dir` is a plain file or directory.
fn check_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("readable") {
        let entry = entry.expect("an entry");
        let kind = std::fs::symlink_metadata(entry.path()).expect("metadata").file_type();
        assert!(!kind.is_symlink(), "a link was made: {}", entry.path().display());
        if kind.is_dir() {
            check_tree(&entry.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let into = root().join("into");
    let _ = std::fs::remove_dir_all(&into);
    std::fs::create_dir(&into).expect("a fresh target");
    let _ = wharf_mirror::fuzzing::read_archive(data, &into);
    let beside: Vec<_> =
        std::fs::read_dir(root()).expect("readable").map(|e| e.expect("an entry").file_name()).collect();
    assert_eq!(beside, ["into"], "something was written outside the target");
    check_tree(&into);
});
