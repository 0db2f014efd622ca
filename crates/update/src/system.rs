//! What system a disk or a machine holds, for binding payloads to it: the OS id from
//! os-release, the architecture of the agent's own build and of a slot's kernel.

use std::path::Path;

/// A `KEY=value` of os-release text (quotes removed).
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim().trim_matches('"').to_string())
    })
}

/// A field of `<root>/usr/lib/os-release`, read with a bound (it is a few hundred bytes).
pub fn os_release_in(root: &Path, key: &str) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(root.join("usr/lib/os-release")).ok()?;
    let mut text = String::new();
    f.take(64 << 10).read_to_string(&mut text).ok()?;
    os_release_field(&text, key)
}

/// The Debian architecture of the machine this code was built for, as a payload header names
/// it; `None` for one kiln has no name for.
pub fn debian_arch() -> Option<&'static str> {
    debian_arch_of(std::env::consts::ARCH)
}

fn debian_arch_of(rust_arch: &str) -> Option<&'static str> {
    Some(match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "riscv64" => "riscv64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64el",
        "s390x" => "s390x",
        "loongarch64" => "loong64",
        _ => return None,
    })
}

/// The Debian architecture of a Linux kernel image from its first 4 KiB: an x86 bzImage
/// (64-bit when its boot protocol header says the kernel has a 64-bit entry point), an arm64
/// or RISC-V `Image`. `None` when the bytes are none of these.
pub fn kernel_arch(head: &[u8]) -> Option<&'static str> {
    let at = |o: usize, n: usize| head.get(o..o + n);
    // x86 boot protocol: "HdrS" at 0x202, the boot flag 0xAA55 at 0x1fe; xloadflags at 0x236
    // (protocol 2.12+), bit 0 = XLF_KERNEL_64.
    if at(0x202, 4) == Some(b"HdrS") && at(0x1fe, 2) == Some(&[0x55, 0xaa]) {
        let x64 = head.get(0x236).is_some_and(|f| f & 1 == 1);
        return Some(if x64 { "amd64" } else { "i386" });
    }
    // arm64 Image header: magic "ARM\x64" at 0x38.
    if at(0x38, 4) == Some(b"ARM\x64") {
        return Some("arm64");
    }
    // RISC-V Image header: magic2 "RSC\x05" at 0x38.
    if at(0x38, 4) == Some(b"RSC\x05") {
        return Some("riscv64");
    }
    None
}

/// Why GRUB must not load `kernel` padded with zeros to `file_len` bytes, if it must not.
/// GRUB's x86 loaders copy the whole file after the setup sectors into a buffer of the
/// kernel's `init_size` (boot protocol 2.10 and later), so that part, padding included, must
/// not be larger. Other kernels ignore what follows their image.
pub fn kernel_padding_problem(kernel: &[u8], file_len: u64) -> Option<String> {
    let at = |o: usize, n: usize| kernel.get(o..o + n);
    if at(0x202, 4) != Some(b"HdrS") || at(0x1fe, 2) != Some(&[0x55, 0xaa]) {
        return None;
    }
    let version = u16::from_le_bytes(at(0x206, 2)?.try_into().ok()?);
    if version < 0x20a {
        return None;
    }
    let setup = match kernel.get(0x1f1).copied()? {
        0 => 4,
        n => u64::from(n),
    };
    let init_size = u64::from(u32::from_le_bytes(at(0x260, 4)?.try_into().ok()?));
    let loaded = file_len.saturating_sub((setup + 1) * 512);
    (loaded > init_size).then(|| {
        format!(
            "padded to {file_len} bytes, the kernel's {loaded} bytes after its setup would overflow the {init_size} bytes (init_size) GRUB loads them into"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arches() {
        assert_eq!(debian_arch_of("x86_64"), Some("amd64"));
        assert_eq!(debian_arch_of("aarch64"), Some("arm64"));
        assert_eq!(debian_arch_of("m68k"), None);
        let mut bz = vec![0u8; 4096];
        bz[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kernel_arch(&bz), Some("i386"));
        bz[0x236] = 0x7f;
        assert_eq!(kernel_arch(&bz), Some("amd64"));
        let mut arm = vec![0u8; 64];
        arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(kernel_arch(&arm), Some("arm64"));
        assert_eq!(kernel_arch(b"short"), None);
        assert_eq!(
            os_release_field("NAME=\"Kiln\"\nID=kiln\nVERSION=\"0.1.0\"\n", "ID").as_deref(),
            Some("kiln")
        );
        assert_eq!(os_release_field("ID_LIKE=debian\n", "ID"), None);
    }

    /// Debian 6.1's bzImage header: 39 setup sectors, protocol 2.15, init_size 66,678,784.
    #[test]
    fn padding_fits_within_init_size() {
        let mut bz = vec![0u8; 4096];
        bz[0x1f1] = 39;
        bz[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        bz[0x260..0x264].copy_from_slice(&66_678_784u32.to_le_bytes());
        assert_eq!(kernel_padding_problem(&bz, 16 << 20), None);
        let edge = 66_678_784 + 40 * 512;
        assert_eq!(kernel_padding_problem(&bz, edge), None);
        let p = kernel_padding_problem(&bz, edge + 1).unwrap();
        assert!(p.contains("66678784 bytes (init_size)"), "{p}");
        // An older protocol, or not a bzImage at all: no such limit.
        bz[0x206..0x208].copy_from_slice(&0x209u16.to_le_bytes());
        assert_eq!(kernel_padding_problem(&bz, 1 << 40), None);
        assert_eq!(kernel_padding_problem(b"ARM", 1 << 40), None);
    }
}
