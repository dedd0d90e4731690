//! `PUT /actions {"action_type": "SendCtrlAltDel"}` reaches a Linux guest as key presses on
//! the i8042 keyboard and the guest's kernel reboots: one boot of the guest-images Linux (about
//! 20 s where the host's KVM emulates guest ring 0).

mod common;

use std::time::Duration;

use common::api::*;
use common::*;

const BOOT_LIMIT: Duration = Duration::from_secs(240);

#[test]
fn send_ctrl_alt_del_makes_linux_reboot() {
    let test = "send_ctrl_alt_del_makes_linux_reboot";
    let Some((kernel, initrd)) = linux::images(test) else {
        return;
    };
    let config = std::fs::read_to_string(root().join("guest-images/out/kernel.final.config"))
        .unwrap_or_default();
    if !config.contains("CONFIG_KEYBOARD_ATKBD=y") {
        return skip(
            test,
            Need::GuestImages,
            "the guest kernel has no AT keyboard driver; rebuild it with guest-images/build.sh",
        );
    }
    let mut vm = ApiVm::start(
        test,
        &[
            "--kernel",
            path_str(&kernel),
            "--initrd",
            path_str(&initrd),
            "--no-acpi",
            "--cmdline",
            "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd",
        ],
    );
    // The keyboard is registered before init runs; the shell then waits on the console.
    let console = vm.wait_stdout(BOOT_LIMIT, |out| out.contains("KITE-GUEST-INIT-OK"));
    assert!(
        console.contains("serio: i8042 KBD port at 0x60,0x64 irq 1"),
        "Linux did not find the i8042:\n{console}"
    );
    vm.ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    assert_eq!(vm.wait(BOOT_LIMIT), Some(0), "{}", vm.stderr());
    let console = vm.stdout();
    assert!(
        console.contains("reboot: Restarting system"),
        "the kernel did not restart:\n{console}"
    );
    assert!(
        vm.stderr().contains("guest reset the machine"),
        "{}",
        vm.stderr()
    );
}
