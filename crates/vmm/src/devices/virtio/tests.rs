use kite_testkit::{Need, skip};
use kvm_ioctls::Kvm;
use vmm_sys_util::tempfile::TempFile;

use super::*;

#[test]
fn slots_are_distinct_windows_and_irqs_until_they_run_out() {
    let mut slots = MmioSlots::new();
    let mut seen = Vec::new();
    for irq in FIRST_DEVICE_IRQ..=LAST_DEVICE_IRQ {
        let (addr, got) = slots.allocate().unwrap();
        assert_eq!(got, irq);
        assert_eq!(addr % VIRTIO_MMIO_SIZE, 0);
        assert!((VIRTIO_MMIO_START..VIRTIO_MMIO_END).contains(&addr));
        assert!(!seen.contains(&addr));
        seen.push(addr);
    }
    assert_eq!(seen[0], VIRTIO_MMIO_START);
    let err = slots.allocate().unwrap_err();
    assert!(matches!(err, Error::NoSlot(_)));
    assert_eq!(
        err.to_string(),
        "no virtio-mmio window or IRQ line is left for another device"
    );
}

/// A VM with an in-kernel irqchip (irqfds need one), or `None` where KVM is not usable.
fn kvm_vm() -> Option<VmFd> {
    let vm = Kvm::new().ok()?.create_vm().ok()?;
    vm.create_irq_chip().ok()?;
    Some(vm)
}

#[test]
fn attach_wires_a_device_into_kvm_the_bus_the_event_loop_and_the_cmdline() {
    let Some(vm) = kvm_vm() else {
        let test = concat!(
            module_path!(),
            "::attach_wires_a_device_into_kvm_the_bus_the_event_loop_and_the_cmdline"
        );
        return skip(test, Need::Kvm, "/dev/kvm is not usable here");
    };
    let mem = crate::memory::create(16 << 20).unwrap();
    let mut bus = Bus::new();
    let mut events = EventLoop::new().unwrap();
    let mut cmdline = Cmdline::new(2048).unwrap();
    let mut slots = MmioSlots::new();
    let mut ctx = VirtioContext {
        vm: &vm,
        mem: &mem,
        mmio_bus: &mut bus,
        event_manager: &mut events,
        cmdline: Some(&mut cmdline),
        slots: &mut slots,
        placed: Vec::new(),
        counters: Vec::new(),
        attached: Vec::new(),
    };
    let image = TempFile::new().unwrap();
    image.as_file().set_len(1 << 20).unwrap();
    let disk = DiskConfig {
        path: image.as_path().to_path_buf(),
        readonly: false,
        rate_limit: Default::default(),
        io_engine: Default::default(),
    };
    let block = attach_block(&mut ctx, &disk).unwrap();
    let rng = attach_rng(&mut ctx, Default::default()).unwrap();
    let base = VIRTIO_MMIO_START;
    assert_eq!(
        block.placement,
        Placement {
            addr: base,
            irq: FIRST_DEVICE_IRQ
        }
    );
    assert_eq!(
        rng,
        Placement {
            addr: base + 0x1000,
            irq: FIRST_DEVICE_IRQ + 1
        }
    );

    assert_eq!(ctx.placed, vec![block.placement, rng]);

    // The same image cannot be attached twice: the second open finds it locked.
    let err = attach_block(&mut ctx, &disk).err().unwrap();
    assert!(matches!(err, Error::Disk(disk::Error::Locked(_))), "{err}");
    block.sync().unwrap();

    let line = cmdline.as_cstring().unwrap().into_string().unwrap();
    assert!(
        line.contains("virtio_mmio.device=4K@0xd0001000:5 virtio_mmio.device=4K@0xd0002000:6"),
        "{line}"
    );
    let mut id = [0u8; 4];
    assert!(bus.read(base + 8, &mut id));
    assert_eq!(u32::from_le_bytes(id), 2);
    assert!(bus.read(rng.addr + 8, &mut id));
    assert_eq!(u32::from_le_bytes(id), 4);
    // A notify that reaches the register file (not caught by KVM) still wakes the event loop.
    assert!(bus.write(rng.addr + QUEUE_NOTIFY, &0u32.to_le_bytes()));
    assert_eq!(events.run_with_timeout(0).unwrap(), 1);
}
