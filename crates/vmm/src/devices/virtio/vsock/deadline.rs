//! virtio-vsock's deadlines: a connection still waiting (for a CONNECT line, the guest's
//! answer, or its confirmation of a close) when its time is up is reset. One timerfd, armed
//! for the earliest deadline.

use super::*;

impl Vsock {
    /// Reset connection `token` if it is still waiting `after` from now.
    pub(super) fn set_deadline(&mut self, token: u64, after: Duration) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let at = Instant::now() + after;
        conn.deadline = Some(at);
        if self.armed.is_none_or(|armed| at < armed) {
            self.arm(Some(at));
        }
    }

    /// Set the timer to fire at `at`, or never. Setting it also clears an expiry not yet read,
    /// so the timerfd is never read.
    pub(super) fn arm(&mut self, at: Option<Instant>) {
        // A zero time would disarm it: a deadline already past fires at once instead.
        let after = at.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now())
                .max(Duration::from_nanos(1))
        });
        match self.timer.reset(after, None) {
            Ok(()) => self.armed = at,
            Err(e) => error!("{}: cannot set its timer: {e}", self.name),
        }
    }

    /// The timer fired: reset the connections whose deadline passed, then arm it for the next.
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|at| at <= now))
            .map(|(&token, _)| token)
            .collect();
        for token in due {
            if let Some(conn) = self.conns.get(&token)
                && self.log.allow()
            {
                let what = match conn.state {
                    State::HostLine(_) => "a host program sent no CONNECT line",
                    State::Connecting => "the guest did not answer a connection request",
                    State::Established => "the guest did not confirm a close",
                };
                debug!("{}: {what} in time; connection reset", self.name);
            }
            self.reset_conn(token);
        }
        let next = self.conns.values().filter_map(|c| c.deadline).min();
        self.arm(next);
    }
}
