//! Throughput of the blob store: `cargo run --release -p wharf-storage --example put_bench [MiB]`.
//!
//! Streams an in-memory body (default 1 GiB) through `put_stream` with 64 KiB and 1 MiB chunks,
//! through `append` + `commit` (to separate hash+write from fsync+rename), and reads it back.
//! Set `WHARF_BENCH_DIR` to choose the filesystem (default: the system temp dir).

use std::io;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use wharf_oci::{Algorithm, Digest};
use wharf_storage::{BlobStore, BodyStream};

const MIB: usize = 1 << 20;

fn source(block: &Bytes, total: usize, chunk: usize) -> BodyStream {
    let block = block.clone();
    let n = total / chunk;
    let per_block = block.len() / chunk;
    Box::pin(stream::iter((0..n).map(move |i| {
        let off = (i % per_block) * chunk;
        Ok::<_, io::Error>(block.slice(off..off + chunk))
    })))
}

fn rate(bytes: usize, secs: f64) -> String {
    format!("{:7.0} MB/s ({:.3} s)", bytes as f64 / secs / 1e6, secs)
}

/// CPU time (user + system, all threads) of this process so far, in seconds.
#[cfg(target_os = "linux")]
fn cpu() -> f64 {
    // SAFETY: getrusage writes into the struct we pass and nothing else.
    let ru = unsafe {
        let mut ru = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(not(target_os = "linux"))]
fn cpu() -> f64 {
    0.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::args().nth(1).map_or(Ok(1024), |s| s.parse())?;
    let total = mib * MIB;
    let base = std::env::var_os("WHARF_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base)?;
    let store = BlobStore::open(dir.path()).await?;

    // 4 MiB of pseudo-random bytes, repeated.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let block: Vec<u8> = (0..4 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let block = Bytes::from(block);

    let t = Instant::now();
    let mut h = Algorithm::Sha256.hasher();
    let mut s = source(&block, total, MIB);
    while let Some(c) = s.next().await {
        h.update(&c?);
    }
    let digest: Digest = h.finish();
    println!("sha256 alone             {}", rate(total, t.elapsed().as_secs_f64()));

    for chunk in [64 << 10, MIB, 64 << 10, MIB] {
        let (t, c) = (Instant::now(), cpu());
        let n = store.put_stream(&digest, source(&block, total, chunk)).await?;
        assert_eq!(n as usize, total);
        println!(
            "put_stream, {:>4} KiB chunks {}  cpu {:.2} s  (hash + write + fsync + rename)",
            chunk >> 10,
            rate(total, t.elapsed().as_secs_f64()),
            cpu() - c,
        );
        store.delete(&digest).await?;
    }

    let id = store.create_upload().await?;
    let (t, c) = (Instant::now(), cpu());
    store.append(&id, Some(0), source(&block, total, 64 << 10)).await?;
    let (appended, append_cpu) = (t.elapsed().as_secs_f64(), cpu() - c);
    let t = Instant::now();
    store.commit(&id, &digest).await?;
    let committed = t.elapsed().as_secs_f64();
    println!(
        "append, 64 KiB chunks    {}  cpu {:.2} s  (hash + write, no fsync)",
        rate(total, appended),
        append_cpu
    );
    println!("commit                   {committed:.3} s  (fsync + rename, hash state reused)");

    let (t, c) = (Instant::now(), cpu());
    let r = store.read(&digest, None).await?.ok_or("blob missing")?;
    let mut body = r.body;
    let mut got = 0usize;
    while let Some(chunk) = body.next().await {
        got += chunk?.len();
    }
    assert_eq!(got, total);
    println!("read (page cache)        {}  cpu {:.2} s", rate(total, t.elapsed().as_secs_f64()), cpu() - c);
    Ok(())
}
