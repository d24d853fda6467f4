//! The read-ahead reader behind [`FsStore::read`](crate::FsStore::read).

use std::fs::File as StdFile;
use std::io::{self, Read, Seek, SeekFrom};

use bytes::Bytes;

use crate::{BodyStream, READ_AHEAD, READ_CHUNK};

/// Stream `len` bytes of `file` from `start`, read by a blocking thread up to `READ_AHEAD`
/// chunks ahead of the consumer, straight into the chunk that is sent: one copy from the page
/// cache, none through an intermediate buffer. Stops when the consumer goes away.
pub(crate) fn read_ahead(mut file: StdFile, start: u64, len: u64) -> BodyStream {
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
