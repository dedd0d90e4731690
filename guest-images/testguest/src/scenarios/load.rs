//! `load`: one machine's share of a density test. It runs, one after another, the `virtio-blk`
//! check (the pattern for `kite_seed` over the disk, read back and compared, then a flush), the
//! `virtio-rng` read and the `virtio-vsock` echo, each with its own keys, and reports a few
//! figures of each. Any of them failing fails the whole with `blk: `, `rng: ` or `vsock: ` and
//! that scenario's reason.

use core::fmt::Write;

use super::{Ctx, blk, rng, vsock};
use crate::report::{Line, Outcome};
use crate::sys::rdtsc;

/// The value of `key=` in a result line's text, or `?`.
fn field<'a>(line: &'a Line, key: &str) -> &'a str {
    line.as_str()
        .split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or("?")
}

/// Runs `part`, prefixing its failure with `what`.
fn part(ctx: &mut Ctx, what: &str, run: fn(&mut Ctx) -> Outcome) -> Outcome {
    run(ctx).map_err(|reason| reason.prefixed(what))
}

pub fn load(ctx: &mut Ctx) -> Outcome {
    let start = rdtsc();
    let b = part(ctx, "blk", blk::virtio_blk)?;
    let r = part(ctx, "rng", rng::virtio_rng)?;
    let v = part(ctx, "vsock", vsock::virtio_vsock)?;
    let mut line = Line::new();
    let _ = write!(
        line,
        "sectors={} seed={} flushed={} rng_bytes={} vsock_bytes={} vsock_echoed={} cycles={}",
        field(&b, "sectors"),
        field(&b, "seed"),
        field(&b, "flushed"),
        field(&r, "bytes"),
        field(&v, "bytes"),
        field(&v, "echoed"),
        rdtsc().wrapping_sub(start)
    );
    Ok(line)
}
