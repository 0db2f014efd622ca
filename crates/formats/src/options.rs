//! The options a disk format takes and the names VMware's descriptors use, as types: a
//! platform file names them as strings, and a wrong one is refused when the file is read
//! (with the allowed values), not when qemu-img runs.

use serde::{Deserialize, Serialize};

/// Writes a small enum as the string a data file uses, with `Display` and the list of allowed
/// values for error messages.
macro_rules! named {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v),+
        }

        impl $name {
            /// Every value, as a data file writes it.
            pub const NAMES: &'static [&'static str] = &[$($s),+];

            /// The value as a data file (and qemu-img, where it is an option) writes it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$v),)+
                    _ => Err(format!(
                        "unknown {} `{s}`; expected one of {}",
                        stringify!($name),
                        Self::NAMES.join(", ")
                    )),
                }
            }
        }
    };
}

named! {
    /// qcow2's compatibility level: qcow2 v3 (QEMU 1.1 and later) or v2 (older QEMU).
    Qcow2Compat { V3 = "1.1", V2 = "0.10" }
}

named! {
    /// The kind of VMDK: one growing file (beside a .vmx), or the compressed stream VMware
    /// imports (inside an OVA, for EC2's import).
    VmdkSubformat { MonolithicSparse = "monolithicSparse", StreamOptimized = "streamOptimized" }
}

named! {
    /// The adapter type a VMDK descriptor records (qemu-img's `adapter_type`).
    VmdkAdapter { Lsilogic = "lsilogic", Ide = "ide", Buslogic = "buslogic", LegacyEsx = "legacyESX" }
}

named! {
    /// A VHD that grows (XenServer, Hyper-V) or has its whole size (Azure).
    VhdSubformat { Dynamic = "dynamic", Fixed = "fixed" }
}

named! {
    /// The SCSI controller of a VMware virtual machine.
    VmwareController {
        /// VMware Paravirtual SCSI.
        Pvscsi = "pvscsi",
        /// LSI Logic Parallel.
        Lsilogic = "lsilogic",
        /// LSI Logic SAS.
        LsiSas = "lsisas1068",
        Buslogic = "buslogic",
    }
}

impl VmwareController {
    /// `scsi0.virtualDev` in a .vmx.
    pub fn vmx_name(self) -> &'static str {
        self.as_str()
    }

    /// `rasd:ResourceSubType` of the controller in an OVF descriptor.
    pub fn ovf_name(self) -> &'static str {
        match self {
            VmwareController::Pvscsi => "VirtualSCSI",
            VmwareController::Lsilogic => "lsilogic",
            VmwareController::LsiSas => "lsilogicsas",
            VmwareController::Buslogic => "buslogic",
        }
    }

    /// The adapter type the disk's descriptor records. VMware's own tools write lsilogic for
    /// disks on its paravirtual and SAS controllers: the descriptor knows no other SCSI kind.
    pub fn vmdk_adapter(self) -> VmdkAdapter {
        match self {
            VmwareController::Buslogic => VmdkAdapter::Buslogic,
            _ => VmdkAdapter::Lsilogic,
        }
    }
}

named! {
    /// The network adapter of a VMware virtual machine.
    VmwareNic { Vmxnet3 = "vmxnet3", E1000 = "e1000", E1000e = "e1000e" }
}

impl VmwareNic {
    /// `ethernet0.virtualDev` in a .vmx.
    pub fn vmx_name(self) -> &'static str {
        self.as_str()
    }

    /// `rasd:ResourceSubType` of the adapter in an OVF descriptor.
    pub fn ovf_name(self) -> &'static str {
        match self {
            VmwareNic::Vmxnet3 => "VmxNet3",
            VmwareNic::E1000 => "E1000",
            VmwareNic::E1000e => "E1000e",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_errors_list_the_allowed_values() {
        for n in Qcow2Compat::NAMES {
            assert_eq!(n.parse::<Qcow2Compat>().unwrap().as_str(), *n);
        }
        let e = "1.2".parse::<Qcow2Compat>().unwrap_err();
        assert!(e.contains("1.1, 0.10"), "{e}");
        let e = "lsilogc".parse::<VmwareController>().unwrap_err();
        assert!(e.contains("pvscsi, lsilogic, lsisas1068, buslogic"), "{e}");
        assert_eq!(VmwareController::Pvscsi.ovf_name(), "VirtualSCSI");
        assert_eq!(
            VmwareController::Pvscsi.vmdk_adapter(),
            VmdkAdapter::Lsilogic
        );
        assert_eq!(VmwareNic::Vmxnet3.ovf_name(), "VmxNet3");
        #[derive(Debug, Deserialize)]
        struct T {
            c: VhdSubformat,
        }
        let t: T = toml::from_str("c = \"fixed\"").unwrap();
        assert_eq!(t.c, VhdSubformat::Fixed);
        let e = toml::from_str::<T>("c = \"sparse\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`dynamic`") && e.contains("`fixed`"), "{e}");
    }
}
