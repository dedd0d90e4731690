//! `virtio-vsock`: a stream client on the first virtio socket device (DeviceID 19; queues
//! 0 receive, 1 transmit, 2 event). It connects to the host (CID 2) port `kite_vsock_port`
//! (default 1234), sends `kite_vsock_bytes` (default 256 KiB) of a deterministic pattern in
//! packets of at most `kite_vsock_chunk` (default 4096) bytes, within the peer's credit,
//! reads the echo as it comes, checks every byte, then shuts the connection down (both
//! directions) and waits up to 1 s for the peer's RST.
//!
//! A VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue (a VM restored from a snapshot: the
//! host's side of every connection is gone) ends the connection: the client connects again
//! from the next local port and starts the echo over (`reset_seen=1` in the result line).
//!
//! Every packet is two descriptors (the 44-byte `virtio_vsock_hdr`, then the data), the layout
//! every device takes. The client advertises a 256 KiB receive buffer and consumes data at
//! once; it sends a CREDIT_UPDATE when a quarter of that was consumed since the last one it
//! told the peer about, and answers CREDIT_REQUESTs.

use core::fmt::Write;

use super::Ctx;
use crate::clock::{per_second, tsc_freq};
use crate::fail;
use crate::report::{Line, Outcome};
use crate::sys::{ms_to_ticks, rdtsc};
use crate::virtio::{self, Arena, Buf, Device, ID_VSOCK, Queue, Wait};

/// A virtio-vsock packet header (also `rawvsock.rs`'s, whose packets may lie in any field).
pub use kite_virtio_driver::vsock::Header as Hdr;
pub use kite_virtio_driver::vsock::{
    HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_BOTH, TYPE_STREAM,
};

pub const HDR: u64 = kite_virtio_driver::vsock::HDR_LEN as u64;
pub const DATA: u64 = 4096;
const RX_BUFS: usize = 32;
const TX_SLOTS: usize = 32;
const EVENT_BUFS: usize = 4;
const BUF_ALLOC: u32 = 256 << 10;
const LOCAL_PORT: u32 = 49152;
/// `virtio_vsock_event.id` of VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
const EVENT_TRANSPORT_RESET: u32 = 0;
/// How many transport resets one run takes before it gives up.
const MAX_RESETS: u64 = 3;
/// Time limit for each step (connecting, each packet, the echo).
const STEP_MS: u64 = 5000;

/// A header in a buffer of the arena, at its guest-physical (= identity-mapped) address.
pub trait HdrAt {
    /// Write it at `addr`.
    fn write(&self, addr: u64);
    /// Read one at `addr`.
    fn read(addr: u64) -> Self;
}

impl HdrAt for Hdr {
    fn write(&self, addr: u64) {
        let b = self.encode();
        // SAFETY: a header buffer of HDR bytes in arena RAM that the device does not own now.
        unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), addr as *mut u8, b.len()) };
    }

    fn read(addr: u64) -> Hdr {
        let mut b = [0u8; HDR as usize];
        // SAFETY: as for write; the device is done with it.
        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, b.as_mut_ptr(), b.len()) };
        Hdr::decode(&b)
    }
}

/// The pattern byte at stream offset `i` for `seed`.
fn stream_byte(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    (x >> 56) as u8 ^ (i as u8)
}

struct Vsock {
    dev: Device,
    rx: Queue,
    tx: Queue,
    event: Queue,
    /// Event buffers (8 bytes each) and which one each head is.
    event_bufs: [u64; EVENT_BUFS],
    event_of: [u8; virtio::MAX_QUEUE],
    /// A transport reset arrived (taken by the echo, which then connects again).
    reset: bool,
    resets: u64,
    /// Our port: LOCAL_PORT, one more after each transport reset.
    local_port: u32,
    /// Receive buffers: header address, data address.
    rx_bufs: [(u64, u64); RX_BUFS],
    rx_of: [u8; virtio::MAX_QUEUE],
    tx_bufs: [(u64, u64); TX_SLOTS],
    tx_free: [u8; TX_SLOTS],
    tx_free_len: usize,
    tx_of: [u8; virtio::MAX_QUEUE],
    guest_cid: u64,
    port: u32,
    /// Bytes consumed (our fwd_cnt) and the value last told to the peer.
    fwd_cnt: u32,
    fwd_told: u32,
    /// The peer's receive buffer and how much of what we sent it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    packets_tx: u64,
    packets_rx: u64,
}

impl Vsock {
    fn open(ctx: &mut Ctx, wait: Wait, port: u32) -> Result<Vsock, Line> {
        let entry = virtio::find(&ctx.cmdline, ID_VSOCK, 0)?;
        let ring = match virtio::ring_features(&ctx.cmdline) {
            Ok(f) => f,
            Err(e) => return fail!("{e}"),
        };
        let mut dev = Device::init(entry, ID_VSOCK, ring, wait)?;
        let guest_cid = dev.config_u64(0);
        let mut rx = dev.setup_queue(0, (2 * RX_BUFS) as u16, &mut ctx.pages)?;
        let tx = dev.setup_queue(1, (2 * TX_SLOTS) as u16, &mut ctx.pages)?;
        let mut event = dev.setup_queue(2, EVENT_BUFS as u16, &mut ctx.pages)?;
        let mut headers = Arena::new(
            &mut ctx.pages,
            (RX_BUFS + TX_SLOTS + EVENT_BUFS) as u64 * 64,
        )?;
        let mut data = Arena::new(&mut ctx.pages, (RX_BUFS + TX_SLOTS) as u64 * DATA)?;
        let mut rx_bufs = [(0, 0); RX_BUFS];
        for b in rx_bufs.iter_mut() {
            *b = (headers.take(HDR, 64)?, data.take(DATA, 4096)?);
        }
        let mut tx_bufs = [(0, 0); TX_SLOTS];
        let mut tx_free = [0u8; TX_SLOTS];
        for (i, b) in tx_bufs.iter_mut().enumerate() {
            *b = (headers.take(HDR, 64)?, data.take(DATA, 4096)?);
            tx_free[i] = i as u8;
        }
        let mut rx_of = [0u8; virtio::MAX_QUEUE];
        for (i, &(h, d)) in rx_bufs.iter().enumerate() {
            if rx.free() < 2 {
                break;
            }
            let head = rx.post(&[Buf::w(h, HDR as u32), Buf::w(d, DATA as u32)])?;
            rx_of[head as usize] = i as u8;
        }
        let mut event_bufs = [0u64; EVENT_BUFS];
        let mut event_of = [0u8; virtio::MAX_QUEUE];
        for (i, e) in event_bufs
            .iter_mut()
            .enumerate()
            .take(event.size.min(EVENT_BUFS as u16) as usize)
        {
            *e = headers.take(8, 8)?;
            let head = event.post(&[Buf::w(*e, 8)])?;
            event_of[head as usize] = i as u8;
        }
        dev.driver_ok()?;
        rx.kick();
        event.kick();
        let tx_slots = TX_SLOTS.min(tx.size as usize / 2);
        Ok(Vsock {
            dev,
            rx,
            tx,
            event,
            event_bufs,
            event_of,
            reset: false,
            resets: 0,
            local_port: LOCAL_PORT,
            rx_bufs,
            rx_of,
            tx_bufs,
            tx_free,
            tx_free_len: tx_slots,
            tx_of: [0; virtio::MAX_QUEUE],
            guest_cid,
            port,
            fwd_cnt: 0,
            fwd_told: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            packets_tx: 0,
            packets_rx: 0,
        })
    }

    /// Take the device's events; true if one was a transport reset (then the guest CID is read
    /// again, as the spec asks).
    fn poll_events(&mut self) -> Result<bool, Line> {
        let mut reset = false;
        while let Some((head, used)) = self.event.pop_used()? {
            let index = self.event_of[head as usize] as usize;
            let addr = self.event_bufs[index];
            // SAFETY: an 8-byte event buffer in arena RAM that the device is done with.
            let id = unsafe { (addr as *const u32).read_volatile() };
            reset |= used >= 4 && id == EVENT_TRANSPORT_RESET;
            let head = self.event.post(&[Buf::w(addr, 8)])?;
            self.event_of[head as usize] = index as u8;
            self.event.kick();
        }
        if reset {
            self.reset = true;
            self.resets += 1;
            self.guest_cid = self.dev.config_u64(0);
        }
        Ok(reset)
    }

    /// After a transport reset: a new connection from the next local port, from nothing.
    fn forget_connection(&mut self) {
        self.reset = false;
        self.local_port += 1;
        self.fwd_cnt = 0;
        self.fwd_told = 0;
        self.peer_buf_alloc = 0;
        self.peer_fwd_cnt = 0;
        self.tx_cnt = 0;
    }

    fn reclaim_tx(&mut self) -> Result<(), Line> {
        while let Some((head, _)) = self.tx.pop_used()? {
            self.tx_free[self.tx_free_len] = self.tx_of[head as usize];
            self.tx_free_len += 1;
        }
        Ok(())
    }

    /// Sends a packet with `op` and `data` (the payload is filled by `fill`).
    fn send(
        &mut self,
        op: u16,
        flags: u32,
        len: u32,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), Line> {
        self.reclaim_tx()?;
        if self.tx_free_len == 0 {
            let deadline = rdtsc() + ms_to_ticks(STEP_MS);
            let (head, _) = self.tx.wait_used(deadline, "a vsock transmit buffer")?;
            self.tx_free[self.tx_free_len] = self.tx_of[head as usize];
            self.tx_free_len += 1;
        }
        self.tx_free_len -= 1;
        let slot = self.tx_free[self.tx_free_len];
        let (h, d) = self.tx_bufs[slot as usize];
        Hdr {
            src_cid: self.guest_cid,
            dst_cid: HOST_CID,
            src_port: self.local_port,
            dst_port: self.port,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
        .write(h);
        let head = if len > 0 {
            // SAFETY: a free transmit data buffer of DATA bytes.
            fill(unsafe { core::slice::from_raw_parts_mut(d as *mut u8, len as usize) });
            self.tx.post(&[Buf::r(h, HDR as u32), Buf::r(d, len)])?
        } else {
            self.tx.post(&[Buf::r(h, HDR as u32)])?
        };
        self.tx_of[head as usize] = slot;
        self.tx.kick();
        self.fwd_told = self.fwd_cnt;
        self.packets_tx += 1;
        Ok(())
    }

    /// The next packet for our connection: its header and (a copy of) its data, or None at
    /// the deadline or at a transport reset (`self.reset`). Packets for other ports are
    /// dropped (counted as received).
    fn recv(&mut self, deadline: u64, data: &mut [u8; DATA as usize]) -> Result<Option<Hdr>, Line> {
        loop {
            // The event queue is looked at every 20 ms while waiting.
            if self.poll_events()? {
                return Ok(None);
            }
            let slice = deadline.min(rdtsc() + ms_to_ticks(20));
            let (head, used) = match self.rx.wait_used(slice, "a vsock packet") {
                Ok(done) => done,
                Err(virtio::Error::Timeout(_)) if rdtsc() < deadline => continue,
                Err(virtio::Error::Timeout(_)) => {
                    self.poll_events()?;
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            };
            let index = self.rx_of[head as usize] as usize;
            let (h, d) = self.rx_bufs[index];
            let hdr = Hdr::read(h);
            let len = (hdr.len as u64)
                .min(DATA)
                .min((used as u64).saturating_sub(HDR));
            // SAFETY: the device is done with the data buffer; copied before it is reposted.
            unsafe {
                core::ptr::copy_nonoverlapping(d as *const u8, data.as_mut_ptr(), len as usize)
            };
            let head = self
                .rx
                .post(&[Buf::w(h, HDR as u32), Buf::w(d, DATA as u32)])?;
            self.rx_of[head as usize] = index as u8;
            self.rx.kick();
            self.packets_rx += 1;
            if hdr.src_cid != HOST_CID
                || hdr.src_port != self.port
                || hdr.dst_port != self.local_port
                || hdr.dst_cid != self.guest_cid
            {
                continue;
            }
            if (hdr.len as u64) != len {
                return fail!(
                    "packet op {} says {} bytes but {used} bytes (with the header) arrived",
                    hdr.op,
                    hdr.len
                );
            }
            self.peer_buf_alloc = hdr.buf_alloc;
            self.peer_fwd_cnt = hdr.fwd_cnt;
            return Ok(Some(hdr));
        }
    }

    /// How many more bytes the peer can take.
    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

pub fn virtio_vsock(ctx: &mut Ctx) -> Outcome {
    let wait = match Wait::from_cmdline(&ctx.cmdline) {
        Ok(w) => w,
        Err(e) => return fail!("{e}"),
    };
    let port = ctx.cmdline.get_u64("kite_vsock_port").unwrap_or(1234);
    let total = match ctx.cmdline.get("kite_vsock_bytes") {
        None => 256 << 10,
        Some(v) => match crate::cmdline::parse_number(v) {
            Some(n) if n > 0 && n < 1 << 31 => n,
            _ => return fail!("kite_vsock_bytes must be 1 to 2G-1"),
        },
    };
    let chunk = ctx.cmdline.get_u64("kite_vsock_chunk").unwrap_or(DATA);
    let seed = ctx.cmdline.get_u64("kite_seed").unwrap_or(1);
    if port > u32::MAX as u64 {
        return fail!("kite_vsock_port is too large");
    }
    if !(1..=DATA).contains(&chunk) {
        return fail!("kite_vsock_chunk must be 1 to {DATA}");
    }
    let freq = tsc_freq();
    let mut v = Vsock::open(ctx, wait, port as u32)?;
    let mut data = [0u8; DATA as usize];
    let (sent, echoed, cycles, connect_cycles) = loop {
        if let Some(done) = echo(&mut v, total, chunk, seed, &mut data)? {
            break done;
        }
        // A transport reset: the connection is gone; connect again and start over.
        if v.resets > MAX_RESETS {
            return fail!("{} transport resets", v.resets);
        }
        v.forget_connection();
    };

    // Close: SHUTDOWN both ways, wait for the peer's RST.
    v.send(OP_SHUTDOWN, SHUTDOWN_BOTH, 0, |_| {})?;
    let close_deadline = rdtsc() + ms_to_ticks(1000);
    let mut closed = 0;
    while let Some(h) = v.recv(close_deadline, &mut data)? {
        if h.op == OP_RST {
            closed = 1;
            break;
        }
    }
    v.reclaim_tx()?;
    let irqs = v.dev.irqs();
    let mut line = Line::new();
    let _ = write!(
        line,
        "bytes={sent} echoed={echoed} bytes_per_sec={} cycles={cycles} connect_cycles={connect_cycles} guest_cid={} port={port} chunk={chunk} packets_tx={} packets_rx={} closed={closed} reset_seen={} tsc_hz={} tsc_src={} wait={} irqs={irqs} event_idx={}",
        per_second(echoed, cycles, freq.hz),
        v.guest_cid,
        v.packets_tx,
        v.packets_rx,
        u8::from(v.resets > 0),
        freq.hz,
        freq.source,
        wait.name(),
        v.dev.event_idx()
    );
    v.dev.shutdown();
    Ok(line)
}

/// Connect and echo `total` bytes: (sent, echoed, cycles, connect cycles), or None if a
/// transport reset ended the connection.
fn echo(
    v: &mut Vsock,
    total: u64,
    chunk: u64,
    seed: u64,
    data: &mut [u8; DATA as usize],
) -> Result<Option<(u64, u64, u64, u64)>, Line> {
    let port = v.port;
    // Connect.
    let connect_start = rdtsc();
    v.send(OP_REQUEST, 0, 0, |_| {})?;
    let Some(h) = v.recv(rdtsc() + ms_to_ticks(STEP_MS), data)? else {
        if v.reset {
            return Ok(None);
        }
        return fail!("no answer to a connection request to CID 2 port {port} within {STEP_MS} ms");
    };
    match h.op {
        OP_RESPONSE => {}
        OP_RST if v.poll_events()? || v.reset => return Ok(None),
        OP_RST => return fail!("connection to CID 2 port {port} refused (RST)"),
        op => return fail!("unexpected op {op} while connecting"),
    }
    let connect_cycles = rdtsc().wrapping_sub(connect_start);

    // Send everything, reading the echo as it comes.
    let start = rdtsc();
    let mut sent = 0u64;
    let mut echoed = 0u64;
    let mut credit_asked = false;
    while echoed < total {
        // Send while there is data, credit and a free buffer.
        while sent < total {
            v.reclaim_tx()?;
            let credit = v.credit() as u64;
            if credit == 0 {
                if !credit_asked {
                    v.send(OP_CREDIT_REQUEST, 0, 0, |_| {})?;
                    credit_asked = true;
                }
                break;
            }
            if v.tx_free_len == 0 {
                break;
            }
            let n = (total - sent).min(chunk).min(credit);
            let at = sent;
            v.send(OP_RW, 0, n as u32, |buf| {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = stream_byte(seed, at + i as u64);
                }
            })?;
            v.tx_cnt = v.tx_cnt.wrapping_add(n as u32);
            sent += n;
        }
        // Then wait for something to come back.
        let Some(h) = v.recv(rdtsc() + ms_to_ticks(STEP_MS), data)? else {
            if v.reset {
                return Ok(None);
            }
            return fail!(
                "stalled: sent {sent} of {total} bytes, {echoed} echoed, peer credit {} (buf_alloc {} fwd_cnt {})",
                v.credit(),
                v.peer_buf_alloc,
                v.peer_fwd_cnt
            );
        };
        match h.op {
            OP_RW => {
                let n = h.len as u64;
                if echoed + n > sent {
                    return fail!("{} bytes echoed, only {sent} sent", echoed + n);
                }
                if let Some(i) = (0..n).find(|&i| data[i as usize] != stream_byte(seed, echoed + i))
                {
                    return fail!("echoed byte {} differs", echoed + i);
                }
                echoed += n;
                v.fwd_cnt = v.fwd_cnt.wrapping_add(n as u32);
                if v.fwd_cnt.wrapping_sub(v.fwd_told) >= BUF_ALLOC / 4 {
                    v.send(OP_CREDIT_UPDATE, 0, 0, |_| {})?;
                }
            }
            OP_CREDIT_UPDATE => credit_asked = false,
            OP_CREDIT_REQUEST => v.send(OP_CREDIT_UPDATE, 0, 0, |_| {})?,
            // After a transport reset the host answers the old connection's packets with RST.
            OP_RST if v.poll_events()? || v.reset => return Ok(None),
            OP_RST => {
                return fail!("peer reset the connection after {echoed} of {total} bytes echoed");
            }
            OP_SHUTDOWN => {
                return fail!(
                    "peer shut the connection down (flags {}) after {echoed} of {total} bytes echoed",
                    h.flags
                );
            }
            op => return fail!("unexpected op {op} on the connection"),
        }
    }
    Ok(Some((sent, echoed, rdtsc().wrapping_sub(start), connect_cycles)))
}
