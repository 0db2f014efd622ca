//! Every way `kiln_recipe::load` refuses a recipe, board profile, layout or platform file,
//! in-process: each mistake is made in a copy of the repository's own files and the error
//! must name the place (`file:line:column` where the value has one) and what to do.

use std::path::{Path, PathBuf};

use kiln_recipe::{load, LoadOptions, PlatformSelection};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A copy of recipes/, board-profiles/ and kernel-config/ to make mistakes in.
struct Tree(tempfile::TempDir);

impl Tree {
    fn new() -> Tree {
        let t = Tree(tempfile::tempdir().unwrap());
        for d in ["recipes", "board-profiles", "kernel-config"] {
            let st = std::process::Command::new("cp")
                .arg("-a")
                .arg(repo().join(d))
                .arg(t.path(d))
                .status()
                .unwrap();
            assert!(st.success());
        }
        t
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.path().join(rel)
    }

    fn recipe(&self) -> PathBuf {
        self.path("recipes/minimal.toml")
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.path(rel), text).unwrap();
    }

    /// Replaces `from` (which must be there) with `to` in a file.
    fn edit(&self, rel: &str, from: &str, to: &str) -> &Self {
        let t = self.read(rel);
        assert!(t.contains(from), "{rel} has no {from:?}");
        self.write(rel, &t.replacen(from, to, 1));
        self
    }

    /// Appends lines to a file.
    fn append(&self, rel: &str, text: &str) -> &Self {
        let t = self.read(rel);
        self.write(rel, &format!("{t}{text}"));
        self
    }

    fn load_with(&self, opts: LoadOptions) -> anyhow::Result<kiln_recipe::Resolved> {
        load(&self.recipe(), &opts)
    }

    /// The error of loading the recipe with every platform.
    fn error(&self) -> String {
        self.error_with(LoadOptions {
            platforms: Some(PlatformSelection::All),
            ..Default::default()
        })
    }

    fn error_with(&self, opts: LoadOptions) -> String {
        match self.load_with(opts) {
            Ok(_) => panic!("{} loaded without an error", self.0.path().display()),
            Err(e) => format!("{e:#}"),
        }
    }

    /// `rel:line:col` as the error must print it.
    fn at(&self, rel: &str, line: usize, col: usize) -> String {
        format!("{}:{line}:{col}", self.path(rel).display())
    }

    /// The 1-based line of the first line of `rel` that contains `needle`.
    fn line_of(&self, rel: &str, needle: &str) -> usize {
        self.read(rel)
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{rel} has no {needle:?}"))
            + 1
    }
}

const RECIPE: &str = "recipes/minimal.toml";
const BOARD: &str = "board-profiles/amd64-usr.toml";
const LAYOUT: &str = "board-profiles/layouts/coreos.toml";
const QEMU: &str = "board-profiles/platforms/qemu.toml";
const VMWARE: &str = "board-profiles/platforms/vmware.toml";
const METAL: &str = "board-profiles/platforms/metal.toml";
const GCE: &str = "board-profiles/platforms/gce.toml";
const RACKSPACE: &str = "board-profiles/platforms/rackspace.toml";

fn assert_has(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "{p:?} not in:\n{e}");
    }
}

#[test]
fn the_repository_recipes_load() {
    let t = Tree::new();
    let r = t
        .load_with(LoadOptions {
            platforms: Some(PlatformSelection::All),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.platforms.len(), 7);
    assert_eq!(r.layout.esp().label, "EFI-SYSTEM");
    assert_eq!(r.layout.usr(kiln_recipe::Slot::B).label, "USR-B");
    assert_eq!(r.layout.root().label, "ROOT");
    assert_eq!(r.layout.oem().label, "OEM");
    assert_eq!(r.layout.bios_boot().unwrap().label, "BIOS-BOOT");
}

#[test]
fn recipe_syntax_keys_and_types_point_at_their_place() {
    let t = Tree::new();
    t.append(RECIPE, "colour = \"red\"\n");
    let line = t.line_of(RECIPE, "colour");
    assert_has(
        &t.error(),
        &[&t.at(RECIPE, line, 1), "unknown field `colour`"],
    );

    let t = Tree::new();
    t.edit(
        RECIPE,
        "source-date-epoch = 1735689600",
        "source-date-epoch = \"soon\"",
    );
    let line = t.line_of(RECIPE, "source-date-epoch =");
    assert_has(&t.error(), &[&t.at(RECIPE, line, 21), "invalid type"]);

    let t = Tree::new();
    t.edit(RECIPE, "[os]", "[os");
    assert_has(&t.error(), &[&format!("{}:", t.path(RECIPE).display())]);
}

#[test]
fn recipe_values_are_checked() {
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "id = \"kiln\"",
            "id = \"Kiln OS\"",
            "id = ",
            &["is not a valid name"],
        ),
        (
            "name = \"kiln\"",
            "name = \"k\\\"iln\"",
            "name = ",
            &["os.name", "quotes"],
        ),
        (
            "board = \"amd64-usr\"",
            "board = \"arm64-usr\"",
            "board = ",
            &["unknown board `arm64-usr`", "known boards", "amd64-usr"],
        ),
        (
            "variant = \"essential\"",
            "variant = \"tiny\"",
            "variant = ",
            &["unknown mmdebstrap variant `tiny`", "minbase"],
        ),
        (
            "usr-compression = \"lz4\"",
            "usr-compression = \"zstd\"",
            "usr-compression",
            &["unknown usr-compression `zstd`", "lz4hc"],
        ),
        (
            "overlays = [\"minimal/overlay\"]",
            "overlays = [\"minimal/missing\"]",
            "overlays",
            &["overlay directory", "does not exist"],
        ),
        (
            "platforms = [\"metal\",",
            "platforms = [\"amiga\", \"metal\",",
            "platforms",
            &["unknown platform `amiga`", "known platforms", "openstack"],
        ),
        (
            "version = \"0.1.0\"",
            "version = \"0 1\"",
            "version = ",
            &["no whitespace"],
        ),
    ];
    for (from, to, line_has, want) in cases {
        let t = Tree::new();
        t.edit(RECIPE, from, to);
        let e = t.error();
        let line = t.line_of(RECIPE, line_has);
        let at = format!("{}:{line}:", t.path(RECIPE).display());
        assert_has(&e, &[&at]);
        assert_has(&e, want);
    }
}

#[test]
fn recipe_combinations_are_checked() {
    let t = Tree::new();
    t.edit(
        RECIPE,
        "usr-filesystem = \"erofs\"",
        "usr-filesystem = \"vfat\"",
    );
    assert_has(&t.error(), &["USR cannot be vfat"]);

    let t = Tree::new();
    t.edit(
        RECIPE,
        "usr-filesystem = \"erofs\"",
        "usr-filesystem = \"ext4\"",
    );
    let line = t.line_of(RECIPE, "usr-compression");
    assert_has(
        &t.error(),
        &[&t.at(RECIPE, line, 19), "needs usr-filesystem = \"erofs\""],
    );

    let t = Tree::new();
    t.edit(
        RECIPE,
        "mirrors = [\"http://deb.debian.org/debian\"]",
        "mirrors = []",
    );
    assert_has(
        &t.error(),
        &["packages.mirrors must name at least one mirror"],
    );

    let t = Tree::new();
    t.append(RECIPE, "\n[version]\nepoch = \"2024-01-01\"\n");
    let line = t.line_of(RECIPE, "version = \"0.1.0\"");
    assert_has(
        &t.error(),
        &[&t.at(RECIPE, line, 11), "both set the version"],
    );

    let t = Tree::new();
    t.edit(RECIPE, "version = \"0.1.0\"", "");
    assert_has(
        &t.error(),
        &["the recipe has no version", "[version] table"],
    );

    let t = Tree::new();
    t.edit(RECIPE, "version = \"0.1.0\"", "version = \"1.2.3+dev\"");
    let e = t.error_with(LoadOptions {
        release: true,
        ..Default::default()
    });
    let line = t.line_of(RECIPE, "1.2.3+dev");
    assert_has(
        &e,
        &[&t.at(RECIPE, line, 11), "a release version has no + suffix"],
    );

    let t = Tree::new();
    t.edit(RECIPE, "version = \"0.1.0\"", "");
    t.append(RECIPE, "\n[version]\nepoch = \"2030-01-01\"\n");
    assert_has(&t.error(), &["before version.epoch 2030-01-01"]);

    let t = Tree::new();
    t.append(RECIPE, "\n[kernel]\ncmdline = [\"quiet;reboot\"]\n");
    assert_has(
        &t.error(),
        &["kernel argument \"quiet;reboot\"", "semicolons"],
    );
}

#[test]
fn options_of_the_caller_are_checked() {
    let t = Tree::new();
    let e = t.error_with(LoadOptions {
        channel: Some("Beta!".into()),
        ..Default::default()
    });
    assert_has(&e, &["channel `Beta!`", "not a valid name"]);
    let e = t.error_with(LoadOptions {
        source_date_epoch: Some("yesterday".into()),
        ..Default::default()
    });
    assert_has(&e, &["SOURCE_DATE_EPOCH=`yesterday` is not a number"]);
    let e = t.error_with(LoadOptions {
        source_date_epoch: Some("100".into()),
        ..Default::default()
    });
    assert_has(&e, &["source-date-epoch 100 is out of range", "1980-01-01"]);
    let e = t.error_with(LoadOptions {
        platforms: Some(PlatformSelection::Names(vec!["amiga".into()])),
        ..Default::default()
    });
    assert_has(&e, &["unknown platform `amiga`", "qemu"]);
    // The environment's epoch wins over the recipe's.
    let r = t
        .load_with(LoadOptions {
            source_date_epoch: Some("1800000000".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.source_date_epoch, 1_800_000_000);
}

#[test]
fn kernel_sources_and_fragments_are_checked() {
    let t = Tree::new();
    t.append(
        RECIPE,
        "\n[kernel]\nconfig = [\"../kernel-config/common.config\"]\n",
    );
    let line = t.line_of(RECIPE, "config = [");
    assert_has(
        &t.error(),
        &[&t.at(RECIPE, line, 11), "need a kernel source"],
    );

    let t = Tree::new();
    t.append(
        RECIPE,
        "\n[kernel]\nsource = \"linux.tar.xz\"\nconfig = [\"../kernel-config/common.config\"]\n",
    );
    let line = t.line_of(RECIPE, "source = \"linux");
    assert_has(&t.error(), &[&t.at(RECIPE, line, 10), "does not exist"]);

    let t = Tree::new();
    std::fs::create_dir(t.path("recipes/notlinux")).unwrap();
    t.append(
        RECIPE,
        "\n[kernel]\nsource = \"notlinux\"\nconfig = [\"../kernel-config/common.config\"]\n",
    );
    assert_has(&t.error(), &["is not a kernel source tree"]);

    let t = Tree::new();
    t.write("recipes/linux.tar", "");
    t.append(RECIPE, "\n[kernel]\nsource = \"linux.tar\"\n");
    assert_has(&t.error(), &["needs its config: list the fragments"]);

    let t = Tree::new();
    t.write("recipes/linux.tar", "");
    t.append(
        RECIPE,
        "\n[kernel]\nsource = \"linux.tar\"\nconfig = [\"gone.config\"]\n",
    );
    let line = t.line_of(RECIPE, "gone.config");
    assert_has(
        &t.error(),
        &[
            &t.at(RECIPE, line, 11),
            "cannot read kernel config fragment",
        ],
    );
}

#[test]
fn board_profiles_are_checked() {
    let t = Tree::new();
    t.edit(BOARD, "name = \"amd64-usr\"", "name = \"amd64\"");
    assert_has(
        &t.error(),
        &[
            &t.at(BOARD, t.line_of(BOARD, "name = \"amd64\""), 8),
            "does not match its file name",
        ],
    );

    let t = Tree::new();
    t.edit(
        BOARD,
        "firmware = [\"bios\", \"uefi\"]",
        "firmware = [\"bios\", \"bios\"]",
    );
    let line = t.line_of(BOARD, "firmware = [");
    assert_has(
        &t.error(),
        &[&t.at(BOARD, line, 21), "firmware listed twice"],
    );

    let t = Tree::new();
    t.edit(BOARD, "firmware = [\"bios\", \"uefi\"]", "firmware = []");
    assert_has(&t.error(), &["must name at least one of bios, uefi"]);

    let t = Tree::new();
    t.edit(BOARD, "bios-target = \"i386-pc\"", "");
    assert_has(&t.error(), &["grub.bios-target is not set"]);

    let t = Tree::new();
    t.edit(
        BOARD,
        "file = \"layouts/coreos.toml\"",
        "file = \"layouts/none.toml\"",
    );
    let line = t.line_of(BOARD, "layouts/none.toml");
    assert_has(
        &t.error(),
        &[&t.at(BOARD, line, 8), "layout file", "does not exist"],
    );

    let t = Tree::new();
    t.edit(BOARD, "variant = \"base\"", "variant = \"huge\"");
    let line = t.line_of(BOARD, "variant = \"huge\"");
    assert_has(
        &t.error(),
        &[
            &t.at(BOARD, line, 11),
            "unknown layout variant `huge`",
            "base, vm",
        ],
    );
}

#[test]
fn layouts_are_checked() {
    let n3 = "number = 3\n";
    let cases: &[(&str, &str, &[&str])] = &[
        (n3, "number = 300\n", &["partition number must be 1..=128"]),
        (
            n3,
            "number = 1 # twice\n",
            &["partition number 1 is used twice"],
        ),
        (
            "label = \"USR-A\"",
            "label = \"USR A\"",
            &["a label has 1 to 36"],
        ),
        (
            "label = \"ROOT\"",
            "label = \"ROOT-PARTITION-XYZ\"",
            &["longer than a ext4 filesystem label (16 characters)"],
        ),
        (
            "label = \"USR-B\"",
            "label = \"USR-A\" # twice",
            &["label `USR-A` is used twice"],
        ),
        (
            "type = \"coreos-usr\"",
            "type = \"coreos-user\"",
            &["unknown partition type `coreos-user`", "coreos-usr"],
        ),
        (
            "initramfs-file-size = \"16MiB\"",
            "initramfs-file-size = 1000",
            &["a slot file size is a non-zero multiple of 512 bytes"],
        ),
        (
            "content = \"oem\"",
            "content = \"oem\"\ninitramfs-file-size = \"1MiB\"\nkernel-file-size = \"1MiB\" # not the ESP",
            &["belong on the partition with content = \"esp\""],
        ),
    ];
    for (from, to, want) in cases {
        let t = Tree::new();
        t.edit(LAYOUT, from, to);
        let line = match to.find('#') {
            Some(i) => t.line_of(LAYOUT, to[i..].trim_end()),
            None => t.line_of(LAYOUT, to.trim_end()),
        };
        let e = t.error();
        assert_has(&e, &[&format!("{}:{line}:", t.path(LAYOUT).display())]);
        assert_has(&e, want);
    }
    let whole: &[(&str, &str, &[&str])] = &[
        (
            "slot = \"a\"",
            "",
            &["content = \"usr\" needs slot = \"a\""],
        ),
        (
            "content = \"oem\"",
            "content = \"empty\"",
            &["the layout needs one oem partition"],
        ),
        (
            "content = \"empty\"\nslot = \"b\"",
            "content = \"usr\"\nslot = \"b\"",
            &["slot b content = \"empty\""],
        ),
        (
            "content = \"esp\"\nkernel-file-size = \"16MiB\"\ninitramfs-file-size = \"16MiB\"",
            "content = \"empty\"",
            &["needs an esp partition"],
        ),
        (
            "initramfs-file-size = \"16MiB\"",
            "# no initramfs-file-size",
            &["set both kernel-file-size and initramfs-file-size, or neither"],
        ),
        (
            "kernel-file-size = \"16MiB\"",
            "kernel-file-size = \"60MiB\"",
            &["(152 MiB) and 4 MiB for the rest do not fit the 128 MiB of `EFI-SYSTEM`"],
        ),
        (
            "content = \"bios-boot\"",
            "content = \"empty\"",
            &["BIOS firmware needs a bios-boot partition"],
        ),
        (
            "alignment = \"1MiB\"",
            "alignment = 100",
            &["alignment must be a non-zero multiple of 512"],
        ),
    ];
    for (from, to, want) in whole {
        let t = Tree::new();
        t.edit(LAYOUT, from, to);
        let e = t.error();
        assert_has(&e, &[&t.path(LAYOUT).display().to_string()]);
        assert_has(&e, want);
    }
    let t = Tree::new();
    t.append(LAYOUT, "\n[variant.tiny.sizes]\nSWAP = \"1GiB\"\n");
    let line = t.line_of(LAYOUT, "SWAP =");
    assert_has(
        &t.error(),
        &[
            &t.at(LAYOUT, line, 8),
            "variant `tiny` resizes `SWAP`, which is not a partition label",
        ],
    );
}

#[test]
fn platform_files_are_checked() {
    let t = Tree::new();
    t.edit(QEMU, "name = \"qemu\"", "name = \"kvm\"");
    assert_has(
        &t.error(),
        &[
            &t.at(QEMU, t.line_of(QEMU, "name = \"kvm\""), 8),
            "does not match its file name `qemu.toml`",
        ],
    );

    let t = Tree::new();
    t.edit(QEMU, "oem-tree = \"oem/qemu\"", "oem-tree = \"oem/kvm\"");
    let line = t.line_of(QEMU, "oem/kvm");
    assert_has(
        &t.error(),
        &[&t.at(QEMU, line, 12), "OEM tree", "does not exist"],
    );

    let t = Tree::new();
    t.edit(
        QEMU,
        "layout-variant = \"vm\"",
        "layout-variant = \"cloud\"",
    );
    let line = t.line_of(QEMU, "cloud");
    assert_has(
        &t.error(),
        &[&t.at(QEMU, line, 18), "unknown layout variant `cloud`"],
    );

    let t = Tree::new();
    t.edit(
        QEMU,
        "kernel-requirements = \"../kernel-config/requirements/qemu.toml\"",
        "kernel-requirements = \"../kernel-config/requirements/kvm.toml\"",
    );
    let line = t.line_of(QEMU, "kvm.toml");
    assert_has(
        &t.error(),
        &[
            &t.at(QEMU, line, 23),
            "kernel requirement list",
            "does not exist",
        ],
    );

    let t = Tree::new();
    t.edit(
        QEMU,
        "initramfs-modules =",
        "cmdline = [\"a b\"]\ninitramfs-modules =",
    );
    let line = t.line_of(QEMU, "cmdline = ");
    assert_has(
        &t.error(),
        &[&t.at(QEMU, line, 12), "one argument without spaces"],
    );

    let t = Tree::new();
    t.edit(
        BOARD,
        "firmware = [\"bios\", \"uefi\"]",
        "firmware = [\"bios\"]",
    );
    t.edit(BOARD, "efi-target = \"x86_64-efi\"", "");
    assert_has(
        &t.error(),
        &["boot.firmware uefi is not one the board supports"],
    );
}

/// The options of an `[artifact]` table: each value typed, each option checked against its
/// format, each sidecar against what it describes.
#[test]
fn artifact_options_are_checked_against_their_format() {
    // (file, from, to, the line to point at, what the message says)
    let cases: &[(&str, &str, &str, &str, &[&str])] = &[
        (
            QEMU,
            "compat = \"1.1\"",
            "compat = \"1.2\"",
            "compat =",
            &["unknown variant `1.2`", "`1.1`", "`0.10`"],
        ),
        (
            VMWARE,
            "controller = \"pvscsi\"",
            "controller = \"lsilogc\"",
            "controller =",
            &[
                "unknown variant `lsilogc`",
                "`pvscsi`",
                "`lsilogic`",
                "`buslogic`",
            ],
        ),
        (
            VMWARE,
            "nic = \"vmxnet3\"",
            "nic = \"vmxnet4\"",
            "nic = \"vmxnet4\"",
            &["unknown variant `vmxnet4`", "`e1000e`"],
        ),
        (
            VMWARE,
            "guest-os = \"other5xlinux-64\"",
            "guest-os = \"other linux\"",
            "guest-os =",
            &["guest-os:", "ASCII letters"],
        ),
        (
            VMWARE,
            "subformat = \"monolithicSparse\"",
            "subformat = \"monolithicFlat\"",
            "subformat =",
            &["unknown vmdk subformat `monolithicFlat`", "streamOptimized"],
        ),
        (
            RACKSPACE,
            "subformat = \"dynamic\"",
            "subformat = \"sparse\"",
            "subformat =",
            &["unknown vhd subformat `sparse`", "dynamic, fixed"],
        ),
        (
            QEMU,
            "sidecars = [\"launch-script\"]",
            "sidecars = [\"launch-script\", \"vmx\"]",
            "sidecars =",
            &[
                "sidecar `vmx` needs format = \"vmdk\"",
                "format = \"qcow2\"",
            ],
        ),
        (
            QEMU,
            "sidecars = [\"launch-script\"]",
            "sidecars = [\"launch-script\", \"launch-script\"]",
            "sidecars =",
            &["listed twice"],
        ),
        (
            QEMU,
            "sidecars = [\"launch-script\"]",
            "sidecars = [\"ova\"]",
            "sidecars =",
            &["sidecar `ova` needs an [artifact.vmware] table"],
        ),
        (
            QEMU,
            "sidecars = [\"launch-script\"]",
            "sidecars = [\"ec2-json\"]",
            "sidecars =",
            &["sidecar `ec2-json` needs format = \"raw\""],
        ),
        (
            METAL,
            "extension = \"bin.xz\"",
            "extension = \"bin.xz\"\nsidecars = [\"launch-script\"]",
            "sidecars =",
            &["sidecar `launch-script` needs a disk QEMU reads as it is"],
        ),
        (
            METAL,
            "extension = \"bin.xz\"",
            "extension = \"bin.xz\"\nsidecars = [\"openstack-json\"]",
            "sidecars =",
            &["sidecar `openstack-json` needs format = \"qcow2\""],
        ),
        (
            QEMU,
            "compat = \"1.1\"",
            "compat = \"1.1\"\nsubformat = \"dynamic\"",
            "subformat =",
            &["`subformat` is a vmdk or vhd option", "format = \"qcow2\""],
        ),
        (
            VMWARE,
            "subformat = \"monolithicSparse\"",
            "subformat = \"monolithicSparse\"\ncompat = \"1.1\"",
            "compat =",
            &["`compat` is a qcow2 option", "format = \"vmdk\""],
        ),
        (
            QEMU,
            "compat = \"1.1\"",
            "compat = \"1.1\"\nxz-level = 3",
            "xz-level",
            &["`xz-level` is an option of packing = \"xz\""],
        ),
        (
            METAL,
            "xz-level = 2",
            "xz-level = 12",
            "xz-level",
            &["0 (fastest) to 9"],
        ),
        (
            QEMU,
            "compat = \"1.1\"",
            "compat = \"1.1\"\npacking = \"xz\"",
            "packing =",
            &["packing = \"xz\" packs a raw disk", "format = \"qcow2\""],
        ),
        (
            GCE,
            "size-multiple = \"1GiB\"",
            "size-multiple = \"1MiB\"",
            "size-multiple",
            &["a whole number of GiB", "multiple of 1GiB"],
        ),
        (
            GCE,
            "size-multiple = \"1GiB\"",
            "size-multiple = \"1GiB\"\ndisk-size = \"1536MiB\"",
            "disk-size",
            &["disk-size 1536MiB is not a multiple of size-multiple 1GiB"],
        ),
        (
            QEMU,
            "extension = \"qcow2\"",
            "extension = \".qcow2\"",
            "extension",
            &["must be like \"qcow2\""],
        ),
        (
            QEMU,
            "memory-mib = 1024",
            "memory-mib = 0",
            "memory-mib",
            &["memory-mib must be at least 1"],
        ),
        (
            QEMU,
            "format = \"qcow2\"",
            "format = \"qcow3\"",
            "format =",
            &["unknown variant `qcow3`", "`vmdk`"],
        ),
        (
            VMWARE,
            "[artifact.vmware]",
            "[artifact.vmx]",
            "[artifact.vmx]",
            &["unknown field `vmx`"],
        ),
    ];
    for (file, from, to, line_has, want) in cases {
        let t = Tree::new();
        t.edit(file, from, to);
        let e = t.error();
        let line = t.line_of(file, line_has);
        let at = format!("{}:{line}:", t.path(file).display());
        assert!(e.contains(&at), "{file}: {to}: no {at} in:\n{e}");
        assert_has(&e, want);
    }

    // A vmdk needs its VMware description; a qcow2 may not have one.
    let t = Tree::new();
    let v = t.read(VMWARE);
    let cut = v.find("[artifact.vmware]").unwrap();
    let boot = v.find("[boot]").unwrap();
    t.write(
        VMWARE,
        &format!("{}{}", &v[..cut], &v[boot..]).replace("sidecars = [\"vmx\", \"ova\"]", ""),
    );
    let e = t.error();
    assert_has(
        &e,
        &[
            &t.at(VMWARE, t.line_of(VMWARE, "format = \"vmdk\""), 10),
            "a vmdk needs an [artifact.vmware] table",
        ],
    );

    let t = Tree::new();
    t.edit(QEMU, "[boot]", "[artifact.vmware]\ncontroller = \"pvscsi\"\nnic = \"vmxnet3\"\nguest-os = \"x\"\novf-os-type = \"y\"\n\n[boot]");
    let e = t.error();
    assert_has(
        &e,
        &[
            &format!("{}:", t.path(QEMU).display()),
            "[artifact.vmware] describes a VMware machine",
            "format = \"qcow2\"",
        ],
    );

    // No size-multiple for a GCE tarball.
    let t = Tree::new();
    t.edit(GCE, "size-multiple = \"1GiB\"", "");
    assert_has(&t.error(), &["set size-multiple = \"1GiB\""]);
}

/// A platform's mistake is found whichever platforms are selected: the board's initramfs
/// serves all of them.
#[test]
fn every_platform_is_checked_even_when_not_selected() {
    let t = Tree::new();
    t.edit(VMWARE, "controller = \"pvscsi\"", "controller = \"scsi\"");
    let e = t.error_with(LoadOptions {
        platforms: Some(PlatformSelection::Names(vec!["qemu".into()])),
        ..Default::default()
    });
    assert_has(&e, &["vmware.toml:", "unknown variant `scsi`"]);
}

/// grub.cfg carries kernel arguments unquoted: one with GRUB syntax in it is refused where it
/// is written, in the recipe, the board profile or a platform file.
#[test]
fn kernel_arguments_with_grub_syntax_are_named_at_their_place() {
    for arg in ["x=${prefix}", "quiet#", "a|b", "a&&b", "a>b", "init=/bin/*"] {
        let t = Tree::new();
        t.append(RECIPE, &format!("\n[kernel]\ncmdline = [{arg:?}]\n"));
        let line = t.line_of(RECIPE, "cmdline = ");
        assert_has(
            &t.error(),
            &[
                &t.at(RECIPE, line, 12),
                &format!("kernel argument {arg:?}"),
                "GRUB metacharacters",
            ],
        );
    }
    let t = Tree::new();
    t.edit(
        BOARD,
        "cmdline = [\"console=tty0\",",
        "cmdline = [\"console=tty0\", \"$x\",",
    );
    let line = t.line_of(BOARD, "cmdline = ");
    assert_has(
        &t.error(),
        &[&t.at(BOARD, line, 28), "kernel argument \"$x\""],
    );
    let t = Tree::new();
    t.edit(
        QEMU,
        "initramfs-modules =",
        "cmdline = [\"a{b}\"]\ninitramfs-modules =",
    );
    let line = t.line_of(QEMU, "cmdline = ");
    assert_has(
        &t.error(),
        &[&t.at(QEMU, line, 12), "kernel argument \"a{b}\""],
    );
}

/// A mirror reaches mmdebstrap as an argument: anything but a mirror URL (an option such as
/// `--customize-hook=...`, a sources.list line, a path, `-` for stdin) is refused at its place.
#[test]
fn mirrors_must_be_urls() {
    for bad in [
        "--customize-hook=touch /tmp/pwned",
        "-",
        "deb http://deb.debian.org/debian bookworm main",
        "/srv/mirror",
        "ftp://deb.debian.org/debian",
        "http://",
        "http://deb.debian.org/debian\nmain",
        "http:// deb.debian.org/debian",
        "",
    ] {
        let t = Tree::new();
        t.edit(
            RECIPE,
            "mirrors = [\"http://deb.debian.org/debian\"]",
            &format!("mirrors = [\"http://deb.debian.org/debian\", {bad:?}]"),
        );
        let line = t.line_of(RECIPE, "mirrors = ");
        assert_has(
            &t.error(),
            &[
                &t.at(RECIPE, line, 44),
                "packages.mirrors",
                "is not a mirror URL",
            ],
        );
    }
    for good in [
        "https://deb.debian.org/debian",
        "http://127.0.0.1:3142/debian",
        "file:///srv/mirror",
        "http://[::1]:8080/debian/",
    ] {
        let t = Tree::new();
        t.edit(
            RECIPE,
            "mirrors = [\"http://deb.debian.org/debian\"]",
            &format!("mirrors = [{good:?}]"),
        );
        t.load_with(LoadOptions::default())
            .unwrap_or_else(|e| panic!("{good}: {e:#}"));
    }
}
