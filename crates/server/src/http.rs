//! Limits on connections and requests, so that slow or greedy clients cannot
//! starve the others: a cap on open connections, a deadline for a request's
//! headers and one for its body, and a bound on its size.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What one connection and one request may take.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    pub body_timeout: Duration,
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

/// Accepts a connection only while fewer than the cap are open, and sets
/// `TCP_NODELAY` so that small answers (a poll's, a submit's) leave at once.
#[derive(Clone)]
pub struct CappedAcceptor {
    open: Arc<Semaphore>,
}

impl CappedAcceptor {
    pub fn new(max_connections: usize) -> CappedAcceptor {
        CappedAcceptor {
            open: Arc::new(Semaphore::new(max_connections.max(1))),
        }
    }
}

impl<S: Send + 'static> Accept<TcpStream, S> for CappedAcceptor {
    type Stream = Capped;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Capped, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let Ok(permit) = self.open.clone().try_acquire_owned() else {
            tracing::warn!("too many open connections; closing a new one");
            return std::future::ready(Err(io::Error::other("too many open connections")));
        };
        let accepted = stream.set_nodelay(true).map(|()| {
            (
                Capped {
                    stream,
                    _permit: permit,
                },
                service,
            )
        });
        std::future::ready(accepted)
    }
}

/// A connection that holds its place under the cap until it is dropped.
pub struct Capped {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Raises this process's open-file limit to its hard limit, so that the
/// connection cap, not the default soft limit of 1024, decides.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}
