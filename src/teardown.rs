//! The end of a VM, off the process's critical path.
//!
//! Closing the last descriptor of a KVM VM makes the kernel destroy it, and on the hosts Kite
//! is built on that waits for about 16 ms (a grace period; the CPU time is 0.3 ms, measured by
//! `cargo run --release --example kvm_cost`), after which the guest RAM is unmapped. Nothing a
//! user relies on needs that wait: by the time [`Teardown::finish`] runs, the vCPUs have been
//! joined, every disk is synced and closed, and the last log line is written. So the VM's
//! descriptor and the guest RAM's address space are handed to a child process that shares
//! Kite's memory (`clone(CLONE_VM)`), closes everything else it inherited at once (so a reader
//! of Kite's stdout or stderr sees end-of-file when Kite exits), then closes the VM and exits.
//! Kite itself exits without waiting for it. If the child cannot be made, the VM is closed
//! here, as before.

use std::os::fd::AsRawFd;

use kvm_ioctls::VmFd;

use crate::memory::GuestMem;

/// The flags of the teardown child: its own process (no CLONE_THREAD) sharing the address
/// space, reaped (by whoever inherits it) on SIGCHLD. The main thread's seccomp filter allows
/// `clone` with exactly these flags.
pub const CHILD_FLAGS: libc::c_int = libc::CLONE_VM | libc::SIGCHLD;

/// The child's stack. It makes four system calls; 16 KiB is ample.
const STACK: usize = 16 * 1024;

/// What is left of a stopped VM: its KVM descriptor and guest RAM.
pub struct Teardown {
    vm: VmFd,
    mem: GuestMem,
}

impl Teardown {
    pub fn new(vm: VmFd, mem: GuestMem) -> Self {
        Self { vm, mem }
    }

    /// Call as the process's last act, when nothing else needs the VM. Returns at once; the
    /// kernel's teardown of the VM happens in a child that outlives this process briefly.
    pub fn finish(self) {
        let fd = self.vm.as_raw_fd();
        // The child's stack and the guest RAM stay mapped: the child runs on the first, and
        // the second goes with the address space when the child exits, not in munmap here
        // (which would make KVM zap the guest's mappings on this thread).
        let stack = Box::leak(vec![0u8; STACK].into_boxed_slice());
        std::mem::forget(self.mem);
        // SAFETY: `stack` is a live, leaked allocation of STACK bytes and the child starts at
        // its top (x86-64 stacks grow down; the top is 16-byte aligned for a Vec<u8> of this
        // size from malloc). `close_vm_and_exit` makes only raw system calls on that stack and
        // never returns, so it touches no memory the exiting parent could be freeing. `fd` is
        // passed by value.
        let pid = unsafe {
            libc::clone(
                close_vm_and_exit,
                stack.as_mut_ptr().add(STACK).cast(),
                CHILD_FLAGS,
                fd as usize as *mut libc::c_void,
            )
        };
        if pid < 0 {
            log::debug!(
                "no teardown child ({}); closing the VM here",
                std::io::Error::last_os_error()
            );
        }
        // Not the last reference when the child exists, so this close does not wait.
        drop(self.vm);
    }
}

/// The teardown child: every inherited descriptor but the VM's closed, then the VM's (the
/// kernel's wait happens here), then exit. Raw system calls only.
extern "C" fn close_vm_and_exit(arg: *mut libc::c_void) -> libc::c_int {
    let fd = arg as usize as libc::c_uint;
    // SAFETY: closing descriptors in this process's own (copied) table and exiting; no memory
    // is touched.
    unsafe {
        if fd > 0 {
            libc::syscall(libc::SYS_close_range, 0, fd - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, fd + 1, libc::c_uint::MAX, 0);
        libc::syscall(libc::SYS_close, fd);
        libc::syscall(libc::SYS_exit_group, 0);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_is_a_process_sharing_memory_not_a_thread() {
        assert_ne!(CHILD_FLAGS & libc::CLONE_VM, 0);
        assert_eq!(CHILD_FLAGS & libc::CLONE_THREAD, 0);
        assert_eq!(CHILD_FLAGS & libc::CLONE_FILES, 0);
    }
}
