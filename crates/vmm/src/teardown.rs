//! The end of a VM, off the process's critical path.
//!
//! Closing the last descriptor of a KVM VM makes the kernel destroy it, and on the hosts Kite
//! is built on that waits for about 16 ms (a grace period; the CPU time is 0.3 ms, measured by
//! `cargo run --release --example kvm_cost`), after which the guest RAM is unmapped. Most of
//! that wait is the in-kernel irqchip's (measured on a PVM host, median of 9: a bare VM closes
//! in 3 ms, with RAM in 4 ms, with the irqchip in 16 ms, with a vCPU too in 16-24 ms), which
//! Firecracker's VMs have too; freeing the RAM first (munmap or MADV_DONTNEED before the close)
//! or leaving it all to the process's exit measured no faster. Nothing a
//! user relies on needs that wait: by the time [`Teardown::finish`] runs, the vCPUs have been
//! joined, every disk is synced and closed, and the last log line is written. So the VM's
//! descriptor and the guest RAM's address space are handed to a child process that shares
//! Kite's memory (`clone(CLONE_VM)`), closes everything else it inherited at once (so a reader
//! of Kite's stdout or stderr sees end-of-file when Kite exits), waits until Kite has closed
//! its own copy of the VM's descriptor (end-of-file on a pipe whose write end only Kite
//! holds: otherwise, if the child were quicker, Kite's close would be the last and wait),
//! then closes the VM and exits. Kite itself exits without waiting for it. The child is moved
//! to a process group of its own before Kite lets go, so that whoever started Kite in a group
//! (a shell's job, a supervisor) finds that group empty when Kite has exited. If the pipe or
//! the child cannot be made, the VM is closed here, as before.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use kvm_ioctls::VmFd;

use crate::memory::GuestMem;

/// The flags of the teardown child: its own process (no CLONE_THREAD) sharing the address
/// space, reaped (by whoever inherits it) on SIGCHLD. The main thread's seccomp filter allows
/// `clone` with exactly these flags.
pub const CHILD_FLAGS: libc::c_int = libc::CLONE_VM | libc::SIGCHLD;

/// The child's stack. It makes six system calls; 16 KiB is ample.
const STACK: usize = 16 * 1024;

/// The pipe that tells the teardown child Kite has let go of the VM. Made before the seccomp
/// filters are installed (they allow no pipe2).
pub struct Signal {
    read: OwnedFd,
    /// Held only to be closed: the child reads end-of-file when this process has let go.
    _write: OwnedFd,
}

impl Signal {
    pub fn new() -> std::io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`, which has room for them.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors are new and owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Self {
            read,
            _write: write,
        })
    }
}

/// What is left of a stopped VM: its KVM descriptor and guest RAM.
pub struct Teardown {
    vm: VmFd,
    mem: GuestMem,
    signal: Option<Signal>,
}

/// What the child needs: the VM's descriptor and the pipe's read end, by number.
struct ChildArgs {
    vm: libc::c_uint,
    wait: libc::c_uint,
}

impl Teardown {
    /// `signal`: the pipe made by [`Signal::new`] earlier; without one the VM is closed in
    /// this process.
    pub fn new(vm: VmFd, mem: GuestMem, signal: Option<Signal>) -> Self {
        Self { vm, mem, signal }
    }

    /// Call as the process's last act, when nothing else needs the VM. Returns at once; the
    /// kernel's teardown of the VM happens in a child that outlives this process briefly.
    pub fn finish(self) {
        let Some(signal) = self.signal else {
            return; // the VM and its memory are dropped (closed, unmapped) here
        };
        // The child's stack, its arguments and the guest RAM stay mapped: the child uses the
        // first two, and the RAM goes with the address space when the child exits, not in
        // munmap here (which would make KVM zap the guest's mappings on this thread).
        let stack = Box::leak(vec![0u8; STACK].into_boxed_slice());
        let args = Box::leak(Box::new(ChildArgs {
            vm: self.vm.as_raw_fd() as libc::c_uint,
            wait: signal.read.as_raw_fd() as libc::c_uint,
        }));
        std::mem::forget(self.mem);
        // SAFETY: `stack` is a live, leaked allocation of STACK bytes and the child starts at
        // its top (x86-64 stacks grow down; the top is 16-byte aligned for a Vec<u8> of this
        // size from malloc). `args` is leaked too, so it outlives this process. The child
        // makes only raw system calls and never returns, so it touches no memory the exiting
        // parent could be freeing.
        let pid = unsafe {
            libc::clone(
                close_vm_and_exit,
                stack.as_mut_ptr().add(STACK).cast(),
                CHILD_FLAGS,
                (args as *mut ChildArgs).cast(),
            )
        };
        if pid < 0 {
            log::debug!(
                "no teardown child ({}); closing the VM here",
                std::io::Error::last_os_error()
            );
        // SAFETY: setpgid on our own child, which has not exec'ed; no memory is passed.
        } else if unsafe { libc::setpgid(pid, pid) } != 0 {
            log::debug!(
                "teardown child left in Kite's process group: {}",
                std::io::Error::last_os_error()
            );
        }
        // Not the last reference when the child exists, so this close does not wait. Then
        // the write end: its close is the child's cue.
        drop(self.vm);
        drop(signal);
    }
}

/// The teardown child: every inherited descriptor but the VM's and the pipe's read end
/// closed; then it waits for end-of-file (Kite has closed its VM descriptor and the pipe's
/// write end), closes the VM (the kernel's wait happens here) and exits. Raw system calls
/// only.
extern "C" fn close_vm_and_exit(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the leaked ChildArgs passed to clone, never freed.
    let args = unsafe { &*arg.cast::<ChildArgs>() };
    let (lo, hi) = (args.vm.min(args.wait), args.vm.max(args.wait));
    let mut byte = 0u8;
    // SAFETY: closing descriptors in this process's own (copied) table, reading one byte into
    // a local, exiting.
    unsafe {
        if lo > 0 {
            libc::syscall(libc::SYS_close_range, 0, lo - 1, 0);
        }
        if hi > lo + 1 {
            libc::syscall(libc::SYS_close_range, lo + 1, hi - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, hi + 1, libc::c_uint::MAX, 0);
        // Returns 0 at end-of-file, or -1 if interrupted: either way Kite is done or gone.
        libc::syscall(libc::SYS_read, args.wait, &mut byte as *mut u8, 1);
        libc::syscall(libc::SYS_close, args.vm);
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
