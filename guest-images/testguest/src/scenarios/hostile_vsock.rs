//! `hostile-vsock`: virtio-vsock packets that lie, each on a fresh connection to the host's
//! echo server at `kite_vsock_port` (default 1234), repeated `kite_rounds` times (default 20):
//!
//! - `len`: an RW packet saying 4096 bytes and carrying 100;
//! - `max`: an RW packet saying 0xffffffff bytes;
//! - `huge`: an RW packet saying 65537 bytes (more than any packet) with a data buffer of all
//!   of RAM;
//! - `ctl`: a CREDIT_UPDATE carrying 100 bytes of payload;
//! - `op`: an unknown operation (99);
//! - `overrun`: RW packets past the credit the device gave, with the host not reading
//!   (`kite_stall_port`, default 1235): up to 2 MiB are sent; the device must reset the
//!   connection before;
//!
//! each of which the device must answer with RST on that connection (virtio 1.2, 5.10.6.x);
//! - `credit`: a CREDIT_UPDATE claiming a 4 GiB buffer and more consumed than was ever sent,
//!   then 16 KiB sent: the echo must come back whole, in packets that fit the receive buffers;
//! - `cid`: a REQUEST from a source CID that is not the guest's: dropped, no answer.
//!
//! Then one connection echoes 4 KiB properly.

use core::fmt::Write;

use super::Ctx;
use super::rawvsock::{
    DATA, OP_CREDIT_UPDATE, OP_REQUEST, OP_RST, OP_RW, OP_SHUTDOWN, RawVsock, SHUTDOWN_BOTH,
};
use crate::fail;
use crate::report::{Line, Outcome};
use crate::virtio::Buf;

fn byte(i: u64) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add((i >> 8) as u8)
}

/// Waits for the RST that must answer a lie on `local`; `what` names the lie.
fn expect_rst(v: &mut RawVsock, local: u32, host: u32, what: &str) -> Result<(), Line> {
    loop {
        match v.recv_on(local, host, 3000)? {
            Some(h) if h.op == OP_RST => return Ok(()),
            // Echoed data or credit news from before the lie.
            Some(h) if h.op == OP_RW || h.op == OP_CREDIT_UPDATE => {}
            Some(h) => return fail!("{what}: answered with op {} instead of RST", h.op),
            None => return fail!("{what}: no RST within 3 s"),
        }
    }
}

/// Receives `want` echoed bytes on `local` and checks them against [`byte`].
fn expect_echo(v: &mut RawVsock, local: u32, host: u32, want: u64) -> Result<(), Line> {
    let mut got = 0u64;
    while got < want {
        let Some(p) = v.recv(3000, false)? else {
            return fail!("echo: {got} of {want} bytes within 3 s");
        };
        if p.hdr.dst_port != local || p.hdr.src_port != host || p.hdr.op != OP_RW {
            continue;
        }
        for i in 0..p.hdr.len as u64 {
            // SAFETY: the receive buffer just returned; read before the next recv.
            let b = unsafe { ((p.data + i) as *const u8).read_volatile() };
            if b != byte(got + i) {
                return fail!("echo: byte {} differs", got + i);
            }
        }
        got += p.hdr.len as u64;
    }
    Ok(())
}

pub fn hostile_vsock(ctx: &mut Ctx) -> Outcome {
    let rounds = ctx.cmdline.get_u64("kite_rounds").unwrap_or(20);
    let port = ctx.cmdline.get_u64("kite_vsock_port").unwrap_or(1234) as u32;
    let stall = ctx.cmdline.get_u64("kite_stall_port").unwrap_or(1235) as u32;
    let top = ctx
        .boot
        .e820()
        .iter()
        .filter(|e| e.kind == 1)
        .map(|e| e.addr + e.size)
        .filter(|&end| end <= 1 << 32)
        .max()
        .unwrap_or(0) as u32;
    let mut v = RawVsock::open(ctx)?;
    let mut local = 50000u32;
    let mut rsts = 0u64;
    let mut overrun_sent = 0u64;
    for _ in 0..rounds {
        for case in ["len", "max", "huge", "ctl", "op"] {
            local += 1;
            if !v.connect(local, port)? {
                return fail!("{case}: the echo server at port {port} refused");
            }
            let mut h = v.hdr(local, port, OP_RW, 4096);
            match case {
                "len" => v.send_data(h, 100, |b| b.fill(1))?,
                "max" => {
                    h.len = u32::MAX;
                    v.send_data(h, 4096, |b| b.fill(2))?
                }
                "huge" => {
                    h.len = 65537;
                    v.send(h, &[Buf::r(0, top)])?
                }
                "ctl" => {
                    h.op = OP_CREDIT_UPDATE;
                    h.len = 100;
                    v.send_data(h, 100, |b| b.fill(3))?
                }
                _ => {
                    h.op = 99;
                    h.len = 0;
                    v.send(h, &[])?
                }
            }
            expect_rst(&mut v, local, port, case)?;
            rsts += 1;
        }
    }

    // Overrun: ignore the credit towards a host that does not read.
    local += 1;
    if !v.connect(local, stall)? {
        return fail!("overrun: the host at port {stall} refused");
    }
    let mut reset = false;
    while overrun_sent < 2 << 20 {
        let h = v.hdr(local, stall, OP_RW, DATA as u32);
        v.send_data(h, DATA as u32, |b| b.fill(4))?;
        overrun_sent += DATA;
        // Anything for us? (Credit news, or the RST.)
        while let Some(p) = v.recv(0, false)? {
            if p.hdr.dst_port == local && p.hdr.op == OP_RST {
                reset = true;
            }
        }
        if reset {
            break;
        }
    }
    if !reset {
        expect_rst(&mut v, local, stall, "overrun")?;
    }
    rsts += 1;

    // Credit lies: a 4 GiB buffer, more consumed than sent; then 16 KiB to echo.
    local += 1;
    if !v.connect(local, port)? {
        return fail!("credit: the echo server refused");
    }
    let mut h = v.hdr(local, port, OP_CREDIT_UPDATE, 0);
    h.buf_alloc = u32::MAX;
    h.fwd_cnt = 0x9000_0000;
    v.send(h, &[])?;
    for k in 0..4u64 {
        let mut h = v.hdr(local, port, OP_RW, DATA as u32);
        h.buf_alloc = u32::MAX;
        h.fwd_cnt = 0x9000_0000;
        v.send_data(h, DATA as u32, |b| {
            for (i, x) in b.iter_mut().enumerate() {
                *x = byte(k * DATA + i as u64);
            }
        })?;
    }
    expect_echo(&mut v, local, port, 4 * DATA)?;
    let mut h = v.hdr(local, port, OP_SHUTDOWN, 0);
    h.flags = SHUTDOWN_BOTH;
    v.send(h, &[])?;

    // A packet from someone else's CID: no answer at all.
    local += 1;
    let mut h = v.hdr(local, port, OP_REQUEST, 0);
    h.src_cid = v.guest_cid + 1;
    v.send(h, &[])?;
    if let Some(h) = v.recv_on(local, port, 500)? {
        return fail!(
            "cid: a packet from another CID was answered with op {}",
            h.op
        );
    }

    // And a proper echo of 4 KiB.
    local += 1;
    if !v.connect(local, port)? {
        return fail!("proper: the echo server refused");
    }
    let h = v.hdr(local, port, OP_RW, DATA as u32);
    v.send_data(h, DATA as u32, |b| {
        for (i, x) in b.iter_mut().enumerate() {
            *x = byte(i as u64);
        }
    })?;
    expect_echo(&mut v, local, port, DATA)?;
    v.dev.shutdown();
    let mut line = Line::new();
    let _ = write!(
        line,
        "rounds={rounds} rsts={rsts} overrun_sent={overrun_sent} credit_echo=16384 cid_ignored=1 proper_echo=4096"
    );
    Ok(line)
}
