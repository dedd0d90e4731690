//! The host side of virtio-vsock connections: host programs arriving on the listening socket
//! and their `CONNECT <port>` line, guest connections to a host port's Unix socket, and the
//! host ports handed out for them.

use super::*;

impl Vsock {
    /// Accept host programs; each then sends its CONNECT line.
    pub(super) fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    // No driver to ask, or too many: the host program sees its socket close.
                    if self.active.is_none() || self.conns.len() >= MAX_CONNS {
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if let Some(token) = self.register(&stream) {
                        let mut conn = Conn::new(stream, State::HostLine(Vec::new()), 0, 0);
                        conn.advertise(self.buf_alloc_for(None));
                        self.conns.insert(token, conn);
                        self.set_deadline(token, self.timeouts.line);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if self.log.allow() {
                        error!("{}: cannot accept a connection: {e}", self.name);
                    }
                    break;
                }
            }
        }
    }

    /// Read a host program's `CONNECT <port>\n`, a byte at a time so that nothing after it is
    /// taken; then ask the guest.
    pub(super) fn read_line(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let (Some(stream), State::HostLine(line)) = (conn.stream.as_mut(), &mut conn.state) else {
            return;
        };
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) if line.len() < MAX_LINE => line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // End of file, an error or a line too long: hang up.
                _ => return self.remove(token),
            }
        }
        let port = std::str::from_utf8(line).ok().and_then(connect_port);
        let Some(port) = port else {
            if self.log.allow() {
                warn!("{}: host program sent no CONNECT <port> line", self.name);
            }
            return self.remove(token);
        };
        let host_port = self.free_host_port();
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        conn.state = State::Connecting;
        conn.guest_port = port;
        conn.host_port = host_port;
        self.ports.insert((port, host_port), token);
        self.control.push_back(Control::Conn {
            token,
            op: OP_REQUEST,
            flags: 0,
        });
        self.set_deadline(token, self.timeouts.connect);
    }

    /// The guest connects to host port `hdr.dst_port`: connect to `<socket>_<port>`.
    pub(super) fn connect_to_host(&mut self, hdr: &Header) {
        let key = (hdr.src_port, hdr.dst_port);
        if self.ports.contains_key(&key) {
            return self.reset_guest(hdr, "connection exists");
        }
        if self.conns.len() >= MAX_CONNS {
            return self.reset_guest(hdr, "too many connections");
        }
        let path = port_path(&self.path, hdr.dst_port);
        let stream = match unix::connect(&path) {
            Ok(stream) => stream,
            Err(e) => {
                let why = format!("{}: {e}", path.display());
                return self.reset_guest(hdr, &why);
            }
        };
        let Some(token) = self.register(&stream) else {
            return self.reset_guest(hdr, "cannot watch the stream");
        };
        let mut conn = Conn::new(stream, State::Established, hdr.src_port, hdr.dst_port);
        conn.advertise(self.buf_alloc_for(None));
        conn.peer_credit(hdr);
        self.conns.insert(token, conn);
        self.ports.insert(key, token);
        self.control.push_back(Control::Conn {
            token,
            op: OP_RESPONSE,
            flags: 0,
        });
    }

    pub(super) fn free_host_port(&mut self) -> u32 {
        loop {
            let port = self.next_host_port;
            self.next_host_port = if port >= u32::MAX - 1 {
                FIRST_HOST_PORT
            } else {
                port + 1
            };
            // At most MAX_CONNS ports are taken, so this ends.
            if !self.ports.keys().any(|&(_, host)| host == port) {
                return port;
            }
        }
    }
}

/// The port of a host program's connect line: `CONNECT <port>` in any case (Kata's Go runtime
/// sends `CONNECT`, runtime-rs `connect`; Firecracker takes both), words split by whitespace.
fn connect_port(line: &str) -> Option<u32> {
    let mut words = line.split_whitespace();
    let verb = words.next()?;
    let port = words.next()?.parse().ok()?;
    (verb.eq_ignore_ascii_case("connect") && words.next().is_none()).then_some(port)
}

#[cfg(test)]
mod connect_line {
    #[test]
    fn connect_in_any_case_with_a_port() {
        use super::connect_port;
        assert_eq!(connect_port("CONNECT 1024"), Some(1024));
        assert_eq!(connect_port("connect 1024"), Some(1024));
        assert_eq!(connect_port("Connect 7\r"), Some(7));
        assert_eq!(connect_port("CONNECT x"), None);
        assert_eq!(connect_port("HELLO 5"), None);
        assert_eq!(connect_port("CONNECT"), None);
        assert_eq!(connect_port("CONNECT 5 6"), None);
    }
}
