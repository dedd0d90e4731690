//! A bare virtio-vsock driver for the scenarios that misbehave on purpose (`hostile-vsock`,
//! `peers`): every header field is the caller's, so a packet may lie about its length, its
//! credit or its source; buffers may be anything. Polled, no interrupts. Receive buffers are a
//! 44-byte header plus 4 KiB of data, reposted as soon as a packet is read.

use super::Ctx;
use crate::fail;
use crate::report::Line;
use crate::sys::{ms_to_ticks, rdtsc};
use crate::virtio::{self, Arena, Buf, Device, ID_VSOCK, Queue, Wait};

pub use super::vsock::{
    DATA, HDR, HOST_CID, Hdr, HdrAt, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_BOTH, TYPE_STREAM,
};

pub const RX_BUFS: usize = 16;

pub struct RawVsock {
    pub dev: Device,
    rx: Queue,
    tx: Queue,
    _event: Queue,
    rx_bufs: [(u64, u64); RX_BUFS],
    rx_of: [u8; virtio::MAX_QUEUE],
    /// Receive buffers the driver keeps back (not reposted): a guest that stops reading.
    pub held: usize,
    tx_hdr: u64,
    pub tx_data: u64,
    pub guest_cid: u64,
    /// The header of the last packet received.
    pub last: Hdr,
}

/// A packet that arrived: its header and how many bytes the device wrote.
pub struct Packet {
    pub hdr: Hdr,
    /// Where its data is (valid until the next `recv`).
    pub data: u64,
}

impl RawVsock {
    pub fn open(ctx: &mut Ctx) -> Result<RawVsock, Line> {
        let entry = virtio::find(&ctx.cmdline, ID_VSOCK, 0)?;
        let dev = Device::init(entry, ID_VSOCK, 0, Wait::Poll)?;
        let guest_cid = dev.config_u64(0);
        let mut rx = dev.setup_queue(0, (2 * RX_BUFS) as u16, &mut ctx.pages)?;
        let tx = dev.setup_queue(1, 8, &mut ctx.pages)?;
        let mut event = dev.setup_queue(2, 4, &mut ctx.pages)?;
        let mut arena = Arena::new(&mut ctx.pages, (RX_BUFS as u64 + 1) * (DATA + 4096) + 4096)?;
        let mut rx_bufs = [(0, 0); RX_BUFS];
        let mut rx_of = [0u8; virtio::MAX_QUEUE];
        for (i, b) in rx_bufs.iter_mut().enumerate() {
            *b = (arena.take(HDR, 64)?, arena.take(DATA, 4096)?);
            let head = rx.post(&[Buf::w(b.0, HDR as u32), Buf::w(b.1, DATA as u32)])?;
            rx_of[head as usize] = i as u8;
        }
        for _ in 0..event.size.min(4) {
            let e = arena.take(8, 8)?;
            event.post(&[Buf::w(e, 8)])?;
        }
        let tx_hdr = arena.take(HDR, 64)?;
        let tx_data = arena.take(DATA, 4096)?;
        let mut dev = dev;
        dev.driver_ok()?;
        rx.kick();
        event.kick();
        Ok(RawVsock {
            dev,
            rx,
            tx,
            _event: event,
            rx_bufs,
            rx_of,
            held: 0,
            tx_hdr,
            tx_data,
            guest_cid,
            last: Hdr::default(),
        })
    }

    /// A header from us to host port `dst` from our port `src`, with a 256 KiB buffer.
    pub fn hdr(&self, src: u32, dst: u32, op: u16, len: u32) -> Hdr {
        Hdr {
            src_cid: self.guest_cid,
            dst_cid: HOST_CID,
            src_port: src,
            dst_port: dst,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 256 << 10,
            fwd_cnt: 0,
        }
    }

    /// Sends `hdr` followed by `bufs` (device-readable) and waits until the device took it.
    pub fn send(&mut self, hdr: Hdr, bufs: &[Buf]) -> Result<(), Line> {
        hdr.write(self.tx_hdr);
        let mut chain = [Buf::r(0, 0); 8];
        chain[0] = Buf::r(self.tx_hdr, HDR as u32);
        let n = bufs.len().min(7);
        chain[1..=n].copy_from_slice(&bufs[..n]);
        self.tx.post(&chain[..=n])?;
        self.tx.kick();
        self.tx
            .wait_used(rdtsc() + ms_to_ticks(5000), "a vsock transmit buffer")?;
        Ok(())
    }

    /// Sends `hdr` with `len` bytes of `fill`'s data from the driver's own buffer.
    pub fn send_data(
        &mut self,
        hdr: Hdr,
        len: u32,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), Line> {
        let len = len.min(DATA as u32);
        // SAFETY: the transmit data buffer, which the device has given back.
        fill(unsafe { core::slice::from_raw_parts_mut(self.tx_data as *mut u8, len as usize) });
        self.send(hdr, &[Buf::r(self.tx_data, len)])
    }

    /// The next packet within `ms` milliseconds, or None. With `keep`, its buffer is not
    /// reposted (the guest stops giving the device room).
    pub fn recv(&mut self, ms: u64, keep: bool) -> Result<Option<Packet>, Line> {
        let (head, used) = match self
            .rx
            .wait_used(rdtsc() + ms_to_ticks(ms), "a vsock packet")
        {
            Ok(done) => done,
            Err(virtio::Error::Timeout(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let index = self.rx_of[head as usize] as usize;
        let (h, d) = self.rx_bufs[index];
        let hdr = Hdr::read(h);
        self.last = hdr;
        if used as u64 > HDR + DATA {
            return fail!(
                "device wrote {used} bytes into a {}-byte receive buffer",
                HDR + DATA
            );
        }
        if hdr.op == OP_RW && hdr.len as u64 + HDR != used as u64 {
            return fail!(
                "RW packet says {} bytes, {used} written with its header",
                hdr.len
            );
        }
        if keep {
            self.held += 1;
        } else {
            let head = self
                .rx
                .post(&[Buf::w(h, HDR as u32), Buf::w(d, DATA as u32)])?;
            self.rx_of[head as usize] = index as u8;
            self.rx.kick();
        }
        Ok(Some(Packet { hdr, data: d }))
    }

    /// The next packet between host port `host` and our port `local` within `ms`, skipping
    /// others (late answers to earlier cases).
    pub fn recv_on(&mut self, local: u32, host: u32, ms: u64) -> Result<Option<Hdr>, Line> {
        let deadline = rdtsc() + ms_to_ticks(ms);
        loop {
            let now = rdtsc();
            if now >= deadline {
                return Ok(None);
            }
            let left = (deadline - now) / ms_to_ticks(1).max(1) + 1;
            match self.recv(left, false)? {
                None => return Ok(None),
                Some(p) if p.hdr.dst_port == local && p.hdr.src_port == host => {
                    return Ok(Some(p.hdr));
                }
                Some(_) => {}
            }
        }
    }

    /// REQUEST from `local` to host port `host`; true if the answer is RESPONSE.
    pub fn connect(&mut self, local: u32, host: u32) -> Result<bool, Line> {
        self.send(self.hdr(local, host, OP_REQUEST, 0), &[])?;
        match self.recv_on(local, host, 5000)? {
            Some(h) if h.op == OP_RESPONSE => Ok(true),
            Some(h) if h.op == OP_RST => Ok(false),
            Some(h) => fail!("answer to REQUEST {local}->{host} was op {}", h.op),
            None => fail!("no answer to REQUEST {local}->{host} within 5 s"),
        }
    }
}
