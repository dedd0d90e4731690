//! The machine of a configuration, built without kernel or state (`build`: what a boot and a
//! restore share), and its boot (`boot`: kernel, initrd, command line, tables, vCPU registers).
//! `Vmm::new` is build + boot; `Vmm::restore` is build + the snapshot's state.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::Address;

use crate::arch::x86_64::{acpi, boot, cpuid, emulated_ring0, layout, mptable, regs};
use crate::bus::Bus;
use crate::config::VmConfig;
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::boot_timer::BootTimer;
use crate::devices::i8042::I8042;
use crate::devices::manager::DeviceManager;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::{self, BlockHandle};
use crate::devices::vmgenid::VmGenId;
use crate::exit::ExitHandle;
use crate::memory::{self, GuestMem};
use crate::snapshot;
use crate::vcpu::setup::Setup;
use crate::vmm::{Error, EventMgr, Timeline, io_err, kvm_device_path, kvm_err};
use parts::{
    add_i8042, add_serial, attach_virtio, check_kvm, load_initrd, open_kvm, setup_irqchip,
};

mod parts;

/// Where a machine's guest RAM comes from.
pub enum Ram<'a> {
    /// Fresh anonymous memory, for a boot.
    Fresh,
    /// A snapshot's memory file, mapped private and lazily.
    File(&'a Path),
    /// Fresh anonymous memory whose pages a page-fault handler fills (the handler's socket).
    Uffd(&'a Path),
}

/// A machine built but not yet booted or restored: KVM VM, guest RAM, irqchip, devices, and
/// vCPUs created but without state.
pub(crate) struct Machine {
    pub(crate) kvm: Kvm,
    pub(crate) vm: VmFd,
    pub(crate) mem: GuestMem,
    pub(crate) exit: Arc<ExitHandle>,
    pub(crate) event_manager: EventMgr,
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    pub(crate) i8042: Arc<Mutex<I8042>>,
    pub(crate) boot_timer: Option<Arc<Mutex<BootTimer>>>,
    pub(crate) disks: Vec<BlockHandle>,
    pub(crate) nets: Vec<virtio::NetHandle>,
    pub(crate) placed: Vec<virtio::Placement>,
    pub(crate) device_counters: Vec<(String, virtio::Interrupt)>,
    pub(crate) devices: DeviceManager,
    /// The VM generation ID, with ACPI only.
    pub(crate) vmgenid: Option<VmGenId>,
    pub(crate) fds: Vec<kvm_ioctls::VcpuFd>,
    pub(crate) ring0: Option<&'static str>,
    /// With [`Ram::Uffd`]: the userfaultfd and the handler's connection, kept while the VM runs.
    pub(crate) uffd: Option<snapshot::uffd::Backend>,
}

/// The machine of `config`, without kernel or state: everything a boot and a restore share.
// `build` and `boot` are never inlined into `Vmm::new`: their locals then take turns on the
// stack instead of adding up in one frame (stack probes make every page of a frame resident).
#[inline(never)]
pub(crate) fn build(
    config: &VmConfig,
    ram: Ram,
    process_start: Instant,
    timeline: &mut Timeline,
) -> Result<Machine, Error> {
    let mut mark = |name| timeline.marks.push((name, process_start.elapsed()));
    let kvm = open_kvm(&kvm_device_path())?;
    check_kvm(&kvm, config.cpus)?;
    let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
    mark("KVM VM created");

    // RAM goes in before the irqchip: on some hosts adding memory slots to a VM that already
    // has an in-kernel irqchip costs milliseconds (30x more, measured on a PVM host).
    let mut uffd = None;
    let mem = match ram {
        Ram::Fresh => memory::create(config.memory)?,
        Ram::File(path) => {
            snapshot::memfile::map_private(path, config.memory).map_err(Error::Restore)?
        }
        Ram::Uffd(socket) => {
            let mem = memory::create(config.memory)?;
            uffd = Some(snapshot::uffd::hand_over(&mem, socket).map_err(Error::Restore)?);
            mem
        }
    };
    memory::register(&vm, &mem, config.track_dirty_pages)?;
    setup_irqchip(&vm)?;
    mark("guest RAM ready");

    let exit = Arc::new(ExitHandle::new().map_err(io_err("cannot create the exit eventfd"))?);
    let mut event_manager = EventMgr::new().map_err(Error::EventLoop)?;
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let mut devices = DeviceManager::new();
    let ring0 = emulated_ring0::decide(config.ring0_workarounds, emulated_ring0::detect);

    let serial = add_serial(&vm, &mut pio, &mut event_manager)?;
    devices.add_serial(serial.clone());
    let i8042 = add_i8042(&vm, &mut pio, exit.clone())?;
    devices.add_i8042(i8042.clone());
    let boot_timer = if config.boot_timer {
        let timer = Arc::new(Mutex::new(BootTimer::new(process_start)));
        mmio.insert(timer.clone(), layout::BOOT_TIMER_ADDR, 0x1000)?;
        devices.add_boot_timer(timer.clone());
        Some(timer)
    } else {
        None
    };
    let (disks, placed, device_counters, attached, nets) =
        attach_virtio(config, &vm, &mem, &mut mmio, &mut event_manager)?;
    attached.iter().for_each(|a| devices.add_virtio(a));
    // `acpi=off` on the command line: no ACPI tables (the devices go on the command line),
    // so no VM generation ID either.
    let mut vmgenid = None;
    if acpi::wanted(config.acpi, &config.cmdline) {
        // A fresh ID for every machine, booted or restored (the DSDT says where it is).
        vmgenid = Some(VmGenId::new(&mem)?);
        devices.add_vmgenid();
        let pm = Arc::new(Mutex::new(AcpiPm::new(exit.clone())));
        pio.insert(
            pm.clone(),
            layout::ACPI_SLEEP_CONTROL_PORT,
            layout::ACPI_PM_PORT_LEN,
        )?;
        devices.add_acpi_pm(pm);
    }
    let mut fds = Vec::with_capacity(config.cpus.into());
    for index in 0..config.cpus {
        fds.push(
            vm.create_vcpu(index.into())
                .map_err(kvm_err("create a vCPU"))?,
        );
    }
    Ok(Machine {
        kvm,
        vm,
        mem,
        exit,
        event_manager,
        pio,
        mmio,
        serial,
        i8042,
        boot_timer,
        disks,
        nets,
        placed,
        device_counters,
        devices,
        vmgenid,
        fds,
        ring0,
        uffd,
    })
}

/// Boot `m`: load the kernel and initrd, write the command line, the zero page, the MP and
/// ACPI tables, and say what each vCPU's thread sets before it runs (its CPUID table, and the
/// entry point for the boot CPU: [`Setup`]). `kernel_file` is the kernel, if the caller opened
/// it already.
#[inline(never)]
pub(crate) fn boot(
    m: &mut Machine,
    config: &VmConfig,
    kernel_file: Option<std::fs::File>,
    process_start: Instant,
    timeline: &mut Timeline,
) -> Result<Vec<Setup>, Error> {
    let mut mark = |name| timeline.marks.push((name, process_start.elapsed()));
    let mem = &m.mem;
    let kernel = boot::load_kernel(mem, &config.kernel, kernel_file)?;
    log::info!(
        "kernel {} ({:?}) loaded, ends at {:#x}, entry {:#x}",
        config.kernel.display(),
        kernel.format,
        kernel.end,
        kernel.entry.0
    );
    let initrd = config
        .initrd
        .as_deref()
        .map(|path| load_initrd(mem, path, &kernel))
        .transpose()?;
    mark("kernel loaded");

    let mut cmdline =
        linux_loader::cmdline::Cmdline::try_from(&config.cmdline, layout::CMDLINE_MAX_SIZE * 4)
            .map_err(Error::Cmdline)?;
    if let Some(why) = &m.ring0 {
        let bzimage = kernel.format == boot::KernelFormat::BzImage;
        let words = emulated_ring0::words_for(
            config.ring0_workarounds,
            &config.kernel,
            bzimage,
            &config.cmdline,
        );
        for w in &words {
            cmdline.insert_str(w).map_err(Error::Cmdline)?;
        }
        let added = if words.is_empty() {
            String::new()
        } else {
            format!("adding '{}' to the command line, ", words.join(" "))
        };
        log::info!(
            "this host's KVM emulates guest ring 0 ({why}): its kernel code runs emulated, so Linux takes tens of seconds to reach user space; {added}hiding the PV IPI/unhalt/yield CPUID features; --ring0-workarounds off turns this off"
        );
    }
    // With ACPI tables the DSDT names the virtio devices; without, the command line does
    // (never both: an ACPI kernel would find each device twice); `acpi=off`: the latter.
    let rsdp = if acpi::wanted(config.acpi, &config.cmdline) {
        let windows: Vec<_> = m
            .placed
            .iter()
            .map(|p| acpi::VirtioWindow {
                addr: p.addr,
                irq: p.irq,
            })
            .collect();
        let vmgenid = m.vmgenid.is_some();
        Some(acpi::write(mem, config.cpus, &windows, vmgenid)?)
    } else {
        for p in &m.placed {
            cmdline
                .add_virtio_mmio_device(
                    layout::VIRTIO_MMIO_SIZE,
                    vm_memory::GuestAddress(p.addr),
                    p.irq,
                    None,
                )
                .map_err(Error::Cmdline)?;
        }
        None
    };

    let cmdline = cmdline.as_cstring().map_err(Error::Cmdline)?;
    let cmdline = cmdline.to_string_lossy().into_owned();
    let mut params = boot::zero_page(&kernel, cmdline.len(), initrd, config.memory)?;
    if let Some(rsdp) = rsdp {
        params.acpi_rsdp_addr = rsdp.raw_value();
    }
    boot::write_boot_data(mem, &cmdline, &params)?;
    regs::write_boot_tables(mem).map_err(|source| Error::Regs { index: 0, source })?;
    mptable::setup_mptable(mem, config.cpus)?;
    log::info!("command line: {cmdline}");
    log::info!("{} vCPUs, {} MiB of RAM", config.cpus, config.memory >> 20);

    let supported = m
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("report supported CPUID"))?;
    let setups = (0..config.cpus)
        .map(|index| {
            let mut cpuid = supported.clone();
            cpuid::filter_cpuid_smt(&mut cpuid, index, config.cpus, config.smt);
            if m.ring0.is_some() {
                emulated_ring0::filter_cpuid(&mut cpuid);
            }
            Setup::Boot {
                cpuid: cpuid.as_slice().to_vec(),
                entry: (index == 0).then_some(kernel.entry.0),
            }
        })
        .collect();
    Ok(setups)
}
