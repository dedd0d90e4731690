//! The scenario table. A scenario gets the boot information, the command line and the page
//! allocator, and returns the text of its result line (see `report`).
//!
//! To add one: write `fn name(ctx: &mut Ctx) -> Outcome` in a module here and list it in
//! [`SCENARIOS`].

use crate::bootinfo::BootInfo;
use crate::cmdline::Cmdline;
use crate::mem::PageAllocator;
use crate::report::Outcome;

mod agent;
mod basic;
mod bench;
mod blk;
mod blkfault;
mod hostile;
mod hostile_vsock;
mod irq;
mod load;
mod net;
mod peers;
mod rawvsock;
mod ring0;
mod rng;
mod smp;
mod touch;
mod vsock;

pub struct Ctx<'a> {
    pub boot: &'a BootInfo,
    pub cmdline: Cmdline<'a>,
    pub pages: PageAllocator,
}

impl Ctx<'_> {
    /// `kite_n=<N>` from the command line, or `default`.
    pub fn n(&self, default: u64) -> u64 {
        self.cmdline.get_u64("kite_n").unwrap_or(default)
    }
}

pub struct Scenario {
    pub name: &'static str,
    pub run: fn(&mut Ctx) -> Outcome,
}

pub static SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "hello",
        run: basic::hello,
    },
    Scenario {
        name: "echo",
        run: basic::echo,
    },
    Scenario {
        name: "tick",
        run: basic::tick,
    },
    Scenario {
        name: "pio-rtt",
        run: basic::pio_rtt,
    },
    Scenario {
        name: "mmio-rtt",
        run: basic::mmio_rtt,
    },
    Scenario {
        name: "cpu",
        run: bench::cpu,
    },
    Scenario {
        name: "mem",
        run: bench::mem,
    },
    Scenario {
        name: "touch",
        run: touch::touch,
    },
    Scenario {
        name: "smp",
        run: smp::smp,
    },
    Scenario {
        name: "irq",
        run: irq::irq,
    },
    Scenario {
        name: "fault",
        run: basic::fault,
    },
    Scenario {
        name: "ring0-insns",
        run: ring0::ring0_insns,
    },
    Scenario {
        name: "virtio-blk",
        run: blk::virtio_blk,
    },
    Scenario {
        name: "virtio-blk-fill",
        run: blkfault::fill,
    },
    Scenario {
        name: "virtio-blk-shrink",
        run: blkfault::shrink,
    },
    Scenario {
        name: "virtio-blk-resize",
        run: blkfault::resize,
    },
    Scenario {
        name: "virtio-blk-flushlog",
        run: blkfault::flushlog,
    },
    Scenario {
        name: "virtio-rng",
        run: rng::virtio_rng,
    },
    Scenario {
        name: "virtio-net",
        run: net::virtio_net,
    },
    Scenario {
        name: "virtio-vsock",
        run: vsock::virtio_vsock,
    },
    Scenario {
        name: "load",
        run: load::load,
    },
    Scenario {
        name: "peers",
        run: peers::peers,
    },
    Scenario {
        name: "agent",
        run: agent::agent,
    },
    Scenario {
        name: "hostile-huge",
        run: hostile::huge,
    },
    Scenario {
        name: "hostile-notify",
        run: hostile::notify,
    },
    Scenario {
        name: "hostile-reset",
        run: hostile::reset,
    },
    Scenario {
        name: "hostile-mmio",
        run: hostile::mmio_fuzz,
    },
    Scenario {
        name: "hostile-vsock",
        run: hostile_vsock::hostile_vsock,
    },
];

pub fn find(name: &[u8]) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name.as_bytes() == name)
}
