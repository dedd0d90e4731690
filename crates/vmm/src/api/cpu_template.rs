//! `machine-config.cpu_template` and `smt`, as Firecracker's clients send them.
//!
//! Firecracker's static templates (`C3`, `T2`, `T2S`, `T2CL` for Intel hosts, `T2A` for AMD
//! hosts) hide CPU features from the guest so that a fleet of different hosts looks like one
//! instance type. Hiding features never makes a guest fail; it only keeps it from using them.
//! Kite accepts each template on the vendor Firecracker accepts it on and does not apply it:
//! the guest sees Kite's usual CPUID (one log line says so). On Kite's development hosts (a
//! paravirtual KVM) CPUID leaves below 0x40000000 come from the host CPU whatever the VMM sets,
//! so a template could not be honoured there. A template for the other vendor is refused, as
//! Firecracker refuses it.

use serde_json::Value;

use super::types::Unsupported;

/// The host CPU's vendor, as the templates care about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

/// This host's vendor (CPUID leaf 0).
pub fn host_vendor() -> Vendor {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID leaf 0 exists on every x86-64 CPU and only reads registers.
        #[allow(unused_unsafe)]
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&r.ebx.to_le_bytes());
        id[4..8].copy_from_slice(&r.edx.to_le_bytes());
        id[8..].copy_from_slice(&r.ecx.to_le_bytes());
        match &id {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" => Vendor::Amd,
            _ => Vendor::Other,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    Vendor::Other
}

/// Whether `smt: true` can mean anything here: on x86-64 it only shapes the guest's CPU
/// topology (Firecracker refuses it on aarch64 only).
pub fn smt_possible() -> bool {
    cfg!(target_arch = "x86_64")
}

/// The vendor a static template is for, if `name` is one.
fn template_vendor(name: &str) -> Option<Vendor> {
    match name {
        "C3" | "T2" | "T2S" | "T2CL" => Some(Vendor::Intel),
        "T2A" => Some(Vendor::Amd),
        _ => None,
    }
}

/// Check `cpu_template` against `vendor`: absent, null, `"None"` or a static template for it.
pub fn check_for(template: &Option<Value>, vendor: Vendor) -> Result<(), Unsupported> {
    let refuse = |what| {
        Err(Unsupported {
            field: "machine-config.cpu_template".into(),
            what,
        })
    };
    match template {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s == "None" => Ok(()),
        Some(Value::String(s)) => match template_vendor(s) {
            Some(v) if v == vendor => Ok(()),
            Some(Vendor::Intel) => refuse("an Intel CPU template on a host that is not Intel"),
            Some(_) => refuse("an AMD CPU template on a host that is not AMD"),
            None => refuse("that CPU template (use C3, T2, T2S, T2CL, T2A or None)"),
        },
        Some(_) => refuse("custom CPU templates (use PUT /cpu-config's names: C3, T2, ...)"),
    }
}

/// [`check_for`] this host.
pub fn check(template: &Option<Value>) -> Result<(), Unsupported> {
    check_for(template, host_vendor())
}

/// The log line for a template Kite accepted without applying it, if there is one.
pub fn not_applied(template: &Option<Value>) -> Option<String> {
    match template {
        Some(Value::String(s)) if s != "None" => Some(format!(
            "cpu_template {s} accepted but not applied: the guest sees Kite's usual CPUID (docs/api.md)"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Option<Value> {
        Some(Value::from(s))
    }

    #[test]
    fn templates_are_taken_on_their_vendor_and_refused_on_the_other() {
        for name in ["C3", "T2", "T2S", "T2CL"] {
            check_for(&t(name), Vendor::Intel).unwrap();
            let e = check_for(&t(name), Vendor::Amd).unwrap_err();
            assert!(e.to_string().contains("Intel CPU template"), "{e}");
        }
        check_for(&t("T2A"), Vendor::Amd).unwrap();
        assert!(check_for(&t("T2A"), Vendor::Intel).is_err());
        check_for(&t("None"), Vendor::Other).unwrap();
        check_for(&None, Vendor::Other).unwrap();
        check_for(&Some(Value::Null), Vendor::Intel).unwrap();
        let e = check_for(&t("M5"), Vendor::Intel).unwrap_err();
        assert!(e.to_string().contains("use C3, T2"), "{e}");
        assert!(
            check_for(
                &Some(serde_json::json!({"cpuid_modifiers": []})),
                Vendor::Intel
            )
            .is_err()
        );
        assert!(not_applied(&t("T2")).unwrap().contains("not applied"));
        assert!(not_applied(&t("None")).is_none());
    }
}
