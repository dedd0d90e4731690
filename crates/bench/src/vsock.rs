//! What the `virtio-vsock` workload talks to: a Unix-socket echo server at `<socket>_<PORT>`,
//! where Kite and Firecracker alike connect a guest's connection to host port [`PORT`] (the
//! VM's vsock device listens on `<socket>` itself). The guest sends [`BYTES`] and checks every
//! byte that comes back.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// The host port the guest connects to, and the bytes it sends and gets back.
pub const PORT: u32 = 1234;
pub const BYTES: u64 = 4 << 20;
/// The guest's CID (any will do: it connects to the host, CID 2).
pub const GUEST_CID: u32 = 3;

/// The echo server; it stops and its socket goes on drop.
pub struct VsockSetup {
    /// Where the VM's vsock device listens (made by the VMM, removed before each run).
    pub socket: PathBuf,
    port_path: PathBuf,
    stop: Arc<AtomicBool>,
    echo: Option<JoinHandle<()>>,
}

impl VsockSetup {
    /// Start the echo server in `dir`.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("vsock.sock");
        let port_path = dir.join(format!("vsock.sock_{PORT}"));
        let _ = std::fs::remove_file(&port_path);
        let listener = UnixListener::bind(&port_path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let echo = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                // One connection per run; a failed one ends with its run.
                if let Ok(conn) = conn {
                    std::thread::spawn(move || echo(conn));
                }
            }
        });
        Ok(Self {
            socket,
            port_path,
            stop,
            echo: Some(echo),
        })
    }

    /// Remove what an earlier run's VMM left at the device's socket path (Kite removes its
    /// socket at exit; a VMM that does not would make the next one fail to listen there).
    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Echo every byte until the peer closes.
fn echo(mut conn: UnixStream) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

impl Drop for VsockSetup {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = UnixStream::connect(&self.port_path);
        if let Some(echo) = self.echo.take() {
            let _ = echo.join();
        }
        let _ = std::fs::remove_file(&self.port_path);
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_at_the_port_path_and_goes_away_on_drop() {
        let dir = std::env::temp_dir().join(format!("kite-bench-vsock-{}", std::process::id()));
        let setup = VsockSetup::create(&dir).unwrap();
        let mut c = UnixStream::connect(dir.join("vsock.sock_1234")).unwrap();
        c.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        std::fs::write(&setup.socket, b"stale").unwrap();
        setup.clear();
        assert!(!setup.socket.exists());
        drop(setup);
        assert!(!dir.join("vsock.sock_1234").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
