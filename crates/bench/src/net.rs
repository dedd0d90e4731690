//! The network both sides of the `virtio-net` workload talk over: a network namespace of the
//! bench's own with a tap device at [`PEER_IP`] and a UDP echo server on it. The guest reaches the
//! echo server through virtio-net, Kite and the tap; the host side (`kite workload virtio-net`,
//! run in the same namespace) reaches it through the host's own stack. Needs root and `ip`.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The echo server's address: the tap's address in the namespace (the guest's default peer).
pub const PEER_IP: &str = "10.0.2.2";
pub const PEER_PORT: u16 = 7777;
/// The guest's address on the tap's subnet (the test guest's default).
pub const GUEST_IP: &str = "10.0.2.15";
pub const TAP: &str = "kbench0";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run ip")]
    Spawn(#[source] std::io::Error),
    #[error("ip {args} failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("cannot enter network namespace {0}")]
    Enter(String, #[source] std::io::Error),
    #[error("cannot start the UDP echo server at {PEER_IP}:{PEER_PORT}")]
    Echo(#[source] std::io::Error),
    #[error("the UDP echo server did not start within 10 s")]
    EchoTimeout,
}

/// A namespace with a tap and an echo server; both go away on drop.
pub struct NetSetup {
    pub netns: String,
    stop: Arc<AtomicBool>,
    echo: Option<JoinHandle<()>>,
}

fn ip(args: &[&str]) -> Result<(), Error> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(Error::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl NetSetup {
    /// Make the namespace, the tap and the echo server.
    pub fn create() -> Result<NetSetup, Error> {
        // Drop deletes the namespace (and the tap in it), even if `ip netns add` seems to fail:
        // it may have made it and then been stopped by a Ctrl-C.
        let mut setup = NetSetup {
            netns: format!("kite-bench-{}", std::process::id()),
            stop: Arc::new(AtomicBool::new(false)),
            echo: None,
        };
        ip(&["netns", "add", &setup.netns])?;
        let ns = setup.netns.clone();
        let addr = format!("{PEER_IP}/24");
        for step in [
            &["link", "set", "lo", "up"][..],
            &["tuntap", "add", "dev", TAP, "mode", "tap"],
            &["addr", "add", &addr, "dev", TAP],
            &["link", "set", TAP, "up"],
        ] {
            let mut args = vec!["netns", "exec", &ns, "ip"];
            args.extend_from_slice(step);
            ip(&args)?;
        }
        // Fewer unrelated frames (IPv6 router solicitations) on the link.
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns, "sysctl", "-qw"])
            .arg(format!("net.ipv6.conf.{TAP}.disable_ipv6=1"))
            .output();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop = setup.stop.clone();
        setup.echo = Some(std::thread::spawn(move || match enter_and_bind(&ns) {
            Ok(socket) => {
                let _ = ready_tx.send(Ok(()));
                echo(&socket, &stop);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        }));
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(setup),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::EchoTimeout),
        }
    }

    /// `cmd`, run inside the namespace.
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.netns])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        wrapped
    }
}

impl Drop for NetSetup {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(echo) = self.echo.take() {
            let _ = echo.join();
        }
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

/// Move this thread into namespace `ns` and bind the echo server's socket there.
fn enter_and_bind(ns: &str) -> Result<UdpSocket, Error> {
    let enter = |e| Error::Enter(ns.to_string(), e);
    let file = std::fs::File::open(format!("/run/netns/{ns}")).map_err(enter)?;
    // SAFETY: setns with a namespace file descriptor we hold open; it moves only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(enter(std::io::Error::last_os_error()));
    }
    let socket = UdpSocket::bind((PEER_IP, PEER_PORT)).map_err(Error::Echo)?;
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(Error::Echo)?;
    Ok(socket)
}

/// Send every datagram back where it came from, until `stop`.
fn echo(socket: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_runs_the_command_in_the_namespace() {
        let setup = NetSetup {
            netns: "kite-bench-x".into(),
            stop: Arc::new(AtomicBool::new(false)),
            echo: None,
        };
        let mut cmd = Command::new("/bin/kite");
        cmd.args(["workload", "virtio-net"]);
        let w = setup.wrap(&cmd);
        assert_eq!(w.get_program(), "ip");
        let args: Vec<_> = w.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "netns",
                "exec",
                "kite-bench-x",
                "/bin/kite",
                "workload",
                "virtio-net"
            ]
        );
        // Dropping it must not fail for a namespace that does not exist.
        std::mem::forget(setup);
    }
}
