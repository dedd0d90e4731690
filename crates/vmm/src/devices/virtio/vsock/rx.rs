//! virtio-vsock's receive path: what the device puts in the guest's RX queue, control
//! packets first, then data from the host streams, within each connection's credit.

use super::*;

impl Vsock {
    /// The next connection with host data for the guest, round-robin.
    pub(super) fn next_sender(&self) -> Option<u64> {
        let after = self.conns.range(self.cursor + 1..);
        let before = self.conns.range(..=self.cursor);
        after
            .chain(before)
            .find(|(_, c)| c.can_send_data())
            .map(|(&t, _)| t)
    }

    /// The buffer to advertise on connection `token` (a new one if `None`): what is left of
    /// [`HELD_BUDGET`] after every other connection's promise, between [`MIN_BUF_ALLOC`] and
    /// [`BUF_ALLOC`].
    pub(super) fn buf_alloc_for(&self, token: Option<u64>) -> u32 {
        // No connection is ever promised more than BUF_ALLOC, so while the others number at
        // most HELD_BUDGET / BUF_ALLOC - 1 (15) what is left is at least BUF_ALLOC: no need
        // to add up every connection's promise for each packet.
        let others =
            self.conns.len() - usize::from(token.is_some_and(|t| self.conns.contains_key(&t)));
        if (others as u64 + 1) * u64::from(BUF_ALLOC) <= HELD_BUDGET {
            return BUF_ALLOC;
        }
        let others: u64 = self
            .conns
            .iter()
            .filter(|(t, _)| Some(**t) != token)
            .map(|(_, c)| c.promised())
            .sum();
        let left = HELD_BUDGET.saturating_sub(others);
        u32::try_from(left)
            .unwrap_or(u32::MAX)
            .clamp(MIN_BUF_ALLOC, BUF_ALLOC)
    }

    pub(super) fn control_header(&mut self, control: &Control) -> Option<Header> {
        match *control {
            Control::Raw(hdr) => Some(hdr),
            Control::Conn { token, op, flags } => {
                let buf_alloc = self.buf_alloc_for(Some(token));
                let conn = self.conns.get_mut(&token)?;
                conn.advertise(buf_alloc);
                if op == OP_CREDIT_UPDATE {
                    conn.credit_update_queued = false;
                }
                Some(conn.header(self.cid, op, flags, 0))
            }
        }
    }

    /// Fill the driver's receive buffers: control packets first, then host data, while there
    /// are buffers, at most a ring's worth. Returns true if it stopped with work possibly left.
    /// Host data is read from its stream straight into the guest's buffer. The caller
    /// interrupts the driver.
    pub(super) fn pump(&mut self) -> bool {
        // Held aside while the buffers are filled, which needs its memory and `self` both.
        let Some(mut active) = self.active.take() else {
            return false;
        };
        let mut left = false;
        let mut budget = QUEUE_SIZE;
        loop {
            // Control packets go first; each leaves the queue only once it has a buffer.
            let next = match self.control.front() {
                Some(&control) => Next::Control(control),
                None => match self.next_sender() {
                    Some(token) => Next::Data(token),
                    None => break,
                },
            };
            if budget == 0 {
                left = true;
                break;
            }
            budget -= 1;
            let Some(chain) = active.pop_chain(RX, &self.name, &mut self.chain_log) else {
                // No buffers: the driver's notification brings us back.
                break;
            };
            // A receive buffer holds at least a packet header.
            let bufs = match chain.writable_only(&active.mem, HDR_LEN as u64) {
                Ok(bufs) => bufs,
                Err(e) => {
                    if self.log.allow() {
                        warn!("{}: {e}; buffer returned unused", self.name);
                    }
                    active.add_used(RX, chain.head(), 0, &self.name, &mut self.chain_log);
                    continue;
                }
            };
            let written = match next {
                Next::Control(control) => {
                    self.control.pop_front();
                    let Some(hdr) = self.control_header(&control) else {
                        // Its connection is gone.
                        active.unpop_chain(RX);
                        continue;
                    };
                    self.write_header(&active.mem, &bufs, &hdr)
                }
                Next::Data(token) => match self.read_data(&active.mem, token, &bufs) {
                    Data::Packet(len) => len,
                    Data::NoRoom => {
                        if self.log.allow() {
                            warn!("{}: receive buffer has no room for data", self.name);
                        }
                        0
                    }
                    Data::Nothing => {
                        active.unpop_chain(RX);
                        self.flush(token);
                        self.settle(token);
                        continue;
                    }
                },
            };
            active.add_used(RX, chain.head(), written, &self.name, &mut self.chain_log);
        }
        self.active = Some(active);
        left
    }

    /// Write `hdr` at the start of `bufs`; the bytes written (0 if guest memory failed).
    fn write_header(&mut self, mem: &GuestMem, bufs: &Bufs, hdr: &Header) -> u32 {
        match bufs.write(mem, &hdr.encode()) {
            Ok(n) => n as u32,
            Err(e) => {
                if self.log.allow() {
                    warn!("{}: cannot write a packet: {e}", self.name);
                }
                0
            }
        }
    }

    /// Read host data of connection `token` straight into the receive buffer `bufs`, after
    /// room for the header, which follows once the length is known.
    pub(super) fn read_data(&mut self, mem: &GuestMem, token: u64, bufs: &Bufs) -> Data {
        let buf_alloc = self.buf_alloc_for(Some(token));
        let Some(conn) = self.conns.get_mut(&token) else {
            return Data::Nothing;
        };
        conn.advertise(buf_alloc);
        let Some((head, room)) = bufs.split_at(HDR_LEN as u64) else {
            return Data::NoRoom;
        };
        if room.is_empty() {
            return Data::NoRoom;
        }
        // Never more than the guest has room for (can_send_data made sure it has some).
        let max = room
            .len()
            .min(MAX_PAYLOAD as u64)
            .min(u64::from(conn.credit()));
        let (room, _) = room.split_at(max).unwrap_or_default();
        match conn.read_host(mem, &room) {
            Ok(0) => Data::Nothing,
            Ok(n) => {
                // n <= MAX_PAYLOAD
                let hdr = conn.header(self.cid, OP_RW, 0, n as u32);
                conn.sent(n as u32);
                self.cursor = token;
                let written = self.write_header(mem, &head, &hdr);
                Data::Packet(written + n as u32)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Data::Nothing,
            Err(e) => {
                debug!("{}: host side of a connection failed: {e}", self.name);
                conn.host_eof = true;
                conn.hung_up = true;
                Data::Nothing
            }
        }
    }
}
