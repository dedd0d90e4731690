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

    /// The header's layout is kite-virtio-driver's, tested there
    /// (`vsock::tests::fields_sit_where_the_spec_puts_them`); the device's own part is the reply.
    #[test]
    fn a_reset_goes_back_to_the_sender_with_no_credit() {
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
        let r = reset_reply(&h);
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port, r.op, r.len),
            (2, h.src_cid, h.dst_port, h.src_port, OP_RST, 0)
        );
        assert_eq!(
            (r.kind, r.flags, r.buf_alloc, r.fwd_cnt),
            (TYPE_STREAM, 0, 0, 0)
        );
    }
}
