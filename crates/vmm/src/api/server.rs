//! The API thread: accepts connections on the Unix socket, reads requests (many clients at
//! once, on one epoll set), decodes them ([`routes`](super::routes)) and hands each to the VMM
//! thread through [`ApiChannel`], then writes the answer back. It never touches the VM itself,
//! so its seccomp list is short (`seccomp.rs`, `API`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::http::{self, Parsed, Response};
use super::routes::{self, ApiRequest};
use crate::seccomp;

/// Most connections served at once; one more is answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection holding part of a request for this long is answered 400 and closed.
pub const PARTIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection with nothing pending for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a request may wait for the VMM thread (a boot's set-up is the slowest).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A request for the VMM thread and where its answer goes.
pub struct Envelope {
    pub request: ApiRequest,
    pub reply: mpsc::SyncSender<Response>,
}

/// The VMM thread's end: requests arrive on `rx`; `wake` becomes readable when one does.
pub struct ApiChannel {
    pub rx: mpsc::Receiver<Envelope>,
    pub wake: Arc<EventFd>,
    pub socket: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "--api-sock {}: the path already exists; remove it (or choose another path) and start again",
        .0.display()
    )]
    Exists(PathBuf),
    #[error("cannot listen on --api-sock {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the API thread")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
}

/// Listen on `path` and serve the API on a new thread for the life of the process.
pub fn start(path: &Path, filter: Option<seccomp::Filter>) -> Result<ApiChannel, Error> {
    if path.exists() || path.is_symlink() {
        return Err(Error::Exists(path.to_owned()));
    }
    let bind = |source| Error::Bind {
        path: path.to_owned(),
        source,
    };
    // Bound under a temporary name and renamed once listening: a client that connects as
    // soon as the path appears (Kata, the Go SDK) is never refused in between.
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".{}.tmp", std::process::id()));
    let temp = PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    let listener = match UnixListener::bind(&temp) {
        Ok(l) => {
            if let Err(e) = std::fs::rename(&temp, path) {
                let _ = std::fs::remove_file(&temp);
                return Err(bind(e));
            }
            l
        }
        // The temporary name is too long for a socket address where the path itself fits.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            UnixListener::bind(path).map_err(bind)?
        }
        Err(e) => return Err(bind(e)),
    };
    listener.set_nonblocking(true).map_err(bind)?;
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(bind)?);
    let epoll = Epoll::new().map_err(bind)?;
    epoll
        .ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, listener.as_raw_fd() as u64),
        )
        .map_err(bind)?;
    let (tx, rx) = mpsc::channel();
    let server = Server {
        listener,
        epoll,
        conns: HashMap::new(),
        tx,
        wake: wake.clone(),
    };
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            if let Err(e) = crate::signals::block_in_this_thread() {
                log::warn!("API thread: cannot block stop signals: {e}");
            }
            if let Some(filter) = filter
                && let Err(e) = filter.apply("api")
            {
                log::error!("API thread: {}", crate::error_chain(&e));
                return;
            }
            server.serve();
        })
        .map_err(Error::Thread)?;
    log::info!("API listening on {}", path.display());
    Ok(ApiChannel {
        rx,
        wake,
        socket: path.to_owned(),
    })
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// When the first byte of the pending request arrived, or the last response went out.
    since: Instant,
}

struct Server {
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<RawFd, Conn>,
    tx: mpsc::Sender<Envelope>,
    wake: Arc<EventFd>,
}

impl Server {
    fn serve(mut self) {
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(1000, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    log::error!("API thread: epoll_wait failed: {e}; the API stops");
                    return;
                }
            };
            for event in &events[..n] {
                let fd = event.data() as RawFd;
                if fd == self.listener.as_raw_fd() {
                    self.accept();
                } else {
                    self.readable(fd);
                }
            }
            self.expire();
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("API: accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                let mut s = stream;
                let _ = s.set_nonblocking(true);
                let _ = s.write_all(
                    &Response::error(
                        503,
                        format!("too many API connections (at most {MAX_CONNECTIONS}); close one and try again"),
                    )
                    .encode(),
                );
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            let ev = EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, fd as u64);
            if self.epoll.ctl(ControlOperation::Add, fd, ev).is_ok() {
                self.conns.insert(
                    fd,
                    Conn {
                        stream,
                        buf: Vec::new(),
                        since: Instant::now(),
                    },
                );
            }
        }
    }

    fn close(&mut self, fd: RawFd) {
        if let Some(conn) = self.conns.remove(&fd) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            drop(conn);
        }
    }

    fn readable(&mut self, fd: RawFd) {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        let mut chunk = [0u8; 4096];
        let mut eof = false;
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    if conn.buf.is_empty() {
                        conn.since = Instant::now();
                    }
                    conn.buf.extend_from_slice(&chunk[..n]);
                    if conn.buf.len() > http::MAX_HEAD + http::max_body() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if !self.answer_pending(fd) || eof {
            self.close(fd);
        }
    }

    /// Answer every whole request buffered on `fd`; false when the connection must close.
    fn answer_pending(&mut self, fd: RawFd) -> bool {
        loop {
            let Some(conn) = self.conns.get_mut(&fd) else {
                return false;
            };
            if conn.buf.is_empty() {
                return true;
            }
            let (response, keep) = match http::parse(&conn.buf) {
                Parsed::Partial => return true,
                Parsed::Invalid(r) => (r, false),
                Parsed::Complete(req, used) => {
                    conn.buf.drain(..used);
                    let response = match routes::route(&req) {
                        Ok(request) => self.dispatch(request),
                        Err(r) => r,
                    };
                    (response, !req.close)
                }
            };
            let Some(conn) = self.conns.get_mut(&fd) else {
                return false;
            };
            conn.since = Instant::now();
            if conn.stream.write_all(&response.encode()).is_err() || !keep {
                return false;
            }
        }
    }

    /// Hand `request` to the VMM thread and wait for its answer.
    fn dispatch(&self, request: ApiRequest) -> Response {
        let (reply, answer) = mpsc::sync_channel(1);
        if self.tx.send(Envelope { request, reply }).is_err() {
            return Response::bad_request("the VM has stopped; Kite is exiting");
        }
        let _ = self.wake.write(1);
        match answer.recv_timeout(REPLY_TIMEOUT) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Response::error(
                500,
                format!(
                    "the VMM did not answer within {} s",
                    REPLY_TIMEOUT.as_secs()
                ),
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Response::bad_request("the VM has stopped; Kite is exiting")
            }
        }
    }

    /// Close connections that sent half a request, or nothing, for too long.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut stale = Vec::new();
        for (&fd, conn) in &mut self.conns {
            let age = now.duration_since(conn.since);
            if !conn.buf.is_empty() && age > PARTIAL_TIMEOUT {
                let _ = conn.stream.write_all(
                    &Response::bad_request(format!(
                        "incomplete request: nothing more arrived for {} s; the connection is closed",
                        PARTIAL_TIMEOUT.as_secs()
                    ))
                    .encode(),
                );
                stale.push(fd);
            } else if conn.buf.is_empty() && age > IDLE_TIMEOUT {
                stale.push(fd);
            }
        }
        for fd in stale {
            self.close(fd);
        }
    }
}
