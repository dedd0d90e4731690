//! A `kite run --api-sock` under test: an HTTP client for its socket (the curl crate), its
//! console read as it comes, and its end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One HTTP call on the Unix socket `sock`: (status, body).
pub fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u32, String) {
    try_call(sock, method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn try_call(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u32, String), curl::Error> {
    let mut easy = curl::easy::Easy::new();
    easy.unix_socket_path(Some(sock))?;
    easy.url(&format!("http://localhost{path}"))?;
    easy.custom_request(method)?;
    easy.timeout(Duration::from_secs(30))?;
    let mut headers = curl::easy::List::new();
    headers.append("Accept: application/json")?;
    if let Some(body) = body {
        headers.append("Content-Type: application/json")?;
        easy.post_fields_copy(body.as_bytes())?;
    }
    easy.http_headers(headers)?;
    let mut out = Vec::new();
    {
        let mut transfer = easy.transfer();
        transfer.write_function(|data| {
            out.extend_from_slice(data);
            Ok(data.len())
        })?;
        transfer.perform()?;
    }
    let status = easy.response_code()?;
    Ok((status, String::from_utf8_lossy(&out).into_owned()))
}

/// The `fault_message` of an error body.
pub fn fault(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    v["fault_message"]
        .as_str()
        .unwrap_or_else(|| panic!("no fault_message in {body}"))
        .to_string()
}

/// A running kite with an API socket.
pub struct ApiVm {
    pub sock: PathBuf,
    pub dir: PathBuf,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl ApiVm {
    /// `kite run --api-sock DIR/api.sock` with `args`, its socket ready.
    pub fn start(test: &str, args: &[&str]) -> ApiVm {
        let dir = std::env::temp_dir().join(format!("kite-api-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kite"))
            .arg("run")
            .arg("--api-sock")
            .arg(&sock)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kite starts");
        let (stdout, _) = super::collect(child.stdout.take().unwrap());
        let (stderr, _) = super::collect(child.stderr.take().unwrap());
        let vm = ApiVm {
            sock,
            dir,
            child,
            stdout,
            stderr,
        };
        let start = Instant::now();
        while !vm.sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no API socket after 10 s; stderr:\n{}",
                vm.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        vm
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u32, String) {
        call(&self.sock, method, path, body)
    }

    /// A call that must succeed with 204.
    pub fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, text) = self.call(method, path, Some(body));
        assert_eq!(
            status,
            204,
            "{method} {path} {body}: {text}\n{}",
            self.stderr()
        );
    }

    /// A call that must fail with 400 and a fault message containing `want`.
    pub fn bad(&self, method: &str, path: &str, body: Option<&str>, want: &str) {
        let (status, text) = self.call(method, path, body);
        assert_eq!(status, 400, "{method} {path} {body:?}: {text}");
        let message = fault(&text);
        assert!(
            message.contains(want),
            "{method} {path} {body:?}: fault {message:?} should mention {want:?}"
        );
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait (at most `limit`) until stdout satisfies `pred`.
    pub fn wait_stdout(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let out = self.stdout();
            if pred(&out) {
                return out;
            }
            assert!(
                start.elapsed() < limit,
                "console never showed what the test waits for within {limit:?}\n--- stdout ---\n{out}\n--- stderr ---\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send `signal` to kite.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the child's pid, which has not been reaped (the child is only
        // waited for by `wait` and drop).
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Type `text` on the guest's console.
    pub fn type_text(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin is piped");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Wait (at most `limit`) for kite to end; its exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the readers take the last output.
                std::thread::sleep(Duration::from_millis(50));
                return status.code();
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "kite did not end within {limit:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ApiVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last `tick <n>` line's n on the console, 0 if none.
pub fn last_tick(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("tick "))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}
