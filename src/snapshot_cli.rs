//! `kite restore DIR` and `kite snapshot SOCKET DIR`: snapshots for a user without an API
//! client. A snapshot directory holds `vmstate` (the state file) and `memory` (guest RAM).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "vmstate";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The snapshot directory (`kite snapshot` writes one).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Serve Firecracker's API on this Unix socket while the VM runs.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Leave the VM paused (resume it with PATCH /vm on --api-sock).
    #[arg(long)]
    pub paused: bool,
    /// Log the pages the guest writes from the restore on, for `kite snapshot --diff`.
    #[arg(long)]
    pub track_dirty_pages: bool,
    /// Use another host tap for a network interface: ID=TAP (the snapshot's iface id, or
    /// net0, net1, ... for VMs started without the API). May be repeated.
    #[arg(long = "net-override", value_name = "ID=TAP")]
    pub net_overrides: Vec<String>,
    /// Let the page-fault handler listening on this socket fill guest RAM (Firecracker's Uffd
    /// backend: for example `kite-uffd-handler SOCKET DIR/memory`) instead of mapping
    /// DIR/memory.
    #[arg(long, value_name = "SOCKET")]
    pub uffd: Option<PathBuf>,
    /// Listen for vsock connections on this socket instead of the snapshot's.
    #[arg(long, value_name = "PATH")]
    pub vsock_socket: Option<PathBuf>,
    /// Stop the VM after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Print the start-up timeline at the end.
    #[arg(long)]
    pub timeline: bool,
    /// System-call filters, as for `kite run`.
    #[arg(long, value_name = "MODE", value_enum, default_value = "on")]
    pub seccomp: crate::cli::Seccomp,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// The API socket of the running Kite (`kite run --api-sock SOCKET`).
    #[arg(value_name = "SOCKET")]
    pub socket: PathBuf,
    /// Where to write the snapshot (created if missing; its parent must exist).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Leave the VM paused after the snapshot.
    #[arg(long)]
    pub leave_paused: bool,
    /// Write only the pages written since the last snapshot (the VM must have been started
    /// with --track-dirty-pages); merge DIR/memory over the full snapshot's with
    /// `kite rebase-snap`.
    #[arg(long)]
    pub diff: bool,
}

#[derive(Args, Debug)]
pub struct RebaseArgs {
    /// The full memory file (replaced by the merged one).
    #[arg(long, value_name = "PATH")]
    pub base_file: PathBuf,
    /// The diff snapshot's memory file (`"snapshot_type": "Diff"`).
    #[arg(long, value_name = "PATH")]
    pub diff_file: PathBuf,
}

/// `kite rebase-snap --base-file BASE --diff-file DIFF`.
pub fn rebase(args: &RebaseArgs) -> i32 {
    let started = Instant::now();
    match kite_vmm::snapshot::rebase::rebase(&args.base_file, &args.diff_file) {
        Ok(m) => {
            eprintln!(
                "kite: merged {} KiB of {} over {} in {:.0} ms",
                m.diff_bytes >> 10,
                args.diff_file.display(),
                args.base_file.display(),
                started.elapsed().as_secs_f64() * 1e3
            );
            0
        }
        Err(e) => fail(&e),
    }
}

fn fail(text: &str) -> i32 {
    eprintln!("kite: error: {}", kite_vmm::one_line(text));
    2
}

pub fn restore(args: &RestoreArgs, process_start: Instant) -> i32 {
    let mut overrides = kite_vmm::snapshot::Overrides {
        vsock_socket: args.vsock_socket.clone(),
        track_dirty_pages: args.track_dirty_pages,
        ..Default::default()
    };
    for o in &args.net_overrides {
        let Some((id, tap)) = o
            .split_once('=')
            .filter(|(i, t)| !i.is_empty() && !t.is_empty())
        else {
            return fail(&format!("--net-override {o:?}: write ID=TAP"));
        };
        overrides.taps.push((id.to_string(), tap.to_string()));
    }
    let state = match kite_vmm::snapshot::read(&args.dir.join(STATE_FILE)) {
        Ok(s) => s,
        Err(e) => return fail(&kite_vmm::error_chain(&e)),
    };
    let mem = match &args.uffd {
        Some(socket) => kite_vmm::snapshot::MemBackend::Uffd(socket.clone()),
        None => kite_vmm::snapshot::MemBackend::File(args.dir.join(MEMORY_FILE)),
    };
    let layout = match kite_vmm::api::snapshot::restored_layout(&state, &overrides) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let vmm =
        match kite_vmm::vmm::Vmm::restore(&state, &mem, &overrides, !args.paused, process_start) {
            Ok(v) => v
                .with_timeout(args.timeout.map(Duration::from_secs))
                .with_seccomp(args.seccomp.into()),
            Err(e) => return fail(&kite_vmm::error_chain(&e)),
        };
    let mut vmm = vmm;
    let mut socket = None;
    if let Some(path) = &args.api_sock {
        use kite_vmm::api::{running::RunningApi, server};
        let mode = args.seccomp.into();
        let filter = match kite_vmm::seccomp::Filter::new(kite_vmm::seccomp::ThreadKind::Api, mode)
        {
            Ok(f) => f,
            Err(e) => return fail(&kite_vmm::error_chain(&e)),
        };
        if filter.is_some()
            && let Err(e) = kite_vmm::seccomp::sigsys::install_handler()
        {
            return fail(&kite_vmm::error_chain(&e));
        }
        let channel = match server::start(path, filter) {
            Ok(c) => c,
            Err(e) => return fail(&kite_vmm::error_chain(&e)),
        };
        socket = Some(channel.socket.clone());
        vmm.attach_api(RunningApi::new(Some(channel), "kite".into(), layout, None));
    }
    crate::run_vmm(vmm, socket, args.timeline, process_start)
}

/// One request on the API socket; the status and body of the answer.
fn call(socket: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("{method} {path}: no answer: {e}"))?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} {path}: not an HTTP answer"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn snapshot(args: &SnapshotArgs) -> i32 {
    if let Err(e) = std::fs::create_dir_all(&args.dir) {
        return fail(&format!("cannot create {}: {e}", args.dir.display()));
    }
    let (Some(state), Some(mem)) = (
        args.dir.join(STATE_FILE).to_str().map(String::from),
        args.dir.join(MEMORY_FILE).to_str().map(String::from),
    ) else {
        return fail("the snapshot directory's path is not UTF-8");
    };
    let step = |method: &str, path: &str, body: &str| -> Result<(), String> {
        match call(&args.socket, method, path, body)? {
            (s, _) if s < 300 => Ok(()),
            (_, body) => Err(format!("{method} {path}: {}", body.trim())),
        }
    };
    let started = Instant::now();
    if let Err(e) = step("PATCH", "/vm", r#"{"state": "Paused"}"#) {
        return fail(&e);
    }
    let body = format!(
        r#"{{"snapshot_type": "{}", "snapshot_path": {}, "mem_file_path": {}}}"#,
        if args.diff { "Diff" } else { "Full" },
        json_string(&state),
        json_string(&mem)
    );
    let created = step("PUT", "/snapshot/create", &body);
    let after = if args.leave_paused {
        Ok(())
    } else {
        step("PATCH", "/vm", r#"{"state": "Resumed"}"#)
    };
    if let Err(e) = created {
        return fail(&e);
    }
    if let Err(e) = after {
        return fail(&e);
    }
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let dir = args.dir.display();
    if args.diff {
        eprintln!(
            "kite: diff snapshot written to {dir} in {ms:.0} ms; apply it to the full snapshot FULL it follows with: kite rebase-snap --base-file FULL/{MEMORY_FILE} --diff-file {dir}/{MEMORY_FILE} && cp {dir}/{STATE_FILE} FULL/{STATE_FILE}, then: kite restore FULL"
        );
    } else {
        eprintln!(
            "kite: snapshot written to {dir} in {ms:.0} ms; restore it with: kite restore {dir}"
        );
    }
    0
}
