//! x86-64 specifics: guest layout and the pure builders for the 64-bit boot protocol.
pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod elf_acpi;
pub mod emulated_ring0;
pub mod layout;
pub mod mptable;
pub mod regs;
