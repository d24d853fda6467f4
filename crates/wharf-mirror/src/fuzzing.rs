//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden from the docs): the
//! readers of what a bundle or layout from elsewhere holds.

use std::path::Path;

use wharf_oci::Descriptor;

/// Unpack an `oci-archive:` tar into the empty directory `into`, as a copy from it would, and
/// normalise its `index.json` as a split bundle's extraction does.
pub fn read_archive(tar: &[u8], into: &Path) -> std::io::Result<()> {
    crate::archive::unpack_checked(tar, into)?;
    if into.join("oci-layout").exists() && into.join("index.json").exists() {
        crate::archive::rewrite_index(into, |_| {})?;
    }
    Ok(())
}

/// An OCI layout's `index.json`: its entries, their `ref.name`s and the index's annotations.
pub fn layout_index(bytes: &[u8]) -> Result<(Vec<Descriptor>, Vec<String>, usize), String> {
    let root = Path::new("layout");
    let index = crate::layout::parse_index(&root.join("index.json"), bytes).map_err(|e| e.to_string())?;
    let entries = crate::layout::index_entries(root, &index).map_err(|e| e.to_string())?;
    let names = entries
        .iter()
        .filter_map(|d| d.annotations.as_ref().and_then(|a| a.get(crate::REF_NAME)).cloned())
        .collect();
    Ok((entries, names, crate::layout::index_annotations(&index).len()))
}
