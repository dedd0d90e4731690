//! Firecracker's request bodies and configuration-file sections, as serde types with
//! Firecracker's JSON field names. Unknown fields are refused by serde; fields Firecracker has
//! and Kite does not implement are accepted only with the value that means "off" (null, false,
//! "None", ...), and any other value is refused naming the field ([`Unsupported`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A field Kite knows from Firecracker but does not implement, given a value other than the
/// one meaning "not used".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: Kite does not support {what} yet; leave the field out (or null)")]
pub struct Unsupported {
    pub field: String,
    pub what: &'static str,
}

/// A `null` where Firecracker's clients may send one for a field with a default: the default.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `null`, `{}`, or an object whose members are all `null` (`{"bandwidth": null}`): a rate
/// limiter that limits nothing, which Kata writes on every interface. Firecracker takes it as
/// no limiter at all, and so does Kite.
pub fn limits_nothing(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.values().all(Value::is_null),
        Some(_) => false,
    }
}

/// `rate_limiter` as Firecracker takes it: `{"bandwidth": {"size": BYTES, "one_time_burst":
/// BYTES, "refill_time": MS}, "ops": {...}}`. A bucket that is absent or null is not changed
/// (`None`); one with `size` or `refill_time` 0 is no limit (`Some(None)`). Values whose
/// arithmetic would overflow are refused.
pub fn rate_limit_of(
    field: &str,
    v: &Option<Value>,
) -> Result<crate::devices::virtio::RateLimitUpdate, String> {
    use crate::devices::virtio::{Bucket, RateLimitUpdate};
    let mut u = RateLimitUpdate::default();
    let map = match v {
        None | Some(Value::Null) => return Ok(u),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(format!("{field}: give an object with bandwidth and/or ops")),
    };
    for (key, bucket) in map {
        let slot = match key.as_str() {
            "bandwidth" => &mut u.bandwidth,
            "ops" => &mut u.ops,
            other => {
                return Err(format!(
                    "{field}: unknown field `{other}`, expected `bandwidth` or `ops`"
                ));
            }
        };
        let b = match bucket {
            Value::Null => continue,
            Value::Object(b) => b,
            _ => return Err(format!("{field}.{key}: give an object")),
        };
        let num = |name: &str, required: bool| -> Result<u64, String> {
            match b.get(name) {
                None | Some(Value::Null) if !required => Ok(0),
                None | Some(Value::Null) => Err(format!("{field}.{key}.{name} is missing")),
                Some(v) => v.as_u64().ok_or_else(|| {
                    format!(
                        "{field}.{key}.{name}: give a whole number from 0 to 18446744073709551615"
                    )
                }),
            }
        };
        if let Some(k) = b
            .keys()
            .find(|k| !["size", "one_time_burst", "refill_time"].contains(&k.as_str()))
        {
            return Err(format!(
                "{field}.{key}: unknown field `{k}`, expected size, one_time_burst, refill_time"
            ));
        }
        let (size, burst, ms) = (
            num("size", true)?,
            num("one_time_burst", false)?,
            num("refill_time", true)?,
        );
        // Tokens are counted in i128 and time in ns (u64): keep both in range.
        if size > i64::MAX as u64 || burst > i64::MAX as u64 || ms > u64::MAX / 1_000_000 {
            return Err(format!(
                "{field}.{key}: values overflow (size and one_time_burst at most {}, refill_time at most {} ms)",
                i64::MAX,
                u64::MAX / 1_000_000
            ));
        }
        *slot = Some((size > 0 && ms > 0).then_some(Bucket {
            size,
            one_time_burst: burst,
            refill_time_ms: ms,
        }));
    }
    Ok(u)
}

/// `field` may only be absent, null, or one of `allowed`.
fn only(
    field: &str,
    value: &Option<Value>,
    allowed: &[Value],
    what: &'static str,
) -> Result<(), Unsupported> {
    match value {
        None | Some(Value::Null) => Ok(()),
        Some(v) if allowed.contains(v) => Ok(()),
        Some(_) => Err(Unsupported {
            field: field.to_string(),
            what,
        }),
    }
}

/// `PUT /boot-source`, the file's `boot-source`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `PUT`/`GET /machine-config`, the file's `machine-config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub smt: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub track_dirty_pages: bool,
    #[serde(default = "huge_pages_none", deserialize_with = "huge_pages_or_none")]
    pub huge_pages: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<Value>,
    /// The exact guest RAM when `--memory` gave a size that is not a whole number of MiB
    /// (`mem_size_mib` then shows it rounded up); not part of Firecracker's layout.
    #[serde(skip)]
    pub mem_size_bytes: Option<u64>,
}

fn huge_pages_none() -> String {
    "None".into()
}

fn huge_pages_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_else(huge_pages_none))
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 256,
            smt: false,
            track_dirty_pages: false,
            huge_pages: huge_pages_none(),
            cpu_template: None,
            mem_size_bytes: None,
        }
    }
}

impl MachineConfig {
    pub fn check(&self) -> Result<(), Unsupported> {
        let unsupported = |field: &str, what| {
            Err(Unsupported {
                field: format!("machine-config.{field}"),
                what,
            })
        };
        if self.smt && !crate::api::cpu_template::smt_possible() {
            return unsupported("smt", "simultaneous multithreading on this host");
        }
        if self.huge_pages != "None" {
            return unsupported("huge_pages", "huge pages");
        }
        crate::api::cpu_template::check(&self.cpu_template)
    }
}

/// `PATCH /machine-config`: any subset of the fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    pub vcpu_count: Option<u8>,
    pub mem_size_mib: Option<u64>,
    pub smt: Option<bool>,
    pub track_dirty_pages: Option<bool>,
    pub huge_pages: Option<String>,
    pub cpu_template: Option<Value>,
}

impl MachineConfigUpdate {
    pub fn apply(self, to: &MachineConfig) -> MachineConfig {
        MachineConfig {
            vcpu_count: self.vcpu_count.unwrap_or(to.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(to.mem_size_mib),
            smt: self.smt.unwrap_or(to.smt),
            track_dirty_pages: self.track_dirty_pages.unwrap_or(to.track_dirty_pages),
            huge_pages: self.huge_pages.unwrap_or_else(|| to.huge_pages.clone()),
            cpu_template: self.cpu_template.or_else(|| to.cpu_template.clone()),
            mem_size_bytes: match self.mem_size_mib {
                Some(_) => None,
                None => to.mem_size_bytes,
            },
        }
    }
}

/// `PUT /drives/{drive_id}`, an entry of the file's `drives`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: String,
    #[serde(deserialize_with = "null_default")]
    pub is_root_device: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub is_read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<Value>,
}

impl Drive {
    pub fn check(&self) -> Result<(), Unsupported> {
        let field = |f: &str| format!("drives[{}].{f}", self.drive_id);
        if self.partuuid.is_some() {
            return Err(Unsupported {
                field: field("partuuid"),
                what: "root devices named by partition UUID",
            });
        }
        let cache = self.cache_type.as_deref().map(Value::from);
        only(
            &field("cache_type"),
            &cache,
            &[Value::from("Unsafe"), Value::from("Writeback")],
            "cache types other than Unsafe and Writeback",
        )?;
        let engine = self.io_engine.as_deref().map(Value::from);
        only(
            &field("io_engine"),
            &engine,
            &[Value::from("Sync"), Value::from("Async")],
            "io engines other than Sync and Async",
        )?;
        only(&field("socket"), &self.socket, &[], "vhost-user drives")
    }
}

/// `PATCH /drives/{drive_id}` on a running VM: a new backing file (firecracker-containerd's
/// block hotplug: the same path after a bind mount, or another), and a rate limiter (only one
/// that limits nothing, for now).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    pub drive_id: String,
    #[serde(default)]
    pub path_on_host: Option<String>,
    #[serde(default)]
    pub rate_limiter: Option<Value>,
}

/// `PATCH /network-interfaces/{iface_id}` on a running VM: new rate limiters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkUpdate {
    pub iface_id: String,
    #[serde(default)]
    pub rx_rate_limiter: Option<Value>,
    #[serde(default)]
    pub tx_rate_limiter: Option<Value>,
}

/// `PUT /network-interfaces/{iface_id}`, an entry of the file's `network-interfaces`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<Value>,
}

impl NetworkInterface {
    pub fn check(&self) -> Result<(), Unsupported> {
        // The rate limiters are checked where they are parsed ([`rate_limit_of`]).
        Ok(())
    }
}

/// `PUT /vsock`, the file's `vsock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Deprecated in Firecracker, accepted and ignored there too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    pub guest_cid: u32,
    pub uds_path: String,
}

/// `PUT /entropy`, the file's `entropy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<Value>,
}

impl Entropy {
    /// The rate limiter is checked where it is parsed ([`rate_limit_of`]).
    pub fn check(&self) -> Result<(), Unsupported> {
        Ok(())
    }
}

/// `PUT /logger`, the file's `logger`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl Logger {
    pub fn check(&self) -> Result<(), Unsupported> {
        if let Some(level) = &self.level {
            crate::logging::parse_level(level).map_err(|_| Unsupported {
                field: "logger.level".into(),
                what: "that level (use Error, Warning, Info, Debug, Trace or Off)",
            })?;
        }
        Ok(())
    }
}

/// `PUT /metrics`, the file's `metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub metrics_path: String,
}

/// Firecracker's configuration file (`--config-file`), also what `GET /vm/config` returns.
/// Sections Firecracker has and Kite does not (balloon, MMDS, CPU config) are refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullConfig {
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// Unset, `GET /vm/config` shows the defaults the VM would boot with (Firecracker's schema
    /// has no `null` here).
    #[serde(
        rename = "machine-config",
        default,
        serialize_with = "machine_or_default"
    )]
    pub machine_config: Option<MachineConfig>,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<Entropy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    #[serde(default, skip_serializing)]
    pub balloon: Option<Value>,
    #[serde(rename = "mmds-config", default, skip_serializing)]
    pub mmds_config: Option<Value>,
    #[serde(rename = "cpu-config", default, skip_serializing)]
    pub cpu_config: Option<Value>,
}

fn machine_or_default<S: serde::Serializer>(
    m: &Option<MachineConfig>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => m.serialize(s),
        None => MachineConfig::default().serialize(s),
    }
}

impl FullConfig {
    /// Every field's value is one Kite implements.
    pub fn check(&self) -> Result<(), Unsupported> {
        only("balloon", &self.balloon, &[], "the balloon device")?;
        only("mmds-config", &self.mmds_config, &[], "MMDS")?;
        only("cpu-config", &self.cpu_config, &[], "custom CPU templates")?;
        if let Some(m) = &self.machine_config {
            m.check()?;
        }
        for d in &self.drives {
            d.check()?;
        }
        for n in &self.network_interfaces {
            n.check()?;
        }
        if let Some(e) = &self.entropy {
            e.check()?;
        }
        if let Some(l) = &self.logger {
            l.check()?;
        }
        Ok(())
    }
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub action_type: String,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    pub state: String,
}

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub state: String,
    pub vmm_version: String,
    pub app_name: String,
}

/// Every error body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub fault_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_firecracker_config_file_parses() {
        let text = r#"{
            "boot-source": {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0", "initrd_path": null},
            "drives": [{"drive_id": "rootfs", "path_on_host": "r.img", "is_root_device": true,
                        "is_read_only": false, "cache_type": "Unsafe", "io_engine": "Sync",
                        "rate_limiter": null}],
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024, "smt": false,
                               "track_dirty_pages": false, "huge_pages": "None"},
            "network-interfaces": [{"iface_id": "eth0", "guest_mac": "06:00:ac:10:00:02",
                                    "host_dev_name": "tap0"}],
            "vsock": {"guest_cid": 3, "uds_path": "./v.sock"},
            "entropy": {},
            "logger": {"log_path": "log", "level": "Info", "show_level": false},
            "metrics": {"metrics_path": "m"},
            "balloon": null
        }"#;
        let c: FullConfig = serde_json::from_str(text).unwrap();
        c.check().unwrap();
        assert_eq!(c.machine_config.as_ref().unwrap().vcpu_count, 2);
        assert_eq!(c.drives[0].drive_id, "rootfs");
        assert_eq!(c.vsock.as_ref().unwrap().uds_path, "./v.sock");
    }

    #[test]
    fn unknown_fields_and_unsupported_values_name_the_field() {
        let e = serde_json::from_str::<MachineConfig>(r#"{"vcpu_count":1,"mem_size_mib":1,"x":1}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `x`"), "{e}");
        // What Kata and firecracker-containerd send: smt, nulls, `{}` rate limiters.
        let m: MachineConfig = serde_json::from_str(
            r#"{"vcpu_count":2,"mem_size_mib":64,"smt":true,"track_dirty_pages":null,"huge_pages":null}"#,
        )
        .unwrap();
        m.check().unwrap();
        assert_eq!(m.huge_pages, "None");
        let n: NetworkInterface = serde_json::from_str(
            r#"{"iface_id":"eth0","host_dev_name":"tap0","rx_rate_limiter":{},"tx_rate_limiter":{"bandwidth":null,"ops":null}}"#,
        )
        .unwrap();
        n.check().unwrap();
        let d: Drive = serde_json::from_str(
            r#"{"drive_id":"a","path_on_host":"p","is_root_device":false,"is_read_only":null,"rate_limiter":{}}"#,
        )
        .unwrap();
        d.check().unwrap();
        assert!(!d.is_read_only);
        let c: FullConfig = serde_json::from_str(r#"{"balloon":{"amount_mib":1}}"#).unwrap();
        let e = c.check().unwrap_err();
        assert_eq!(e.field, "balloon");
        assert!(e.to_string().contains("does not support"), "{e}");
        let d: Drive = serde_json::from_str(
            r#"{"drive_id":"a","path_on_host":"p","is_root_device":false,"io_engine":"Uring"}"#,
        )
        .unwrap();
        assert_eq!(d.check().unwrap_err().field, "drives[a].io_engine");
        let e = rate_limit_of("r", &Some(serde_json::json!({"bandwidth": {}}))).unwrap_err();
        assert!(e.contains("r.bandwidth.size is missing"), "{e}");
        let e = rate_limit_of(
            "r",
            &Some(serde_json::json!({"ops": {"size": u64::MAX, "refill_time": 1}})),
        )
        .unwrap_err();
        assert!(e.contains("overflow"), "{e}");
        let e = rate_limit_of("r", &Some(serde_json::json!({"iops": {}}))).unwrap_err();
        assert!(e.contains("unknown field `iops`"), "{e}");
        let u = rate_limit_of(
            "r",
            &Some(
                serde_json::json!({"bandwidth": {"size": 1000, "refill_time": 100,
                "one_time_burst": 5}, "ops": {"size": 0, "refill_time": 1}}),
            ),
        )
        .unwrap();
        assert_eq!(u.bandwidth.unwrap().unwrap().one_time_burst, 5);
        assert_eq!(u.ops, Some(None), "size 0 is no limit");
        assert_eq!(
            rate_limit_of("r", &Some(serde_json::json!({}))).unwrap(),
            Default::default()
        );
    }

    #[test]
    fn patch_changes_only_what_it_names() {
        let m = MachineConfig::default();
        let u: MachineConfigUpdate = serde_json::from_str(r#"{"vcpu_count":3}"#).unwrap();
        let n = u.apply(&m);
        assert_eq!((n.vcpu_count, n.mem_size_mib), (3, 256));
    }
}
