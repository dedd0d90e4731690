//! `virtio-net`: the first virtio network device (DeviceID 1), one receive queue (0) and one
//! transmit queue (1), no offloads (only VIRTIO_NET_F_MAC is taken), the 12-byte
//! `virtio_net_hdr_v1` in front of every frame.
//!
//! The guest is `kite_net_ip` (default 10.0.2.15) and talks to `kite_net_peer` (default
//! 10.0.2.2): it resolves the peer's MAC with ARP (requests every 200 ms for up to 5 s),
//! then sends `kite_n` (default 256) UDP datagrams from port 40000 to the peer's
//! `kite_net_port` (default 7777), at most `kite_net_window` (default 8) unanswered at a
//! time, and expects each one back, in order and intact, from that port (a UDP echo
//! server). The payload sizes cycle through 18, 64, 200, 512, 1000 and 1472 bytes (1472:
//! a 1514-byte frame), or are all `kite_net_bytes`. The guest answers ARP requests for its
//! own address and ignores every other frame.

use core::fmt::Write;

use super::Ctx;
use crate::clock::{per_second, tsc_freq};
use crate::report::{Line, Outcome};
use crate::sys::{ms_to_ticks, rdtsc};
use crate::virtio::{self, Arena, Buf, Device, ID_NET, Queue, Wait};
use crate::{fail, ok};

const F_MAC: u32 = 5;
const HDR: usize = 12;
const BUF: u64 = 2048;
const RX_BUFS: usize = 64;
const MAX_WINDOW: usize = 64;
const TX_SLOTS: usize = MAX_WINDOW + 4;
const ETH_ARP: u16 = 0x0806;
const ETH_IP: u16 = 0x0800;
const GUEST_PORT: u16 = 40000;
const SIZES: [usize; 6] = [18, 64, 200, 512, 1000, 1472];
const MAX_PAYLOAD: usize = 1472;
/// Time limit for each reply.
const REPLY_MS: u64 = 2000;
const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

struct Net {
    dev: Device,
    rx: Queue,
    tx: Queue,
    rx_bufs: [u64; RX_BUFS],
    /// rx head descriptor -> buffer index.
    rx_of: [u8; virtio::MAX_QUEUE],
    tx_bufs: [u64; TX_SLOTS],
    tx_free: [u8; TX_SLOTS],
    tx_free_len: usize,
    tx_of: [u8; virtio::MAX_QUEUE],
    mac: [u8; 6],
    ip: [u8; 4],
    /// Frames that were neither ours nor ARP for us.
    ignored: u64,
    arp_answered: u64,
}

impl Net {
    fn open(ctx: &mut Ctx, wait: Wait, ip: [u8; 4]) -> Result<Net, Line> {
        let entry = virtio::find(&ctx.cmdline, ID_NET, 0)?;
        let ring = match virtio::ring_features(&ctx.cmdline) {
            Ok(f) => f,
            Err(e) => return fail!("{e}"),
        };
        let mut dev = Device::init(entry, ID_NET, (1 << F_MAC) | ring, wait)?;
        let mut mac = DEFAULT_MAC;
        if dev.has(F_MAC) {
            for (i, b) in mac.iter_mut().enumerate() {
                *b = dev.config_u8(i as u64);
            }
        }
        let mut rx = dev.setup_queue(0, RX_BUFS as u16, &mut ctx.pages)?;
        let tx = dev.setup_queue(1, TX_SLOTS as u16 * 2, &mut ctx.pages)?;
        let mut arena = Arena::new(&mut ctx.pages, (RX_BUFS + TX_SLOTS) as u64 * BUF)?;
        let mut rx_bufs = [0u64; RX_BUFS];
        for b in rx_bufs.iter_mut() {
            *b = arena.take(BUF, BUF)?;
        }
        let mut tx_bufs = [0u64; TX_SLOTS];
        let mut tx_free = [0u8; TX_SLOTS];
        for (i, b) in tx_bufs.iter_mut().enumerate() {
            *b = arena.take(BUF, BUF)?;
            tx_free[i] = i as u8;
        }
        let mut rx_of = [0u8; virtio::MAX_QUEUE];
        let posted = RX_BUFS.min(rx.size as usize);
        for (i, &b) in rx_bufs.iter().enumerate().take(posted) {
            let head = rx.post(&[Buf::w(b, BUF as u32)])?;
            rx_of[head as usize] = i as u8;
        }
        dev.driver_ok()?;
        rx.kick();
        let tx_slots = TX_SLOTS.min(tx.size as usize);
        Ok(Net {
            dev,
            rx,
            tx,
            rx_bufs,
            rx_of,
            tx_bufs,
            tx_free,
            tx_free_len: tx_slots,
            tx_of: [0; virtio::MAX_QUEUE],
            mac,
            ip,
            ignored: 0,
            arp_answered: 0,
        })
    }

    /// Takes back transmit buffers the device is done with.
    fn reclaim_tx(&mut self) -> Result<(), Line> {
        while let Some((head, _)) = self.tx.pop_used()? {
            self.tx_free[self.tx_free_len] = self.tx_of[head as usize];
            self.tx_free_len += 1;
        }
        Ok(())
    }

    /// Sends the frame `build` writes (it gets the frame buffer, returns the frame length).
    fn send(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> Result<usize, Line> {
        self.reclaim_tx()?;
        if self.tx_free_len == 0 {
            let deadline = rdtsc() + ms_to_ticks(REPLY_MS);
            let (head, _) = self.tx.wait_used(deadline, "a transmit buffer")?;
            self.tx_free[self.tx_free_len] = self.tx_of[head as usize];
            self.tx_free_len += 1;
        }
        self.tx_free_len -= 1;
        let slot = self.tx_free[self.tx_free_len];
        let addr = self.tx_bufs[slot as usize];
        // SAFETY: a free transmit buffer of BUF bytes in arena RAM.
        let buf = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, BUF as usize) };
        buf[..HDR].fill(0);
        let len = build(&mut buf[HDR..]);
        let head = self.tx.post(&[Buf::r(addr, (HDR + len) as u32)])?;
        self.tx_of[head as usize] = slot;
        self.tx.kick();
        Ok(len)
    }

    /// The next received frame (without the virtio-net header), handed to `f`; the buffer
    /// goes back on the receive queue afterwards. None at the deadline.
    fn recv<T>(
        &mut self,
        deadline: u64,
        f: impl FnOnce(&mut Net, &[u8]) -> T,
    ) -> Result<Option<T>, Line> {
        let (head, len) = match self.rx.wait_used(deadline, "a frame") {
            Ok(done) => done,
            Err(virtio::Error::Timeout(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let index = self.rx_of[head as usize] as usize;
        let addr = self.rx_bufs[index];
        let len = (len as usize).min(BUF as usize);
        // SAFETY: the device is done with this receive buffer; we copy the frame out of it
        // before it goes back on the queue (the closure sees a copy).
        let mut copy = [0u8; BUF as usize];
        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, copy.as_mut_ptr(), len) };
        let head = self.rx.post(&[Buf::w(addr, BUF as u32)])?;
        self.rx_of[head as usize] = index as u8;
        self.rx.kick();
        let frame = if len >= HDR { &copy[HDR..len] } else { &[][..] };
        Ok(Some(f(self, frame)))
    }

    /// Answers an ARP request for our address; returns the sender (IP, MAC) of an ARP reply.
    fn handle_arp(&mut self, frame: &[u8]) -> Result<Option<Sender>, Line> {
        if frame.len() < 42 || be16(frame, 12) != ETH_ARP || be16(frame, 14) != 1 {
            return Ok(None);
        }
        let oper = be16(frame, 20);
        let sha: [u8; 6] = frame[22..28].try_into().unwrap();
        let spa: [u8; 4] = frame[28..32].try_into().unwrap();
        let tpa: [u8; 4] = frame[38..42].try_into().unwrap();
        if oper == 1 && tpa == self.ip {
            let (mac, ip) = (self.mac, self.ip);
            self.send(|b| arp(b, 2, mac, ip, sha, spa, sha))?;
            self.arp_answered += 1;
            return Ok(None);
        }
        if oper == 2 {
            return Ok(Some((spa, sha)));
        }
        Ok(None)
    }
}

/// An ARP sender: IPv4 and MAC address.
type Sender = ([u8; 4], [u8; 6]);

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// An ARP frame (padded to 60 bytes); returns its length.
fn arp(
    b: &mut [u8],
    oper: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
    dst: [u8; 6],
) -> usize {
    b[..60].fill(0);
    b[0..6].copy_from_slice(&dst);
    b[6..12].copy_from_slice(&sha);
    put16(b, 12, ETH_ARP);
    put16(b, 14, 1); // Ethernet
    put16(b, 16, ETH_IP);
    b[18] = 6;
    b[19] = 4;
    put16(b, 20, oper);
    b[22..28].copy_from_slice(&sha);
    b[28..32].copy_from_slice(&spa);
    b[32..38].copy_from_slice(&tha);
    b[38..42].copy_from_slice(&tpa);
    60
}

/// One's-complement sum of 16-bit big-endian words (odd byte padded with zero).
fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The payload byte `i` of datagram `seq`.
fn payload_byte(seq: u32, i: usize) -> u8 {
    let x = seq.wrapping_mul(0x9e37_79b9) ^ (i as u32).wrapping_mul(0x85eb_ca6b);
    (x ^ (x >> 13) ^ (x >> 24)) as u8
}

struct Udp {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    src_port: u16,
    dst_port: u16,
}

/// An Ethernet + IPv4 + UDP frame carrying datagram `seq` of `size` payload bytes (the first
/// four are `seq`); returns the frame length.
fn udp_frame(b: &mut [u8], u: &Udp, seq: u32, size: usize) -> usize {
    b[0..6].copy_from_slice(&u.dst_mac);
    b[6..12].copy_from_slice(&u.src_mac);
    put16(b, 12, ETH_IP);
    let ip = &mut b[14..34];
    ip.fill(0);
    ip[0] = 0x45;
    put16(ip, 2, (20 + 8 + size) as u16);
    put16(ip, 4, seq as u16);
    put16(ip, 6, 0x4000); // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&u.src_ip);
    ip[16..20].copy_from_slice(&u.dst_ip);
    let c = csum_fold(csum_add(0, ip));
    put16(ip, 10, c);
    let udp = &mut b[34..42];
    put16(udp, 0, u.src_port);
    put16(udp, 2, u.dst_port);
    put16(udp, 4, (8 + size) as u16);
    put16(udp, 6, 0); // no checksum (allowed for IPv4)
    let data = &mut b[42..42 + size];
    data[..4].copy_from_slice(&seq.to_le_bytes());
    for (i, d) in data.iter_mut().enumerate().skip(4) {
        *d = payload_byte(seq, i);
    }
    let len = 42 + size;
    if len < 60 {
        b[len..60].fill(0);
        return 60;
    }
    len
}

/// What a received frame was.
#[allow(clippy::large_enum_variant)]
enum Rx {
    /// The datagram came back intact.
    Echo,
    /// A reply from the echo port that is wrong: the reason.
    Bad(Line),
    Other,
}

/// Checks a frame against the echo of datagram `expect` (of `size` bytes) from `u`'s peer.
fn check_echo(frame: &[u8], u: &Udp, expect: u32, size: usize) -> Rx {
    if frame.len() < 42 || be16(frame, 12) != ETH_IP || frame[14] != 0x45 || frame[23] != 17 {
        return Rx::Other;
    }
    let ip = &frame[14..34];
    let udp = &frame[34..42];
    if ip[12..16] != u.dst_ip
        || ip[16..20] != u.src_ip
        || be16(udp, 0) != u.dst_port
        || be16(udp, 2) != u.src_port
    {
        return Rx::Other;
    }
    let mut why = Line::new();
    if frame[0..6] != u.src_mac || frame[6..12] != u.dst_mac {
        let _ = write!(why, "echo of datagram {expect}: wrong MAC addresses");
        return Rx::Bad(why);
    }
    if csum_fold(csum_add(0, ip)) != 0 {
        let _ = write!(why, "echo of datagram {expect}: bad IPv4 header checksum");
        return Rx::Bad(why);
    }
    let ulen = be16(udp, 4) as usize;
    if ulen < 8 || 34 + ulen > frame.len() || be16(ip, 2) as usize != 20 + ulen {
        let _ = write!(
            why,
            "echo of datagram {expect}: bad lengths (UDP {ulen}, frame {})",
            frame.len()
        );
        return Rx::Bad(why);
    }
    let data = &frame[42..34 + ulen];
    let ucsum = be16(udp, 6);
    if ucsum != 0 {
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&ip[12..16]);
        pseudo[4..8].copy_from_slice(&ip[16..20]);
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&(ulen as u16).to_be_bytes());
        let sum = csum_add(csum_add(0, &pseudo), &frame[34..34 + ulen]);
        if csum_fold(sum) != 0 {
            let _ = write!(why, "echo of datagram {expect}: bad UDP checksum");
            return Rx::Bad(why);
        }
    }
    if data.len() < 4 {
        let _ = write!(why, "echo of {} bytes: too short", data.len());
        return Rx::Bad(why);
    }
    let seq = u32::from_le_bytes(data[..4].try_into().unwrap());
    if seq != expect {
        let _ = write!(why, "got the echo of datagram {seq}, expected {expect}");
        return Rx::Bad(why);
    }
    if data.len() != size {
        let _ = write!(
            why,
            "echo of datagram {seq} has {} bytes, sent {size}",
            data.len()
        );
        return Rx::Bad(why);
    }
    if let Some(i) = (4..size).find(|&i| data[i] != payload_byte(seq, i)) {
        let _ = write!(why, "echo of datagram {seq} differs at payload byte {i}");
        return Rx::Bad(why);
    }
    Rx::Echo
}

fn parse_ip(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split(|&c| c == b'.');
    for o in out.iter_mut() {
        let p = parts.next()?;
        let v = crate::cmdline::parse_number(p)?;
        if v > 255 || p.is_empty() || p.len() > 3 {
            return None;
        }
        *o = v as u8;
    }
    parts.next().is_none().then_some(out)
}

fn ip_arg(ctx: &Ctx, key: &'static str, default: [u8; 4]) -> Result<[u8; 4], Line> {
    match ctx.cmdline.get(key) {
        None => Ok(default),
        Some(v) => parse_ip(v).map_or_else(|| fail!("{key} is not an IPv4 address"), Ok),
    }
}

struct Mac([u8; 6]);

impl core::fmt::Display for Mac {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

pub fn virtio_net(ctx: &mut Ctx) -> Outcome {
    let wait = match Wait::from_cmdline(&ctx.cmdline) {
        Ok(w) => w,
        Err(e) => return fail!("{e}"),
    };
    let ip = ip_arg(ctx, "kite_net_ip", [10, 0, 2, 15])?;
    let peer = ip_arg(ctx, "kite_net_peer", [10, 0, 2, 2])?;
    let port = ctx.cmdline.get_u64("kite_net_port").unwrap_or(7777);
    let frames = ctx.n(256);
    let window = ctx.cmdline.get_u64("kite_net_window").unwrap_or(8);
    let fixed = ctx.cmdline.get_u64("kite_net_bytes");
    if !(1..=65535).contains(&port) {
        return fail!("kite_net_port must be 1 to 65535");
    }
    if !(1..=MAX_WINDOW as u64).contains(&window) {
        return fail!("kite_net_window must be 1 to {MAX_WINDOW}");
    }
    if frames == 0 || frames > u32::MAX as u64 {
        return fail!("kite_n must be at least 1");
    }
    if let Some(n) = fixed
        && !(4..=MAX_PAYLOAD as u64).contains(&n)
    {
        return fail!("kite_net_bytes must be 4 to {MAX_PAYLOAD}");
    }
    let size_of = |seq: u32| match fixed {
        Some(n) => n as usize,
        None => SIZES[seq as usize % SIZES.len()],
    };
    let freq = tsc_freq();
    let mut net = Net::open(ctx, wait, ip)?;

    // Resolve the peer.
    let arp_start = rdtsc();
    let give_up = arp_start + ms_to_ticks(5000);
    let mut peer_mac = None;
    let mut requests = 0u64;
    while peer_mac.is_none() {
        if rdtsc() >= give_up {
            return fail!(
                "no ARP reply for {}.{}.{}.{} within 5 s ({requests} requests, {} other frames)",
                peer[0],
                peer[1],
                peer[2],
                peer[3],
                net.ignored
            );
        }
        let mac = net.mac;
        net.send(|b| arp(b, 1, mac, ip, [0; 6], peer, [0xff; 6]))?;
        requests += 1;
        let retry = rdtsc() + ms_to_ticks(200);
        while peer_mac.is_none() {
            let got = net.recv(retry, |n, frame| n.handle_arp(frame))?;
            match got {
                None => break,
                Some(Ok(Some((spa, sha)))) if spa == peer => peer_mac = Some(sha),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
            }
        }
    }
    let peer_mac = peer_mac.unwrap_or_default();
    let arp_cycles = rdtsc().wrapping_sub(arp_start);

    let udp = Udp {
        src_mac: net.mac,
        dst_mac: peer_mac,
        src_ip: ip,
        dst_ip: peer,
        src_port: GUEST_PORT,
        dst_port: port as u16,
    };
    let total = frames as u32;
    let mut sent = 0u32;
    let mut echoed = 0u32;
    let mut bytes = 0u64;
    let start = rdtsc();
    while echoed < total {
        while sent < total && sent - echoed < window as u32 {
            let size = size_of(sent);
            let seq = sent;
            bytes += net.send(|b| udp_frame(b, &udp, seq, size))? as u64;
            sent += 1;
        }
        let deadline = rdtsc() + ms_to_ticks(REPLY_MS);
        let expect = echoed;
        let size = size_of(expect);
        let got = net.recv(deadline, |n, frame| {
            let len = frame.len();
            match check_echo(frame, &udp, expect, size) {
                Rx::Other => {
                    if let Err(e) = n.handle_arp(frame) {
                        return (Rx::Bad(e), len);
                    }
                    n.ignored += 1;
                    (Rx::Other, len)
                }
                r => (r, len),
            }
        })?;
        match got {
            None => {
                return fail!(
                    "no echo of datagram {expect} within {REPLY_MS} ms ({echoed} of {total} echoed, {} other frames)",
                    net.ignored
                );
            }
            Some((Rx::Bad(why), _)) => return Err(why),
            Some((Rx::Echo, len)) => {
                bytes += len as u64;
                echoed += 1;
            }
            Some((Rx::Other, _)) => {}
        }
    }
    let cycles = rdtsc().wrapping_sub(start);
    net.reclaim_tx()?;
    let irqs = net.dev.irqs();
    let event_idx = net.dev.event_idx();
    let ignored = net.ignored;
    let arp_answered = net.arp_answered;
    let mac = Mac(net.mac);
    net.dev.shutdown();
    ok!(
        "frames={echoed} frames_per_sec={} bytes_per_sec={} bytes={bytes} cycles={cycles} window={window} arp_cycles={arp_cycles} mac={mac} peer_mac={} other_frames={ignored} arp_answered={arp_answered} tsc_hz={} tsc_src={} wait={} irqs={irqs} event_idx={event_idx}",
        per_second(echoed as u64, cycles, freq.hz),
        per_second(bytes, cycles, freq.hz),
        Mac(peer_mac),
        freq.hz,
        freq.source,
        wait.name()
    )
}
