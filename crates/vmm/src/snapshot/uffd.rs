//! The `Uffd` memory backend of `PUT /snapshot/load`, as Firecracker has it. Guest RAM is
//! fresh anonymous memory registered with a userfaultfd for missing-page faults; the
//! userfaultfd goes, with a JSON list of the RAM regions ([`Mapping`]), over a Unix socket
//! (SCM_RIGHTS) to a page-fault handler process, which fills each page when it is first
//! touched (from the snapshot's memory file, with UFFDIO_COPY). Also the few userfaultfd calls
//! a handler makes ([`Uffd`]; `kite-uffd-handler` is one).
//!
//! The userfaultfd ABI is a handful of ioctls and four small structs, written out here (from
//! `<linux/userfaultfd.h>`) rather than taken from the `userfaultfd` crate, whose bindings are
//! generated with bindgen at build time and so need libclang on every machine that builds Kite.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::memory::GuestMem;

/// The page size Kite's guest RAM is mapped with (no huge pages).
pub const PAGE_SIZE: usize = 4096;

/// One guest RAM region, as Firecracker sends it to the handler: the handler fills
/// `[base_host_virt_addr, + size)` of the VMM's memory from `[offset, + size)` of the memory
/// file. Both page-size fields carry the page size in bytes: `page_size` is Firecracker's
/// current name, `page_size_kib` its older one (misnamed, still sent), which handlers written
/// for Firecracker 1.7 read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub base_host_virt_addr: u64,
    pub size: usize,
    pub offset: u64,
    #[serde(default)]
    pub page_size: usize,
    #[serde(default)]
    pub page_size_kib: usize,
}

impl Mapping {
    /// The page size in bytes, whichever field the sender filled.
    pub fn page(&self) -> usize {
        [self.page_size, self.page_size_kib]
            .into_iter()
            .find(|&p| p != 0)
            .unwrap_or(PAGE_SIZE)
    }
}

/// The mappings a VMM sent (its JSON), checked: at least one region, each a whole number of
/// pages of a power-of-two page size.
pub fn parse_mappings(body: &str) -> Result<Vec<Mapping>, String> {
    let mappings: Vec<Mapping> = serde_json::from_str(body)
        .map_err(|e| format!("the VMM's mappings are not the expected JSON ({e}): {body:?}"))?;
    if mappings.is_empty() {
        return Err("the VMM sent no memory regions".into());
    }
    for m in &mappings {
        let page = m.page();
        if !page.is_power_of_two()
            || m.size == 0
            || !m.size.is_multiple_of(page)
            || !m.base_host_virt_addr.is_multiple_of(page as u64)
        {
            return Err(format!(
                "a memory region the VMM sent is not whole pages: {m:?}"
            ));
        }
    }
    Ok(mappings)
}

// <linux/userfaultfd.h>
const UFFD_API: u64 = 0xaa;
const UFFDIO: u32 = 0xaa;
const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_REMOVE: u8 = 0x15;
/// `struct uffd_msg` is packed: an 8-byte header (the event in its first byte) and a 24-byte
/// union.
const MSG_SIZE: usize = 32;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}
#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}
#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

vmm_sys_util::ioctl_iowr_nr!(UFFDIO_API, UFFDIO, 0x3f, UffdioApi);
vmm_sys_util::ioctl_iowr_nr!(UFFDIO_REGISTER, UFFDIO, 0x00, UffdioRegister);
vmm_sys_util::ioctl_ior_nr!(UFFDIO_UNREGISTER, UFFDIO, 0x01, UffdioRange);
vmm_sys_util::ioctl_iowr_nr!(UFFDIO_COPY, UFFDIO, 0x03, UffdioCopy);
vmm_sys_util::ioctl_iowr_nr!(UFFDIO_ZEROPAGE, UFFDIO, 0x04, UffdioZeropage);
// /dev/userfaultfd's one ioctl: a new userfaultfd, its flags as the argument.
vmm_sys_util::ioctl_io_nr!(USERFAULTFD_IOC_NEW, UFFDIO, 0x00);

/// What a userfaultfd reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A missing page at `address` was touched.
    Pagefault { address: u64 },
    /// `[start, end)` was given back (MADV_DONTNEED/REMOVE): it reads as zeroes from now on.
    Remove { start: u64, end: u64 },
    /// Another event (only asked-for features send any).
    Other(u8),
}

/// A userfaultfd.
#[derive(Debug)]
pub struct Uffd(OwnedFd);

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Uffd {
    /// A new userfaultfd (close-on-exec, non-blocking, kernel faults too: KVM's), with the
    /// API handshake done and the remove event on, as Firecracker makes it. From
    /// /dev/userfaultfd where it is there and may be opened, else from the system call.
    pub fn new() -> Result<Self, String> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        let fd = match File::options()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd")
        {
            // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new
            // descriptor or -1; it touches no memory of ours.
            Ok(dev) => unsafe {
                vmm_sys_util::ioctl::ioctl_with_val(&dev, USERFAULTFD_IOC_NEW(), flags as _)
            },
            Err(_) => -1,
        };
        let fd = if fd >= 0 {
            fd
        } else {
            // SAFETY: userfaultfd(2) takes its flags by value and returns a new descriptor
            // or -1.
            unsafe { libc::syscall(libc::SYS_userfaultfd, flags) as RawFd }
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(format!(
                "cannot create a userfaultfd for the Uffd backend: {e}: run Kite as root, give its user read-write access to /dev/userfaultfd, or set the sysctl vm.unprivileged_userfaultfd=1"
            ));
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let uffd = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_EVENT_REMOVE,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api`, which `api` is.
        let rc = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(&uffd, UFFDIO_API(), &mut api) };
        if rc != 0 {
            return Err(format!(
                "the userfaultfd API handshake failed: {}: this kernel's userfaultfd is too old for the Uffd backend",
                io::Error::last_os_error()
            ));
        }
        Ok(uffd)
    }

    /// A userfaultfd received from a VMM.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self(fd)
    }

    /// Report missing-page faults in `[start, + len)` (page-aligned, mapped in this process).
    pub fn register_missing(&self, start: u64, len: u64) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes a `struct uffdio_register`, which `reg` is;
        // registering changes how faults on the range are served, not its contents.
        let rc =
            unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(self, UFFDIO_REGISTER(), &mut reg) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Stop reporting faults in `[start, end)`: its missing pages read as zeroes from now on.
    pub fn unregister(&self, start: u64, end: u64) -> io::Result<()> {
        let mut range = UffdioRange {
            start,
            len: end.saturating_sub(start),
        };
        // SAFETY: UFFDIO_UNREGISTER reads a `struct uffdio_range`, which `range` is.
        let rc = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(self, UFFDIO_UNREGISTER(), &mut range)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Fill the missing page(s) at `dst` (an address of the registered process) with `src`,
    /// and wake whoever waits on them. `Ok(false)`: the page was there already (another
    /// thread's fault of the same page filled it).
    pub fn copy(&self, dst: u64, src: &[u8]) -> io::Result<bool> {
        let mut copy = UffdioCopy {
            dst,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes a `struct uffdio_copy`, which `copy` is; the
        // kernel reads `len` bytes at `src`, which `src` has, and writes only into missing
        // pages of the registered range at `dst`.
        let rc = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(self, UFFDIO_COPY(), &mut copy) };
        filled(rc)
    }

    /// Map the shared zero page at the missing page(s) `[dst, + len)`, and wake whoever waits;
    /// `Ok(false)` as for [`Uffd::copy`].
    pub fn zeropage(&self, dst: u64, len: u64) -> io::Result<bool> {
        let mut zero = UffdioZeropage {
            range: UffdioRange { start: dst, len },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE reads and writes a `struct uffdio_zeropage`, which `zero`
        // is; it only maps the zero page into missing pages of the registered range.
        let rc =
            unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(self, UFFDIO_ZEROPAGE(), &mut zero) };
        filled(rc)
    }

    /// The next event, or `None` when there is none now (the descriptor is non-blocking).
    pub fn read_event(&self) -> io::Result<Option<Event>> {
        let mut msg = [0u8; MSG_SIZE];
        // SAFETY: read(2) writes at most MSG_SIZE bytes into `msg`, which has them.
        let n = unsafe { libc::read(self.as_raw_fd(), msg.as_mut_ptr().cast(), MSG_SIZE) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        if n as usize != MSG_SIZE {
            return Err(io::Error::other(format!(
                "a userfaultfd message of {n} bytes, not {MSG_SIZE}"
            )));
        }
        Ok(Some(parse_event(&msg)))
    }
}

/// A fill ioctl's result: done (`true`), or done already by someone else (EEXIST: `false`).
fn filled(rc: i32) -> io::Result<bool> {
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// A `struct uffd_msg`'s event.
fn parse_event(msg: &[u8; MSG_SIZE]) -> Event {
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&msg[at..at + 8]);
        u64::from_ne_bytes(b)
    };
    match msg[0] {
        // pagefault: flags at 8, address at 16.
        UFFD_EVENT_PAGEFAULT => Event::Pagefault { address: word(16) },
        // remove: start at 8, end at 16.
        UFFD_EVENT_REMOVE => Event::Remove {
            start: word(8),
            end: word(16),
        },
        other => Event::Other(other),
    }
}

/// What a VM restored on the Uffd backend keeps while it runs: its userfaultfd (so that a
/// fault waits for the handler rather than reading zeroes, as in Firecracker) and the
/// connection to the handler, whose closing tells the handler that the VM has gone.
#[derive(Debug)]
pub struct Backend {
    _uffd: Uffd,
    _connection: UnixStream,
}

/// Register every region of `mem` (fresh anonymous RAM) with a new userfaultfd, connect to
/// the handler at `socket` and send it the regions and the userfaultfd. From here on, the
/// handler serves every first touch of a page, Kite's own (loading device state) and the
/// guest's. `Err` is one line.
pub fn hand_over(mem: &GuestMem, socket: &Path) -> Result<Backend, String> {
    let uffd = Uffd::new()?;
    let mut mappings = Vec::new();
    let mut offset = 0u64;
    for region in mem.iter() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| format!("guest RAM: {e}"))? as u64;
        uffd.register_missing(host, region.len())
            .map_err(|e| format!("cannot register guest RAM with the userfaultfd: {e}"))?;
        mappings.push(Mapping {
            base_host_virt_addr: host,
            size: region.len() as usize,
            offset,
            page_size: PAGE_SIZE,
            page_size_kib: PAGE_SIZE,
        });
        offset += region.len();
    }
    let body = serde_json::to_string(&mappings).map_err(|e| format!("the mappings: {e}"))?;
    let connection = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to the page-fault handler's socket {}: {e}: start the handler (for example kite-uffd-handler SOCKET MEMORY_FILE) before the load",
            socket.display()
        )
    })?;
    let sent = connection
        .send_with_fd(body.as_bytes(), uffd.as_raw_fd())
        .map_err(|e| {
            format!(
                "cannot send the userfaultfd to the page-fault handler at {}: {e}",
                socket.display()
            )
        })?;
    if sent != body.len() {
        return Err(format!(
            "the page-fault handler at {} took {sent} of the {} bytes of the mappings",
            socket.display(),
            body.len()
        ));
    }
    log::info!(
        "guest RAM handed to the page-fault handler at {} ({} regions)",
        socket.display(),
        mappings.len()
    );
    Ok(Backend {
        _uffd: uffd,
        _connection: connection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // As <linux/userfaultfd.h> gives them on x86-64.
        assert_eq!(UFFDIO_API(), 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER(), 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER(), 0x8010_aa01);
        assert_eq!(UFFDIO_COPY(), 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE(), 0xc020_aa04);
        assert_eq!(USERFAULTFD_IOC_NEW(), 0xaa00);
    }

    #[test]
    fn mappings_are_firecrackers_json() {
        let m = Mapping {
            base_host_virt_addr: 0x7f00_0000_0000,
            size: 256 << 20,
            offset: 0,
            page_size: 4096,
            page_size_kib: 4096,
        };
        let json = serde_json::to_string(std::slice::from_ref(&m)).unwrap();
        assert_eq!(
            json,
            r#"[{"base_host_virt_addr":139637976727552,"size":268435456,"offset":0,"page_size":4096,"page_size_kib":4096}]"#
        );
        // Firecracker 1.7 sent only page_size_kib (in bytes).
        let old = parse_mappings(
            r#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size_kib":4096}]"#,
        )
        .unwrap();
        assert_eq!(old[0].page(), 4096);
        assert_eq!(parse_mappings(&json).unwrap(), vec![m]);
        assert!(parse_mappings("[]").is_err());
        assert!(parse_mappings(r#"[{"base_host_virt_addr":4096,"size":100,"offset":0}]"#).is_err());
        assert!(parse_mappings("{").is_err());
    }

    #[test]
    fn events_are_read_from_their_offsets() {
        let mut msg = [0u8; MSG_SIZE];
        msg[0] = UFFD_EVENT_PAGEFAULT;
        msg[16..24].copy_from_slice(&0x1234_5000u64.to_ne_bytes());
        assert_eq!(
            parse_event(&msg),
            Event::Pagefault {
                address: 0x1234_5000
            }
        );
        msg[0] = UFFD_EVENT_REMOVE;
        msg[8..16].copy_from_slice(&0x1000u64.to_ne_bytes());
        assert_eq!(
            parse_event(&msg),
            Event::Remove {
                start: 0x1000,
                end: 0x1234_5000
            }
        );
    }

    /// A page registered here is filled by a thread playing the handler, through the same
    /// calls `kite-uffd-handler` makes.
    #[test]
    fn a_missing_page_is_filled_by_the_handler() {
        let uffd = match Uffd::new() {
            Ok(u) => u,
            Err(e) => {
                let test = "a_missing_page_is_filled_by_the_handler";
                return kite_testkit::skip(test, kite_testkit::Need::Userfaultfd, &e);
            }
        };
        let mem = crate::memory::create(1 << 20).unwrap();
        let host = mem.get_host_address(vm_memory::GuestAddress(0)).unwrap() as u64;
        uffd.register_missing(host, 1 << 20).unwrap();
        let handler = std::thread::spawn(move || {
            let mut served = 0;
            while served < 2 {
                match uffd.read_event().unwrap() {
                    Some(Event::Pagefault { address }) => {
                        let page = address & !(PAGE_SIZE as u64 - 1);
                        let filled = if page == host {
                            uffd.copy(page, &[7u8; PAGE_SIZE]).unwrap()
                        } else {
                            uffd.zeropage(page, PAGE_SIZE as u64).unwrap()
                        };
                        assert!(filled);
                        served += 1;
                    }
                    Some(other) => panic!("{other:?}"),
                    None => std::thread::sleep(std::time::Duration::from_millis(1)),
                }
            }
        });
        use vm_memory::Bytes;
        let first: u8 = mem.read_obj(vm_memory::GuestAddress(100)).unwrap();
        let later: u8 = mem.read_obj(vm_memory::GuestAddress(5 * 4096)).unwrap();
        handler.join().unwrap();
        assert_eq!((first, later), (7, 0));
    }
}
