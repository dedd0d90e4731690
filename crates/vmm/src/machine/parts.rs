//! The parts `machine::build` puts together, each a step of its own: KVM opened and checked,
//! the in-kernel irqchip, the initrd, the legacy devices (serial port, i8042) and the virtio
//! devices.

use std::path::Path;
use std::sync::{Arc, Mutex};

use event_manager::SubscriberOps;
use kvm_bindings::kvm_pit_config;
use kvm_ioctls::{Cap, Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{boot, layout, mptable};
use crate::bus::Bus;
use crate::config::VmConfig;
use crate::devices::i8042::I8042;
use crate::devices::serial::{ConsoleInput, SerialDevice};
use crate::devices::virtio::{self, BlockHandle, MmioSlots, VirtioContext};
use crate::exit::ExitHandle;
use crate::memory::GuestMem;
use crate::vmm::{Error, EventMgr, io_err, kvm_err};

pub(crate) fn open_kvm(path: &Path) -> Result<Kvm, Error> {
    use std::os::unix::ffi::OsStrExt;
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::KvmMissing {
            path: path.to_owned(),
        })?;
    Kvm::new_with_path(c_path).map_err(|source| match source.errno() {
        libc::ENOENT => Error::KvmMissing {
            path: path.to_owned(),
        },
        libc::EACCES | libc::EPERM => Error::KvmPermission {
            path: path.to_owned(),
        },
        _ => Error::KvmOpen {
            path: path.to_owned(),
            source,
        },
    })
}

pub(crate) fn check_kvm(kvm: &Kvm, cpus: u8) -> Result<(), Error> {
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(Error::KvmApiVersion(version));
    }
    let needed = [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    ];
    if let Some((_, name)) = needed.iter().find(|(cap, _)| !kvm.check_extension(*cap)) {
        return Err(Error::KvmCap(name));
    }
    check_cpus(cpus, kvm.get_max_vcpus())
}

/// `cpus` vCPUs are allowed if both KVM (`kvm_max`, its KVM_CAP_MAX_VCPUS) and the MP table
/// ([`mptable::MAX_CPUS`]) allow that many.
fn check_cpus(cpus: u8, kvm_max: usize) -> Result<(), Error> {
    let max = kvm_max.min(mptable::MAX_CPUS.into());
    if usize::from(cpus) > max {
        return Err(Error::TooManyCpus { asked: cpus, max });
    }
    Ok(())
}

pub(crate) fn setup_irqchip(vm: &VmFd) -> Result<(), Error> {
    vm.set_tss_address(layout::KVM_TSS_ADDR)
        .map_err(kvm_err("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("create the in-kernel irqchip"))?;
    // KVM_PIT_SPEAKER_DUMMY: the PC speaker port is emulated (as silence) in the kernel.
    let pit = kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(kvm_err("create the in-kernel PIT"))?;
    Ok(())
}

pub(crate) fn load_initrd(
    mem: &GuestMem,
    path: &Path,
    kernel: &boot::LoadedKernel,
) -> Result<(vm_memory::GuestAddress, u64), Error> {
    let (addr, size) = boot::load_initrd(mem, path, kernel)?;
    log::info!(
        "initrd {} at {:#x}-{:#x} ({} KiB)",
        path.display(),
        addr.0,
        addr.0 + size,
        size >> 10
    );
    Ok((addr, size))
}

/// The disks, where each virtio device sits, each one's counters, the devices, and the network
/// interfaces.
type Attached = (
    Vec<BlockHandle>,
    Vec<virtio::Placement>,
    Vec<(String, virtio::Interrupt)>,
    Vec<virtio::Attached>,
    Vec<virtio::NetHandle>,
);

/// Disks first (so the guest names them vda, vdb, ... in order), then the entropy device, then
/// network interfaces and vsock.
pub(crate) fn attach_virtio(
    config: &VmConfig,
    vm: &VmFd,
    mem: &GuestMem,
    mmio: &mut Bus,
    event_manager: &mut EventMgr,
) -> Result<Attached, Error> {
    let mut slots = MmioSlots::new();
    let mut ctx = VirtioContext {
        vm,
        mem,
        mmio_bus: mmio,
        event_manager,
        cmdline: None,
        slots: &mut slots,
        placed: Vec::new(),
        counters: Vec::new(),
        attached: Vec::new(),
    };
    let mut disks = Vec::new();
    for disk in &config.disks {
        let handle = virtio::attach_block(&mut ctx, disk)?;
        log::info!(
            "virtio-blk {}{}{} at {:#x}, IRQ {}",
            disk.path.display(),
            if disk.readonly { " (readonly)" } else { "" },
            match disk.io_engine {
                virtio::IoEngine::Async => " on io_uring",
                virtio::IoEngine::Sync => "",
            },
            handle.placement.addr,
            handle.placement.irq
        );
        disks.push(handle);
    }
    if config.rng {
        let at = virtio::attach_rng(&mut ctx, config.rng_rate_limit)?;
        log::info!("virtio-rng at {:#x}, IRQ {}", at.addr, at.irq);
    }
    let mut nets = Vec::new();
    for net in &config.nets {
        let handle = virtio::attach_net(&mut ctx, net)?;
        let at = handle.placement;
        nets.push(handle);
        let mac = net.mac.map(|b| format!("{b:02x}")).join(":");
        log::info!(
            "virtio-net on tap {} (MAC {mac}) at {:#x}, IRQ {}",
            net.tap,
            at.addr,
            at.irq
        );
    }
    if let Some(vsock) = &config.vsock {
        let at = virtio::attach_vsock(&mut ctx, vsock)?;
        log::info!(
            "virtio-vsock CID {} on {} at {:#x}, IRQ {}",
            vsock.cid,
            vsock.socket.display(),
            at.addr,
            at.irq
        );
    }
    Ok((disks, ctx.placed, ctx.counters, ctx.attached, nets))
}

/// The i8042 at ports 0x60-0x64, its keyboard on IRQ 1.
pub(crate) fn add_i8042(
    vm: &VmFd,
    pio: &mut Bus,
    exit: Arc<ExitHandle>,
) -> Result<Arc<Mutex<I8042>>, Error> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("cannot create the i8042 irqfd"))?;
    vm.register_irqfd(&irq, layout::KEYBOARD_IRQ)
        .map_err(kvm_err("register the i8042 irqfd"))?;
    let dev = Arc::new(Mutex::new(I8042::new(exit, Some(irq))));
    pio.insert(dev.clone(), layout::I8042_PORT, layout::I8042_PORT_LEN)?;
    Ok(dev)
}

pub(crate) fn add_serial(
    vm: &VmFd,
    pio: &mut Bus,
    event_manager: &mut EventMgr,
) -> Result<Arc<Mutex<SerialDevice>>, Error> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("cannot create the serial irqfd"))?;
    vm.register_irqfd(&irq, layout::SERIAL_IRQ)
        .map_err(kvm_err("register the serial irqfd"))?;
    let (dev, drained) = SerialDevice::new(irq, Box::new(std::io::stdout()))
        .map_err(io_err("cannot create the serial port"))?;
    let serial = Arc::new(Mutex::new(dev));
    pio.insert(serial.clone(), layout::SERIAL_PORT, layout::SERIAL_PORT_LEN)?;
    event_manager.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
        serial.clone(),
        libc::STDIN_FILENO,
        drained,
    ))));
    Ok(serial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_up_to_the_mp_table_limit_when_kvm_allows_more() {
        for cpus in [1, 37, 38, 64, 254] {
            assert!(check_cpus(cpus, 1024).is_ok(), "{cpus}");
        }
        let err = check_cpus(255, 1024).unwrap_err();
        assert!(matches!(
            err,
            Error::TooManyCpus {
                asked: 255,
                max: 254
            }
        ));
        assert_eq!(
            err.to_string(),
            "--cpus 255 is more than 254, the most this host's KVM and Kite's MP table allow"
        );
    }

    #[test]
    fn cpus_up_to_kvm_limit_when_lower() {
        assert!(check_cpus(2, 2).is_ok());
        assert!(matches!(
            check_cpus(3, 2),
            Err(Error::TooManyCpus { asked: 3, max: 2 })
        ));
        assert!(check_cpus(200, 240).is_ok());
        assert!(matches!(
            check_cpus(241, 240),
            Err(Error::TooManyCpus {
                asked: 241,
                max: 240
            })
        ));
    }
}
