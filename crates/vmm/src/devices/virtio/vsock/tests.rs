use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll};
use vmm_sys_util::tempdir::TempDir;

use super::conn::BUF_ALLOC;
use super::*;
use crate::bus::BusDevice;
use crate::devices::virtio::testutil::{Desc, Guest};

const CID: u64 = 3;
const QSIZE: u16 = 64;
const RX_BUF: u32 = HDR_LEN as u32 + 4096;

/// The test plays the guest's vsock driver.
struct T {
    g: Guest,
    dev: Arc<Mutex<Vsock>>,
    _dir: TempDir,
    path: PathBuf,
    /// Receive buffers by head index, and the used entries already looked at.
    rx_bufs: HashMap<u32, u64>,
    rx_seen: u16,
}

fn setup() -> T {
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("v.sock");
    let dev = Arc::new(Mutex::new(Vsock::new(CID as u32, &path).unwrap()));
    let mut g = Guest::new(dev.clone());
    g.start(QSIZE);
    T {
        g,
        dev,
        _dir: dir,
        path,
        rx_bufs: HashMap::new(),
        rx_seen: 0,
    }
}

/// A packet from the guest's port `src` to host port `dst`.
fn pkt(op: u16, src: u32, dst: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        kind: TYPE_STREAM,
        op,
        buf_alloc: 64 << 10,
        ..Header::default()
    }
}

impl T {
    /// Post `n` receive buffers and notify.
    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let buf = self.g.alloc(RX_BUF);
            let head = self.g.push(0, &[Desc::w(buf, RX_BUF)]);
            self.rx_bufs.insert(u32::from(head), buf);
        }
        self.g.kick(0);
    }

    /// Send a packet on the transmit queue, header and payload in separate descriptors.
    fn send(&mut self, hdr: Header, payload: &[u8]) {
        let h = self.g.buf(&hdr.encode());
        let mut descs = vec![Desc::r(h, HDR_LEN as u32)];
        if !payload.is_empty() {
            let p = self.g.buf(payload);
            descs.push(Desc::r(p, payload.len() as u32));
        }
        self.g.push(1, &descs);
        self.g.kick(1);
    }

    fn send_rw(&mut self, src: u32, dst: u32, data: &[u8], fwd_cnt: u32) {
        let hdr = Header {
            len: data.len() as u32,
            fwd_cnt,
            ..pkt(OP_RW, src, dst)
        };
        self.send(hdr, data);
    }

    /// Run the event loop a few times (host sockets are in this process, so a few turns
    /// suffice) and return the packets the guest got since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        for _ in 0..5 {
            self.g.run_events();
        }
        let mut out = Vec::new();
        while self.rx_seen != self.g.used_idx(0) {
            let (head, len) = self.g.used(0, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let buf = self.rx_bufs.remove(&head).expect("unknown receive buffer");
            assert!(len as usize >= HDR_LEN, "used length {len}");
            let bytes = self.g.bytes(buf, len as usize);
            let mut raw = [0u8; HDR_LEN];
            raw.copy_from_slice(&bytes[..HDR_LEN]);
            let hdr = Header::decode(&raw);
            assert_eq!(hdr.len as usize, len as usize - HDR_LEN);
            out.push((hdr, bytes[HDR_LEN..].to_vec()));
        }
        out
    }

    /// Exactly one packet arrives; return it.
    fn recv_one(&mut self) -> (Header, Vec<u8>) {
        let mut got = self.recv();
        assert_eq!(got.len(), 1, "{got:?}");
        got.remove(0)
    }

    /// A guest connection from port 1000 to a host listener on port `port`, established.
    fn guest_connects(&mut self, port: u32, buf_alloc: u32) -> (UnixListener, UnixStream) {
        let listener = UnixListener::bind(port_path(&self.path, port)).unwrap();
        self.post_rx(8);
        self.send(
            Header {
                buf_alloc,
                ..pkt(OP_REQUEST, 1000, port)
            },
            &[],
        );
        let (hdr, _) = self.recv_one();
        assert_eq!(hdr.op, OP_RESPONSE);
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        (listener, stream)
    }

    /// A host program connecting to the device's socket and asking for guest port `port`;
    /// returns its stream and the REQUEST the guest got.
    fn host_connects(&mut self, port: u32) -> (UnixStream, Header) {
        let mut host = UnixStream::connect(&self.path).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        self.post_rx(8);
        let (req, _) = self.recv_one();
        (host, req)
    }

    fn dev(&self) -> std::sync::MutexGuard<'_, Vsock> {
        self.dev.lock().unwrap()
    }

    /// Run the event loop as Kite does, sleeping until the device's epoll set has something,
    /// until `done` holds of the device. Fails after a few seconds.
    fn run_until(&mut self, done: impl Fn(&Vsock) -> bool) {
        let start = Instant::now();
        let epoll = Epoll::new().unwrap();
        let fd = self.dev().epoll.as_raw_fd();
        epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
            .unwrap();
        let mut events = [EpollEvent::default(); 1];
        while !done(&self.dev()) {
            let left = Duration::from_secs(5).saturating_sub(start.elapsed());
            assert!(!left.is_zero(), "the device never got there");
            epoll.wait(left.as_millis() as i32, &mut events).unwrap();
            self.g.run_events();
        }
    }
}

/// The deadlines of a test: `short` for one kind, an hour for the others.
fn timeouts(short: impl Fn(&mut Timeouts) -> &mut Duration) -> Timeouts {
    let hour = Duration::from_secs(3600);
    let mut t = Timeouts {
        line: hour,
        connect: hour,
        close: hour,
    };
    *short(&mut t) = SHORT;
    t
}

const SHORT: Duration = Duration::from_millis(200);

fn read_n(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

fn payload(got: &[(Header, Vec<u8>)]) -> Vec<u8> {
    got.iter()
        .filter(|(h, _)| h.op == OP_RW)
        .flat_map(|(_, p)| p.clone())
        .collect()
}

#[test]
fn config_space_holds_the_guest_cid() {
    let mut t = setup();
    let mut cid = [0u8; 8];
    t.g.transport.read(0x100, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    assert_eq!(t.g.read(0x8), 19);
    // Three queues: receive, transmit, event.
    t.g.write(0x30, 2);
    assert_eq!(t.g.read(0x34), u32::from(QUEUE_SIZE));
    t.g.write(0x30, 3);
    assert_eq!(t.g.read(0x34), 0);
}

#[test]
fn start_up_errors_say_what_to_change() {
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("v.sock");
    // CID 0 is taken as Firecracker takes it (firecracker-containerd sends it).
    drop(Vsock::new(0, &path).unwrap());
    let _ = std::fs::remove_file(&path);
    let dev = Vsock::new(3, &path).unwrap();
    let err = Vsock::new(4, &path).err().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "vsock socket {} already exists (remove it if no VM uses it)",
            path.display()
        )
    );
    drop(dev);
    assert!(!path.exists(), "the socket outlived the device");
    let err = Vsock::new(3, Path::new("/nonexistent-dir/v.sock"))
        .err()
        .unwrap();
    assert!(matches!(err, Error::Bind { .. }), "{err}");
}

#[test]
fn a_guest_connection_reaches_the_host_listener_and_data_flows_both_ways() {
    let mut t = setup();
    let listener = UnixListener::bind(port_path(&t.path, 1234)).unwrap();
    t.post_rx(8);
    t.send(pkt(OP_REQUEST, 1000, 1234), &[]);
    let (resp, _) = t.recv_one();
    assert_eq!(
        (resp.src_cid, resp.src_port, resp.dst_cid, resp.dst_port),
        (HOST_CID, 1234, CID, 1000)
    );
    assert_eq!(
        (resp.op, resp.kind, resp.len),
        (OP_RESPONSE, TYPE_STREAM, 0)
    );
    assert_eq!(resp.buf_alloc, BUF_ALLOC);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(1))).unwrap();

    t.send_rw(1000, 1234, b"hello host", 0);
    assert_eq!(read_n(&mut host, 10), b"hello host");

    host.write_all(b"hello guest").unwrap();
    let (rw, data) = t.recv_one();
    assert_eq!((rw.op, rw.src_port, rw.dst_port), (OP_RW, 1234, 1000));
    assert_eq!(data, b"hello guest");
    assert_eq!(rw.fwd_cnt, 10, "our fwd_cnt counts what reached the host");
}

#[test]
fn a_host_connect_reaches_a_listening_guest_port() {
    let mut t = setup();
    let (mut host, req) = t.host_connects(52);
    assert_eq!(
        (req.op, req.src_cid, req.dst_cid, req.dst_port),
        (OP_REQUEST, HOST_CID, CID, 52)
    );
    assert!(req.src_port >= FIRST_HOST_PORT);
    assert_eq!(req.buf_alloc, BUF_ALLOC);
    // Nothing is said to the host before the guest accepts.
    host.set_nonblocking(true).unwrap();
    assert!(host.read(&mut [0u8; 16]).is_err());
    host.set_nonblocking(false).unwrap();

    t.send(pkt(OP_RESPONSE, 52, req.src_port), &[]);
    t.recv();
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(read_n(&mut host, ok.len()), ok.as_bytes());

    host.write_all(b"ping").unwrap();
    let (rw, data) = t.recv_one();
    assert_eq!((rw.op, rw.dst_port, rw.src_port), (OP_RW, 52, req.src_port));
    assert_eq!(data, b"ping");
    t.send_rw(52, req.src_port, b"pong", 4);
    assert_eq!(read_n(&mut host, 4), b"pong");

    // A second host program gets a port of its own.
    let (_host2, req2) = t.host_connects(52);
    assert_ne!(req2.src_port, req.src_port);
}

#[test]
fn data_the_host_sends_with_its_connect_line_waits_for_the_guest() {
    let mut t = setup();
    let mut host = UnixStream::connect(&t.path).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    host.write_all(b"CONNECT 7\r\nearly bytes").unwrap();
    t.post_rx(8);
    let (req, _) = t.recv_one();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 7));
    t.send(pkt(OP_RESPONSE, 7, req.src_port), &[]);
    let got = t.recv();
    assert_eq!(payload(&got), b"early bytes");
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(read_n(&mut host, ok.len()), ok.as_bytes());
}

#[test]
fn host_data_never_exceeds_the_guest_credit() {
    let mut t = setup();
    let (_l, mut host) = t.guest_connects(1234, 100);
    host.write_all(&[7u8; 300]).unwrap();
    let got = t.recv();
    assert_eq!(payload(&got).len(), 100, "sent past the guest's buf_alloc");
    assert!(t.recv().is_empty(), "more data without credit");

    // The guest read 60 bytes: 60 more may come.
    t.send(
        Header {
            buf_alloc: 100,
            fwd_cnt: 60,
            ..pkt(OP_CREDIT_UPDATE, 1000, 1234)
        },
        &[],
    );
    assert_eq!(payload(&t.recv()).len(), 60);
    // A bigger buffer: the rest.
    t.send(
        Header {
            buf_alloc: 1000,
            fwd_cnt: 160,
            ..pkt(OP_CREDIT_UPDATE, 1000, 1234)
        },
        &[],
    );
    assert_eq!(payload(&t.recv()).len(), 140);
}

#[test]
fn a_packet_and_its_answer_cost_the_driver_one_interrupt() {
    let mut t = setup();
    let (_l, _host) = t.guest_connects(1234, 1 << 16);
    // Whatever the set-up raised is taken.
    let _ = t.g.irq.read();
    // The request leaves the transmit ring and its answer fills a receive buffer in the same
    // turn: both used rings moved, one interrupt tells of both.
    t.send(pkt(OP_CREDIT_REQUEST, 1000, 1234), &[]);
    let (upd, _) = t.recv_one();
    assert_eq!(upd.op, OP_CREDIT_UPDATE);
    assert_eq!(
        t.g.used_idx(1),
        2,
        "the request's buffer was not given back"
    );
    assert_eq!(t.g.irq.read().unwrap(), 1, "one interrupt per turn");
}

#[test]
fn a_credit_request_gets_our_credit() {
    let mut t = setup();
    let (_l, mut host) = t.guest_connects(1234, 1 << 16);
    t.send_rw(1000, 1234, &[1u8; 500], 0);
    assert_eq!(read_n(&mut host, 500).len(), 500);
    t.send(pkt(OP_CREDIT_REQUEST, 1000, 1234), &[]);
    let (upd, _) = t.recv_one();
    assert_eq!(upd.op, OP_CREDIT_UPDATE);
    assert_eq!((upd.buf_alloc, upd.fwd_cnt), (BUF_ALLOC, 500));
}

#[test]
fn the_guest_hears_when_our_buffer_empties_and_overruns_are_reset() {
    let mut t = setup();
    let (_l, mut host) = t.guest_connects(1234, 1 << 16);
    // A quarter of our buffer per packet.
    let step = BUF_ALLOC as usize / 4;
    let chunk = vec![9u8; step];
    // More than half our buffer, which the host then reads: a credit update follows.
    for _ in 0..3 {
        t.send_rw(1000, 1234, &chunk, 0);
    }
    assert_eq!(read_n(&mut host, 3 * step).len(), 3 * step);
    t.send_rw(1000, 1234, &chunk, 0);
    let got = t.recv();
    let update = got
        .iter()
        .find(|(h, _)| h.op == OP_CREDIT_UPDATE)
        .expect("no credit update");
    assert!(update.0.fwd_cnt >= 3 * step as u32);
    assert_eq!(read_n(&mut host, step).len(), step);

    // A host that stops reading: the guest may fill the socket and our buffer, no more.
    let mut sent = 4 * step;
    let reset = loop {
        t.send_rw(1000, 1234, &chunk, 0);
        sent += step;
        let got = t.recv();
        if let Some((h, _)) = got.iter().find(|(h, _)| h.op == OP_RST) {
            break *h;
        }
        assert!(sent < 256 * step, "overrun never reset");
    };
    assert_eq!((reset.src_port, reset.dst_port), (1234, 1000));
}

#[test]
fn receive_waits_for_buffers_and_loses_nothing() {
    let mut t = setup();
    let (_l, mut host) = t.guest_connects(1234, 1 << 20);
    // Use up the posted buffers' slack, then send with none posted.
    t.recv();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    host.write_all(&data).unwrap();
    let got = t.recv();
    let mut all = payload(&got);
    assert!(
        all.len() < data.len(),
        "the test meant to run out of buffers"
    );
    for _ in 0..10 {
        t.post_rx(2);
        all.extend(payload(&t.recv()));
    }
    assert_eq!(all, data);
}

/// Send `hdr` (and `payload`) and expect exactly a RST back, addressed to its sender.
fn expect_reset(t: &mut T, hdr: Header, payload: &[u8]) {
    t.send(hdr, payload);
    let (rst, _) = t.recv_one();
    assert_eq!(rst.op, OP_RST, "answered {hdr:?} with {rst:?}");
    assert_eq!(
        (rst.src_port, rst.dst_port, rst.dst_cid),
        (hdr.dst_port, hdr.src_port, hdr.src_cid)
    );
    assert!(!t.g.needs_reset());
}

#[test]
fn what_the_device_cannot_serve_is_reset() {
    let mut t = setup();
    t.post_rx(16);
    // Nobody listens on the host port.
    expect_reset(&mut t, pkt(OP_REQUEST, 1000, 4321), &[]);
    // Unknown operations.
    expect_reset(&mut t, pkt(0, 1000, 4321), &[]);
    expect_reset(&mut t, pkt(99, 1000, 4321), &[]);
    // Not a stream.
    let seqpacket = Header {
        kind: 2,
        ..pkt(OP_REQUEST, 1000, 4321)
    };
    expect_reset(&mut t, seqpacket, &[]);
    // Another host CID.
    let elsewhere = Header {
        dst_cid: 7,
        ..pkt(OP_REQUEST, 1000, 4321)
    };
    expect_reset(&mut t, elsewhere, &[]);
    // Packets for a connection that does not exist.
    for op in [
        OP_RESPONSE,
        OP_SHUTDOWN,
        OP_CREDIT_UPDATE,
        OP_CREDIT_REQUEST,
    ] {
        expect_reset(&mut t, pkt(op, 1000, 4321), &[]);
    }
    expect_reset(
        &mut t,
        Header {
            len: 3,
            ..pkt(OP_RW, 1000, 4321)
        },
        b"abc",
    );
    // Nothing answers a reset.
    t.send(pkt(OP_RST, 1000, 4321), &[]);
    assert!(t.recv().is_empty());
}

#[test]
fn bad_lengths_are_reset() {
    let mut t = setup();
    let (_l, mut host) = t.guest_connects(1234, 1 << 16);
    // Says more than it carries.
    expect_reset(
        &mut t,
        Header {
            len: 10,
            ..pkt(OP_RW, 1000, 1234)
        },
        b"short",
    );
    // The reset closed the connection: the host sees it end, and nothing of the packet.
    assert_eq!(host.read(&mut [0u8; 16]).unwrap(), 0);

    let (_l2, _host2) = t.guest_connects(1235, 1 << 16);
    // More than a packet may carry.
    let big = vec![0u8; MAX_PAYLOAD + 1];
    expect_reset(
        &mut t,
        Header {
            len: big.len() as u32,
            ..pkt(OP_RW, 1000, 1235)
        },
        &big,
    );
    // A payload on a packet that takes none.
    expect_reset(
        &mut t,
        Header {
            len: 2,
            ..pkt(OP_REQUEST, 1001, 1235)
        },
        b"xx",
    );
}

#[test]
fn a_guest_packet_from_another_cid_is_dropped() {
    let mut t = setup();
    t.post_rx(4);
    t.send(
        Header {
            src_cid: 9,
            ..pkt(OP_REQUEST, 1000, 1234)
        },
        &[],
    );
    assert!(t.recv().is_empty());
    assert_eq!(t.g.used_idx(1), 1);
}

#[test]
fn malformed_chains_are_returned_and_unwalkable_ones_need_a_reset() {
    let mut t = setup();
    t.post_rx(4);
    let hdr = t.g.buf(&pkt(OP_REQUEST, 1000, 4321).encode());
    let w = t.g.alloc(64);
    // Too short for a header; a device-writable buffer on the transmit queue.
    t.g.push(1, &[Desc::r(hdr, 40)]);
    t.g.push(1, &[Desc::r(hdr, 44), Desc::w(w, 64)]);
    t.g.kick(1);
    assert_eq!(t.g.used_idx(1), 2);
    assert!(t.recv().is_empty(), "a malformed chain was answered");
    assert!(!t.g.needs_reset());
    // A chain that leads past the descriptor table.
    let next = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    t.g.push_raw(1, &[(hdr, 44, next, QSIZE + 5)]);
    t.g.kick(1);
    assert!(t.g.needs_reset());
    assert_eq!(t.g.used_idx(1), 2);
}

#[test]
fn unusable_receive_buffers_are_returned_empty_and_the_packet_kept() {
    let mut t = setup();
    let r = t.g.alloc(RX_BUF);
    let w = t.g.alloc(RX_BUF);
    // Device-readable; too short for a header.
    t.g.push(0, &[Desc::r(r, RX_BUF)]);
    t.g.push(0, &[Desc::w(w, 40)]);
    t.g.kick(0);
    t.send(pkt(OP_REQUEST, 1000, 4321), &[]);
    assert_eq!(t.g.used_idx(0), 2);
    assert_eq!(t.g.used(0, 0).1, 0);
    assert_eq!(t.g.used(0, 1).1, 0);
    assert_eq!(t.g.bytes(w, 40), [0; 40]);
    t.rx_seen = 2;
    t.post_rx(1);
    let (rst, _) = t.recv_one();
    assert_eq!(rst.op, OP_RST);
    assert!(!t.g.needs_reset());
}

#[test]
fn the_guest_closes_and_the_host_sees_the_end_then_a_reset_confirms() {
    let mut t = setup();
    let (listener, mut host) = t.guest_connects(1234, 1 << 16);
    t.send_rw(1000, 1234, b"bye", 0);
    t.send(
        Header {
            flags: SHUTDOWN_BOTH,
            ..pkt(OP_SHUTDOWN, 1000, 1234)
        },
        &[],
    );
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"bye");
    let (rst, _) = t.recv_one();
    assert_eq!((rst.op, rst.dst_port), (OP_RST, 1000));
    // The connection is gone: its ports can be used again.
    t.send(pkt(OP_REQUEST, 1000, 1234), &[]);
    assert_eq!(t.recv_one().0.op, OP_RESPONSE);
    assert!(listener.accept().is_ok());
}

#[test]
fn the_guest_shuts_only_sending_and_still_receives() {
    let mut t = setup();
    let (_l, mut host) = t.guest_connects(1234, 1 << 16);
    t.send(
        Header {
            flags: SHUTDOWN_SEND,
            ..pkt(OP_SHUTDOWN, 1000, 1234)
        },
        &[],
    );
    assert!(t.recv().is_empty());
    assert_eq!(host.read(&mut [0u8; 4]).unwrap(), 0, "host sees no EOF");
    host.write_all(b"reply").unwrap();
    assert_eq!(payload(&t.recv()), b"reply");
}

#[test]
fn the_host_closes_and_the_guest_hears_shutdown_then_resets() {
    let mut t = setup();
    let (_l, mut host) = t.guest_connects(1234, 1 << 16);
    host.write_all(b"last words").unwrap();
    drop(host);
    let got = t.recv();
    assert_eq!(payload(&got), b"last words");
    let (shut, _) = got.last().unwrap();
    assert_eq!(
        (shut.op, shut.flags, shut.dst_port),
        (OP_SHUTDOWN, SHUTDOWN_BOTH, 1000)
    );
    // The guest confirms with a reset; the connection is gone.
    t.send(pkt(OP_RST, 1000, 1234), &[]);
    assert!(t.recv().is_empty());
    expect_reset(&mut t, pkt(OP_CREDIT_REQUEST, 1000, 1234), &[]);
}

#[test]
fn a_host_connect_to_a_port_nobody_listens_on_ends_without_ok() {
    let mut t = setup();
    let (mut host, req) = t.host_connects(99);
    // The guest's driver answers a REQUEST to a closed port with RST.
    t.send(
        Header {
            buf_alloc: 0,
            ..pkt(OP_RST, 99, req.src_port)
        },
        &[],
    );
    t.recv();
    assert_eq!(host.read(&mut [0u8; 16]).unwrap(), 0);
}

#[test]
fn a_bad_connect_line_closes_the_host_socket() {
    let mut t = setup();
    t.post_rx(4);
    for line in [&b"HELLO 5\n"[..], b"CONNECT x\n", &[b'C'; 100]] {
        let mut host = UnixStream::connect(&t.path).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        host.write_all(line).unwrap();
        assert!(t.recv().is_empty());
        // Closed with bytes left unread, a Unix socket resets rather than ends.
        match host.read(&mut [0u8; 16]) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{line:?}: {other:?}"),
        }
    }
}

#[test]
fn a_reset_device_drops_every_connection() {
    let mut t = setup();
    let (_l, mut host) = t.guest_connects(1234, 1 << 16);
    let (mut host2, _) = t.host_connects(52);
    t.g.write(0x70, 0);
    // The vCPU thread only hands them over; the event loop closes them.
    assert_eq!(t.g.run_events(), 1);
    assert_eq!(host.read(&mut [0u8; 4]).unwrap(), 0);
    assert_eq!(host2.read(&mut [0u8; 4]).unwrap(), 0);
    // While the driver is away, host programs are turned away at once.
    let mut host3 = UnixStream::connect(&t.path).unwrap();
    host3
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    t.g.run_events();
    assert_eq!(host3.read(&mut [0u8; 4]).unwrap(), 0);
}

#[test]
fn a_host_connect_the_guest_never_answers_is_reset_after_its_deadline() {
    let mut t = setup();
    t.dev().timeouts = timeouts(|t| &mut t.connect);
    // A host program still to send its line: its (later) deadline must not hold up the other.
    let _quiet = UnixStream::connect(&t.path).unwrap();
    let (mut answered, req1) = t.host_connects(52);
    t.send(pkt(OP_RESPONSE, 52, req1.src_port), &[]);
    assert!(t.recv().is_empty());
    let ok = format!("OK {}\n", req1.src_port);
    assert_eq!(read_n(&mut answered, ok.len()), ok.as_bytes());
    let start = Instant::now();
    let (mut host, req) = t.host_connects(53);
    assert_eq!(t.dev().conns.len(), 3);

    t.run_until(|d| d.conns.len() == 2);
    assert!(start.elapsed() >= SHORT, "reset before its deadline");
    let (rst, _) = t.recv_one();
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port, rst.dst_cid),
        (OP_RST, req.src_port, 53, CID)
    );
    // The host program sees its socket close without an OK; the slot and the ports are free.
    assert_eq!(host.read(&mut [0u8; 16]).unwrap(), 0);
    assert_eq!(t.dev().conns.len(), 2);
    assert!(!t.dev().ports.contains_key(&(53, req.src_port)));
    // The timer does not fire again for nothing.
    assert_eq!(t.g.run_events(), 0);
    // A late answer finds no connection; the answered one is untouched.
    expect_reset(&mut t, pkt(OP_RESPONSE, 53, req.src_port), &[]);
    t.send_rw(52, req1.src_port, b"still here", 0);
    assert_eq!(read_n(&mut answered, 10), b"still here");
}

#[test]
fn a_host_program_that_sends_no_connect_line_is_closed_after_its_deadline() {
    let mut t = setup();
    t.dev().timeouts = timeouts(|t| &mut t.line);
    t.post_rx(4);
    let start = Instant::now();
    let mut silent = UnixStream::connect(&t.path).unwrap();
    let mut partial = UnixStream::connect(&t.path).unwrap();
    partial.write_all(b"CONNECT 5").unwrap();
    assert!(t.recv().is_empty());
    assert_eq!(t.dev().conns.len(), 2);

    t.run_until(|d| d.conns.is_empty());
    assert!(start.elapsed() >= SHORT, "closed before its deadline");
    assert!(
        t.recv().is_empty(),
        "the guest heard of a connection never asked for"
    );
    for host in [&mut silent, &mut partial] {
        host.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(host.read(&mut [0u8; 16]).unwrap(), 0);
    }
    assert_eq!(t.g.run_events(), 0);
}

#[test]
fn a_close_the_guest_never_confirms_is_reset_after_its_deadline() {
    let mut t = setup();
    t.dev().timeouts = timeouts(|t| &mut t.close);
    let (listener, host) = t.guest_connects(1234, 1 << 16);
    let start = Instant::now();
    drop(host);
    let (shut, _) = t.recv_one();
    assert_eq!((shut.op, shut.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    assert_eq!(
        t.dev().conns.len(),
        1,
        "closed before the guest had its time"
    );

    t.run_until(|d| d.conns.is_empty());
    assert!(start.elapsed() >= SHORT, "reset before its deadline");
    let (rst, _) = t.recv_one();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 1234, 1000));
    assert!(t.dev().ports.is_empty());
    assert_eq!(t.g.run_events(), 0);
    // The guest may use the same ports again.
    t.send(pkt(OP_REQUEST, 1000, 1234), &[]);
    assert_eq!(t.recv_one().0.op, OP_RESPONSE);
    assert!(listener.accept().is_ok());
}
