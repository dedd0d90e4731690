//! `KITE_GUEST_PROFILE`: sampling each vCPU's RIP (the event loop kicks, `Vcpu::on_kick`
//! records) and writing the samples out at exit.

use std::path::Path;
use std::time::Duration;

/// How often the guest profiler samples each vCPU's RIP.
pub const INTERVAL: Duration = Duration::from_millis(2);

/// `KITE_GUEST_PROFILE=FILE`: a developer's tool for finding where a slow guest spends its
/// time. Every vCPU is kicked every [`INTERVAL`] and its RIP recorded; at exit FILE gets
/// one hex RIP per line (symbolize with `addr2line -f -e vmlinux` or `nm`).
pub fn path() -> Option<std::path::PathBuf> {
    std::env::var_os("KITE_GUEST_PROFILE").map(Into::into)
}

pub fn write(mut file: std::fs::File, path: &Path, rips: &[u64]) {
    use std::io::Write;
    let text: String = rips.iter().map(|r| format!("{r:#x}\n")).collect();
    match file.write_all(text.as_bytes()) {
        Ok(()) => log::info!(
            "{} guest RIP samples written to {}",
            rips.len(),
            path.display()
        ),
        Err(e) => log::warn!("cannot write the guest profile to {}: {e}", path.display()),
    }
}
