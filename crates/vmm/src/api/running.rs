//! While the VM runs: the VMM thread's event loop answers API requests here (instance info,
//! the configuration, pause and resume, Ctrl-Alt-Del, metrics). Configuration calls are
//! refused: they only make sense before `InstanceStart`.

use std::sync::Mutex;

use super::http::Response;
use super::metrics::{Counters, MetricsSink};
use super::routes::ApiRequest;
use super::server::ApiChannel;
use super::setup::info;
use super::types::FullConfig;
use crate::devices::i8042::I8042;
use crate::exit::ExitHandle;
use crate::vcpu::VcpuThread;
use crate::vcpu::pause::PauseControl;

/// The API's state once the VM runs.
pub struct RunningApi {
    /// None when there is no API socket (only a metrics file from the config file).
    pub channel: Option<ApiChannel>,
    pub id: String,
    /// What `GET /vm/config` returns.
    pub config: FullConfig,
    pub metrics: Option<MetricsSink>,
    requests: u64,
    errors: u64,
    pauses: u64,
    resumes: u64,
}

/// What the API may act on.
pub struct VmHandles<'a> {
    pub pause: &'a PauseControl,
    pub threads: &'a [VcpuThread],
    pub exit: &'a ExitHandle,
    pub i8042: &'a Mutex<I8042>,
    /// The counters of the VM's own parts (exits, completions, devices).
    pub counters: &'a dyn Fn() -> Counters,
    /// Save the paused VM: (full or diff, snapshot file, memory file, the configuration
    /// `GET /vm/config` shows, which names the network interfaces).
    pub snapshot: &'a SnapshotFn<'a>,
    /// The disks and interfaces (`PATCH /drives`, `PATCH /network-interfaces`).
    pub disks: &'a [crate::devices::virtio::BlockHandle],
    pub nets: &'a [crate::devices::virtio::NetHandle],
}

/// What [`VmHandles::snapshot`] is.
pub type SnapshotFn<'a> = dyn Fn(
        crate::snapshot::Kind,
        &std::path::Path,
        &std::path::Path,
        &FullConfig,
    ) -> Result<crate::snapshot::CreateReport, String>
    + 'a;

impl RunningApi {
    pub fn new(
        channel: Option<ApiChannel>,
        id: String,
        config: FullConfig,
        metrics: Option<MetricsSink>,
    ) -> Self {
        Self {
            channel,
            id,
            config,
            metrics,
            requests: 0,
            errors: 0,
            pauses: 0,
            resumes: 0,
        }
    }

    /// Answer every request waiting.
    pub fn serve(&mut self, vm: &VmHandles) {
        let Some(channel) = self.channel.take() else {
            return;
        };
        let _ = channel.wake.read();
        while let Ok(envelope) = channel.rx.try_recv() {
            let response = self.handle(envelope.request, vm);
            self.requests += 1;
            if response.status >= 400 {
                self.errors += 1;
            }
            let _ = envelope.reply.send(response);
        }
        self.channel = Some(channel);
    }

    /// Write the periodic metrics line if one is due.
    pub fn tick(&mut self, vm: &VmHandles) {
        if self.metrics.as_ref().is_some_and(MetricsSink::due)
            && let Err(e) = self.flush(vm)
        {
            log::warn!("{e}");
        }
    }

    /// The last metrics line, when the VM has stopped (Firecracker writes one at exit too).
    pub fn last_line(&mut self, counters: Counters) {
        let counters = Counters {
            api_requests: self.requests,
            api_errors: self.errors,
            pauses: self.pauses,
            resumes: self.resumes,
            ..counters
        }
        .name_nets(self.net_ids());
        if let Some(sink) = &mut self.metrics
            && let Err(e) = sink.write(&counters)
        {
            log::warn!(
                "cannot write the last metrics line to {}: {e}",
                sink.path.display()
            );
        }
    }

    fn counters(&self, vm: &VmHandles) -> Counters {
        Counters {
            api_requests: self.requests,
            api_errors: self.errors,
            pauses: self.pauses,
            resumes: self.resumes,
            ..(vm.counters)()
        }
        .name_nets(self.net_ids())
    }

    /// The interfaces' `iface_id`s, in the order they were attached.
    fn net_ids(&self) -> impl Iterator<Item = &String> {
        self.config.network_interfaces.iter().map(|n| &n.iface_id)
    }

    fn flush(&mut self, vm: &VmHandles) -> Result<(), String> {
        let counters = self.counters(vm);
        match &mut self.metrics {
            Some(sink) => sink.write(&counters).map_err(|e| {
                format!(
                    "cannot write the metrics line to {}: {e}",
                    sink.path.display()
                )
            }),
            None => Err("no metrics file: configure one with PUT /metrics before boot".into()),
        }
    }

    fn handle(&mut self, request: ApiRequest, vm: &VmHandles) -> Response {
        let state = if vm.pause.is_paused() {
            "Paused"
        } else {
            "Running"
        };
        match request {
            ApiRequest::GetInfo => Response::json(&info(&self.id, state)),
            ApiRequest::GetVmConfig => Response::json(&self.config),
            ApiRequest::GetMachineConfig => {
                Response::json(&self.config.machine_config.clone().unwrap_or_default())
            }
            ApiRequest::Pause => {
                let kick = || vm.threads.iter().for_each(VcpuThread::kick);
                let stopping = || vm.exit.reason().is_some();
                match vm.pause.pause(vm.threads.len(), kick, stopping) {
                    Ok(()) => {
                        // io_uring disks: the requests the guest sent before it stopped are
                        // answered before the pause is reported.
                        vm.disks.iter().for_each(|d| d.drain());
                        self.pauses += 1;
                        log::debug!("VM paused");
                        Response::no_content()
                    }
                    Err(e) => Response::bad_request(e),
                }
            }
            ApiRequest::Resume => {
                if !vm.pause.is_paused() {
                    return Response::bad_request(
                        "the VM is not paused: PATCH /vm {\"state\": \"Paused\"} first",
                    );
                }
                vm.pause.resume();
                self.resumes += 1;
                log::debug!("VM resumed");
                Response::no_content()
            }
            ApiRequest::SendCtrlAltDel => {
                if vm.pause.is_paused() {
                    return Response::bad_request(
                        "the VM is paused: resume it before sending Ctrl-Alt-Del",
                    );
                }
                let mut kbd = vm.i8042.lock().unwrap_or_else(|e| e.into_inner());
                match kbd.send_ctrl_alt_del() {
                    Ok(()) => Response::no_content(),
                    Err(e) => Response::bad_request(e),
                }
            }
            ApiRequest::FlushMetrics => match self.flush(vm) {
                Ok(()) => Response::no_content(),
                Err(e) => Response::bad_request(e),
            },
            ApiRequest::CreateSnapshot(c) => {
                if !vm.pause.is_paused() {
                    return Response::bad_request(
                        "the VM is running: pause it first (PATCH /vm {\"state\": \"Paused\"})",
                    );
                }
                let (kind, state, mem) = match super::snapshot::create_paths(&c) {
                    Ok(p) => p,
                    Err(e) => return Response::bad_request(e),
                };
                // No io_uring request may be in flight while memory and queues are saved (a
                // rate limiter's timer may have started one since the pause).
                vm.disks.iter().for_each(|d| d.drain());
                match (vm.snapshot)(kind, &state, &mem, &self.config) {
                    Ok(r) => {
                        log::info!(
                            "{kind:?} snapshot written to {} and {} in {:.1} ms (state {:.1} ms, {} KiB of memory written)",
                            state.display(),
                            mem.display(),
                            (r.state + r.memory).as_secs_f64() * 1e3,
                            r.state.as_secs_f64() * 1e3,
                            r.memory_written >> 10
                        );
                        Response::no_content()
                    }
                    Err(e) => {
                        log::error!("snapshot create: {e}");
                        Response::bad_request(format!("cannot create the snapshot: {e}"))
                    }
                }
            }
            ApiRequest::LoadSnapshot(_) => Response::bad_request(
                "a VM is already running: load a snapshot in a new Kite that has not started one",
            ),
            ApiRequest::PatchDrive(u) => super::hotplug::patch_drive(&mut self.config, u, vm),
            ApiRequest::PatchNetwork(u) => super::hotplug::patch_network(&mut self.config, u, vm),
            ApiRequest::InstanceStart => Response::bad_request(
                "the VM is already running: InstanceStart works once, before boot",
            ),
            other => {
                debug_assert!(other.is_pre_boot());
                Response::bad_request(
                    "the VM is already running: configuration calls (boot-source, machine-config, drives, network-interfaces, vsock, entropy, logger, metrics) work only before InstanceStart",
                )
            }
        }
    }
}
