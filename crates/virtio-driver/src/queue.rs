//! Split virtqueues (virtio 1.2, 2.7): where the three parts lie, descriptor chains (direct and
//! indirect), the available ring, the used ring, and the notification rules (ring flags, or the
//! event indices with VIRTIO_RING_F_EVENT_IDX).

use core::sync::atomic::{Ordering, fence};

use crate::mmio;
use crate::{Memory, Registers};

/// Descriptor flags.
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;
/// The available ring's flag: the driver wants no interrupts.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// The used ring's flag: the device wants no notifications.
pub const USED_F_NO_NOTIFY: u16 = 1;

/// Largest queue [`Chains`] keeps track of (the spec allows 32768; Kite's devices offer 256).
pub const MAX_QUEUE: usize = 256;

/// One descriptor as it lies in a table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    pub fn new(addr: u64, len: u32, flags: u16, next: u16) -> Self {
        Self {
            addr,
            len,
            flags,
            next,
        }
    }

    /// Write it as descriptor `index` of the table at `table`.
    pub fn write(&self, mem: &mut impl Memory, table: u64, index: u16) {
        let at = table + 16 * u64::from(index);
        mem.write_u64(at, self.addr);
        mem.write_u32(at + 8, self.len);
        mem.write_u16(at + 12, self.flags);
        mem.write_u16(at + 14, self.next);
    }
}

/// One buffer of a chain: guest-physical address, length, and whether the device writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub device_writes: bool,
}

impl Buf {
    /// A buffer the device reads (driver to device).
    pub fn r(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            device_writes: false,
        }
    }

    /// A buffer the device writes (device to driver).
    pub fn w(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            device_writes: true,
        }
    }

    /// Its descriptor, linked to `next` unless it is the last of its chain.
    fn desc(&self, next: Option<u16>) -> Desc {
        let write = if self.device_writes { DESC_F_WRITE } else { 0 };
        match next {
            Some(next) => Desc::new(self.addr, self.len, write | DESC_F_NEXT, next),
            None => Desc::new(self.addr, self.len, write, 0),
        }
    }
}

/// Write `bufs` as one chain into the table at `table`, `bufs[i]` in slot `slot(i)`, each linked
/// to the next.
pub fn write_chain(mem: &mut impl Memory, table: u64, bufs: &[Buf], slot: impl Fn(usize) -> u16) {
    for (i, buf) in bufs.iter().enumerate() {
        let next = (i + 1 < bufs.len()).then(|| slot(i + 1));
        buf.desc(next).write(mem, table, slot(i));
    }
}

/// Where a queue of `size` entries lies: descriptor table, driver area (available ring),
/// device area (used ring).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Layout {
    /// Bytes of each part: descriptor table, available ring (with used_event), used ring (with
    /// avail_event).
    pub fn bytes(size: u16) -> [u64; 3] {
        let n = u64::from(size);
        [16 * n, 6 + 2 * n, 6 + 8 * n]
    }

    /// used_event: after the available ring.
    fn used_event(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }

    /// avail_event: after the used ring.
    fn avail_event(&self) -> u64 {
        self.used + 4 + 8 * u64::from(self.size)
    }
}

/// The spec's `vring_need_event`: whether moving an index from `old` to `new` passed `event`,
/// i.e. `event` is in `[old, new)` (modulo 2^16).
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The driver's side of one split virtqueue: its rings and indices. Chains go into the table
/// either slot after slot, wrapping ([`Queue::push`], as the host-side tests do: they know which
/// slot a chain takes), or from a free list ([`Chains`], as a real driver does).
#[derive(Clone, Debug, Default)]
pub struct Queue {
    pub layout: Layout,
    /// VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// Our copy of avail.idx.
    avail_idx: u16,
    /// avail.idx at the last [`Queue::needs_notify`] (the `old` of [`need_event`]).
    kicked_idx: u16,
    /// used.idx up to which the driver took completions.
    last_used: u16,
    /// The next table slot [`Queue::push_raw`] writes.
    next_desc: u16,
}

impl Queue {
    pub fn new(layout: Layout, event_idx: bool) -> Self {
        Self {
            layout,
            event_idx,
            ..Self::default()
        }
    }

    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// The available index the driver published last.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The used index up to which the driver took completions.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// Put descriptor `head` on the available ring: the entry, then (after a release fence) the
    /// index that publishes it.
    pub fn publish(&mut self, mem: &mut impl Memory, head: u16) {
        let slot = u64::from(self.avail_idx % self.layout.size);
        mem.write_u16(self.layout.avail + 4 + 2 * slot, head);
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_u16(self.layout.avail + 2, self.avail_idx);
    }

    /// Set the available index to `idx` (a driver that lies about it).
    pub fn set_avail_idx(&mut self, mem: &mut impl Memory, idx: u16) {
        self.avail_idx = idx;
        mem.write_u16(self.layout.avail + 2, idx);
    }

    /// The available ring's flags.
    pub fn set_avail_flags(&self, mem: &mut impl Memory, flags: u16) {
        mem.write_u16(self.layout.avail, flags);
    }

    /// Write `table` at the next table slots, wrapping, and make the first available; returns
    /// its index. The descriptors are written as they are (their `next` fields too).
    pub fn push_raw(&mut self, mem: &mut impl Memory, table: &[Desc]) -> u16 {
        let size = usize::from(self.layout.size);
        let head = self.next_desc;
        for (i, desc) in table.iter().enumerate() {
            let slot = (usize::from(head) + i) % size;
            desc.write(mem, self.layout.desc, slot as u16);
        }
        self.next_desc = ((usize::from(head) + table.len()) % size) as u16;
        self.publish(mem, head);
        head
    }

    /// Post `bufs` as a chain at the next table slots (see [`Queue::push_raw`]); returns its head.
    pub fn push(&mut self, mem: &mut impl Memory, bufs: &[Buf]) -> u16 {
        let size = usize::from(self.layout.size);
        let head = self.next_desc;
        let slot = |i: usize| ((usize::from(head) + i) % size) as u16;
        write_chain(mem, self.layout.desc, bufs, slot);
        self.next_desc = slot(bufs.len());
        self.publish(mem, head);
        head
    }

    /// Post `bufs` as an indirect table written at `table` (16 bytes a buffer), behind one
    /// descriptor at the next table slot; returns its index.
    pub fn push_indirect(&mut self, mem: &mut impl Memory, table: u64, bufs: &[Buf]) -> u16 {
        write_chain(mem, table, bufs, |i| i as u16);
        let len = 16 * bufs.len() as u32;
        self.push_raw(mem, &[Desc::new(table, len, DESC_F_INDIRECT, 0)])
    }

    /// Whether the device must be told of what was published since the last call: unless it
    /// set VIRTQ_USED_F_NO_NOTIFY, or with EVENT_IDX unless those buffers did not pass its
    /// `avail_event`.
    pub fn needs_notify(&mut self, mem: &impl Memory) -> bool {
        // The index store must be visible before the device's flag or avail_event is read.
        fence(Ordering::SeqCst);
        let old = self.kicked_idx;
        self.kicked_idx = self.avail_idx;
        if self.event_idx {
            need_event(self.avail_event(mem), self.avail_idx, old)
        } else {
            mem.read_u16(self.layout.used) & USED_F_NO_NOTIFY == 0
        }
    }

    /// Notify the device through QueueNotify as queue `index` if [`Queue::needs_notify`] says so.
    pub fn kick(&mut self, mem: &impl Memory, regs: &mut impl Registers, index: u16) {
        if self.needs_notify(mem) {
            mmio::notify(regs, index);
        }
    }

    /// EVENT_IDX: the used index past which the driver wants an interrupt.
    pub fn set_used_event(&self, mem: &mut impl Memory, idx: u16) {
        mem.write_u16(self.layout.used_event(), idx);
    }

    /// EVENT_IDX: the available index past which the device wants a notification.
    pub fn avail_event(&self, mem: &impl Memory) -> u16 {
        mem.read_u16(self.layout.avail_event())
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &impl Memory) -> u16 {
        mem.read_u16(self.layout.used + 2)
    }

    /// Used ring entry `n` (modulo the size) as `(id, len)`.
    pub fn used_elem(&self, mem: &impl Memory, n: u16) -> (u32, u32) {
        let at = self.layout.used + 4 + 8 * u64::from(n % self.layout.size);
        (mem.read_u32(at), mem.read_u32(at + 4))
    }

    /// The next completion the driver has not taken, `(id, len)`, without taking it.
    pub fn peek_used(&self, mem: &impl Memory) -> Option<(u32, u32)> {
        if self.used_idx(mem) == self.last_used {
            return None;
        }
        // The entry after the index that published it.
        fence(Ordering::Acquire);
        Some(self.used_elem(mem, self.last_used))
    }

    /// Take every completion there is without looking at them (a driver that lost track of its
    /// chains).
    pub fn skip_used(&mut self, mem: &impl Memory) {
        self.last_used = self.used_idx(mem);
    }

    /// Take the next completion, `(id, len)`.
    pub fn pop_used(&mut self, mem: &impl Memory) -> Option<(u32, u32)> {
        let used = self.peek_used(mem)?;
        self.last_used = self.last_used.wrapping_add(1);
        Some(used)
    }
}

/// The table is full: fewer free descriptors than the chain needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// A queue's descriptors as a real driver keeps them: a free list, and how long each chain in
/// flight is, so that a completion gives its descriptors back. For queues of up to
/// [`MAX_QUEUE`] entries.
#[derive(Clone, Debug)]
pub struct Chains {
    /// Stack of free descriptor indices.
    free: [u16; MAX_QUEUE],
    free_len: u16,
    /// Descriptors in the chain headed by each index (0: not a head in flight).
    chain_len: [u16; MAX_QUEUE],
}

impl Chains {
    /// All `size` descriptors free (`size` at most [`MAX_QUEUE`]).
    pub fn new(size: u16) -> Self {
        let size = size.min(MAX_QUEUE as u16);
        let mut free = [0u16; MAX_QUEUE];
        for (i, slot) in free.iter_mut().enumerate().take(usize::from(size)) {
            // Popped from the end: hand out low indices first.
            *slot = size - 1 - i as u16;
        }
        Self {
            free,
            free_len: size,
            chain_len: [0; MAX_QUEUE],
        }
    }

    /// Free descriptors.
    pub fn free(&self) -> u16 {
        self.free_len
    }

    /// Post `bufs` (device-readable ones first, as the spec requires) on `queue`'s available
    /// ring, in free descriptors; returns the head, which [`Chains::pop_used`] gives back on
    /// completion. The device is not notified.
    pub fn post(
        &mut self,
        queue: &mut Queue,
        mem: &mut impl Memory,
        bufs: &[Buf],
    ) -> Result<u16, Full> {
        let n = bufs.len();
        if n == 0 || n > usize::from(self.free_len) {
            return Err(Full);
        }
        let top = usize::from(self.free_len);
        // Taken from the top of the stack, in pop order.
        let ids = &self.free[top - n..top];
        write_chain(mem, queue.layout.desc, bufs, |i| ids[n - 1 - i]);
        let head = ids[n - 1];
        self.free_len -= n as u16;
        self.chain_len[usize::from(head)] = n as u16;
        queue.publish(mem, head);
        Ok(head)
    }

    /// Take `queue`'s next completion, `(head, bytes the device wrote)`, and free its chain's
    /// descriptors; `Err(id)` for a used entry that names no chain in flight (it stays unread).
    pub fn pop_used(
        &mut self,
        queue: &mut Queue,
        mem: &impl Memory,
    ) -> Result<Option<(u16, u32)>, u32> {
        let Some((id, len)) = queue.peek_used(mem) else {
            return Ok(None);
        };
        let n = match self.chain_len.get(id as usize) {
            Some(&n) if id < u32::from(queue.size()) && n > 0 => n,
            _ => return Err(id),
        };
        queue.pop_used(mem);
        // Walk the chain to free it.
        let mut d = id as u16;
        for _ in 0..n {
            self.free[usize::from(self.free_len)] = d;
            self.free_len += 1;
            d = mem.read_u16(queue.layout.desc + 16 * u64::from(d) + 14);
        }
        self.chain_len[id as usize] = 0;
        Ok(Some((id as u16, len)))
    }
}

#[cfg(test)]
mod tests;
