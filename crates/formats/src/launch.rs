//! The POSIX sh script shipped beside a qcow2 that boots it in QEMU.

use crate::util::sh_quote;

/// What the launch script needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchScriptInfo {
    /// The qcow2 image, a file name relative to the script's own directory.
    pub image_file_name: String,
    pub memory_mib: u32,
    /// Boot with UEFI: OVMF code read-only, a private copy of the variable store.
    pub firmware_efi: bool,
    /// OVMF code image (e.g. /usr/share/OVMF/OVMF_CODE_4M.fd); used when `firmware_efi`.
    pub ovmf_code: String,
    /// OVMF variable store template (e.g. /usr/share/OVMF/OVMF_VARS_4M.fd).
    pub ovmf_vars: String,
    /// Host port on 127.0.0.1 forwarded to the guest's ssh (port 22); 2222 by convention.
    pub ssh_port: u16,
}

const HEAD: &str = r#"#!/bin/sh
# Boots the disk image beside this script in QEMU, with the serial console on this
# terminal (quit QEMU with Ctrl-a x). Written by kiln; run with -h for the options.
set -eu

IMAGE_NAME=@IMAGE@
MEMORY=@MEMORY@
SSH_PORT=@PORT@
"#;

const EFI_VARS: &str = r#"OVMF_CODE=@CODE@
OVMF_VARS=@VARS@
"#;

const BODY: &str = r#"
usage() {
	cat <<EOF
Usage: ${0##*/} [-a FILE] [-u FILE] [-p PORT] [-s] [-h] [-- QEMU-ARGS...]

Boots $IMAGE_NAME in qemu-system-x86_64 with the console on this terminal
(quit with Ctrl-a x) and the guest's ssh on 127.0.0.1:$SSH_PORT.

  -a FILE  authorized ssh public keys (one a line) for the config drive
  -u FILE  user data for the config drive
  -p PORT  host port forwarded to the guest's ssh (default $SSH_PORT)
  -s       snapshot mode: writes to the disk are discarded
  -h       show this help

-a and -u attach a config drive: a FAT image labelled config-2 holding
openstack/latest/meta_data.json and openstack/latest/user_data.

Environment:
  KILN_QEMU_ACCEL  kvm or tcg (default: kvm if /dev/kvm is writable, else tcg)
  KILN_QEMU_ARGS   more QEMU arguments, split at spaces
  KILN_QEMU_NET    more options for the user network, comma-separated (restrict=on
                   keeps the guest off every network; the ssh forward still works)
  KILN_QEMU        the QEMU binary (default: qemu-system-x86_64)
Arguments after -- are passed to QEMU as they are.
EOF
}

die() {
	printf '%s: %s\n' "${0##*/}" "$*" >&2
	exit 1
}

need() {
	command -v "$1" >/dev/null 2>&1 || die "$1 not found: install the Debian package $2"
}

# QEMU's -drive option splits at commas: a comma in a file name is written twice.
drive_path() {
	printf '%s' "$1" | sed 's/,/,,/g'
}

# meta_data.json for the config drive: the keys file's lines, less blank and # lines,
# as public_keys key-0, key-1, ...
write_meta_data() {
	printf '{\n  "uuid": "00000000-0000-0000-0000-000000000000",\n  "public_keys": {'
	if [ -n "$KEYS" ]; then
		tr '\t' ' ' <"$KEYS" | tr -d '\000-\010\013-\037' |
			sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' -e '/^$/d' -e '/^#/d' \
				-e 's/\\/\\\\/g' -e 's/"/\\"/g' |
			awk '{ printf "%s\n    \"key-%d\": \"%s\"", (NR > 1 ? "," : ""), NR - 1, $0 }'
	fi
	printf '\n  }\n}\n'
}

KEYS=
USER_DATA=
SNAPSHOT=
while getopts 'a:u:p:sh' opt; do
	case $opt in
	a) KEYS=$OPTARG ;;
	u) USER_DATA=$OPTARG ;;
	p) SSH_PORT=$OPTARG ;;
	s) SNAPSHOT=1 ;;
	h)
		usage
		exit 0
		;;
	*)
		usage >&2
		exit 2
		;;
	esac
done
shift $((OPTIND - 1))

case $SSH_PORT in
'' | *[!0-9]*) die "invalid port: $SSH_PORT" ;;
esac
if [ -n "$KEYS" ] && [ ! -r "$KEYS" ]; then
	die "cannot read the keys file $KEYS"
fi
if [ -n "$USER_DATA" ] && [ ! -r "$USER_DATA" ]; then
	die "cannot read the user data file $USER_DATA"
fi

SCRIPT_DIR=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd -P)
IMAGE=$SCRIPT_DIR/$IMAGE_NAME
[ -f "$IMAGE" ] || die "disk image $IMAGE not found"

QEMU=${KILN_QEMU:-qemu-system-x86_64}
need "$QEMU" qemu-system-x86

if [ -n "${KILN_QEMU_ACCEL:-}" ]; then
	ACCEL=$KILN_QEMU_ACCEL
elif [ -w /dev/kvm ]; then
	ACCEL=kvm
else
	ACCEL=tcg
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-qemu.XXXXXX") || die "cannot create a temporary directory"
trap 'rm -rf -- "$WORK"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# QEMU's arguments are put together back to front, so that those after -- come last.
set -f
# shellcheck disable=SC2086 # KILN_QEMU_ARGS is split at spaces on purpose.
set -- ${KILN_QEMU_ARGS:-} "$@"
set +f

if [ -n "$KEYS$USER_DATA" ]; then
	need mkfs.vfat dosfstools
	need mmd mtools
	need mcopy mtools
	write_meta_data >"$WORK/meta_data.json"
	kib=2048
	if [ -n "$USER_DATA" ]; then
		cp -- "$USER_DATA" "$WORK/user_data"
		kib=$(($(wc -c <"$WORK/user_data") / 1024 + 2048))
	fi
	mkfs.vfat -n config-2 -C "$WORK/config-2.img" "$kib" >/dev/null 2>&1 ||
		die "mkfs.vfat could not make the config drive"
	MTOOLS_SKIP_CHECK=1
	export MTOOLS_SKIP_CHECK
	mmd -i "$WORK/config-2.img" ::openstack ::openstack/latest
	mcopy -i "$WORK/config-2.img" "$WORK/meta_data.json" ::openstack/latest/meta_data.json
	if [ -n "$USER_DATA" ]; then
		mcopy -i "$WORK/config-2.img" "$WORK/user_data" ::openstack/latest/user_data
	fi
	set -- -drive "if=virtio,format=raw,readonly=on,file=$(drive_path "$WORK/config-2.img")" "$@"
fi

if [ -n "$SNAPSHOT" ]; then
	set -- -snapshot "$@"
fi
"#;

const EFI_BODY: &str = r#"
[ -r "$OVMF_CODE" ] || die "UEFI firmware $OVMF_CODE not found: install the Debian package ovmf"
[ -r "$OVMF_VARS" ] || die "UEFI variable store $OVMF_VARS not found: install the Debian package ovmf"
cp -- "$OVMF_VARS" "$WORK/OVMF_VARS.fd"
set -- \
	-drive "if=pflash,format=raw,unit=0,readonly=on,file=$(drive_path "$OVMF_CODE")" \
	-drive "if=pflash,format=raw,unit=1,file=$(drive_path "$WORK/OVMF_VARS.fd")" \
	"$@"
"#;

const TAIL: &str = r#"
if [ "$ACCEL" = kvm ]; then
	set -- -cpu host "$@"
fi

set -- \
	-machine "q35,accel=$ACCEL" \
	-m "$MEMORY" \
	-nographic \
	-drive "if=virtio,file=$(drive_path "$IMAGE"),format=qcow2" \
	-netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$SSH_PORT-:22${KILN_QEMU_NET:+,$KILN_QEMU_NET}" \
	-device virtio-net-pci,netdev=net0 \
	"$@"

# Not exec: the trap removes the temporary directory when QEMU exits.
"$QEMU" "$@"
"#;

/// A POSIX sh script that boots the qcow2 `image_file_name` found beside it with
/// qemu-system-x86_64: `-m`, a virtio disk, virtio-net with user networking forwarding
/// 127.0.0.1:`ssh_port` to the guest's port 22, `-nographic`. Options: `-a FILE` ssh keys
/// and `-u FILE` user data (on a `config-2` FAT config drive made with mkfs.vfat and mcopy
/// in a temporary directory removed on exit), `-p PORT`, `-s` snapshot, `-h` help;
/// `KILN_QEMU_ACCEL` (default kvm when /dev/kvm is writable, else tcg), `KILN_QEMU_ARGS` and
/// `KILN_QEMU_NET` (more user-network options, such as the tests' `restrict=on`);
/// arguments after `--` go to QEMU. With `firmware_efi` the OVMF code is read-only and the
/// variable store a private copy.
pub fn qemu_launch_script(info: &LaunchScriptInfo) -> String {
    let mut s = HEAD
        .replace("@IMAGE@", &sh_quote(&info.image_file_name))
        .replace("@MEMORY@", &info.memory_mib.to_string())
        .replace("@PORT@", &info.ssh_port.to_string());
    if info.firmware_efi {
        s.push_str(
            &EFI_VARS
                .replace("@CODE@", &sh_quote(&info.ovmf_code))
                .replace("@VARS@", &sh_quote(&info.ovmf_vars)),
        );
    }
    s.push_str(BODY);
    if info.firmware_efi {
        s.push_str(EFI_BODY);
    }
    s.push_str(TAIL);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::Command;

    fn info(efi: bool, dir: &Path) -> LaunchScriptInfo {
        LaunchScriptInfo {
            image_file_name: "kiln's image.qcow2".into(),
            memory_mib: 1024,
            firmware_efi: efi,
            ovmf_code: dir.join("OVMF,CODE.fd").display().to_string(),
            ovmf_vars: dir.join("OVMF_VARS.fd").display().to_string(),
            ssh_port: 2222,
        }
    }

    fn write_exec(path: &Path, text: &str) {
        kiln_host::atomic::write_file_atomic(path, text.as_bytes(), 0o755).unwrap();
        assert_eq!(
            std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn script_is_valid_sh() {
        let dir = tempfile::tempdir().unwrap();
        for efi in [false, true] {
            let script = dir.path().join(format!("boot-{efi}.sh"));
            write_exec(&script, &qemu_launch_script(&info(efi, dir.path())));
            let out = Command::new("sh").arg("-n").arg(&script).output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // shellcheck is installed by scripts/install-deps.sh: a missing one fails here.
            let out = Command::new("shellcheck")
                .arg(&script)
                .output()
                .expect("shellcheck (Debian package shellcheck)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            let out = Command::new(&script).arg("-h").output().unwrap();
            assert!(out.status.success());
            let help = String::from_utf8_lossy(&out.stdout);
            assert!(
                help.contains("Usage:") && help.contains("127.0.0.1:2222"),
                "{help}"
            );
            let out = Command::new(&script).arg("-x").output().unwrap();
            assert_eq!(out.status.code(), Some(2));
        }
    }

    /// Runs the script with a stand-in for QEMU that records its arguments and keeps a copy
    /// of the config drive, then checks both (nothing is booted).
    #[test]
    fn builds_the_qemu_command_and_config_drive() {
        // The FAT tools are installed by scripts/install-deps.sh: a missing one fails here.
        for tool in ["mkfs.vfat", "mcopy", "mmd", "mtype", "fatlabel"] {
            assert!(
                kiln_host::tools::find_named(tool).is_some(),
                "{tool} is not installed (dosfstools, mtools)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let tmp = d.join("tmp");
        let out = d.join("out");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::create_dir(&out).unwrap();
        let i = info(true, d);
        std::fs::write(&i.ovmf_code, b"code").unwrap();
        std::fs::write(&i.ovmf_vars, b"vars").unwrap();
        std::fs::write(d.join(&i.image_file_name), b"").unwrap();
        let script = d.join("boot.sh");
        write_exec(&script, &qemu_launch_script(&i));
        let fake = d.join("fake-qemu");
        write_exec(
            &fake,
            "#!/bin/sh\nprintf '%s\\n' \"$@\" >\"$OUT/args\"\n\
             for w in \"$TMPDIR\"/kiln-qemu.*; do cp \"$w\"/config-2.img \"$w\"/OVMF_VARS.fd \"$OUT/\"; done\n",
        );
        std::fs::write(
            d.join("keys"),
            "# a comment\nssh-ed25519 AAAA \"me\"@host\r\n\n\tssh-rsa BBBB you\n",
        )
        .unwrap();
        std::fs::write(d.join("user-data"), "#cloud-config\nhostname: test\n").unwrap();
        let res = Command::new(&script)
            .args([
                "-a",
                "keys",
                "-u",
                "user-data",
                "-s",
                "-p",
                "2200",
                "--",
                "-name",
                "x y",
            ])
            .current_dir(d)
            .env("KILN_QEMU", &fake)
            .env("KILN_QEMU_ACCEL", "tcg")
            .env("KILN_QEMU_ARGS", "-smp 2")
            .env("KILN_QEMU_NET", "restrict=on")
            .env("TMPDIR", &tmp)
            .env("OUT", &out)
            .output()
            .unwrap();
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        // The temporary directory is gone.
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);

        let args = std::fs::read_to_string(out.join("args")).unwrap();
        let args: Vec<&str> = args.lines().collect();
        let canon = d.canonicalize().unwrap();
        let image = format!("{}/kiln's image.qcow2", canon.display());
        let has = |a: &str| args.iter().position(|x| *x == a);
        assert_eq!(args[has("-m").unwrap() + 1], "1024");
        assert_eq!(args[has("-machine").unwrap() + 1], "q35,accel=tcg");
        for a in [
            "-nographic",
            "-snapshot",
            &format!("if=virtio,file={image},format=qcow2"),
            "user,id=net0,hostfwd=tcp:127.0.0.1:2200-:22,restrict=on",
            "virtio-net-pci,netdev=net0",
            &format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}/OVMF,,CODE.fd",
                d.display()
            ),
        ] {
            assert!(has(a).is_some(), "{a} not in {args:?}");
        }
        assert!(args
            .iter()
            .any(|a| a.starts_with("if=pflash,format=raw,unit=1,file=")));
        assert!(args
            .iter()
            .any(|a| a.starts_with("if=virtio,format=raw,readonly=on,file=")
                && a.ends_with("/config-2.img")));
        assert!(has("host").is_none(), "no -cpu host under tcg");
        assert_eq!(&args[args.len() - 4..], ["-smp", "2", "-name", "x y"]);
        assert_eq!(std::fs::read(out.join("OVMF_VARS.fd")).unwrap(), b"vars");

        let img = out.join("config-2.img");
        let mtype = |p: &str| {
            let o = Command::new("mtype")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(&img)
                .arg(p)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8(o.stdout).unwrap()
        };
        assert_eq!(
            mtype("::openstack/latest/user_data"),
            "#cloud-config\nhostname: test\n"
        );
        let meta: serde_json::Value =
            serde_json::from_str(&mtype("::openstack/latest/meta_data.json")).unwrap();
        assert_eq!(
            meta["public_keys"],
            serde_json::json!({"key-0": "ssh-ed25519 AAAA \"me\"@host", "key-1": "ssh-rsa BBBB you"})
        );
        let o = Command::new("fatlabel").arg(&img).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "config-2");
    }
}
