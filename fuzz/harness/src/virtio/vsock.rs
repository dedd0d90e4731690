//! Fuzz target `virtio_vsock`: the guest's packets (any operation, ports, credit, flags and
//! length, on connections that exist or not) and the host side of each connection, run against
//! a real device on Unix sockets in a directory of the run's own: host listeners on ports 1024
//! and 1025 that the guest can connect to, host programs that connect to the device and ask for
//! a guest port, host streams that write, read, shut down and close. Every packet the device
//! gives the guest is checked to be a well-formed stream packet from the host.
//!
//! Input: [`Driver::run`]'s, with the operations below.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::{Driver, Script, Seg, Setup};
use crate::Seed;
use crate::input::Input;
use kite_vmm::harness::Vsock;

/// The guest sends a packet and notifies.
pub const OP_PACKET: u8 = 0;
/// The guest posts receive buffers and notifies.
pub const OP_RX_BUFFERS: u8 = 1;
/// The host listeners accept the connections the device made.
pub const OP_HOST_ACCEPT: u8 = 2;
/// A host stream writes.
pub const OP_HOST_WRITE: u8 = 3;
/// A host stream reads what there is.
pub const OP_HOST_READ: u8 = 4;
/// A host stream shuts down one way or both, or closes.
pub const OP_HOST_SHUTDOWN: u8 = 5;
/// A host program connects to the device and sends a line.
pub const OP_HOST_CONNECT: u8 = 6;
const OPS: u8 = 7;

pub const CID: u64 = 3;
const HOST_CID: u64 = 2;
const HDR_LEN: usize = 44;
const TYPE_STREAM: u16 = 1;
const OP_RW: u16 = 5;
const OP_RST: u16 = 3;
const OP_REQUEST: u16 = 1;
const MAX_PAYLOAD: usize = 64 << 10;
/// Host ports with a listener.
pub const PORTS: [u32; 2] = [1024, 1025];
/// A host port nobody listens on.
pub const NO_PORT: u32 = 1026;
/// Host streams held at once, and host programs connecting in one run (the device's listen
/// backlog takes them all without blocking).
const MAX_STREAMS: usize = 16;
const MAX_HOST_CONNECTS: usize = 32;
const RX: usize = 0;
const TX: usize = 1;
const RX_BUF: u16 = HDR_LEN as u16 + 4096;

/// A packet header (virtio 1.2, 5.10.6), written independently of the device's own code
/// (`vsock/packet.rs`) on purpose: it is the oracle the checks decode the device's packets with,
/// so a mistake in the device's layout cannot hide behind the same mistake here. Keep it separate.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Self {
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        Self {
            src_cid: u64::from(u32_at(0)) | (u64::from(u32_at(4)) << 32),
            dst_cid: u64::from(u32_at(8)) | (u64::from(u32_at(12)) << 32),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// Sockets of one thread's runs: the device's path and the host listeners beside it.
struct Place {
    dir: PathBuf,
    socket: PathBuf,
    listeners: Vec<UnixListener>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn place() -> Place {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("kite-fuzz-vsock-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("a directory for the vsock sockets");
    let socket = dir.join("v");
    let listeners = PORTS
        .iter()
        .map(|port| {
            let l = UnixListener::bind(dir.join(format!("v_{port}"))).expect("host listener");
            l.set_nonblocking(true).expect("non-blocking listener");
            l
        })
        .collect();
    Place {
        dir,
        socket,
        listeners,
    }
}

thread_local! {
    static PLACE: RefCell<Option<Place>> = const { RefCell::new(None) };
}

/// What the harness knows of the guest side: the last connection the device asked for.
#[derive(Default)]
struct Known {
    /// (guest port, host port) of the last REQUEST from the device.
    request: Option<(u32, u32)>,
}

/// Check every packet the device gave the guest; note its connection requests.
fn check_rx(driver: &mut Driver, known: &mut Known) {
    for used in driver.used.drain(..) {
        if used.queue != RX || used.len == 0 {
            continue;
        }
        let len = used.len as usize;
        assert!(len >= HDR_LEN, "a {len}-byte packet");
        let hdr = Hdr::decode(&used.data);
        // A reset answering a packet to another CID comes from that CID.
        let from = if hdr.op == OP_RST {
            hdr.src_cid
        } else {
            HOST_CID
        };
        assert_eq!(
            (hdr.src_cid, hdr.dst_cid, hdr.kind),
            (from, CID, TYPE_STREAM),
            "{hdr:?}"
        );
        assert!((1..=7).contains(&hdr.op), "{hdr:?}");
        assert_eq!(hdr.len as usize, len - HDR_LEN, "{hdr:?}");
        if hdr.op == OP_RW {
            assert!(hdr.len > 0 && hdr.len as usize <= MAX_PAYLOAD, "{hdr:?}");
        } else {
            assert_eq!(hdr.len, 0, "{hdr:?}");
        }
        if hdr.op == OP_RST {
            assert_eq!((hdr.buf_alloc, hdr.fwd_cnt), (0, 0), "{hdr:?}");
        }
        if hdr.op == OP_REQUEST {
            known.request = Some((hdr.dst_port, hdr.src_port));
        }
    }
}

pub fn run(data: &[u8]) {
    PLACE.with(|p| {
        let mut p = p.borrow_mut();
        let place = p.get_or_insert_with(place);
        run_in(place, data);
    });
}

fn run_in(place: &Place, data: &[u8]) {
    // Connections a previous run left in the listeners' backlogs go first.
    for l in &place.listeners {
        while l.accept().is_ok() {}
    }
    let Ok(vsock) = Vsock::new(CID as u32, &place.socket) else {
        panic!("vsock device on {}", place.socket.display());
    };
    let Some(mut driver) = Driver::new(Arc::new(Mutex::new(vsock))) else {
        return;
    };
    driver.record_used = true;
    let mut input = Input::new(data);
    let mut streams: Vec<UnixStream> = Vec::new();
    let mut connects = 0;
    let mut known = Known::default();
    let mut sink = vec![0u8; 64 << 10];
    driver.run(&mut input, OPS, |driver, op, input| {
        // What the device sent while the driver's own operations ran.
        check_rx(driver, &mut known);
        match op {
            OP_PACKET => {
                let (mut hdr, len_given) = packet(input, &known);
                let split = input.u8();
                let payload = input.long_bytes();
                if !len_given {
                    hdr.len = payload.len() as u32;
                }
                let mut bytes = hdr.encode().to_vec();
                bytes.extend_from_slice(payload);
                let segs = match usize::from(split) {
                    0 => vec![Seg::r(&bytes)],
                    at if at < bytes.len() => vec![Seg::r(&bytes[..at]), Seg::r(&bytes[at..])],
                    _ => vec![Seg::r(&bytes[..HDR_LEN]), Seg::r(&bytes[HDR_LEN..])],
                };
                driver.post(TX, &segs, false);
                driver.notify(TX);
            }
            OP_RX_BUFFERS => {
                let n = input.u8() % 8 + 1;
                let len = match input.u8() {
                    0 => RX_BUF,
                    b => u16::from(b) * 4,
                };
                for _ in 0..n {
                    driver.post(RX, &[Seg::w(len)], false);
                }
                driver.notify(RX);
            }
            OP_HOST_ACCEPT => {
                for l in &place.listeners {
                    while let Ok((s, _)) = l.accept() {
                        if streams.len() < MAX_STREAMS && s.set_nonblocking(true).is_ok() {
                            streams.push(s);
                        }
                    }
                }
            }
            OP_HOST_WRITE => {
                let k = usize::from(input.u8());
                let data = input.long_bytes();
                if let Some(s) = streams.get_mut(k % MAX_STREAMS) {
                    let _ = s.write(data);
                }
            }
            OP_HOST_READ => {
                let k = usize::from(input.u8());
                if let Some(s) = streams.get_mut(k % MAX_STREAMS) {
                    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                }
            }
            OP_HOST_SHUTDOWN => {
                let k = usize::from(input.u8()) % MAX_STREAMS;
                let how = input.u8() % 4;
                if k < streams.len() {
                    match how {
                        0 => drop(streams.swap_remove(k)),
                        1 => drop(streams[k].shutdown(Shutdown::Read)),
                        2 => drop(streams[k].shutdown(Shutdown::Write)),
                        _ => drop(streams[k].shutdown(Shutdown::Both)),
                    }
                }
            }
            _ => {
                let line = match input.u8() % 3 {
                    0 => format!("CONNECT {}\n", 1000 + u32::from(input.u8() % 4)).into_bytes(),
                    1 => format!("CONNECT {}\n", input.u32()).into_bytes(),
                    _ => input.short_bytes().to_vec(),
                };
                if connects < MAX_HOST_CONNECTS
                    && streams.len() < MAX_STREAMS
                    && let Ok(mut s) = UnixStream::connect(&place.socket)
                {
                    connects += 1;
                    let _ = s.set_nonblocking(true);
                    let _ = s.write(&line);
                    streams.push(s);
                }
            }
        }
        check_rx(driver, &mut known);
    });
    check_rx(&mut driver, &mut known);
}

/// A guest packet from the input: mostly a stream packet from the guest to the host on ports
/// that mean something here; the operation, flags and credit are the input's. Also says whether the input gave the length field (else it is the payload's).
fn packet(input: &mut Input, known: &Known) -> (Hdr, bool) {
    let op = u16::from(input.u8() % 9);
    let ports = input.u8();
    let flags = u32::from(input.u8());
    let buf_alloc = input.u32();
    let fwd_cnt = input.u32();
    let variant = input.u8();
    let (mut src_port, mut dst_port) = (1000 + u32::from(ports & 3), {
        match (ports >> 2) % 4 {
            0 => PORTS[0],
            1 => PORTS[1],
            2 => NO_PORT,
            _ => u32::MAX,
        }
    });
    if ports & 0x10 != 0
        && let Some((guest, host)) = known.request
    {
        (src_port, dst_port) = (guest, host);
    }
    let mut hdr = Hdr {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        kind: TYPE_STREAM,
        op,
        flags,
        buf_alloc,
        fwd_cnt,
    };
    // Fields a well-behaved driver never gets wrong, when the input wants them wrong.
    if variant & 1 != 0 {
        hdr.src_cid = input.u64();
        hdr.dst_cid = input.u64();
        hdr.kind = input.u16();
    }
    if variant & 2 != 0 {
        hdr.len = input.u32();
    }
    if variant & 4 != 0 {
        hdr.src_port = input.u32();
        hdr.dst_port = input.u32();
    }
    (hdr, variant & 2 != 0)
}

/// Builds vsock inputs.
pub struct VsockScript(Script);

impl VsockScript {
    pub fn new(setup: &Setup) -> Self {
        Self(Script::new(setup))
    }

    /// A well-formed packet on the ports `ports` selects (see [`packet`]), carrying
    /// `payload`.
    pub fn packet(&mut self, op: u16, ports: u8, buf_alloc: u32, payload: &[u8]) -> &mut Self {
        self.packet_with(op, ports, 0, buf_alloc, 0, 2, payload.len() as u32, payload)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn packet_with(
        &mut self,
        op: u16,
        ports: u8,
        flags: u8,
        buf_alloc: u32,
        fwd_cnt: u32,
        variant: u8,
        len: u32,
        payload: &[u8],
    ) -> &mut Self {
        self.0.device_op(OP_PACKET);
        let w = self.0.fields();
        w.u8(op as u8)
            .u8(ports)
            .u8(flags)
            .u32(buf_alloc)
            .u32(fwd_cnt)
            .u8(variant);
        if variant & 1 != 0 {
            // A datagram packet between the right CIDs.
            w.u64(CID).u64(HOST_CID).u16(3);
        }
        if variant & 2 != 0 {
            w.u32(len);
        }
        if variant & 4 != 0 {
            w.u32(1000).u32(NO_PORT);
        }
        w.u8(0).long_bytes(payload);
        self
    }

    pub fn rx_buffers(&mut self, n: u8) -> &mut Self {
        self.0.device_op(OP_RX_BUFFERS);
        self.0.fields().u8(n - 1).u8(0);
        self
    }

    pub fn op(&mut self, op: u8) -> &mut Self {
        self.0.device_op(op);
        self
    }

    pub fn host_write(&mut self, k: u8, data: &[u8]) -> &mut Self {
        self.0.device_op(OP_HOST_WRITE);
        self.0.fields().u8(k).long_bytes(data);
        self
    }

    pub fn host_shutdown(&mut self, k: u8, how: u8) -> &mut Self {
        self.0.device_op(OP_HOST_SHUTDOWN);
        self.0.fields().u8(k).u8(how);
        self
    }

    pub fn host_connect(&mut self, guest_port: u8) -> &mut Self {
        self.0.device_op(OP_HOST_CONNECT);
        self.0.fields().u8(0).u8(guest_port);
        self
    }

    pub fn backend(&mut self) -> &mut Self {
        self.0.backend();
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        self.0.finish()
    }
}

pub fn seeds() -> Vec<Seed> {
    const OP_RESPONSE: u16 = 2;
    const OP_SHUTDOWN: u16 = 4;
    const OP_CREDIT_UPDATE: u16 = 6;
    const OP_CREDIT_REQUEST: u16 = 7;
    let setup = Setup::all(3, 64, false);
    let mut seeds = Vec::new();

    // The guest connects to host port 1024, sends, gets data back, shuts down.
    let mut s = VsockScript::new(&setup);
    s.rx_buffers(8)
        .packet(OP_REQUEST, 0, 64 << 10, &[])
        .op(OP_HOST_ACCEPT)
        .packet(OP_RW, 0, 64 << 10, b"hello host")
        .op(OP_HOST_READ)
        .host_write(0, b"hello guest")
        .backend()
        .packet(OP_CREDIT_REQUEST, 0, 64 << 10, &[])
        .packet(OP_CREDIT_UPDATE, 0, 64 << 10, &[])
        .packet_with(OP_SHUTDOWN, 0, 3, 64 << 10, 0, 0, 0, &[])
        .host_shutdown(0, 3)
        .backend()
        .packet(OP_RST, 0, 0, &[]);
    seeds.push(Seed {
        name: "guest-connects",
        data: s.finish(),
    });

    // A host program asks for guest port 1001; the guest accepts and data flows both ways.
    let mut s = VsockScript::new(&Setup::all(3, 32, true));
    s.rx_buffers(4)
        .host_connect(1)
        .backend()
        .packet(OP_RESPONSE, 0x11, 4096, &[])
        .backend()
        .packet(OP_RW, 0x11, 4096, b"from the guest")
        .host_write(0, &[7u8; 5000])
        .backend()
        .rx_buffers(4)
        .host_shutdown(0, 0)
        .backend();
    seeds.push(Seed {
        name: "host-connects",
        data: s.finish(),
    });

    // Nobody listening, an unknown operation, a bad length, a datagram socket, no buffers.
    let mut s = VsockScript::new(&setup);
    s.packet(OP_REQUEST, 0x08, 4096, &[])
        .packet(42, 0, 0, &[])
        .packet_with(OP_RW, 0, 0, 4096, 0, 2, 100, b"short")
        .packet_with(OP_REQUEST, 0, 0, 4096, 0, 1, 0, &[])
        .rx_buffers(2)
        .backend();
    seeds.push(Seed {
        name: "resets",
        data: s.finish(),
    });
    seeds
}
