use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::device::read_config_bytes;
use crate::devices::virtio::testutil::Guest;

const DEVICE_BIT: u64 = 1 << 5;
const VERSION_1: u64 = 1 << 32;

/// A device that records what the transport does to it.
#[derive(Default)]
struct Dummy {
    config: Vec<u8>,
    active: Option<Active>,
    resets: usize,
    processed: Vec<usize>,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        0x1f
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        DEVICE_BIT
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn activate(&mut self, active: Active) {
        self.active = Some(active);
    }
    fn reset(&mut self) {
        self.active = None;
        self.resets += 1;
    }
    fn process_queue(&mut self, index: usize) -> bool {
        self.processed.push(index);
        false
    }
}

use super::super::device::VirtioDevice;

fn guest() -> (Guest, Arc<Mutex<Dummy>>) {
    let dummy = Arc::new(Mutex::new(Dummy {
        config: vec![0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88],
        ..Dummy::default()
    }));
    (Guest::new(dummy.clone()), dummy)
}

#[test]
fn identifies_as_a_version_2_device() {
    let (mut g, _) = guest();
    assert_eq!(g.read(0x000), 0x7472_6976);
    assert_eq!(g.read(0x004), 2);
    assert_eq!(g.read(0x008), 0x1f);
    assert_eq!(g.read(0x00c), VENDOR);
    assert_eq!(g.device_features(), DEVICE_BIT | TRANSPORT_FEATURES);
    g.write(0x014, 2);
    assert_eq!(g.read(0x010), 0, "feature words past the second are empty");
    let max: Vec<u32> = (0..3)
        .map(|q| {
            g.write(0x030, q);
            g.read(0x034)
        })
        .collect();
    assert_eq!(max, [16, 8, 0]);
}

#[test]
fn features_ok_accepts_offered_features() {
    let (mut g, _) = guest();
    assert!(g.negotiate(VERSION_1 | DEVICE_BIT));
    assert!(g.negotiate(VERSION_1));
    assert!(g.negotiate(VERSION_1 | TRANSPORT_FEATURES));
}

#[test]
fn features_ok_is_refused_for_unknown_features() {
    let (mut g, _) = guest();
    // A device-specific bit the device does not offer.
    assert!(!g.negotiate(VERSION_1 | 1 << 7));
    // A transport bit the device does not offer (VIRTIO_F_RING_PACKED).
    assert!(!g.negotiate(VERSION_1 | 1 << 34));
    // No VIRTIO_F_VERSION_1: a legacy driver.
    assert!(!g.negotiate(DEVICE_BIT));
    // A bit in a feature word that does not exist.
    g.write(0x70, 0);
    g.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
    g.write(0x24, 1);
    g.write(0x20, 1);
    g.write(0x24, 2);
    g.write(0x20, 1);
    g.set_status(VIRTIO_CONFIG_S_FEATURES_OK);
    assert_eq!(g.status() & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    // Nothing sticks across a reset: a good set is accepted again.
    assert!(g.negotiate(VERSION_1));
}

#[test]
fn driver_features_are_frozen_by_features_ok() {
    let (mut g, _) = guest();
    assert!(g.negotiate(VERSION_1));
    g.write(0x24, 0);
    g.write(0x20, 1 << 7);
    assert_eq!(g.transport.driver_features, VERSION_1);
}

#[test]
fn status_bits_must_come_in_order_and_cannot_be_cleared() {
    let (mut g, dummy) = guest();
    g.write(0x70, VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(g.status(), 0, "DRIVER before ACKNOWLEDGE");
    g.write(0x70, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(g.status(), 3);
    g.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(g.status(), 3, "DRIVER_OK before FEATURES_OK");
    assert!(dummy.lock().unwrap().active.is_none());
    g.write(0x70, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    assert_eq!(g.status(), 3, "a driver cannot clear bits");
    g.set_status(VIRTIO_CONFIG_S_FAILED);
    assert_eq!(g.status(), 3 | VIRTIO_CONFIG_S_FAILED);
}

#[test]
fn driver_ok_hands_the_configured_queues_to_the_device() {
    let (mut g, dummy) = guest();
    assert!(g.negotiate(VERSION_1));
    g.setup_queue(0, 8);
    g.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(g.status(), 0x0f);
    let d = dummy.lock().unwrap();
    let active = d.active.as_ref().expect("device activated");
    let q = &active.queues;
    assert_eq!(q.len(), 2);
    assert!(q[0].ready());
    assert_eq!(q[0].size(), 8);
    assert_eq!(q[0].desc_table(), 0x1_0000);
    assert_eq!(q[0].avail_ring(), 0x1_4000);
    assert_eq!(q[0].used_ring(), 0x1_8000);
    assert!(!q[1].ready(), "queue 1 was never set up");
}

#[test]
fn event_idx_is_offered_and_the_queues_follow_what_the_driver_accepted() {
    let (mut g, dummy) = guest();
    let event_idx = 1u64 << VIRTIO_RING_F_EVENT_IDX;
    assert_ne!(g.device_features() & event_idx, 0);
    g.start(8);
    {
        let d = dummy.lock().unwrap();
        let q = &d.active.as_ref().expect("device activated").queues;
        assert!(q.iter().all(|q| !q.event_idx_enabled()));
    }
    // Without EVENT_IDX the device area is left alone at DRIVER_OK; with it, avail_event asks
    // for the first buffer.
    for (features, want) in [(VERSION_1, 0x1234), (VERSION_1 | event_idx, 0)] {
        assert!(g.negotiate(features));
        g.setup_queue(0, 8);
        let avail_event = GuestAddress(0x1_8000 + 4 + 8 * 8);
        g.mem.write_obj(0x1234u16, avail_event).unwrap();
        g.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(g.avail_event(0), want);
        let d = dummy.lock().unwrap();
        let q = &d.active.as_ref().expect("device activated").queues;
        assert_eq!(q[0].event_idx_enabled(), features & event_idx != 0);
    }
}

#[test]
fn queue_registers_are_frozen_after_driver_ok() {
    let (mut g, _) = guest();
    g.start(8);
    g.write(0x30, 0);
    g.write(0x44, 0);
    assert_eq!(g.read(0x44), 1);
    g.write(0x38, 2);
    assert_eq!(g.transport.queues[0].size, 8);
}

#[test]
fn a_bad_queue_at_driver_ok_makes_the_device_need_a_reset() {
    for (what, size, desc) in [
        ("size not a power of two", 6, 0x1_0000u64),
        ("size above the maximum", 32, 0x1_0000),
        ("descriptor table outside RAM", 8, 0x7fff_f000),
        ("misaligned descriptor table", 8, 0x1_0004),
    ] {
        let (mut g, dummy) = guest();
        assert!(g.negotiate(VERSION_1));
        g.setup_queue(0, 8);
        g.write(0x38, size);
        g.write(0x80, desc as u32);
        g.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
        assert!(g.needs_reset(), "{what}");
        assert!(dummy.lock().unwrap().active.is_none(), "{what}");
        assert_eq!(g.read(0x60), VIRTIO_MMIO_INT_CONFIG, "{what}");
        assert!(g.irq_fired(), "{what}");
        // A reset clears the error state and a correct set-up then works.
        g.start(8);
        assert!(!g.needs_reset(), "{what}");
        assert!(dummy.lock().unwrap().active.is_some(), "{what}");
    }
}

#[test]
fn config_space_reads_at_any_width_and_generation_counts_changes() {
    let (mut g, dummy) = guest();
    g.start(8);
    let mut byte = [0u8; 1];
    g.transport.read(0x101, &mut byte);
    assert_eq!(byte, [0x22]);
    let mut word = [0u8; 2];
    g.transport.read(0x102, &mut word);
    assert_eq!(word, [0x33, 0x44]);
    assert_eq!(g.read(0x104), 0x8877_6655);
    assert_eq!(g.read(0x108), 0, "past the end of the config space");

    let before = g.read(0xfc);
    assert_eq!(g.read(0xfc), before, "stable while nothing changes");
    {
        let mut d = dummy.lock().unwrap();
        d.config[0] = 0x99;
        d.active.as_ref().unwrap().interrupt.signal_config_changed();
    }
    assert_ne!(g.read(0xfc), before);
    assert_eq!(g.read(0x100) & 0xff, 0x99);
    assert_eq!(g.read(0x60), VIRTIO_MMIO_INT_CONFIG);
    // Config writes are ignored: no field here is writable.
    g.transport.write(0x100, &[0]);
    assert_eq!(g.read(0x100) & 0xff, 0x99);
}

#[test]
fn interrupt_status_holds_events_until_acked() {
    let (mut g, dummy) = guest();
    g.start(8);
    assert_eq!(g.read(0x60), 0);
    let interrupt = dummy
        .lock()
        .unwrap()
        .active
        .as_ref()
        .unwrap()
        .interrupt
        .clone();
    interrupt.signal_used();
    assert!(g.irq_fired());
    assert_eq!(g.read(0x60), VIRTIO_MMIO_INT_VRING);
    interrupt.signal_config_changed();
    assert_eq!(g.read(0x60), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
    g.write(0x64, VIRTIO_MMIO_INT_VRING);
    assert_eq!(g.read(0x60), VIRTIO_MMIO_INT_CONFIG);
    g.write(0x64, 0xffff_fff0);
    assert_eq!(
        g.read(0x60),
        VIRTIO_MMIO_INT_CONFIG,
        "undefined bits are harmless"
    );
    g.write(0x64, VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(g.read(0x60), 0);
}

#[test]
fn reset_returns_device_and_registers_to_their_initial_state() {
    let (mut g, dummy) = guest();
    g.start(8);
    let resets = dummy.lock().unwrap().resets;
    let interrupt = dummy
        .lock()
        .unwrap()
        .active
        .as_ref()
        .unwrap()
        .interrupt
        .clone();
    interrupt.signal_used();
    interrupt.signal_needs_reset();
    assert!(g.needs_reset());
    g.write(0x70, 0);
    assert_eq!(g.status(), 0);
    assert_eq!(g.read(0x60), 0);
    assert_eq!(g.transport.driver_features, 0);
    g.write(0x30, 0);
    assert_eq!(g.read(0x44), 0, "queue no longer ready");
    let d = dummy.lock().unwrap();
    assert!(d.active.is_none());
    assert_eq!(d.resets, resets + 1);
}

#[test]
fn notify_wakes_the_device_on_the_event_loop() {
    let (mut g, dummy) = guest();
    g.start(8);
    g.kick(1);
    g.kick(0);
    g.kick(7); // no such queue
    assert_eq!(dummy.lock().unwrap().processed, [1, 0]);
}

#[test]
fn narrow_or_misaligned_register_accesses_are_ignored() {
    let (mut g, _) = guest();
    let mut half = [0xffu8; 2];
    g.transport.read(0x000, &mut half);
    assert_eq!(half, [0, 0]);
    g.transport.write(0x070, &[1]);
    g.transport.write(0x071, &1u32.to_le_bytes());
    assert_eq!(g.status(), 0);
    let mut wide = [0xffu8; 8];
    g.transport.read(0x000, &mut wide);
    assert_eq!(wide, [0; 8]);
}

#[test]
fn there_are_no_shared_memory_regions() {
    let (mut g, _) = guest();
    g.write(0xac, 0);
    for offset in [0xb0, 0xb4, 0xb8, 0xbc] {
        assert_eq!(g.read(offset), u32::MAX);
    }
}

#[test]
fn a_queue_size_that_is_not_a_power_of_two_is_a_device_bug() {
    struct Odd;
    impl VirtioDevice for Odd {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[100]
        }
        fn features(&self) -> u64 {
            0
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn activate(&mut self, _: Active) {}
        fn reset(&mut self) {}
        fn process_queue(&mut self, _: usize) -> bool {
            false
        }
    }
    let mem = crate::memory::create(1 << 20).unwrap();
    let irq = Interrupt::new(EventFd::new(0).unwrap());
    let r = MmioTransport::new(Arc::new(Mutex::new(Odd)), mem, irq, vec![]);
    assert_eq!(
        r.err(),
        Some(Error::QueueMaxSize {
            index: 0,
            size: 100
        })
    );
}
