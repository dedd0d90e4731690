//! Pausing the guest (`PATCH /vm {"state": "Paused"}`): the main thread raises a flag and kicks
//! each vCPU out of KVM_RUN; each vCPU finishes the exit it was handling (so a device access in
//! progress completes), sees the flag and parks on a condition variable until resumed. The
//! main thread waits until every vCPU has parked, and on resume until every one has left.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Longest the main thread waits for the vCPUs to park or to leave.
pub const PARK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct State {
    /// A pause is wanted.
    paused: bool,
    /// vCPUs parked now.
    parked: usize,
    /// The VM is stopping: parked vCPUs leave and none parks again.
    released: bool,
    /// Bumped when a message waits for the parked vCPUs (see [`PauseControl::post`]).
    mail: u64,
}

#[derive(Debug, Default)]
pub struct PauseControl {
    /// Read by every vCPU after every exit; set only while a pause is wanted.
    requested: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
}

impl PauseControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// vCPU thread: whether it should call [`park`](Self::park).
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// vCPU thread: wait here while the VM is paused.
    pub fn park(&self) {
        self.park_with(&mut || {});
    }

    /// vCPU thread: wait here while the VM is paused, calling `on_mail` (to answer messages)
    /// when parked and whenever [`post`](Self::post) says one came.
    pub fn park_with(&self, on_mail: &mut dyn FnMut()) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.paused || s.released {
            return;
        }
        s.parked += 1;
        self.changed.notify_all();
        let mut seen = None;
        while s.paused && !s.released {
            if seen != Some(s.mail) {
                seen = Some(s.mail);
                drop(s);
                on_mail();
                s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.parked -= 1;
        self.changed.notify_all();
    }

    /// Main thread: park all `vcpus`; `kick` brings those still in KVM_RUN out. `Err` (with
    /// the vCPUs running again) if they have not all parked within [`PARK_TIMEOUT`] or
    /// `give_up` says the VM is stopping.
    pub fn pause(
        &self,
        vcpus: usize,
        kick: impl Fn(),
        give_up: impl Fn() -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + PARK_TIMEOUT;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.paused {
            return Err("the VM is already paused".into());
        }
        s.paused = true;
        self.requested.store(true, Ordering::Release);
        while s.parked < vcpus {
            if give_up() || Instant::now() >= deadline {
                let parked = s.parked;
                drop(s);
                self.resume();
                return Err(format!(
                    "only {parked} of {vcpus} vCPUs stopped within {} s; the VM keeps running",
                    PARK_TIMEOUT.as_secs()
                ));
            }
            drop(s);
            // A kick that lands just before a vCPU enters KVM_RUN is lost: kick again until
            // every vCPU has parked.
            kick();
            s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.parked < vcpus {
                s = self
                    .changed
                    .wait_timeout(s, Duration::from_micros(500))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        Ok(())
    }

    /// Main thread: let the vCPUs run again, and wait (at most [`PARK_TIMEOUT`]) until every
    /// one has left its parking place.
    pub fn resume(&self) {
        let deadline = Instant::now() + PARK_TIMEOUT;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.paused = false;
        self.requested.store(false, Ordering::Release);
        self.changed.notify_all();
        while s.parked > 0 && Instant::now() < deadline {
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Main thread: a message for the parked vCPUs is waiting; wake them to read it.
    pub fn post(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.mail = s.mail.wrapping_add(1);
        self.changed.notify_all();
    }

    /// Before the vCPU threads start: they park before their first KVM_RUN (a VM restored
    /// without `resume_vm`).
    pub fn start_paused(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.paused = true;
        self.requested.store(true, Ordering::Release);
    }

    /// Main thread: wait (at most [`PARK_TIMEOUT`]) until `vcpus` vCPUs have parked.
    pub fn wait_parked(&self, vcpus: usize) -> Result<(), String> {
        let deadline = Instant::now() + PARK_TIMEOUT;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.parked < vcpus {
            if !s.paused || Instant::now() >= deadline {
                return Err(format!("only {} of {vcpus} vCPUs are parked", s.parked));
            }
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Whether a pause is in force.
    pub fn is_paused(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).paused
    }

    /// The VM is stopping: free every parked vCPU for good.
    pub fn release(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.released = true;
        self.requested.store(true, Ordering::Release);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    /// Threads that count while not parked stand in for vCPUs.
    #[test]
    fn parked_threads_make_no_progress_until_resumed() {
        let ctl = Arc::new(PauseControl::new());
        let counters: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = counters
            .iter()
            .map(|c| {
                let (ctl, c, stop) = (ctl.clone(), c.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        c.fetch_add(1, Ordering::Relaxed);
                        if ctl.requested() {
                            ctl.park();
                        }
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        for _ in 0..10 {
            ctl.pause(3, || {}, || false).unwrap();
            assert!(ctl.is_paused());
            let before: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            std::thread::sleep(Duration::from_millis(20));
            let after: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            assert_eq!(before, after, "a parked thread made progress");
            assert!(ctl.pause(3, || {}, || false).is_err(), "paused twice");
            ctl.resume();
            let resumed: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            while counters
                .iter()
                .zip(&resumed)
                .any(|(c, r)| c.load(Ordering::Relaxed) == *r)
            {
                std::thread::yield_now();
            }
        }
        stop.store(true, Ordering::Release);
        ctl.release();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_thread_that_never_parks_makes_pause_fail_and_undo() {
        let ctl = PauseControl::new();
        let err = ctl.pause(1, || {}, || true).unwrap_err();
        assert!(err.contains("0 of 1"), "{err}");
        assert!(!ctl.is_paused());
        assert!(!ctl.requested());
    }
}
