//! Fuzz target `config`: the command-line value parsers of [`kite_vmm::config`] (`--memory`,
//! `--cpus`, `--disk`, `--net` with its MAC, `--vsock`). The first byte picks the parser, the rest
//! is the text. Whatever a parser accepts must be what its documentation promises.

use super::Seed;
use super::input::{Input, Writer};
use kite_vmm::config::{parse_cpus, parse_disk, parse_mac, parse_memory, parse_net, parse_vsock};

const MEMORY: u8 = 0;
const CPUS: u8 = 1;
const DISK: u8 = 2;
const NET: u8 = 3;
const MAC: u8 = 4;
const VSOCK: u8 = 5;
const PARSERS: u8 = 6;

fn check_mac(mac: [u8; 6]) {
    assert_eq!(mac[0] & 1, 0, "multicast MAC accepted: {mac:02x?}");
    assert_ne!(mac, [0; 6], "all-zero MAC accepted");
    let text = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(parse_mac(&text), Ok(mac), "{text} does not parse back");
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let parser = input.u8() % PARSERS;
    let text = String::from_utf8_lossy(input.rest());
    let text = text.as_ref();
    match parser {
        MEMORY => {
            if let Ok(bytes) = parse_memory(text) {
                assert!(
                    bytes > 0 && bytes.is_multiple_of(4096),
                    "{text:?} -> {bytes}"
                );
                // The same size written in KiB parses to the same number of bytes.
                assert_eq!(parse_memory(&format!("{}K", bytes >> 10)), Ok(bytes));
            }
        }
        CPUS => {
            if let Ok(n) = parse_cpus(text) {
                assert!((1..=254).contains(&n), "{text:?} -> {n}");
            }
        }
        DISK => {
            if let Ok(disk) = parse_disk(text) {
                assert!(!disk.path.as_os_str().is_empty(), "{text:?}");
                let again = if disk.readonly {
                    format!("{},readonly", disk.path.display())
                } else {
                    disk.path.display().to_string()
                };
                if !disk.readonly && text.contains(',') {
                    panic!("{text:?}: a comma without an option was taken as part of the path");
                }
                assert_eq!(parse_disk(&again), Ok(disk), "{text:?}");
            }
        }
        NET => {
            if let Ok(net) = parse_net(text) {
                assert!(!net.tap.is_empty(), "{text:?}");
                check_mac(net.mac);
            }
        }
        MAC => {
            if let Ok(mac) = parse_mac(text) {
                check_mac(mac);
            }
        }
        _ => {
            if let Ok(vsock) = parse_vsock(text) {
                assert!(vsock.cid >= 3 && vsock.cid != u32::MAX, "{text:?}");
                assert!(!vsock.socket.as_os_str().is_empty(), "{text:?}");
            }
        }
    }
}

fn seed(name: &'static str, parser: u8, text: &str) -> Seed {
    Seed {
        name,
        data: Writer::new().u8(parser).bytes(text.as_bytes()).finish(),
    }
}

pub fn seeds() -> Vec<Seed> {
    vec![
        seed("memory-256m", MEMORY, "256M"),
        seed("memory-2gib", MEMORY, "2GiB"),
        seed("memory-bare", MEMORY, "1536"),
        seed("memory-unaligned", MEMORY, "5K"),
        seed("cpus", CPUS, "4"),
        seed("disk", DISK, "images/root.img"),
        seed("disk-readonly", DISK, "shared.img,readonly"),
        seed("net", NET, "tap=tap0"),
        seed("net-mac", NET, "tap=kite0,mac=02:4b:49:54:45:01"),
        seed("mac-dashes", MAC, "02-00-00-00-00-09"),
        seed("vsock", VSOCK, "cid=3,socket=/tmp/kite.vsock"),
        seed("vsock-reserved", VSOCK, "socket=v,cid=2"),
    ]
}
