//! A platform's artifact: its raw disk in the platform's format and packing, the sidecar
//! files it ships with, and a DIGESTS file over all of them. Names are
//! `<recipe>_<platform>_image.<ext>` for the disk and `<recipe>_<platform>.*` for the rest.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_formats as fmt;
use kiln_recipe::platform::{Packing, Platform, Sidecar};
use kiln_recipe::{Firmware, Resolved};

fn vmware(p: &Platform) -> Result<&kiln_recipe::platform::Vmware> {
    p.artifact.vmware.as_ref().with_context(|| {
        format!(
            "platform {}: the VMware sidecars need [artifact.vmware]",
            p.name
        )
    })
}

/// The platform's disk size: the layout's, rounded up to `size-multiple`, or the fixed
/// `disk-size`; checked against what the format and packing allow.
pub fn disk_size(r: &Resolved, p: &Platform, planned: u64) -> Result<u64> {
    let a = &p.artifact;
    let size = match &a.size.fixed {
        Some(fixed) => {
            let fixed = fixed.0;
            if fixed < planned {
                bail!(
                    "platform {}: disk-size {} MiB is smaller than the layout needs ({} MiB)",
                    p.name,
                    fixed >> 20,
                    planned >> 20
                );
            }
            fixed
        }
        None => match a.size.multiple {
            Some(m) if m.0 > 0 => planned.div_ceil(m.0) * m.0,
            _ => planned,
        },
    };
    if let Some(m) = a.size.multiple {
        if m.0 == 0 || !size.is_multiple_of(m.0) {
            bail!(
                "platform {}: disk size {size} bytes is not a multiple of {}",
                p.name,
                m
            );
        }
    }
    fmt::check_size(&p.artifact.format, size)
        .with_context(|| format!("platform {} of recipe {}", p.name, r.name))?;
    if a.packing == Packing::GceTar {
        fmt::check_gce_size(size).with_context(|| format!("platform {}", p.name))?;
    }
    Ok(size)
}

/// Writes the platform's files into `out`; returns their paths. With `keep_raw`, `raw` itself
/// is moved into `out` (not copied), so the caller must not expect it afterwards.
pub fn produce(
    r: &Resolved,
    p: &Platform,
    identity: &str,
    raw: &Path,
    out: &Path,
    keep_raw: bool,
    xz_chunks: &Path,
) -> Result<Vec<PathBuf>> {
    let a = &p.artifact;
    let epoch = r.source_date_epoch;
    let stem = format!("{}_{}", r.name, p.name);
    let disk_name = format!("{stem}_image.{}", a.extension);
    let disk = out.join(&disk_name);
    let size = std::fs::metadata(raw)?.len();
    let uefi = p.boot.firmware == Firmware::Uefi;
    let stamp = fmt::Stamp {
        created: epoch,
        id: crate::ids::derive(identity, "disk-image-id").into_bytes(),
    };
    match a.packing {
        Packing::None => fmt::convert(raw, &p.artifact.format, &disk, &stamp)?,
        Packing::Xz { level } => {
            let threads = std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1);
            fmt::xz_compress(raw, &disk, threads, level, Some(xz_chunks))?;
        }
        Packing::GceTar => {
            fmt::gce_tarball(raw, &disk, epoch)?;
        }
    }
    let mut files = vec![disk.clone()];
    for sc in &a.sidecars {
        let f = match sc {
            Sidecar::LaunchScript => {
                let path = out.join(format!("{stem}.sh"));
                let text = fmt::qemu_launch_script(&fmt::LaunchScriptInfo {
                    image_file_name: disk_name.clone(),
                    memory_mib: a.memory_mib,
                    firmware_efi: uefi,
                    ovmf_code: r.board.qemu.ovmf_code.clone(),
                    ovmf_vars: r.board.qemu.ovmf_vars.clone(),
                    ssh_port: 2222,
                });
                kiln_host::atomic::write_file_atomic(&path, text.as_bytes(), 0o755)?;
                path
            }
            Sidecar::Vmx => {
                let vm = vmware(p)?;
                let path = out.join(format!("{stem}_image.vmx"));
                let text = fmt::vmx(&fmt::VmxInfo {
                    name: stem.clone(),
                    disk_file_name: disk_name.clone(),
                    memory_mib: a.memory_mib,
                    cpus: a.cpus,
                    controller: vm.controller,
                    nic: vm.nic,
                    firmware_efi: uefi,
                    guest_os: vm.guest_os.clone(),
                });
                kiln_host::atomic::write_file_atomic(&path, text.as_bytes(), 0o644)?;
                path
            }
            Sidecar::Ova => {
                let vm = vmware(p)?;
                let path = out.join(format!("{stem}.ova"));
                fmt::ova(
                    raw,
                    &fmt::OvfInfo {
                        name: stem.clone(),
                        capacity_bytes: size,
                        memory_mib: a.memory_mib,
                        cpus: a.cpus,
                        os_type: vm.ovf_os_type.clone(),
                        firmware_efi: uefi,
                        nic: vm.nic,
                        controller: vm.controller,
                    },
                    &path,
                    &stamp,
                )?;
                path
            }
            Sidecar::Ec2Json => {
                let path = out.join(format!("{stem}_image.json"));
                let v = fmt::ec2_register_json(&stem, &r.os.version, &disk_name, size, uefi);
                fmt::write_json(&v, &path)?;
                path
            }
            Sidecar::OpenstackJson => {
                let path = out.join(format!("{stem}_image.json"));
                let v = fmt::openstack_properties_json(&stem, &r.os.id, &r.os.version, size, uefi);
                fmt::write_json(&v, &path)?;
                path
            }
        };
        files.push(f);
    }
    let digests = out.join(format!("{stem}.DIGESTS"));
    let refs: Vec<&Path> = files.iter().map(|f| f.as_path()).collect();
    fmt::digests(&refs, &digests)?;
    files.push(digests);
    if keep_raw {
        // For checks against the artifacts (qemu-img compare): not a release file.
        let kept = out.join(format!("{stem}_image.raw"));
        fmt::move_raw(raw, &kept)?;
        files.push(kept);
    }
    Ok(files)
}
