//! virtio-vsock (virtio 1.2, section 5.10) with the host side in user space, on Unix sockets:
//!
//! - a guest connecting to host CID 2, port P is connected to the Unix socket `<socket>_P`;
//! - a host program connecting to `<socket>` (Kite listens there) and writing `CONNECT <port>\n`
//!   is connected to that guest port, and reads `OK <host port>\n` once the guest accepts.
//!
//! Stream sockets only. Data flows under the spec's credit scheme: the device never sends the
//! guest more than the buffer the guest advertised ([`conn::Conn::credit`]), advertises a
//! buffer of its own per connection, and tells the guest when it has room again. What it
//! advertises is cut so that all connections together are never promised more than
//! [`conn::HELD_BUDGET`] (but each at least [`conn::MIN_BUF_ALLOC`]): data held for hosts that
//! do not read stays bounded however many connections a guest fills. A packet the
//! device cannot act on (an unknown operation, a bad length, another socket type, another host
//! CID, a port nobody listens on, a connection that does not exist) is answered with RST. A chain
//! whose buffers are unusable is returned with a rate-limited log line; one that cannot be walked
//! puts the device into the needs-reset state, as for every device.
//!
//! The listening socket, every connection's stream and a wake-up eventfd sit in the device's own
//! epoll set, which the event loop watches next to the queue eventfds: everything here runs on
//! the event loop. Connections' streams are edge-triggered, and the device remembers what they
//! reported; when it stops early (no receive buffers, no credit, a spent budget) it is woken by
//! the driver's notification, the guest's credit, or its own eventfd.
//!
//! Nothing waits forever: a host program has [`Timeouts::line`] to send its CONNECT line, the
//! guest [`Timeouts::connect`] to answer a REQUEST and [`Timeouts::close`] to confirm with RST
//! once both sides have shut down; then the connection is reset. A timerfd in the same epoll set,
//! armed for the earliest deadline, brings the event loop back for them.

mod conn;
mod deadline;
mod host;
mod packet;
mod rx;
mod unix;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, error, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use vmm_sys_util::epoll::{EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

use super::chain::{Bufs, Chain, LayoutError};
use super::device::{Active, BackendSet, LogLimiter, VirtioDevice, read_config_bytes};
use crate::memory::GuestMem;
use conn::{BUF_ALLOC, Conn, HELD_BUDGET, MIN_BUF_ALLOC, State};
use packet::{
    HDR_LEN, HOST_CID, Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
    OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// VIRTIO_VSOCK_F_STREAM: stream sockets (also implied when no type feature is negotiated).
const F_STREAM: u64 = 1 << 0;
/// Largest payload in one packet, either way.
const MAX_PAYLOAD: usize = 64 << 10;
/// Connections (and host programs still to send their CONNECT line) at once.
const MAX_CONNS: usize = 1024;
/// Packets without payload waiting for receive buffers; past this the device stops taking the
/// guest's packets, which are what make more of them.
const MAX_CONTROL: usize = 1024;
const MAX_LINE: usize = 32;
/// Host ports Kite gives host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;
const LISTENER: u64 = 0;
const WAKE: u64 = 1;
const TIMER: u64 = 2;
const FIRST_TOKEN: u64 = 3;

/// How long the device waits for the other side before it resets a connection.
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    /// For a host program's `CONNECT <port>\n` line.
    line: Duration,
    /// For the guest's answer to a REQUEST.
    connect: Duration,
    /// For the guest's RST after both sides shut down (virtio 1.2, 5.10.6.6).
    close: Duration,
}

const TIMEOUTS: Timeouts = Timeouts {
    line: Duration::from_secs(5),
    connect: Duration::from_secs(2),
    close: Duration::from_secs(2),
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vsock socket {} already exists (remove it if no VM uses it)", .0.display())]
    Exists(PathBuf),
    #[error("cannot listen on vsock socket {}", .path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the vsock device's epoll set")]
    Epoll(#[source] io::Error),
    #[error("cannot create the vsock device's timer")]
    Timer(#[source] io::Error),
}

/// A packet the device has for the guest that carries no payload.
#[derive(Clone, Copy)]
enum Control {
    /// On a live connection: built when sent, so it carries the credit of that moment.
    Conn { token: u64, op: u16, flags: u32 },
    /// For a connection that is gone (a reset).
    Raw(Header),
}

/// Why a chain from the guest was returned unread.
#[derive(Debug, thiserror::Error)]
enum ChainUse {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("chain of {0} bytes is shorter than a packet header")]
    Short(u64),
    #[error("guest memory access failed")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// What the receive queue's next buffer is for.
enum Next {
    Control(Control),
    /// Host data of this connection.
    Data(u64),
}

/// What reading a connection's host data gave.
enum Data {
    /// A packet of this many bytes (header and payload) is in the receive buffer.
    Packet(u32),
    /// Nothing to send now (no data, end of file, an error): the connection's state says which.
    Nothing,
    /// The receive buffer cannot hold more than a header.
    NoRoom,
}

/// A virtio-vsock device.
pub struct Vsock {
    cid: u64,
    config: [u8; 8],
    path: PathBuf,
    listener: UnixListener,
    epoll: BackendSet,
    wake: EventFd,
    /// Fires at `armed`, at or before every connection's deadline.
    timer: TimerFd,
    armed: Option<Instant>,
    timeouts: Timeouts,
    active: Option<Active>,
    /// Connections by epoll token, and the tokens of those with ports by (guest, host) port.
    conns: BTreeMap<u64, Conn>,
    /// Connections a device reset dropped, closed on the event loop.
    retired: Vec<Conn>,
    ports: HashMap<(u32, u32), u64>,
    next_token: u64,
    next_host_port: u32,
    control: VecDeque<Control>,
    /// The connection whose data went to the guest last; the next one after it goes first.
    cursor: u64,
    name: String,
    log: LogLimiter,
    chain_log: LogLimiter,
}

/// `<socket>_<port>`: where a guest's connection to host port `port` goes.
fn port_path(socket: &Path, port: u32) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

impl Vsock {
    /// A device for guest CID `cid`, listening for host programs on `socket`. A reserved CID
    /// (0, 1, 2, 4294967295) is taken as Firecracker takes it (firecracker-containerd sends 0);
    /// host programs reach the guest through `socket` whatever the CID is.
    pub fn new(cid: u32, socket: &Path) -> Result<Self, Error> {
        if cid < 3 || cid == u32::MAX {
            log::warn!(
                "vsock guest CID {cid} is reserved by the virtio spec; taken as Firecracker takes it (the guest may refuse it)"
            );
        }
        if socket.symlink_metadata().is_ok() {
            return Err(Error::Exists(socket.to_path_buf()));
        }
        let bind_error = |source| Error::Bind {
            path: socket.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(socket).map_err(bind_error)?;
        let device = Self::with_listener(cid, socket, listener);
        if device.is_err() {
            let _ = std::fs::remove_file(socket);
        }
        device
    }

    fn with_listener(cid: u32, socket: &Path, listener: UnixListener) -> Result<Self, Error> {
        listener.set_nonblocking(true).map_err(Error::Epoll)?;
        let epoll = BackendSet::new().map_err(Error::Epoll)?;
        let wake = EventFd::new(EFD_NONBLOCK).map_err(Error::Epoll)?;
        let timer = TimerFd::new().map_err(|e| Error::Timer(e.into()))?;
        // The listener is edge-triggered: accept() runs until it would block, and one that
        // fails (out of descriptors) waits for the next connection instead of spinning.
        let watch = [
            (listener.as_raw_fd(), LISTENER, EventSet::EDGE_TRIGGERED),
            (wake.as_raw_fd(), WAKE, EventSet::empty()),
            (timer.as_raw_fd(), TIMER, EventSet::empty()),
        ];
        for (fd, token, mode) in watch {
            epoll
                .add(fd, EventSet::IN | mode, token)
                .map_err(Error::Epoll)?;
        }
        Ok(Self {
            cid: u64::from(cid),
            config: u64::from(cid).to_le_bytes(),
            path: socket.to_path_buf(),
            listener,
            epoll,
            wake,
            timer,
            armed: None,
            timeouts: TIMEOUTS,
            active: None,
            conns: BTreeMap::new(),
            retired: Vec::new(),
            ports: HashMap::new(),
            next_token: FIRST_TOKEN,
            next_host_port: FIRST_HOST_PORT,
            control: VecDeque::new(),
            cursor: 0,
            name: format!("virtio-vsock {}", socket.display()),
            log: LogLimiter::new(),
            chain_log: LogLimiter::new(),
        })
    }

    /// Do what can be done: the guest's packets first (they may queue answers), then packets
    /// for the guest, then one interrupt for both. If work is left, come back through the
    /// wake-up eventfd.
    fn work(&mut self) {
        if self.active.is_none() {
            return;
        }
        let tx_left = self.process_tx();
        let rx_left = self.pump();
        // One interrupt for both rings: sent packets freed and packets for the guest.
        if let Some(active) = self.active.as_mut() {
            active.notify_used_of(&[TX, RX]);
        }
        let tx_can_go_on = tx_left && self.control.len() < MAX_CONTROL;
        if (tx_can_go_on || rx_left)
            && let Err(e) = self.wake.write(1)
        {
            error!("{}: cannot wake itself: {e}", self.name);
        }
    }

    /// Read and act on the guest's packets, a ring's worth at most. Returns true if it stopped
    /// with packets possibly left. A packet's payload goes from guest memory straight to its
    /// host stream (or, what the stream cannot take now, to the connection's queue) before
    /// its buffer is given back.
    fn process_tx(&mut self) -> bool {
        // Held aside while the packets are handled, which need its memory and `self` both;
        // nothing they do touches the queues.
        let Some(mut active) = self.active.take() else {
            return false;
        };
        let mut left = true;
        for _ in 0..QUEUE_SIZE {
            if self.control.len() >= MAX_CONTROL {
                break;
            }
            let Some(chain) = active.pop_chain(TX, &self.name, &mut self.chain_log) else {
                left = false;
                break;
            };
            match read_packet(&active.mem, &chain) {
                Ok((hdr, payload)) => self.handle(&active.mem, hdr, &payload),
                Err(e) => {
                    if self.log.allow() {
                        warn!("{}: {e}; packet dropped", self.name);
                    }
                }
            }
            active.add_used(TX, chain.head(), 0, &self.name, &mut self.chain_log);
        }
        self.active = Some(active);
        left
    }

    /// Answer the guest's packet `hdr` with RST; a connection on its ports is gone with it.
    fn reset_guest(&mut self, hdr: &Header, why: &str) {
        if let Some(&token) = self.ports.get(&(hdr.src_port, hdr.dst_port)) {
            self.remove(token);
        }
        if self.log.allow() {
            debug!(
                "{}: reset {}:{} -> {}:{} (op {}): {why}",
                self.name, hdr.src_cid, hdr.src_port, hdr.dst_cid, hdr.dst_port, hdr.op
            );
        }
        self.control
            .push_back(Control::Raw(packet::reset_reply(hdr)));
    }

    /// Act on one packet from the guest; `payload` is the buffers that followed its header.
    fn handle(&mut self, mem: &GuestMem, hdr: Header, payload: &Bufs) {
        if hdr.src_cid != self.cid {
            if self.log.allow() {
                warn!(
                    "{}: packet from CID {}, not the guest's; dropped",
                    self.name, hdr.src_cid
                );
            }
            return;
        }
        let key = (hdr.src_port, hdr.dst_port);
        if hdr.op == OP_RST {
            // Never answer a reset.
            if let Some(&token) = self.ports.get(&key) {
                self.remove(token);
            }
            return;
        }
        if hdr.dst_cid != HOST_CID {
            return self.reset_guest(&hdr, "no such CID");
        }
        if hdr.kind != TYPE_STREAM {
            return self.reset_guest(&hdr, "not a stream socket");
        }
        let len = hdr.len as usize;
        let carried = payload.len();
        if len > MAX_PAYLOAD || hdr.len as u64 > carried || (hdr.op != OP_RW && len != 0) {
            if self.log.allow() {
                warn!(
                    "{}: packet (op {}) says {} payload bytes and carries {carried}",
                    self.name, hdr.op, hdr.len
                );
            }
            return self.reset_guest(&hdr, "bad length");
        }
        match hdr.op {
            OP_REQUEST => self.connect_to_host(&hdr),
            OP_RESPONSE | OP_SHUTDOWN | OP_RW | OP_CREDIT_UPDATE | OP_CREDIT_REQUEST => {
                let Some(&token) = self.ports.get(&key) else {
                    return self.reset_guest(&hdr, "no such connection");
                };
                // The length was checked against what the packet carries.
                let data = payload
                    .split_at(u64::from(hdr.len))
                    .map(|(data, _)| data)
                    .unwrap_or_default();
                self.on_connection(token, &hdr, mem, &data);
            }
            _ => {
                if self.log.allow() {
                    warn!("{}: unknown operation {}", self.name, hdr.op);
                }
                self.reset_guest(&hdr, "unknown operation");
            }
        }
    }

    /// A packet on an existing connection; `data` is an RW packet's payload.
    fn on_connection(&mut self, token: u64, hdr: &Header, mem: &GuestMem, data: &Bufs) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        conn.peer_credit(hdr);
        match hdr.op {
            OP_RESPONSE => {
                if !matches!(conn.state, State::Connecting) {
                    return self.reset_conn(token);
                }
                conn.state = State::Established;
                conn.deadline = None;
                conn.say(format!("OK {}\n", conn.host_port).as_bytes());
            }
            OP_SHUTDOWN => conn.guest_shutdown |= hdr.flags & SHUTDOWN_BOTH,
            OP_RW => {
                if !conn.is_established() || conn.guest_shutdown & SHUTDOWN_SEND != 0 {
                    return self.reset_conn(token);
                }
                match conn.take_from_guest(mem, data) {
                    Ok(true) => {}
                    Ok(false) => {
                        if self.log.allow() {
                            warn!(
                                "{}: guest sent past the credit it was given; connection reset",
                                self.name
                            );
                        }
                        return self.reset_conn(token);
                    }
                    Err(e) => {
                        debug!("{}: host side of a connection failed: {e}", self.name);
                        return self.reset_conn(token);
                    }
                }
            }
            OP_CREDIT_REQUEST if !conn.credit_update_queued => {
                conn.credit_update_queued = true;
                self.control.push_back(Control::Conn {
                    token,
                    op: OP_CREDIT_UPDATE,
                    flags: 0,
                });
            }
            // CREDIT_UPDATE: the credit noted above is all it carries.
            _ => {}
        }
        self.flush(token);
        self.settle(token);
    }

    /// Watch `stream` (edge-triggered) for input; returns its token. Room to write is watched
    /// only while data waits for the host ([`Vsock::flush`]): otherwise every read the host
    /// program makes would wake the event loop for nothing.
    fn register(&mut self, stream: &impl AsRawFd) -> Option<u64> {
        let token = self.next_token;
        if let Err(e) = self
            .epoll
            .add(stream.as_raw_fd(), stream_events(false), token)
        {
            error!("{}: cannot watch a connection: {e}", self.name);
            return None;
        }
        self.next_token += 1;
        Some(token)
    }

    /// Forget a connection, closing its host stream.
    fn remove(&mut self, token: u64) {
        let Some(conn) = self.conns.remove(&token) else {
            return;
        };
        if !matches!(conn.state, State::HostLine(_)) {
            self.ports.remove(&(conn.guest_port, conn.host_port));
        }
        if let Some(stream) = &conn.stream {
            self.epoll.remove(stream.as_raw_fd());
        }
    }

    /// Close a connection on both sides: the host's stream, and RST to the guest.
    fn reset_conn(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if !matches!(conn.state, State::HostLine(_)) {
            let hdr = conn.header(self.cid, OP_RST, 0, 0);
            self.control.push_back(Control::Raw(Header {
                buf_alloc: 0,
                fwd_cnt: 0,
                ..hdr
            }));
        }
        self.remove(token);
    }

    /// Write what the guest sent to the host; a host that is gone resets the connection.
    /// While data is left waiting, the stream is watched for room to write.
    fn flush(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if let Err(e) = conn.flush() {
            debug!("{}: host side of a connection failed: {e}", self.name);
            return self.reset_conn(token);
        }
        let want_out = conn.has_data_for_host();
        if want_out == conn.watch_out {
            return;
        }
        let Some(stream) = conn.stream.as_ref() else {
            return;
        };
        // Edge-triggered: a stream that has room by now is reported at once.
        match self
            .epoll
            .modify(stream.as_raw_fd(), stream_events(want_out), token)
        {
            Ok(()) => conn.watch_out = want_out,
            Err(e) => {
                error!("{}: cannot watch a connection: {e}", self.name);
                self.reset_conn(token);
            }
        }
    }

    /// After anything happened on a connection: close what is finished, tell the guest what it
    /// must know (the host's shutdown, room in our buffer).
    fn settle(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        match conn.state {
            State::HostLine(_) => return,
            State::Connecting if conn.hung_up => return self.reset_conn(token),
            State::Connecting => return,
            State::Established => {}
        }
        // The guest is done both ways: once what it sent is out (or cannot go out), close, and
        // confirm with RST.
        if conn.guest_shutdown == SHUTDOWN_BOTH && (!conn.has_data_for_host() || conn.hung_up) {
            return self.reset_conn(token);
        }
        let eof = conn.host_eof || (conn.hung_up && conn.guest_shutdown & SHUTDOWN_RCV != 0);
        let mut closed = false;
        if eof {
            let flags = SHUTDOWN_SEND | if conn.hung_up { SHUTDOWN_RCV } else { 0 };
            if flags & !conn.host_shutdown != 0 {
                conn.host_shutdown |= flags;
                let flags = conn.host_shutdown;
                self.control.push_back(Control::Conn {
                    token,
                    op: OP_SHUTDOWN,
                    flags,
                });
            }
            if conn.host_shutdown == SHUTDOWN_BOTH && !conn.has_data_for_host() {
                // Nothing more goes either way on the host side; wait for the guest's RST.
                if let Some(stream) = conn.stream.take() {
                    self.epoll.remove(stream.as_raw_fd());
                    closed = true;
                }
            }
        }
        if conn.needs_credit_update() && !conn.credit_update_queued {
            conn.credit_update_queued = true;
            self.control.push_back(Control::Conn {
                token,
                op: OP_CREDIT_UPDATE,
                flags: 0,
            });
        }
        if closed {
            self.set_deadline(token, self.timeouts.close);
        }
    }

    /// A connection's stream reported `events`.
    fn stream_event(&mut self, token: u64, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let failed = EventSet::HANG_UP | EventSet::ERROR;
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | failed) {
            conn.readable = true;
        }
        if events.intersects(EventSet::OUT | failed) {
            conn.writable = true;
        }
        if events.intersects(failed) {
            conn.hung_up = true;
        }
        if matches!(conn.state, State::HostLine(_)) {
            return self.read_line(token);
        }
        self.flush(token);
        self.settle(token);
    }
}

/// What a connection's stream is watched for: input and the host's hang-up, and with `out`
/// room to write; edge-triggered.
fn stream_events(out: bool) -> EventSet {
    let events = EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
    if out { events | EventSet::OUT } else { events }
}

/// The header of a packet from the guest and the buffers of what follows it (read from guest
/// memory only when it goes to the host).
fn read_packet(mem: &GuestMem, chain: &Chain) -> Result<(Header, Bufs), ChainUse> {
    let readable = chain.readable_only(mem, 0)?;
    let Some((head, payload)) = readable.split_at(HDR_LEN as u64) else {
        return Err(ChainUse::Short(readable.len()));
    };
    let mut raw = [0u8; HDR_LEN];
    head.read_exact(mem, &mut raw)?;
    Ok((Header::decode(&raw), payload))
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl VirtioDevice for Vsock {
    fn active(&self) -> Option<&Active> {
        self.active.as_ref()
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        // receive, transmit, event
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_STREAM
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, active: Active) {
        self.active = Some(active);
    }

    fn reset(&mut self) {
        // Every connection goes; host programs see their sockets close when the event loop
        // drops them (this runs on a vCPU thread).
        self.active = None;
        self.retired
            .extend(std::mem::take(&mut self.conns).into_values());
        self.ports.clear();
        self.control.clear();
        if let Err(e) = self.wake.write(1) {
            error!("{}: cannot wake the event loop: {e}", self.name);
        }
    }

    fn restored(&mut self) {
        // The connections the guest had are gone with the old process: tell the driver with
        // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (id 0) on the event queue, so its sockets see it.
        const EVENT: usize = 2;
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let name = self.name.clone();
        let Some(chain) = active.pop_chain(EVENT, &name, &mut self.chain_log) else {
            log::debug!("{name}: no event buffer for the transport reset after restore");
            return;
        };
        let written = chain
            .writable_only(&active.mem, 4)
            .ok()
            .and_then(|bufs| bufs.write(&active.mem, &0u32.to_le_bytes()).ok());
        let len = written.map_or(0, |n| n as u32);
        active.add_used(EVENT, chain.head(), len, &name, &mut self.chain_log);
        active.notify_used(EVENT);
    }

    fn process_queue(&mut self, index: usize) -> bool {
        // The event queue only ever holds buffers for events this device does not send.
        if index == RX || index == TX {
            self.work();
        }
        false
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn process_backend(&mut self) {
        // Closing a stream also takes it out of the epoll set.
        self.retired.clear();
        let mut events = [EpollEvent::default(); 64];
        let mut expired = false;
        for event in self.epoll.ready(&mut events) {
            match event.data() {
                LISTENER => self.accept(),
                WAKE => {
                    let _ = self.wake.read();
                }
                TIMER => expired = true,
                token => self.stream_event(token, event.event_set()),
            }
        }
        if expired {
            self.expire();
        }
        self.work();
    }
}

#[cfg(test)]
mod tests;
