//! Fuzz target `api`: what a client sends to `--api-sock`, and a `--config-file`. The bytes are
//! a stream of HTTP requests; each complete one is routed, and the configuration calls among
//! them are applied to a pre-boot configuration, which is then turned into a `VmConfig`. The
//! same bytes are also read as a config file. Nothing may panic; what parses must hold
//! Firecracker's promises (an error is a 400 or 413 with a JSON fault message).

use super::Seed;
use kite_vmm::api::convert::{self, Extras};
use kite_vmm::api::http::{self, Parsed};
use kite_vmm::api::routes::{self, ApiRequest};
use kite_vmm::api::setup::Setup;
use kite_vmm::api::types::{Fault, FullConfig};

fn extras() -> Extras {
    Extras {
        boot_timer: false,
        timeout: None,
        ring0_workarounds: kite_vmm::arch::x86_64::emulated_ring0::Mode::Off,
        acpi: true,
        seccomp: kite_vmm::seccomp::Mode::On,
    }
}

fn check_error(r: &http::Response) {
    assert!(matches!(r.status, 400 | 413), "status {}", r.status);
    let body = r.body.as_deref().expect("an error has a body");
    let fault: Fault = serde_json::from_str(body).expect("the body is a fault");
    assert!(
        !fault.fault_message.contains('\n'),
        "{}",
        fault.fault_message
    );
}

pub fn run(data: &[u8]) {
    let mut setup = Setup {
        config: FullConfig::default(),
        extras: extras(),
        metrics: None,
        id: "fuzz".into(),
    };
    let mut buf = data;
    while !buf.is_empty() {
        match http::parse(buf) {
            Parsed::Partial => break,
            Parsed::Invalid(r) => {
                check_error(&r);
                break;
            }
            Parsed::Complete(req, used) => {
                assert!(used > 0 && used <= buf.len());
                buf = &buf[used..];
                match routes::route(&req) {
                    Err(r) => check_error(&r),
                    // These open files or boot: not here.
                    Ok(ApiRequest::PutLogger(_) | ApiRequest::PutMetrics(_)) => {}
                    Ok(ApiRequest::InstanceStart) => {
                        let _ = convert::to_vm_config(&setup.config, &setup.extras);
                    }
                    Ok(request) => {
                        let r = setup.apply(request);
                        if r.status != 200 && r.status != 204 {
                            check_error(&r);
                        }
                    }
                }
            }
        }
    }
    let _ = convert::to_vm_config(&setup.config, &setup.extras);
    if let Ok(file) = serde_json::from_slice::<FullConfig>(data)
        && file.check().is_ok()
        && let Ok(vm) = convert::to_vm_config(&file, &extras())
    {
        assert!(vm.cpus >= 1 && vm.memory > 0);
    }
}

fn request(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn seeds() -> Vec<Seed> {
    let mut boot = request(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path":"vmlinux","boot_args":"console=ttyS0"}"#,
    );
    boot.extend(request(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":2,"mem_size_mib":128}"#,
    ));
    boot.extend(request(
        "PUT",
        "/drives/root",
        r#"{"drive_id":"root","path_on_host":"r.img","is_root_device":true}"#,
    ));
    boot.extend(request(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"02:00:00:00:00:01"}"#,
    ));
    boot.extend(request(
        "PUT",
        "/actions",
        r#"{"action_type":"InstanceStart"}"#,
    ));
    vec![
        Seed {
            name: "boot-sequence",
            data: boot,
        },
        Seed {
            name: "patch-and-get",
            data: [
                request("PATCH", "/machine-config", r#"{"vcpu_count":4}"#),
                request("GET", "/vm/config", ""),
                request("PATCH", "/vm", r#"{"state":"Paused"}"#),
            ]
            .concat(),
        },
        Seed {
            name: "config-file",
            data: br#"{"boot-source":{"kernel_image_path":"k"},"machine-config":{"vcpu_count":1,"mem_size_mib":64},"vsock":{"guest_cid":3,"uds_path":"v"},"entropy":{}}"#.to_vec(),
        },
        Seed {
            name: "unsupported",
            data: request("PUT", "/balloon", r#"{"amount_mib":1}"#),
        },
    ]
}
