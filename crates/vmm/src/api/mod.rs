//! Kite's control plane: Firecracker's REST API on a Unix socket (`--api-sock`) and its JSON
//! configuration file (`--config-file`). See docs/api.md for every endpoint.
//!
//! - [`types`]: Firecracker's request bodies and file sections (serde).
//! - [`cpu_template`]: `cpu_template` and `smt` as Firecracker's clients send them.
//! - [`convert`]: that layout to and from `VmConfig`, the one input of the boot recipe.
//! - [`hotplug`]: `PATCH /drives/{id}` on a running VM.
//! - [`http`]: HTTP/1.1 framing (httparse) and responses.
//! - [`routes`]: method and path to an [`routes::ApiRequest`].
//! - [`server`]: the API thread (epoll over the socket's connections).
//! - [`setup`]: configuration calls before `InstanceStart`, carried out by the VMM thread.
//! - [`running`]: requests while the VM runs (pause, resume, Ctrl-Alt-Del, metrics).
//! - [`metrics`]: the metrics file's JSON lines.
//! - [`snapshot`]: `PUT /snapshot/create` and `/snapshot/load`.

pub mod convert;
pub mod cpu_template;
pub mod hotplug;
pub mod http;
pub mod metrics;
pub mod routes;
pub mod running;
pub mod server;
pub mod setup;
pub mod snapshot;
pub mod types;

/// The Firecracker release whose API and flags Kite answers to (`firecracker --version`,
/// `GET /version`). Kata refuses a version below 0.21.1; nothing reads more than the number.
pub const FIRECRACKER_VERSION: &str = "1.7.0";

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Wakes the event loop when the API thread has a request; the loop then drains the channel.
pub struct Waker(pub Arc<EventFd>);

impl MutEventSubscriber for Waker {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.0.as_raw_fd(), EventSet::IN)) {
            log::error!("cannot watch the API channel: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The loop reads the eventfd and drains the channel after each round.
    }
}

/// Read a Firecracker configuration file.
pub fn read_config_file(path: &std::path::Path) -> Result<types::FullConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --config-file {}: {e}", path.display()))?;
    let config: types::FullConfig = serde_json::from_str(&text)
        .map_err(|e| crate::one_line(&format!("--config-file {}: {e}", path.display())))?;
    config
        .check()
        .map_err(|e| crate::one_line(&format!("--config-file {}: {e}", path.display())))?;
    Ok(config)
}
