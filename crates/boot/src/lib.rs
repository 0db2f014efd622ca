//! The boot path of a kiln image: the kernel taken from an extracted package tree or built
//! from source, the
//! initramfs kiln generates (static busybox, the board's modules with their dependencies, an
//! init that mounts ROOT and the USR slot), and stock GRUB 2.06 images for BIOS and UEFI.

pub mod grub;
pub mod initramfs;
pub mod kbuild;
pub mod kconfig;
pub mod kernel;
pub mod modules;
