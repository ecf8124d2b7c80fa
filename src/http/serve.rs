//! Serving client connections: the accept loop over hyper's HTTP/1.1
//! server, with the per-connection clocks `axum::serve` has no setting for.
//!
//! - A connection must send a complete request head within the header
//!   timeout: from its opening for the first request, from the head's first
//!   byte for later ones.
//! - Between requests a connection is kept for the keep-alive timeout, which
//!   is longer than the one nginx keeps its own idle upstream connections for
//!   (60 s): the gateway never closes a connection nginx may be about to
//!   send a request on. (hyper's own `header_read_timeout` restarts when a
//!   connection goes idle, so it cannot give a short head timeout and a long
//!   keep-alive at once.)
//! - A request body the handler did not read to its end (a 413, a 401, a
//!   503 before the body) is read and dropped, up to [`LINGER_BYTES`] or
//!   [`LINGER_TIME`], before the connection closes: a proxy still sending it
//!   (nginx with `proxy_request_buffering off`) then reads the answer
//!   instead of hitting a reset.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The most of an unread request body read (and dropped) after its answer.
/// Generous, because reading is what lets a proxy deliver the answer: nginx
/// forwards a fast client's body in one go and only looks at the answer
/// when the gateway stops taking it. Dropped as it arrives, it costs
/// bandwidth, not memory.
pub const LINGER_BYTES: usize = 64 * 1024 * 1024;
/// The longest an unread request body is read (and dropped) after its answer.
pub const LINGER_TIME: Duration = Duration::from_secs(1);

/// The clocks of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTimeouts {
    /// A request head must be complete this long after it began.
    pub header: Duration,
    /// How long a connection is kept between requests.
    pub keep_alive: Duration,
}

/// Serves `app` on `listener` until `closing` resolves; then stops
/// accepting (the listener closes), lets every connection finish the
/// request it is serving, and returns once all of them have closed.
pub async fn serve(
    listener: TcpListener,
    app: Arc<super::App>,
    timeouts: ConnectionTimeouts,
    closing: impl Future<Output = ()>,
) {
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    tokio::pin!(closing);
    loop {
        let accepted = tokio::select! {
            () = &mut closing => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, _)) => {
                connections.spawn(connection(tcp, app.clone(), timeouts, stop.clone()));
            }
            Err(e) => accept_failed(e).await,
        }
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
}

/// A failed accept: a connection that went away before it was taken is
/// nothing; anything else (out of file descriptors) is waited out.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a client connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn connection(
    tcp: TcpStream,
    app: Arc<super::App>,
    timeouts: ConnectionTimeouts,
    stop: CancellationToken,
) {
    // Streams are many small writes: send each at once, never held back by
    // Nagle's algorithm waiting for the client's delayed ACK.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
    }
    let activity = Arc::new(Activity::new(timeouts));
    let leftover = Arc::new(Leftover::default());
    let io = TokioIo::new(Watched {
        io: tcp,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        let leftover = leftover.clone();
        hyper::service::service_fn(move |request: http::Request<Incoming>| {
            activity.begin_request();
            let request = request.map(|body| Unfinished {
                body: Some(body),
                leftover: leftover.clone(),
            });
            let app = app.clone();
            let activity = activity.clone();
            async move {
                let response = app.call(request).await;
                Ok::<_, Infallible>(response.map(|body| Finished { body, activity }))
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    let mut guarded = Guarded {
        conn: Box::pin(conn),
        activity,
        leftover,
        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        draining: None,
    };
    let ended = tokio::select! {
        ended = &mut guarded => ended,
        () = stop.cancelled() => {
            // Draining: an idle connection closes now, a busy one after its
            // answer.
            guarded.conn.as_mut().graceful_shutdown();
            guarded.await
        }
    };
    match ended {
        Ended::Closed(Ok(())) => {}
        Ended::Closed(Err(e)) => tracing::debug!(error = %e, "client connection failed"),
        Ended::TimedOut => {
            tracing::debug!("client connection closed: its head or keep-alive time ran out")
        }
    }
}

/// Where a connection is between requests, for its clocks.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Opened, no request yet: its head must be complete within the header
    /// timeout of the opening.
    Opened(Instant),
    /// Kept alive after an answer, since then.
    Idle(Instant),
    /// The next request's head began arriving then.
    Head(Instant),
    /// A request is being served: no connection clock runs (the body has
    /// its own stall timeout; answers and streams take what they take).
    Busy,
}

struct Activity {
    timeouts: ConnectionTimeouts,
    phase: Mutex<Phase>,
}

impl Activity {
    fn new(timeouts: ConnectionTimeouts) -> Self {
        Self {
            timeouts,
            phase: Mutex::new(Phase::Opened(Instant::now())),
        }
    }

    fn set(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        *phase = f(*phase);
    }

    /// Bytes arrived from the client.
    fn bytes_read(&self) {
        self.set(|p| match p {
            Phase::Idle(_) => Phase::Head(Instant::now()),
            other => other,
        });
    }

    fn begin_request(&self) {
        self.set(|_| Phase::Busy);
    }

    /// The answer has been handed to the connection whole.
    fn end_request(&self) {
        self.set(|p| match p {
            Phase::Busy => Phase::Idle(Instant::now()),
            other => other,
        });
    }

    /// When the connection closes unless something happens first.
    fn deadline(&self) -> Option<Instant> {
        let phase = *self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        match phase {
            Phase::Opened(since) | Phase::Head(since) => Some(since + self.timeouts.header),
            Phase::Idle(since) => Some(since + self.timeouts.keep_alive),
            Phase::Busy => None,
        }
    }
}

/// The client's socket, telling the connection's clocks when bytes arrive.
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request body a handler dropped before its end, handed back to its
/// connection to be read and dropped.
#[derive(Default)]
struct Leftover(Mutex<Option<Incoming>>);

impl Leftover {
    fn put(&self, body: Incoming) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(body);
    }

    fn take(&self) -> Option<Incoming> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// The request body as handlers see it; dropped before its end, it goes
/// back to the connection.
struct Unfinished {
    /// `None` once it has ended.
    body: Option<Incoming>,
    leftover: Arc<Leftover>,
}

impl Body for Unfinished {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.body = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(body) = self.body.take().filter(|b| !b.is_end_stream()) {
            self.leftover.put(body);
        }
    }
}

/// An answer's body; once hyper drops it (the answer is written, or the
/// connection failed), the connection is idle.
struct Finished<B> {
    body: B,
    activity: Arc<Activity>,
}

impl<B: Body + Unpin> Body for Finished<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Finished<B> {
    fn drop(&mut self) {
        self.activity.end_request();
    }
}

/// An unread request body being read and dropped.
struct Draining {
    body: Incoming,
    read: usize,
    until: Instant,
}

enum Ended {
    Closed(hyper::Result<()>),
    TimedOut,
}

/// A connection under its clocks, also reading away what handlers left of
/// request bodies. Every change of phase happens inside the connection's
/// own poll, so the deadline is looked at again after each.
struct Guarded<C> {
    conn: Pin<Box<C>>,
    activity: Arc<Activity>,
    leftover: Arc<Leftover>,
    timer: Pin<Box<Sleep>>,
    draining: Option<Draining>,
}

impl<C> Guarded<C> {
    /// Reads what arrived of a leftover body and drops it; gives up at its
    /// limits (the connection then closes with the rest unread).
    fn drain(&mut self, cx: &mut Context<'_>) {
        if self.draining.is_none() {
            self.draining = self.leftover.take().map(|body| Draining {
                body,
                read: 0,
                until: Instant::now() + LINGER_TIME,
            });
        }
        let Some(d) = self.draining.as_mut() else {
            return;
        };
        let done = loop {
            match Pin::new(&mut d.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    d.read += frame.data_ref().map_or(0, Bytes::len);
                    if d.read > LINGER_BYTES {
                        break true;
                    }
                }
                Poll::Ready(Some(Err(_)) | None) => break true,
                Poll::Pending => break Instant::now() >= d.until,
            }
        };
        if done {
            self.draining = None;
            // The connection learns of it when it is polled again.
            cx.waker().wake_by_ref();
        }
    }
}

impl<C: Future<Output = hyper::Result<()>>> Future for Guarded<C> {
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = self.get_mut();
        if let Poll::Ready(result) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(Ended::Closed(result));
        }
        this.drain(cx);
        let linger = this.draining.as_ref().map(|d| d.until);
        let deadline = match (this.activity.deadline(), linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(deadline) = deadline else {
            return Poll::Pending;
        };
        if this.timer.deadline() != deadline {
            this.timer.as_mut().reset(deadline);
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            if this
                .activity
                .deadline()
                .is_some_and(|d| d <= Instant::now())
            {
                return Poll::Ready(Ended::TimedOut);
            }
            // The lingering body's time is up: drop it and go on.
            this.draining = None;
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}
