//! Fuzz target `virtio_net`: transmit chains (virtio-net header and frame, split any way) to a
//! tap stand-in, and receive buffers filled from frames the "host" sends, with the stand-in
//! failing reads and writes when the input says so. The stand-in is a datagram socket pair,
//! which keeps frame boundaries as a tap does; it checks every frame the device writes.
//!
//! Input: [`Driver::run`]'s, with the operations below.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use super::{Driver, Script, Seg, Setup};
use crate::Seed;
use crate::input::Input;
use kite_vmm::harness::VNET_HDR_LEN;
use kite_vmm::harness::{MAX_FRAME, Net, NetBackend};

/// The host sends a frame (any bytes) for the guest.
pub const OP_HOST_SEND: u8 = 0;
/// The host reads what the guest sent.
pub const OP_HOST_DRAIN: u8 = 1;
/// The stand-in's next read or write fails.
pub const OP_FAULT: u8 = 2;
/// The guest posts receive buffers and notifies.
pub const OP_RX_BUFFERS: u8 = 3;
/// The guest sends a frame and notifies.
pub const OP_TX_FRAME: u8 = 4;
const OPS: u8 = 5;

const ETH_HLEN: usize = 14;
const RX: u8 = 0;
const TX: u8 = 1;

#[derive(Default)]
struct Faults {
    read: VecDeque<io::ErrorKind>,
    write: VecDeque<io::ErrorKind>,
}

/// The tap stand-in.
struct StandIn {
    sock: UnixDatagram,
    faults: Arc<Mutex<Faults>>,
}

fn lock_faults(f: &Mutex<Faults>) -> std::sync::MutexGuard<'_, Faults> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

impl AsRawFd for StandIn {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl NetBackend for StandIn {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        assert!(
            buf.len() >= MAX_FRAME,
            "receive buffer of {} bytes",
            buf.len()
        );
        if let Some(kind) = lock_faults(&self.faults).read.pop_front() {
            return Err(kind.into());
        }
        self.sock.recv(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        assert!(
            (VNET_HDR_LEN + ETH_HLEN..=MAX_FRAME).contains(&frame.len()),
            "the device sent a {}-byte frame",
            frame.len()
        );
        if let Some(kind) = lock_faults(&self.faults).write.pop_front() {
            return Err(kind.into());
        }
        self.sock.send(frame)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        let known = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        assert_eq!(flags & !known, 0, "offloads {flags:#x}");
        assert!(
            flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) == 0 || flags & libc::TUN_F_CSUM != 0,
            "TSO without checksum offload: {flags:#x}"
        );
        Ok(())
    }

    fn name(&self) -> &str {
        "stand-in"
    }
}

/// A stand-in on one end of a socket pair, with no faults planned; for targets that only need
/// a virtio-net device to exist.
pub fn socket_backend(sock: UnixDatagram) -> impl NetBackend {
    StandIn {
        sock,
        faults: Arc::default(),
    }
}

fn error_kind(b: u8) -> io::ErrorKind {
    match b % 4 {
        0 => io::ErrorKind::WouldBlock,
        1 => io::ErrorKind::Interrupted,
        2 => io::ErrorKind::BrokenPipe,
        _ => io::ErrorKind::Other,
    }
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let (dev_sock, host) = UnixDatagram::pair().expect("socket pair");
    dev_sock.set_nonblocking(true).expect("non-blocking");
    host.set_nonblocking(true).expect("non-blocking");
    let faults = Arc::new(Mutex::new(Faults::default()));
    let stand_in = StandIn {
        sock: dev_sock,
        faults: faults.clone(),
    };
    let net = Net::new(Box::new(stand_in), [0x02, 0, 0, 0, 0, 1]).expect("net device");
    let Some(mut driver) = Driver::new(Arc::new(Mutex::new(net))) else {
        return;
    };
    let mut frame = vec![0u8; MAX_FRAME + 64];
    driver.run(&mut input, OPS, |driver, op, input| match op {
        OP_HOST_SEND => {
            let _ = host.send(input.long_bytes());
        }
        OP_HOST_DRAIN => {
            while let Ok(n) = host.recv(&mut frame) {
                assert!(n >= VNET_HDR_LEN + ETH_HLEN, "{n}-byte frame on the wire");
            }
        }
        OP_FAULT => {
            let b = input.u8();
            let mut f = lock_faults(&faults);
            let list = if b & 0x80 != 0 {
                &mut f.write
            } else {
                &mut f.read
            };
            list.push_back(error_kind(b));
        }
        OP_RX_BUFFERS => {
            let n = input.u8() % 8 + 1;
            for _ in 0..n {
                let len = input.u16();
                driver.post(usize::from(RX), &[Seg::w(len)], false);
            }
            driver.notify(usize::from(RX));
        }
        _ => {
            let split = usize::from(input.u8());
            let header = input.bytes(VNET_HDR_LEN);
            let mut bytes = header.to_vec();
            bytes.resize(VNET_HDR_LEN, 0);
            bytes.extend_from_slice(input.long_bytes());
            let segs = match split.min(bytes.len()) {
                0 => vec![Seg::r(&bytes)],
                at => vec![Seg::r(&bytes[..at]), Seg::r(&bytes[at..])],
            };
            driver.post(usize::from(TX), &segs, false);
            driver.notify(usize::from(TX));
        }
    });
}

/// An Ethernet frame of `len` bytes to broadcast, payload bytes `tag`.
pub fn frame(len: usize, tag: u8) -> Vec<u8> {
    let mut f = vec![tag; len];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f
}

/// A virtio-net header for a TCP segmentation offload frame.
pub fn tso_header() -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = 1; // NEEDS_CSUM
    h[1] = 1; // GSO_TCPV4
    h[2..4].copy_from_slice(&54u16.to_le_bytes());
    h[4..6].copy_from_slice(&1448u16.to_le_bytes());
    h[6..8].copy_from_slice(&34u16.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    h
}

fn tx(s: &mut Script, split: u8, header: &[u8; VNET_HDR_LEN], frame: &[u8]) {
    s.device_op(OP_TX_FRAME);
    s.fields().u8(split).bytes(header).long_bytes(frame);
}

fn rx_buffers(s: &mut Script, lens: &[u16]) {
    s.device_op(OP_RX_BUFFERS);
    s.fields().u8(lens.len() as u8 - 1);
    for &len in lens {
        s.fields().u16(len);
    }
}

fn host_send(s: &mut Script, bytes: &[u8]) {
    s.device_op(OP_HOST_SEND);
    s.fields().long_bytes(bytes);
}

pub fn seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let plain = [0u8; VNET_HDR_LEN];
    let mut with_header = plain.to_vec();
    with_header.extend(frame(60, 7));

    let mut s = Script::new(&Setup::all(2, 16, false));
    tx(&mut s, 0, &plain, &frame(60, 1));
    tx(&mut s, 5, &tso_header(), &frame(1514, 2));
    s.device_op(OP_HOST_DRAIN);
    seeds.push(Seed {
        name: "transmit",
        data: s.finish(),
    });

    let mut s = Script::new(&Setup::all(2, 16, false));
    rx_buffers(&mut s, &[1526, 1526, 64]);
    host_send(&mut s, &with_header);
    host_send(&mut s, &[1, 2, 3]);
    s.backend();
    host_send(&mut s, &vec![9u8; 2000]);
    s.backend();
    seeds.push(Seed {
        name: "receive",
        data: s.finish(),
    });

    let mut s = Script::new(&Setup::all(2, 8, true));
    s.device_op(OP_FAULT);
    s.fields().u8(0x80);
    tx(&mut s, 0, &plain, &frame(100, 3));
    s.backend();
    s.device_op(OP_FAULT);
    s.fields().u8(0x03);
    rx_buffers(&mut s, &[100]);
    host_send(&mut s, &with_header);
    s.backend();
    s.chain(0, &[Seg::w(6), Seg::w(200)], true, true);
    seeds.push(Seed {
        name: "faults-event-idx",
        data: s.finish(),
    });

    let mut s = Script::new(&Setup::all(2, 4, false));
    s.chain(1, &[Seg::r(&[0u8; 10])], false, true);
    s.chain(1, &[Seg::r(&plain), Seg::w(20)], false, true);
    s.reset();
    tx(&mut s, 3, &plain, &frame(14, 4));
    seeds.push(Seed {
        name: "bad-chains-and-reset",
        data: s.finish(),
    });
    seeds
}
