//! What the runtime replays do on the host besides talking to Kite: FIFOs for its log and
//! metrics (opened for reading before Kite writes them, as Kata does) and bind mounts (Kata
//! and firecracker-containerd put a container's image over a placeholder drive this way).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::path_str;

pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path_str(path)).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path only.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Open a FIFO's reading end without waiting for a writer.
pub fn fifo_reader(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}

/// What a non-blocking reader has, up to end of file or "nothing more now".
pub fn drain(f: &mut std::fs::File) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading a FIFO: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn bind_mount(from: &Path, to: &Path) {
    let (f, t) = (
        std::ffi::CString::new(path_str(from)).unwrap(),
        std::ffi::CString::new(path_str(to)).unwrap(),
    );
    let none = std::ptr::null();
    // SAFETY: mount reads the two NUL-terminated paths only.
    let r = unsafe { libc::mount(f.as_ptr(), t.as_ptr(), none, libc::MS_BIND, none.cast()) };
    assert_eq!(
        r,
        0,
        "bind mount {} on {}: {}",
        from.display(),
        to.display(),
        std::io::Error::last_os_error()
    );
}

/// Detach whatever is mounted at `at` (nothing if nothing is).
pub fn umount(at: &Path) {
    let c = std::ffi::CString::new(path_str(at)).unwrap();
    // SAFETY: umount2 reads the NUL-terminated path only.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}
