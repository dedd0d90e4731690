//! Kite's log: `kite: [level: ]message` lines on stderr, or in a file (`--log-path`, the
//! API's `PUT /logger`), at the level `KITE_LOG`, `--level` or `PUT /logger` sets.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use log::LevelFilter;

/// Where log lines go: stderr until a log file is set.
static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);
static SHOW_LEVEL: AtomicBool = AtomicBool::new(false);
static SHOW_ORIGIN: AtomicBool = AtomicBool::new(false);
/// Firecracker's `--module`/`logger.module`: only records from modules whose path starts with
/// this are written (Kite's paths: `kite_vmm::devices::virtio::block`, ...).
static MODULE: Mutex<Option<String>> = Mutex::new(None);

/// Whether a record from `module` passes the module filter.
fn module_passes(module: Option<&str>) -> bool {
    match MODULE.lock().unwrap_or_else(|e| e.into_inner()).as_deref() {
        None | Some("") => true,
        Some(prefix) => module.is_some_and(|m| m.starts_with(prefix)),
    }
}

/// Firecracker's level names (and the usual lower-case ones).
pub fn parse_level(text: &str) -> Result<LevelFilter, String> {
    match text.to_ascii_lowercase().as_str() {
        "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warning" | "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(format!(
            "invalid log level '{text}': use Error, Warning, Info, Debug, Trace or Off"
        )),
    }
}

struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match FILE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some(f) => f.write_all(buf),
            None => std::io::stderr().write_all(buf),
        }?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Set up the logger: `level` if given, else `KITE_LOG` (default `info`; a level, or
/// env_logger's per-module syntax). A plain level can be changed later ([`configure`]).
pub fn init(level: Option<LevelFilter>) {
    let env = std::env::var("KITE_LOG").ok();
    let plain = match (level, env.as_deref()) {
        (Some(l), _) => Some(l),
        (None, None) => Some(LevelFilter::Info),
        (None, Some(text)) => parse_level(text).ok(),
    };
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().filter_or("KITE_LOG", "info"));
    builder
        .format(|buf, record| {
            if !module_passes(record.module_path()) {
                return Ok(());
            }
            let level = match record.level() {
                log::Level::Error => "error: ",
                log::Level::Warn => "warning: ",
                _ => "",
            };
            let shown = if SHOW_LEVEL.load(Ordering::Relaxed) {
                format!("[{}] ", record.level())
            } else {
                String::new()
            };
            let origin = match (SHOW_ORIGIN.load(Ordering::Relaxed), record.file()) {
                (true, Some(file)) => format!("{file}:{}: ", record.line().unwrap_or(0)),
                _ => String::new(),
            };
            writeln!(buf, "kite: {shown}{origin}{level}{}", record.args())
        })
        .target(env_logger::Target::Pipe(Box::new(Sink)));
    if plain.is_some() {
        // Everything passes the logger's own filter; log's max level decides, and can change.
        builder.filter_level(LevelFilter::Trace);
    }
    let _ = builder.try_init();
    if let Some(level) = plain {
        log::set_max_level(level);
    }
}

/// Open a log or metrics file as Firecracker does for its clients: a FIFO read-write and
/// non-blocking, so that the open returns before anyone reads it (Kata and
/// firecracker-containerd open the reading end later) and a full pipe drops a line instead of
/// stopping the VM; a regular file appended to (created if missing).
pub fn open_log_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    std::fs::OpenOptions::new()
        .read(fifo)
        .write(true)
        .append(!fifo)
        .create(!fifo)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// `PUT /logger`, `--log-path`: from now on, log lines go to `path` (a file, appended, or a
/// FIFO); `level`, the two display switches and the module filter apply at once.
pub fn configure(
    path: Option<&std::path::Path>,
    level: Option<LevelFilter>,
    show_level: Option<bool>,
    show_origin: Option<bool>,
    module: Option<&str>,
) -> std::io::Result<()> {
    if let Some(path) = path {
        let file = open_log_file(path)?;
        *FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    }
    if let Some(m) = module {
        *MODULE.lock().unwrap_or_else(|e| e.into_inner()) = Some(m.to_string());
    }
    if let Some(level) = level {
        log::set_max_level(level);
    }
    if let Some(s) = show_level {
        SHOW_LEVEL.store(s, Ordering::Relaxed);
    }
    if let Some(s) = show_origin {
        SHOW_ORIGIN.store(s, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_opens_before_anyone_reads_it() {
        let path = std::env::temp_dir().join(format!("kite-log-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Without a reader a write-only open would block (or fail with O_NONBLOCK).
        let mut f = open_log_file(&path).unwrap();
        f.write_all(b"line\n").unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_module_filter_passes_only_its_prefix() {
        assert!(module_passes(Some("kite_vmm::devices")));
        *MODULE.lock().unwrap() = Some("kite_vmm::devices".into());
        assert!(module_passes(Some("kite_vmm::devices::virtio::block")));
        assert!(!module_passes(Some("kite_vmm::vmm")));
        assert!(!module_passes(None));
        *MODULE.lock().unwrap() = None;
    }
}
