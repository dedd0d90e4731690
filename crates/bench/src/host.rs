//! `kite workload <name>`: the host side of `kite bench`, as a plain process. It runs the same
//! code as the test guest's scenario (the `kite-workloads` crate for `cpu` and `mem`) and prints
//! the same `KITE-TEST` line with the same keys, cycles counted with rdtsc, so host and guest
//! output parse alike.
//!
//! `virtio-blk` does on the host file what the guest's throughput mode
//! (`kite_test=virtio-blk kite_blk_mode=seq|rand`) does on its disk: `n` writes of `bs` bytes
//! (sequential from offset 0, wrapping, or at random `bs`-aligned places), an fdatasync, then `n`
//! reads, one request at a time. It goes through the page cache with pwrite/pread (no O_DIRECT),
//! as Kite's virtio-blk back end does with lseek and read/write, and the flush is an fdatasync,
//! as the device's FLUSH is.
//! It prints the guest's keys: `mode= bs= depth=1 ops= write_bytes= write_cycles= flush_cycles=
//! read_bytes= read_cycles=`.
//!
//! `virtio-net` sends `n` UDP datagrams of `net_bytes` bytes to the echo server at `peer`, one at
//! a time (the guest's `kite_net_window=1`), and checks each echo; `frames= cycles=` as the guest.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct WorkloadArgs {
    /// cpu, mem, virtio-blk or virtio-net.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// virtio-blk: the file to write and read (the image the guest gets as its disk).
    #[arg(long, value_name = "PATH")]
    pub disk: Option<PathBuf>,
    /// virtio-blk: seq or rand.
    #[arg(long, value_name = "MODE", default_value = "rand")]
    pub blk_mode: String,
    /// virtio-blk: bytes per request (default 4096 for rand, 1 MiB for seq).
    #[arg(long, value_name = "BYTES")]
    pub blk_bs: Option<u64>,
    /// virtio-blk: requests per direction (default: file size / bs, at most 8192 for rand);
    /// virtio-net: datagrams (default 256).
    #[arg(long, value_name = "N")]
    pub n: Option<u64>,
    /// virtio-net: UDP payload bytes (4 to 1472).
    #[arg(long, value_name = "BYTES", default_value = "64")]
    pub net_bytes: usize,
    /// virtio-net: the UDP echo server.
    #[arg(long, value_name = "ADDR:PORT", default_value = "10.0.2.2:7777")]
    pub peer: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown scenario")]
    Unknown,
    #[error("give the file with --disk PATH")]
    NoDisk,
    #[error("disk file {}", path.display())]
    Disk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--blk-mode must be seq or rand")]
    Mode,
    #[error("UDP echo with {peer}")]
    Net {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("echo {0} came back different")]
    Echo(u64),
    #[error("--net-bytes must be from 4 to 1472")]
    NetBytes,
    #[error("--blk-bs must be a multiple of 512 from 512 to the file's size, and --n positive")]
    Size,
}

/// Time stamp counter ticks.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc reads a counter and touches no memory; every x86-64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Run the workload and return its result (the words after `KITE-TEST <name> ok `).
pub fn run(args: &WorkloadArgs) -> Result<String, Error> {
    match args.name.as_str() {
        "cpu" => {
            let start = rdtsc();
            let checksum = kite_workloads::cpu_workload();
            let cycles = rdtsc().wrapping_sub(start);
            Ok(format!("cycles={cycles} checksum={checksum:#018x}"))
        }
        "mem" => {
            let mut buf = vec![0u8; kite_workloads::MEM_BUF_BYTES];
            kite_workloads::mem_prepare(&mut buf);
            let start = rdtsc();
            let bytes = kite_workloads::mem_workload(&mut buf);
            let cycles = rdtsc().wrapping_sub(start);
            let milli = kite_workloads::milli_ratio(bytes, cycles);
            Ok(format!(
                "bytes_per_cycle={}.{:03} bytes={bytes} cycles={cycles}",
                milli / 1000,
                milli % 1000
            ))
        }
        "virtio-blk" => blk(args),
        "virtio-net" => net(args),
        _ => Err(Error::Unknown),
    }
}

/// The whole `kite workload` command: print the line, return the exit code.
pub fn main(args: &WorkloadArgs) -> i32 {
    let name = if args.name.is_empty() {
        "-"
    } else {
        &args.name
    };
    match run(args) {
        Ok(text) => {
            println!("KITE-TEST {name} ok {text}");
            0
        }
        Err(e) => {
            println!("KITE-TEST {name} FAIL {}", kite_vmm::error_chain(&e));
            1
        }
    }
}

/// xorshift64*, for offsets.
fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn blk(args: &WorkloadArgs) -> Result<String, Error> {
    let path = args.disk.as_ref().ok_or(Error::NoDisk)?;
    let random = match args.blk_mode.as_str() {
        "rand" => true,
        "seq" => false,
        _ => return Err(Error::Mode),
    };
    let err = |source| Error::Disk {
        path: path.clone(),
        source,
    };
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(err)?;
    let size = file.metadata().map_err(err)?.len();
    let bs = args.blk_bs.unwrap_or(if random { 4096 } else { 1 << 20 });
    if bs == 0 || !bs.is_multiple_of(512) || bs > size {
        return Err(Error::Size);
    }
    let blocks = size / bs;
    let n = args
        .n
        .unwrap_or(if random { blocks.min(8192) } else { blocks });
    if n == 0 {
        return Err(Error::Size);
    }
    let mut rng = 0x6b69_7465_2d62_6c6bu64;
    let mut offset = |i: u64| {
        let block = if random {
            next(&mut rng) % blocks
        } else {
            i % blocks
        };
        block * bs
    };
    let mut buf = vec![0x5au8; bs as usize];

    let start = rdtsc();
    for i in 0..n {
        file.write_all_at(&buf, offset(i)).map_err(err)?;
    }
    let write_cycles = rdtsc().wrapping_sub(start);
    let start = rdtsc();
    file.sync_data().map_err(err)?;
    let flush_cycles = rdtsc().wrapping_sub(start);
    let start = rdtsc();
    for i in 0..n {
        file.read_exact_at(&mut buf, offset(i)).map_err(err)?;
    }
    let read_cycles = rdtsc().wrapping_sub(start);
    let bytes = n * bs;
    Ok(format!(
        "mode={} bs={bs} depth=1 ops={n} write_bytes={bytes} write_cycles={write_cycles} \
         flush_cycles={flush_cycles} read_bytes={bytes} read_cycles={read_cycles}",
        args.blk_mode
    ))
}

fn net(args: &WorkloadArgs) -> Result<String, Error> {
    let len = args.net_bytes;
    if !(4..=1472).contains(&len) {
        return Err(Error::NetBytes);
    }
    let err = |source| Error::Net {
        peer: args.peer.clone(),
        source,
    };
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(err)?;
    socket.connect(&args.peer).map_err(err)?;
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .map_err(err)?;
    let n = args.n.unwrap_or(256);
    let mut out = vec![0u8; len];
    let mut back = vec![0u8; len + 1];
    let start = rdtsc();
    for seq in 0..n {
        out[..4].copy_from_slice(&(seq as u32).to_le_bytes());
        for (i, b) in out[4..].iter_mut().enumerate() {
            *b = (seq as u8).wrapping_add(i as u8);
        }
        socket.send(&out).map_err(err)?;
        let got = socket.recv(&mut back).map_err(err)?;
        if back[..got] != out[..] {
            return Err(Error::Echo(seq));
        }
    }
    let cycles = rdtsc().wrapping_sub(start);
    Ok(format!("frames={n} cycles={cycles} window=1 payload={len}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::{self, TestLine};

    fn args(name: &str, disk: Option<PathBuf>) -> WorkloadArgs {
        WorkloadArgs {
            name: name.into(),
            disk,
            blk_mode: "rand".into(),
            blk_bs: None,
            n: None,
            net_bytes: 64,
            peer: "10.0.2.2:7777".into(),
        }
    }

    #[test]
    fn unknown_workload_fails_like_the_guest() {
        assert!(matches!(run(&args("nope", None)), Err(Error::Unknown)));
        assert_eq!(Error::Unknown.to_string(), "unknown scenario");
        assert!(matches!(run(&args("virtio-blk", None)), Err(Error::NoDisk)));
    }

    #[test]
    fn net_times_udp_echoes() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = server.local_addr().unwrap().to_string();
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            for _ in 0..10 {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                server.send_to(&buf[..n], from).unwrap();
            }
        });
        let mut a = args("virtio-net", None);
        a.peer = peer;
        a.n = Some(10);
        let text = run(&a).unwrap();
        echo.join().unwrap();
        assert!(text.starts_with("frames=10 cycles="), "{text}");
        assert!(text.ends_with(" window=1 payload=64"), "{text}");
        a.net_bytes = 2;
        assert!(matches!(run(&a), Err(Error::NetBytes)));
    }

    #[test]
    fn blk_reports_the_guests_keys() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = dir.as_path().join("disk.img");
        std::fs::write(&path, vec![1u8; 2 << 20]).unwrap();
        let mut a = args("virtio-blk", Some(path));
        let text = run(&a).unwrap();
        let l = line::parse(&format!("KITE-TEST virtio-blk ok {text}")).unwrap();
        let TestLine::Ok { values, .. } = l else {
            panic!("{text}")
        };
        assert_eq!(line::value(&values, "mode"), Some("rand"));
        let n = line::numbers(&values);
        // 2 MiB in 4 KiB blocks.
        assert_eq!(n["ops"], 512.0);
        assert_eq!(n["bs"], 4096.0);
        for key in ["write_cycles", "flush_cycles", "read_cycles"] {
            assert!(n[key] > 0.0, "{key} in {text}");
        }
        a.blk_mode = "seq".into();
        a.n = Some(5);
        let text = run(&a).unwrap();
        assert!(
            text.starts_with("mode=seq bs=1048576 depth=1 ops=5 write_bytes=5242880"),
            "{text}"
        );
        a.blk_bs = Some(100);
        assert!(matches!(run(&a), Err(Error::Size)));
        a.blk_bs = Some(4 << 20);
        assert!(matches!(run(&a), Err(Error::Size)));
        a.blk_mode = "zigzag".into();
        assert!(matches!(run(&a), Err(Error::Mode)));
    }
}
