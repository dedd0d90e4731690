use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kite_testkit::{Need, skip};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use super::*;
use crate::bus::BusDevice;
use crate::devices::virtio::tap::testing;
use crate::devices::virtio::testutil::{Desc, Guest, MEM_SIZE};

const QSIZE: u16 = 16;
const MAC: [u8; 6] = [0x02, 0x4b, 0x49, 0x54, 0x45, 0x01];

/// A backend on one end of a datagram socket pair (which keeps frame boundaries, as a tap
/// does); the test holds the other end as "the host's network".
struct Fake {
    sock: UnixDatagram,
    offload: Arc<AtomicU32>,
}

impl AsRawFd for Fake {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl NetBackend for Fake {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.sock.send(frame)
    }
    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.offload.store(flags, Ordering::SeqCst);
        Ok(())
    }
    fn name(&self) -> &str {
        "fake"
    }
}

struct Setup {
    g: Guest,
    host: UnixDatagram,
    offload: Arc<AtomicU32>,
    stats: Arc<NetStats>,
}

fn setup() -> Setup {
    let (dev, host) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    let offload = Arc::new(AtomicU32::new(u32::MAX));
    let fake = Fake {
        sock: dev,
        offload: offload.clone(),
    };
    let net = Net::new(Box::new(fake), MAC).unwrap();
    let stats = net.stats();
    let mut g = Guest::new(Arc::new(Mutex::new(net)));
    g.start(QSIZE);
    Setup {
        g,
        host,
        offload,
        stats,
    }
}

/// A virtio-net header with `flags` and `gso_type`, the way a driver fills it for a TSO frame.
fn header(flags: u8, gso_type: u8) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
    h[4..6].copy_from_slice(&1448u16.to_le_bytes()); // gso_size
    h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
    h[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    h
}

/// An Ethernet frame of `len` bytes from `src` to broadcast, with a local ethertype and
/// payload bytes `tag`.
fn frame(len: usize, src: [u8; 6], tag: u8) -> Vec<u8> {
    let mut f = vec![tag; len];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f
}

/// What a frame looks like in the guest: num_buffers set to 1.
fn received(hdr: [u8; 12], frame: &[u8]) -> Vec<u8> {
    let mut v = hdr.to_vec();
    v[10..12].copy_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(frame);
    v
}

fn post_rx(g: &mut Guest, len: u32) -> (u64, u16) {
    let buf = g.alloc(len);
    let head = g.push(0, &[Desc::w(buf, len)]);
    (buf, head)
}

fn host_recv(host: &UnixDatagram) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_FRAME + 100];
    let n = host.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[test]
fn config_space_holds_the_mac_and_the_offloads_are_offered() {
    let Setup { mut g, .. } = setup();
    let mut mac = [0u8; 8];
    g.transport.read(0x100, &mut mac);
    assert_eq!(mac[..6], MAC);
    assert_eq!(mac[6..], [0, 0]);
    let features = g.device_features();
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
    ] {
        assert_ne!(features & (1 << bit), 0, "feature {bit} not offered");
    }
    // Neither UFO nor mergeable buffers: the device does not handle them.
    for bit in [10, 14, 15] {
        assert_eq!(features & (1 << bit), 0, "feature {bit} offered");
    }
}

#[test]
fn tap_offloads_follow_the_features_the_driver_accepted() {
    let Setup { mut g, offload, .. } = setup();
    // start() accepted everything.
    let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    assert_eq!(offload.load(Ordering::SeqCst), all);

    let v1 = 1u64 << VIRTIO_F_VERSION_1;
    let activate = |g: &mut Guest, features: u64| {
        assert!(g.negotiate(v1 | features));
        g.setup_queue(0, QSIZE);
        g.setup_queue(1, QSIZE);
        g.set_status(virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK);
    };
    activate(&mut g, 1 << VIRTIO_NET_F_MAC);
    assert_eq!(offload.load(Ordering::SeqCst), 0);
    activate(
        &mut g,
        (1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_GUEST_TSO4),
    );
    assert_eq!(
        offload.load(Ordering::SeqCst),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4
    );
    // TSO without checksum offload (a driver breaking the spec) asks the tap for nothing.
    activate(&mut g, 1 << VIRTIO_NET_F_GUEST_TSO6);
    assert_eq!(offload.load(Ordering::SeqCst), 0);
}

#[test]
fn a_transmitted_frame_reaches_the_backend_intact_with_its_header() {
    let Setup { mut g, host, .. } = setup();
    let hdr = header(1, 1); // NEEDS_CSUM, GSO TCPv4
    let f = frame(3000, MAC, 0x5a);
    // Header and frame split across descriptors in a way no layout rule expects.
    let a = g.buf(&[&hdr[..], &f[..5]].concat());
    let b = g.buf(&f[5..2000]);
    let c = g.buf(&f[2000..]);
    let head = g.push(1, &[Desc::r(a, 17), Desc::r(b, 1995), Desc::r(c, 1000)]);
    g.kick(1);
    assert_eq!(g.used_idx(1), 1);
    assert_eq!(g.used(1, 0), (u32::from(head), 0));
    assert!(g.irq_fired());
    assert_eq!(host_recv(&host).unwrap(), [&hdr[..], &f[..]].concat());
    assert!(host_recv(&host).is_none());
}

#[test]
fn indirect_descriptor_tables_work_both_ways() {
    let Setup { mut g, host, .. } = setup();
    let f = [&[0u8; 12][..], &frame(500, MAC, 8)].concat();
    let a = g.buf(&f[..12]);
    let b = g.buf(&f[12..]);
    g.push_indirect(1, &[Desc::r(a, 12), Desc::r(b, 500)]);
    g.kick(1);
    assert_eq!(host_recv(&host).unwrap(), f);
    let h = g.alloc(12);
    let d = g.alloc(1514);
    g.push_indirect(0, &[Desc::w(h, 12), Desc::w(d, 1514)]);
    g.kick(0);
    host.send(&f).unwrap();
    g.run_events();
    assert_eq!(g.used(0, 0).1, 512);
    assert_eq!(g.bytes(d, 500), f[12..]);
}

#[test]
fn a_received_frame_reaches_the_guest_buffer() {
    let Setup { mut g, host, .. } = setup();
    let (buf, head) = post_rx(&mut g, 1526);
    g.kick(0);
    let hdr = header(2, 0); // DATA_VALID
    let f = frame(1000, [2, 0, 0, 0, 0, 9], 0xa5);
    host.send(&[&hdr[..], &f[..]].concat()).unwrap();
    g.run_events();
    assert_eq!(g.used_idx(0), 1);
    assert_eq!(g.used(0, 0), (u32::from(head), 1012));
    assert!(g.irq_fired());
    assert_eq!(g.bytes(buf, 1012), received(hdr, &f));
    assert_eq!(g.bytes(buf + 1012, 8), [0; 8]);
}

#[test]
fn a_frame_is_spread_over_a_chain_of_small_buffers() {
    let Setup { mut g, host, .. } = setup();
    let a = g.alloc(12);
    let b = g.alloc(700);
    let c = g.alloc(900);
    g.push(0, &[Desc::w(a, 12), Desc::w(b, 700), Desc::w(c, 900)]);
    g.kick(0);
    let f = frame(1500, [2, 0, 0, 0, 0, 9], 7);
    host.send(&[&[0u8; 12][..], &f[..]].concat()).unwrap();
    g.run_events();
    assert_eq!(g.used(0, 0).1, 1512);
    let got = [g.bytes(a, 12), g.bytes(b, 700), g.bytes(c, 800)].concat();
    assert_eq!(got, received([0; 12], &f));
}

#[test]
fn receive_waits_for_buffers_without_dropping_then_delivers_in_order() {
    let Setup { mut g, host, .. } = setup();
    let frames: Vec<Vec<u8>> = (0..3)
        .map(|i| [&[0u8; 12][..], &frame(100 + i, [2, 0, 0, 0, 0, 9], i as u8)].concat())
        .collect();
    for f in &frames {
        host.send(f).unwrap();
    }
    // The tap is readable but the ring is empty: the device stops watching the tap instead of
    // spinning or dropping.
    g.run_events();
    assert_eq!(g.run_events(), 0, "device keeps waking with no buffers");
    assert_eq!(g.used_idx(0), 0);

    let bufs: Vec<u64> = (0..3).map(|_| post_rx(&mut g, 1526).0).collect();
    g.kick(0);
    assert_eq!(g.used_idx(0), 3);
    for (i, (buf, f)) in bufs.iter().zip(&frames).enumerate() {
        assert_eq!(g.used(0, i as u16).1, f.len() as u32);
        let mut want = f.clone();
        want[10] = 1;
        assert_eq!(g.bytes(*buf, f.len()), want, "frame {i}");
    }

    // One buffer for two frames: the second waits in the backend for the next buffer.
    host.send(&frames[0]).unwrap();
    host.send(&frames[1]).unwrap();
    post_rx(&mut g, 1526);
    g.kick(0);
    g.run_events();
    assert_eq!(g.used_idx(0), 4);
    let (buf, _) = post_rx(&mut g, 1526);
    g.kick(0);
    assert_eq!(g.used_idx(0), 5);
    assert_eq!(g.used(0, 4).1, frames[1].len() as u32);
    assert_eq!(g.bytes(buf + 12, frames[1].len() - 12), frames[1][12..]);
}

#[test]
fn a_frame_larger_than_the_buffer_is_dropped_and_the_buffer_kept() {
    let Setup { mut g, host, .. } = setup();
    let (buf, head) = post_rx(&mut g, 200);
    g.kick(0);
    let big = [&[0u8; 12][..], &frame(1500, [2, 0, 0, 0, 0, 9], 1)].concat();
    let small = [&[0u8; 12][..], &frame(150, [2, 0, 0, 0, 0, 9], 2)].concat();
    host.send(&big).unwrap();
    host.send(&small).unwrap();
    g.run_events();
    assert_eq!(g.used_idx(0), 1);
    assert_eq!(g.used(0, 0), (u32::from(head), 162));
    assert_eq!(g.bytes(buf + 12, 150), small[12..]);
    assert!(!g.needs_reset());
}

#[test]
fn a_full_ring_of_transmits_is_sent_in_turns_and_waits_for_a_full_backend() {
    let Setup { mut g, host, .. } = setup();
    // Datagrams this large fill the socket's send buffer after a few.
    let frames: Vec<Vec<u8>> = (0..QSIZE as usize)
        .map(|i| [&[0u8; 12][..], &frame(60_000, MAC, i as u8)].concat())
        .collect();
    for f in &frames {
        let a = g.buf(f);
        g.push(1, &[Desc::r(a, f.len() as u32)]);
    }
    g.kick(1);
    let sent_first = g.used_idx(1);
    assert!(
        0 < sent_first && sent_first < QSIZE,
        "{sent_first} frames sent"
    );
    assert!(g.irq_fired());
    let mut got = Vec::new();
    for _ in 0..100 {
        while let Some(f) = host_recv(&host) {
            got.push(f);
        }
        g.run_events();
        if got.len() == frames.len() {
            break;
        }
    }
    assert_eq!(g.used_idx(1), QSIZE);
    assert_eq!(got.len(), frames.len());
    for (i, (a, b)) in got.iter().zip(&frames).enumerate() {
        assert!(a == b, "frame {i} differs");
    }
}

/// Post a malformed transmit chain and check that nothing is sent and the chain comes back
/// with nothing written; then a good frame still goes through.
#[test]
fn frames_and_bytes_are_counted_under_firecrackers_names() {
    let Setup {
        mut g, host, stats, ..
    } = setup();
    let count = |name: &str| {
        stats
            .snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap()
    };
    let f = [&[0u8; 12][..], &frame(500, MAC, 8)].concat();
    let a = g.buf(&f);
    g.push(1, &[Desc::r(a, f.len() as u32)]);
    g.kick(1);
    assert_eq!(host_recv(&host).unwrap(), f);
    // Too short to be a frame.
    g.push(1, &[Desc::r(a, 20)]);
    g.kick(1);
    post_rx(&mut g, 1526);
    g.kick(0);
    host.send(&f[..300]).unwrap();
    g.run_events();
    assert_eq!(g.used_idx(0), 1);
    // Byte counts include the virtio-net header, as Firecracker's do.
    assert_eq!(count("tx_bytes_count"), 512);
    assert_eq!(count("tx_packets_count"), 1);
    assert_eq!(count("tx_count"), 1);
    assert_eq!(count("tx_malformed_frames"), 1);
    assert_eq!(count("rx_bytes_count"), 300);
    assert_eq!(count("rx_packets_count"), 1);
    assert_eq!(count("rx_count"), 1);
    assert_eq!(count("tap_read_fails") + count("tap_write_fails"), 0);
}

fn refused_tx(g: &mut Guest, host: &UnixDatagram, descs: &[Desc]) {
    let before = g.used_idx(1);
    let head = g.push(1, descs);
    g.kick(1);
    assert_eq!(g.used_idx(1), before.wrapping_add(1));
    assert_eq!(g.used(1, before), (u32::from(head), 0));
    assert!(host_recv(host).is_none(), "malformed chain was sent");
    assert!(!g.needs_reset());
    let f = [&[0u8; 12][..], &frame(60, MAC, 3)].concat();
    let a = g.buf(&f);
    g.push(1, &[Desc::r(a, f.len() as u32)]);
    g.kick(1);
    assert_eq!(host_recv(host).unwrap(), f);
}

#[test]
fn malformed_transmit_chains_are_returned_unsent() {
    let Setup { mut g, host, .. } = setup();
    let f = [&[0u8; 12][..], &frame(60, MAC, 1)].concat();
    let a = g.buf(&f);
    let w = g.alloc(64);
    // A device-writable buffer in a transmit chain.
    refused_tx(&mut g, &host, &[Desc::r(a, 72), Desc::w(w, 64)]);
    // Only device-writable; device-readable after device-writable.
    refused_tx(&mut g, &host, &[Desc::w(w, 64)]);
    refused_tx(&mut g, &host, &[Desc::w(w, 64), Desc::r(a, 72)]);
    // Shorter than a virtio-net header and an Ethernet header.
    refused_tx(&mut g, &host, &[Desc::r(a, 25)]);
    refused_tx(&mut g, &host, &[Desc::r(a, 0)]);
    // Partly outside guest RAM.
    refused_tx(&mut g, &host, &[Desc::r(a, 72), Desc::r(MEM_SIZE - 8, 64)]);
    // Longer than any frame a tap takes.
    let big = g.alloc(MAX_FRAME as u32 + 1);
    refused_tx(&mut g, &host, &[Desc::r(big, MAX_FRAME as u32 + 1)]);
}

#[test]
fn unwalkable_chains_make_the_device_need_a_reset_and_a_reset_recovers() {
    let Setup { mut g, host, .. } = setup();
    let next = VRING_DESC_F_NEXT as u16;
    let f = [&[0u8; 12][..], &frame(60, MAC, 1)].concat();
    let a = g.buf(&f);
    // A descriptor that points at itself.
    g.push_raw(1, &[(a, 72, next, 0)]);
    g.kick(1);
    assert!(g.needs_reset());
    assert_eq!(g.used_idx(1), 0);
    assert!(host_recv(&host).is_none());
    // Broken, the device leaves both rings alone, even with frames waiting.
    host.send(&f).unwrap();
    post_rx(&mut g, 1526);
    g.kick(0);
    assert_eq!(g.used_idx(0), 0);

    g.start(QSIZE);
    assert!(!g.needs_reset());
    // The frame waited in the backend through the reset.
    let (buf, _) = post_rx(&mut g, 1526);
    g.kick(0);
    assert_eq!(g.used_idx(0), 1);
    assert_eq!(g.bytes(buf + 12, 60), f[12..]);

    // A next index past the table, a chain longer than the queue, an available index too far
    // ahead: each needs a reset.
    g.push_raw(1, &[(a, 72, next, QSIZE + 3)]);
    g.kick(1);
    assert!(g.needs_reset());
    g.start(QSIZE);
    let table: Vec<_> = (0..QSIZE + 1)
        .map(|i| (a, 4, next, (i + 1) % QSIZE))
        .collect();
    g.push_raw(1, &table[..QSIZE as usize]);
    g.kick(1);
    assert!(g.needs_reset());
    g.start(QSIZE);
    g.set_avail_idx(0, QSIZE + 1);
    g.kick(0);
    assert!(g.needs_reset());
}

#[test]
fn malformed_receive_chains_are_returned_empty_and_the_frame_kept() {
    let Setup { mut g, host, .. } = setup();
    let next = VRING_DESC_F_NEXT as u16;
    let write = VRING_DESC_F_WRITE as u16;
    let r = g.alloc(1526);
    let w = g.alloc(1526);
    let good = g.alloc(1526);
    // Device-readable, too short for a header, outside guest RAM, readable after writable.
    g.push_raw(0, &[(r, 1526, 0, 0)]);
    g.push_raw(0, &[(w, 11, write, 0)]);
    g.push_raw(0, &[(MEM_SIZE - 100, 1526, write, 0)]);
    g.push_raw(0, &[(w, 100, write | next, 4), (r, 100, 0, 0)]);
    g.push(0, &[Desc::w(good, 1526)]);
    g.kick(0);
    let f = [&[0u8; 12][..], &frame(80, [2, 0, 0, 0, 0, 9], 4)].concat();
    host.send(&f).unwrap();
    g.run_events();
    assert_eq!(g.used_idx(0), 5);
    for i in 0..4 {
        assert_eq!(g.used(0, i).1, 0, "bad chain {i} was used");
    }
    assert_eq!(g.used(0, 4).1, 92);
    assert_eq!(g.bytes(good + 12, 80), f[12..]);
    assert_eq!(g.bytes(r, 16), [0; 16]);
    assert!(!g.needs_reset());
}

#[test]
fn reset_stops_receiving_until_the_driver_is_back() {
    let Setup { mut g, host, .. } = setup();
    g.write(0x70, 0);
    let f = [&[0u8; 12][..], &frame(80, [2, 0, 0, 0, 0, 9], 4)].concat();
    host.send(&f).unwrap();
    assert_eq!(g.run_events(), 0, "a reset device watches its tap");
    g.start(QSIZE);
    let (buf, _) = post_rx(&mut g, 1526);
    g.kick(0);
    assert_eq!(g.used_idx(0), 1);
    assert_eq!(g.bytes(buf + 12, 80), f[12..]);
}

/// The real thing: a tap in a network namespace of this test thread, with a packet socket on
/// the host side of it.
#[test]
fn frames_pass_through_a_real_tap_both_ways() {
    if let Err(why) = testing::isolate() {
        let test = concat!(module_path!(), "::frames_pass_through_a_real_tap_both_ways");
        return skip(test, Need::Tap, &why);
    }
    let name = "kite-n0";
    let tap = Tap::open(name).unwrap();
    // No IPv6 autoconfiguration traffic on the link (best effort: the sysctl may be missing).
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    testing::set_up(name).unwrap();
    let sock = testing::PacketSocket::bind(name).unwrap();
    let net = Net::new(Box::new(tap), MAC).unwrap();
    let mut g = Guest::new(Arc::new(Mutex::new(net)));
    g.start(QSIZE);

    // Guest -> host: the kernel takes the header off and sees the frame.
    let f = frame(200, MAC, 0x11);
    let a = g.buf(&[&[0u8; 12][..], &f[..]].concat());
    g.push(1, &[Desc::r(a, 212)]);
    g.kick(1);
    assert_eq!(g.used_idx(1), 1);
    let mut buf = vec![0u8; 4096];
    let got = loop {
        let n = sock.recv(&mut buf).expect("frame did not reach the host");
        if buf[12..14] == [0x88, 0xb5] {
            break buf[..n].to_vec();
        }
    };
    assert_eq!(got, f);

    // Host -> guest: the frame arrives with a header the kernel filled in.
    let bufs: Vec<u64> = (0..4).map(|_| post_rx(&mut g, 1526).0).collect();
    g.kick(0);
    let mut reply = frame(300, [2, 0, 0, 0, 0, 7], 0x22);
    reply[0..6].copy_from_slice(&MAC);
    sock.send(&reply).unwrap();
    let mut found = None;
    for _ in 0..100 {
        g.run_events();
        found = (0..g.used_idx(0)).find(|&i| {
            let b = bufs[usize::from(i)];
            g.bytes(b + 24, 2) == [0x88, 0xb5]
        });
        if found.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let i = found.expect("frame did not reach the guest");
    assert_eq!(g.used(0, i).1, 312);
    let b = bufs[usize::from(i)];
    assert_eq!(g.bytes(b, 12), received([0; 12], &[]));
    assert_eq!(g.bytes(b + 12, 300), reply);
}

/// A backend that is always readable but whose reads always fail, as a broken tap might.
struct Broken(UnixDatagram);

impl AsRawFd for Broken {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for Broken {
    fn read_frame(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(libc::EIO))
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        Ok(frame.len())
    }
    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
    fn name(&self) -> &str {
        "broken"
    }
}

#[test]
fn a_failing_backend_read_does_not_spin_the_event_loop() {
    let (dev, host) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    host.send(b"makes the backend readable for good").unwrap();
    let net = Net::new(Box::new(Broken(dev)), MAC).unwrap();
    let mut g = Guest::new(Arc::new(Mutex::new(net)));
    g.start(QSIZE);
    post_rx(&mut g, 1526);
    g.kick(0);
    g.run_events();
    assert_eq!(
        g.run_events(),
        0,
        "device keeps waking on a backend it cannot read"
    );
    assert_eq!(g.used_idx(0), 0, "the buffer stays with the device");
    assert!(!g.needs_reset());
}

#[test]
fn event_idx_receive_asks_for_buffers_only_when_it_ran_out() {
    let (dev, host) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    let fake = Fake {
        sock: dev,
        offload: Arc::new(AtomicU32::new(0)),
    };
    let net = Net::new(Box::new(fake), MAC).unwrap();
    let mut g = Guest::new(Arc::new(Mutex::new(net)));
    g.start_event_idx(QSIZE);
    let f = [&[0u8; 12][..], &frame(100, [2, 0, 0, 0, 0, 9], 1)].concat();

    // Two buffers, notified; no frame yet, so the device does not ask for more.
    let old = g.avail_idx(0);
    post_rx(&mut g, 1526);
    post_rx(&mut g, 1526);
    assert!(g.kick_wanted(0, old));
    g.kick(0);
    let behind = g.avail_event(0);
    host.send(&f).unwrap();
    g.run_events();
    assert_eq!(g.used_idx(0), 1);
    assert!(g.irq_fired());
    assert_eq!(
        g.avail_event(0),
        behind,
        "asked for buffers while it had one"
    );
    let (_, kicked) = {
        let buf = g.alloc(1526);
        g.post(0, &[Desc::w(buf, 1526)])
    };
    assert!(!kicked);

    // Frames use up the ring: the device asks for the next buffer, which brings the last frame.
    for _ in 0..3 {
        host.send(&f).unwrap();
    }
    g.run_events();
    assert_eq!(g.used_idx(0), 3);
    assert_eq!(g.avail_event(0), g.avail_idx(0));
    let buf = g.alloc(1526);
    let (_, kicked) = g.post(0, &[Desc::w(buf, 1526)]);
    assert!(kicked);
    assert_eq!(g.used_idx(0), 4);
    assert_eq!(g.bytes(buf + 12, f.len() - 12), f[12..]);
}

#[test]
fn event_idx_a_failing_backend_read_waits_for_the_next_posted_buffer() {
    let (dev, host) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    host.send(b"makes the backend readable for good").unwrap();
    let net = Net::new(Box::new(Broken(dev)), MAC).unwrap();
    let mut g = Guest::new(Arc::new(Mutex::new(net)));
    g.start_event_idx(QSIZE);
    let old = g.avail_idx(0);
    post_rx(&mut g, 1526);
    assert!(g.kick_wanted(0, old));
    g.kick(0);
    g.run_events();
    assert_eq!(
        g.run_events(),
        0,
        "device keeps waking on a backend it cannot read"
    );
    assert_eq!(g.used_idx(0), 0, "the buffer stays with the device");
    // The device paused until the driver posts another buffer, and asked to hear of it although
    // the one it holds is still untaken.
    let buf = g.alloc(1526);
    let (_, kicked) = g.post(0, &[Desc::w(buf, 1526)]);
    assert!(kicked);
    assert!(!g.needs_reset());
}

fn setup_limited(rx: super::super::RateLimit, tx: super::super::RateLimit) -> Setup {
    let (dev, host) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    let offload = Arc::new(AtomicU32::new(u32::MAX));
    let fake = Fake {
        sock: dev,
        offload: offload.clone(),
    };
    let net = Net::with_limits(Box::new(fake), MAC, rx, tx).unwrap();
    let stats = net.stats();
    let mut g = Guest::new(Arc::new(Mutex::new(net)));
    g.start(QSIZE);
    Setup {
        g,
        host,
        offload,
        stats,
    }
}

fn two_ops_per_50_ms() -> super::super::RateLimit {
    super::super::RateLimit {
        bandwidth: None,
        ops: Some(super::super::Bucket {
            size: 2,
            one_time_burst: 0,
            refill_time_ms: 50,
        }),
    }
}

/// Run the event loop until `done` or a second passes.
fn run_until(g: &mut Guest, done: impl Fn(&Guest) -> bool) {
    let t = std::time::Instant::now();
    while !done(g) && t.elapsed() < std::time::Duration::from_secs(1) {
        g.run_events();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn the_transmit_limiter_holds_frames_until_its_tokens_come() {
    let Setup { mut g, host, .. } = setup_limited(Default::default(), two_ops_per_50_ms());
    for tag in 0..4u8 {
        let f = [&header(0, 0)[..], &frame(100, MAC, tag)[..]].concat();
        let a = g.buf(&f);
        g.push(1, &[Desc::r(a, f.len() as u32)]);
    }
    let start = std::time::Instant::now();
    g.kick(1);
    assert_eq!(g.used_idx(1), 2, "two tokens: two frames");
    run_until(&mut g, |g| g.used_idx(1) == 4);
    assert_eq!(g.used_idx(1), 4);
    assert!(start.elapsed() >= std::time::Duration::from_millis(40));
    for _ in 0..4 {
        assert!(host_recv(&host).is_some());
    }
}

#[test]
fn the_receive_limiter_holds_a_frame_and_delivers_it_later_in_order() {
    let Setup { mut g, host, .. } = setup_limited(two_ops_per_50_ms(), Default::default());
    let bufs: Vec<(u64, u16)> = (0..3).map(|_| post_rx(&mut g, 1526)).collect();
    g.kick(0);
    let hdr = header(0, 0);
    for tag in 0..3u8 {
        host.send(&[&hdr[..], &frame(200, [2, 0, 0, 0, 0, 9], tag)[..]].concat())
            .unwrap();
    }
    g.run_events();
    assert_eq!(g.used_idx(0), 2, "two tokens: two frames");
    run_until(&mut g, |g| g.used_idx(0) == 3);
    assert_eq!(g.used_idx(0), 3);
    // The held frame is the third one, intact.
    let (buf, _) = bufs[2];
    assert_eq!(
        g.bytes(buf, 212),
        received(hdr, &frame(200, [2, 0, 0, 0, 0, 9], 2))
    );
}

#[test]
fn the_limiters_go_into_a_snapshot_receive_first_and_come_back() {
    let fake = |sock| Fake {
        sock,
        offload: Arc::new(AtomicU32::new(0)),
    };
    let (a, _host_a) = UnixDatagram::pair().unwrap();
    let (b, _host_b) = UnixDatagram::pair().unwrap();
    let limited = Net::with_limits(
        Box::new(fake(a)),
        MAC,
        Default::default(),
        two_ops_per_50_ms(),
    )
    .unwrap();
    let saved = limited.limiters();
    assert_eq!(saved.len(), 2);
    assert!(saved[0].ops.is_none(), "receive: no limit");
    assert_eq!(
        saved[1].ops.unwrap().config,
        two_ops_per_50_ms().ops.unwrap()
    );
    let mut fresh = Net::new(Box::new(fake(b)), MAC).unwrap();
    let e = fresh.restore_limiters(&saved[..1]).unwrap_err();
    assert!(
        e.contains("1 rate limiters in the snapshot, 2 on this device"),
        "{e}"
    );
    fresh.restore_limiters(&saved).unwrap();
    assert_eq!(fresh.limiters()[1].ops.unwrap().config.size, 2);
    assert!(fresh.limiters()[0].ops.is_none());
}
