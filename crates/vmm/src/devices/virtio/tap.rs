//! A tap device (Linux `Documentation/networking/tuntap.rst`), opened through `/dev/net/tun` as
//! IFF_TAP | IFF_NO_PI | IFF_VNET_HDR: every frame read or written starts with a 12-byte virtio
//! net header (`struct virtio_net_hdr_v1`), which the kernel fills in or acts on, so checksum and
//! segmentation offloads pass straight between the guest and the host's network stack.
//!
//! TUNSETIFF attaches to an existing tap (ours, or any with CAP_NET_ADMIN) or creates it when it
//! is missing and we hold CAP_NET_ADMIN; a tap created that way goes away with Kite.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

/// Bytes of virtio-net header in front of every frame (`struct virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;
const TUN_PATH: &str = "/dev/net/tun";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid tap name '{0}': use 1 to 15 bytes without '/', ':' or white space")]
    Name(String),
    #[error("cannot open {TUN_PATH} (Kite needs read and write access to it)")]
    OpenTun(#[source] io::Error),
    #[error("tap {0} does not exist and Kite may not create it: creating it needs CAP_NET_ADMIN")]
    CannotCreate(String),
    #[error("tap {0} is not Kite's to open: it needs CAP_NET_ADMIN or a tap owned by this user")]
    NotPermitted(String),
    #[error("tap {0} is in use by another process")]
    Busy(String),
    #[error("{0} is not a single-queue tap device")]
    NotTap(String),
    #[error("cannot attach to tap {name}")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("tap {name} does not take 12-byte virtio-net headers")]
    VnetHdr {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Whether the kernel would accept `name` as an interface name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// Whether an interface called `name` exists in our network namespace.
fn interface_exists(name: &str) -> bool {
    let Ok(c_name) = CString::new(name) else {
        return false;
    };
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call, which only
    // reads it.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) != 0 }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name array and a union of integers, addresses and a
    // pointer); all zeroes is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// Map TUNSETIFF's failure to what the user has to change.
fn attach_error(name: &str, existed: bool, source: io::Error) -> Error {
    let name = name.to_string();
    match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) if existed => Error::NotPermitted(name),
        Some(libc::EPERM) | Some(libc::EACCES) => Error::CannotCreate(name),
        Some(libc::EBUSY) => Error::Busy(name),
        Some(libc::EINVAL) => Error::NotTap(name),
        _ => Error::Attach { name, source },
    }
}

/// An open tap device, non-blocking.
pub struct Tap {
    file: File,
    name: String,
    created: bool,
}

impl Tap {
    /// Attach to tap `name` (creating it if it is missing and we may), with 12-byte virtio-net
    /// headers and no offloads until [`Tap::set_offload`].
    pub fn open(name: &str) -> Result<Tap, Error> {
        if !valid_name(name) {
            return Err(Error::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(Error::OpenTun)?;
        let existed = interface_exists(name);
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: `file` is an open /dev/net/tun; TUNSETIFF reads and updates the ifreq we pass
        // by a reference that is valid for the call.
        let ret = unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            return Err(attach_error(name, existed, io::Error::last_os_error()));
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: `file` is attached to a tap; TUNSETVNETHDRSZ reads one int through the
        // reference, which is valid for the call.
        let ret = unsafe { ioctl_with_ref(&file, libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            let source = io::Error::last_os_error();
            let name = name.to_string();
            return Err(Error::VnetHdr { name, source });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
            created: !existed,
        };
        tap.set_offload(0).map_err(|source| Error::VnetHdr {
            name: name.to_string(),
            source,
        })?;
        Ok(tap)
    }

    /// Whether opening the tap created it (it then goes away when Kite closes it).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Tell the kernel which offloads (`TUN_F_*`) the reader of this tap handles: frames it
    /// hands us may then have partial checksums or be up to 64 KiB GSO frames.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: `self.file` is attached to a tap; TUNSETOFFLOAD takes its argument by value.
        let ret =
            unsafe { ioctl_with_val(&self.file, libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read one frame, virtio-net header first; `WouldBlock` when none is waiting.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    /// Write one frame, virtio-net header first.
    pub fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file.write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
pub mod testing {
    //! Real taps for tests: made with TUNSETIFF inside a network namespace of the test's own
    //! thread, so nothing shows up on the host.

    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    /// Move this test's thread into a network namespace of its own, where it may make taps;
    /// the error says why a real tap cannot be had here.
    pub fn isolate() -> Result<(), String> {
        if !std::path::Path::new(TUN_PATH).exists() {
            return Err(format!("{TUN_PATH} is missing"));
        }
        // SAFETY: unshare takes a flag word and changes only this thread's namespaces (each
        // test runs on a thread of its own).
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = io::Error::last_os_error();
            return Err(format!(
                "cannot make a network namespace (needs CAP_SYS_ADMIN and CAP_NET_ADMIN): {e}"
            ));
        }
        Ok(())
    }

    fn socket(domain: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
        // SAFETY: socket takes plain integers and returns a new descriptor or -1.
        let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket and is owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Bring interface `name` up (a tap must be up to pass frames).
    pub fn set_up(name: &str) -> io::Result<()> {
        let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        let mut req = ifreq(name);
        // SAFETY: the socket is open and SIOCGIFFLAGS fills the ifreq we pass by a reference
        // valid for the call.
        if unsafe { ioctl_with_mut_ref(&sock, libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFFLAGS just wrote the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as i16;
        // SAFETY: as above; SIOCSIFFLAGS only reads the ifreq.
        if unsafe { ioctl_with_ref(&sock, libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A raw packet socket on interface `name`: what it sends comes out of the tap's reading
    /// end, and what is written into the tap reaches it.
    pub struct PacketSocket(OwnedFd);

    impl PacketSocket {
        pub fn bind(name: &str) -> io::Result<Self> {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto))?;
            let index = {
                let c = CString::new(name).map_err(io::Error::other)?;
                // SAFETY: `c` is a valid C string for the duration of the call.
                unsafe { libc::if_nametoindex(c.as_ptr()) }
            };
            // SAFETY: sockaddr_ll is plain data; all zeroes is valid.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = index as i32;
            // SAFETY: `addr` is a valid sockaddr_ll and the length passed is its size.
            let ret = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self(fd))
        }

        pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
            // SAFETY: the pointer and length describe `frame`, which send only reads.
            let n =
                unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(n as usize)
        }

        /// Receive a frame, waiting at most a second.
        pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd, as the count says.
            if unsafe { libc::poll(&mut pfd, 1, 1000) } <= 0 {
                return Err(io::ErrorKind::TimedOut.into());
            }
            // SAFETY: the pointer and length describe `buf`, which recv may fill.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(n as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use kite_testkit::{Need, skip};

    use super::*;

    #[test]
    fn names_the_kernel_would_refuse_are_refused_first() {
        for bad in ["", "a/b", "a:b", "a b", ".", "..", "sixteen-bytes-xx"] {
            assert!(
                matches!(Tap::open(bad), Err(Error::Name(_))),
                "{bad:?} accepted"
            );
        }
        assert!(valid_name("tap0"));
        assert!(valid_name("fifteen-bytes-x"));
    }

    #[test]
    fn attach_errors_name_the_tap_and_the_missing_right() {
        let eperm = || io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(
            attach_error("tap9", false, eperm()).to_string(),
            "tap tap9 does not exist and Kite may not create it: creating it needs CAP_NET_ADMIN"
        );
        assert_eq!(
            attach_error("tap9", true, eperm()).to_string(),
            "tap tap9 is not Kite's to open: it needs CAP_NET_ADMIN or a tap owned by this user"
        );
        let ebusy = io::Error::from_raw_os_error(libc::EBUSY);
        assert!(matches!(attach_error("t", true, ebusy), Error::Busy(_)));
        let einval = io::Error::from_raw_os_error(libc::EINVAL);
        assert!(matches!(attach_error("t", true, einval), Error::NotTap(_)));
    }

    #[test]
    fn a_missing_tap_is_created_with_vnet_headers_and_offloads() {
        if let Err(why) = testing::isolate() {
            let test = concat!(
                module_path!(),
                "::a_missing_tap_is_created_with_vnet_headers_and_offloads"
            );
            return skip(test, Need::Tap, &why);
        }
        let mut tap = Tap::open("kite-t0").unwrap();
        assert!(tap.created());
        assert!(interface_exists("kite-t0"));
        let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        tap.set_offload(all).unwrap();
        // TSO without checksum offload makes no sense to the kernel.
        assert!(tap.set_offload(libc::TUN_F_TSO4).is_err());
        // Nothing is waiting, and the descriptor does not block.
        let err = tap.read_frame(&mut [0u8; 2048]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // A second open of the same single-queue tap finds it busy.
        assert!(matches!(Tap::open("kite-t0"), Err(Error::Busy(_))));
        drop(tap);
        assert!(!interface_exists("kite-t0"), "a created tap outlived Kite");
    }
}
