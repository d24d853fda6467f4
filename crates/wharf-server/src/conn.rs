//! Connections: how many are served at once, and how long a client may take to send what it
//! owes. Idle and slow clients (slowloris) must never use up what other clients need.
//!
//! axum's own `serve` has no header timeout and no connection limit, so connections are served
//! here with hyper directly: a semaphore permit is taken *before* `accept`, so that the excess
//! waits in the kernel's listen backlog instead of in our memory; hyper closes a connection
//! whose request head (or whose next request, when kept alive) does not arrive in time, and
//! answers 431 to heads beyond the size limit; [`IdleBody`] ends a request body that stops
//! arriving or trickles below the minimum rate, and [`WriteIdle`] a connection whose client
//! stopped reading its response. An address over its share of connections gets a 429.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};

/// Limits on what a client may hold or send; see docs/OPERATIONS.md (`[limits]`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// A request's line and headers must arrive within this, counted from the first byte
    /// awaited; a kept-alive connection with no next request is closed after it too.
    pub header_read_timeout: Duration,
    /// A request body that sends nothing for this long ends with an error (the upload fails,
    /// nothing of it becomes visible) and the connection is closed.
    pub body_idle_timeout: Duration,
    /// A client that reads nothing of a response for this long (the socket stays full) is
    /// disconnected, so that slow readers cannot hold every connection slot.
    pub write_idle_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Request line plus headers, in bytes; larger heads are answered 431 and closed.
    pub max_header_bytes: usize,
    /// A request body that arrives slower than this many bytes per second, averaged over
    /// `body_rate_window` of waiting for it, ends like a stalled one: a trickle that never
    /// quite stops would otherwise hold its connection for as long as it likes. 0: no minimum.
    pub min_body_rate: u64,
    /// The time spent waiting for a body over which `min_body_rate` is judged.
    pub body_rate_window: Duration,
    /// Connections one client address may hold at once; beyond it a connection is answered
    /// `429 TOOMANYREQUESTS` and closed, so one host cannot take every slot of
    /// `max_connections`. 0: no per-address limit (the default: behind a proxy every client
    /// has the proxy's address).
    pub max_connections_per_address: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            write_idle_timeout: Duration::from_secs(60),
            // Below the usual soft limit of 1024 open files, which uploads and the database
            // also need.
            max_connections: 512,
            max_header_bytes: 64 * 1024,
            // As lenient as Apache's mod_reqtimeout (500 B/s): only a client that holds a
            // connection on purpose, or one no push could finish over, falls below it.
            min_body_rate: 1024,
            body_rate_window: Duration::from_secs(60),
            max_connections_per_address: 0,
        }
    }
}

/// How long between two warnings of one kind ("connection limit reached", "an address
/// refused"), so that a flood of connections does not become a flood of log lines.
const WARNING_EVERY: Duration = Duration::from_secs(60);

/// Whether a warning last given at `last` may be given again now; if so, notes it as given.
fn warning_due(last: &mut Option<tokio::time::Instant>) -> bool {
    let due = last.is_none_or(|at| at.elapsed() >= WARNING_EVERY);
    if due {
        *last = Some(tokio::time::Instant::now());
    }
    due
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves, then lets the
/// open connections finish their in-flight requests.
pub(crate) async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes);
    let builder = Arc::new(builder);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    let mut warned_full: Option<tokio::time::Instant> = None;
    let mut warned_address: Option<tokio::time::Instant> = None;
    let per_address = PerAddress::new(limits.max_connections_per_address);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (io, peer) = tokio::select! {
            conn = listener.accept() => conn,
            _ = &mut shutdown => break,
        };
        let Some(address_slot) = per_address.take(peer.ip()) else {
            if warning_due(&mut warned_address) {
                tracing::warn!(
                    address = %peer.ip(),
                    max_connections_per_address = limits.max_connections_per_address,
                    "an address holds as many connections as it may: further ones are answered 429"
                );
            }
            tokio::spawn(refuse(io, permit));
            continue;
        };
        if permits.available_permits() == 0 && warning_due(&mut warned_full) {
            tracing::warn!(
                max_connections = max,
                "connection limit reached: new connections wait in the listen backlog until one closes"
            );
        }
        let router = router.clone();
        let idle = limits.body_idle_timeout;
        let pace = BodyPace { min_rate: limits.min_body_rate, window: limits.body_rate_window };
        let write_idle = limits.write_idle_timeout;
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req: Request = req.map(|body| Body::new(IdleBody::new(body, idle, pace)));
            // The peer, for the login throttle (`auth.rs`), as axum's `ConnectInfo` would give it.
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            let svc = TowerToHyperService::new(router.clone());
            async move { hyper::service::Service::call(&svc, req).await }
        });
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slots = (permit, address_slot);
            let io = TokioIo::new(WriteIdle::new(io, write_idle));
            let mut conn = pin!(builder.serve_connection(io, service));
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.wait_for(|s| *s), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    // Stop accepting (a TLS listener stops its handshakes when dropped), then wait until every
    // connection has handed back its permit.
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = permits.acquire_many(max as u32).await;
    Ok(())
}

/// A connection whose writes fail once the client has accepted no byte for `idle` (the socket
/// buffer stays full): hyper then drops the connection and its slot.
struct WriteIdle<T> {
    inner: T,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl<T> WriteIdle<T> {
    fn new(inner: T, idle: Duration) -> WriteIdle<T> {
        WriteIdle { inner, idle, timer: Box::pin(tokio::time::sleep(idle)), armed: false }
    }

    /// Called when a write would block: fail once it has blocked for `idle`.
    fn stalled<R>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<R>> {
        if !self.armed {
            self.armed = true;
            let deadline = tokio::time::Instant::now() + self.idle;
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::info!(idle = ?self.idle, "client stopped reading its response; disconnecting");
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading")))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// A write that moved bytes restarts the clock; flushes do not (on a socket they are
    /// always ready, and would otherwise postpone the deadline forever).
    fn wrote(
        &mut self,
        result: Poll<std::io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        match result {
            Poll::Pending => self.stalled(cx),
            Poll::Ready(Ok(n)) if n > 0 => {
                self.armed = false;
                Poll::Ready(Ok(n))
            }
            ready => ready,
        }
    }

    fn waited<R>(
        &mut self,
        result: Poll<std::io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<R>> {
        match result {
            Poll::Pending => self.stalled(cx),
            ready => ready,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteIdle<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteIdle<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.waited(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.waited(result, cx)
    }
}

/// Connections held per client address, for `Limits::max_connections_per_address`.
#[derive(Clone)]
struct PerAddress {
    max: usize,
    held: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

/// One connection of an address; given back when dropped.
struct AddressSlot {
    of: Option<(PerAddress, std::net::IpAddr)>,
}

impl PerAddress {
    fn new(max: usize) -> PerAddress {
        PerAddress { max, held: Arc::default() }
    }

    /// A slot for one more connection from `ip`; `None` when it holds `max` already.
    fn take(&self, ip: std::net::IpAddr) -> Option<AddressSlot> {
        if self.max == 0 {
            return Some(AddressSlot { of: None });
        }
        let mut held = self.held.lock().expect("not poisoned");
        let n = held.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot { of: Some((self.clone(), ip)) })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((of, ip)) = self.of.take() {
            let mut held = of.held.lock().expect("not poisoned");
            if let Some(n) = held.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&ip);
                }
            }
        }
    }
}

/// Answer a connection over its address's limit without parsing its request: a 429 in the
/// spec's error format, then close. Bounded in time, so a client that reads nothing cannot
/// hold it; what it sent is drained first, else closing with unread data would reset the
/// connection and could lose the answer.
async fn refuse<T: AsyncRead + AsyncWrite + Unpin>(mut io: T, permit: tokio::sync::OwnedSemaphorePermit) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _permit = permit;
    let body = crate::error::ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        wharf_oci::ErrorCode::TooManyRequests,
        "this address holds as many connections as the registry allows one client; close one and retry",
    )
    .body();
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        io.write_all(answer.as_bytes()).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 4096];
        while io.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// The request body error of a body that stopped arriving.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {0:?}; the connection was closed")]
pub struct BodyIdle(Duration);

/// The request body error of a body that arrived too slowly.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body arrived at {got} bytes in {waited:?}, below the minimum of {min_rate} bytes/s; \
     the connection was closed"
)]
pub struct BodyTooSlow {
    got: u64,
    waited: Duration,
    min_rate: u64,
}

/// The slowest a body may arrive (`Limits::min_body_rate` over `Limits::body_rate_window`).
#[derive(Clone, Copy)]
struct BodyPace {
    min_rate: u64,
    window: Duration,
}

/// A request body that fails once no data has come for `idle`, or once it has come slower than
/// its `pace` allows, while the handler waits for it (time spent in the handler between reads
/// does not count against the client).
struct IdleBody {
    inner: Incoming,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
    pace: BodyPace,
    /// Since when the handler has been waiting for the next frame.
    waiting_since: Option<tokio::time::Instant>,
    /// Time waited and bytes received in the current window.
    waited: Duration,
    got: u64,
}

impl IdleBody {
    fn new(inner: Incoming, idle: Duration, pace: BodyPace) -> IdleBody {
        IdleBody {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            armed: false,
            pace,
            waiting_since: None,
            waited: Duration::ZERO,
            got: 0,
        }
    }

    /// Account for a frame that arrived; an error once a full window of waiting brought less
    /// than the minimum rate.
    fn arrived(&mut self, bytes: usize) -> Result<(), BodyTooSlow> {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
        self.got += bytes as u64;
        if self.pace.min_rate == 0 || self.waited < self.pace.window {
            return Ok(());
        }
        let (got, waited) = (self.got, self.waited);
        (self.got, self.waited) = (0, Duration::ZERO);
        if (got as f64) < self.pace.min_rate as f64 * waited.as_secs_f64() {
            return Err(BodyTooSlow { got, waited, min_rate: self.pace.min_rate });
        }
        Ok(())
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                let len = match &frame {
                    Some(Ok(f)) => f.data_ref().map_or(0, Bytes::len),
                    _ => 0,
                };
                if let Err(slow) = this.arrived(len) {
                    tracing::info!(error = %slow, "request body too slow; ending the request");
                    return Poll::Ready(Some(Err(Box::new(slow))));
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.waiting_since.is_none() {
                    this.waiting_since = Some(tokio::time::Instant::now());
                }
                if !this.armed {
                    this.armed = true;
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::info!(idle = ?this.idle, "request body stalled; ending the request");
                        Poll::Ready(Some(Err(Box::new(BodyIdle(this.idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
