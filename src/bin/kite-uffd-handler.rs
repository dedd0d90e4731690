//! `kite-uffd-handler SOCKET MEMORY_FILE`: an example page-fault handler for the `Uffd`
//! memory backend of `PUT /snapshot/load` (and `kite restore --uffd`). It speaks Firecracker's
//! protocol, so it serves Firecracker too.
//!
//! 1. It listens on SOCKET (the load's `backend_path`) and maps MEMORY_FILE (the snapshot's
//!    memory file) read-only.
//! 2. The VMM connects once and sends the JSON list of its guest RAM regions with its
//!    userfaultfd attached (SCM_RIGHTS).
//! 3. Each first touch of a guest page is a fault event: the handler copies the page from the
//!    file into the VMM's memory (UFFDIO_COPY), or maps the zero page for a page of zeroes
//!    (UFFDIO_ZEROPAGE: the holes of a sparse memory file cost no memory).
//! 4. When the VMM goes away (its end of the connection closes), the handler prints how many
//!    faults it served and exits 0.
//!
//! A VMM whose handler dies waits for ever on its next missing page (as Firecracker's does):
//! on an error it cannot go on from, this handler kills the VMM (SIGKILL to the peer of the
//! connection) before it exits 1.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use kite_vmm::snapshot::uffd::{Event, Mapping, Uffd, parse_mappings};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const USAGE: &str = "usage: kite-uffd-handler SOCKET MEMORY_FILE";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "{USAGE}\nServe the page faults of a VMM restored with the Uffd memory backend from MEMORY_FILE."
        );
        return;
    }
    let [socket, memory] = &args[..] else {
        eprintln!("kite-uffd-handler: error: {USAGE}");
        std::process::exit(2);
    };
    if let Err(e) = run(Path::new(socket), Path::new(memory)) {
        eprintln!("kite-uffd-handler: error: {e}");
        std::process::exit(1);
    }
}

/// The memory file, mapped read-only and private (pages are read when a fault needs them).
struct Backing {
    ptr: *const u8,
    len: usize,
}

impl Backing {
    fn map(path: &Path) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .len() as usize;
        if len == 0 {
            return Err(format!("{} is empty", path.display()));
        }
        // SAFETY: a new read-only private mapping of `len` bytes of an open file; nothing
        // else refers to that address range.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "cannot map {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// `len` bytes at `offset`, if the file has them.
    fn get(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let end = (offset as usize).checked_add(len)?;
        // SAFETY: `[offset, end)` lies inside the live mapping of `self.len` bytes, which is
        // read-only and lives as long as `self`.
        (end <= self.len)
            .then(|| unsafe { std::slice::from_raw_parts(self.ptr.add(offset as usize), len) })
    }
}

/// Listen on `path`: bound under a temporary name and renamed once listening, so that the
/// path appearing means a VMM can connect.
fn listen(path: &Path) -> Result<UnixListener, String> {
    if path.exists() {
        return Err(format!(
            "{} exists: remove it or choose another socket path",
            path.display()
        ));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let listener = UnixListener::bind(&tmp)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot listen on {}: {e}", path.display())
    })?;
    Ok(listener)
}

/// What was served.
#[derive(Default)]
struct Counts {
    copied: u64,
    zero: u64,
    removed: u64,
}

fn run(socket: &Path, memory: &Path) -> Result<(), String> {
    let backing = Backing::map(memory)?;
    let listener = listen(socket)?;
    eprintln!(
        "kite-uffd-handler: listening on {}, serving {}",
        socket.display(),
        memory.display()
    );
    let accepted = listener.accept();
    // One VMM per handler: the socket goes once it has connected.
    let _ = std::fs::remove_file(socket);
    let (stream, _) = accepted.map_err(|e| format!("accept on {}: {e}", socket.display()))?;
    let mut body = vec![0u8; 64 << 10];
    let (n, fd) = stream
        .recv_with_fd(&mut body)
        .map_err(|e| format!("cannot receive the VMM's mappings: {e}"))?;
    let fail = |e: String| -> String {
        kill_peer(&stream);
        e
    };
    let Some(fd) = fd else {
        return Err(fail("the VMM sent no userfaultfd".into()));
    };
    let uffd = Uffd::from_fd(OwnedFd::from(fd));
    let mappings = parse_mappings(&String::from_utf8_lossy(&body[..n])).map_err(&fail)?;
    for m in &mappings {
        if backing.get(m.offset, m.size).is_none() {
            return Err(fail(format!(
                "{} has {} bytes, shorter than the guest RAM the VMM sent ({} bytes at offset {}): wrong memory file",
                memory.display(),
                backing.len,
                m.size,
                m.offset
            )));
        }
    }
    let counts = serve(&uffd, &stream, &mappings, &backing).map_err(&fail)?;
    println!(
        "kite-uffd-handler: served {} page faults ({} copied, {} zero pages), {} ranges removed",
        counts.copied + counts.zero,
        counts.copied,
        counts.zero,
        counts.removed
    );
    Ok(())
}

/// Serve faults until the VMM closes its end of `stream` (or its memory has gone).
fn serve(
    uffd: &Uffd,
    stream: &UnixStream,
    mappings: &[Mapping],
    backing: &Backing,
) -> Result<Counts, String> {
    let mut counts = Counts::default();
    // Faults that met EAGAIN (a remove event was queued before them): tried again after the
    // events before them are read.
    let mut pending: Vec<u64> = Vec::new();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            },
        ];
        let timeout = if pending.is_empty() { -1 } else { 1 };
        // SAFETY: poll(2) reads and writes the two pollfd structs of `fds`, and no more.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        let mut faults = std::mem::take(&mut pending);
        while let Some(event) = uffd
            .read_event()
            .map_err(|e| format!("read the userfaultfd: {e}"))?
        {
            match event {
                Event::Pagefault { address } => faults.push(address),
                Event::Remove { start, end } => {
                    // Given back: its pages read as zeroes from now on, not from the file.
                    uffd.unregister(start, end)
                        .map_err(|e| format!("unregister {start:#x}..{end:#x}: {e}"))?;
                    counts.removed += 1;
                }
                Event::Other(kind) => eprintln!("kite-uffd-handler: ignored event {kind:#x}"),
            }
        }
        for address in faults {
            match fill(uffd, mappings, backing, address)? {
                Fill::Copied => counts.copied += 1,
                Fill::Zero => counts.zero += 1,
                Fill::There => {}
                Fill::Again => pending.push(address),
                Fill::Gone => return Ok(counts),
            }
        }
        if fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return Ok(counts);
        }
    }
}

enum Fill {
    Copied,
    Zero,
    /// Filled already: two threads faulted on the page at once.
    There,
    /// EAGAIN: try again once the queued events are read.
    Again,
    /// The VMM's memory has gone (it is exiting).
    Gone,
}

/// Fill the page at `address` from the memory file.
fn fill(
    uffd: &Uffd,
    mappings: &[Mapping],
    backing: &Backing,
    address: u64,
) -> Result<Fill, String> {
    let Some(m) = mappings.iter().find(|m| {
        (m.base_host_virt_addr..m.base_host_virt_addr + m.size as u64).contains(&address)
    }) else {
        return Err(format!(
            "a fault at {address:#x}, outside every region the VMM sent"
        ));
    };
    let page = m.page() as u64;
    let dst = address & !(page - 1);
    let src = backing
        .get(m.offset + (dst - m.base_host_virt_addr), page as usize)
        .ok_or_else(|| format!("the page at {dst:#x} is past the end of the memory file"))?;
    let zero = src.iter().all(|&b| b == 0);
    let done = if zero {
        uffd.zeropage(dst, page)
    } else {
        uffd.copy(dst, src)
    };
    match done {
        Ok(false) => Ok(Fill::There),
        Ok(true) if zero => Ok(Fill::Zero),
        Ok(true) => Ok(Fill::Copied),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(Fill::Again),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)) => Ok(Fill::Gone),
        Err(e) => Err(format!("cannot fill the page at {dst:#x}: {e}")),
    }
}

/// Kill the VMM at the other end of `stream`, which would otherwise wait for ever on a page
/// this handler will not serve.
fn kill_peer(stream: &UnixStream) {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one `struct ucred` (at most `len` bytes) into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc == 0 && cred.pid > 0 {
        eprintln!(
            "kite-uffd-handler: killing the VMM (pid {}), which cannot go on without its pages",
            cred.pid
        );
        // SAFETY: kill(2) takes plain values.
        unsafe { libc::kill(cred.pid, libc::SIGKILL) };
    }
}
