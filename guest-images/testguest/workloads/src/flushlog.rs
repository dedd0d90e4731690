//! The blocks of the test guest's `virtio-blk-flushlog` scenario, and the host's check of
//! them. The guest writes numbered 4 KiB blocks in a ring of slots on the disk, flushes, and
//! says which number it saw flushed; the host later finds, in each slot, which block (if
//! any) is there and whether it is whole.

/// Bytes of one block.
pub const BLOCK_BYTES: usize = 4096;

/// What a slot of the image holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// All zeroes: never written.
    Empty,
    /// A whole block with this sequence number.
    Block(u64),
    /// Anything else: a block that was only partly written, or other data.
    Torn,
}

fn block_seed(seed: u64, seq: u64) -> u64 {
    crate::disk_pattern_word(seed, seq, 0x3f)
}

/// Fills `buf` (`BLOCK_BYTES`) with block `seq` (from 1) for slot `slot`: the first 8 bytes
/// are `seq`, the rest the disk pattern of a seed made from `seed` and `seq`.
pub fn fill(seed: u64, seq: u64, slot: u64, buf: &mut [u8]) {
    crate::disk_pattern_fill(block_seed(seed, seq), slot * 8, buf);
    buf[..8].copy_from_slice(&seq.to_le_bytes());
}

/// What slot `slot` of an image written with `seed` holds (`buf`: its `BLOCK_BYTES`).
pub fn read(seed: u64, slot: u64, buf: &[u8]) -> Slot {
    if buf.iter().all(|&b| b == 0) {
        return Slot::Empty;
    }
    let mut w = [0u8; 8];
    w.copy_from_slice(&buf[..8]);
    let seq = u64::from_le_bytes(w);
    if seq == 0 || buf.len() != BLOCK_BYTES {
        return Slot::Torn;
    }
    let mut want = [0u8; BLOCK_BYTES];
    fill(seed, seq, slot, &mut want);
    if want[..] == buf[..] {
        Slot::Block(seq)
    } else {
        Slot::Torn
    }
}
