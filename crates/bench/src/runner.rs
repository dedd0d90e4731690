//! Child processes for `kite bench`: each runs with a time limit and is killed past it; its
//! stdout lines are time-stamped as they arrive, on the clock `kite run --timeline` reports its
//! own start on. Once the bench is interrupted, none starts, and the running one gets the signal
//! too (if the terminal did not send it to the whole process group already). Also: finding (and
//! building) the test guest.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::interrupt;
use super::timeline::monotonic_ns;

/// How long an interrupted child has to exit on the signal before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("did not finish within {} s and was killed", .0.as_secs())]
    Timeout(Duration),
    #[error("cannot wait for a child process")]
    Wait(#[source] std::io::Error),
    #[error("interrupted by {}", interrupt::name(*.0))]
    Interrupted(i32),
    #[error(
        "cannot find the test guest; run kite bench in the Kite repository (it looks for guest-images/out/testguest.elf and builds it with guest-images/testguest/build.sh) or give --guest PATH"
    )]
    NoGuest,
    #[error("test guest {} does not exist", .0.display())]
    GuestMissing(PathBuf),
    #[error("building the test guest with {} failed: {detail}", script.display())]
    GuestBuild { script: PathBuf, detail: String },
}

/// What a finished child printed, and when.
#[derive(Debug)]
pub struct Output {
    /// stdout lines (without the newline), each with the CLOCK_MONOTONIC ns it was read at.
    pub lines: Vec<(u64, String)>,
    pub stderr: String,
    pub status: ExitStatus,
    /// CLOCK_MONOTONIC ns just before the child was started, and when it ended (its output
    /// closed, which it does as it exits).
    pub spawned_ns: u64,
    pub ended_ns: u64,
}

impl Output {
    /// Whole run, spawn to exit, in ms.
    pub fn wall_ms(&self) -> f64 {
        self.ended_ns.saturating_sub(self.spawned_ns) as f64 / 1e6
    }

    /// The last non-empty stderr line, to say why a child failed.
    pub fn last_stderr_line(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }
}

/// Read `pipe` to its end on a thread: its lines, each stamped as it arrived, and when it ended.
pub fn read_lines(pipe: impl Read + Send + 'static) -> JoinHandle<(Vec<(u64, String)>, u64)> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut lines = Vec::new();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let at = monotonic_ns();
                    let text = String::from_utf8_lossy(&buf);
                    lines.push((at, text.trim_end_matches(['\n', '\r']).to_string()));
                }
            }
        }
        (lines, monotonic_ns())
    })
}

/// Run `cmd` (stdin from /dev/null, stdout and stderr captured) to its end; kill it past
/// `limit`. Not once the bench is interrupted: then it stops the child and says so.
pub fn run(cmd: Command, limit: Duration) -> Result<Output, Error> {
    run_unless(cmd, limit, interrupt::received)
}

/// [`run`], with `interrupted` saying whether (and by which signal) the bench was interrupted.
fn run_unless(
    mut cmd: Command,
    limit: Duration,
    interrupted: impl Fn() -> Option<i32>,
) -> Result<Output, Error> {
    if let Some(signal) = interrupted() {
        return Err(Error::Interrupted(signal));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned_ns = monotonic_ns();
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    let out = child.stdout.take().map(read_lines);
    let err = child.stderr.take().map(read_lines);
    let (status, exited_ns) = loop {
        if let Some(status) = child.try_wait().map_err(Error::Wait)? {
            break (status, monotonic_ns());
        }
        if let Some(signal) = interrupted() {
            stop(&mut child, signal);
            return Err(Error::Interrupted(signal));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            // The readers end when the pipes close; they are not waited for, in case something
            // the child started still holds them.
            return Err(Error::Timeout(limit));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (lines, out_end) = out
        .and_then(|t| t.join().ok())
        .unwrap_or((Vec::new(), exited_ns));
    let (err_lines, err_end) = err
        .and_then(|t| t.join().ok())
        .unwrap_or((Vec::new(), exited_ns));
    let stderr = err_lines
        .into_iter()
        .map(|(_, l)| l + "\n")
        .collect::<String>();
    Ok(Output {
        lines,
        stderr,
        status,
        spawned_ns,
        // Polling sees the exit up to a few ms late; the pipes close as the process exits.
        ended_ns: out_end.max(err_end).min(exited_ns),
    })
}

/// Pass `signal` on to `child` (which may have it already) and wait for it to exit; kill it if
/// it is still there after [`STOP_GRACE`].
fn stop(child: &mut Child, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill() takes no memory; `pid` is our child, not yet waited for, so it cannot
        // have been reused.
        unsafe { libc::kill(pid, signal) };
    }
    let start = Instant::now();
    while start.elapsed() < STOP_GRACE {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The test guest to boot: `explicit` if given, else `guest-images/out/testguest.elf` of the
/// repository this is run in (the current directory or one above it, then the one Kite's own
/// executable was built in), rebuilt first with its build script (quick when nothing changed)
/// so that it has the newest scenarios. If the build fails but an image is there, it is used
/// with a warning.
pub fn find_guest(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(Error::GuestMissing(path.to_path_buf()))
        };
    }
    let root = find_repository("guest-images/testguest/build.sh").ok_or(Error::NoGuest)?;
    let elf = root.join("guest-images/out/testguest.elf");
    let script = root.join("guest-images/testguest/build.sh");
    match build_guest(&script) {
        Ok(built) => Ok(built),
        Err(e @ Error::Interrupted(_)) => Err(e),
        Err(e) if elf.is_file() => {
            log::warn!("{e}; using the test guest already built");
            Ok(elf)
        }
        Err(e) => Err(e),
    }
}

/// The Kite repository this is run in: the first of the current directory and the ones above it,
/// then the directories above Kite's own executable, that has the file `marker` (a path relative
/// to the repository).
pub fn find_repository(marker: &str) -> Option<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.into_iter().find(|r| r.join(marker).is_file())
}

fn build_guest(script: &Path) -> Result<PathBuf, Error> {
    let failed = |detail: String| Error::GuestBuild {
        script: script.to_path_buf(),
        detail,
    };
    let out = run(Command::new(script), Duration::from_secs(600)).map_err(|e| match e {
        Error::Interrupted(_) => e,
        e => failed(e.to_string()),
    })?;
    if !out.status.success() {
        return Err(failed(format!(
            "{}; {}",
            out.status,
            out.last_stderr_line()
        )));
    }
    let path = out
        .lines
        .iter()
        .rev()
        .map(|(_, l)| PathBuf::from(l.trim()))
        .find(|p| p.is_file())
        .ok_or_else(|| failed("it printed no path of a built image".into()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn output_lines_are_stamped_in_order() {
        let out = run(
            sh("echo one; sleep 0.05; echo two >&2; echo three"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.status.success());
        let texts: Vec<&str> = out.lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(texts, ["one", "three"]);
        assert!(out.lines[1].0 >= out.lines[0].0 + 40_000_000);
        assert!(out.lines[0].0 >= out.spawned_ns);
        assert!(out.ended_ns >= out.lines[1].0);
        assert_eq!(out.stderr, "two\n");
        assert_eq!(out.last_stderr_line(), "two");
        assert!(out.wall_ms() >= 40.0);
    }

    #[test]
    fn a_child_past_its_limit_is_killed() {
        let start = Instant::now();
        let err = run(sh("exec sleep 30"), Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn an_interrupted_run_passes_the_signal_on_and_starts_nothing_more() {
        use std::cell::Cell;
        let polls = Cell::new(0);
        // The signal comes while the child runs (after the check before spawning).
        let after_spawn = || {
            polls.set(polls.get() + 1);
            (polls.get() > 1).then_some(libc::SIGTERM)
        };
        let start = Instant::now();
        let err =
            run_unless(sh("exec sleep 30"), Duration::from_secs(30), after_spawn).unwrap_err();
        assert!(matches!(err, Error::Interrupted(libc::SIGTERM)), "{err}");
        assert_eq!(err.to_string(), "interrupted by SIGTERM");
        assert!(
            start.elapsed() < STOP_GRACE,
            "the child did not get the signal"
        );

        // A child that ignores it is killed after a grace period. The signal comes once the
        // child has said (by making `ready`) that it ignores it.
        let ready = std::env::temp_dir().join(format!("kite-runner-{}-a", std::process::id()));
        let script = format!("trap '' TERM; touch {}; exec sleep 30", ready.display());
        let start = Instant::now();
        let when_ready = || ready.exists().then_some(libc::SIGTERM);
        let err = run_unless(sh(&script), Duration::from_secs(30), when_ready).unwrap_err();
        let _ = std::fs::remove_file(&ready);
        assert!(matches!(err, Error::Interrupted(_)), "{err}");
        assert!((STOP_GRACE..Duration::from_secs(10)).contains(&start.elapsed()));

        // Once interrupted, nothing starts.
        let marker = std::env::temp_dir().join(format!("kite-runner-{}-b", std::process::id()));
        let script = format!("touch {}", marker.display());
        let err = run_unless(sh(&script), Duration::from_secs(10), || Some(libc::SIGINT));
        assert!(matches!(err, Err(Error::Interrupted(libc::SIGINT))));
        assert!(!marker.exists(), "a child started after the signal");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = run(
            Command::new("/nonexistent/kite-bench-test"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/kite-bench-test"));
    }

    #[test]
    fn the_repository_is_found_by_a_file_in_it() {
        // Tests run in the repository.
        let root = find_repository("guest-images/build.sh").unwrap();
        assert!(root.join("Cargo.toml").is_file());
        assert_eq!(find_repository("no/such/kite-bench-marker"), None);
    }

    #[test]
    fn an_explicit_guest_must_exist() {
        let err = find_guest(Some(Path::new("/nonexistent/guest.elf"))).unwrap_err();
        assert!(matches!(err, Error::GuestMissing(_)));
    }
}
