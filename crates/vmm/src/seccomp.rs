//! Seccomp filters: the system calls each kind of Kite thread may make once the guest runs.
//!
//! `kite run` has three kinds of thread (see docs/ARCHITECTURE.md): the main thread, which runs
//! the event loop (every device's I/O) and then the teardown, one thread per vCPU (KVM_RUN
//! and the exits it hands to the buses) and, with `--api-sock`, the API thread (HTTP only; it
//! installs its list when it starts, before the VM is even configured). Each gets its own allow-list below, installed after
//! start-up and before the guest's first instruction: every vCPU thread installs its own before
//! it waits at the start gate, and the main thread installs its own after starting them and
//! before it opens the gate (`Vmm::run`). A filter cannot be removed, so the lists also cover
//! what runs after the VM stops: joins, the disk sync, the memory report, the drops, the log
//! lines and the terminal's restoring.
//!
//! A call outside the list is trapped: the SIGSYS handler ([`sigsys`]) writes one line naming
//! the thread and the system call, restores the terminal and ends Kite with
//! [`sigsys::EXIT_CODE`] (159 = 128 + SIGSYS). `--seccomp off` runs without filters (debugging
//! only, and Kite says so); `--seccomp log` allows every call but has the kernel log those
//! outside the lists (audit records, `dmesg`), for finding what a new code path needs.
//!
//! The lists are data: one rule a line, each with the code path that needs it. A rule with
//! argument checks allows the call only with those values; several rules for one system call
//! allow any of them. Keep each list to what its thread does; `tests/seccomp.rs` checks that a
//! call outside a list ends Kite as documented, and the whole test suite runs with the filters.

mod names;
pub mod sigsys;

use std::collections::BTreeMap;
use std::mem::size_of;

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_dirty_log, kvm_fpu, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use libc::*;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// `--seccomp`: whether the filters are enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// A call outside its thread's list ends Kite (exit 159).
    #[default]
    On,
    /// No filters at all: for debugging only.
    Off,
    /// Every call is allowed; the kernel logs those outside the lists (dmesg or the audit log).
    Log,
}

/// The kinds of thread, each with its own list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: the event loop (all device I/O), then the teardown.
    Main,
    /// A vCPU thread: KVM_RUN and the exits it hands to the buses.
    Vcpu,
    /// The API thread (`--api-sock`): HTTP on a Unix socket; requests go to the main thread.
    Api,
}

impl ThreadKind {
    /// This kind's allow-list.
    pub fn rules(self) -> &'static [Rule] {
        match self {
            ThreadKind::Main => MAIN,
            ThreadKind::Vcpu => VCPU,
            ThreadKind::Api => API,
        }
    }

    /// How many distinct system calls this kind's list allows (with or without argument
    /// checks).
    pub fn syscall_count(self) -> usize {
        let mut nrs: Vec<i64> = self.rules().iter().map(|r| r.nr).collect();
        nrs.sort_unstable();
        nrs.dedup();
        nrs.len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the seccomp filter for the {0} thread")]
    Build(&'static str, #[source] seccompiler::BackendError),
    #[error(
        "cannot install the seccomp filter for thread {thread} (--seccomp off runs without; debugging only)"
    )]
    Install {
        thread: String,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

// ------------------------------------------------------------------------------------------------
// The rules' vocabulary.

/// One entry of an allow-list: system call `nr`, with the argument values it may have.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub nr: i64,
    pub args: Args,
}

/// The argument checks of a [`Rule`]: all of them must hold.
#[derive(Clone, Copy, Debug)]
pub enum Args {
    Any,
    One(Arg),
    Two(Arg, Arg),
}

/// A check on argument `index` (0-based) of a system call, on its low 32 bits (every argument
/// checked here is an `int` or `unsigned int` in the kernel) or on all 64 (`mask`).
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// The argument equals `value`.
    Eq { index: u8, value: u64 },
    /// The argument has none of the bits in `mask` set.
    Clear { index: u8, mask: u64 },
}

/// Any arguments.
const fn any(nr: c_long) -> Rule {
    Rule {
        nr,
        args: Args::Any,
    }
}

/// Argument `index` equals `value`.
const fn eq(index: u8, value: u64) -> Arg {
    Arg::Eq { index, value }
}

/// Argument `index` has none of the bits of `mask`.
const fn clear(index: u8, mask: u64) -> Arg {
    Arg::Clear { index, mask }
}

const fn with(nr: c_long, a: Arg) -> Rule {
    Rule {
        nr,
        args: Args::One(a),
    }
}

const fn with2(nr: c_long, a: Arg, b: Arg) -> Rule {
    Rule {
        nr,
        args: Args::Two(a, b),
    }
}

/// `ioctl` with this request, on any descriptor.
const fn ioctl(request: u64) -> Rule {
    with(SYS_ioctl, eq(1, request))
}

/// `ioctl(fd, request, ...)`.
const fn ioctl_on(fd: c_int, request: u64) -> Rule {
    with2(SYS_ioctl, eq(0, fd as u64), eq(1, request))
}

// ioctl numbers (asm-generic/ioctl.h): direction in bits 30-31, size in 16-29, type, number.
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const KVMIO: u64 = 0xAE;

const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

pub const KVM_RUN: u64 = kvm_ioc(0, 0x80, 0);
pub const KVM_GET_REGS: u64 = kvm_ioc(IOC_READ, 0x81, size_of::<kvm_regs>());
pub const KVM_SET_REGS: u64 = kvm_ioc(IOC_WRITE, 0x82, size_of::<kvm_regs>());
pub const KVM_GET_SREGS: u64 = kvm_ioc(IOC_READ, 0x83, size_of::<kvm_sregs>());
pub const KVM_GET_FPU: u64 = kvm_ioc(IOC_READ, 0x8c, size_of::<kvm_fpu>());
pub const KVM_GET_MP_STATE: u64 = kvm_ioc(IOC_READ, 0x98, size_of::<kvm_mp_state>());
pub const KVM_GET_VCPU_EVENTS: u64 = kvm_ioc(IOC_READ, 0x9f, size_of::<kvm_vcpu_events>());
pub const KVM_SET_VCPU_EVENTS: u64 = kvm_ioc(IOC_WRITE, 0xa0, size_of::<kvm_vcpu_events>());
// Snapshots (snapshot/, vcpu/state.rs): a parked vCPU reads its state, the main thread the VM's.
pub const KVM_GET_XSAVE: u64 = kvm_ioc(IOC_READ, 0xa4, size_of::<kvm_xsave>());
pub const KVM_GET_XCRS: u64 = kvm_ioc(IOC_READ, 0xa6, size_of::<kvm_xcrs>());
pub const KVM_GET_DEBUGREGS: u64 = kvm_ioc(IOC_READ, 0xa1, size_of::<kvm_debugregs>());
pub const KVM_GET_LAPIC: u64 = kvm_ioc(IOC_READ, 0x8e, size_of::<kvm_lapic_state>());
pub const KVM_GET_MSRS: u64 = kvm_ioc(IOC_READ | IOC_WRITE, 0x88, size_of::<kvm_msrs>());
pub const KVM_GET_IRQCHIP: u64 = kvm_ioc(IOC_READ | IOC_WRITE, 0x62, size_of::<kvm_irqchip>());
pub const KVM_GET_PIT2: u64 = kvm_ioc(IOC_READ, 0x9f, size_of::<kvm_pit_state2>());
pub const KVM_GET_CLOCK: u64 = kvm_ioc(IOC_READ, 0x7c, size_of::<kvm_clock_data>());
// Diff snapshots (memory.rs, `take_dirty`): the main thread reads and clears KVM's dirty log.
pub const KVM_GET_DIRTY_LOG: u64 = kvm_ioc(IOC_WRITE, 0x42, size_of::<kvm_dirty_log>());

/// The only open(2) the main thread may make: `File::create` of a snapshot's files.
const CREATE_FLAGS: u64 = (O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC) as u64;

/// The vCPU kick signal, SIGRTMIN under glibc (`vcpu::kick_signal`; a test checks they agree).
const KICK_SIGNAL: u64 = 34;

/// Memory may never be made executable after start-up (malloc never asks for it).
const NO_EXEC: u64 = PROT_EXEC as u64;

// ------------------------------------------------------------------------------------------------
// The allow-lists.

/// A vCPU thread, from just before its first KVM_RUN to its end.
pub const VCPU: &[Rule] = &[
    // vcpu/mod.rs: the guest runs inside KVM_RUN; a kick or an exit brings the thread out.
    ioctl(KVM_RUN),
    // vcpu/probe.rs (halt probe), KITE_GUEST_PROFILE samples, internal-error RIP, completion.
    ioctl(KVM_GET_REGS),
    // vcpu/complete.rs: step over a completed instruction.
    ioctl(KVM_SET_REGS),
    // vcpu/complete.rs (CR0 for fwait), the state logged at a timeout.
    ioctl(KVM_GET_SREGS),
    // vcpu/complete.rs: fwait reads the x87 status word.
    ioctl(KVM_GET_FPU),
    // vcpu/probe.rs: halted? Also the state logged at a timeout.
    ioctl(KVM_GET_MP_STATE),
    // vcpu/complete.rs: drop KVM's queued exception, inject int3's #BP.
    ioctl(KVM_GET_VCPU_EVENTS),
    ioctl(KVM_SET_VCPU_EVENTS),
    // vcpu/state.rs: a parked vCPU saves its state for a snapshot.
    ioctl(KVM_GET_XSAVE),
    ioctl(KVM_GET_XCRS),
    ioctl(KVM_GET_DEBUGREGS),
    ioctl(KVM_GET_LAPIC),
    ioctl(KVM_GET_MSRS),
    // virtio-net's activation (the driver's DRIVER_OK write to the transport) sets the tap's
    // offloads.
    ioctl(TUNSETOFFLOAD),
    // sigsys.rs: the SIGSYS handler restores the terminal (glibc's tcsetattr on stdin reads
    // the mode back after setting it).
    ioctl_on(STDIN_FILENO, TCSETS),
    ioctl_on(STDIN_FILENO, TCGETS),
    // Log lines (the boot timer's, errors): on a terminal, the logger asks whether stderr is
    // one at every line (anstream's colour check).
    ioctl_on(STDERR_FILENO, TCGETS),
    // Serial output to stdout; irqfd and eventfd writes (interrupts, the exit eventfd, vsock's
    // wake-up on reset); log lines and the SIGSYS line on stderr.
    any(SYS_write),
    // Locks: the buses' devices, stdout, the exit handle, the profile samples, the start gate.
    any(SYS_futex),
    // std's mpsc channels (the state requests and replies of a snapshot) back off with
    // sched_yield while the other end is half-way through a send: a 2-vCPU snapshot hit it.
    any(SYS_sched_yield),
    // virtio-net activation and reset change what its epoll set watches.
    any(SYS_epoll_ctl),
    // boot_timer.rs: the process's CPU time (no vDSO for that clock); Instant::now where the
    // vDSO falls back to the system call.
    any(SYS_clock_gettime),
    // Return from the kick signal's handler.
    any(SYS_rt_sigreturn),
    // glibc blocks every signal while a thread ends.
    any(SYS_rt_sigprocmask),
    // malloc (exit reasons, log lines, profile samples): this thread's arena, or the main
    // arena (brk) once glibc's arena limit (8 per core) is reached, as with many vCPUs.
    with(SYS_mmap, clear(2, NO_EXEC)),
    with(SYS_mprotect, clear(2, NO_EXEC)),
    any(SYS_munmap),
    any(SYS_madvise),
    any(SYS_mremap),
    any(SYS_brk),
    // The thread's end: its VcpuFd (and kvm_run mapping) dropped, Rust's signal stack freed;
    // the last vCPU to end drops the buses, and with them the virtio transports' eventfds.
    any(SYS_close),
    // Rust's std, in debug builds, asks whether a descriptor is open before closing it
    // (OwnedFd's drop: fcntl(fd, F_GETFD)).
    with(SYS_fcntl, eq(1, F_GETFD as u64)),
    any(SYS_sigaltstack),
    any(SYS_exit),
    // sigsys.rs: the SIGSYS handler ends the process.
    any(SYS_exit_group),
];

/// disk.rs's flags for an image (std adds O_CLOEXEC).
const DISK_OPEN_RO: u64 = (O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC) as u64;
const DISK_OPEN_RW: u64 = (O_RDWR | O_NONBLOCK | O_NOCTTY | O_CLOEXEC) as u64;

/// The main thread, from just before the vCPUs enter the guest to the process's exit.
pub const MAIN: &[Rule] = &[
    // vmm.rs: the event loop (event-manager) waits on its epoll set.
    any(SYS_epoll_wait),
    // The event loop's set; the epoll sets of virtio-net (tap) and vsock (sockets, timer).
    any(SYS_epoll_ctl),
    // stdin, eventfds (queue notifications, exit, input drained), the signalfd, the tap,
    // vsock's sockets (host side).
    any(SYS_read),
    // vsock.rs: host-side Unix stream reads and writes (std's recv, and send with
    // MSG_NOSIGNAL so that a closed peer is EPIPE, not SIGPIPE).
    with(SYS_recvfrom, eq(3, 0)),
    with(SYS_sendto, eq(3, MSG_NOSIGNAL as u64)),
    // vsock/conn.rs: the guest's data straight from guest memory to the host stream (sendmsg,
    // MSG_NOSIGNAL) and the host's straight into the guest's receive buffer (readv).
    with(SYS_sendmsg, eq(2, MSG_NOSIGNAL as u64)),
    any(SYS_readv),
    // irqfds, eventfds, the tap, vsock's sockets; log lines on stderr.
    any(SYS_write),
    // block/sync_io.rs: a request's data straight between the image and guest memory, one
    // call per request.
    any(SYS_preadv),
    any(SYS_pwritev),
    // disk.rs: `PATCH /drives` reopens an image and seeks to its end for its size (a block
    // device's metadata says 0).
    any(SYS_lseek),
    // block.rs flush requests; the disks' sync at shutdown (BlockHandle::sync, Disk's drop).
    any(SYS_fdatasync),
    // block.rs: discard and write-zeroes requests (disk.rs fallocate).
    any(SYS_fallocate),
    // block/uring.rs (`io_engine: "Async"`): submit requests and wait for them (the drain at
    // pause, snapshot, PATCH /drives, shutdown). The ring was set up (io_uring_setup,
    // io_uring_register of its eventfd) when the drive was attached, before the filters.
    any(SYS_io_uring_enter),
    // The kernel runs io_uring completions as task work on this thread, interrupting a sleep
    // (clock_nanosleep in the vCPU joins, a futex wait with a timeout) without a signal; it
    // resumes such a sleep through restart_syscall.
    any(SYS_restart_syscall),
    // rng.rs: virtio-rng's bytes.
    any(SYS_getrandom),
    // vsock.rs: a guest connects to host port P, a Unix stream socket (vsock/unix.rs).
    with2(
        SYS_socket,
        eq(0, AF_UNIX as u64),
        eq(1, (SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC) as u64),
    ),
    any(SYS_connect),
    // vsock.rs: host programs connecting to the listening socket.
    with(SYS_accept4, eq(3, SOCK_CLOEXEC as u64)),
    // vsock.rs: the accepted stream made non-blocking (std's set_nonblocking).
    ioctl(FIONBIO),
    // vsock/conn.rs: the guest shut its sending side.
    with(SYS_shutdown, eq(1, SHUT_WR as u64)),
    // vsock.rs: connection deadlines.
    any(SYS_timerfd_settime),
    // Closed connections; everything dropped at the end.
    any(SYS_close),
    // Rust's std, in debug builds, checks a descriptor before closing it (F_GETFD).
    with(SYS_fcntl, eq(1, F_GETFD as u64)),
    // vcpu/mod.rs: kicks (halt probe, profiler, stop) are pthread_kill(SIGRTMIN) to a vCPU.
    with(SYS_tgkill, eq(2, KICK_SIGNAL)),
    any(SYS_getpid),
    // vcpu/mod.rs: joining the vCPUs (kick, sleep 1 ms, look again).
    any(SYS_clock_nanosleep),
    // Locks, joins.
    any(SYS_futex),
    // std's mpsc channels (a snapshot's state replies) back off with sched_yield while the
    // other end is half-way through an operation: a 2-vCPU snapshot mid-boot died on it.
    any(SYS_sched_yield),
    // Instant::now where the vDSO falls back to the system call.
    any(SYS_clock_gettime),
    // memory.rs: the memory report at exit (/proc/self/status and /proc/self/smaps, opened
    // before the filter, read from their start; mincore only for guest RAM whose mapping was
    // merged with another's).
    any(SYS_pread64),
    any(SYS_mincore),
    // vsock.rs: its listening socket is removed when the device is dropped at exit; a
    // snapshot's temporary file is removed when writing it failed.
    any(SYS_unlink),
    // snapshot/: `PUT /snapshot/create` writes two new files (created write-only, never
    // opened for reading), each under a temporary name renamed into place once synced.
    with(SYS_openat, eq(2, CREATE_FLAGS)),
    any(SYS_ftruncate),
    any(SYS_pwrite64),
    any(SYS_fsync),
    any(SYS_rename),
    ioctl(KVM_GET_IRQCHIP),
    ioctl(KVM_GET_PIT2),
    ioctl(KVM_GET_CLOCK),
    ioctl(KVM_GET_DIRTY_LOG),
    // api/hotplug.rs, PATCH /drives: disk.rs opens the new image (look at it, open, look
    // again, clear O_NONBLOCK, lock it, probe fallocate and restore the size). Only with the
    // flags Disk::open uses: never O_CREAT, O_TRUNC or write-only.
    with(SYS_openat, eq(2, DISK_OPEN_RO)),
    with(SYS_openat, eq(2, DISK_OPEN_RW)),
    with(SYS_openat, eq(2, DISK_OPEN_RW | O_EXCL as u64)),
    any(SYS_statx),
    any(SYS_newfstatat),
    any(SYS_fstat),
    with(SYS_fcntl, eq(1, F_GETFL as u64)),
    with(SYS_fcntl, eq(1, F_SETFL as u64)),
    any(SYS_flock),
    // terminal.rs: the terminal restored at exit, and by the SIGSYS handler (glibc's
    // tcsetattr reads the mode back after setting it).
    ioctl_on(STDIN_FILENO, TCSETS),
    ioctl_on(STDIN_FILENO, TCGETS),
    // Log lines: on a terminal, the logger asks whether stderr is one at every line
    // (anstream's colour check).
    ioctl_on(STDERR_FILENO, TCGETS),
    // malloc; guest RAM and thread stacks unmapped at the end.
    with(SYS_mmap, clear(2, NO_EXEC)),
    with(SYS_mprotect, clear(2, NO_EXEC)),
    any(SYS_munmap),
    any(SYS_madvise),
    any(SYS_mremap),
    any(SYS_brk),
    // A signal handler returning (none is expected on this thread; harmless).
    any(SYS_rt_sigreturn),
    // glibc's pthread_kill (the kicks) blocks every signal around its tgkill.
    any(SYS_rt_sigprocmask),
    // Rust's runtime frees the main thread's signal stack at exit.
    any(SYS_sigaltstack),
    // The process's exit (also the SIGSYS handler's, and the teardown child's).
    any(SYS_exit_group),
    // teardown.rs: the child that closes the VM after Kite exits: a process sharing this
    // address space (never a thread: exactly these flags), which inherits this filter and
    // closes every inherited descriptor.
    with(SYS_clone, eq(0, crate::teardown::CHILD_FLAGS as u64)),
    any(SYS_close_range),
    // teardown.rs: that child gets a process group of its own (only a child's or one's own
    // group can be changed), so Kite's group is empty once Kite exits.
    any(SYS_setpgid),
];

/// The API thread (`api/server.rs`), from its start (before the VM is configured) to the
/// process's exit. It only speaks HTTP: every request is carried out by the main thread.
pub const API: &[Rule] = &[
    // server.rs: one epoll set for the listening socket and the connections.
    any(SYS_epoll_wait),
    any(SYS_epoll_ctl),
    // New connections (std's accept, SOCK_CLOEXEC), made non-blocking (set_nonblocking).
    with(SYS_accept4, eq(3, SOCK_CLOEXEC as u64)),
    ioctl(FIONBIO),
    // Requests in and responses out (std's recv, and send with MSG_NOSIGNAL so that a client
    // gone is EPIPE, not SIGPIPE); the wake-up eventfd of the main thread; log lines.
    with(SYS_recvfrom, eq(3, 0)),
    with(SYS_sendto, eq(3, MSG_NOSIGNAL as u64)),
    any(SYS_read),
    any(SYS_write),
    // Connections closed.
    any(SYS_close),
    // Rust's std, in debug builds, checks a descriptor before closing it (F_GETFD).
    with(SYS_fcntl, eq(1, F_GETFD as u64)),
    // The request channel and reply wait (mpsc), the logger's lock.
    any(SYS_futex),
    // std's mpsc backs off with sched_yield while the other end is half-way through a send.
    any(SYS_sched_yield),
    any(SYS_clock_gettime),
    // Log lines: on a terminal, the logger asks whether stderr is one (anstream).
    ioctl_on(STDERR_FILENO, TCGETS),
    // sigsys.rs: the SIGSYS handler restores the terminal.
    ioctl_on(STDIN_FILENO, TCSETS),
    ioctl_on(STDIN_FILENO, TCGETS),
    // malloc: request buffers, bodies, responses.
    with(SYS_mmap, clear(2, NO_EXEC)),
    with(SYS_mprotect, clear(2, NO_EXEC)),
    any(SYS_munmap),
    any(SYS_madvise),
    any(SYS_mremap),
    any(SYS_brk),
    any(SYS_rt_sigreturn),
    any(SYS_rt_sigprocmask),
    any(SYS_sigaltstack),
    any(SYS_exit),
    // sigsys.rs: the SIGSYS handler ends the process.
    any(SYS_exit_group),
];

// ------------------------------------------------------------------------------------------------
// Building and installing.

fn condition(arg: Arg) -> Result<SeccompCondition, seccompiler::BackendError> {
    match arg {
        Arg::Eq { index, value } => {
            SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        }
        Arg::Clear { index, mask } => SeccompCondition::new(
            index,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(mask),
            0,
        ),
    }
}

/// The BPF program for `rules`; calls outside them get `mismatch`.
fn compile(
    rules: &[Rule],
    mismatch: SeccompAction,
) -> Result<BpfProgram, seccompiler::BackendError> {
    // A system call with a rule without checks is allowed whatever its other rules say.
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for rule in rules {
        let conditions = match rule.args {
            Args::Any => {
                map.insert(rule.nr, None);
                continue;
            }
            Args::One(a) => vec![condition(a)?],
            Args::Two(a, b) => vec![condition(a)?, condition(b)?],
        };
        let entry = map.entry(rule.nr).or_insert_with(|| Some(Vec::new()));
        if let Some(list) = entry {
            list.push(SeccompRule::new(conditions)?);
        }
    }
    let map = map
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect();
    SeccompFilter::new(map, mismatch, SeccompAction::Allow, TargetArch::x86_64)?.try_into()
}

/// A compiled filter for one kind of thread.
#[derive(Debug)]
pub struct Filter {
    kind: ThreadKind,
    program: BpfProgram,
}

impl Filter {
    /// The filter for `kind` in `mode`; `None` when `mode` is off.
    pub fn new(kind: ThreadKind, mode: Mode) -> Result<Option<Filter>, Error> {
        let mismatch = match mode {
            Mode::Off => return Ok(None),
            Mode::On => SeccompAction::Trap,
            Mode::Log => SeccompAction::Log,
        };
        let what = match kind {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Api => "API",
        };
        let program = compile(kind.rules(), mismatch).map_err(|e| Error::Build(what, e))?;
        Ok(Some(Filter { kind, program }))
    }

    pub fn kind(&self) -> ThreadKind {
        self.kind
    }

    /// Install the filter on the calling thread, which the SIGSYS line will call `thread`.
    /// [`sigsys::install_handler`] must have run first.
    pub fn apply(&self, thread: &str) -> Result<(), Error> {
        sigsys::set_thread_name(thread);
        seccompiler::apply_filter(&self.program).map_err(|source| Error::Install {
            thread: thread.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_lists_compile() {
        for kind in [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Api] {
            for mode in [Mode::On, Mode::Log] {
                assert!(Filter::new(kind, mode).unwrap().is_some());
            }
            assert!(Filter::new(kind, Mode::Off).unwrap().is_none());
        }
    }

    #[test]
    fn no_call_is_listed_twice_or_both_with_and_without_checks() {
        for kind in [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Api] {
            let mut unchecked = std::collections::HashSet::new();
            let mut checked = std::collections::HashSet::new();
            for rule in kind.rules() {
                let name = sigsys::syscall_name(rule.nr).unwrap();
                match rule.args {
                    Args::Any => assert!(unchecked.insert(rule.nr), "{kind:?}: {name} twice"),
                    _ => {
                        checked.insert(rule.nr);
                    }
                }
            }
            let both: Vec<_> = unchecked.intersection(&checked).collect();
            assert!(
                both.is_empty(),
                "{kind:?}: {both:?} with and without checks"
            );
        }
    }

    #[test]
    fn kvm_ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_REGS, 0x4090_ae82);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_GET_FPU, 0x81a0_ae8c);
        assert_eq!(KVM_GET_MP_STATE, 0x8004_ae98);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(KVM_SET_VCPU_EVENTS, 0x4040_aea0);
        assert_eq!(KVM_GET_DIRTY_LOG, 0x4010_ae42);
    }

    #[test]
    fn the_kick_signal_is_sigrtmin() {
        assert_eq!(crate::vcpu::kick_signal() as u64, KICK_SIGNAL);
    }

    #[test]
    fn vcpu_threads_cannot_open_files_or_make_sockets() {
        for nr in [
            SYS_open,
            SYS_openat,
            SYS_socket,
            SYS_connect,
            SYS_execve,
            SYS_clone,
        ] {
            assert!(VCPU.iter().all(|r| r.nr != nr), "{nr}");
        }
        for nr in [SYS_open, SYS_openat, SYS_execve, SYS_clone3] {
            assert!(API.iter().all(|r| r.nr != nr), "{nr}");
        }
        for nr in [SYS_open, SYS_execve, SYS_clone3] {
            assert!(MAIN.iter().all(|r| r.nr != nr), "{nr}");
        }
        // The main thread opens only with exact flags: snapshot files are created write-only
        // (never read), and PATCH /drives opens disk images without O_CREAT.
        for r in MAIN.iter().filter(|r| r.nr == SYS_openat) {
            assert!(
                matches!(r.args, Args::One(Arg::Eq { index: 2, value }) if value & O_CREAT as u64 == 0 || value & O_ACCMODE as u64 == O_WRONLY as u64),
                "{r:?}"
            );
        }
        for nr in [SYS_socket, SYS_connect, SYS_ioctl, SYS_unlink] {
            assert!(
                API.iter()
                    .all(|r| r.nr != nr || !matches!(r.args, Args::Any)),
                "{nr}"
            );
        }
        // The main thread's one clone is the teardown child, and only with its flags.
        let clones: Vec<&Rule> = MAIN.iter().filter(|r| r.nr == SYS_clone).collect();
        assert_eq!(clones.len(), 1);
        assert!(matches!(
            clones[0].args,
            Args::One(Arg::Eq { index: 0, value }) if value == crate::teardown::CHILD_FLAGS as u64
        ));
    }
}
