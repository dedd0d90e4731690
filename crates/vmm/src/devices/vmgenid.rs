//! The VM generation ID (Microsoft's "Virtual Machine Generation ID" device, which Linux's
//! `vmgenid` driver binds to): 16 random bytes in guest memory that change whenever the VM
//! starts again from a saved moment. Linux mixes them into its RNG, and on a change it reseeds
//! (`add_vmfork_randomness`), so clones of one snapshot do not share entropy.
//!
//! * Where: [`layout::VMGENID_ADDR`], in the BIOS area that e820 does not call RAM (so the
//!   guest never uses it), next to the ACPI tables; the DSDT's `\_SB_.VGEN` gives the address
//!   in its `ADDR` package (see `arch::x86_64::acpi`).
//! * When: every machine Kite builds gets a fresh ID ([`VmGenId::new`]), a boot and a restore
//!   alike; on a restore Kite then pulses [`layout::VMGENID_IRQ`] ([`VmGenId::notify`]) once
//!   the VM's state is loaded, before a vCPU runs. That line belongs to the DSDT's generic
//!   event device (`ACPI0013`), whose `_EVT` method does `Notify (\_SB_.VGEN, 0x80)`: the
//!   driver reads the new ID and Linux reseeds.
//! * Without ACPI (`--no-acpi`, or `acpi=off` for the guest) there is no VMGENID device.

use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress};

use crate::arch::x86_64::layout;
use crate::memory::GuestMem;

/// Bytes in a generation ID.
pub const ID_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot draw a VM generation ID from the host's random pool")]
    Random(#[source] std::io::Error),
    #[error("cannot write the VM generation ID into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
    #[error("cannot notify the guest of its new VM generation ID (IRQ {irq})")]
    Notify {
        irq: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The generation ID of one machine.
pub struct VmGenId {
    id: [u8; ID_LEN],
}

impl VmGenId {
    /// A fresh random ID, written into `mem` at [`layout::VMGENID_ADDR`].
    pub fn new(mem: &GuestMem) -> Result<Self, Error> {
        let mut id = [0u8; ID_LEN];
        super::virtio::fill_random(&mut id).map_err(Error::Random)?;
        mem.write_slice(&id, GuestAddress(layout::VMGENID_ADDR))
            .map_err(Error::Write)?;
        log::debug!("VM generation ID {}", hex(&id));
        Ok(VmGenId { id })
    }

    /// The ID this machine has.
    pub fn id(&self) -> [u8; ID_LEN] {
        self.id
    }

    /// Tell the guest its ID changed: an edge on the generic event device's line. Call it once
    /// the irqchip has its state (a restore's would overwrite the edge).
    pub fn notify(&self, vm: &VmFd) -> Result<(), Error> {
        let irq = layout::VMGENID_IRQ;
        let err = |source| Error::Notify { irq, source };
        vm.set_irq_line(irq, true).map_err(err)?;
        vm.set_irq_line(irq, false).map_err(err)?;
        log::info!(
            "new VM generation ID {}: the guest is notified (IRQ {irq})",
            hex(&self.id)
        );
        Ok(())
    }
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    #[test]
    fn each_machine_gets_its_own_id_in_guest_memory() {
        let mem = memory::create(2 << 20).unwrap();
        let a = VmGenId::new(&mem).unwrap();
        let mut seen = [0u8; ID_LEN];
        mem.read_slice(&mut seen, GuestAddress(layout::VMGENID_ADDR))
            .unwrap();
        assert_eq!(seen, a.id());
        let b = VmGenId::new(&mem).unwrap();
        mem.read_slice(&mut seen, GuestAddress(layout::VMGENID_ADDR))
            .unwrap();
        assert_eq!(seen, b.id());
        assert_ne!(a.id(), b.id(), "two draws of 128 random bits");
        assert_ne!(a.id(), [0; ID_LEN]);
    }
}
