//! Small blobs kept in memory once read: image configs, signatures, SBOMs and attestations are
//! a few KiB each and read on every pull, and a file open plus a read on the blocking pool cost
//! far more than serving bytes already in memory. Content is addressed by digest, so a cached
//! entry can never be stale: it only has to go when the blob leaves the store.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use wharf_oci::Digest;

use crate::{BlobRead, BodyStream};

/// Blobs up to this size are cached whole.
pub const SMALL_BLOB: u64 = 64 * 1024;

/// Bytes per generation: at most twice this is held.
const GENERATION_BUDGET: usize = 2 * 1024 * 1024;

/// Two generations approximate least-recently-used without bookkeeping per hit: new entries go
/// into `current`; when it is full it becomes `previous` (dropping the older one), and a hit in
/// `previous` moves the entry back into `current`.
#[derive(Default)]
pub(crate) struct SmallBlobs {
    gens: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<Digest, Bytes>,
    current_bytes: usize,
    previous: HashMap<Digest, Bytes>,
}

impl Generations {
    fn insert(&mut self, d: Digest, content: Bytes) {
        if self.current_bytes + content.len() > GENERATION_BUDGET {
            self.previous = std::mem::take(&mut self.current);
            self.current_bytes = 0;
        }
        self.current_bytes += content.len();
        if let Some(old) = self.current.insert(d, content) {
            self.current_bytes -= old.len();
        }
    }
}

impl SmallBlobs {
    pub(crate) fn get(&self, d: &Digest) -> Option<Bytes> {
        let mut g = self.gens.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = g.current.get(d) {
            return Some(hit.clone());
        }
        let hit = g.previous.remove(d)?;
        g.insert(d.clone(), hit.clone());
        Some(hit)
    }

    pub(crate) fn insert(&self, d: &Digest, content: Bytes) {
        if content.len() as u64 > SMALL_BLOB {
            return;
        }
        self.gens.lock().unwrap_or_else(|e| e.into_inner()).insert(d.clone(), content);
    }

    /// The blob left the store (deleted or moved to gc's trash).
    pub(crate) fn remove(&self, d: &Digest) {
        let mut g = self.gens.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = g.current.remove(d) {
            g.current_bytes -= old.len();
        }
        g.previous.remove(d);
    }
}

/// A read of content held in memory, with the backends' range rules: `range` is inclusive,
/// `last` is clamped to the end, and a range starting at or past the end yields `len == 0`.
pub(crate) fn read_bytes(content: Bytes, range: Option<(u64, u64)>) -> BlobRead {
    let size = content.len() as u64;
    let (start, len) = match range {
        None => (0, size),
        Some((first, last)) => {
            let last = last.min(size.saturating_sub(1));
            if size == 0 || first > last { (first, 0) } else { (first, last - first + 1) }
        }
    };
    let body: BodyStream = if len == 0 {
        Box::pin(futures_util::stream::empty())
    } else {
        let part = content.slice(start as usize..(start + len) as usize);
        Box::pin(futures_util::stream::once(std::future::ready(Ok(part))))
    };
    BlobRead { size, start, len, body }
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;

    use super::*;

    fn blob(n: usize, fill: u8) -> (Digest, Bytes) {
        let content = Bytes::from(vec![fill; n]);
        (Digest::sha256_of(&content), content)
    }

    #[test]
    fn keeps_recent_blobs_within_two_generations() {
        let cache = SmallBlobs::default();
        let (hot, hot_bytes) = blob(1000, 0);
        cache.insert(&hot, hot_bytes.clone());
        // Fill well past two generations, touching the hot blob as a pull would.
        for i in 0..200u32 {
            let content = Bytes::from(i.to_le_bytes().repeat(SMALL_BLOB as usize / 4));
            cache.insert(&Digest::sha256_of(&content), content);
            assert_eq!(cache.get(&hot).as_ref(), Some(&hot_bytes), "after {i} inserts");
        }
        let g = cache.gens.lock().unwrap();
        let held: usize = g.current.values().chain(g.previous.values()).map(Bytes::len).sum();
        assert!(held <= 2 * GENERATION_BUDGET, "{held} bytes held");
        assert_eq!(g.current_bytes, g.current.values().map(Bytes::len).sum::<usize>());
    }

    #[test]
    fn ignores_large_blobs_and_forgets_removed_ones() {
        let cache = SmallBlobs::default();
        let (big, big_bytes) = blob(SMALL_BLOB as usize + 1, 1);
        cache.insert(&big, big_bytes);
        assert!(cache.get(&big).is_none());
        let (small, small_bytes) = blob(10, 2);
        cache.insert(&small, small_bytes);
        cache.remove(&small);
        assert!(cache.get(&small).is_none());
    }

    #[tokio::test]
    async fn ranges_follow_the_backends_rules() {
        async fn read(range: Option<(u64, u64)>) -> (u64, u64, Vec<u8>) {
            let r = read_bytes(Bytes::from_static(b"0123456789"), range);
            let body: Vec<Bytes> = r.body.try_collect().await.unwrap();
            (r.start, r.len, body.concat())
        }
        assert_eq!(read(None).await, (0, 10, b"0123456789".to_vec()));
        assert_eq!(read(Some((2, 4))).await, (2, 3, b"234".to_vec()));
        assert_eq!(read(Some((8, u64::MAX))).await, (8, 2, b"89".to_vec()));
        assert_eq!(read(Some((10, 12))).await, (10, 0, Vec::new()));
    }
}
