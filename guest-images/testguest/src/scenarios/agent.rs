//! `agent`: the guest side of a container runtime's session with its VM, for the replay tests
//! of Kata Containers and firecracker-containerd (`tests/runtimes*.rs`):
//!
//! 1. Listen on vsock port `kite_agent_port` (1024), as the runtimes' agents do, answer the
//!    host's connection (made by `CONNECT 1024\n` on the vsock device's Unix socket), and echo
//!    what the host sends until a `\n`; then `KITE-PROGRESS agent echoed=<n>`.
//! 2. The block hotplug: `virtio-blk-resize` on the `kite_blk_index` disk (its keys); then
//!    `KITE-PROGRESS agent hotplug <its ok line>`.
//! 3. Stop as `kite_agent_stop` says: `reset` (default) ends the VM at once; `cad` says
//!    `KITE-PROGRESS agent waiting for ctrl-alt-del`, polls the i8042 for Ctrl-Alt-Del (the
//!    host's `SendCtrlAltDel`) and then ends the VM (a guest's reboot); `hold` says
//!    `KITE-PROGRESS agent holding` and runs until the host stops the VMM (a signal).
//!
//! Every wait is limited by `kite_ms` (60000).

use core::fmt::Write;

use super::Ctx;
use super::rawvsock::{OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, RawVsock};
use crate::fail;
use crate::report::{Line, Outcome};
use crate::serial;
use crate::sys::{inb, ms_to_ticks, rdtsc};

/// One line on the console (not the result line).
fn say(args: core::fmt::Arguments) {
    let mut line = Line::new();
    let _ = line.write_fmt(args);
    line.push(b'\n');
    serial::write_bytes(line.as_bytes());
}

pub fn agent(ctx: &mut Ctx) -> Outcome {
    let port = ctx.cmdline.get_u64("kite_agent_port").unwrap_or(1024) as u32;
    let ms = ctx.cmdline.get_u64("kite_ms").unwrap_or(60_000);
    let echoed = serve_one(ctx, port, ms).map_err(|l| l.prefixed("agent"))?;
    say(format_args!("KITE-PROGRESS agent echoed={echoed}"));
    let resized = super::blkfault::resize(ctx).map_err(|l| l.prefixed("hotplug"))?;
    say(format_args!("KITE-PROGRESS agent hotplug {}", resized.as_str()));
    match ctx.cmdline.get("kite_agent_stop").unwrap_or(b"reset") {
        b"reset" => {}
        b"cad" => {
            say(format_args!("KITE-PROGRESS agent waiting for ctrl-alt-del"));
            wait_ctrl_alt_del(ms)?;
        }
        b"hold" => {
            say(format_args!("KITE-PROGRESS agent holding"));
            let deadline = rdtsc() + ms_to_ticks(ms);
            while rdtsc() < deadline {
                core::hint::spin_loop();
            }
            return fail!("the host did not stop the VM within {ms} ms");
        }
        _ => return fail!("kite_agent_stop: use reset, cad or hold"),
    }
    crate::ok!("echoed={echoed} {}", resized.as_str())
}

/// Accept one connection to `port` and echo it up to a newline; the bytes echoed.
fn serve_one(ctx: &mut Ctx, port: u32, ms: u64) -> Result<u64, Line> {
    let mut vsock = RawVsock::open(ctx)?;
    let deadline = rdtsc() + ms_to_ticks(ms);
    let left = |deadline: u64| (deadline.saturating_sub(rdtsc()) / ms_to_ticks(1).max(1)).max(1);
    let peer = loop {
        if rdtsc() >= deadline {
            return fail!("no connection to port {port} within {ms} ms");
        }
        if let Some(p) = vsock.recv(left(deadline), false)?
            && p.hdr.op == OP_REQUEST
            && p.hdr.dst_port == port
        {
            break p.hdr.src_port;
        }
    };
    vsock.send(vsock.hdr(port, peer, OP_RESPONSE, 0), &[])?;
    let mut echoed = 0u64;
    loop {
        let Some(p) = vsock.recv(left(deadline), false)? else {
            return fail!("no newline from the host within {ms} ms ({echoed} bytes echoed)");
        };
        if p.hdr.dst_port != port || p.hdr.src_port != peer {
            continue;
        }
        match p.hdr.op {
            OP_RW => {
                let len = p.hdr.len.min(4096);
                // SAFETY: the packet's data buffer, `len` bytes the device wrote (checked by
                // `recv`); identity-mapped guest RAM.
                let data = unsafe { core::slice::from_raw_parts(p.data as *const u8, len as usize) };
                let newline = data.contains(&b'\n');
                let mut hdr = vsock.hdr(port, peer, OP_RW, len);
                echoed += u64::from(len);
                hdr.fwd_cnt = echoed as u32;
                let mut copy = [0u8; 4096];
                copy[..len as usize].copy_from_slice(data);
                vsock.send_data(hdr, len, |buf| buf.copy_from_slice(&copy[..buf.len()]))?;
                if newline {
                    return Ok(echoed);
                }
            }
            OP_SHUTDOWN | OP_RST => {
                return fail!("the host closed the connection ({echoed} bytes echoed)");
            }
            _ => {}
        }
    }
}

/// Poll the i8042 until Ctrl-Alt-Del arrives (the Del make code, scan code set 1 or 2, after
/// a Ctrl make code).
fn wait_ctrl_alt_del(ms: u64) -> Result<(), Line> {
    let deadline = rdtsc() + ms_to_ticks(ms);
    let (mut ctrl, mut extended) = (false, false);
    while rdtsc() < deadline {
        if inb(0x64) & 1 == 0 {
            core::hint::spin_loop();
            continue;
        }
        let code = inb(0x60);
        match code {
            0x1d | 0x14 if !extended => ctrl = true,
            0xe0 => {
                extended = true;
                continue;
            }
            0x53 | 0x71 if extended && ctrl => return Ok(()),
            _ => {}
        }
        extended = false;
    }
    fail!("no Ctrl-Alt-Del within {ms} ms")
}
