//! `peers`: the guest's side of host peers that vanish or misbehave, chosen by `kite_peer=`:
//!
//! - `stall`: opens `kite_conns` (default 1, at most 256) connections to host port
//!   `kite_stall_port` (default 1235), whose program never reads, and sends on each within the
//!   credit the device gives until none comes for 1 s: `sent=` is what the device took in all
//!   (its buffers plus what the host sockets hold), `buf_alloc=`/`min_buf_alloc=` the largest
//!   and smallest buffer it advertised.
//! - `flood`: connects to `kite_flood_port` (default 1236), whose program writes without end,
//!   advertises a 64 KiB buffer and never says it consumed any: `received=` must stay within it.
//! - `gone`: connects to `kite_vsock_port` (default 1234), prints `KITE-PEER connected` and
//!   waits up to 10 s for the host side to close (SHUTDOWN or RST); then connects again and
//!   must be refused (RST): `closed_op=` and `refused=1`.
//! - `net`: sends a 60-byte broadcast frame on virtio-net every millisecond for `kite_ms`
//!   (default 3000) after printing `KITE-PEER sending`, while the host may delete the tap; every
//!   transmit buffer must come back: `frames=` and `completed=`.
//!
//! Each then reads entropy (`virtio-rng`) to show the other devices still work, and ends the
//! VM as usual (the host sees a clean exit).

use core::fmt::Write;

use super::Ctx;
use super::rawvsock::{DATA, OP_CREDIT_UPDATE, OP_RST, OP_RW, OP_SHUTDOWN, RawVsock};
use super::rng;
use crate::fail;
use crate::report::{Line, Outcome};
use crate::serial;
use crate::sys::{ms_to_ticks, rdtsc};
use crate::virtio::{self, Arena, Buf, Device, ID_NET, Wait};

pub fn peers(ctx: &mut Ctx) -> Outcome {
    let mut line = Line::new();
    match ctx.cmdline.get("kite_peer") {
        Some(b"stall") => stall(ctx, &mut line)?,
        Some(b"flood") => flood(ctx, &mut line)?,
        Some(b"gone") => gone(ctx, &mut line)?,
        Some(b"net") => net(ctx, &mut line)?,
        _ => return fail!("kite_peer must be stall, flood, gone or net"),
    }
    let r = rng::virtio_rng(ctx)?;
    let _ = write!(line, " rng_{}", r.first_word());
    Ok(line)
}

fn stall(ctx: &mut Ctx, line: &mut Line) -> Result<(), Line> {
    const MAX_CONNS: usize = 256;
    let port = ctx.cmdline.get_u64("kite_stall_port").unwrap_or(1235) as u32;
    let conns = ctx.cmdline.get_u64("kite_conns").unwrap_or(1) as usize;
    if !(1..=MAX_CONNS).contains(&conns) {
        return fail!("kite_conns must be 1 to {MAX_CONNS}");
    }
    let mut v = RawVsock::open(ctx)?;
    let first = 51000u32;
    // Per connection: the device's buffer and fwd_cnt as it last said, and what we sent.
    let mut credit = [(0u32, 0u32, 0u32); MAX_CONNS];
    for (i, c) in credit.iter_mut().enumerate().take(conns) {
        if !v.connect(first + i as u32, port)? {
            return fail!("stall: the host at port {port} refused connection {i}");
        }
        // The RESPONSE carried the device's buffer.
        *c = (v.last.buf_alloc, v.last.fwd_cnt, 0);
    }
    let mut idle_since = rdtsc();
    let mut packets = 0u64;
    loop {
        let mut any = false;
        for (i, c) in credit.iter_mut().enumerate().take(conns) {
            let (buf_alloc, fwd_cnt, sent) = *c;
            let room = buf_alloc.saturating_sub(sent.wrapping_sub(fwd_cnt));
            if room > 0 {
                let n = room.min(DATA as u32);
                let h = v.hdr(first + i as u32, port, OP_RW, n);
                v.send_data(h, n, |b| b.fill(0x5a))?;
                c.2 = sent.wrapping_add(n);
                packets += 1;
                any = true;
                idle_since = rdtsc();
            }
        }
        while let Some(p) = v.recv(if any { 0 } else { 50 }, false)? {
            let i = p.hdr.dst_port.wrapping_sub(first) as usize;
            if i < conns && p.hdr.src_port == port {
                if p.hdr.op == OP_RST {
                    return fail!("stall: the device reset connection {i}");
                }
                credit[i].0 = p.hdr.buf_alloc;
                credit[i].1 = p.hdr.fwd_cnt;
            }
        }
        if rdtsc().wrapping_sub(idle_since) > ms_to_ticks(1000) {
            break;
        }
    }
    let sent: u64 = credit[..conns].iter().map(|c| c.2 as u64).sum();
    let max_alloc = credit[..conns].iter().map(|c| c.0).max().unwrap_or(0);
    let min_alloc = credit[..conns].iter().map(|c| c.0).min().unwrap_or(0);
    let _ = write!(
        line,
        "conns={conns} sent={sent} packets={packets} buf_alloc={max_alloc} min_buf_alloc={min_alloc} fwd_cnt={}",
        credit[0].1
    );
    Ok(())
}

fn flood(ctx: &mut Ctx, line: &mut Line) -> Result<(), Line> {
    const BUF: u32 = 64 << 10;
    let port = ctx.cmdline.get_u64("kite_flood_port").unwrap_or(1236) as u32;
    let mut v = RawVsock::open(ctx)?;
    let local = 52000;
    // The REQUEST carries our buffer: 64 KiB, nothing consumed, ever.
    let mut h = v.hdr(local, port, super::rawvsock::OP_REQUEST, 0);
    h.buf_alloc = BUF;
    v.send(h, &[])?;
    let mut received = 0u64;
    let mut connected = false;
    let mut last = rdtsc();
    while rdtsc().wrapping_sub(last) < ms_to_ticks(1000) {
        let Some(p) = v.recv(100, false)? else {
            continue;
        };
        if p.hdr.dst_port != local {
            continue;
        }
        match p.hdr.op {
            super::rawvsock::OP_RESPONSE => connected = true,
            OP_RW => {
                received += p.hdr.len as u64;
                last = rdtsc();
            }
            OP_RST => return fail!("flood: connection reset after {received} bytes"),
            _ => {}
        }
    }
    if !connected {
        return fail!("flood: no RESPONSE from port {port}");
    }
    if received > BUF as u64 {
        return fail!("flood: {received} bytes arrived for a {BUF}-byte buffer never emptied");
    }
    // Ask once more, with the same (full) buffer: nothing may come.
    let mut h = v.hdr(local, port, OP_CREDIT_UPDATE, 0);
    h.buf_alloc = BUF;
    v.send(h, &[])?;
    let mut more = 0u64;
    while let Some(p) = v.recv(300, false)? {
        if p.hdr.dst_port == local && p.hdr.op == OP_RW {
            more += p.hdr.len as u64;
        }
    }
    if more > 0 {
        return fail!("flood: {more} bytes past the credit");
    }
    let _ = write!(line, "received={received} buf_alloc={BUF}");
    Ok(())
}

fn gone(ctx: &mut Ctx, line: &mut Line) -> Result<(), Line> {
    let port = ctx.cmdline.get_u64("kite_vsock_port").unwrap_or(1234) as u32;
    let mut v = RawVsock::open(ctx)?;
    let local = 53000;
    if !v.connect(local, port)? {
        return fail!("gone: the host at port {port} refused the first connection");
    }
    serial::write_bytes(b"KITE-PEER connected\n");
    let closed_op = loop {
        match v.recv_on(local, port, 10_000)? {
            Some(h) if h.op == OP_SHUTDOWN || h.op == OP_RST => break h.op,
            Some(_) => {}
            None => return fail!("gone: the host side's close did not reach the guest in 10 s"),
        }
    };
    // Answer a SHUTDOWN the way a driver does: RST.
    if closed_op == OP_SHUTDOWN {
        v.send(v.hdr(local, port, OP_RST, 0), &[])?;
    }
    let refused = !v.connect(local + 1, port)?;
    if !refused {
        return fail!("gone: a second connection was accepted after the listener closed");
    }
    let _ = write!(line, "closed_op={closed_op} refused=1");
    Ok(())
}

fn net(ctx: &mut Ctx, line: &mut Line) -> Result<(), Line> {
    let ms = ctx.cmdline.get_u64("kite_ms").unwrap_or(3000);
    let entry = virtio::find(&ctx.cmdline, ID_NET, 0)?;
    let dev = Device::init(entry, ID_NET, 0, Wait::Poll)?;
    let mut rx = dev.setup_queue(0, 8, &mut ctx.pages)?;
    let mut tx = dev.setup_queue(1, 8, &mut ctx.pages)?;
    let mut dev = dev;
    let mut arena = Arena::new(&mut ctx.pages, 9 * 4096)?;
    for _ in 0..8 {
        let b = arena.take(2048, 2048)?;
        rx.post(&[Buf::w(b, 2048)])?;
    }
    let frame = arena.take(12 + 60, 64)?;
    // SAFETY: our frame buffer: a zeroed virtio-net header, then broadcast, our MAC, type 0x88b5.
    unsafe {
        let f = core::slice::from_raw_parts_mut(frame as *mut u8, 72);
        f.fill(0);
        f[12..18].fill(0xff);
        f[18..24].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        f[24..26].copy_from_slice(&[0x88, 0xb5]);
    }
    dev.driver_ok()?;
    rx.kick();
    serial::write_bytes(b"KITE-PEER sending\n");
    let end = rdtsc() + ms_to_ticks(ms);
    let (mut frames, mut completed, mut received) = (0u64, 0u64, 0u64);
    while rdtsc() < end {
        if tx.free() > 0 {
            tx.post(&[Buf::r(frame, 72)])?;
            tx.kick();
            frames += 1;
        }
        while tx.pop_used()?.is_some() {
            completed += 1;
        }
        while let Some((head, _)) = rx.pop_used()? {
            received += 1;
            let _ = head;
        }
        crate::sys::delay_ticks(ms_to_ticks(1));
    }
    let deadline = rdtsc() + ms_to_ticks(2000);
    while completed < frames && rdtsc() < deadline {
        while tx.pop_used()?.is_some() {
            completed += 1;
        }
    }
    if completed != frames {
        return fail!("net: {completed} of {frames} transmit buffers came back");
    }
    dev.shutdown();
    let _ = write!(
        line,
        "frames={frames} completed={completed} received={received}"
    );
    Ok(())
}
