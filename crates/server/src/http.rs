//! Limits on connections and requests, so that slow or greedy clients cannot
//! starve the others: caps on open connections, a deadline for a connection's
//! first request and for each request's headers and body, and a bound on a
//! body's size.
//!
//! The rule for a new connection from address `a` (the peer's IP), with `open`
//! connections in all and `open(a)` from `a`:
//! - refused when `open(a)` has reached the per-address cap;
//! - refused when `open` has reached the global cap;
//! - in the reserve (the last `reserved` places under the global cap), taken
//!   only while `open(a)` is below [`RESERVE_SHARE`].
//!
//! So one address holds at most the per-address cap, and however many
//! addresses hoard, the reserve keeps room for at least `reserved /
//! RESERVE_SHARE` others that each hold a few connections: an agent's polls
//! and reports, a health probe, a CLI call. Refusals are counted (served in
//! `/metrics`) and logged once per [`REPORT_EVERY`] with their number, never
//! once each.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::background::{Job, JobError, Progress};

/// What one connection and one request may take.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Time a client has to send a request's headers, and a new connection
    /// its first request: an idle connection is closed after it.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    pub body_timeout: Duration,
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// Open connections from one address at most.
    pub max_connections_per_address: usize,
    /// Places under `max_connections` kept for addresses that hold fewer
    /// than [`RESERVE_SHARE`] connections.
    pub reserved_connections: usize,
}

/// An address holding fewer connections than this may use the reserve.
pub const RESERVE_SHARE: usize = 4;

/// Open files kept for the store, logs and agents' pipes, out of the
/// process's open-file limit, when the connection caps are sized from it.
pub const FILES_KEPT: u64 = 256;

/// How often refusals are logged (with their count), if there were any.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

impl HttpLimits {
    /// The default caps for a process that may open `open_files` files: a
    /// global cap of at most 4096 below that limit, an eighth of it kept in
    /// reserve, and a sixteenth for any one address.
    pub fn sized_for(open_files: u64) -> HttpLimits {
        let max = usize::try_from(open_files.saturating_sub(FILES_KEPT))
            .unwrap_or(usize::MAX)
            .clamp(64, 4096);
        HttpLimits {
            max_body_bytes: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: max,
            max_connections_per_address: max / 16,
            reserved_connections: max / 8,
        }
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits::sized_for(4096 + FILES_KEPT)
    }
}

/// Why a connection was refused, as counted in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address holds as many as the per-address cap.
    Address,
    /// As many as the global cap are open.
    Full,
    /// Only the reserve is left, and its address holds its share of it.
    Reserve,
}

impl Refusal {
    const ALL: [Refusal; 3] = [Refusal::Address, Refusal::Full, Refusal::Reserve];

    fn label(self) -> &'static str {
        match self {
            Refusal::Address => "per_address",
            Refusal::Full => "full",
            Refusal::Reserve => "reserve",
        }
    }
}

/// Connections refused since the process started, by [`Refusal`], for
/// `/metrics`; process-wide, as the listener is.
static REFUSED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
/// Connections open now.
static OPEN: AtomicU64 = AtomicU64::new(0);

/// The connection counters in the Prometheus text format.
pub fn metrics_text() -> String {
    let mut out = String::from(
        "# HELP corral_connections_refused_total Connections closed at once by the connection caps, by the cap that refused them.\n\
         # TYPE corral_connections_refused_total counter\n",
    );
    for why in Refusal::ALL {
        out.push_str(&format!(
            "corral_connections_refused_total{{reason=\"{}\"}} {}\n",
            why.label(),
            REFUSED[why as usize].load(Ordering::Relaxed)
        ));
    }
    out.push_str(&format!(
        "# HELP corral_connections_open Connections open now.\n\
         # TYPE corral_connections_open gauge\n\
         corral_connections_open {}\n",
        OPEN.load(Ordering::Relaxed)
    ));
    out
}

/// Open connections, in all and per address.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// The caps, and the connections they hold.
#[derive(Debug)]
struct Caps {
    max: usize,
    per_address: usize,
    reserved: usize,
    open: Mutex<Open>,
}

impl Caps {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a place for a connection from `address`, or says why not.
    fn admit(self: &Arc<Caps>, address: IpAddr) -> Result<Place, Refusal> {
        let mut open = self.lock();
        let from = open.by_address.get(&address).copied().unwrap_or(0);
        let refused = if from >= self.per_address {
            Some(Refusal::Address)
        } else if open.total >= self.max {
            Some(Refusal::Full)
        } else if open.total >= self.max.saturating_sub(self.reserved) && from >= RESERVE_SHARE {
            Some(Refusal::Reserve)
        } else {
            None
        };
        if let Some(why) = refused {
            REFUSED[why as usize].fetch_add(1, Ordering::Relaxed);
            return Err(why);
        }
        open.total += 1;
        *open.by_address.entry(address).or_insert(0) += 1;
        OPEN.fetch_add(1, Ordering::Relaxed);
        Ok(Place {
            caps: self.clone(),
            address,
        })
    }
}

/// A connection's place under the caps, given back when it is dropped.
struct Place {
    caps: Arc<Caps>,
    address: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.caps.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.address);
            }
        }
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts a connection only as the caps allow (see the module's rule), and
/// sets `TCP_NODELAY` so that small answers (a poll's, a submit's) leave at
/// once. A refused connection is closed without a word (nor a log line).
#[derive(Clone)]
pub struct CappedAcceptor {
    caps: Arc<Caps>,
}

impl CappedAcceptor {
    pub fn new(limits: &HttpLimits) -> CappedAcceptor {
        let max = limits.max_connections.max(1);
        CappedAcceptor {
            caps: Arc::new(Caps {
                max,
                per_address: limits.max_connections_per_address.max(1),
                reserved: limits.reserved_connections.min(max - 1),
                open: Mutex::new(Open::default()),
            }),
        }
    }
}

/// Logs, every [`REPORT_EVERY`], how many connections the caps refused since
/// the last report, if any: one line however many there were.
pub struct RefusalReport {
    reported: [u64; 3],
    tick: tokio::time::Interval,
}

impl Default for RefusalReport {
    fn default() -> RefusalReport {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + REPORT_EVERY, REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        RefusalReport {
            reported: std::array::from_fn(|i| REFUSED[i].load(Ordering::Relaxed)),
            tick,
        }
    }
}

impl Job for RefusalReport {
    async fn work(&mut self) -> Result<Progress, JobError> {
        let now: [u64; 3] = std::array::from_fn(|i| REFUSED[i].load(Ordering::Relaxed));
        let new: [u64; 3] = std::array::from_fn(|i| now[i] - self.reported[i]);
        if new.iter().any(|n| *n > 0) {
            tracing::warn!(
                per_address = new[Refusal::Address as usize],
                full = new[Refusal::Full as usize],
                reserve = new[Refusal::Reserve as usize],
                open = OPEN.load(Ordering::Relaxed),
                "connections refused by the connection caps in the last {}s",
                REPORT_EVERY.as_secs()
            );
        }
        self.reported = now;
        Ok(Progress::Idle)
    }

    async fn wait_for_work(&mut self) {
        self.tick.tick().await;
    }
}

impl<S: Send + 'static> Accept<TcpStream, S> for CappedAcceptor {
    type Stream = Capped;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Capped, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream
            .peer_addr()
            .and_then(|peer| {
                self.caps
                    .admit(peer.ip().to_canonical())
                    .map_err(|why| io::Error::other(format!("connection refused: {}", why.label())))
            })
            .and_then(|place| {
                stream.set_nodelay(true)?;
                Ok((
                    Capped {
                        stream,
                        _place: place,
                    },
                    service,
                ))
            });
        std::future::ready(admitted)
    }
}

/// A connection that holds its place under the caps until it is dropped.
pub struct Capped {
    stream: TcpStream,
    _place: Place,
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
/// connection caps, not the default soft limit of 1024, decide; returns the
/// soft limit in force.
pub fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            1024
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(max: usize, per_address: usize, reserved: usize) -> Arc<Caps> {
        CappedAcceptor::new(&HttpLimits {
            max_connections: max,
            max_connections_per_address: per_address,
            reserved_connections: reserved,
            ..HttpLimits::default()
        })
        .caps
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_address_is_held_to_its_cap_and_gets_its_places_back() {
        let caps = caps(100, 3, 10);
        let held: Vec<Place> = (0..3)
            .map(|_| caps.admit(ip(2)).expect("under the cap"))
            .collect();
        assert_eq!(caps.admit(ip(2)).err(), Some(Refusal::Address));
        assert!(
            caps.admit(ip(3)).is_ok(),
            "another address is not held back"
        );
        drop(held);
        assert!(caps.admit(ip(2)).is_ok(), "places are given back");
    }

    #[test]
    fn hoarding_addresses_leave_the_reserve_to_others() {
        let caps = caps(20, 10, 8);
        // Two hoarders take the 12 general places, and nothing of the reserve
        // past their share.
        let mut held: Vec<Place> = Vec::new();
        for _ in 0..10 {
            held.extend(caps.admit(ip(2)).ok());
            held.extend(caps.admit(ip(5)).ok());
        }
        let from = |a| held.iter().filter(|p| p.address == ip(a)).count();
        assert!(
            from(2) + from(5) <= 12 + 2 * (RESERVE_SHARE - 1),
            "{}",
            held.len()
        );
        // Two light clients still get in, up to their share each.
        for client in [3, 4] {
            for _ in 0..RESERVE_SHARE - 1 {
                held.push(caps.admit(ip(client)).expect("room in the reserve"));
            }
        }
        assert_eq!(caps.admit(ip(2)).err(), Some(Refusal::Reserve));
    }

    #[test]
    fn default_caps_fit_under_the_open_file_limit() {
        let small = HttpLimits::sized_for(1024);
        assert_eq!(small.max_connections, 1024 - FILES_KEPT as usize);
        let large = HttpLimits::sized_for(1 << 20);
        assert_eq!(large.max_connections, 4096);
        for limits in [small, large] {
            assert!(
                limits.max_connections_per_address
                    < limits.max_connections - limits.reserved_connections
            );
        }
    }
}
