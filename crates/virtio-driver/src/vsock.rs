//! The virtio-vsock packet header (virtio 1.2, section 5.10.6) as a driver writes and reads it:
//! 44 little-endian bytes in front of every packet, in both directions. Kite's device uses this
//! definition too (crates/vmm's `devices/virtio/vsock/packet.rs` re-exports it); the fuzz
//! harness keeps a copy of its own, on purpose, as an independent oracle.

/// Bytes of header in front of every packet.
pub const HDR_LEN: usize = 44;
/// The host's CID: guests connect to it.
pub const HOST_CID: u64 = 2;
/// Stream sockets, the one type a device must serve.
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive no more data, will send no more data.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// One packet header, decoded. Any field may hold any value (a test may lie in any of them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    /// Payload bytes after the header.
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    /// The sender's receive buffer for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has taken out of that buffer so far (wrapping).
    pub fwd_cnt: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sit_where_the_spec_puts_them() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0x1112_1314,
            dst_port: 0x2122_2324,
            len: 0x3132_3334,
            kind: TYPE_STREAM,
            op: OP_RW,
            flags: SHUTDOWN_BOTH,
            buf_alloc: 0x4142_4344,
            fwd_cnt: 0x5152_5354,
        };
        let b = h.encode();
        assert_eq!(b[0..8], [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(b[8..16], [2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b[16..20], [0x14, 0x13, 0x12, 0x11]);
        assert_eq!(b[20..24], [0x24, 0x23, 0x22, 0x21]);
        assert_eq!(b[24..28], [0x34, 0x33, 0x32, 0x31]);
        assert_eq!(b[28..32], [1, 0, 5, 0]);
        assert_eq!(b[32..36], [3, 0, 0, 0]);
        assert_eq!(b[36..40], [0x44, 0x43, 0x42, 0x41]);
        assert_eq!(b[40..44], [0x54, 0x53, 0x52, 0x51]);
        assert_eq!(Header::decode(&b), h);
    }
}
