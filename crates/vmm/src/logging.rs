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

/// `PUT /logger`, `--log-path`: from now on, log lines go to `path` (a file, appended, or a
/// FIFO); `level` and the two display switches apply at once.
pub fn configure(
    path: Option<&std::path::Path>,
    level: Option<LevelFilter>,
    show_level: Option<bool>,
    show_origin: Option<bool>,
) -> std::io::Result<()> {
    if let Some(path) = path {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        *FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
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
