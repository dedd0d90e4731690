use super::*;
use crate::Image;

/// 16 KiB of memory at address 0.
struct Ram([u8; 0x4000]);

impl Ram {
    fn new() -> Self {
        Self([0; 0x4000])
    }

    fn desc(&mut self, table: u64, i: u16) -> Desc {
        let at = table + 16 * u64::from(i);
        let mem = Image(&mut self.0);
        let addr = u64::from(mem.read_u32(at)) | (u64::from(mem.read_u32(at + 4)) << 32);
        Desc::new(
            addr,
            mem.read_u32(at + 8),
            mem.read_u16(at + 12),
            mem.read_u16(at + 14),
        )
    }

    /// The device puts `(id, len)` on the used ring.
    fn used(&mut self, q: &Queue, id: u32, len: u32) {
        let mut mem = Image(&mut self.0);
        let idx = mem.read_u16(q.layout.used + 2);
        let at = q.layout.used + 4 + 8 * u64::from(idx % q.size());
        mem.write_u32(at, id);
        mem.write_u32(at + 4, len);
        mem.write_u16(q.layout.used + 2, idx.wrapping_add(1));
    }

    fn mem(&mut self) -> Image<'_> {
        Image(&mut self.0)
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
        q.push(&mut mem.mem(), &[Buf::r(0x3000, 16), Buf::w(0x3100, 8)]),
        0
    );
    assert_eq!(mem.desc(0, 0), Desc::new(0x3000, 16, DESC_F_NEXT, 1));
    assert_eq!(mem.desc(0, 1), Desc::new(0x3100, 8, DESC_F_WRITE, 0));
    // Three more: slots 2, 3, then 0 again.
    let bufs = [Buf::w(0x3200, 1), Buf::w(0x3300, 2), Buf::r(0x3400, 3)];
    assert_eq!(q.push(&mut mem.mem(), &bufs), 2);
    assert_eq!(
        mem.desc(0, 3),
        Desc::new(0x3300, 2, DESC_F_WRITE | DESC_F_NEXT, 0)
    );
    assert_eq!(mem.desc(0, 0), Desc::new(0x3400, 3, 0, 0));
    // The available ring: heads 0 and 2, index 2.
    assert_eq!(mem.mem().read_u16(0x1000 + 4), 0);
    assert_eq!(mem.mem().read_u16(0x1000 + 6), 2);
    assert_eq!(mem.mem().read_u16(0x1000 + 2), 2);
    assert_eq!(q.avail_idx(), 2);
}

#[test]
fn push_indirect_writes_the_table_behind_one_descriptor() {
    let (mut mem, mut q) = (Ram::new(), queue(8, false));
    let head = q.push_indirect(
        &mut mem.mem(),
        0x3800,
        &[Buf::r(0x3000, 16), Buf::w(0x3100, 256)],
    );
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
    assert_eq!(chains.post(&mut q, &mut mem.mem(), &three), Ok(0));
    assert_eq!(mem.desc(0, 1), Desc::new(0x3001, 1, DESC_F_NEXT, 2));
    assert_eq!(chains.free(), 1);
    assert_eq!(chains.post(&mut q, &mut mem.mem(), &three[..2]), Err(Full));
    assert_eq!(chains.post(&mut q, &mut mem.mem(), &[]), Err(Full));
    assert_eq!(chains.post(&mut q, &mut mem.mem(), &three[2..]), Ok(3));
    assert_eq!(chains.pop_used(&mut q, &mem.mem()), Ok(None));
    // An id that heads no chain in flight is refused and left on the ring.
    mem.used(&q, 1, 0);
    assert_eq!(chains.pop_used(&mut q, &mem.mem()), Err(1));
    assert_eq!(q.last_used(), 0);

    let (mut mem, mut q) = (Ram::new(), queue(4, false));
    let mut chains = Chains::new(4);
    chains.post(&mut q, &mut mem.mem(), &three).unwrap();
    mem.used(&q, 0, 1);
    assert_eq!(chains.pop_used(&mut q, &mem.mem()), Ok(Some((0, 1))));
    assert_eq!(chains.free(), 4);
    // Twice the same head: the second is not in flight any more.
    mem.used(&q, 0, 1);
    assert_eq!(chains.pop_used(&mut q, &mem.mem()), Err(0));
}

#[test]
fn notifications_follow_the_flag_or_the_event_index() {
    let (mut mem, mut q) = (Ram::new(), queue(8, false));
    q.push(&mut mem.mem(), &[Buf::w(0x3000, 1)]);
    assert!(q.needs_notify(&mem.mem()));
    mem.mem().write_u16(q.layout.used, USED_F_NO_NOTIFY);
    q.push(&mut mem.mem(), &[Buf::w(0x3000, 1)]);
    assert!(!q.needs_notify(&mem.mem()));

    let (mut mem, mut q) = (Ram::new(), queue(8, true));
    // avail_event 1: the first buffer (0 -> 1) does not pass it, the second does.
    mem.mem().write_u16(q.layout.used + 4 + 8 * 8, 1);
    q.push(&mut mem.mem(), &[Buf::w(0x3000, 1)]);
    assert!(!q.needs_notify(&mem.mem()));
    q.push(&mut mem.mem(), &[Buf::w(0x3000, 1)]);
    assert!(q.needs_notify(&mem.mem()));
    q.set_used_event(&mut mem.mem(), 7);
    assert_eq!(mem.mem().read_u16(0x1000 + 4 + 2 * 8), 7);
    assert!(need_event(0xffff, 1, 0xfffe) && !need_event(5, 5, 4));
}
