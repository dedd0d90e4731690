//! `PATCH /drives/{id}` on a running VM: firecracker-containerd's and Kata's block hotplug.
//! The runtime PUTs 0-byte placeholder drives before boot, then points each at a container's
//! image (often the same path, after a bind mount over the placeholder); the device reopens
//! the file, takes its new capacity and raises a configuration change interrupt.

use std::path::Path;
use std::time::Instant;

use super::http::Response;
use super::running::VmHandles;
use serde_json::Value;

use super::types::{DriveUpdate, FullConfig, NetworkUpdate};

/// The index among the VM's disks of drive `id`: the order [`super::convert::to_vm_config`]
/// attaches them in (the root device first, then the others as listed).
pub fn disk_index(c: &FullConfig, id: &str) -> Option<usize> {
    let roots = c.drives.iter().filter(|d| d.is_root_device);
    let others = c.drives.iter().filter(|d| !d.is_root_device);
    roots.chain(others).position(|d| d.drive_id == id)
}

/// Carry out `PATCH /drives/{id}`; `config` (what `GET /vm/config` shows) follows a success.
pub fn patch_drive(config: &mut FullConfig, u: DriveUpdate, vm: &VmHandles) -> Response {
    let id = u.drive_id.clone();
    let Some(index) = disk_index(config, &id) else {
        return Response::bad_request(format!(
            "no drive {id:?}: PATCH /drives works on the drives given before InstanceStart"
        ));
    };
    let field = format!("drives[{id}].rate_limiter");
    let limit = match super::types::rate_limit_of(&field, &u.rate_limiter) {
        Ok(l) => l,
        Err(e) => return Response::bad_request(e),
    };
    if vm.pause.is_paused() {
        return Response::bad_request(format!(
            "the VM is paused: resume it before changing drive {id:?}"
        ));
    }
    let Some(disk) = vm.disks.get(index) else {
        return Response::bad_request(format!("the VM has no disk for drive {id:?}"));
    };
    if u.rate_limiter.is_some() {
        disk.update_rate_limit(limit);
        if let Some(d) = config.drives.iter_mut().find(|d| d.drive_id == id) {
            d.rate_limiter = merge_limiter(d.rate_limiter.take(), &u.rate_limiter);
        }
    }
    let Some(path) = u.path_on_host else {
        return Response::no_content();
    };
    if path.is_empty() {
        return Response::bad_request(format!("drives[{id}].path_on_host is empty: give a path"));
    }
    let started = Instant::now();
    match disk
        .update(Path::new(&path))
        .map_err(|e| crate::error_chain(&e))
    {
        Ok((old, new)) => {
            log::info!(
                "drive {id}: now {path} ({new} sectors, was {old}) in {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
            if let Some(d) = config.drives.iter_mut().find(|d| d.drive_id == id) {
                d.path_on_host = path;
            }
            Response::no_content()
        }
        Err(e) => Response::bad_request(format!(
            "cannot change drive {id:?} to {path}: {e}; it keeps its old file"
        )),
    }
}

/// Carry out `PATCH /network-interfaces/{id}`: the rate limiters it names.
pub fn patch_network(config: &mut FullConfig, u: NetworkUpdate, vm: &VmHandles) -> Response {
    let id = u.iface_id.clone();
    let Some(index) = config
        .network_interfaces
        .iter()
        .position(|n| n.iface_id == id)
    else {
        return Response::bad_request(format!(
            "no network interface {id:?}: PATCH /network-interfaces works on the interfaces given before InstanceStart"
        ));
    };
    let field = |f: &str| format!("network-interfaces[{id}].{f}");
    let parse = |f: &str, v| super::types::rate_limit_of(&field(f), v);
    let (rx, tx) = match (
        parse("rx_rate_limiter", &u.rx_rate_limiter),
        parse("tx_rate_limiter", &u.tx_rate_limiter),
    ) {
        (Ok(rx), Ok(tx)) => (rx, tx),
        (Err(e), _) | (_, Err(e)) => return Response::bad_request(e),
    };
    if vm.pause.is_paused() {
        return Response::bad_request(format!(
            "the VM is paused: resume it before changing network interface {id:?}"
        ));
    }
    let Some(net) = vm.nets.get(index) else {
        return Response::bad_request(format!("the VM has no device for interface {id:?}"));
    };
    net.update_rate_limits(rx, tx);
    let n = &mut config.network_interfaces[index];
    n.rx_rate_limiter = merge_limiter(n.rx_rate_limiter.take(), &u.rx_rate_limiter);
    n.tx_rate_limiter = merge_limiter(n.tx_rate_limiter.take(), &u.tx_rate_limiter);
    Response::no_content()
}

/// The drive's `rate_limiter` after a PATCH: the buckets it names replace the old ones.
fn merge_limiter(old: Option<Value>, patch: &Option<Value>) -> Option<Value> {
    let mut merged = match old {
        Some(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    if let Some(Value::Object(p)) = patch {
        for (k, v) in p {
            if !v.is_null() {
                merged.insert(k.clone(), v.clone());
            }
        }
    }
    (!merged.is_empty()).then_some(Value::Object(merged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drives_are_numbered_root_first() {
        let c: FullConfig = serde_json::from_str(
            r#"{"drives":[
                {"drive_id":"a","path_on_host":"a","is_root_device":false},
                {"drive_id":"root","path_on_host":"r","is_root_device":true},
                {"drive_id":"b","path_on_host":"b","is_root_device":false}]}"#,
        )
        .unwrap();
        assert_eq!(disk_index(&c, "root"), Some(0));
        assert_eq!(disk_index(&c, "a"), Some(1));
        assert_eq!(disk_index(&c, "b"), Some(2));
        assert_eq!(disk_index(&c, "c"), None);
    }
}
