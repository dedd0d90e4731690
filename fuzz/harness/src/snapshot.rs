//! Fuzz target `snapshot`: the snapshot file parser (`kite_vmm::snapshot::file::parse`), on
//! whole files. Any input must give a state or an error, never a panic; a state it accepts
//! must write back to a file that reads as the same state, and must give a machine
//! configuration and a `GET /vm/config` layout (or an error) without panicking.

use super::Seed;
use kite_vmm::snapshot::Overrides;
use kite_vmm::snapshot::file::{encode, example_state, parse};

pub fn run(data: &[u8]) {
    let Ok(state) = parse(data) else {
        return;
    };
    let again = encode(&state).expect("an accepted state encodes");
    let reread = parse(&again).expect("a written state reads back");
    assert_eq!(
        encode(&reread).expect("encodes"),
        again,
        "a state does not survive a write and a read"
    );
    let _ = state.machine.config(&Overrides::default());
    // The configuration layout inside (JSON, for `GET /vm/config` after a load).
    let _ = kite_vmm::api::snapshot::restored_layout(&state, &Overrides::default());
}

pub fn seeds() -> Vec<Seed> {
    let file = |cpus| encode(&example_state(cpus)).expect("the example encodes");
    let one = file(1);
    let mut damaged = file(2);
    let at = damaged.len() / 2;
    damaged[at] ^= 0x10;
    vec![
        Seed {
            name: "one-vcpu",
            data: one.clone(),
        },
        Seed {
            name: "two-vcpus",
            data: file(2),
        },
        Seed {
            name: "checksum-damaged",
            data: damaged,
        },
        Seed {
            name: "truncated",
            data: one[..one.len() - 3].to_vec(),
        },
    ]
}
