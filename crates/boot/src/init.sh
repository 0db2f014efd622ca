#!/bin/busybox sh
# kiln initramfs init. Mounts ROOT read-write at /, the USR slot named on the kernel command
# line (mount.usr=PARTUUID=...) read-only at /usr, the OEM partition at /usr/share/oem, and
# switches root. Partitions are found by the static kiln-agent, which reads the GPT itself,
# all on the disk GRUB booted from (kiln.disk=PARTUUID=<its ESP>): another disk's ROOT or
# USR is never used, and a name found twice stops the boot.
/bin/busybox mkdir -p /proc /sys /dev /run /sysroot
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

. /etc/kiln/initramfs.conf
# No pathname expansion: kernel arguments may hold * or ?.
set -f

onfail=reboot
usr= usrflags=ro usrfstype="$KILN_USR_FSTYPE" root= rootflags=rw rootfstype=ext4
disk= have_disk=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        kiln.disk=*) disk="${arg#kiln.disk=}"; have_disk=1 ;;
        mount.usr=*) usr="${arg#mount.usr=}" ;;
        mount.usrflags=*) usrflags="${arg#mount.usrflags=}" ;;
        mount.usrfstype=*) usrfstype="${arg#mount.usrfstype=}" ;;
        root=*) root="${arg#root=}" ;;
        rootflags=*) rootflags="${arg#rootflags=}" ;;
        rootfstype=*) rootfstype="${arg#rootfstype=}" ;;
        kiln.onfail=*) onfail="${arg#kiln.onfail=}" ;;
    esac
done

fail() {
    echo "kiln-initramfs: error: $*"
    case "$onfail" in
        shell) echo "kiln-initramfs: starting a shell"; exec sh ;;
        poweroff) poweroff -f ;;
        *) echo "kiln-initramfs: rebooting in 5 s"; sleep 5; reboot -f ;;
    esac
}

# A module for hardware this machine lacks may refuse to load (the Xen front-ends outside
# Xen): note it and go on; a missing disk is caught when ROOT or USR is not found.
while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$KILN_KERNEL/$m" 2>/dev/null || echo "kiln-initramfs: note: ${m##*/} not loaded (no such hardware?)"
done < /etc/kiln/modules

# Runs `kiln-agent ARGS` until it prints a device (disk drivers probe asynchronously), for up
# to 30 seconds. A name on more than one disk, or twice on the boot disk (exit 2), fails at
# once. The agent's last message is left in $err.
err=/run/kiln-agent.err
wait_for() {
    i=0
    while :; do
        out=$(kiln-agent "$@" 2>"$err")
        rc=$?
        if [ $rc -eq 0 ]; then echo "$out"; return 0; fi
        if [ $rc -eq 2 ] || [ $i -ge 300 ]; then return $rc; fi
        i=$((i + 1))
        sleep 0.1
    done
}
why() { sed 's/^kiln-agent: //' "$err"; }

[ -n "$root" ] || fail "no root= on the kernel command line"
[ -n "$usr" ] || fail "no mount.usr= on the kernel command line"
bootdisk=
if [ -n "$have_disk" ]; then
    [ -n "${disk#PARTUUID=}" ] || fail "kiln.disk= names no partition: GRUB could not read the GUID of the partition it booted from"
    bootdisk=$(wait_for boot-disk "$disk") || fail "$(why)"
    find_part() { wait_for find "$1" --disk "$bootdisk"; }
else
    echo "kiln-initramfs: warning: no kiln.disk= on the kernel command line (a grub.cfg older than this initramfs): each partition is taken from any disk, and a name on two is refused"
    find_part() { wait_for find "$1"; }
fi
rootdev=$(find_part "$root") || fail "root device $root: $(why)"
usrdev=$(find_part "$usr") || fail "USR device $usr: $(why)"
oemdev=
if [ -n "$KILN_OEM" ]; then
    if [ -n "$bootdisk" ]; then
        # The disk is there, so its partitions are: no waiting for an OEM it does not have.
        oemdev=$(kiln-agent find "$KILN_OEM" --disk "$bootdisk" 2>"$err")
        [ $? -ne 2 ] || fail "OEM partition $KILN_OEM: $(why)"
    else
        oemdev=$(find_part "$KILN_OEM") || oemdev=
    fi
fi

mount -t "$rootfstype" -o "$rootflags" "$rootdev" /sysroot || fail "cannot mount $rootdev at /"
# Cloud disks are larger than the image: ROOT takes the rest (idempotent; a failure to grow
# is reported, not fatal).
kiln-agent grow-root /sysroot || echo "kiln-initramfs: warning: could not grow ROOT"
[ -d /sysroot/usr ] || fail "ROOT has no /usr mount point"
mount -t "$usrfstype" -o "$usrflags" "$usrdev" /sysroot/usr || fail "cannot mount $usrdev at /usr"
if [ -n "$oemdev" ]; then
    mount -t ext4 -o ro,nodev,nosuid "$oemdev" /sysroot/usr/share/oem || fail "cannot mount OEM $oemdev"
fi
# A copy of the boot disk that appeared while the partitions were mounted is caught here,
# and so is a boot disk other than the one the partitions came from.
if [ -n "$bootdisk" ]; then
    now=$(kiln-agent boot-disk "$disk" 2>"$err") || fail "$(why)"
    [ "$now" = "$bootdisk" ] || fail "the boot disk ($disk) is $now now, not $bootdisk"
    echo "kiln-initramfs: / is $rootdev, /usr is $usrdev ($usr), all on $bootdisk ($disk)"
else
    for spec in "$root" "$usr"; do
        kiln-agent find "$spec" >/dev/null 2>"$err" || fail "$(why)"
    done
    echo "kiln-initramfs: / is $rootdev, /usr is $usrdev ($usr)"
fi

[ -e /sysroot/sbin/init ] || [ -L /sysroot/sbin/init ] || fail "no /sbin/init in the image"
mount --move /dev /sysroot/dev
umount /sys
umount /proc
exec switch_root /sysroot /sbin/init
