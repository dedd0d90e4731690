use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use kite::cli::{Cli, Command, RunArgs};
use kite::exit::ExitReason;

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().filter_or("KITE_LOG", "info"))
        .format(|buf, record| {
            let level = match record.level() {
                log::Level::Error => "error: ",
                log::Level::Warn => "warning: ",
                _ => "",
            };
            writeln!(buf, "kite: {level}{}", record.args())
        })
        .init();
}

fn run(args: &RunArgs, process_start: Instant) -> i32 {
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kite: error: {}", kite::error_chain(&e));
            return 2;
        }
    };
    let vmm = match kite::vmm::Vmm::new(&config, process_start) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("kite: error: {}", kite::error_chain(&e));
            return e.exit_code();
        }
    };
    let terminal = kite::terminal::RawModeGuard::new(libc::STDIN_FILENO);
    let result = vmm.run();
    drop(terminal);
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
            if args.timeline {
                kite::bench::timeline::print(&report, process_start);
            }
            teardown.finish();
            reason.exit_code()
        }
        Err(e) => {
            eprintln!("kite: error: {}", kite::error_chain(&e));
            1
        }
    }
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    let cli = match Cli::try_parse() {
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
            eprintln!("kite: error: {first} (see kite --help)");
            return ExitCode::from(2);
        }
    };
    init_logging();
    let code = match &cli.command {
        Command::Run(args) => run(args, process_start),
        Command::Bench(args) => match kite::bench::run(args) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("kite: error: {}", kite::error_chain(&e));
                e.exit_code()
            }
        },
        Command::Workload(args) => kite::bench::host::main(args),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
