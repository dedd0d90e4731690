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

/// Fill `buf` from the host's random pool.
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
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
}

impl Rng {
    pub fn new() -> Self {
        Self {
            active: None,
            log: LogLimiter::new(),
            chain_log: LogLimiter::new(),
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
fn handle(log: &mut LogLimiter, mem: &GuestMem, chain: &Chain) -> Completion {
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
        active.drain_queue(index, "virtio-rng", &mut self.chain_log, |mem, chain| {
            handle(log, mem, chain)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::virtio::testutil::{Desc, Guest, MEM_SIZE};

    fn guest() -> Guest {
        let mut g = Guest::new(Arc::new(Mutex::new(Rng::new())));
        g.start(16);
        g
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
