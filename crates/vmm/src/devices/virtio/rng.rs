//! virtio-rng (virtio 1.2, section 5.4): fills the driver's device-writable buffers from the
//! host's getrandom(2).

use std::io;

use log::warn;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;

use super::chain::Chain;
use super::device::{Active, Completion, LogLimiter, VirtioDevice};
use crate::memory::GuestMem;

pub const QUEUE_SIZE: u16 = 256;
/// Most entropy given for one request; the driver asks again if it wants more.
const MAX_REQUEST: usize = 64 << 10;

/// Fill `buf` from the host's random pool (also the VM generation ID's source).
pub(crate) fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, memory we hold mutably, and
        // getrandom writes at most that many bytes into it.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// A virtio entropy device.
pub struct Rng {
    active: Option<Active>,
    log: LogLimiter,
    chain_log: LogLimiter,
    /// `rate_limiter` (entropy): a request the buckets cannot take waits on the queue.
    limiter: super::rate_limiter::RateLimiter,
}

impl Rng {
    pub fn new() -> Self {
        Self::with_limit(Default::default())
    }

    pub fn with_limit(limit: super::RateLimit) -> Self {
        Self {
            active: None,
            log: LogLimiter::new(),
            chain_log: LogLimiter::new(),
            limiter: super::rate_limiter::RateLimiter::new(limit),
        }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

/// Answer one request: random bytes in every writable buffer, up to [`MAX_REQUEST`]. A request
/// with a device-readable buffer or one outside guest RAM gets nothing (used length 0).
fn handle(
    log: &mut LogLimiter,
    limiter: &mut super::rate_limiter::RateLimiter,
    mem: &GuestMem,
    chain: &Chain,
) -> Completion {
    let asked = chain.total_len().min(MAX_REQUEST as u64);
    if !limiter.consume(asked) {
        return Completion::Later;
    }
    let result = chain
        .writable_only(mem, 0)
        .map_err(|e| e.to_string())
        .and_then(|writable| {
            let len = usize::try_from(writable.len())
                .unwrap_or(usize::MAX)
                .min(MAX_REQUEST);
            let mut bytes = vec![0u8; len];
            fill_random(&mut bytes).map_err(|e| format!("getrandom failed: {e}"))?;
            writable.write(mem, &bytes).map_err(|e| e.to_string())
        });
    match result {
        Ok(n) => Completion::Used(n as u32),
        Err(why) => {
            if log.allow() {
                warn!("virtio-rng: {why}");
            }
            Completion::Used(0)
        }
    }
}

impl VirtioDevice for Rng {
    fn active(&self) -> Option<&Active> {
        self.active.as_ref()
    }

    fn limiters(&self) -> Vec<super::rate_limiter::LimiterState> {
        vec![self.limiter.state()]
    }

    fn restore_limiters(
        &mut self,
        saved: &[super::rate_limiter::LimiterState],
    ) -> Result<(), String> {
        super::device::restore_each(&mut [&mut self.limiter], saved)
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn activate(&mut self, active: Active) {
        self.active = Some(active);
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, index: usize) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let log = &mut self.log;
        let limiter = &mut self.limiter;
        active.drain_queue(index, "virtio-rng", &mut self.chain_log, |mem, chain| {
            handle(log, limiter, mem, chain)
        })
    }

    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.limiter.fd()
    }

    /// The rate limiter's timer: the tokens a waiting request needs are there.
    fn process_backend(&mut self) {
        if self.limiter.expired() && self.process_queue(0) {
            self.limiter.wake_soon();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;

    use super::*;
    use crate::devices::virtio::testutil::{Desc, Guest, MEM_SIZE};

    fn guest() -> Guest {
        let mut g = Guest::new(Arc::new(Mutex::new(Rng::new())));
        g.start(16);
        g
    }

    fn guest_event_idx() -> Guest {
        let mut g = Guest::new(Arc::new(Mutex::new(Rng::new())));
        g.start_event_idx(16);
        g
    }

    /// The bytes the device writes into guest memory (from the event loop, where KVM's dirty
    /// log cannot see them) are in the next diff snapshot's memory file, at their offset.
    #[test]
    fn a_device_write_is_in_the_diff() {
        use std::os::unix::fs::FileExt;
        let mut g = guest();
        let w = g.alloc(4096);
        g.push(0, &[Desc::w(w, 4096)]);
        // What the driver (the test) wrote so far is not the device's.
        crate::memory::take_dirty(None, &g.mem).unwrap();
        g.kick(0);
        assert_eq!(g.used_idx(0), 1);
        let dirty = crate::memory::take_dirty(None, &g.mem).unwrap();
        let page = |addr: u64| {
            let p = (addr / crate::memory::PAGE) as usize;
            dirty[0][p / 64] & (1 << (p % 64)) != 0
        };
        assert!(page(w), "the buffer the device filled is not dirty");
        let written: Vec<u64> = (0..MEM_SIZE / 4096).filter(|&p| page(p * 4096)).collect();
        // The buffer and the used ring's page; nothing else.
        assert_eq!(written.len(), 2, "pages {written:?}");

        let path = std::env::temp_dir().join(format!("kite-diff-rng-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let n = crate::snapshot::memfile::write_dirty(&g.mem, &dirty, &file).unwrap();
        assert_eq!(n, 2 * 4096);
        assert_eq!(file.metadata().unwrap().len(), MEM_SIZE);
        let mut back = vec![0u8; 4096];
        file.read_exact_at(&mut back, w).unwrap();
        let random = g.bytes(w, 4096);
        assert!(random.iter().any(|&b| b != 0), "the device wrote nothing");
        assert_eq!(back, random);
        // A page not in the diff is a hole (reads as zeroes) in the file.
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        drop(file);
        std::fs::remove_file(&path).unwrap();
    }

    /// Post a 16-byte request, notifying only if the device asked; returns whether it did.
    fn post(g: &mut Guest) -> bool {
        let w = g.alloc(16);
        g.post(0, &[Desc::w(w, 16)]).1
    }

    #[test]
    fn event_idx_interrupts_only_when_the_used_index_passes_used_event() {
        let mut g = guest_event_idx();
        // The driver wants an interrupt once used entry 1 is there (the second).
        g.set_used_event(0, 1);
        assert!(post(&mut g));
        assert_eq!(g.used_idx(0), 1);
        assert!(!g.irq_fired(), "interrupt before used_event was passed");
        assert_eq!(g.read(0x60), 0);
        assert!(post(&mut g));
        assert_eq!(g.used_idx(0), 2);
        assert!(g.irq_fired());
        assert_eq!(g.read(0x60), VIRTIO_MMIO_INT_VRING);
        g.write(0x64, VIRTIO_MMIO_INT_VRING);

        // A batch that jumps over used_event (2 -> 5 passes 3) interrupts once.
        g.set_used_event(0, 3);
        let old = g.avail_idx(0);
        for _ in 0..3 {
            let w = g.alloc(16);
            g.push(0, &[Desc::w(w, 16)]);
        }
        assert!(g.kick_wanted(0, old));
        g.kick(0);
        assert_eq!(g.used_idx(0), 5);
        assert!(g.irq_fired());
        assert!(!g.irq_fired());

        // used_event far ahead: completions, no interrupt.
        g.set_used_event(0, 100);
        for _ in 0..4 {
            post(&mut g);
        }
        assert_eq!(g.used_idx(0), 9);
        assert!(!g.irq_fired());
        // Back to "every completion" (used_event one behind the next).
        g.set_used_event(0, 9);
        post(&mut g);
        assert!(g.irq_fired());
    }

    #[test]
    fn event_idx_avail_event_asks_for_the_next_buffer_and_unnotified_ones_are_served() {
        let mut g = guest_event_idx();
        // Armed at DRIVER_OK: the first buffer is notified.
        assert_eq!(g.avail_event(0), 0);
        assert!(post(&mut g));
        assert_eq!(g.used_idx(0), 1);
        // The device emptied the ring and asks for the next one.
        assert_eq!(g.avail_event(0), 1);

        // A driver batching its notifications: three buffers posted, no notification yet;
        // nothing happens until it comes.
        let old = g.avail_idx(0);
        for _ in 0..3 {
            let w = g.alloc(16);
            g.push(0, &[Desc::w(w, 16)]);
        }
        assert_eq!(g.run_events(), 0);
        assert_eq!(g.used_idx(0), 1);
        // The batch passed avail_event: one notification brings all three.
        assert!(g.kick_wanted(0, old));
        g.kick(0);
        assert_eq!(g.used_idx(0), 4);
        assert_eq!(g.avail_event(0), 4);
        // A driver that skips a notification it was asked for: avail_event stays behind, so its
        // next buffer is not asked for either; both wait for a notification.
        let w = g.alloc(16);
        g.push(0, &[Desc::w(w, 16)]);
        assert!(!post(&mut g));
        assert_eq!(g.used_idx(0), 4);
        g.kick(0);
        assert_eq!(g.used_idx(0), 6);
        assert_eq!(g.avail_event(0), 6);
    }

    #[test]
    fn event_idx_suppresses_notifications_while_the_device_is_busy() {
        let mut g = guest_event_idx();
        g.set_used_event(0, u16::MAX);
        // A full ring: the device serves one ring's worth per turn and comes back by itself.
        let old = g.avail_idx(0);
        let bufs: Vec<u64> = (0..16).map(|_| g.alloc(16)).collect();
        for &b in &bufs {
            g.push(0, &[Desc::w(b, 16)]);
        }
        assert!(g.kick_wanted(0, old));
        g.kick(0);
        assert_eq!(g.used_idx(0), 16);
        // Its budget ran out before it saw the ring empty: avail_event stays behind, so buffers
        // the driver posts now are not notified...
        assert_eq!(g.avail_event(0), 0);
        let old = g.avail_idx(0);
        for &b in &bufs[..5] {
            g.push(0, &[Desc::w(b, 16)]);
        }
        assert!(!g.kick_wanted(0, old));
        // ...and still served on the device's own next turn, which then asks for the next.
        g.run_events();
        assert_eq!(g.used_idx(0), 21);
        assert_eq!(g.avail_event(0), 21);
        assert!(post(&mut g));
        assert_eq!(g.used_idx(0), 22);
    }

    #[test]
    fn without_event_idx_the_used_flag_suppresses_notifications_while_the_device_is_busy() {
        let mut g = guest();
        // Asking at DRIVER_OK, and again whenever it finds the ring empty.
        assert!(!g.no_notify(0));
        let w = g.alloc(16);
        g.push(0, &[Desc::w(w, 16)]);
        g.kick(0);
        assert_eq!(g.used_idx(0), 1);
        assert!(!g.no_notify(0));
        // A full ring: the device serves one ring's worth per turn, and its budget runs out
        // before it sees the ring empty: NO_NOTIFY stays set, so buffers the driver posts now
        // need no notification...
        let bufs: Vec<u64> = (0..16).map(|_| g.alloc(16)).collect();
        for &b in &bufs {
            g.push(0, &[Desc::w(b, 16)]);
        }
        g.kick(0);
        assert_eq!(g.used_idx(0), 17);
        assert!(g.no_notify(0), "the device asked while it had work left");
        for &b in &bufs[..5] {
            g.push(0, &[Desc::w(b, 16)]);
        }
        // ...and are still served on the device's own next turn, which then asks again.
        g.run_events();
        assert_eq!(g.used_idx(0), 22);
        assert!(!g.no_notify(0));
        let w = g.alloc(16);
        g.push(0, &[Desc::w(w, 16)]);
        g.kick(0);
        assert_eq!(g.used_idx(0), 23);
    }

    #[test]
    fn event_idx_rng_request_is_answered() {
        let mut g = guest_event_idx();
        let a = g.alloc(64);
        let b = g.alloc(64);
        let (head, kicked) = g.post(0, &[Desc::w(a, 32), Desc::w(b, 64)]);
        assert!(kicked);
        assert_eq!(g.used(0, 0), (u32::from(head), 96));
        // used_event is 0 (the driver's ring starts zeroed): the first completion interrupts.
        assert!(g.irq_fired());
        let bytes = [g.bytes(a, 32), g.bytes(b, 64)].concat();
        assert!(bytes.iter().any(|&x| x != 0), "no random bytes written");
        assert_eq!(g.bytes(a + 32, 32), [0; 32]);
    }

    #[test]
    fn fills_writable_buffers_with_random_bytes() {
        let mut g = guest();
        let a = g.alloc(64);
        let b = g.alloc(64);
        let head = g.push(0, &[Desc::w(a, 64), Desc::w(b, 64)]);
        g.kick(0);
        assert_eq!(g.used(0, 0), (u32::from(head), 128));
        assert!(g.irq_fired());
        let first = [g.bytes(a, 64), g.bytes(b, 64)].concat();
        g.push(0, &[Desc::w(a, 64), Desc::w(b, 64)]);
        g.kick(0);
        let second = [g.bytes(a, 64), g.bytes(b, 64)].concat();
        assert_ne!(first, second, "two requests gave the same bytes");
        assert!(first.iter().any(|&x| x != first[0]), "output is constant");
    }

    #[test]
    fn a_large_request_gets_at_most_the_cap() {
        let mut g = guest();
        let a = g.alloc(MAX_REQUEST as u32 + 4096);
        g.push(0, &[Desc::w(a, MAX_REQUEST as u32 + 4096)]);
        g.kick(0);
        assert_eq!(g.used(0, 0).1, MAX_REQUEST as u32);
        assert_eq!(g.bytes(a + MAX_REQUEST as u64, 4096), [0; 4096]);
    }

    #[test]
    fn a_device_readable_buffer_gets_nothing() {
        let mut g = guest();
        let r = g.buf(&[7; 32]);
        let w = g.alloc(32);
        g.push(0, &[Desc::r(r, 32), Desc::w(w, 32)]);
        g.kick(0);
        assert_eq!(g.used(0, 0).1, 0);
        assert_eq!(g.bytes(r, 32), [7; 32]);
        assert_eq!(g.bytes(w, 32), [0; 32]);
        assert!(!g.needs_reset());
    }

    #[test]
    fn a_buffer_outside_guest_ram_gets_nothing() {
        let mut g = guest();
        let w = g.alloc(32);
        g.push(0, &[Desc::w(w, 32), Desc::w(MEM_SIZE - 16, 32)]);
        g.kick(0);
        assert_eq!(g.used(0, 0).1, 0);
        assert_eq!(g.bytes(w, 32), [0; 32]);
    }

    #[test]
    fn a_descriptor_loop_makes_the_device_need_a_reset() {
        let mut g = guest();
        let w = g.alloc(32);
        let flags = (virtio_bindings::virtio_ring::VRING_DESC_F_WRITE
            | virtio_bindings::virtio_ring::VRING_DESC_F_NEXT) as u16;
        g.push_raw(0, &[(w, 32, flags, 0)]);
        g.kick(0);
        assert!(g.needs_reset());
        assert_eq!(g.used_idx(0), 0);
        assert_eq!(g.bytes(w, 32), [0; 32]);
    }
}
