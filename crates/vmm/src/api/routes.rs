//! Which endpoint a request is for, with its body decoded: an [`ApiRequest`] for the VMM, or
//! the error response straight away (unknown path, wrong method, bad JSON, an endpoint of
//! Firecracker's that Kite does not have).

use serde::de::DeserializeOwned;

use super::http::{Request, Response};
use super::snapshot::{SnapshotCreate, SnapshotLoad};
use super::types::*;

/// A request the VMM carries out (the API thread only decodes it).
#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    GetInfo,
    GetVmConfig,
    GetMachineConfig,
    PutBootSource(BootSource),
    PutMachineConfig(MachineConfig),
    PatchMachineConfig(MachineConfigUpdate),
    PutDrive(Drive),
    PatchDrive(DriveUpdate),
    PatchNetwork(NetworkUpdate),
    PutNetwork(NetworkInterface),
    PutVsock(Vsock),
    PutEntropy(Entropy),
    PutLogger(Logger),
    PutMetrics(Metrics),
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
    Pause,
    Resume,
    CreateSnapshot(SnapshotCreate),
    LoadSnapshot(SnapshotLoad),
}

impl ApiRequest {
    /// Whether this request configures the VM before boot (refused after).
    pub fn is_pre_boot(&self) -> bool {
        matches!(
            self,
            ApiRequest::PutBootSource(_)
                | ApiRequest::PutMachineConfig(_)
                | ApiRequest::PatchMachineConfig(_)
                | ApiRequest::PutDrive(_)
                | ApiRequest::PutNetwork(_)
                | ApiRequest::PutVsock(_)
                | ApiRequest::PutEntropy(_)
                | ApiRequest::PutLogger(_)
                | ApiRequest::PutMetrics(_)
                | ApiRequest::InstanceStart
        )
    }
}

/// Endpoints Firecracker has and Kite does not, with what they are.
const NOT_YET: &[(&str, &str)] = &[
    ("balloon", "the balloon device"),
    ("mmds", "MMDS (the metadata service)"),
    ("cpu-config", "custom CPU templates"),
    ("hotplug", "memory hotplug"),
    (
        "serial",
        "configuring the serial console's output (PUT /serial)",
    ),
    ("pmem", "virtio-pmem devices"),
];

fn body<T: DeserializeOwned>(req: &Request) -> Result<T, Response> {
    if req.body.is_empty() {
        return Err(Response::bad_request(format!(
            "{} {} needs a JSON body",
            req.method, req.path
        )));
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        Response::bad_request(format!(
            "invalid JSON body for {} {}: {e}",
            req.method, req.path
        ))
    })
}

/// The id in `/drives/{id}` must be the body's.
fn same_id(path_id: &str, body_id: &str, field: &str) -> Result<(), Response> {
    if path_id != body_id {
        return Err(Response::bad_request(format!(
            "the id in the path ({path_id:?}) differs from the body's {field} ({body_id:?})"
        )));
    }
    if path_id.is_empty() {
        return Err(Response::bad_request(format!("{field} is empty")));
    }
    Ok(())
}

/// Decode `req`.
pub fn route(req: &Request) -> Result<ApiRequest, Response> {
    let path = req.path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method.as_str();
    use ApiRequest as A;
    let request = match (method, parts.as_slice()) {
        ("GET", [""]) => A::GetInfo,
        ("GET", ["vm", "config"]) => A::GetVmConfig,
        // Answered here: the VMM has nothing to add.
        ("GET", ["version"]) => {
            return Err(super::http::Response::json(&serde_json::json!({
                "firecracker_version": super::FIRECRACKER_VERSION
            })));
        }
        ("GET", ["machine-config"]) => A::GetMachineConfig,
        ("PUT", ["boot-source"]) => A::PutBootSource(body(req)?),
        ("PUT", ["machine-config"]) => A::PutMachineConfig(body(req)?),
        ("PATCH", ["machine-config"]) => A::PatchMachineConfig(body(req)?),
        ("PUT", ["drives", id]) => {
            let d: Drive = body(req)?;
            same_id(id, &d.drive_id, "drive_id")?;
            A::PutDrive(d)
        }
        ("PUT", ["network-interfaces", id]) => {
            let n: NetworkInterface = body(req)?;
            same_id(id, &n.iface_id, "iface_id")?;
            A::PutNetwork(n)
        }
        // Firecracker's router looks at the first segment only, so `PUT /vsock/{id}` (bandsox
        // sends it) is the same call; the id is ignored there too.
        ("PUT", ["vsock"] | ["vsock", _]) => A::PutVsock(body(req)?),
        ("PUT", ["entropy"]) => A::PutEntropy(body(req)?),
        ("PUT", ["logger"]) => A::PutLogger(body(req)?),
        ("PUT", ["metrics"]) => A::PutMetrics(body(req)?),
        ("PUT", ["actions"]) => {
            let action: Action = body(req)?;
            match action.action_type.as_str() {
                "InstanceStart" => A::InstanceStart,
                "SendCtrlAltDel" => A::SendCtrlAltDel,
                "FlushMetrics" => A::FlushMetrics,
                other => {
                    return Err(Response::bad_request(format!(
                        "unknown action_type {other:?}: use InstanceStart, SendCtrlAltDel or FlushMetrics"
                    )));
                }
            }
        }
        ("PATCH", ["vm"]) => {
            let state: VmState = body(req)?;
            match state.state.as_str() {
                "Paused" => A::Pause,
                "Resumed" => A::Resume,
                other => {
                    return Err(Response::bad_request(format!(
                        "unknown state {other:?}: use Paused or Resumed"
                    )));
                }
            }
        }
        ("PUT", ["snapshot", "create"]) => A::CreateSnapshot(body(req)?),
        ("PUT", ["snapshot", "load"]) => A::LoadSnapshot(body(req)?),
        ("PATCH", ["drives", id]) => {
            let d: DriveUpdate = body(req)?;
            same_id(id, &d.drive_id, "drive_id")?;
            A::PatchDrive(d)
        }
        ("PATCH", ["network-interfaces", id]) => {
            let n: NetworkUpdate = body(req)?;
            same_id(id, &n.iface_id, "iface_id")?;
            A::PatchNetwork(n)
        }
        (_, [first, ..]) if NOT_YET.iter().any(|(p, _)| p == first) => {
            let what = NOT_YET
                .iter()
                .find(|(p, _)| p == first)
                .map_or("", |(_, w)| w);
            return Err(Response::bad_request(format!(
                "Kite does not support {what} yet ({method} {path})"
            )));
        }
        (
            _,
            [
                "" | "vm" | "machine-config" | "boot-source" | "drives" | "network-interfaces"
                | "vsock" | "entropy" | "logger" | "metrics" | "actions" | "snapshot",
                ..,
            ],
        ) => {
            return Err(Response::bad_request(format!(
                "{method} {path} is not an operation Kite serves (see docs/api.md)"
            )));
        }
        _ => {
            return Err(Response::bad_request(format!(
                "no such endpoint: {method} {path} (see docs/api.md)"
            )));
        }
    };
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            close: false,
        }
    }

    fn fault(r: Result<ApiRequest, Response>) -> String {
        let resp = r.unwrap_err();
        assert_eq!(resp.status, 400);
        resp.body.unwrap()
    }

    #[test]
    fn endpoints_decode() {
        assert_eq!(route(&req("GET", "/", "")), Ok(ApiRequest::GetInfo));
        assert_eq!(
            route(&req(
                "PUT",
                "/actions",
                r#"{"action_type":"InstanceStart"}"#
            )),
            Ok(ApiRequest::InstanceStart)
        );
        assert_eq!(
            route(&req("PATCH", "/vm", r#"{"state":"Paused"}"#)),
            Ok(ApiRequest::Pause)
        );
        let d = route(&req(
            "PUT",
            "/drives/root",
            r#"{"drive_id":"root","path_on_host":"r","is_root_device":true}"#,
        ));
        assert!(matches!(d, Ok(ApiRequest::PutDrive(_))), "{d:?}");
        let v = route(&req(
            "PUT",
            "/vsock/vsock0",
            r#"{"guest_cid":0,"uds_path":"v.sock"}"#,
        ));
        assert!(matches!(v, Ok(ApiRequest::PutVsock(_))), "{v:?}");
        let n = route(&req(
            "PATCH",
            "/network-interfaces/eth0",
            r#"{"iface_id":"eth0","tx_rate_limiter":{}}"#,
        ));
        assert!(matches!(n, Ok(ApiRequest::PatchNetwork(_))), "{n:?}");
        let version = route(&req("GET", "/version", "")).unwrap_err();
        assert_eq!(version.status, 200);
        assert!(version.body.unwrap().contains("firecracker_version"));
    }

    #[test]
    fn bad_requests_say_why() {
        assert!(fault(route(&req("PUT", "/machine-config", "{"))).contains("invalid JSON"));
        assert!(
            fault(route(&req(
                "PUT",
                "/machine-config",
                r#"{"vcpu_count":"two","mem_size_mib":1}"#
            )))
            .contains("invalid type")
        );
        assert!(
            fault(route(&req(
                "PUT",
                "/boot-source",
                r#"{"kernel_image_path":"k","x":1}"#
            )))
            .contains("unknown field `x`")
        );
        assert!(fault(route(&req("PUT", "/balloon", "{}"))).contains("does not support"));
        assert!(fault(route(&req("PUT", "/snapshot/create", "{}"))).contains("missing field"));
        assert!(fault(route(&req("GET", "/snapshot/create", ""))).contains("not an operation"));
        assert!(fault(route(&req("GET", "/nope", ""))).contains("no such endpoint"));
        assert!(fault(route(&req("DELETE", "/vm", ""))).contains("not an operation"));
        assert!(
            fault(route(&req(
                "PUT",
                "/drives/a",
                r#"{"drive_id":"b","path_on_host":"r","is_root_device":true}"#
            )))
            .contains("differs")
        );
        assert!(
            fault(route(&req(
                "PUT",
                "/actions",
                r#"{"action_type":"Reboot"}"#
            )))
            .contains("unknown action_type")
        );
        assert!(fault(route(&req("PUT", "/actions", ""))).contains("needs a JSON body"));
    }
}
