//! One vsock stream connection between a guest port and a host Unix stream, with the credit
//! accounting of virtio 1.2, section 5.10.6.3: each side advertises the buffer it has for the
//! connection (`buf_alloc`) and how much it has taken out of it (`fwd_cnt`), and the other side
//! never has more than that buffer's worth of data in flight.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{HOST_CID, Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// The buffer Kite advertises per connection: data from the guest waiting for the host.
pub const BUF_ALLOC: u32 = 256 << 10;
/// What all connections together may be promised: the device cuts a connection's advertised
/// buffer so that the sum of what every connection may come to hold (its promise) stays within
/// this, so a guest that fills many connections to hosts that do not read cannot make Kite hold
/// more (16 connections get the whole [`BUF_ALLOC`]).
pub const HELD_BUDGET: u64 = 4 << 20;
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
    /// and what the guest may still send under what it was promised.
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

    /// Take payload the guest sent; false if it overruns the buffer we promised it.
    pub fn take_from_guest(&mut self, data: &[u8]) -> bool {
        let ahead = self.promised_end.wrapping_sub(self.rx_cnt) as usize;
        if data.len() > ahead {
            return false;
        }
        self.to_host.extend(data);
        // `data` is at most `ahead`, a u32, here.
        self.rx_cnt = self.rx_cnt.wrapping_add(data.len() as u32);
        true
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

    /// Read host data for the guest; Ok(0) is end of file.
    pub fn read_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(0);
        };
        let r = stream.read(buf);
        match &r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
            Ok(0) => self.host_eof = true,
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(c.take_from_guest(&vec![1u8; BUF_ALLOC as usize - 10]));
        assert!(!c.take_from_guest(&[1u8; 11]), "overrun accepted");
        assert!(!c.needs_credit_update(), "nothing forwarded yet");
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
        assert!(c.take_from_guest(&vec![1u8; 1000]));
        // The budget shrinks: 4 KiB from now on, but the 256 KiB told stays good.
        c.advertise(MIN_BUF_ALLOC);
        let h = c.header(3, 6, 0, 0);
        assert_eq!(h.buf_alloc, MIN_BUF_ALLOC);
        assert_eq!(c.promised(), u64::from(BUF_ALLOC));
        assert!(c.take_from_guest(&vec![1u8; BUF_ALLOC as usize - 1000]));
        assert!(!c.take_from_guest(&[1u8]), "past the promise");
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
        assert!(c.take_from_guest(&vec![1u8; MIN_BUF_ALLOC as usize]));
        assert!(!c.take_from_guest(&[1u8]), "past the new, smaller promise");
    }

    #[test]
    fn own_bytes_do_not_count_as_forwarded_payload() {
        let (mut c, mut peer) = conn();
        c.say(b"OK 7\n");
        assert!(c.take_from_guest(b"abc"));
        c.flush().unwrap();
        let mut buf = [0u8; 8];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"OK 7\nabc");
        assert_eq!(c.header(3, 6, 0, 0).fwd_cnt, 3);
    }

    #[test]
    fn shutdown_send_reaches_the_host_after_the_data() {
        let (mut c, mut peer) = conn();
        assert!(c.take_from_guest(b"last"));
        c.guest_shutdown = SHUTDOWN_SEND;
        c.flush().unwrap();
        let mut all = Vec::new();
        peer.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"last");
    }
}
