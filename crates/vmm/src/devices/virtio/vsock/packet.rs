//! The virtio-vsock packet header (virtio 1.2, section 5.10.6): 44 little-endian bytes in front
//! of every packet, in both directions. One definition serves the device and the drivers that
//! talk to it (the test guest, the unit tests): kite-virtio-driver's (no_std, no dependencies).
//! The fuzz harness keeps an independent copy on purpose, as an oracle.

pub use kite_virtio_driver::vsock::{
    HDR_LEN, HOST_CID, Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
    OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// A reset answering packet `hdr`: addressed back to its sender, with no credit.
pub fn reset_reply(hdr: &Header) -> Header {
    Header {
        src_cid: hdr.dst_cid,
        dst_cid: hdr.src_cid,
        src_port: hdr.dst_port,
        dst_port: hdr.src_port,
        kind: TYPE_STREAM,
        op: OP_RST,
        ..Header::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_sit_where_the_spec_puts_them() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0x1112_1314,
            dst_port: 0x2122_2324,
            len: 0x3132_3334,
            kind: 1,
            op: 5,
            flags: 3,
            buf_alloc: 0x4142_4344,
            fwd_cnt: 0x5152_5354,
        };
        let b = h.encode();
        assert_eq!(b[0..8], [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(b[8], 2);
        assert_eq!(b[16..20], [0x14, 0x13, 0x12, 0x11]);
        assert_eq!(b[20..24], [0x24, 0x23, 0x22, 0x21]);
        assert_eq!(b[24..28], [0x34, 0x33, 0x32, 0x31]);
        assert_eq!(b[28..32], [1, 0, 5, 0]);
        assert_eq!(b[32..36], [3, 0, 0, 0]);
        assert_eq!(b[36..40], [0x44, 0x43, 0x42, 0x41]);
        assert_eq!(b[40..44], [0x54, 0x53, 0x52, 0x51]);
        assert_eq!(Header::decode(&b), h);
        let r = reset_reply(&h);
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port, r.op, r.len),
            (2, h.src_cid, h.dst_port, h.src_port, OP_RST, 0)
        );
    }
}
