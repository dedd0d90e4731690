use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
mod cli;
mod firecracker;
mod manual;
mod snapshot_cli;

use cli::{Cli, Command, RunArgs};
use kite_vmm::exit::ExitReason;

/// Build the VM the plan names, or serve the API until it starts one; with the API's state
/// (or the config file's metrics) for the run. `Err` is the exit code.
// `start`, `run_vmm` and `parse_run_only` are never inlined: each one's locals then share
// the stack with the others' instead of adding up in one frame of `main` (stack probes make
// every page of a frame resident).
#[inline(never)]
fn start(
    args: &RunArgs,
    process_start: Instant,
) -> Result<(kite_vmm::vmm::Vmm, Option<std::path::PathBuf>), i32> {
    use kite_vmm::api::{running::RunningApi, server, setup};
    let fail = |e: &dyn std::error::Error| {
        eprintln!("kite: error: {}", kite_vmm::error_chain(e));
        2
    };
    let plan = args.plan().map_err(|e| fail(&e))?;
    let say = |e: String| {
        eprintln!("kite: error: {}", kite_vmm::one_line(&e));
        2
    };
    if let Some(l) = &plan.layout.logger {
        setup::apply_logger(l).map_err(say)?;
    }
    let metrics = match &plan.layout.metrics {
        Some(m) => Some(setup::open_metrics(&m.metrics_path).map_err(say)?),
        None => None,
    };
    if let Some(limit) = args.fc.http_api_max_payload_size {
        kite_vmm::api::http::set_max_body(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    let channel = match &plan.api_sock {
        Some(path) => {
            let mode = plan.extras.seccomp;
            let filter = kite_vmm::seccomp::Filter::new(kite_vmm::seccomp::ThreadKind::Api, mode)
                .map_err(|e| fail(&e))?;
            if filter.is_some() {
                kite_vmm::seccomp::sigsys::install_handler().map_err(|e| fail(&e))?;
            }
            Some(server::start(path, filter).map_err(|e| fail(&e))?)
        }
        None => None,
    };
    // The API is ready (or there is none): Firecracker's startup figures end here.
    args.fc.record_startup();
    let boot = |config: &kite_vmm::config::VmConfig| kite_vmm::vmm::Vmm::new(config, process_start);
    let (mut vmm, layout, metrics) = match (plan.boot, channel.as_ref()) {
        (Some(config), _) => {
            let vmm = boot(&config).map_err(|e| {
                eprintln!("kite: error: {}", kite_vmm::error_chain(&e));
                e.exit_code()
            })?;
            (vmm, plan.layout, metrics)
        }
        (None, Some(channel)) => {
            log::info!("waiting for the API to configure and start the VM");
            let mut setup = setup::Setup {
                config: plan.layout,
                extras: plan.extras,
                metrics,
                id: plan.id.clone(),
            };
            // Stop signals end the wait (the socket is removed); Vmm::run takes them over.
            let signals = kite_vmm::signals::block_stop_signals()
                .map_err(|e| log::warn!("cannot watch for stop signals: {e}"))
                .ok();
            let seccomp = setup.extras.seccomp;
            let started = setup.wait_for_start(
                channel,
                signals.as_ref(),
                |c| {
                    boot(c)
                        .map(|vmm| (vmm, None))
                        .map_err(|e| kite_vmm::error_chain(&e))
                },
                |l, m| {
                    kite_vmm::api::snapshot::load(l, m, process_start)
                        .map(|(vmm, layout)| (vmm.with_seccomp(seccomp), Some(layout)))
                },
            );
            let (vmm, restored) = match started {
                Ok(((mut vmm, restored), answer)) => {
                    vmm.on_running(move || answer.started());
                    (vmm, restored)
                }
                Err(setup::NotStarted::Signal(sig)) => {
                    let _ = std::fs::remove_file(&channel.socket);
                    log::info!("stopped on signal {sig} before the VM was started");
                    return Err(128 + sig);
                }
                Err(setup::NotStarted::ApiGone) => {
                    let _ = std::fs::remove_file(&channel.socket);
                    return Err(say(
                        "the API thread stopped before the VM was started".into()
                    ));
                }
            };
            // After a load, `GET /vm/config` shows the restored VM (with this process's
            // logger and metrics).
            let layout = match restored {
                Some(layout) => kite_vmm::api::types::FullConfig {
                    logger: setup.config.logger,
                    metrics: setup.config.metrics,
                    ..layout
                },
                None => setup.config,
            };
            (vmm, layout, setup.metrics)
        }
        (None, None) => return Err(say("no kernel to boot".into())),
    };
    let socket = channel.as_ref().map(|c| c.socket.clone());
    if channel.is_some() || metrics.is_some() {
        vmm.attach_api(RunningApi::new(channel, plan.id, layout, metrics));
    }
    Ok((vmm, socket))
}

fn run(args: &RunArgs, process_start: Instant) -> i32 {
    let (vmm, socket) = match start(args, process_start) {
        Ok(v) => v,
        Err(code) => return code,
    };
    run_vmm(vmm, socket, args.timeline, process_start)
}

/// Run a built (or restored) VM to its end; the exit code.
#[inline(never)]
pub(crate) fn run_vmm(
    vmm: kite_vmm::vmm::Vmm,
    socket: Option<std::path::PathBuf>,
    timeline: bool,
    process_start: Instant,
) -> i32 {
    let terminal = kite_vmm::terminal::RawModeGuard::new(libc::STDIN_FILENO);
    let result = vmm.run();
    drop(terminal);
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
    match result {
        Ok((report, teardown)) => {
            // Before the exit reason, which stays the last line.
            if let Some(m) = &report.memory {
                let mib = |b: u64| b as f64 / f64::from(1 << 20);
                log::info!(
                    "memory: {:.1} MiB VMM overhead (peak RSS {:.1} MiB less {:.1} MiB of guest RAM touched)",
                    mib(m.overhead()),
                    mib(m.peak_rss),
                    mib(m.guest_resident)
                );
            }
            let reason = &report.reason;
            let text = reason.describe();
            match reason {
                ExitReason::GuestReset
                | ExitReason::GuestPowerOff
                | ExitReason::GuestHalted
                | ExitReason::Signal(_) => {
                    log::info!("{text}")
                }
                ExitReason::Timeout(_) | ExitReason::Fatal(_) => {
                    let last = &report.last_console_line;
                    if last.is_empty() {
                        eprintln!("kite: {text}; the guest printed nothing on its console");
                    } else {
                        eprintln!("kite: {text}; guest's last console line: {last}");
                    }
                }
            }
            for (name, at) in &report.timeline.marks {
                log::debug!("{:>8.1} ms  {name}", at.as_secs_f64() * 1e3);
            }
            if timeline {
                kite_bench::timeline::print(&report, process_start);
            }
            teardown.finish();
            reason.exit_code()
        }
        Err(e) => {
            eprintln!("kite: error: {}", kite_vmm::error_chain(&e));
            1
        }
    }
}

/// Run as `firecracker` (through a symlink or a copy of that name): Firecracker's flags, no
/// subcommand.
#[derive(clap::Parser, Debug)]
#[command(
    name = "firecracker",
    disable_version_flag = true,
    about = "Kite, run under Firecracker's name: the flags of `kite run` (see docs/api.md)"
)]
struct AsFirecracker {
    #[command(flatten)]
    run: RunArgs,
    /// Print the version (Firecracker's first line, then Kite's).
    #[arg(long)]
    version: bool,
}

/// Run as `jailer`: Firecracker's jailer's flags, no subcommand.
#[derive(clap::Parser, Debug)]
#[command(
    name = "jailer",
    version = firecracker::KITE_VERSION,
    about = "Kite's jailer: Firecracker's jailer (see docs/api.md)"
)]
struct AsJailer {
    #[command(flatten)]
    jail: kite_jailer::JailArgs,
}

/// `kite run ...` parsed with `run`'s arguments alone.
#[derive(clap::Parser, Debug)]
#[command(name = "kite run")]
struct RunOnly {
    #[command(flatten)]
    run: RunArgs,
}

/// `kite run ARGS` as a [`Cli`], parsed without building every other subcommand's definition
/// on the heap (clap keeps the whole tree it parsed with: a bigger resident set for the life of
/// every VM). `None` for any other command line, and for anything this parse refuses (an error,
/// `--help`), which the whole command line then parses again, with its own messages and help.
#[inline(never)]
fn parse_run_only() -> Option<Cli> {
    let mut args = std::env::args_os();
    let bin = args.next()?;
    if args.next()? != "run" {
        return None;
    }
    let run = RunOnly::try_parse_from(std::iter::once(bin).chain(args)).ok()?;
    Some(Cli {
        command: Command::Run(Box::new(run.run)),
    })
}

fn invoked_as(name: &str) -> bool {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == name))
        .unwrap_or(false)
}

fn invoked_as_firecracker() -> bool {
    invoked_as("firecracker")
}

/// Make the jail and exec the VMM; returns only on failure.
fn jail(args: &kite_jailer::JailArgs, start_us: u64, start_cpu_us: u64) -> i32 {
    match kite_jailer::run(args, start_us, start_cpu_us) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("jailer: error: {e}");
            1
        }
    }
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    let start_us = kite_jailer::clock_us(libc::CLOCK_MONOTONIC);
    let start_cpu_us = kite_jailer::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
    if invoked_as("jailer") {
        return match AsJailer::try_parse() {
            Ok(j) => {
                ExitCode::from(u8::try_from(jail(&j.jail, start_us, start_cpu_us)).unwrap_or(1))
            }
            Err(e) if !e.use_stderr() => {
                let _ = e.print();
                ExitCode::SUCCESS
            }
            Err(e) => {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or_default();
                eprintln!("jailer: {first} (see jailer --help)");
                ExitCode::from(2)
            }
        };
    }
    let parsed = if invoked_as_firecracker() {
        match AsFirecracker::try_parse() {
            Ok(fc) if fc.version => {
                print!("{}", firecracker::firecracker_version_text());
                return ExitCode::SUCCESS;
            }
            Ok(fc) => Ok(Cli {
                command: Command::Run(Box::new(RunArgs {
                    as_firecracker: true,
                    ..fc.run
                })),
            }),
            Err(e) => Err(e),
        }
    } else {
        parse_run_only().map_or_else(Cli::try_parse, Ok)
    };
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `kite` alone: the help, on stderr, as a usage error.
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            // Clap's message on one line (it may continue on indented lines); the usage and
            // the hint after it are left out.
            let text = e.to_string();
            let first = text
                .lines()
                .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            let first = first.trim_start_matches("error: ");
            let help = if invoked_as_firecracker() {
                "firecracker --help; Firecracker flags Kite takes: docs/api.md"
            } else {
                "kite --help"
            };
            eprintln!("kite: error: {first} (see {help})");
            return ExitCode::from(2);
        }
    };
    let level = match &cli.command {
        Command::Run(args) => match args.log_level() {
            Ok(level) => level,
            Err(e) => {
                eprintln!("kite: error: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    kite_vmm::logging::init(level);
    let code = match &cli.command {
        Command::Run(args) => run(args, process_start),
        Command::Bench(args) => match kite_bench::run(args) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("kite: error: {}", kite_vmm::error_chain(&e));
                e.exit_code()
            }
        },
        Command::Restore(args) => snapshot_cli::restore(args, process_start),
        Command::Snapshot(args) => snapshot_cli::snapshot(args),
        Command::RebaseSnap(args) => snapshot_cli::rebase(args),
        Command::Workload(args) => kite_bench::host::main(args),
        Command::Completions { shell } => match manual::completions(*shell) {
            Ok(()) => 0,
            // A reader that stopped early (`| head`) wanted no more.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
            Err(e) => {
                eprintln!("kite: error: cannot write the completion script: {e}");
                1
            }
        },
        Command::Man { dir } => match manual::man_pages(dir) {
            Ok(files) => {
                println!("wrote {} in {}", files.join(", "), dir.display());
                0
            }
            Err(e) => {
                eprintln!(
                    "kite: error: cannot write the manual pages in {}: {e}",
                    kite_vmm::one_line(&dir.display().to_string())
                );
                2
            }
        },
        Command::Jail(args) => jail(args, start_us, start_cpu_us),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
