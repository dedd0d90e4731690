//! Emulated devices.
pub mod acpi_pm;
pub mod boot_timer;
pub mod i8042;
pub mod manager;
pub mod serial;
pub mod virtio;
pub mod vmgenid;
