use super::*;

/// 16 KiB of little-endian memory at address 0.
struct Ram([u8; 0x4000]);

impl Ram {
    fn new() -> Self {
        Self([0; 0x4000])
    }

    fn bytes<const N: usize>(&self, addr: u64) -> [u8; N] {
        let at = addr as usize;
        self.0[at..at + N].try_into().unwrap()
    }

    fn put(&mut self, addr: u64, bytes: &[u8]) {
        let at = addr as usize;
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn desc(&self, table: u64, i: u16) -> Desc {
        let at = table + 16 * u64::from(i);
        Desc::new(
            u64::from_le_bytes(self.bytes(at)),
            u32::from_le_bytes(self.bytes(at + 8)),
            u16::from_le_bytes(self.bytes(at + 12)),
            u16::from_le_bytes(self.bytes(at + 14)),
        )
    }

    /// The device puts `(id, len)` on the used ring.
    fn used(&mut self, q: &Queue, id: u32, len: u32) {
        let idx = u16::from_le_bytes(self.bytes(q.layout.used + 2));
        let at = q.layout.used + 4 + 8 * u64::from(idx % q.size());
        self.put(at, &id.to_le_bytes());
        self.put(at + 4, &len.to_le_bytes());
        self.put(q.layout.used + 2, &idx.wrapping_add(1).to_le_bytes());
    }
}

impl Memory for Ram {
    fn read_u16(&self, addr: u64) -> u16 {
        u16::from_le_bytes(self.bytes(addr))
    }
    fn read_u32(&self, addr: u64) -> u32 {
        u32::from_le_bytes(self.bytes(addr))
    }
    fn write_u16(&mut self, addr: u64, value: u16) {
        self.put(addr, &value.to_le_bytes());
    }
    fn write_u32(&mut self, addr: u64, value: u32) {
        self.put(addr, &value.to_le_bytes());
    }
    fn write_u64(&mut self, addr: u64, value: u64) {
        self.put(addr, &value.to_le_bytes());
    }
}

fn queue(size: u16, event_idx: bool) -> Queue {
    let layout = Layout {
        size,
        desc: 0,
        avail: 0x1000,
        used: 0x2000,
    };
    Queue::new(layout, event_idx)
}

#[test]
fn push_lays_chains_out_slot_after_slot_and_wraps() {
    let (mut mem, mut q) = (Ram::new(), queue(4, false));
    assert_eq!(
        q.push(&mut mem, &[Buf::r(0x3000, 16), Buf::w(0x3100, 8)]),
        0
    );
    assert_eq!(mem.desc(0, 0), Desc::new(0x3000, 16, DESC_F_NEXT, 1));
    assert_eq!(mem.desc(0, 1), Desc::new(0x3100, 8, DESC_F_WRITE, 0));
    // Three more: slots 2, 3, then 0 again.
    let bufs = [Buf::w(0x3200, 1), Buf::w(0x3300, 2), Buf::r(0x3400, 3)];
    assert_eq!(q.push(&mut mem, &bufs), 2);
    assert_eq!(
        mem.desc(0, 3),
        Desc::new(0x3300, 2, DESC_F_WRITE | DESC_F_NEXT, 0)
    );
    assert_eq!(mem.desc(0, 0), Desc::new(0x3400, 3, 0, 0));
    // The available ring: heads 0 and 2, index 2.
    assert_eq!(mem.read_u16(0x1000 + 4), 0);
    assert_eq!(mem.read_u16(0x1000 + 6), 2);
    assert_eq!(mem.read_u16(0x1000 + 2), 2);
    assert_eq!(q.avail_idx(), 2);
}

#[test]
fn push_indirect_writes_the_table_behind_one_descriptor() {
    let (mut mem, mut q) = (Ram::new(), queue(8, false));
    let head = q.push_indirect(&mut mem, 0x3800, &[Buf::r(0x3000, 16), Buf::w(0x3100, 256)]);
    assert_eq!(head, 0);
    assert_eq!(mem.desc(0, 0), Desc::new(0x3800, 32, DESC_F_INDIRECT, 0));
    assert_eq!(mem.desc(0x3800, 0), Desc::new(0x3000, 16, DESC_F_NEXT, 1));
    assert_eq!(mem.desc(0x3800, 1), Desc::new(0x3100, 256, DESC_F_WRITE, 0));
}

#[test]
fn chains_free_their_descriptors_on_completion() {
    let (mut mem, mut q) = (Ram::new(), queue(4, false));
    let mut chains = Chains::new(4);
    let three = [Buf::r(0x3000, 1), Buf::r(0x3001, 1), Buf::w(0x3002, 1)];
    assert_eq!(chains.post(&mut q, &mut mem, &three), Ok(0));
    assert_eq!(mem.desc(0, 1), Desc::new(0x3001, 1, DESC_F_NEXT, 2));
    assert_eq!(chains.free(), 1);
    assert_eq!(chains.post(&mut q, &mut mem, &three[..2]), Err(Full));
    assert_eq!(chains.post(&mut q, &mut mem, &[]), Err(Full));
    assert_eq!(chains.post(&mut q, &mut mem, &three[2..]), Ok(3));
    assert_eq!(chains.pop_used(&mut q, &mem), Ok(None));
    // An id that heads no chain in flight is refused and left on the ring.
    mem.used(&q, 1, 0);
    assert_eq!(chains.pop_used(&mut q, &mem), Err(1));
    assert_eq!(q.last_used(), 0);

    let (mut mem, mut q) = (Ram::new(), queue(4, false));
    let mut chains = Chains::new(4);
    chains.post(&mut q, &mut mem, &three).unwrap();
    mem.used(&q, 0, 1);
    assert_eq!(chains.pop_used(&mut q, &mem), Ok(Some((0, 1))));
    assert_eq!(chains.free(), 4);
    // Twice the same head: the second is not in flight any more.
    mem.used(&q, 0, 1);
    assert_eq!(chains.pop_used(&mut q, &mem), Err(0));
}

#[test]
fn notifications_follow_the_flag_or_the_event_index() {
    let (mut mem, mut q) = (Ram::new(), queue(8, false));
    q.push(&mut mem, &[Buf::w(0x3000, 1)]);
    assert!(q.needs_notify(&mem));
    mem.write_u16(q.layout.used, USED_F_NO_NOTIFY);
    q.push(&mut mem, &[Buf::w(0x3000, 1)]);
    assert!(!q.needs_notify(&mem));

    let (mut mem, mut q) = (Ram::new(), queue(8, true));
    // avail_event 1: the first buffer (0 -> 1) does not pass it, the second does.
    mem.write_u16(q.layout.used + 4 + 8 * 8, 1);
    q.push(&mut mem, &[Buf::w(0x3000, 1)]);
    assert!(!q.needs_notify(&mem));
    q.push(&mut mem, &[Buf::w(0x3000, 1)]);
    assert!(q.needs_notify(&mem));
    q.set_used_event(&mut mem, 7);
    assert_eq!(mem.read_u16(0x1000 + 4 + 2 * 8), 7);
    assert!(need_event(0xffff, 1, 0xfffe) && !need_event(5, 5, 4));
}
