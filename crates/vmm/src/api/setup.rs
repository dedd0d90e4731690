//! Before boot: the VMM thread carries out the API's configuration calls on a
//! [`FullConfig`] until `InstanceStart`, which turns it into a `VmConfig` and boots.

use super::convert::{self, Extras};
use super::http::Response;
use super::metrics::MetricsSink;
use super::routes::ApiRequest;
use super::server::ApiChannel;
use super::types::{FullConfig, InstanceInfo, Logger, MachineConfig};
use crate::config::VmConfig;

/// The answer still owed to the `InstanceStart` (or snapshot load) that started the VM.
#[derive(Debug)]
pub struct StartAnswer(std::sync::mpsc::SyncSender<Response>);

impl StartAnswer {
    /// Answer 204: the VM runs.
    pub fn started(self) {
        let _ = self.0.send(Response::no_content());
    }
}

/// Why no VM was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStarted {
    /// A stop signal (its number) arrived while waiting.
    Signal(i32),
    /// The API thread stopped.
    ApiGone,
}

/// The instance as configured so far.
pub struct Setup {
    pub config: FullConfig,
    pub extras: Extras,
    pub metrics: Option<MetricsSink>,
    /// `--id`, shown by `GET /`.
    pub id: String,
}

/// `GET /`.
pub fn info(id: &str, state: &str) -> InstanceInfo {
    InstanceInfo {
        id: id.to_string(),
        state: state.to_string(),
        vmm_version: env!("CARGO_PKG_VERSION").to_string(),
        app_name: "Kite".to_string(),
    }
}

/// Carry out a `PUT /logger` (or the file's `logger`, or `--log-path`/`--level`).
pub fn apply_logger(l: &Logger) -> Result<(), String> {
    l.check().map_err(|e| e.to_string())?;
    let level = l
        .level
        .as_deref()
        .map(crate::logging::parse_level)
        .transpose()?;
    let path = l.log_path.as_deref().map(std::path::Path::new);
    crate::logging::configure(
        path,
        level,
        l.show_level,
        l.show_log_origin,
        l.module.as_deref(),
    )
    .map_err(|e| {
        format!(
            "cannot open the log file {}: {e}",
            l.log_path.as_deref().unwrap_or_default()
        )
    })
}

/// Open the metrics file named by `path`.
pub fn open_metrics(path: &str) -> Result<MetricsSink, String> {
    if path.is_empty() {
        return Err("metrics.metrics_path is empty: give a path".into());
    }
    MetricsSink::open(std::path::Path::new(path))
        .map_err(|e| format!("cannot open the metrics file {path}: {e}"))
}

/// Replace the entry whose id `id_of` gives, or add it.
fn upsert<T>(list: &mut Vec<T>, item: T, id_of: impl Fn(&T) -> &str) {
    match list.iter().position(|x| id_of(x) == id_of(&item)) {
        Some(i) => list[i] = item,
        None => list.push(item),
    }
}

impl Setup {
    fn machine(&self) -> MachineConfig {
        self.config.machine_config.clone().unwrap_or_default()
    }

    /// Carry out one configuration call (everything but `InstanceStart`).
    pub fn apply(&mut self, request: ApiRequest) -> Response {
        let done = |r: Result<(), String>| match r {
            Ok(()) => Response::no_content(),
            Err(e) => Response::bad_request(e),
        };
        let fix = |e: convert::Error| e.to_string();
        match request {
            ApiRequest::GetInfo => Response::json(&info(&self.id, "Not started")),
            ApiRequest::GetVmConfig => Response::json(&self.config),
            ApiRequest::GetMachineConfig => Response::json(&self.machine()),
            ApiRequest::PutBootSource(b) => done(if b.kernel_image_path.is_empty() {
                Err("boot-source.kernel_image_path is empty: give a path".into())
            } else {
                self.config.boot_source = Some(b);
                Ok(())
            }),
            ApiRequest::PutMachineConfig(m) => {
                done(convert::check_machine(&m).map_err(fix).map(|()| {
                    self.config.machine_config = Some(m);
                }))
            }
            ApiRequest::PatchMachineConfig(u) => {
                let m = u.apply(&self.machine());
                done(convert::check_machine(&m).map_err(fix).map(|()| {
                    self.config.machine_config = Some(m);
                }))
            }
            ApiRequest::PutDrive(d) => done(convert::disk(&d).map_err(fix).map(|_| {
                upsert(&mut self.config.drives, d, |d| &d.drive_id);
            })),
            ApiRequest::PutNetwork(n) => done(convert::net(&n).map_err(fix).map(|_| {
                upsert(&mut self.config.network_interfaces, n, |n| &n.iface_id);
            })),
            ApiRequest::PutVsock(v) => done(convert::vsock(&v).map_err(fix).map(|_| {
                self.config.vsock = Some(v);
            })),
            ApiRequest::PutEntropy(e) => done(
                super::types::rate_limit_of("entropy.rate_limiter", &e.rate_limiter).map(|_| {
                    self.config.entropy = Some(e);
                }),
            ),
            ApiRequest::PutLogger(l) => done(apply_logger(&l).map(|()| {
                self.config.logger = Some(l);
            })),
            ApiRequest::PutMetrics(m) => done(open_metrics(&m.metrics_path).map(|sink| {
                self.metrics = Some(sink);
                self.config.metrics = Some(m);
            })),
            ApiRequest::FlushMetrics => match &mut self.metrics {
                Some(sink) => done(
                    sink.write(&Default::default())
                        .map_err(|e| format!("cannot write the metrics line: {e}")),
                ),
                None => {
                    Response::bad_request("no metrics file: configure one with PUT /metrics first")
                }
            },
            ApiRequest::PatchNetwork(_) => Response::bad_request(
                "PATCH /network-interfaces works on a running VM; before InstanceStart, PUT /network-interfaces/{id} again",
            ),
            ApiRequest::PatchDrive(_) => Response::bad_request(
                "PATCH /drives works on a running VM; before InstanceStart, PUT /drives/{id} again",
            ),
            ApiRequest::InstanceStart => {
                Response::bad_request("InstanceStart is handled by the boot loop")
            }
            ApiRequest::LoadSnapshot(_) => {
                Response::bad_request("PUT /snapshot/load is handled by the boot loop")
            }
            ApiRequest::CreateSnapshot(_) => Response::bad_request(
                "no VM to snapshot: start one (or load a snapshot), pause it, then PUT /snapshot/create",
            ),
            ApiRequest::SendCtrlAltDel | ApiRequest::Pause | ApiRequest::Resume => {
                Response::bad_request(
                    "the VM has not started: configure it, then PUT /actions {\"action_type\": \"InstanceStart\"}",
                )
            }
        }
    }

    /// Serve configuration calls until an `InstanceStart` whose `boot` succeeds, or a
    /// `PUT /snapshot/load` whose `load` does (given the machine-config set before, if any);
    /// its result, and that call's answer, for the caller to give once the vCPU threads run
    /// (as Firecracker answers). Dropping the answer unsent tells the client the VM stopped.
    /// `Err` if a stop signal arrives on `signals` (a signalfd, see
    /// [`crate::signals::block_stop_signals`]) first, or the API thread has gone.
    pub fn wait_for_start<T>(
        &mut self,
        channel: &ApiChannel,
        signals: Option<&std::os::fd::OwnedFd>,
        mut boot: impl FnMut(&VmConfig) -> Result<T, String>,
        mut load: impl FnMut(
            &super::snapshot::SnapshotLoad,
            Option<&MachineConfig>,
        ) -> Result<T, String>,
    ) -> Result<(T, StartAnswer), NotStarted> {
        loop {
            if let Some(signal) = signals.and_then(crate::signals::pending) {
                return Err(NotStarted::Signal(signal));
            }
            let envelope = match channel
                .rx
                .recv_timeout(std::time::Duration::from_millis(100))
            {
                Ok(e) => e,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(NotStarted::ApiGone);
                }
            };
            let _ = channel.wake.read();
            if let ApiRequest::LoadSnapshot(request) = &envelope.request {
                match load(request, self.config.machine_config.as_ref()) {
                    Ok(vm) => return Ok((vm, StartAnswer(envelope.reply))),
                    Err(e) => {
                        log::error!("snapshot load: {e}");
                        let _ = envelope.reply.send(Response::bad_request(format!(
                            "cannot load the snapshot: {e}"
                        )));
                        continue;
                    }
                }
            }
            if envelope.request != ApiRequest::InstanceStart {
                let _ = envelope.reply.send(self.apply(envelope.request));
                continue;
            }
            let started = convert::to_vm_config(&self.config, &self.extras)
                .map_err(|e| e.to_string())
                .and_then(|config| boot(&config));
            match started {
                Ok(vm) => return Ok((vm, StartAnswer(envelope.reply))),
                Err(e) => {
                    log::error!("InstanceStart: {e}");
                    let _ = envelope
                        .reply
                        .send(Response::bad_request(format!("cannot start the VM: {e}")));
                }
            }
        }
    }
}
