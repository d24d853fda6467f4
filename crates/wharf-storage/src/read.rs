//! The reader behind [`FsStore::read`](crate::FsStore::read).
//!
//! Chunks that are in the page cache are read right where the body is polled, with a read
//! that fails instead of waiting for the disk (`preadv2(RWF_NOWAIT)`): copying from memory
//! costs less than handing each chunk over from another thread, and on two cores the hand-over
//! made a third thread compete with the server's writer and the client. The first chunk that
//! is not cached hands the rest of the body to a blocking thread that reads ahead of the
//! consumer, so the disk is never waited on by the runtime.

use std::fs::File as StdFile;
use std::io::{self, Read, Seek, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use crate::{BodyStream, READ_AHEAD, READ_CHUNK};

/// Stream `len` bytes of `file` from `start`: cached chunks inline, the rest through
/// [`read_ahead`] (see the module docs).
pub(crate) fn read_file(file: StdFile, start: u64, len: u64) -> BodyStream {
    Box::pin(CachedFirst { file: Some(file), pos: start, end: start + len, rest: None })
}

struct CachedFirst {
    /// Until the blocking reader takes it.
    file: Option<StdFile>,
    pos: u64,
    end: u64,
    /// The blocking reader, once a chunk was not cached.
    rest: Option<BodyStream>,
}

impl Stream for CachedFirst {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let this = self.get_mut();
        if let Some(rest) = &mut this.rest {
            return rest.as_mut().poll_next(cx);
        }
        let Some(file) = &this.file else { return Poll::Ready(None) };
        if this.pos >= this.end {
            return Poll::Ready(None);
        }
        let n = (this.end - this.pos).min(READ_CHUNK as u64) as usize;
        match read_cached(file, this.pos, n) {
            Ok(Some(chunk)) => {
                this.pos += chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
            Ok(None) => {
                let file = this.file.take().expect("checked above");
                let rest = this.rest.insert(read_ahead(file, this.pos, this.end - this.pos));
                rest.as_mut().poll_next(cx)
            }
            Err(e) => {
                this.file = None; // the body ends with the error
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

/// Up to `n` bytes of `file` at `pos` if the first of them are in memory; `None` when reading
/// would wait for the disk, or the kernel cannot tell (the blocking reader then reports a
/// short file too).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn read_cached(file: &StdFile, pos: u64, n: usize) -> io::Result<Option<Bytes>> {
    use std::os::fd::AsRawFd;
    let Ok(offset) = libc::off_t::try_from(pos) else { return Ok(None) };
    let mut buf: Vec<u8> = Vec::with_capacity(n);
    let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: n };
    // SAFETY: `iov` describes the vector's `n` bytes of spare capacity, which the kernel
    // writes; the descriptor is open for the call.
    let got = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if got == 0 {
        return Ok(None); // at the end already: a short file
    }
    if got < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            // Not cached; or no-wait reads refused here (old kernel, filesystem, seccomp).
            Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::EPERM) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: the kernel initialised the first `got` bytes (at most `n`, the capacity).
    unsafe { buf.set_len(got as usize) };
    Ok(Some(Bytes::from(buf)))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn read_cached(_file: &StdFile, _pos: u64, _n: usize) -> io::Result<Option<Bytes>> {
    Ok(None)
}

/// Stream `len` bytes of `file` from `start`, read by a blocking thread up to `READ_AHEAD`
/// chunks ahead of the consumer, straight into the chunk that is sent: one copy from the page
/// cache, none through an intermediate buffer. Stops when the consumer goes away.
fn read_ahead(mut file: StdFile, start: u64, len: u64) -> BodyStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = file.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut remaining = len;
        while remaining > 0 {
            let n = remaining.min(READ_CHUNK as u64);
            // `read_to_end` fills the spare capacity without zeroing it first.
            let mut buf = Vec::with_capacity(n as usize);
            let chunk = match (&mut file).take(n).read_to_end(&mut buf) {
                Ok(got) if got as u64 == n => Ok(Bytes::from(buf)),
                Ok(_) => {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob file is shorter than it was"))
                }
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
            remaining -= n;
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }))
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use std::os::fd::AsRawFd;

    use futures_util::TryStreamExt;

    use super::*;

    /// Drops the clean cached pages of `file` from `from` on (a file on a disk filesystem; on
    /// tmpfs the pages cannot go and the assertions below say so).
    fn drop_pages(file: &StdFile, from: u64) {
        // SAFETY: the descriptor is open for the call, which touches no memory of ours.
        let r = unsafe {
            libc::posix_fadvise(file.as_raw_fd(), from as libc::off_t, 0, libc::POSIX_FADV_DONTNEED)
        };
        assert_eq!(r, 0);
    }

    async fn read_all(file: StdFile, start: u64, len: u64) -> io::Result<Vec<u8>> {
        let chunks: Vec<Bytes> = read_file(file, start, len).try_collect().await?;
        Ok(chunks.concat())
    }

    #[tokio::test]
    async fn cached_chunks_are_read_inline_and_the_rest_by_the_blocking_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let content = wharf_testkit::seeded_bytes(5, 3 * READ_CHUNK + 4321);
        std::fs::write(&path, &content).unwrap();
        let file = StdFile::open(&path).unwrap();
        file.sync_all().unwrap();
        let len = content.len() as u64;

        assert_eq!(read_cached(&file, 5, 10).unwrap().as_deref(), Some(&content[5..15]), "just written");
        assert_eq!(read_all(file.try_clone().unwrap(), 0, len).await.unwrap(), content);

        // The second half leaves the page cache: the inline reads stop there, the blocking
        // reader goes on from the first chunk that is not cached.
        drop_pages(&file, len / 2);
        assert!(read_cached(&file, len - 10, 10).unwrap().is_none(), "{} is on tmpfs?", path.display());
        assert!(read_cached(&file, 0, 10).unwrap().is_some());
        assert_eq!(read_all(file.try_clone().unwrap(), 0, len).await.unwrap(), content);
        drop_pages(&file, 0);
        let (from, n) = (READ_CHUNK as u64 - 7, READ_CHUNK as u64 + 100);
        let got = read_all(file.try_clone().unwrap(), from, n).await.unwrap();
        assert!(got[..] == content[from as usize..(from + n) as usize], "a range across chunks");

        // A file shorter than promised fails, cached or not.
        for drop in [false, true] {
            if drop {
                drop_pages(&file, 0);
            }
            let err = read_all(file.try_clone().unwrap(), 0, len + 1).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "dropped: {drop}");
        }
    }
}
