//! One vsock stream connection between a guest port and a host Unix stream, with the credit
//! accounting of virtio 1.2, section 5.10.6.3: each side advertises the buffer it has for the
//! connection (`buf_alloc`) and how much it has taken out of it (`fwd_cnt`), and the other side
//! never has more than that buffer's worth of data in flight.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{HOST_CID, Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use crate::devices::virtio::chain::Bufs;
use crate::devices::virtio::iov::{IOV_MAX, iovecs};
use crate::memory::GuestMem;

/// The buffer Kite advertises per connection: data from the guest waiting for the host.
/// Firecracker's size. It also bounds what a streaming guest has in flight on the way back:
/// with 64 KiB that fits in the receive buffers a driver keeps posted (the test guest's 32 of
/// 4 KiB), so the device does not find the receive ring empty and ask the driver to notify
/// each buffer it posts again. With 256 KiB it did, and the 4 MiB echo paid one exit per
/// packet (1.2-1.3x Firecracker's time; 0.74-0.92x with 64 KiB, `kite bench --peer`).
pub const BUF_ALLOC: u32 = 64 << 10;
/// What all connections together may be promised: the device cuts a connection's advertised
/// buffer so that the sum of what every connection may come to hold (its promise) stays within
/// this, so a guest that fills many connections to hosts that do not read cannot make Kite hold
/// more (16 connections get the whole [`BUF_ALLOC`]).
pub const HELD_BUDGET: u64 = 16 * BUF_ALLOC as u64;
/// The least buffer a connection is advertised however the budget stands, so that each can
/// still make progress: the bound is [`HELD_BUDGET`] plus this for every connection.
pub const MIN_BUF_ALLOC: u32 = 4 << 10;

pub enum State {
    /// A host program connected to the device's socket; its `CONNECT <port>\n` line so far.
    HostLine(Vec<u8>),
    /// The guest was asked (REQUEST) and has not answered yet.
    Connecting,
    Established,
}

pub struct Conn {
    /// The host side; `None` once it is done both ways.
    pub stream: Option<UnixStream>,
    pub state: State,
    pub guest_port: u32,
    pub host_port: u32,
    /// Bytes for the host not yet written to the stream. The first `own_bytes` are Kite's own
    /// (the `OK` line) and do not count against the guest's credit.
    to_host: VecDeque<u8>,
    own_bytes: usize,
    /// Payload bytes received from the guest, and forwarded to the host (both wrapping).
    rx_cnt: u32,
    fwd_cnt: u32,
    /// `fwd_cnt` as the guest last heard it.
    fwd_cnt_told: u32,
    /// Payload bytes sent to the guest (wrapping), and the guest's buffer as it last told us.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Readiness the (edge-triggered) stream reported, until a call would block.
    pub readable: bool,
    pub writable: bool,
    /// The stream is watched for room to write (only while data waits for the host).
    pub watch_out: bool,
    /// The host closed the stream entirely: it reads nothing more.
    pub hung_up: bool,
    /// The host sends nothing more (a read returned end of file).
    pub host_eof: bool,
    /// SHUTDOWN flags the guest sent, and those we sent the guest.
    pub guest_shutdown: u32,
    pub host_shutdown: u32,
    write_shut: bool,
    pub credit_update_queued: bool,
    /// The buffer advertised from now on (the device sets it from the budget).
    buf_alloc: u32,
    /// How far `rx_cnt` may go: the furthest `fwd_cnt + buf_alloc` the guest was told
    /// (wrapping); a promise is never taken back.
    promised_end: u32,
    /// When the device resets the connection if the other side has not acted by then (a
    /// CONNECT line, the guest's answer, the guest's RST after a close).
    pub deadline: Option<Instant>,
}

impl Conn {
    pub fn new(stream: UnixStream, state: State, guest_port: u32, host_port: u32) -> Self {
        Self {
            stream: Some(stream),
            state,
            guest_port,
            host_port,
            to_host: VecDeque::new(),
            own_bytes: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            readable: true,
            writable: true,
            watch_out: false,
            hung_up: false,
            host_eof: false,
            guest_shutdown: 0,
            host_shutdown: 0,
            write_shut: false,
            credit_update_queued: false,
            buf_alloc: BUF_ALLOC,
            promised_end: 0,
            deadline: None,
        }
    }

    /// Advertise `buf_alloc` from now on, and promise it at once (the guest may act on it from
    /// the next header on; a new connection from its first).
    pub fn advertise(&mut self, buf_alloc: u32) {
        self.buf_alloc = buf_alloc;
        let held = self.rx_cnt.wrapping_sub(self.fwd_cnt);
        let ahead = self.promised_end.wrapping_sub(self.rx_cnt);
        let offered = buf_alloc.saturating_sub(held);
        if offered > ahead {
            self.promised_end = self.rx_cnt.wrapping_add(offered);
        }
    }

    /// The most this connection may come to hold for its host as things stand: what it holds
    /// and what the guest may still send under what it was promised. Never more than the
    /// largest buffer ever advertised ([`BUF_ALLOC`]): each promise is `fwd_cnt` plus at most
    /// that, and `fwd_cnt` only grows.
    pub fn promised(&self) -> u64 {
        u64::from(self.promised_end.wrapping_sub(self.fwd_cnt))
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }

    /// Note the credit the guest gives us, carried by every packet it sends.
    pub fn peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// Payload bytes the guest has room for now.
    pub fn credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// A packet to the guest on this connection, carrying our credit.
    pub fn header(&mut self, guest_cid: u64, op: u16, flags: u32, len: u32) -> Header {
        self.fwd_cnt_told = self.fwd_cnt;
        self.advertise(self.buf_alloc);
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.host_port,
            dst_port: self.guest_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// `n` payload bytes went to the guest.
    pub fn sent(&mut self, n: u32) {
        self.tx_cnt = self.tx_cnt.wrapping_add(n);
    }

    /// Take the payload the guest sent in `data` (guest buffers): straight to the host stream
    /// when nothing is queued before it, the rest (what the stream would not take now) into
    /// the queue. `Ok(false)` if it overruns the buffer we promised the guest; an error means
    /// the host is gone.
    pub fn take_from_guest(&mut self, mem: &GuestMem, data: &Bufs) -> io::Result<bool> {
        let len = data.len();
        let ahead = u64::from(self.promised_end.wrapping_sub(self.rx_cnt));
        if len > ahead {
            return Ok(false);
        }
        // `len` is at most `ahead`, a u32, here.
        self.rx_cnt = self.rx_cnt.wrapping_add(len as u32);
        let mut sent = 0;
        if self.to_host.is_empty() && self.writable && !self.write_shut {
            let Some(stream) = self.stream.as_ref() else {
                return Err(io::ErrorKind::BrokenPipe.into());
            };
            sent = match send_from_guest(stream, mem, data) {
                Ok(n) => n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    0
                }
                Err(e) => return Err(e),
            };
            // At most `len`, a u32.
            self.fwd_cnt = self.fwd_cnt.wrapping_add(sent as u32);
        }
        if sent < len {
            let (_, rest) = data.split_at(sent).unwrap_or_default();
            let mut tail = vec![0u8; (len - sent) as usize];
            rest.read_exact(mem, &mut tail).map_err(io::Error::other)?;
            self.to_host.extend(tail);
        }
        Ok(true)
    }

    /// Queue Kite's own bytes for the host (ahead of any data, which only follows them).
    pub fn say(&mut self, line: &[u8]) {
        self.to_host.extend(line);
        self.own_bytes += line.len();
    }

    pub fn has_data_for_host(&self) -> bool {
        !self.to_host.is_empty()
    }

    /// Write what is held for the host while the stream takes it; an error means the host is
    /// gone. Once the guest sent SHUTDOWN SEND and everything is out, the host reads EOF.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.to_host.is_empty() && self.writable {
            let Some(stream) = self.stream.as_mut() else {
                return Err(io::ErrorKind::BrokenPipe.into());
            };
            let (front, _) = self.to_host.as_slices();
            match stream.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    if self.to_host.is_empty() {
                        // A connection that once held a lot keeps no more than it holds now.
                        self.to_host.shrink_to(BUF_ALLOC as usize / 64);
                    }
                    let own = n.min(self.own_bytes);
                    self.own_bytes -= own;
                    // At most BUF_ALLOC bytes of payload are ever held.
                    self.fwd_cnt = self.fwd_cnt.wrapping_add((n - own) as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.to_host.is_empty() && self.guest_shutdown & SHUTDOWN_SEND != 0 && !self.write_shut {
            self.write_shut = true;
            if let Some(stream) = &self.stream {
                let _ = stream.shutdown(Shutdown::Write);
            }
        }
        Ok(())
    }

    /// Whether the guest should hear our `fwd_cnt`: it believes our buffer is more than half
    /// full, and we have emptied some of it since it last heard.
    pub fn needs_credit_update(&self) -> bool {
        let believed_held = self.rx_cnt.wrapping_sub(self.fwd_cnt_told);
        self.fwd_cnt != self.fwd_cnt_told && believed_held > self.buf_alloc / 2
    }

    /// Whether host data may be read for the guest now.
    pub fn can_send_data(&self) -> bool {
        self.is_established()
            && self.stream.is_some()
            && self.readable
            && !self.host_eof
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && self.credit() > 0
    }

    /// Read host data straight into the guest's buffers `bufs`; Ok(0) is end of file.
    pub fn read_host(&mut self, mem: &GuestMem, bufs: &Bufs) -> io::Result<usize> {
        let Some(stream) = self.stream.as_ref() else {
            return Ok(0);
        };
        let r = recv_into_guest(stream, mem, bufs);
        match &r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
            Ok(0) => self.host_eof = true,
            _ => {}
        }
        r
    }
}

/// Send the guest's buffers `data` on `stream` in one `sendmsg` (MSG_NOSIGNAL: a closed peer is
/// EPIPE, not SIGPIPE); how many bytes the stream took.
fn send_from_guest(stream: &UnixStream, mem: &GuestMem, data: &Bufs) -> io::Result<usize> {
    let mut iov = iovecs(mem, data, false).map_err(io::Error::other)?;
    iov.truncate(IOV_MAX);
    if iov.is_empty() {
        return Ok(0);
    }
    // SAFETY: msghdr is plain data; all zeroes is a message with no name and no control data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: `msg` points at `iov`, whose entries point into guest memory `mem` maps for
        // the whole call; the kernel only reads those bytes.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Read from `stream` straight into the guest's buffers `bufs` in one `readv`; marks their
/// pages dirty.
fn recv_into_guest(stream: &UnixStream, mem: &GuestMem, bufs: &Bufs) -> io::Result<usize> {
    let mut iov = iovecs(mem, bufs, true).map_err(io::Error::other)?;
    iov.truncate(IOV_MAX);
    loop {
        // SAFETY: every iovec points into guest memory `mem` maps for the whole call, within
        // the buffers the driver gave the device to write; the kernel writes only those bytes.
        let n = unsafe { libc::readv(stream.as_raw_fd(), iov.as_ptr(), iov.len() as _) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::devices::virtio::chain::Buf;
    use std::io::Read;
    use vm_memory::{Bytes, GuestAddress};

    /// `data` as a guest buffer at 0x1000 of `mem`.
    fn guest(mem: &GuestMem, data: &[u8]) -> Bufs {
        mem.write_slice(data, GuestAddress(0x1000)).unwrap();
        Bufs::from(vec![Buf {
            addr: GuestAddress(0x1000),
            len: data.len() as u32,
        }])
    }

    /// Hand `data` to `c` as the guest would.
    fn take(c: &mut Conn, data: &[u8]) -> bool {
        let mem = crate::memory::create(1 << 20).unwrap();
        c.take_from_guest(&mem, &guest(&mem, data)).unwrap()
    }

    fn conn() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::new(a, State::Established, 5, 6);
        c.advertise(BUF_ALLOC);
        (c, b)
    }

    #[test]
    fn credit_is_the_peer_buffer_less_what_is_in_flight() {
        let (mut c, _peer) = conn();
        assert_eq!(c.credit(), 0, "no credit before the peer says anything");
        c.peer_credit(&Header {
            buf_alloc: 1000,
            fwd_cnt: 0,
            ..Header::default()
        });
        c.sent(600);
        assert_eq!(c.credit(), 400);
        c.sent(400);
        assert_eq!(c.credit(), 0);
        assert!(!c.can_send_data());
        c.peer_credit(&Header {
            buf_alloc: 1000,
            fwd_cnt: 700,
            ..Header::default()
        });
        assert_eq!(c.credit(), 700);
        // A peer that shrinks its buffer below what is in flight gives no credit, not a wrap.
        c.peer_credit(&Header {
            buf_alloc: 100,
            fwd_cnt: 700,
            ..Header::default()
        });
        assert_eq!(c.credit(), 0);
        // Counters wrap.
        c.tx_cnt = u32::MAX - 10;
        c.peer_credit(&Header {
            buf_alloc: 1000,
            fwd_cnt: u32::MAX - 20,
            ..Header::default()
        });
        assert_eq!(c.credit(), 990);
    }

    #[test]
    fn our_buffer_is_enforced_and_its_space_reported_back() {
        let (mut c, mut peer) = conn();
        // A host that does not take anything now: all of it is held.
        c.writable = false;
        assert!(take(&mut c, &vec![1u8; BUF_ALLOC as usize - 10]));
        assert!(!take(&mut c, &[1u8; 11]), "overrun accepted");
        assert!(!c.needs_credit_update(), "nothing forwarded yet");
        c.writable = true;
        c.flush().unwrap();
        let mut sink = vec![0u8; BUF_ALLOC as usize];
        let mut got = 0;
        while c.has_data_for_host() || got < BUF_ALLOC as usize - 10 {
            got += peer.read(&mut sink).unwrap();
            c.writable = true;
            c.flush().unwrap();
        }
        assert_eq!(got, BUF_ALLOC as usize - 10);
        assert!(c.needs_credit_update());
        let h = c.header(3, 6, 0, 0);
        assert_eq!((h.buf_alloc, h.fwd_cnt), (BUF_ALLOC, BUF_ALLOC - 10));
        assert!(!c.needs_credit_update());
    }

    #[test]
    fn a_smaller_advertisement_never_takes_back_a_promise() {
        let (mut c, mut peer) = conn();
        assert_eq!(c.promised(), u64::from(BUF_ALLOC));
        c.writable = false;
        assert!(take(&mut c, &vec![1u8; 1000]));
        // The budget shrinks: 4 KiB from now on, but the 64 KiB told stays good.
        c.advertise(MIN_BUF_ALLOC);
        let h = c.header(3, 6, 0, 0);
        assert_eq!(h.buf_alloc, MIN_BUF_ALLOC);
        assert_eq!(c.promised(), u64::from(BUF_ALLOC));
        assert!(take(&mut c, &vec![1u8; BUF_ALLOC as usize - 1000]));
        assert!(!take(&mut c, &[1u8]), "past the promise");
        // Once the host took it all, only the new 4 KiB is promised.
        let mut sink = vec![0u8; BUF_ALLOC as usize];
        let mut got = 0;
        while got < BUF_ALLOC as usize {
            c.writable = true;
            c.flush().unwrap();
            got += peer.read(&mut sink).unwrap();
        }
        c.header(3, 6, 0, 0);
        assert_eq!(c.promised(), u64::from(MIN_BUF_ALLOC));
        assert!(take(&mut c, &vec![1u8; MIN_BUF_ALLOC as usize]));
        assert!(!take(&mut c, &[1u8]), "past the new, smaller promise");
    }

    #[test]
    fn data_goes_straight_to_the_host_and_what_it_cannot_take_waits() {
        let (mut c, mut peer) = conn();
        assert!(take(&mut c, b"hello"));
        assert!(
            !c.has_data_for_host(),
            "nothing queued when the stream takes it all"
        );
        assert_eq!(c.header(3, 6, 0, 0).fwd_cnt, 5);
        let mut buf = [0u8; 5];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // More than the socket holds (its send buffer cut to 8 KiB, which the kernel doubles):
        // the stream takes part, the rest is queued, in order.
        let small: libc::c_int = 8 << 10;
        let stream = c.stream.as_ref().unwrap().as_raw_fd();
        // SAFETY: SO_SNDBUF reads one int from the pointer, which points at `small`.
        let r = unsafe {
            libc::setsockopt(
                stream,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let big: Vec<u8> = (0..BUF_ALLOC).map(|i| (i % 251) as u8).collect();
        assert!(take(&mut c, &big));
        assert!(c.has_data_for_host());
        let mut got = Vec::new();
        let mut sink = vec![0u8; 65536];
        while got.len() < big.len() {
            let n = peer.read(&mut sink).unwrap();
            got.extend_from_slice(&sink[..n]);
            c.writable = true;
            c.flush().unwrap();
        }
        assert_eq!(got, big);
        assert_eq!(c.header(3, 6, 0, 0).fwd_cnt, BUF_ALLOC + 5);
    }

    #[test]
    fn own_bytes_do_not_count_as_forwarded_payload() {
        let (mut c, mut peer) = conn();
        c.say(b"OK 7\n");
        assert!(take(&mut c, b"abc"));
        c.flush().unwrap();
        let mut buf = [0u8; 8];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"OK 7\nabc");
        assert_eq!(c.header(3, 6, 0, 0).fwd_cnt, 3);
    }

    #[test]
    fn shutdown_send_reaches_the_host_after_the_data() {
        let (mut c, mut peer) = conn();
        assert!(take(&mut c, b"last"));
        c.guest_shutdown = SHUTDOWN_SEND;
        c.flush().unwrap();
        let mut all = Vec::new();
        peer.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"last");
    }
}
