//! Byte-stream adapters: digest verification and progress reporting.

use std::sync::Arc;

use futures_util::StreamExt;
use wharf_client::{ByteStream, ClientError};
use wharf_oci::{Digest, DigestHasher};

use crate::Progress;

struct Verify {
    inner: ByteStream,
    /// `None` once the stream has ended (or failed).
    hasher: Option<DigestHasher>,
    seen: u64,
    digest: Digest,
    size: u64,
}

/// Hash `inner` as it goes; end with an error if its digest or length is not the expected one.
pub(crate) fn verified(inner: ByteStream, digest: Digest, size: u64) -> ByteStream {
    let hasher = Some(digest.algorithm().hasher());
    let state = Verify { inner, hasher, seen: 0, digest, size };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        st.hasher.as_ref()?;
        let item = st.inner.next().await;
        let hasher = st.hasher.as_mut().expect("checked above");
        match item {
            Some(Ok(bytes)) => {
                hasher.update(&bytes);
                st.seen += bytes.len() as u64;
                if st.seen > st.size {
                    st.hasher = None;
                    let e = ClientError::Invalid(format!(
                        "blob {} is longer than its {} bytes",
                        st.digest, st.size
                    ));
                    return Some((Err(e), st));
                }
                Some((Ok(bytes), st))
            }
            Some(Err(e)) => {
                st.hasher = None;
                Some((Err(e), st))
            }
            None => {
                let actual = st.hasher.take().expect("checked above").finish();
                if actual != st.digest {
                    let e = ClientError::DigestMismatch { expected: st.digest.clone(), actual };
                    return Some((Err(e), st));
                }
                if st.seen != st.size {
                    let e = ClientError::Invalid(format!(
                        "blob {} has {} bytes, not the {} its descriptor says",
                        st.digest, st.seen, st.size
                    ));
                    return Some((Err(e), st));
                }
                None
            }
        }
    }))
}

/// Report every chunk that goes through to `progress`.
pub(crate) fn reporting(inner: ByteStream, digest: Digest, progress: Arc<dyn Progress>) -> ByteStream {
    Box::pin(inner.inspect(move |item| {
        if let Ok(bytes) = item {
            progress.blob_progress(&digest, bytes.len() as u64);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn stream_of(parts: &[&'static [u8]]) -> ByteStream {
        let items: Vec<Result<Bytes, ClientError>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    async fn collect(s: ByteStream) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        let mut s = s;
        while let Some(item) = s.next().await {
            out.extend_from_slice(&item?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn verifies_digest_and_size() {
        let d = Digest::sha256_of(b"hello world");
        assert_eq!(
            collect(verified(stream_of(&[b"hello ", b"world"]), d.clone(), 11)).await.unwrap(),
            b"hello world"
        );
        let e = collect(verified(stream_of(&[b"hello ", b"there"]), d.clone(), 11)).await.unwrap_err();
        assert!(matches!(e, ClientError::DigestMismatch { .. }), "{e}");
        let e = collect(verified(stream_of(&[b"hello world!"]), d.clone(), 11)).await.unwrap_err();
        assert!(e.to_string().contains("longer"), "{e}");
        let e = collect(verified(stream_of(&[b"hello world"]), d, 12)).await.unwrap_err();
        assert!(e.to_string().contains("not the 12"), "{e}");
    }
}
