//! Manifest and index parsing (`Manifest::parse`, a view of the raw bytes) under each media
//! type a client may claim.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_oci::{Manifest, media_types};

const TYPES: [Option<&str>; 7] = [
    None,
    Some(media_types::OCI_INDEX),
    Some(media_types::OCI_MANIFEST),
    Some(media_types::DOCKER_MANIFEST_LIST),
    Some(media_types::DOCKER_MANIFEST),
    Some("application/json"),
    Some("text/plain; charset=utf-8"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let content_type = TYPES[usize::from(sel) % TYPES.len()];
    let Ok(m) = Manifest::parse(content_type, bytes) else { return };
    let _ = m.is_index();
    for child in m.children() {
        let _ = child.attestation_subject();
    }
    let _ = m.blobs();
    let _ = m.effective_artifact_type();
});
