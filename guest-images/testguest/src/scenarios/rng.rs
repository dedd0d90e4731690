//! `virtio-rng`: reads `kite_n` bytes (default 4096) of entropy from the first virtio
//! entropy device (DeviceID 4) in requests of at most 1 KiB, and checks the bytes are not
//! constant: not all equal, and the first two requests' bytes differ.

use super::Ctx;
use crate::report::Outcome;
use crate::sys::{ms_to_ticks, rdtsc};
use crate::virtio::{self, Arena, Buf, Device, ID_RNG, Wait};
use crate::{fail, ok};

const REQUEST_BYTES: u64 = 1024;
const MAX_BYTES: u64 = 1 << 20;
/// Requests (answered with fewer bytes or none) before giving up.
const MAX_REQUESTS: u64 = 4096;

pub fn virtio_rng(ctx: &mut Ctx) -> Outcome {
    let wait = match Wait::from_cmdline(&ctx.cmdline) {
        Ok(w) => w,
        Err(e) => return fail!("{e}"),
    };
    let want = ctx.n(4096);
    if !(2..=MAX_BYTES).contains(&want) {
        return fail!("kite_n must be 2 to {MAX_BYTES} bytes");
    }
    let ring = match virtio::ring_features(&ctx.cmdline) {
        Ok(f) => f,
        Err(e) => return fail!("{e}"),
    };
    let entry = virtio::find(&ctx.cmdline, ID_RNG, 0)?;
    let mut dev = Device::init(entry, ID_RNG, ring, wait)?;
    let mut q = dev.setup_queue(0, 16, &mut ctx.pages)?;
    let mut arena = Arena::new(&mut ctx.pages, want + REQUEST_BYTES)?;
    let buf = arena.take(want + REQUEST_BYTES, 4096)?;
    dev.driver_ok()?;

    // SAFETY: arena RAM, ours; the device writes it only while a request is posted and
    // we read it only after the request completed.
    let bytes = unsafe { core::slice::from_raw_parts(buf as *const u8, want as usize) };
    let mut got = 0u64;
    let mut requests = 0u64;
    let mut first_two = [(0u64, 0u64); 2];
    while got < want {
        if requests == MAX_REQUESTS {
            return fail!("only {got} of {want} bytes after {requests} requests");
        }
        let len = (want - got).min(REQUEST_BYTES);
        q.post(&[Buf::w(buf + got, len as u32)])?;
        q.kick();
        let (_, n) = q.wait_used(rdtsc() + ms_to_ticks(10_000), "entropy")?;
        if n as u64 > len {
            return fail!("device reports {n} bytes written into a {len}-byte buffer");
        }
        if (requests as usize) < 2 {
            first_two[requests as usize] = (got, n as u64);
        }
        got += n as u64;
        requests += 1;
    }
    let irqs = dev.irqs();
    dev.shutdown();

    if bytes.iter().all(|&b| b == bytes[0]) {
        return fail!("all {want} bytes are {:#04x}", bytes[0]);
    }
    let [(a, an), (b, bn)] = first_two;
    let common = an.min(bn) as usize;
    if requests >= 2 && common > 0 {
        let (x, y) = (
            &bytes[a as usize..a as usize + common],
            &bytes[b as usize..b as usize + common],
        );
        if x == y {
            return fail!("two requests returned the same {common} bytes");
        }
    }
    ok!(
        "bytes={got} requests={requests} wait={} irqs={irqs} event_idx={}",
        wait.name(),
        dev.event_idx()
    )
}
