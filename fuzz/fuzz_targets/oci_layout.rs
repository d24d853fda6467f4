//! An OCI image layout's `index.json`, as `oci:DIR` and extracted archives are read.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((entries, names, _annotations)) = wharf_mirror::fuzzing::layout_index(data) {
        assert!(names.len() <= entries.len());
    }
});
