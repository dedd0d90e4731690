//! A hostile guest: the test guest's `hostile-*` scenarios attack Kite's virtio devices (huge
//! descriptor chains, notification storms on empty rings, resets in the middle of I/O, random
//! values in every virtio-mmio register, vsock packets that lie about their length and credit).
//! Kite must stay up, answer as the virtio spec says (each scenario checks the answers and then
//! uses the devices properly once more), the guest must end the VM normally (exit 0), the disk
//! must hold exactly what the guest last wrote properly, and Kite's own memory (its report at
//! exit: peak RSS less guest RAM touched) must stay within 1 MiB of a benign run of the same
//! machine. While the guest spins (notifications, resets, register writes), Kite's CPU time
//! must be on its vCPU thread, not its event loop.

mod common;

use common::watch::{DISK, Machine, Peer, ThreadCpu};

const PEERS: &[(u32, Peer)] = &[(1234, Peer::Echo), (1235, Peer::Stall)];

/// While the guest spins, Kite's own work is on its vCPU thread: its main thread (the event loop
/// with every device) used at most half as much CPU time.
fn spins_on_the_vcpu(cpu: &ThreadCpu) {
    let (vcpu, main) = (cpu.of("fc_vcpu"), cpu.of("kite"));
    assert!(
        vcpu > 0 && main * 2 <= vcpu,
        "while the guest spun Kite's main thread used {} ms of CPU, its vCPU thread {} ms",
        ThreadCpu::ms(main),
        ThreadCpu::ms(vcpu)
    );
}

#[test]
fn huge_descriptor_chains_are_refused_and_the_disk_is_untouched() {
    let Some(m) = Machine::new(
        "huge_descriptor_chains_are_refused_and_the_disk_is_untouched",
        PEERS,
    ) else {
        return;
    };
    let (r, _) = m.attack("hostile-huge", "");
    // Blk: a write from all of RAM, a read into the free block, 15 buffers of all of RAM and a
    // header buffer of all of RAM: IOERR (status 1, one byte written); 200 buffers of all of
    // RAM (over the 4 GiB a chain may hold): DEVICE_NEEDS_RESET; then a proper read.
    assert_eq!(r.get("blk"), "s1u1,s1u1,s1u1,s1u1,reset,ok", "{}", r.result);
    // Rng: the free block and 15 of it get one request's worth (64 KiB); a device-readable
    // buffer and one past RAM are returned unused; 200 free blocks: NEEDS_RESET.
    assert_eq!(r.get("rng"), "u65536,u65536,u0,u0,reset,ok", "{}", r.result);
    m.disk_is(None);
}

#[test]
fn notification_storms_cost_the_guest_not_kite() {
    let Some(m) = Machine::new("notification_storms_cost_the_guest_not_kite", PEERS) else {
        return;
    };
    let (r, cpu) = m.attack("hostile-notify", "kite_ms=3000");
    assert_eq!(r.num("devices"), 3, "{}", r.result);
    assert!(r.num("notifies") > 1000, "{}", r.result);
    assert_eq!(r.get("then_rng"), "bytes=4096", "{}", r.result);
    spins_on_the_vcpu(&cpu);
    m.disk_is(None);
}

#[test]
fn resets_in_the_middle_of_io_lose_nothing() {
    let Some(m) = Machine::new("resets_in_the_middle_of_io_lose_nothing", PEERS) else {
        return;
    };
    let (r, cpu) = m.attack("hostile-reset", "kite_rounds=200 kite_seed=9");
    spins_on_the_vcpu(&cpu);
    assert_eq!(r.num("rounds"), 200, "{}", r.result);
    assert_eq!(r.num("vsock"), 1, "{}", r.result);
    assert_eq!(r.num("sectors"), (DISK / 512) as u64, "{}", r.result);
    // The check after the resets wrote the pattern over the whole disk: a write from a reset
    // round landing after it would show here.
    m.disk_is(Some(9));
}

#[test]
fn random_register_writes_leave_the_devices_working() {
    let Some(m) = Machine::new("random_register_writes_leave_the_devices_working", PEERS) else {
        return;
    };
    let (r, cpu) = m.attack("hostile-mmio", "kite_rounds=30 kite_seed=4");
    spins_on_the_vcpu(&cpu);
    assert_eq!(r.num("devices"), 3, "{}", r.result);
    assert_eq!(r.num("writes"), 30 * 3 * 128 * 2, "{}", r.result);
    assert_eq!(r.num("blk_ok"), 1, "{}", r.result);
    assert_eq!(r.get("rng_bytes"), "4096", "{}", r.result);
    m.disk_is(Some(4));
}

#[test]
fn lying_vsock_packets_are_reset() {
    let Some(m) = Machine::new("lying_vsock_packets_are_reset", PEERS) else {
        return;
    };
    let (r, _) = m.attack("hostile-vsock", "kite_rounds=20");
    // 5 lies a round, 20 rounds, and the overrun: each answered with RST.
    assert_eq!(r.num("rsts"), 101, "{}", r.result);
    // The overrun was cut off past Kite's 64 KiB buffer (plus what the host socket holds),
    // well before the 2 MiB the guest tried.
    let overrun = r.num("overrun_sent");
    assert!(
        ((64 << 10) + 1..(2 << 20)).contains(&overrun),
        "{}",
        r.result
    );
    assert_eq!(r.num("credit_echo"), 16384, "{}", r.result);
    assert_eq!(r.num("proper_echo"), 4096, "{}", r.result);
}
