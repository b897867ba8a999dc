//! The agent's lease, as its step supervisor keeps it: each poll the server
//! answers renews it until the time the poll was *sent* plus the lease the
//! server granted, and the agent passes that deadline on (see
//! [`ToSupervisor::Lease`](crate::supervisor::ToSupervisor)). When it passes
//! with no renewal, the supervisor kills the agent's steps: the server runs
//! them again only after its heartbeat timeout, a margin past the lease.
//!
//! Deadlines are read on `CLOCK_BOOTTIME`, shared by the agent and its
//! supervisor, which goes on while the host is suspended: a host that resumes
//! past the deadline has its steps killed at once, not a lease later. The
//! supervisor waits on a timer of that clock, so a supervisor stopped
//! (`SIGSTOP`) past its deadline kills its steps as soon as it runs again.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::time::clock_gettime;

/// Now on `CLOCK_BOOTTIME`, in nanoseconds.
pub(crate) fn now_ns() -> u64 {
    clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        let seconds = u64::try_from(t.tv_sec()).unwrap_or(0);
        seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(t.tv_nsec()).unwrap_or(0))
    })
}

/// The deadline the agent last gave, and a timer that fires at it.
pub(crate) struct Lease {
    /// None until the agent gives one: a supervisor never given a lease
    /// fences nothing (its steps end with its agent all the same).
    until: Option<u64>,
    timer: TimerFd,
}

impl Lease {
    pub(crate) fn new() -> Result<Lease, String> {
        let timer = TimerFd::new(
            ClockId::CLOCK_BOOTTIME,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(|e| format!("cannot make the lease's timer: {e}"))?;
        Ok(Lease { until: None, timer })
    }

    /// Holds the lease until `until_ns` on `CLOCK_BOOTTIME`. A deadline earlier
    /// than the one held is taken too: it is the agent's latest word.
    pub(crate) fn renew(&mut self, until_ns: u64) -> Result<(), String> {
        self.until = Some(until_ns);
        let at = TimeSpec::from_duration(std::time::Duration::from_nanos(until_ns.max(1)));
        self.timer
            .set(
                Expiration::OneShot(at),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME,
            )
            .map_err(|e| format!("cannot set the lease's timer: {e}"))
    }

    /// Whether a lease was given and has run out.
    pub(crate) fn lapsed(&self) -> bool {
        self.until.is_some_and(|until| now_ns() >= until)
    }

    /// Clears the timer's expiry after it woke the supervisor.
    pub(crate) fn drain(&self) {
        let mut count = [0u8; 8];
        let _ = nix::unistd::read(&self.timer, &mut count);
    }
}

impl AsFd for Lease {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.timer.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lapses_at_its_deadline_and_a_renewal_moves_it() {
        let mut lease = Lease::new().expect("a timer");
        assert!(!lease.lapsed(), "no lease given: nothing lapses");
        lease.renew(now_ns() + 60_000_000_000).expect("renewed");
        assert!(!lease.lapsed());
        lease.renew(now_ns().saturating_sub(1)).expect("renewed");
        assert!(lease.lapsed());
    }
}
