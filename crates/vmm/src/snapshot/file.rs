//! The snapshot file: a fixed header, then the state encoded with postcard.
//!
//! ```text
//! 0   8 bytes  magic "KITESNAP"
//! 8   u32 LE   format version (FORMAT_VERSION)
//! 12  u64 LE   length of the payload
//! 20  u32 LE   CRC-32 (IEEE) of the payload
//! 24  payload  postcard encoding of SnapshotState
//! ```
//! A file of another version, or whose length or checksum is wrong, is refused with one line
//! saying which; nothing is decoded from a payload whose checksum fails.

use super::SnapshotState;

pub const MAGIC: [u8; 8] = *b"KITESNAP";
/// Bumped whenever [`SnapshotState`] or anything in it changes shape. 2: each virtio device's
/// rate limiters, each disk's engine, the API's configuration layout, and the VM generation ID
/// device (`DeviceKind::VmGenId`, `Range::Ram`).
pub const FORMAT_VERSION: u32 = 2;
const HEADER_LEN: usize = 24;

/// Why a snapshot file cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not a Kite snapshot file (no KITESNAP magic)")]
    Magic,
    #[error(
        "snapshot format version {found}, this Kite reads version {FORMAT_VERSION}: make the snapshot again with this Kite"
    )]
    Version { found: u32 },
    #[error("damaged snapshot file: {0}")]
    Damaged(String),
}

/// The bytes of a snapshot file for `state`.
pub fn encode(state: &SnapshotState) -> Result<Vec<u8>, String> {
    let payload =
        postcard::to_stdvec(state).map_err(|e| format!("cannot encode the state: {e}"))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Read a snapshot file's bytes: any input gives a state or an error, never a panic.
pub fn parse(bytes: &[u8]) -> Result<SnapshotState, ParseError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(ParseError::Magic);
    }
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(ParseError::Damaged(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        )));
    };
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap_or([0; 4]));
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(ParseError::Version { found: version });
    }
    let len = u64::from_le_bytes(header[12..20].try_into().unwrap_or([0; 8]));
    let crc = u32_at(20);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(ParseError::Damaged(format!(
            "the header says {len} bytes of state, the file has {} (truncated?)",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(ParseError::Damaged("checksum mismatch".into()));
    }
    let (state, rest): (SnapshotState, &[u8]) = postcard::take_from_bytes(payload)
        .map_err(|e| ParseError::Damaged(format!("cannot decode the state: {e}")))?;
    if !rest.is_empty() {
        return Err(ParseError::Damaged(format!(
            "{} bytes after the state",
            rest.len()
        )));
    }
    state.check().map_err(ParseError::Damaged)?;
    Ok(state)
}

/// A well-formed state of `cpus` vCPUs with every KVM structure zeroed and one device of each
/// kind the manager saves: seeds for the fuzz target and the unit tests.
#[doc(hidden)]
pub fn example_state(cpus: u8) -> SnapshotState {
    use super::{MachineState, VmState};
    use crate::devices::i8042::I8042State;
    use crate::devices::manager::{DeviceKind, DeviceState, Range, SavedDevice};
    use crate::devices::serial::SerialDeviceState;
    use crate::devices::virtio::TransportState;
    use crate::vcpu::state::VcpuState;
    let vcpu = || VcpuState {
        cpuid: vec![kvm_bindings::kvm_cpuid_entry2 {
            function: 1,
            eax: 0x806f8,
            ..Default::default()
        }],
        mp_state: Default::default(),
        regs: kvm_bindings::kvm_regs {
            rip: 0x10_0000,
            rflags: 2,
            ..Default::default()
        },
        sregs: Default::default(),
        xsave: Default::default(),
        xcrs: Default::default(),
        debugregs: Default::default(),
        lapic: Default::default(),
        msrs: vec![kvm_bindings::kvm_msr_entry {
            index: 0xc000_0080,
            data: 0x500,
            ..Default::default()
        }],
        events: Default::default(),
    };
    SnapshotState {
        machine: MachineState {
            memory: 64 << 20,
            cpus,
            disks: vec![super::DiskShape {
                path: "/tmp/disk.img".into(),
                readonly: false,
                io_engine: crate::config::IoEngine::Async,
            }],
            nets: vec![(
                "eth0".into(),
                "tap0".into(),
                [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            )],
            vsock: Some((3, "/tmp/v.sock".into())),
            rng: true,
            boot_timer: false,
            acpi: false,
            layout: Some(r#"{"machine-config":{"vcpu_count":1,"mem_size_mib":64}}"#.into()),
        },
        vm: VmState {
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic: Default::default(),
            pit: Default::default(),
            clock: Default::default(),
        },
        vcpus: (0..cpus).map(|_| vcpu()).collect(),
        devices: vec![
            SavedDevice {
                id: "serial0".into(),
                kind: DeviceKind::Serial,
                range: Range::Pio {
                    base: 0x3f8,
                    len: 8,
                },
                irq: Some(4),
                state: DeviceState::Serial(SerialDeviceState {
                    interrupt_enable: 5,
                    in_buffer: b"ls\n".to_vec(),
                    ..Default::default()
                }),
            },
            SavedDevice {
                id: "i8042".into(),
                kind: DeviceKind::I8042,
                range: Range::Pio { base: 0x60, len: 5 },
                irq: Some(1),
                state: DeviceState::I8042(I8042State {
                    ctr: 0x47,
                    pending: None,
                    out: vec![0x1d],
                }),
            },
            SavedDevice {
                id: "virtio-blk0".into(),
                kind: DeviceKind::Virtio,
                range: Range::Mmio {
                    base: 0xd000_1000,
                    len: 0x1000,
                },
                irq: Some(5),
                state: DeviceState::Virtio {
                    transport: TransportState {
                        device_type: 2,
                        status: 15,
                        queues: vec![Default::default()],
                        positions: Some(vec![(7, 7)]),
                        ..Default::default()
                    },
                    config: vec![0; 64],
                    limiters: vec![crate::devices::virtio::LimiterState {
                        bandwidth: None,
                        ops: Some(crate::devices::virtio::BucketState {
                            config: crate::devices::virtio::Bucket {
                                size: 100,
                                one_time_burst: 0,
                                refill_time_ms: 1000,
                            },
                            budget: -3,
                            burst: 0,
                            since_refill_ns: 12_345,
                        }),
                    }],
                },
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reads_back_as_written() {
        let bytes = encode(&example_state(2)).unwrap();
        let state = parse(&bytes).unwrap();
        assert_eq!(encode(&state).unwrap(), bytes);
        assert_eq!(state.vcpus[1].regs.rip, 0x10_0000);
        assert_eq!(state.machine.nets[0].0, "eth0");
    }

    #[test]
    fn damage_is_named() {
        let bytes = encode(&example_state(1)).unwrap();
        assert_eq!(parse(b"KITE").unwrap_err(), ParseError::Magic);
        let elf = parse(b"ELF\x7f not a snapshot at all").unwrap_err();
        assert_eq!(elf, ParseError::Magic);
        let short = parse(&bytes[..20]).unwrap_err();
        assert!(
            short
                .to_string()
                .contains("shorter than the 24-byte header"),
            "{short}"
        );
        let cut = parse(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(cut.to_string().contains("truncated"), "{cut}");
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        assert_eq!(
            parse(&flipped).unwrap_err(),
            ParseError::Damaged("checksum mismatch".into())
        );
        let mut other = bytes.clone();
        let found = FORMAT_VERSION + 1;
        other[8..12].copy_from_slice(&found.to_le_bytes());
        let e = parse(&other).unwrap_err();
        assert_eq!(e, ParseError::Version { found });
        assert!(e.to_string().contains(&format!(
            "version {found}, this Kite reads version {FORMAT_VERSION}"
        )));
        // A file of the first format (no rate limiters, engines or layout) is refused too.
        other[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(parse(&other).unwrap_err(), ParseError::Version { found: 1 });
    }

    #[test]
    fn a_state_with_the_wrong_number_of_vcpus_is_damaged() {
        let mut state = example_state(2);
        state.machine.cpus = 3;
        let e = parse(&encode(&state).unwrap()).unwrap_err();
        assert!(
            e.to_string()
                .contains("3 vCPUs in the machine, 2 vCPU states"),
            "{e}"
        );
    }
}
